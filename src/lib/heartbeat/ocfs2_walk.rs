//! The OCFS2 side of region finding: from the superblock to the heartbeat
//! system file and its extent, the way libocfs2's
//! `ocfs2_fill_heartbeat_desc` walks it (the system directory inline or
//! extent-mapped, extent trees of any depth, the `heartbeat` inode and its
//! single extent). The layouts are pure decoders that never panic; block
//! reads are bounds-checked against the volume's size.
//!
//! May depend on: `ocfs2` (the superblock it starts from), `format` (the
//! slot count), and from `region` the types it returns (`Region`,
//! `RegionKind`, `RegionError`) and its file read helpers. Only
//! `region::probe` calls it ([`ocfs2_region`]).

use std::fs::File;
use std::path::Path;

use crate::heartbeat::format::REGION_SLOTS;
use crate::heartbeat::ocfs2::Superblock;
use crate::heartbeat::region::{Region, RegionError, RegionKind, le32, read_at};

fn le16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// `ocfs2_dinode` offsets (checked against a mkfs.ocfs2 1.8.7 image).
mod dinode {
    pub const SIGNATURE: &[u8; 8] = b"INODE01\0";
    pub const SIZE: usize = 0x20;
    pub const MODE: usize = 0x28;
    pub const FLAGS: usize = 0x2C;
    pub const BLKNO: usize = 0x50;
    pub const DYN_FEATURES: usize = 0x76;
    /// The union holding the extent list or the inline data.
    pub const ID2: usize = 0xC0;
    /// `ocfs2_inline_data.id_count` is at ID2; the bytes start 8 later.
    pub const INLINE_DATA: usize = ID2 + 8;

    pub const VALID_FL: u32 = 0x0001;
    pub const SYSTEM_FL: u32 = 0x0010;
    pub const HEARTBEAT_FL: u32 = 0x0200;
    pub const INLINE_DATA_FL: u16 = 0x0001;
    pub const S_IFMT: u16 = 0o170000;
    pub const S_IFDIR: u16 = 0o040000;
}

/// `ocfs2_extent_block` offsets.
mod extblk {
    pub const SIGNATURE: &[u8; 8] = b"EXBLK01\0";
    pub const BLKNO: usize = 0x18;
    pub const LIST: usize = 0x30;
}

/// `ocfs2_extent_list`: depth, count, next_free_rec, 10 reserved bytes, then
/// 16-byte records.
const EL_RECS: usize = 0x10;
const EXTENT_REC: usize = 16;
/// Directory entry header: u64 inode, u16 rec_len, u8 name_len, u8 type.
const DIRENT_HEADER: usize = 12;
/// The system file holding the heartbeat slots.
const HEARTBEAT_NAME: &[u8] = b"heartbeat";
/// Deeper extent trees than this are refused (OCFS2 never gets near it).
const MAX_TREE_DEPTH: u16 = 8;
/// Directory blocks read at most while looking for `heartbeat`.
const MAX_DIR_BLOCKS: u64 = 1 << 16;
/// Largest OCFS2 cluster: 1 MiB.
const MAX_CLUSTER_BITS: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    cpos: u32,
    /// Leaf records: clusters of data; interior records: clusters covered.
    clusters: u32,
    blkno: u64,
}

#[derive(Debug)]
struct ExtentList {
    depth: u16,
    recs: Vec<Extent>,
}

/// Parses the extent list at `off` in `block`. Pure; never panics.
fn parse_extent_list(block: &[u8], off: usize) -> Result<ExtentList, String> {
    let depth = le16(block, off);
    let count = usize::from(le16(block, off + 2));
    let used = usize::from(le16(block, off + 4));
    let room = block.len().saturating_sub(off + EL_RECS) / EXTENT_REC;
    if count > room || used > count {
        return Err(format!(
            "an extent list with {used} of {count} records used, where {room} fit"
        ));
    }
    let recs = (0..used)
        .map(|i| {
            let r = off + EL_RECS + i * EXTENT_REC;
            let clusters = if depth == 0 {
                // e_leaf_clusters u16, e_reserved1 u8, e_flags u8.
                u32::from(le16(block, r + 4))
            } else {
                // e_int_clusters u32.
                le32(block, r + 4)
            };
            Extent {
                cpos: le32(block, r),
                clusters,
                blkno: le64(block, r + 8),
            }
        })
        .collect();
    Ok(ExtentList { depth, recs })
}

