//! Where the heartbeat slots of a region are.
//!
//! Two kinds of region are recognised (layouts in `docs/HEARTBEAT.md`):
//!
//! - **OCFS2 volume** ([`RegionKind::Ocfs2`]): the slots live in the
//!   `heartbeat` system file. It is found the way libocfs2's
//!   `ocfs2_fill_heartbeat_desc` finds it: superblock, system directory
//!   (inline or extent-mapped, indexed or not), the `heartbeat` inode and its
//!   single extent. The region is named by the volume UUID.
//! - **Raw region** ([`RegionKind::Raw`]): a device or file formatted by
//!   [`format_raw`]: our header ([`RawHeader`]) in the first slot-sized block,
//!   slot `n` at byte `(1 + n) × block_bytes`.
//!
//! [`locate`] opens a path and recognises it; [`probe`] does the same on an
//! open file with a given sector size. Decoding never panics, whatever the
//! bytes on disk.
//!
//! This module owns the region abstraction ([`Region`], its errors), the raw
//! region (header, geometry, [`format_raw`]) and the file checks and reads
//! both kinds share; the walk through an OCFS2 volume to its heartbeat file
//! is `ocfs2_walk`'s.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::heartbeat::format::{REGION_SLOTS, crc32_le, is_valid_slot_size};
use crate::heartbeat::ocfs2::{self, SuperblockError};
use crate::heartbeat::ocfs2_walk::ocfs2_region;

/// The magic at byte 0 of a raw region.
pub const RAW_MAGIC: &[u8; 8] = b"O2THBRGN";
/// The raw header version this build writes and reads.
pub const RAW_VERSION: u32 = 1;
/// Bytes of the raw header covered by its checksum (the rest of the header
/// block is zero when written and ignored when read).
pub const RAW_HEADER_BYTES: usize = 64;

const RAW_OFF_VERSION: usize = 8;
const RAW_OFF_BLOCK: usize = 12;
const RAW_OFF_SLOTS: usize = 16;
const RAW_OFF_UUID: usize = 20;
const RAW_OFF_CKSUM: usize = 36;

/// Smallest sector size assumed for regular files and used to express
/// [`Region::start_sector`].
pub const SECTOR_BYTES: u32 = 512;

// ---------------------------------------------------------------------------
// Region

/// What kind of region a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// The heartbeat system file of an OCFS2 volume.
    Ocfs2,
    /// A region formatted by [`format_raw`].
    Raw,
}

impl RegionKind {
    /// A short name for people: `ocfs2` or `raw`.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Ocfs2 => "ocfs2",
            RegionKind::Raw => "raw",
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the slots of a heartbeat region are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// What the path holds.
    pub kind: RegionKind,
    /// The region UUID (the volume UUID for OCFS2).
    pub uuid: [u8; 16],
    /// Size of one slot in bytes (a power of two from 512 to 4096).
    pub block_bytes: u32,
    /// Byte offset of slot 0.
    pub start_byte: u64,
    /// Number of slots.
    pub slots: u32,
}

impl Region {
    /// The UUID as the cluster stack names regions: 32 upper-case hex digits.
    pub fn uuid_string(&self) -> String {
        uuid_hex(&self.uuid)
    }

    /// Where slot 0 is, in 512-byte sectors (what o2hb calls the start block
    /// on a 512-byte-sector device).
    pub fn start_sector(&self) -> u64 {
        self.start_byte / u64::from(SECTOR_BYTES)
    }

    /// Byte offset of `slot`. The slot number is not checked against
    /// [`Region::slots`]; the arithmetic saturates instead of overflowing.
    pub fn slot_offset(&self, slot: u32) -> u64 {
        self.start_byte
            .saturating_add(u64::from(slot).saturating_mul(u64::from(self.block_bytes)))
    }

    /// Bytes taken by the slots (`slots × block_bytes`, not counting a raw
    /// region's header).
    pub fn len_bytes(&self) -> u64 {
        u64::from(self.slots).saturating_mul(u64::from(self.block_bytes))
    }

    /// The byte just past the last slot.
    pub fn end_byte(&self) -> u64 {
        self.start_byte.saturating_add(self.len_bytes())
    }
}

fn uuid_hex(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02X}")).collect()
}

// ---------------------------------------------------------------------------
// Errors

/// What is wrong with a raw region header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RawHeaderError {
    /// The block does not start with [`RAW_MAGIC`].
    #[error("no o2tools region header (magic O2THBRGN not found)")]
    NoMagic,
    /// Fewer than [`RAW_HEADER_BYTES`] bytes were given.
    #[error("region header is {len} bytes, need {RAW_HEADER_BYTES}")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The stored checksum does not match the header.
    #[error("region header checksum is {stored:08x}, expected {computed:08x}")]
    BadChecksum {
        /// The checksum stored in the header.
        stored: u32,
        /// The checksum computed over the header.
        computed: u32,
    },
    /// A header version this build does not know.
    #[error("region header version {version} is not supported (this build reads version 1)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The block size is not a power of two from 512 to 4096.
    #[error("region header block size {block_bytes} is not a power of two from 512 to 4096")]
    BadBlockSize {
        /// The block size found.
        block_bytes: u32,
    },
    /// The slot count is not 1 to 255.
    #[error("region header slot count {slots} is not 1 to 255")]
    BadSlots {
        /// The slot count found.
        slots: u32,
    },
}

