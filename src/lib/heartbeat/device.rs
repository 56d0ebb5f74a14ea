//! Region I/O.
//!
//! Heartbeat slots are read and written so that what one node writes is on
//! the disk, and what another node reads comes from the disk: the file is
//! opened with `O_DIRECT` (no page cache) and, when writable, `O_DSYNC` (a
//! write returns once it is stable). Direct I/O needs buffers, offsets and
//! lengths aligned to the logical sector size, so buffers are allocated
//! aligned to `max(4096, block_bytes)` and every transfer is whole slots.
//!
//! Where `O_DIRECT` is refused at open (`EINVAL`, as some file systems do),
//! the file is opened again buffered with `O_DSYNC` and one warning is
//! logged for that open. [`RegionIo::is_direct`] says which mode is in use.
//!
//! Each call is one `pread`/`pwrite`; a short transfer is an error, never
//! retried piecemeal.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::heartbeat::format::{self, FormatError, HbBlock, REGION_SLOTS};
use crate::heartbeat::region::Region;

/// Alignment of every I/O buffer at least (covers 4K-sector devices).
const MIN_ALIGN: usize = 4096;

/// Why region I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The region description cannot be used for I/O.
    #[error("cannot do heartbeat i/o on {}: {detail}", path.display())]
    BadRegion {
        /// The device or file.
        path: PathBuf,
        /// What is wrong with the region.
        detail: String,
    },
    /// The device or file could not be opened.
    #[error("cannot open {} for heartbeat i/o: {source}", path.display())]
    Open {
        /// The device or file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// A read failed.
    #[error("cannot read {len} bytes at byte {offset} of {}: {source}", path.display())]
    Read {
        /// The device or file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The system error.
        source: io::Error,
    },
    /// A write failed.
    #[error("cannot write {len} bytes at byte {offset} of {}: {source}", path.display())]
    Write {
        /// The device or file.
        path: PathBuf,
        /// Where the write started.
        offset: u64,
        /// Bytes to write.
        len: usize,
        /// The system error.
        source: io::Error,
    },
    /// A read returned fewer bytes than asked for (the end of the file or
    /// device).
    #[error("short read from {}: {got} of {wanted} bytes at byte {offset}", path.display())]
    ShortRead {
        /// The device or file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// Bytes asked for.
        wanted: usize,
        /// Bytes read.
        got: usize,
    },
    /// A write wrote fewer bytes than given.
    #[error("short write to {}: {got} of {wanted} bytes at byte {offset}", path.display())]
    ShortWrite {
        /// The device or file.
        path: PathBuf,
        /// Where the write started.
        offset: u64,
        /// Bytes to write.
        wanted: usize,
        /// Bytes written.
        got: usize,
    },
    /// Slots outside the region were asked for.
    #[error(
        "slots {first}..{end} are outside the {slots} slots of the region on {}",
        path.display(),
        end = u64::from(*first) + u64::from(*count)
    )]
    OutOfRange {
        /// The device or file.
        path: PathBuf,
        /// First slot asked for.
        first: u32,
        /// Number of slots asked for.
        count: u32,
        /// Slots in the region.
        slots: u32,
    },
    /// A write on a region opened read-only.
    #[error("{} was opened read-only; cannot write slot {slot}", path.display())]
    ReadOnly {
        /// The device or file.
        path: PathBuf,
        /// The slot.
        slot: u32,
    },
    /// The slot could not be encoded.
    #[error("cannot encode a heartbeat slot for {}: {source}", path.display())]
    Encode {
        /// The device or file.
        path: PathBuf,
        /// The encoding error.
        source: FormatError,
    },
}

