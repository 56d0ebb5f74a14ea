//! The o2hb on-disk heartbeat slot.
//!
//! A heartbeat region is an array of slots, one per node number, each as large
//! as the region's block size (the device's logical sector size: 512 bytes
//! normally, any power of two from 512 to 4096). A node writes only its own
//! slot. The first 32 bytes carry the heartbeat block, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | `seq`: the writer's wall-clock seconds at write time |
//! | 8 | 1 | `node`: the writer's node number |
//! | 9 | 3 | zero |
//! | 12 | 4 | checksum |
//! | 16 | 8 | `generation`: random and non-zero while running, 0 after a clean stop |
//! | 24 | 4 | `dead_ms`: the writer's dead time in milliseconds |
//! | 28 | 4 | zero |
//!
//! and the rest of the slot is zero. The checksum is [`crc32_le`] with seed 0
//! over the whole slot, computed with the checksum field set to zero. Note that
//! an all-zero slot (a freshly formatted area) therefore carries a valid
//! checksum of 0.
//!
//! Everything here is pure: [`encode`] fills a buffer, [`decode`] reads one and
//! never panics, whatever the input.

/// Smallest slot size (bytes).
pub const MIN_SLOT_BYTES: usize = 512;
/// Largest slot size (bytes).
pub const MAX_SLOT_BYTES: usize = 4096;
/// Number of slots in a region (the maximum number of nodes).
pub const REGION_SLOTS: usize = 255;
/// Bytes of a slot that carry the heartbeat block; the rest is zero.
pub const BLOCK_BYTES: usize = 32;

const OFF_SEQ: usize = 0;
const OFF_NODE: usize = 8;
const OFF_CKSUM: usize = 12;
const OFF_GENERATION: usize = 16;
const OFF_DEAD_MS: usize = 24;

/// The reflected CRC-32 polynomial.
const POLY: u32 = 0xEDB8_8320;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// Linux `crc32_le`: reflected CRC-32 (polynomial 0xEDB88320) continuing from
/// `seed`, with no inversion before or after.
///
/// This is not the zlib/IEEE checksum: that one is
/// `!crc32_le(!0, data)`. o2hb uses `crc32_le(0, slot)`.
pub fn crc32_le(seed: u32, data: &[u8]) -> u32 {
    data.iter().fold(seed, |crc, &b| {
        CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
    })
}

/// Whether `len` is an acceptable slot size: a power of two from 512 to 4096.
pub fn is_valid_slot_size(len: usize) -> bool {
    (MIN_SLOT_BYTES..=MAX_SLOT_BYTES).contains(&len) && len.is_power_of_two()
}

/// Why a slot could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The buffer is not a valid slot size.
    #[error("heartbeat slot is {len} bytes, not a power of two from 512 to 4096")]
    BadSlotSize {
        /// The size of the buffer given.
        len: usize,
    },
}

fn check_size(len: usize) -> Result<(), FormatError> {
    if is_valid_slot_size(len) {
        Ok(())
    } else {
        Err(FormatError::BadSlotSize { len })
    }
}

/// The fields of a heartbeat block (everything but the checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HbBlock {
    /// Changes on every write; the kernel writes wall-clock seconds here.
    pub seq: u64,
    /// The node that wrote the block.
    pub node: u8,
    /// Random non-zero value per heartbeat start; 0 marks a clean stop.
    pub generation: u64,
    /// The writer's dead time in milliseconds (0 if it does not say).
    pub dead_ms: u32,
}

impl HbBlock {
    /// Whether the slot counts as empty (`seq` 0); debugfs does not list these.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }
}

/// A decoded slot: its fields and the checksum verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decoded {
    /// The fields as stored, whether or not the checksum matched.
    pub block: HbBlock,
    /// The checksum stored in the slot.
    pub stored_checksum: u32,
    /// The checksum computed over the slot.
    pub computed_checksum: u32,
    /// Whether the two agree.
    pub checksum_ok: bool,
}

impl Decoded {
    /// Whether the slot counts as empty (`seq` 0).
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }
}

