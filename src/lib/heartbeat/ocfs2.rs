//! The OCFS2 superblock, as far as the cluster stack needs it.
//!
//! libocfs2 finds the superblock by trying each block size from 512 to 4096
//! bytes and reading block 2 at that size; the block is an inode whose
//! signature is `OCFSV2` and whose `id2` area (at 0xC0) holds the super block
//! fields. [`decode`] is pure; [`read_superblock`] does the probing on a file
//! or device.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// The inode signature of the superblock.
pub const SUPER_SIGNATURE: &[u8; 6] = b"OCFSV2";
/// The superblock's block number, at any block size.
pub const SUPER_BLKNO: u64 = 2;
/// Block sizes OCFS2 supports, in the order libocfs2 probes them.
pub const BLOCK_SIZES: [u32; 4] = [512, 1024, 2048, 4096];

const ID2: usize = 0xC0;
const ROOT_BLKNO: usize = ID2 + 0x28;
const SYSTEM_DIR_BLKNO: usize = ID2 + 0x30;
const BLOCKSIZE_BITS: usize = ID2 + 0x38;
const CLUSTERSIZE_BITS: usize = ID2 + 0x3C;
const LABEL: usize = ID2 + 0x50;
const LABEL_LEN: usize = 64;
const UUID: usize = ID2 + 0x90;

/// The fields of an OCFS2 superblock that o2tools uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// File system block size in bytes.
    pub block_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Block number of the root directory.
    pub root_blkno: u64,
    /// Block number of the system directory (where `heartbeat` lives).
    pub system_dir_blkno: u64,
    /// The volume label.
    pub label: String,
    /// The volume UUID.
    pub uuid: [u8; 16],
}

impl Superblock {
    /// The UUID as the cluster stack names regions: 32 upper-case hex digits.
    pub fn uuid_string(&self) -> String {
        self.uuid.iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// Why no superblock could be read.
#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    /// The device or file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The device.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// No block size gave an OCFS2 superblock.
    #[error("{} is not an OCFS2 volume (no OCFSV2 superblock at block 2 for any block size 512..4096)", path.display())]
    NotOcfs2 {
        /// The device.
        path: PathBuf,
    },
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Decodes block 2 read at `block_size`. None unless it is a superblock that
/// agrees with the block size it was read at.
pub fn decode(block: &[u8], block_size: u32) -> Option<Superblock> {
    if block.len() < UUID + 16 || !block.starts_with(SUPER_SIGNATURE) {
        return None;
    }
    let bits = u32_at(block, BLOCKSIZE_BITS);
    if bits >= 32 || 1u32 << bits != block_size {
        return None;
    }
    let label = &block[LABEL..LABEL + LABEL_LEN];
    let label_len = label.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
    Some(Superblock {
        block_size,
        cluster_bits: u32_at(block, CLUSTERSIZE_BITS),
        root_blkno: u64_at(block, ROOT_BLKNO),
        system_dir_blkno: u64_at(block, SYSTEM_DIR_BLKNO),
        label: String::from_utf8_lossy(&label[..label_len]).into_owned(),
        uuid: block[UUID..UUID + 16].try_into().expect("16 bytes"),
    })
}

/// Probes `file` for a superblock at each block size.
pub fn probe(file: &File, path: &Path) -> Result<Superblock, SuperblockError> {
    for bs in BLOCK_SIZES {
        let mut buf = vec![0u8; bs as usize];
        match file.read_exact_at(&mut buf, SUPER_BLKNO * u64::from(bs)) {
            Ok(()) => {}
            // Too short for this block size: too short for any larger one.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(source) => {
                return Err(SuperblockError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if let Some(sb) = decode(&buf, bs) {
            return Ok(sb);
        }
    }
    Err(SuperblockError::NotOcfs2 {
        path: path.to_owned(),
    })
}

/// Opens `path` read-only and reads its superblock.
pub fn read_superblock(path: &Path) -> Result<Superblock, SuperblockError> {
    let file = File::open(path).map_err(|source| SuperblockError::Io {
        path: path.to_owned(),
        source,
    })?;
    probe(&file, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic superblock block with the layout of a 4K mkfs.ocfs2 volume.
    pub(crate) fn fake_block(bs: u32, uuid: [u8; 16]) -> Vec<u8> {
        let mut b = vec![0u8; bs as usize];
        b[..6].copy_from_slice(SUPER_SIGNATURE);
        b[ROOT_BLKNO..ROOT_BLKNO + 8].copy_from_slice(&5u64.to_le_bytes());
        b[SYSTEM_DIR_BLKNO..SYSTEM_DIR_BLKNO + 8].copy_from_slice(&6u64.to_le_bytes());
        b[BLOCKSIZE_BITS..BLOCKSIZE_BITS + 4].copy_from_slice(&bs.trailing_zeros().to_le_bytes());
        b[CLUSTERSIZE_BITS..CLUSTERSIZE_BITS + 4].copy_from_slice(&12u32.to_le_bytes());
        b[LABEL..LABEL + 4].copy_from_slice(b"test");
        b[UUID..UUID + 16].copy_from_slice(&uuid);
        b
    }

    const U: [u8; 16] = [
        0x0C, 0x70, 0x10, 0xEB, 0xE2, 0x8F, 0x45, 0xCF, 0x9B, 0x64, 0xCB, 0x60, 0x64, 0x20, 0x47,
        0xA8,
    ];

    #[test]
    fn decodes_fields_and_uuid_string() {
        let sb = decode(&fake_block(4096, U), 4096).unwrap();
        assert_eq!(sb.uuid_string(), "0C7010EBE28F45CF9B64CB60642047A8");
        assert_eq!(sb.system_dir_blkno, 6);
        assert_eq!(sb.root_blkno, 5);
        assert_eq!(sb.cluster_bits, 12);
        assert_eq!(sb.label, "test");
        // Read at the wrong size, the same bytes are not a superblock.
        assert!(decode(&fake_block(4096, U)[..2048], 2048).is_none());
        assert!(decode(&[0u8; 4096], 4096).is_none());
    }

    #[test]
    fn probes_every_block_size() {
        for bs in BLOCK_SIZES {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("img");
            let mut img = vec![0u8; 4 * 4096];
            let off = (2 * bs) as usize;
            img[off..off + bs as usize].copy_from_slice(&fake_block(bs, U));
            std::fs::write(&p, &img).unwrap();
            let sb = read_superblock(&p).unwrap();
            assert_eq!(sb.block_size, bs);
        }
    }

    #[test]
    fn short_or_blank_files_are_not_ocfs2() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, [0u8; 100]).unwrap();
        assert!(matches!(
            read_superblock(&p),
            Err(SuperblockError::NotOcfs2 { .. })
        ));
        std::fs::write(&p, vec![0u8; 64 * 1024]).unwrap();
        let e = read_superblock(&p).unwrap_err().to_string();
        assert!(e.contains("not an OCFS2 volume"), "{e}");
    }
}