/// Why a region could not be located or formatted.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The path could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The device or file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The path could not be examined (stat, size).
    #[error("cannot examine {}: {source}", path.display())]
    Stat {
        /// The device or file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// A read failed or came back short.
    #[error("cannot read {} at byte {offset}: {source}", path.display())]
    Read {
        /// The device or file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// The system error.
        source: io::Error,
    },
    /// A write failed.
    #[error("cannot write {} at byte {offset}: {source}", path.display())]
    Write {
        /// The device or file.
        path: PathBuf,
        /// Where the write started.
        offset: u64,
        /// The system error.
        source: io::Error,
    },
    /// fsync failed.
    #[error("cannot sync {}: {source}", path.display())]
    Sync {
        /// The device or file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{} is a {found}, not a regular file or block device", path.display())]
    NotFileOrDevice {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        found: &'static str,
    },
    /// Reading the OCFS2 superblock failed.
    #[error(transparent)]
    Superblock(#[from] SuperblockError),
    /// Neither kind of region is there.
    #[error(
        "{} is not a heartbeat region ({size} bytes: no OCFS2 superblock and no o2tools region header)",
        path.display()
    )]
    NotARegion {
        /// The path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Both an OCFS2 superblock and a raw header are present.
    #[error(
        "{} has both an OCFS2 superblock and an o2tools region header; refusing to guess which is current",
        path.display()
    )]
    Ambiguous {
        /// The path.
        path: PathBuf,
    },
    /// A raw header is there but unusable.
    #[error("{}: {source}", path.display())]
    RawHeader {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        source: RawHeaderError,
    },
    /// An OCFS2 volume whose heartbeat area cannot be found.
    #[error("{}: OCFS2 volume, but {detail}", path.display())]
    Ocfs2 {
        /// The path.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The file or device is smaller than the region needs.
    #[error("{} is {size} bytes, too small: the region needs {needed} bytes", path.display())]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bytes needed.
        needed: u64,
    },
    /// The device's sector size cannot hold heartbeat slots.
    #[error(
        "{} has {sector}-byte logical sectors; heartbeat slots must be 512 to 4096 bytes",
        path.display()
    )]
    UnsupportedSector {
        /// The device.
        path: PathBuf,
        /// Its logical sector size.
        sector: u32,
    },
    /// The slots would be smaller than the device's sectors.
    #[error(
        "{} has {sector}-byte logical sectors, larger than {block_bytes}-byte heartbeat slots",
        path.display()
    )]
    SlotBelowSector {
        /// The device.
        path: PathBuf,
        /// The slot size.
        block_bytes: u32,
        /// The device's logical sector size.
        sector: u32,
    },
    /// [`FormatOptions`] out of range.
    #[error("bad region options: {detail}")]
    BadOptions {
        /// What is wrong.
        detail: String,
    },
    /// A UUID that could not be parsed.
    #[error("bad uuid {input:?}: expected 32 hex digits or the 8-4-4-4-12 form")]
    BadUuid {
        /// What was given.
        input: String,
    },
    /// [`format_raw`] found something worth keeping and was not forced.
    #[error("refusing to format {}: it holds {found}; use force to overwrite it", path.display())]
    Refused {
        /// The path.
        path: PathBuf,
        /// What it holds.
        found: String,
    },
    /// No random bytes for a UUID.
    #[error("cannot read /dev/urandom for a new uuid: {source}")]
    Random {
        /// The system error.
        source: io::Error,
    },
}

impl RegionError {
    /// Whether this is a system error (as opposed to something found on disk).
    fn is_system(&self) -> bool {
        matches!(
            self,
            RegionError::Open { .. }
                | RegionError::Stat { .. }
                | RegionError::Read { .. }
                | RegionError::Write { .. }
                | RegionError::Sync { .. }
                | RegionError::NotFileOrDevice { .. }
                | RegionError::Superblock(SuperblockError::Io { .. })
                | RegionError::UnsupportedSector { .. }
                | RegionError::Random { .. }
        )
    }
}

// ---------------------------------------------------------------------------
// Raw header

/// The header of a raw region, as stored in its first block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawHeader {
    /// Slot size in bytes.
    pub block_bytes: u32,
    /// Number of slots.
    pub slots: u32,
    /// The region UUID.
    pub uuid: [u8; 16],
}

pub(super) fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// The raw header checksum: CRC-32 as zlib computes it
/// (`!crc32_le(!0, bytes)`) over the first [`RAW_HEADER_BYTES`] bytes, with
/// the checksum field counted as zero. `header` must hold at least that many
/// bytes.
fn raw_checksum(header: &[u8]) -> u32 {
    let crc = crc32_le(!0, &header[..RAW_OFF_CKSUM]);
    let crc = crc32_le(crc, &[0u8; 4]);
    !crc32_le(crc, &header[RAW_OFF_CKSUM + 4..RAW_HEADER_BYTES])
}

impl RawHeader {
    /// The region this header describes: slot 0 right after the header block.
    pub fn region(&self) -> Region {
        Region {
            kind: RegionKind::Raw,
            uuid: self.uuid,
            block_bytes: self.block_bytes,
            start_byte: u64::from(self.block_bytes),
            slots: self.slots,
        }
    }

    /// Bytes the whole region takes: the header block and the slots.
    pub fn total_bytes(&self) -> u64 {
        (1 + u64::from(self.slots)) * u64::from(self.block_bytes)
    }