/// Looks for `name` among the ext2-style entries in `buf`. Pure; never
/// panics. `Err` describes a malformed entry.
fn scan_dirents(buf: &[u8], name: &[u8]) -> Result<Option<u64>, String> {
    let mut pos = 0usize;
    while pos + DIRENT_HEADER <= buf.len() {
        let inode = le64(buf, pos);
        let rec_len = usize::from(le16(buf, pos + 8));
        let name_len = usize::from(buf[pos + 10]);
        if rec_len < DIRENT_HEADER || rec_len % 4 != 0 || rec_len > buf.len() - pos {
            return Err(format!(
                "a directory entry with record length {rec_len} at byte {pos} of {}",
                buf.len()
            ));
        }
        if inode != 0
            && name_len <= rec_len - DIRENT_HEADER
            && &buf[pos + DIRENT_HEADER..pos + DIRENT_HEADER + name_len] == name
        {
            return Ok(Some(inode));
        }
        pos += rec_len;
    }
    Ok(None)
}

/// The read side of an OCFS2 volume: block reads with bounds checks.
struct Volume<'a> {
    file: &'a File,
    path: &'a Path,
    sb: &'a Superblock,
    size: u64,
    block_bits: u32,
}

impl Volume<'_> {
    fn bad(&self, detail: String) -> RegionError {
        RegionError::Ocfs2 {
            path: self.path.to_owned(),
            detail,
        }
    }

    fn read_block(&self, blkno: u64, what: &str) -> Result<Vec<u8>, RegionError> {
        let bs = u64::from(self.sb.block_size);
        let offset = blkno
            .checked_mul(bs)
            .filter(|o| o.checked_add(bs).is_some_and(|end| end <= self.size))
            .ok_or_else(|| {
                self.bad(format!(
                    "{what} at block {blkno} lies beyond the end ({} bytes)",
                    self.size
                ))
            })?;
        let mut buf = vec![0u8; self.sb.block_size as usize];
        read_at(self.file, self.path, &mut buf, offset)?;
        Ok(buf)
    }

    fn read_inode(&self, blkno: u64, what: &str) -> Result<Vec<u8>, RegionError> {
        let b = self.read_block(blkno, what)?;
        if !b.starts_with(dinode::SIGNATURE) {
            return Err(self.bad(format!("{what} at block {blkno} is not an inode")));
        }
        let recorded = le64(&b, dinode::BLKNO);
        if recorded != blkno {
            return Err(self.bad(format!(
                "{what} at block {blkno} says it is block {recorded}"
            )));
        }
        let flags = le32(&b, dinode::FLAGS);
        if flags & dinode::VALID_FL == 0 {
            return Err(self.bad(format!(
                "{what} at block {blkno} is not a valid inode (flags {flags:#x})"
            )));
        }
        Ok(b)
    }

    /// The leaf extents of the tree whose root list is at `off` in `block`,
    /// in logical order.
    fn leaf_extents(
        &self,
        block: &[u8],
        off: usize,
        what: &str,
    ) -> Result<Vec<Extent>, RegionError> {
        let root =
            parse_extent_list(block, off).map_err(|e| self.bad(format!("{what} has {e}")))?;
        if root.depth > MAX_TREE_DEPTH {
            return Err(self.bad(format!("{what} has an extent tree of depth {}", root.depth)));
        }
        let mut leaves = Vec::new();
        let mut budget = MAX_DIR_BLOCKS;
        self.collect_leaves(root, what, &mut leaves, &mut budget)?;
        leaves.sort_by_key(|e| e.cpos);
        Ok(leaves)
    }

    fn collect_leaves(
        &self,
        list: ExtentList,
        what: &str,
        out: &mut Vec<Extent>,
        budget: &mut u64,
    ) -> Result<(), RegionError> {
        if list.depth == 0 {
            out.extend(list.recs);
            return Ok(());
        }
        for rec in list.recs {
            *budget = budget
                .checked_sub(1)
                .ok_or_else(|| self.bad(format!("{what} has too many extent blocks")))?;
            let b = self.read_block(rec.blkno, "extent block")?;
            if !b.starts_with(extblk::SIGNATURE) || le64(&b, extblk::BLKNO) != rec.blkno {
                return Err(self.bad(format!(
                    "{what}: block {} is not an extent block",
                    rec.blkno
                )));
            }
            let child = parse_extent_list(&b, extblk::LIST)
                .map_err(|e| self.bad(format!("{what}: extent block {} has {e}", rec.blkno)))?;
            if child.depth + 1 != list.depth {
                return Err(self.bad(format!(
                    "{what}: extent block {} has depth {} under depth {}",
                    rec.blkno, child.depth, list.depth
                )));
            }
            self.collect_leaves(child, what, out, budget)?;
        }
        Ok(())
    }

    /// Looks `name` up in the directory whose inode is at `dir_blkno`.
    fn lookup(&self, dir_blkno: u64, name: &[u8]) -> Result<Option<u64>, RegionError> {
        let what = "the system directory";
        let inode = self.read_inode(dir_blkno, what)?;
        let mode = le16(&inode, dinode::MODE);
        if mode & dinode::S_IFMT != dinode::S_IFDIR {
            return Err(self.bad(format!(
                "{what} at block {dir_blkno} is not a directory (mode {mode:o})"
            )));
        }
        let size = le64(&inode, dinode::SIZE);
        let corrupt = |e: String| self.bad(format!("{what} has {e}"));

        if le16(&inode, dinode::DYN_FEATURES) & dinode::INLINE_DATA_FL != 0 {
            let count = usize::from(le16(&inode, dinode::ID2));
            let room = inode.len() - dinode::INLINE_DATA;
            let len = count
                .min(room)
                .min(usize::try_from(size).unwrap_or(usize::MAX));
            let data = &inode[dinode::INLINE_DATA..dinode::INLINE_DATA + len];
            return scan_dirents(data, name).map_err(corrupt);
        }

        let bs = u64::from(self.sb.block_size);
        let blocks = size.div_ceil(bs);
        if blocks > MAX_DIR_BLOCKS {
            return Err(self.bad(format!("{what} claims {size} bytes")));
        }
        let per_cluster_bits = self.sb.cluster_bits - self.block_bits;
        let mut reads = 0u64;
        for ext in self.leaf_extents(&inode, dinode::ID2, what)? {
            let first = u64::from(ext.cpos) << per_cluster_bits;
            let n = u64::from(ext.clusters) << per_cluster_bits;
            for i in 0..n {
                if first + i >= blocks {
                    break;
                }
                reads += 1;
                if reads > blocks {
                    return Err(self.bad(format!("{what} has overlapping extents")));
                }
                let b = self.read_block(ext.blkno.saturating_add(i), "a directory block")?;
                if let Some(found) = scan_dirents(&b, name).map_err(corrupt)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}

/// The heartbeat area of an OCFS2 volume whose superblock is `sb`, with slots
/// of `sector` bytes.
pub(super) fn ocfs2_region(
    file: &File,
    path: &Path,
    sb: &Superblock,
    size: u64,
    sector: u32,
) -> Result<Region, RegionError> {
    let bad = |detail: String| RegionError::Ocfs2 {
        path: path.to_owned(),
        detail,
    };
    let block_bits = sb.block_size.trailing_zeros();
    if sb.cluster_bits < block_bits || sb.cluster_bits > MAX_CLUSTER_BITS {
        return Err(bad(format!(
            "the superblock gives cluster bits {} with {}-byte blocks",
            sb.cluster_bits, sb.block_size
        )));
    }
    let vol = Volume {
        file,
        path,
        sb,
        size,
        block_bits,
    };
    let hb_blkno = vol
        .lookup(sb.system_dir_blkno, HEARTBEAT_NAME)?
        .ok_or_else(|| {
            bad(format!(
                "the system directory (block {}) has no heartbeat file",
                sb.system_dir_blkno
            ))
        })?;
    let what = "the heartbeat inode";
    let inode = vol.read_inode(hb_blkno, what)?;
    let flags = le32(&inode, dinode::FLAGS);
    let want = dinode::VALID_FL | dinode::SYSTEM_FL | dinode::HEARTBEAT_FL;
    if flags & want != want {
        return Err(bad(format!(
            "{what} at block {hb_blkno} has flags {flags:#x}, not valid|system|heartbeat ({want:#x})"
        )));
    }
    let list =
        parse_extent_list(&inode, dinode::ID2).map_err(|e| bad(format!("{what} has {e}")))?;
    if list.depth != 0 || list.recs.len() != 1 {
        return Err(bad(format!(
            "{what} has an extent tree of depth {} with {} records; need depth 0 with exactly 1",
            list.depth,
            list.recs.len()
        )));
    }
    let ext = list.recs[0];
    let blocks = (u64::from(ext.clusters) << sb.cluster_bits) >> block_bits;
    if blocks < REGION_SLOTS as u64 {
        return Err(bad(format!(
            "the heartbeat file has {blocks} blocks, fewer than {REGION_SLOTS}"
        )));
    }
    let start_byte = ext
        .blkno
        .checked_mul(u64::from(sb.block_size))
        .ok_or_else(|| {
            bad(format!(
                "the heartbeat extent starts at block {}",
                ext.blkno
            ))
        })?;
    if start_byte % u64::from(sector) != 0 {
        return Err(bad(format!(
            "the heartbeat area at byte {start_byte} is not aligned to {sector}-byte sectors"
        )));
    }
    let region = Region {
        kind: RegionKind::Ocfs2,
        uuid: sb.uuid,
        block_bytes: sector,
        start_byte,
        slots: REGION_SLOTS as u32,
    };
    if region.end_byte() > size {
        return Err(RegionError::TooSmall {
            path: path.to_owned(),
            size,
            needed: region.end_byte(),
        });
    }
    Ok(region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn dirent_scan_and_extent_parse_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), off in 0usize..700) {
            let _ = scan_dirents(&data, HEARTBEAT_NAME);
            let _ = parse_extent_list(&data, off);
        }
    }
}