/// A zeroed heap buffer with a chosen alignment, freed on drop.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is owned exclusively by this value, like a Vec<u8>;
// shared access only hands out `&[u8]`.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above: `&AlignedBuf` only allows reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align`; None if the layout is invalid
    /// (zero length, alignment not a power of two, or too large).
    fn zeroed(len: usize, align: usize) -> Option<AlignedBuf> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Some(AlignedBuf { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed at
        // allocation) bytes owned by self, alive as long as the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the `&mut self` borrow makes the
        // access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to make the O_DIRECT open fail as on a file system
    /// without direct I/O.
    static REFUSE_DIRECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn open_file(path: &Path, writable: bool, direct: bool) -> io::Result<File> {
    #[cfg(test)]
    if direct && REFUSE_DIRECT.with(|r| r.get()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if writable {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(flags)
        .open(path)
}

/// Whether an open error means "this file system does not do O_DIRECT".
fn direct_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

/// An open region: reads slots and writes them, one system call each.
pub struct RegionIo {
    file: File,
    path: PathBuf,
    region: Region,
    writable: bool,
    direct: bool,
    /// Room for every slot of the region.
    read_buf: AlignedBuf,
    /// One slot.
    write_buf: AlignedBuf,
}

impl std::fmt::Debug for RegionIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionIo")
            .field("path", &self.path)
            .field("region", &self.region)
            .field("writable", &self.writable)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl RegionIo {
    /// Opens the device or file at `path` for I/O on `region`: `O_DIRECT`,
    /// plus read-write and `O_DSYNC` if `writable`. Falls back to buffered
    /// I/O (still `O_DSYNC`) with one warning if `O_DIRECT` is refused.
    pub fn open(path: &Path, region: &Region, writable: bool) -> Result<RegionIo, IoError> {
        let bad = |detail: String| IoError::BadRegion {
            path: path.to_owned(),
            detail,
        };
        let bb = region.block_bytes as usize;
        if !format::is_valid_slot_size(bb) {
            return Err(bad(format!(
                "slot size {bb} is not a power of two from 512 to 4096"
            )));
        }
        if region.slots == 0 || region.slots as usize > REGION_SLOTS {
            return Err(bad(format!(
                "slot count {} is not 1 to {REGION_SLOTS}",
                region.slots
            )));
        }
        if region.start_byte % u64::from(region.block_bytes) != 0 {
            return Err(bad(format!(
                "slot 0 at byte {} is not aligned to the {bb}-byte slot size",
                region.start_byte
            )));
        }
        let align = MIN_ALIGN.max(bb);
        let read_buf = AlignedBuf::zeroed(region.slots as usize * bb, align)
            .ok_or_else(|| bad("cannot lay out the read buffer".to_owned()))?;
        let write_buf = AlignedBuf::zeroed(bb, align)
            .ok_or_else(|| bad("cannot lay out the write buffer".to_owned()))?;

        let open_err = |source| IoError::Open {
            path: path.to_owned(),
            source,
        };
        let (file, direct) = match open_file(path, writable, true) {
            Ok(f) => (f, true),
            Err(e) if direct_unsupported(&e) => {
                tracing::warn!(
                    path = %path.display(),
                    reason = %e,
                    "O_DIRECT refused; using buffered I/O with O_DSYNC for this heartbeat region"
                );
                (open_file(path, writable, false).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        Ok(RegionIo {
            file,
            path: path.to_owned(),
            region: region.clone(),
            writable,
            direct,
            read_buf,
            write_buf,
        })
    }

    /// Whether I/O bypasses the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The region this was opened for.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The device or file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads slots `first..first + count` with one `pread` and returns their
    /// bytes (`count × block_bytes`). The slice is valid until the next call.
    pub fn read_slots(&mut self, first: u32, count: u32) -> Result<&[u8], IoError> {
        let slots = self.region.slots;
        if u64::from(first) + u64::from(count) > u64::from(slots) {
            return Err(IoError::OutOfRange {
                path: self.path.clone(),
                first,
                count,
                slots,
            });
        }
        let len = count as usize * self.region.block_bytes as usize;
        if len == 0 {
            return Ok(&[]);
        }
        let offset = self.region.slot_offset(first);
        let buf = &mut self.read_buf.as_mut_slice()[..len];
        let got = loop {
            match self.file.read_at(buf, offset) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(IoError::Read {
                        path: self.path.clone(),
                        offset,
                        len,
                        source,
                    });
                }
            }
        };
        if got != len {
            return Err(IoError::ShortRead {
                path: self.path.clone(),
                offset,
                wanted: len,
                got,
            });
        }
        Ok(&self.read_buf.as_slice()[..len])
    }

    /// Encodes `block` into a whole slot and writes it to `slot` with one
    /// `pwrite`. The block's node number need not match the slot.
    pub fn write_slot(&mut self, slot: u32, block: &HbBlock) -> Result<(), IoError> {
        if !self.writable {
            return Err(IoError::ReadOnly {
                path: self.path.clone(),
                slot,
            });
        }
        if slot >= self.region.slots {
            return Err(IoError::OutOfRange {
                path: self.path.clone(),
                first: slot,
                count: 1,
                slots: self.region.slots,
            });
        }
        let buf = self.write_buf.as_mut_slice();
        format::encode(block, buf).map_err(|source| IoError::Encode {
            path: self.path.clone(),
            source,
        })?;
        let offset = self.region.slot_offset(slot);
        let len = buf.len();
        let got = loop {
            match self.file.write_at(buf, offset) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(IoError::Write {
                        path: self.path.clone(),
                        offset,
                        len,
                        source,
                    });
                }
            }
        };
        if got != len {
            return Err(IoError::ShortWrite {
                path: self.path.clone(),
                offset,
                wanted: len,
                got,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::format::decode;
    use crate::heartbeat::region::{self, FormatOptions, RegionKind};
    use std::sync::{Arc, Mutex};

    fn block(node: u8, seq: u64) -> HbBlock {
        HbBlock {
            seq,
            node,
            generation: 0x1122_3344_5566_7788,
            dead_ms: 62000,
        }
    }

    fn raw_region(dir: &Path, block_bytes: u32) -> (PathBuf, Region) {
        let p = dir.join("region");
        std::fs::write(&p, vec![0u8; 256 * block_bytes as usize]).unwrap();
        let opts = FormatOptions {
            block_bytes,
            ..FormatOptions::default()
        };
        let r = region::format_raw(&p, &opts, false).unwrap();
        (p, r)
    }

    fn round_trip(dir: &Path, block_bytes: u32) -> bool {
        let (p, r) = raw_region(dir, block_bytes);
        let mut io = RegionIo::open(&p, &r, true).unwrap();
        io.write_slot(1, &block(1, 0x6543_210f)).unwrap();
        io.write_slot(5, &block(5, 7)).unwrap();
        io.write_slot(254, &block(254, u64::MAX)).unwrap();
        let all = io.read_slots(0, 255).unwrap();
        assert_eq!(all.len(), 255 * block_bytes as usize);
        for (i, s) in all.chunks(block_bytes as usize).enumerate() {
            let d = decode(s).unwrap();
            assert!(d.checksum_ok, "slot {i}");
            match i {
                1 => assert_eq!(d.block, block(1, 0x6543_210f)),
                5 => assert_eq!(d.block, block(5, 7)),
                254 => assert_eq!(d.block, block(254, u64::MAX)),
                _ => assert!(d.is_empty(), "slot {i}"),
            }
        }
        let two = io.read_slots(4, 2).unwrap();
        assert_eq!(two.len(), 2 * block_bytes as usize);
        assert_eq!(
            decode(&two[block_bytes as usize..]).unwrap().block,
            block(5, 7)
        );
        assert!(io.read_slots(3, 0).unwrap().is_empty());
        // A read-only open sees the same bytes; the header is untouched.
        let direct = io.is_direct();
        drop(io);
        let mut ro = RegionIo::open(&p, &r, false).unwrap();
        assert_eq!(
            decode(ro.read_slots(1, 1).unwrap()).unwrap().block,
            block(1, 0x6543_210f)
        );
        assert_eq!(region::locate(&p).unwrap(), r);
        // Byte layout: slot n at (1 + n) × block_bytes.
        let bytes = std::fs::read(&p).unwrap();
        let at = 6 * block_bytes as usize;
        assert_eq!(
            &bytes[at..at + block_bytes as usize],
            &format::encode_vec(&block(5, 7), block_bytes as usize).unwrap()[..]
        );
        direct
    }

    #[test]
    fn write_then_read_back_on_a_file() {
        let d = tempfile::tempdir().unwrap();
        for bb in [512, 4096] {
            let sub = d.path().join(bb.to_string());
            std::fs::create_dir(&sub).unwrap();
            round_trip(&sub, bb);
        }
    }

    #[test]
    fn write_then_read_back_on_dev_shm() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let d = tempfile::tempdir_in(shm).unwrap();
        // tmpfs refuses O_DIRECT on older kernels; both ways must work.
        round_trip(d.path(), 512);
    }

    /// Collects the messages of WARN events.
    struct Warnings(Arc<Mutex<Vec<String>>>);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut f = Fields(String::new());
                event.record(&mut f);
                self.0.lock().unwrap().push(f.0);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn falls_back_to_buffered_io_with_one_warning() {
        let d = tempfile::tempdir().unwrap();
        let (p, r) = raw_region(d.path(), 512);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut io = tracing::subscriber::with_default(Warnings(seen.clone()), || {
            REFUSE_DIRECT.with(|f| f.set(true));
            let io = RegionIo::open(&p, &r, true);
            REFUSE_DIRECT.with(|f| f.set(false));
            io.unwrap()
        });
        assert!(!io.is_direct());
        let warnings = seen.lock().unwrap().clone();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&p.display().to_string()),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("Invalid argument"), "{warnings:?}");
        io.write_slot(3, &block(3, 42)).unwrap();
        assert_eq!(
            decode(io.read_slots(3, 1).unwrap()).unwrap().block,
            block(3, 42)
        );

        // The ordinary path on ext4 and the like is direct.
        let io = RegionIo::open(&p, &r, false).unwrap();
        assert_eq!(io.region(), &r);
        assert_eq!(io.path(), p);
    }

    #[test]
    fn reading_past_the_end_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let (p, r) = raw_region(d.path(), 512);
        let mut io = RegionIo::open(&p, &r, false).unwrap();
        let e = io.read_slots(250, 6).unwrap_err();
        assert!(matches!(e, IoError::OutOfRange { .. }), "{e}");
        assert!(e.to_string().contains("250..256"), "{e}");
        let e = io.read_slots(u32::MAX, u32::MAX).unwrap_err();
        assert!(matches!(e, IoError::OutOfRange { .. }), "{e}");
        let e = io.write_slot(0, &block(0, 1)).unwrap_err();
        assert!(matches!(e, IoError::ReadOnly { .. }), "{e}");

        // A region that claims more than the file holds.
        let beyond = Region {
            start_byte: 255 * 512,
            ..r
        };
        let mut io = RegionIo::open(&p, &beyond, false).unwrap();
        let e = io.read_slots(0, 255).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::ShortRead {
                    wanted: 130_560,
                    got: 512,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("short read"), "{e}");
        let e = io.read_slots(254, 1).unwrap_err();
        assert!(matches!(e, IoError::ShortRead { got: 0, .. }), "{e}");

        let mut io = RegionIo::open(&p, &r, true).unwrap();
        let e = io.write_slot(255, &block(0, 1)).unwrap_err();
        assert!(matches!(e, IoError::OutOfRange { .. }), "{e}");
    }

    #[test]
    fn bad_regions_and_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (p, r) = raw_region(d.path(), 512);
        for bad in [
            Region {
                block_bytes: 1000,
                ..r
            },
            Region { slots: 0, ..r },
            Region { slots: 256, ..r },
            Region {
                start_byte: 100,
                ..r
            },
        ] {
            let e = RegionIo::open(&p, &bad, false).unwrap_err();
            assert!(matches!(e, IoError::BadRegion { .. }), "{e}");
        }
        let e = RegionIo::open(&d.path().join("missing"), &r, true).unwrap_err();
        assert!(matches!(e, IoError::Open { .. }), "{e}");
        assert!(!d.path().join("missing").exists());
        assert_eq!(r.kind, RegionKind::Raw);
    }

    #[test]
    fn aligned_buffers() {
        for (len, align) in [(512, 4096), (255 * 4096, 4096), (4096, 8192)] {
            let mut b = AlignedBuf::zeroed(len, align).unwrap();
            assert_eq!(b.as_slice().as_ptr() as usize % align, 0);
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[len - 1] = 7;
            assert_eq!(b.as_slice()[len - 1], 7);
        }
        assert!(AlignedBuf::zeroed(0, 4096).is_none());
        assert!(AlignedBuf::zeroed(512, 3000).is_none());
    }
}