    /// Writes the header into `block` (normally one whole header block):
    /// everything is overwritten, bytes past the header are zeroed.
    ///
    /// Fails, leaving `block` untouched, if it is shorter than
    /// [`RAW_HEADER_BYTES`].
    pub fn encode(&self, block: &mut [u8]) -> Result<(), RawHeaderError> {
        if block.len() < RAW_HEADER_BYTES {
            return Err(RawHeaderError::TooShort { len: block.len() });
        }
        block.fill(0);
        block[..8].copy_from_slice(RAW_MAGIC);
        block[RAW_OFF_VERSION..RAW_OFF_VERSION + 4].copy_from_slice(&RAW_VERSION.to_le_bytes());
        block[RAW_OFF_BLOCK..RAW_OFF_BLOCK + 4].copy_from_slice(&self.block_bytes.to_le_bytes());
        block[RAW_OFF_SLOTS..RAW_OFF_SLOTS + 4].copy_from_slice(&self.slots.to_le_bytes());
        block[RAW_OFF_UUID..RAW_OFF_UUID + 16].copy_from_slice(&self.uuid);
        let crc = raw_checksum(block);
        block[RAW_OFF_CKSUM..RAW_OFF_CKSUM + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Reads a header from the start of `block`: magic, then checksum, then
    /// version, block size and slot count, in that order. Never panics.
    pub fn decode(block: &[u8]) -> Result<RawHeader, RawHeaderError> {
        if !block.starts_with(RAW_MAGIC) {
            return Err(RawHeaderError::NoMagic);
        }
        if block.len() < RAW_HEADER_BYTES {
            return Err(RawHeaderError::TooShort { len: block.len() });
        }
        let stored = le32(block, RAW_OFF_CKSUM);
        let computed = raw_checksum(block);
        if stored != computed {
            return Err(RawHeaderError::BadChecksum { stored, computed });
        }
        let version = le32(block, RAW_OFF_VERSION);
        if version != RAW_VERSION {
            return Err(RawHeaderError::UnsupportedVersion { version });
        }
        let block_bytes = le32(block, RAW_OFF_BLOCK);
        if !is_valid_slot_size(block_bytes as usize) {
            return Err(RawHeaderError::BadBlockSize { block_bytes });
        }
        let slots = le32(block, RAW_OFF_SLOTS);
        if slots == 0 || slots as usize > REGION_SLOTS {
            return Err(RawHeaderError::BadSlots { slots });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&block[RAW_OFF_UUID..RAW_OFF_UUID + 16]);
        Ok(RawHeader {
            block_bytes,
            slots,
            uuid,
        })
    }
}

// ---------------------------------------------------------------------------
// File helpers

mod ioctl {
    nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
}

/// The logical sector size of `file`: `BLKSSZGET` for a block device, 512
/// for anything else.
pub fn logical_block_size(file: &File) -> io::Result<u32> {
    if !file.metadata()?.file_type().is_block_device() {
        return Ok(SECTOR_BYTES);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to
    // a live c_int; the descriptor stays open for the call.
    unsafe { ioctl::blksszget(std::os::fd::AsRawFd::as_raw_fd(file), &mut size) }
        .map_err(io::Error::from)?;
    u32::try_from(size).map_err(|_| io::Error::other(format!("BLKSSZGET returned {size}")))
}

fn check_file_type(file: &File, path: &Path) -> Result<(), RegionError> {
    let ft = file
        .metadata()
        .map_err(|source| RegionError::Stat {
            path: path.to_owned(),
            source,
        })?
        .file_type();
    let found = if ft.is_file() || ft.is_block_device() {
        return Ok(());
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    };
    Err(RegionError::NotFileOrDevice {
        path: path.to_owned(),
        found,
    })
}

/// Size in bytes of a regular file or block device.
fn size_of(file: &File, path: &Path) -> Result<u64, RegionError> {
    let stat = |source| RegionError::Stat {
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(stat)?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0)).map_err(stat)
    } else {
        Ok(meta.len())
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub(super) fn read_at(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), RegionError> {
    file.read_exact_at(buf, offset)
        .map_err(|source| RegionError::Read {
            path: path.to_owned(),
            offset,
            source,
        })
}

// ---------------------------------------------------------------------------
// Probe and locate

/// Reads the raw header at byte 0, if there is one (None without the magic).
fn read_raw_header(
    file: &File,
    path: &Path,
    size: u64,
) -> Result<Option<Result<RawHeader, RawHeaderError>>, RegionError> {
    let len = size.min(RAW_HEADER_BYTES as u64) as usize;
    let mut buf = [0u8; RAW_HEADER_BYTES];
    read_at(file, path, &mut buf[..len], 0)?;
    match RawHeader::decode(&buf[..len]) {
        Err(RawHeaderError::NoMagic) => Ok(None),
        other => Ok(Some(other)),
    }
}

/// Recognises the region on an open file or device whose logical sector size
/// is `sector` (see [`logical_block_size`]).
///
/// An OCFS2 volume gives slots of `sector` bytes at its heartbeat file; a raw
/// region gives what its header says, provided its slots are at least
/// `sector` bytes and the file is large enough. Anything else, and anything
/// with both an OCFS2 superblock and a raw header, is an error that says what
/// was found.
pub fn probe(file: &File, path: &Path, sector: u32) -> Result<Region, RegionError> {
    check_file_type(file, path)?;
    if !is_valid_slot_size(sector as usize) {
        return Err(RegionError::UnsupportedSector {
            path: path.to_owned(),
            sector,
        });
    }
    let size = size_of(file, path)?;
    let sb = match ocfs2::probe(file, path) {
        Ok(sb) => Some(sb),
        Err(SuperblockError::NotOcfs2 { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let raw = read_raw_header(file, path, size)?;
    match (sb, raw) {
        (Some(_), Some(_)) => Err(RegionError::Ambiguous {
            path: path.to_owned(),
        }),
        (Some(sb), None) => ocfs2_region(file, path, &sb, size, sector),
        (None, Some(Err(source))) => Err(RegionError::RawHeader {
            path: path.to_owned(),
            source,
        }),
        (None, Some(Ok(h))) => {
            if h.block_bytes < sector {
                return Err(RegionError::SlotBelowSector {
                    path: path.to_owned(),
                    block_bytes: h.block_bytes,
                    sector,
                });
            }
            if size < h.total_bytes() {
                return Err(RegionError::TooSmall {
                    path: path.to_owned(),
                    size,
                    needed: h.total_bytes(),
                });
            }
            Ok(h.region())
        }
        (None, None) => Err(RegionError::NotARegion {
            path: path.to_owned(),
            size,
        }),
    }
}

/// Opens `path` read-only and recognises the region on it.
pub fn locate(path: &Path) -> Result<Region, RegionError> {
    let file = File::open(path).map_err(|source| RegionError::Open {
        path: path.to_owned(),
        source,
    })?;
    let sector = logical_block_size(&file).map_err(|source| RegionError::Stat {
        path: path.to_owned(),
        source,
    })?;
    probe(&file, path, sector)
}

// ---------------------------------------------------------------------------
// Format

/// How [`format_raw`] lays out a raw region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatOptions {
    /// The region UUID; a random (version 4) one if None.
    pub uuid: Option<[u8; 16]>,
    /// Slot size in bytes: a power of two from 512 to 4096, and at least the
    /// device's logical sector size.
    pub block_bytes: u32,
    /// Number of slots, 1 to 255.
    pub slots: u32,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            uuid: None,
            block_bytes: SECTOR_BYTES,
            slots: REGION_SLOTS as u32,
        }
    }
}

/// Bytes at the start of a device that may hold an OCFS2 superblock (block 2
/// at 4096 bytes ends here). Overwriting an OCFS2 volume clears them all.
const OCFS2_SUPER_END: u64 = 3 * 4096;

/// Formats `path` (an existing file or block device) as a raw region: writes
/// the header, zeroes every slot, fsyncs, and returns the region.
///
/// Without `force` it refuses an OCFS2 volume, an existing raw region (valid
/// or damaged) and anything whose region bytes are not all zero; a file of
/// zeros is formatted. With `force`, anything large enough is formatted; an
/// OCFS2 volume also loses its superblock candidates (the first 12 KiB), so it
/// is no longer recognised as OCFS2. Nothing is written if any check fails.
pub fn format_raw(path: &Path, opts: &FormatOptions, force: bool) -> Result<Region, RegionError> {
    if !is_valid_slot_size(opts.block_bytes as usize) {
        return Err(RegionError::BadOptions {
            detail: format!(
                "slot size {} is not a power of two from 512 to 4096",
                opts.block_bytes
            ),
        });
    }
    if opts.slots == 0 || opts.slots as usize > REGION_SLOTS {
        return Err(RegionError::BadOptions {
            detail: format!("slot count {} is not 1 to {REGION_SLOTS}", opts.slots),
        });
    }
    // A block device is opened exclusively: the kernel then refuses one that
    // is mounted or otherwise held (EBUSY).
    let is_bdev = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if is_bdev { libc::O_EXCL } else { 0 })
        .open(path)
        .map_err(|source| RegionError::Open {
            path: path.to_owned(),
            source,
        })?;
    check_file_type(&file, path)?;
    let sector = logical_block_size(&file).map_err(|source| RegionError::Stat {
        path: path.to_owned(),
        source,
    })?;
    if opts.block_bytes < sector {
        return Err(RegionError::SlotBelowSector {
            path: path.to_owned(),
            block_bytes: opts.block_bytes,
            sector,
        });
    }
    let size = size_of(&file, path)?;
    let header = RawHeader {
        block_bytes: opts.block_bytes,
        slots: opts.slots,
        uuid: [0; 16],
    };
    let needed = header.total_bytes();
    if size < needed {
        return Err(RegionError::TooSmall {
            path: path.to_owned(),
            size,
            needed,
        });
    }

    let mut wipe_end = needed;
    match probe(&file, path, sector) {
        Ok(r) => {
            if !force {
                let what = match r.kind {
                    RegionKind::Ocfs2 => "an OCFS2 volume",
                    RegionKind::Raw => "an o2tools heartbeat region",
                };
                return Err(RegionError::Refused {
                    path: path.to_owned(),
                    found: format!("{what} (uuid {})", r.uuid_string()),
                });
            }
        }
        Err(RegionError::NotARegion { .. }) => {
            if !force {
                let mut buf = vec![0u8; needed as usize];
                read_at(&file, path, &mut buf, 0)?;
                if let Some(at) = buf.iter().position(|&b| b != 0) {
                    return Err(RegionError::Refused {
                        path: path.to_owned(),
                        found: format!(
                            "unrecognised data (a non-zero byte at offset {at}, within the {needed} bytes the region needs)"
                        ),
                    });
                }
            }
        }
        Err(e) if e.is_system() => return Err(e),
        Err(e) => {
            if !force {
                return Err(RegionError::Refused {
                    path: path.to_owned(),
                    found: format!("something unusable ({e})"),
                });
            }
        }
    }
    // Whatever superblock was there must not survive outside the region.
    if force {
        match ocfs2::probe(&file, path) {
            Ok(_) => wipe_end = wipe_end.max(OCFS2_SUPER_END.min(size)),
            Err(SuperblockError::NotOcfs2 { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let uuid = match opts.uuid {
        Some(u) => u,
        None => random_uuid()?,
    };
    let header = RawHeader { uuid, ..header };
    let mut buf = vec![0u8; wipe_end as usize];
    header
        .encode(&mut buf[..opts.block_bytes as usize])
        .map_err(|e| RegionError::BadOptions {
            detail: e.to_string(),
        })?;
    file.write_all_at(&buf, 0)
        .map_err(|source| RegionError::Write {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
    file.sync_all().map_err(|source| RegionError::Sync {
        path: path.to_owned(),
        source,
    })?;
    probe(&file, path, sector)
}

// ---------------------------------------------------------------------------
// UUIDs

/// Parses a UUID given as 32 hex digits or in the dashed 8-4-4-4-12 form,
/// in any case.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], RegionError> {
    let bad = || RegionError::BadUuid {
        input: s.to_owned(),
    };
    let b = s.as_bytes();
    let digits: Vec<u8> = match b.len() {
        32 => b.to_vec(),
        36 => {
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return Err(bad());
            }
            b.iter().copied().filter(|&c| c != b'-').collect()
        }
        _ => return Err(bad()),
    };
    if digits.len() != 32 {
        return Err(bad());
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = nibble(pair[0]).ok_or_else(bad)?;
        let lo = nibble(pair[1]).ok_or_else(bad)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

/// A random RFC 4122 version 4 UUID from /dev/urandom.
pub fn random_uuid() -> Result<[u8; 16], RegionError> {
    let mut u = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .map_err(|source| RegionError::Random { source })?;
    u[6] = (u[6] & 0x0F) | 0x40;
    u[8] = (u[8] & 0x3F) | 0x80;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U: [u8; 16] = [
        0x0C, 0x70, 0x10, 0xEB, 0xE2, 0x8F, 0x45, 0xCF, 0x9B, 0x64, 0xCB, 0x60, 0x64, 0x20, 0x47,
        0xA8,
    ];

    fn header() -> RawHeader {
        RawHeader {
            block_bytes: 512,
            slots: 255,
            uuid: U,
        }
    }

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn header_layout_and_round_trip() {
        let mut block = vec![0xAAu8; 512];
        header().encode(&mut block).unwrap();
        assert_eq!(&block[..8], b"O2THBRGN");
        assert_eq!(le32(&block, 8), 1);
        assert_eq!(le32(&block, 12), 512);
        assert_eq!(le32(&block, 16), 255);
        assert_eq!(&block[20..36], &U);
        assert!(block[40..].iter().all(|&b| b == 0));
        // The checksum is zlib's CRC-32 of the 64 bytes with the field zeroed.
        let mut zeroed = block[..64].to_vec();
        zeroed[36..40].fill(0);
        assert_eq!(le32(&block, 36), !crc32_le(!0, &zeroed));
        assert_eq!(RawHeader::decode(&block).unwrap(), header());
        // Only the first 64 bytes matter to decode.
        assert_eq!(RawHeader::decode(&block[..64]).unwrap(), header());
        let r = header().region();
        assert_eq!(r.kind, RegionKind::Raw);
        assert_eq!(r.start_byte, 512);
        assert_eq!(header().total_bytes(), 256 * 512);
        let mut short = [7u8; 63];
        assert_eq!(
            header().encode(&mut short),
            Err(RawHeaderError::TooShort { len: 63 })
        );
        assert!(short.iter().all(|&b| b == 7));
    }

    #[test]
    fn header_checksum_known_value() {
        // Pinned so that the on-disk format cannot drift unnoticed; the value
        // is what Python's zlib.crc32 gives for the 64 bytes with the
        // checksum field zeroed.
        let mut block = [0u8; 64];
        header().encode(&mut block).unwrap();
        assert_eq!(le32(&block, 36), 0x3ef1_9761);
        assert_eq!(&block[36..40], &[0x61, 0x97, 0xf1, 0x3e]);
        assert_eq!(!crc32_le(!0, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn header_errors() {
        let mut block = vec![0u8; 512];
        header().encode(&mut block).unwrap();
        assert_eq!(RawHeader::decode(&[0u8; 512]), Err(RawHeaderError::NoMagic));
        assert_eq!(
            RawHeader::decode(&block[..20]),
            Err(RawHeaderError::TooShort { len: 20 })
        );
        for pos in [8, 12, 16, 20, 35, 36, 39, 40, 63] {
            let mut bad = block.clone();
            bad[pos] ^= 0x10;
            let e = RawHeader::decode(&bad).unwrap_err();
            assert!(
                matches!(e, RawHeaderError::BadChecksum { .. }),
                "byte {pos}: {e}"
            );
            assert!(e.to_string().contains("checksum"), "{e}");
        }
        // Past the 64 checksummed bytes nothing is looked at.
        let mut tail = block.clone();
        tail[100] = 1;
        assert!(RawHeader::decode(&tail).is_ok());

        let reseal = |f: &dyn Fn(&mut [u8])| {
            let mut b = block.clone();
            f(&mut b);
            let c = raw_checksum(&b);
            put32(&mut b, 36, c);
            RawHeader::decode(&b)
        };
        assert_eq!(
            reseal(&|b| put32(b, 8, 2)),
            Err(RawHeaderError::UnsupportedVersion { version: 2 })
        );
        assert_eq!(
            reseal(&|b| put32(b, 12, 1000)),
            Err(RawHeaderError::BadBlockSize { block_bytes: 1000 })
        );
        assert_eq!(
            reseal(&|b| put32(b, 16, 0)),
            Err(RawHeaderError::BadSlots { slots: 0 })
        );
        assert_eq!(
            reseal(&|b| put32(b, 16, 256)),
            Err(RawHeaderError::BadSlots { slots: 256 })
        );
    }

    #[test]
    fn uuid_forms() {
        assert_eq!(parse_uuid("0C7010EBE28F45CF9B64CB60642047A8").ok(), Some(U));
        assert_eq!(parse_uuid("0c7010ebe28f45cf9b64cb60642047a8").ok(), Some(U));
        assert_eq!(
            parse_uuid("0C7010EB-E28F-45CF-9B64-CB60642047A8").ok(),
            Some(U)
        );
        assert_eq!(
            parse_uuid("0c7010eb-E28F-45cf-9b64-cb60642047A8").ok(),
            Some(U)
        );
        for bad in [
            "",
            "0C7010EBE28F45CF9B64CB60642047A",
            "0C7010EBE28F45CF9B64CB60642047A8A",
            "0C7010EBE28F45CF9B64CB60642047AG",
            "0C7010EB-E28F-45CF-9B64CB60642047A8-",
            "0C7010EBE-28F-45CF-9B64-CB60642047A8",
            "0C7010EB-E28F-45CF-9B64-CB60642047+8",
            "+C7010EBE28F45CF9B64CB60642047A8",
            "ééééééééééééééééé",
        ] {
            let e = parse_uuid(bad).unwrap_err();
            assert!(e.to_string().starts_with("bad uuid"), "{bad}: {e}");
        }
        let r = random_uuid().unwrap();
        assert_eq!(r[6] >> 4, 4);
        assert_eq!(r[8] & 0xC0, 0x80);
        assert_ne!(random_uuid().unwrap(), r);
    }

    #[test]
    fn region_geometry() {
        let r = Region {
            kind: RegionKind::Ocfs2,
            uuid: U,
            block_bytes: 512,
            start_byte: 1_118_208,
            slots: 255,
        };
        assert_eq!(r.uuid_string(), "0C7010EBE28F45CF9B64CB60642047A8");
        assert_eq!(r.start_sector(), 2184);
        assert_eq!(r.slot_offset(0), 1_118_208);
        assert_eq!(r.slot_offset(1), 1_118_720);
        assert_eq!(r.slot_offset(254), 1_118_208 + 254 * 512);
        assert_eq!(r.len_bytes(), 255 * 512);
        assert_eq!(r.end_byte(), 1_118_208 + 255 * 512);
        assert_eq!(RegionKind::Ocfs2.to_string(), "ocfs2");
        assert_eq!(RegionKind::Raw.to_string(), "raw");
        let raw = RawHeader {
            block_bytes: 4096,
            slots: 16,
            uuid: U,
        }
        .region();
        assert_eq!(raw.slot_offset(0), 4096);
        assert_eq!(raw.slot_offset(3), 4 * 4096);
        assert_eq!(raw.start_sector(), 8);
        let huge = Region {
            start_byte: u64::MAX - 10,
            ..r
        };
        assert_eq!(huge.slot_offset(u32::MAX), u64::MAX);
    }

    fn tmpfile(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("region");
        std::fs::write(&p, contents).unwrap();
        (d, p)
    }

    #[test]
    fn format_zero_file_then_locate() {
        let (_d, p) = tmpfile(&vec![0u8; 1 << 20]);
        let opts = FormatOptions {
            uuid: Some(U),
            ..FormatOptions::default()
        };
        let r = format_raw(&p, &opts, false).unwrap();
        assert_eq!(r, header().region());
        assert_eq!(locate(&p).unwrap(), r);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 1 << 20, "size unchanged");
        assert_eq!(RawHeader::decode(&bytes).unwrap(), header());
        assert!(bytes[64..].iter().all(|&b| b == 0));
    }

    #[test]
    fn format_generates_a_uuid_and_honours_options() {
        let (_d, p) = tmpfile(&vec![0u8; 17 * 4096]);
        let opts = FormatOptions {
            uuid: None,
            block_bytes: 4096,
            slots: 16,
        };
        let r = format_raw(&p, &opts, false).unwrap();
        assert_eq!(r.block_bytes, 4096);
        assert_eq!(r.slots, 16);
        assert_eq!(r.start_byte, 4096);
        assert_eq!(r.uuid[6] >> 4, 4);
        assert_eq!(locate(&p).unwrap(), r);
    }

    #[test]
    fn format_too_small_names_the_size_and_leaves_the_file() {
        let (_d, p) = tmpfile(&[0x5Au8; 1000]);
        let e = format_raw(&p, &FormatOptions::default(), true).unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::TooSmall {
                    size: 1000,
                    needed: 131_072,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("131072") && msg.contains("1000"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert_eq!(std::fs::read(&p).unwrap(), vec![0x5Au8; 1000]);
    }

    #[test]
    fn format_does_not_create_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing");
        let e = format_raw(&p, &FormatOptions::default(), true).unwrap_err();
        assert!(matches!(e, RegionError::Open { .. }), "{e}");
        assert!(!p.exists());
        let e = format_raw(d.path(), &FormatOptions::default(), true).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn format_rejects_bad_options() {
        let (_d, p) = tmpfile(&vec![0u8; 1 << 20]);
        for (bb, slots) in [(500, 255), (8192, 255), (512, 0), (512, 256)] {
            let opts = FormatOptions {
                uuid: None,
                block_bytes: bb,
                slots,
            };
            let e = format_raw(&p, &opts, true).unwrap_err();
            assert!(matches!(e, RegionError::BadOptions { .. }), "{e}");
        }
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn format_refuses_existing_region_unless_forced() {
        let (_d, p) = tmpfile(&vec![0u8; 1 << 20]);
        let first = format_raw(&p, &FormatOptions::default(), false).unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = format_raw(&p, &FormatOptions::default(), false).unwrap_err();
        assert!(matches!(e, RegionError::Refused { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("o2tools heartbeat region"), "{msg}");
        assert!(msg.contains(&first.uuid_string()), "{msg}");
        assert_eq!(std::fs::read(&p).unwrap(), before, "untouched");
        let opts = FormatOptions {
            uuid: Some(U),
            ..FormatOptions::default()
        };
        let second = format_raw(&p, &opts, true).unwrap();
        assert_eq!(second.uuid, U);
        assert_eq!(locate(&p).unwrap(), second);
    }

    #[test]
    fn format_refuses_damaged_header_and_data_unless_forced() {
        let (_d, p) = tmpfile(&vec![0u8; 1 << 20]);
        format_raw(&p, &FormatOptions::default(), false).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[16] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let e = format_raw(&p, &FormatOptions::default(), false).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        format_raw(&p, &FormatOptions::default(), true).unwrap();

        let mut junk = vec![0u8; 1 << 20];
        junk[5000] = 1;
        std::fs::write(&p, &junk).unwrap();
        let e = format_raw(&p, &FormatOptions::default(), false).unwrap_err();
        assert!(e.to_string().contains("offset 5000"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), junk);
        // Data past the region's bytes does not count, and is kept.
        junk[5000] = 0;
        junk[200_000] = 9;
        std::fs::write(&p, &junk).unwrap();
        format_raw(&p, &FormatOptions::default(), false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap()[200_000], 9);
    }

    #[test]
    fn probe_reports_what_it_found() {
        let (_d, p) = tmpfile(&vec![0u8; 4096]);
        let e = locate(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("4096 bytes"), "{msg}");
        assert!(
            msg.contains("no OCFS2 superblock and no o2tools region header"),
            "{msg}"
        );

        let (_d2, p2) = tmpfile(&[]);
        assert!(matches!(
            locate(&p2),
            Err(RegionError::NotARegion { size: 0, .. })
        ));

        // A valid header on a truncated file.
        let mut block = vec![0u8; 4096];
        header().encode(&mut block[..512]).unwrap();
        let (_d3, p3) = tmpfile(&block);
        let e = locate(&p3).unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::TooSmall {
                    needed: 131_072,
                    size: 4096,
                    ..
                }
            ),
            "{e}"
        );
        // A bad checksum is reported, not trusted.
        block[20] ^= 0xFF;
        std::fs::write(&p3, &block).unwrap();
        let e = locate(&p3).unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::RawHeader {
                    source: RawHeaderError::BadChecksum { .. },
                    ..
                }
            ),
            "{e}"
        );
        // Slots smaller than the sector size.
        let (_d4, p4) = tmpfile(&vec![0u8; 1 << 20]);
        format_raw(&p4, &FormatOptions::default(), false).unwrap();
        let f = File::open(&p4).unwrap();
        let e = probe(&f, &p4, 4096).unwrap_err();
        assert!(matches!(e, RegionError::SlotBelowSector { .. }), "{e}");
        let e = probe(&f, &p4, 1000).unwrap_err();
        assert!(matches!(e, RegionError::UnsupportedSector { .. }), "{e}");
        assert_eq!(logical_block_size(&f).unwrap(), 512);
    }

    // ----- synthetic OCFS2 volumes ------------------------------------------

    const BS: usize = 4096;
    const SYSDIR: u64 = 6;
    const HB_INODE: u64 = 10;
    const HB_DATA: u64 = 273;

    /// A 4K-block, 4K-cluster OCFS2-like image: superblock at block 2, the
    /// system directory at block 6 (contents set by the caller), the
    /// heartbeat inode at block 10 with one extent of 256 clusters at 273.
    struct Img {
        bytes: Vec<u8>,
    }

    impl Img {
        fn new() -> Img {
            let mut bytes = vec![0u8; (HB_DATA as usize + 256) * BS];
            let sb = &mut bytes[2 * BS..3 * BS];
            sb[..8].copy_from_slice(b"OCFSV2\0\0");
            put64(sb, 0xC0 + 0x28, 5);
            put64(sb, 0xC0 + 0x30, SYSDIR);
            put32(sb, 0xC0 + 0x38, 12);
            put32(sb, 0xC0 + 0x3C, 12);
            sb[0xC0 + 0x90..0xC0 + 0xA0].copy_from_slice(&U);
            let mut img = Img { bytes };
            img.inode(HB_INODE, 0x211, 0o100644, 0, 1 << 20);
            let hb = img.block(HB_INODE);
            Self::list(hb, 0xC0, 0, &[(0, 256, HB_DATA)]);
            img
        }

        fn block(&mut self, n: u64) -> &mut [u8] {
            let o = n as usize * BS;
            &mut self.bytes[o..o + BS]
        }

        fn inode(&mut self, n: u64, flags: u32, mode: u16, dyn_features: u16, size: u64) {
            let b = self.block(n);
            b.fill(0);
            b[..8].copy_from_slice(b"INODE01\0");
            put64(b, 0x20, size);
            put16(b, 0x28, mode);
            put32(b, 0x2C, flags);
            put64(b, 0x50, n);
            put16(b, 0x76, dyn_features);
        }

        /// Writes an extent list at `off`; records are (cpos, clusters, blkno).
        fn list(b: &mut [u8], off: usize, depth: u16, recs: &[(u32, u32, u64)]) {
            let count = (b.len() - off - 16) / 16;
            put16(b, off, depth);
            put16(b, off + 2, count as u16);
            put16(b, off + 4, recs.len() as u16);
            for (i, &(cpos, clusters, blkno)) in recs.iter().enumerate() {
                let r = off + 16 + i * 16;
                put32(b, r, cpos);
                if depth == 0 {
                    put16(b, r + 4, clusters as u16);
                } else {
                    put32(b, r + 4, clusters);
                }
                put64(b, r + 8, blkno);
            }
        }

        fn extent_block(&mut self, n: u64, depth: u16, recs: &[(u32, u32, u64)]) {
            let b = self.block(n);
            b.fill(0);
            b[..8].copy_from_slice(b"EXBLK01\0");
            put64(b, 0x18, n);
            Self::list(b, 0x30, depth, recs);
        }

        fn save(&self) -> (tempfile::TempDir, PathBuf) {
            tmpfile(&self.bytes)
        }
    }

    /// Directory entries filling `len` bytes: the last one takes the rest.
    fn dirents(entries: &[(u64, &str)], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut pos = 0;
        for (i, &(ino, name)) in entries.iter().enumerate() {
            let need = (12 + name.len()).div_ceil(4) * 4;
            let rec = if i + 1 == entries.len() {
                len - pos
            } else {
                need
            };
            put64(&mut out, pos, ino);
            put16(&mut out, pos + 8, rec as u16);
            out[pos + 10] = name.len() as u8;
            out[pos + 11] = 1;
            out[pos + 12..pos + 12 + name.len()].copy_from_slice(name.as_bytes());
            pos += rec;
        }
        out
    }

    fn inline_img(entries: &[(u64, &str)]) -> Img {
        let mut img = Img::new();
        img.inode(SYSDIR, 0x11, 0o040755, 1, 3896);
        let b = img.block(SYSDIR);
        put16(b, 0xC0, 3896);
        b[0xC8..0xC8 + 3896].copy_from_slice(&dirents(entries, 3896));
        img
    }

    fn expected() -> Region {
        Region {
            kind: RegionKind::Ocfs2,
            uuid: U,
            block_bytes: 512,
            start_byte: HB_DATA * 4096,
            slots: 255,
        }
    }

    const SYS_ENTRIES: &[(u64, &str)] = &[
        (6, "."),
        (6, ".."),
        (7, "bad_blocks"),
        (8, "global_inode_alloc"),
        (9, "slot_map"),
        (10, "heartbeat"),
        (11, "global_bitmap"),
    ];

    #[test]
    fn synthetic_inline_system_dir() {
        let (_d, p) = inline_img(SYS_ENTRIES).save();
        assert_eq!(locate(&p).unwrap(), expected());
        let f = File::open(&p).unwrap();
        // With 4K sectors the slots are 4K, at the same place.
        let r = probe(&f, &p, 4096).unwrap();
        assert_eq!(r.block_bytes, 4096);
        assert_eq!(r.start_byte, HB_DATA * 4096);
        assert_eq!(r.end_byte(), (HB_DATA + 255) * 4096);
    }

    #[test]
    fn synthetic_extent_mapped_system_dir() {
        // Two directory blocks (after a hole-free 1-cluster extent each);
        // heartbeat in the second, a trailer-like empty entry in the first.
        let mut img = Img::new();
        img.inode(SYSDIR, 0x11, 0o040755, 0, 2 * BS as u64);
        Img::list(img.block(SYSDIR), 0xC0, 0, &[(0, 1, 100), (1, 1, 120)]);
        img.block(100)
            .copy_from_slice(&dirents(&[(6, "."), (6, ".."), (0, "")], BS));
        img.block(120)
            .copy_from_slice(&dirents(&[(9, "slot_map"), (10, "heartbeat")], BS));
        let (_d, p) = img.save();
        assert_eq!(locate(&p).unwrap(), expected());
    }

    #[test]
    fn synthetic_tree_of_depth_two() {
        let mut img = Img::new();
        img.inode(SYSDIR, 0x11, 0o040755, 0, 2 * BS as u64);
        Img::list(img.block(SYSDIR), 0xC0, 2, &[(0, 2, 50)]);
        img.extent_block(50, 1, &[(0, 1, 51), (1, 1, 52)]);
        img.extent_block(51, 0, &[(0, 1, 100)]);
        img.extent_block(52, 0, &[(1, 1, 120)]);
        img.block(100)
            .copy_from_slice(&dirents(&[(6, "."), (6, "..")], BS));
        img.block(120)
            .copy_from_slice(&dirents(&[(10, "heartbeat")], BS));
        let (_d, p) = img.save();
        assert_eq!(locate(&p).unwrap(), expected());

        // An interior record pointing at something that is not an extent block.
        let mut bad = img.bytes.clone();
        bad[52 * BS] = b'X';
        let (_d2, p2) = tmpfile(&bad);
        let e = locate(&p2).unwrap_err().to_string();
        assert!(e.contains("block 52 is not an extent block"), "{e}");
        // A child whose depth does not fit under its parent.
        let mut img2 = Img { bytes: img.bytes };
        img2.extent_block(51, 1, &[(0, 1, 100)]);
        let (_d3, p3) = img2.save();
        let e = locate(&p3).unwrap_err().to_string();
        assert!(e.contains("depth 1 under depth 1"), "{e}");
    }

    #[test]
    fn synthetic_volume_problems_are_reported() {
        let check = |img: &Img, want: &str| {
            let (_d, p) = img.save();
            let e = locate(&p).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?} in {e:?}");
            assert!(e.contains(&p.display().to_string()), "{e}");
        };
        check(
            &inline_img(&[(6, "."), (6, ".."), (11, "global_bitmap")]),
            "has no heartbeat file",
        );
        let mut img = inline_img(SYS_ENTRIES);
        put32(img.block(HB_INODE), 0x2C, 0x11);
        check(&img, "flags 0x11");
        let mut img = inline_img(SYS_ENTRIES);
        Img::list(
            img.block(HB_INODE),
            0xC0,
            0,
            &[(0, 128, 273), (128, 128, 500)],
        );
        check(&img, "depth 0 with 2 records");
        let mut img = inline_img(SYS_ENTRIES);
        Img::list(img.block(HB_INODE), 0xC0, 1, &[(0, 256, 273)]);
        check(&img, "depth 1 with 1 records");
        let mut img = inline_img(SYS_ENTRIES);
        Img::list(img.block(HB_INODE), 0xC0, 0, &[(0, 254, 273)]);
        check(&img, "254 blocks, fewer than 255");
        let mut img = inline_img(SYS_ENTRIES);
        img.block(HB_INODE)[0] = b'X';
        check(&img, "heartbeat inode at block 10 is not an inode");
        let mut img = inline_img(SYS_ENTRIES);
        put16(img.block(SYSDIR), 0x28, 0o100644);
        check(&img, "is not a directory");
        let mut img = inline_img(SYS_ENTRIES);
        put16(img.block(SYSDIR), 0xC8 + 8, 3);
        check(&img, "record length 3");
        let mut img = inline_img(SYS_ENTRIES);
        Img::list(img.block(HB_INODE), 0xC0, 0, &[(0, 256, 1 << 40)]);
        check(&img, "too small");
        let mut img = inline_img(SYS_ENTRIES);
        put64(&mut img.bytes[2 * BS..], 0xC0 + 0x30, 1 << 50);
        check(&img, "lies beyond the end");
        let mut img = inline_img(SYS_ENTRIES);
        put32(&mut img.bytes[2 * BS..], 0xC0 + 0x3C, 40);
        check(&img, "cluster bits 40");
    }

    #[test]
    fn both_kinds_at_once_is_ambiguous() {
        let mut img = inline_img(SYS_ENTRIES);
        header().encode(&mut img.bytes[..512]).unwrap();
        let (_d, p) = img.save();
        let e = locate(&p).unwrap_err();
        assert!(matches!(e, RegionError::Ambiguous { .. }), "{e}");
    }

    #[test]
    fn format_refuses_ocfs2_unless_forced_and_then_wipes_it() {
        let img = inline_img(SYS_ENTRIES);
        let (_d, p) = img.save();
        let e = format_raw(&p, &FormatOptions::default(), false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("an OCFS2 volume (uuid 0C7010EBE28F45CF9B64CB60642047A8)"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), img.bytes, "untouched");
        // Few slots: the region ends before the 4K superblock, which must go.
        let opts = FormatOptions {
            uuid: None,
            block_bytes: 512,
            slots: 4,
        };
        let r = format_raw(&p, &opts, true).unwrap();
        assert_eq!(r.kind, RegionKind::Raw);
        assert_eq!(locate(&p).unwrap(), r);
        let after = std::fs::read(&p).unwrap();
        assert!(after[5 * 512..3 * 4096].iter().all(|&b| b == 0));
        assert_eq!(after[3 * 4096..], img.bytes[3 * 4096..], "the rest is kept");
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn header_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), magic in any::<bool>()) {
            let mut data = data;
            if magic && data.len() >= 8 {
                data[..8].copy_from_slice(RAW_MAGIC);
            }
            let _ = RawHeader::decode(&data);
        }

        #[test]
        fn uuid_parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_uuid(&s);
        }

        #[test]
        fn uuid_round_trip(u in any::<[u8; 16]>()) {
            let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(parse_uuid(&hex).unwrap(), u);
            let dashed = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
            prop_assert_eq!(parse_uuid(&dashed.to_uppercase()).unwrap(), u);
        }
    }
}
