//! The FUSE side: each request the kernel sends is forwarded, with its
//! reply object, to the engine thread, so this thread never waits for a
//! lock (a blocked `open` is answered later by the engine, and the
//! `release` that frees the lock can still come through).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner, OpenFlags, PollEvents,
    PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use super::engine::{Input, Pending};
use super::state::{FsOp, MAX_DOMAIN_LEN};

/// The file system the fuser session drives.
pub(crate) struct DlmFs {
    tx: Sender<Input>,
}

impl DlmFs {
    pub(crate) fn new(tx: Sender<Input>) -> Self {
        DlmFs { tx }
    }

    fn submit(&self, op: FsOp, reply: Pending) {
        self.submit_poll(op, reply, None);
    }

    fn submit_poll(&self, op: FsOp, reply: Pending, notify: Option<PollNotifier>) {
        if let Err(e) = self.tx.send(Input::Fuse { op, reply, notify }) {
            // The engine has stopped (the mount is going away).
            if let Input::Fuse { reply, .. } = e.0 {
                reply.error(libc::EIO);
            }
        }
    }
}

fn bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for DlmFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> std::io::Result<()> {
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.submit(
            FsOp::Lookup {
                parent: parent.0,
                name: bytes(name),
            },
            Pending::Entry(reply),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.submit(
            FsOp::Forget {
                ino: ino.0,
                nlookup,
            },
            Pending::None,
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.submit(FsOp::GetAttr { ino: ino.0 }, Pending::Attr(reply));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        _size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.submit(
            FsOp::SetAttr {
                ino: ino.0,
                mode,
                uid,
                gid,
                atime: atime.map(time),
                mtime: mtime.map(time),
            },
            Pending::Attr(reply),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.submit(
            FsOp::Mknod {
                parent: parent.0,
                name: bytes(name),
                mode,
                uid: req.uid(),
                gid: req.gid(),
            },
            Pending::Entry(reply),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.submit(
            FsOp::Mkdir {
                parent: parent.0,
                name: bytes(name),
                mode,
                uid: req.uid(),
                gid: req.gid(),
            },
            Pending::Entry(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.submit(
            FsOp::Unlink {
                parent: parent.0,
                name: bytes(name),
            },
            Pending::Empty(reply),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.submit(
            FsOp::Rmdir {
                parent: parent.0,
                name: bytes(name),
            },
            Pending::Empty(reply),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // A lock's name is its identity.
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.submit(
            FsOp::Open {
                ino: ino.0,
                flags: flags.0,
            },
            Pending::Open(reply),
        );
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // Not implemented on purpose: the kernel then creates with mknod and
        // opens with open, after it has unlocked the directory, so an open
        // waiting for its lock does not hold up the whole domain.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.submit(
            FsOp::Read {
                fh: fh.0,
                offset,
                size,
            },
            Pending::Data(reply),
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.submit(
            FsOp::Write {
                fh: fh.0,
                offset,
                // The value block is 64 bytes; the rest is never used.
                data: data[..data.len().min(crate::dlm::LVB_LEN)].to_vec(),
                flags: flags.0,
            },
            Pending::Write(reply),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.submit(FsOp::Release { fh: fh.0 }, Pending::Empty(reply));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Writes reach lockd before they return.
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.submit(FsOp::ReadDir { ino: ino.0, offset }, Pending::Dir(reply));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, MAX_DOMAIN_LEN as u32, 0);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS: the kernel stops asking (ls -l asks for ACLs).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // ENOSYS: the kernel seeks by itself from now on.
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        ph: PollNotifier,
        _events: PollEvents,
        flags: PollFlags,
        reply: ReplyPoll,
    ) {
        let notify = flags
            .contains(PollFlags::FUSE_POLL_SCHEDULE_NOTIFY)
            .then_some(ph);
        self.submit_poll(FsOp::Poll { fh: fh.0 }, Pending::Poll(reply), notify);
    }
}