fn le_u32(slot: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&slot[off..off + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(slot: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&slot[off..off + 8]);
    u64::from_le_bytes(b)
}

/// The checksum o2hb expects for `slot`: [`crc32_le`] with seed 0 over the
/// whole slot, with the checksum field counted as zero (the slot itself is
/// not modified).
pub fn slot_checksum(slot: &[u8]) -> Result<u32, FormatError> {
    check_size(slot.len())?;
    let crc = crc32_le(0, &slot[..OFF_CKSUM]);
    let crc = crc32_le(crc, &[0u8; 4]);
    Ok(crc32_le(crc, &slot[OFF_CKSUM + 4..]))
}

/// Writes `block` into `slot`: the whole slot is overwritten (everything past
/// the fields is zeroed) and the checksum is filled in.
///
/// Fails, leaving `slot` untouched, if its length is not a valid slot size.
pub fn encode(block: &HbBlock, slot: &mut [u8]) -> Result<(), FormatError> {
    check_size(slot.len())?;
    slot.fill(0);
    slot[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&block.seq.to_le_bytes());
    slot[OFF_NODE] = block.node;
    slot[OFF_GENERATION..OFF_GENERATION + 8].copy_from_slice(&block.generation.to_le_bytes());
    slot[OFF_DEAD_MS..OFF_DEAD_MS + 4].copy_from_slice(&block.dead_ms.to_le_bytes());
    let crc = crc32_le(0, slot);
    slot[OFF_CKSUM..OFF_CKSUM + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes `block` into a new slot of `slot_bytes` bytes.
pub fn encode_vec(block: &HbBlock, slot_bytes: usize) -> Result<Vec<u8>, FormatError> {
    check_size(slot_bytes)?;
    let mut slot = vec![0u8; slot_bytes];
    encode(block, &mut slot)?;
    Ok(slot)
}

/// Reads a whole slot. The fields are returned even when the checksum does
/// not match (callers decide what a bad checksum means); padding bytes are
/// not inspected beyond being covered by the checksum.
///
/// Fails only if `slot` is not a valid slot size.
pub fn decode(slot: &[u8]) -> Result<Decoded, FormatError> {
    let computed_checksum = slot_checksum(slot)?;
    let stored_checksum = le_u32(slot, OFF_CKSUM);
    Ok(Decoded {
        block: HbBlock {
            seq: le_u64(slot, OFF_SEQ),
            node: slot[OFF_NODE],
            generation: le_u64(slot, OFF_GENERATION),
            dead_ms: le_u32(slot, OFF_DEAD_MS),
        },
        stored_checksum,
        computed_checksum,
        checksum_ok: stored_checksum == computed_checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SLOTS_0_3: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/hb/08-slots-0-3.bin"
    );

    /// Bit-at-a-time reference for the table version.
    fn crc_bitwise(seed: u32, data: &[u8]) -> u32 {
        let mut crc = seed;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn node1() -> HbBlock {
        HbBlock {
            seq: 0x6543_210f,
            node: 1,
            generation: 0x1122_3344_5566_7788,
            dead_ms: 62000,
        }
    }

    #[test]
    fn crc_check_values() {
        assert_eq!(crc32_le(0, b"123456789"), 0x2dfd_2d88);
        // The zlib convention, for contrast.
        assert_eq!(!crc32_le(!0, b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32_le(0, &[]), 0);
        assert_eq!(crc32_le(0x1234_5678, &[]), 0x1234_5678);
        assert_eq!(crc32_le(0, &[0u8; 512]), 0);
        // Continuing from a seed is the same as one pass.
        let a = crc32_le(0, b"12345");
        assert_eq!(crc32_le(a, b"6789"), 0x2dfd_2d88);
    }

    #[test]
    fn reference_example_first_32_bytes() {
        let slot = encode_vec(&node1(), 512).unwrap();
        let want = hex("0f21436500000000 01000000 d250d6b8 8877665544332211 30f20000 00000000");
        assert_eq!(&slot[..32], &want[..]);
        assert!(slot[32..].iter().all(|&b| b == 0));
        let d = decode(&slot).unwrap();
        assert_eq!(d.stored_checksum, 0xb8d6_50d2);
        assert_eq!(d.computed_checksum, 0xb8d6_50d2);
        assert!(d.checksum_ok);
        assert_eq!(d.block, node1());
        assert!(!d.is_empty());
    }

    #[test]
    fn real_volume_slots_0_to_3() {
        let raw = std::fs::read(SLOTS_0_3).unwrap();
        assert_eq!(raw.len(), 4 * 512);
        let slots: Vec<Decoded> = raw.chunks(512).map(|s| decode(s).unwrap()).collect();
        for (i, d) in slots.iter().enumerate() {
            assert!(d.checksum_ok, "slot {i}");
            if i == 1 {
                assert_eq!(d.block, node1());
                assert_eq!(d.stored_checksum, 0xb8d6_50d2);
            } else {
                assert_eq!(d.block, HbBlock::default(), "slot {i}");
                assert_eq!(d.stored_checksum, 0, "slot {i}");
                assert!(d.is_empty(), "slot {i}");
            }
        }
        // Re-encoding slot 1 gives back the bytes on disk.
        let slot1 = &raw[512..1024];
        let mut out = vec![0xAAu8; 512];
        encode(&slots[1].block, &mut out).unwrap();
        assert_eq!(out, slot1);
    }

    /// Checksums the real libocfs2 computed for blocks written to the test
    /// volume (node 3's is the correct one; the volume holds a corrupted one).
    #[test]
    fn checksums_agree_with_libocfs2() {
        let cases = [
            (
                0u8,
                0x6543_2110u64,
                0xdead_beef_cafe_f00du64,
                62000u32,
                0x5f3e_9036u32,
            ),
            (1, 0x6543_210f, 0x1122_3344_5566_7788, 62000, 0xb8d6_50d2),
            (5, 0x6543_2112, 0x0a0b_0c0d_0e0f_1011, 122_000, 0xa148_c57b),
            (3, 0x6543_2111, 0x0102_0304_0506_0708, 62000, 0x4c25_cabb),
            (254, u64::MAX, 1, 0, 0x47ca_8f4e),
            (4, 0, 0x99, 62000, 0x268d_b741),
        ];
        for (node, seq, generation, dead_ms, crc) in cases {
            let b = HbBlock {
                seq,
                node,
                generation,
                dead_ms,
            };
            let d = decode(&encode_vec(&b, 512).unwrap()).unwrap();
            assert_eq!(d.stored_checksum, crc, "node {node}");
            assert!(d.checksum_ok);
            assert_eq!(d.block, b);
        }
    }

    #[test]
    fn corruption_is_detected() {
        let good = encode_vec(&node1(), 512).unwrap();
        for pos in [0, 8, 9, 12, 15, 16, 24, 28, 31, 32, 300, 511] {
            let mut bad = good.clone();
            bad[pos] ^= 0x01;
            let d = decode(&bad).unwrap();
            assert!(!d.checksum_ok, "byte {pos}");
            assert_ne!(d.stored_checksum, d.computed_checksum);
        }
        // The captured corruption: the low checksum byte inverted.
        let mut bad = good.clone();
        bad[12] ^= 0xFF;
        let d = decode(&bad).unwrap();
        assert_eq!(d.block, node1());
        assert_eq!(d.computed_checksum, 0xb8d6_50d2);
        assert_eq!(d.stored_checksum, 0xb8d6_502d);
        assert!(!d.checksum_ok);
    }

    #[test]
    fn bad_sizes_are_errors() {
        for len in [0, 1, 16, 31, 32, 256, 511, 513, 768, 1000, 4095, 4097, 8192] {
            let buf = vec![0u8; len];
            let e = decode(&buf).unwrap_err();
            assert_eq!(e, FormatError::BadSlotSize { len });
            assert!(e.to_string().contains(&len.to_string()), "{e}");
            let mut out = vec![0x55u8; len];
            assert!(encode(&node1(), &mut out).is_err());
            assert!(out.iter().all(|&b| b == 0x55), "untouched on error");
            assert!(encode_vec(&node1(), len).is_err());
            assert!(slot_checksum(&buf).is_err());
        }
        for len in [512, 1024, 2048, 4096] {
            assert!(is_valid_slot_size(len));
            assert!(decode(&vec![0u8; len]).unwrap().checksum_ok);
        }
    }

    #[test]
    fn encode_overwrites_the_whole_slot() {
        let mut slot = vec![0xFFu8; 4096];
        encode(&node1(), &mut slot).unwrap();
        assert!(slot[32..].iter().all(|&b| b == 0));
        assert!(slot[9..12].iter().all(|&b| b == 0));
        assert!(slot[28..32].iter().all(|&b| b == 0));
        // Larger slots cover more zeros, so the checksum differs from 512.
        let d = decode(&slot).unwrap();
        assert!(d.checksum_ok);
        assert_eq!(d.block, node1());
        assert_ne!(d.stored_checksum, 0xb8d6_50d2);
    }

    fn block() -> impl Strategy<Value = HbBlock> {
        (any::<u64>(), any::<u8>(), any::<u64>(), any::<u32>()).prop_map(
            |(seq, node, generation, dead_ms)| HbBlock {
                seq,
                node,
                generation,
                dead_ms,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn table_matches_bitwise(seed in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(crc32_le(seed, &data), crc_bitwise(seed, &data));
        }

        #[test]
        fn round_trip(b in block(), shift in 0u32..4) {
            let size = MIN_SLOT_BYTES << shift;
            let slot = encode_vec(&b, size).unwrap();
            prop_assert_eq!(slot.len(), size);
            let d = decode(&slot).unwrap();
            prop_assert!(d.checksum_ok);
            prop_assert_eq!(d.block, b);
            prop_assert_eq!(encode_vec(&d.block, size).unwrap(), slot);
        }

        #[test]
        fn any_valid_size_slot_decodes(shift in 0u32..4, fill in any::<u8>(), pos in 0usize..4096, val in any::<u8>()) {
            let mut slot = vec![fill; MIN_SLOT_BYTES << shift];
            let at = pos % slot.len();
            slot[at] = val;
            let d = decode(&slot).unwrap();
            prop_assert_eq!(d.computed_checksum, slot_checksum(&slot).unwrap());
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            match decode(&data) {
                Ok(d) => {
                    prop_assert!(is_valid_slot_size(data.len()));
                    prop_assert_eq!(d.checksum_ok, d.stored_checksum == d.computed_checksum);
                }
                Err(FormatError::BadSlotSize { len }) => prop_assert_eq!(len, data.len()),
            }
        }
    }
}
