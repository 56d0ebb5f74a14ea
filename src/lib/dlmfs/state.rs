//! The file system as a state machine: inodes, open files and the lockd
//! locks behind them.
//!
//! Pure: file system requests ([`FsOp`], each with a [`Token`] to answer)
//! and lockd's messages go in; answers to the requests, requests for lockd
//! (already tagged) and poll wake-ups come out of [`Core::poll_output`]. No
//! sockets, threads or clocks (the caller passes the time for timestamps),
//! so the unit tests drive it against the real lock manager core.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::SystemTime;

use crate::dlm::{
    DlmError, Event, Failure, LVB_LEN, LockFlags, LockId, LockRequest, Lvb, Mode, Reply, Request,
};
use crate::proto::{ClientRequest, ServerMsg, ServerReply};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Longest domain (directory) name, in bytes: the kernel's dlmfs wants
/// fewer than 64.
pub const MAX_DOMAIN_LEN: usize = 63;
/// Longest lock (file) name, in bytes: the kernel's dlmfs wants fewer than 32.
pub const MAX_LOCK_NAME_LEN: usize = 31;

/// Identifies one file system request until it is answered.
pub type Token = u64;

/// What kind of inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The root or a domain.
    Dir,
    /// A lock resource.
    File,
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Directory or file.
    pub kind: Kind,
    /// Permission bits (with setuid, setgid and sticky).
    pub perm: u16,
    /// Links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size: the value block's length for files.
    pub size: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Its inode.
    pub ino: u64,
    /// The offset of the entry after it.
    pub next: u64,
    /// Directory or file.
    pub kind: Kind,
    /// Its name.
    pub name: Vec<u8>,
}

/// A file system request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsOp {
    /// Find `name` in `parent`.
    Lookup {
        /// The directory.
        parent: u64,
        /// The name.
        name: Vec<u8>,
    },
    /// The kernel dropped `nlookup` references to `ino` (not answered).
    Forget {
        /// The inode.
        ino: u64,
        /// References dropped.
        nlookup: u64,
    },
    /// `stat`.
    GetAttr {
        /// The inode.
        ino: u64,
    },
    /// `chmod`, `chown`, `utimes`, `truncate` (the size is ignored, as by the
    /// kernel's dlmfs).
    SetAttr {
        /// The inode.
        ino: u64,
        /// New mode (type bits ignored).
        mode: Option<u32>,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
        /// New access time.
        atime: Option<SystemTime>,
        /// New modification time.
        mtime: Option<SystemTime>,
    },
    /// Create a resource file (`open(O_CREAT)` comes here, then `Open`).
    Mknod {
        /// The domain directory.
        parent: u64,
        /// The lock name.
        name: Vec<u8>,
        /// File type and permissions (already masked by the umask).
        mode: u32,
        /// The creator's uid.
        uid: u32,
        /// The creator's gid.
        gid: u32,
    },
    /// Join a domain.
    Mkdir {
        /// Must be the root.
        parent: u64,
        /// The domain.
        name: Vec<u8>,
        /// Permissions (already masked by the umask).
        mode: u32,
        /// The creator's uid.
        uid: u32,
        /// The creator's gid.
        gid: u32,
    },
    /// Destroy a resource.
    Unlink {
        /// The domain directory.
        parent: u64,
        /// The lock name.
        name: Vec<u8>,
    },
    /// Stop using a domain.
    Rmdir {
        /// Must be the root.
        parent: u64,
        /// The domain.
        name: Vec<u8>,
    },
    /// Open a resource: take its lock.
    Open {
        /// The file.
        ino: u64,
        /// The open flags (`O_RDONLY` PR, else EX; `O_NONBLOCK` trylock).
        flags: i32,
    },
    /// Read the value block.
    Read {
        /// The open file.
        fh: u64,
        /// From this offset.
        offset: u64,
        /// At most this many bytes.
        size: u32,
    },
    /// Write the value block.
    Write {
        /// The open file.
        fh: u64,
        /// At this offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// The open flags (`O_APPEND` writes at offset 0).
        flags: i32,
    },
    /// The last close of an open file: drop its hold on the lock.
    Release {
        /// The open file.
        fh: u64,
    },
    /// List a directory from `offset`.
    ReadDir {
        /// The directory.
        ino: u64,
        /// Entries before this were already listed.
        offset: u64,
    },
    /// `poll`: readable while another node or process waits for the lock.
    Poll {
        /// The open file.
        fh: u64,
    },
}

impl FsOp {
    /// Whether the request needs lockd (so a lost connection should be
    /// re-established first).
    pub fn needs_lockd(&self) -> bool {
        matches!(self, FsOp::Open { .. } | FsOp::Mkdir { .. })
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An entry (lookup, mknod, mkdir).
    Entry(Attr),
    /// Attributes (getattr, setattr).
    Attr(Attr),
    /// An open file handle.
    Opened(u64),
    /// Bytes read.
    Data(Vec<u8>),
    /// Bytes written.
    Written(u32),
    /// Done.
    Ok,
    /// Directory entries.
    Dir(Vec<DirEntry>),
    /// Poll events (`POLLIN` etc.).
    Poll(u32),
    /// Failed with this errno.
    Err(i32),
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this request to lockd.
    Send {
        /// Its tag.
        tag: u64,
        /// The request.
        request: ClientRequest,
    },
    /// Answer a file system request.
    Reply {
        /// The request.
        token: Token,
        /// The answer.
        answer: Answer,
    },
    /// Wake the poller of this open file, if one is registered.
    PollWake(u64),
    /// This open file is gone: forget its poll registration.
    PollForget(u64),
}

/// Why a request for lockd was sent: what to do with the reply.
#[derive(Debug)]
enum Cont {
    /// Nothing but log a refusal.
    Ignore(&'static str),
    /// A `mkdir` waits for its join.
    Mkdir {
        token: Token,
        name: Vec<u8>,
        perm: u16,
        uid: u32,
        gid: u32,
        now: SystemTime,
    },
    /// An `rmdir` waits for its leave.
    Rmdir { token: Token },
    /// The lock id of a slot's new lock.
    Lock { slot: u64 },
    /// A slot's conversion was accepted (or refused).
    Convert { slot: u64 },
    /// A slot's value block, read after a grant.
    Fetch { slot: u64 },
    /// A `write` waits for its value block to be stored.
    Write { token: Token, len: u32 },
}

/// A lockd request a slot has in flight.
#[derive(Debug)]
struct SlotOp {
    kind: OpKind,
    /// The open it is for (None: a down-conversion of the slot's own).
    for_open: Option<Token>,
    /// lockd said it is queued behind other holders.
    queued: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    /// A new lock.
    Lock,
    /// A conversion.
    Convert,
    /// Reading the value block after a grant.
    Fetch,
}

/// An open waiting for a slot's lock.
#[derive(Debug)]
struct Waiter {
    token: Token,
    level: Mode,
    noqueue: bool,
}

/// One lockd lock and the open files that share it: per resource by
/// default, per open file with `-o exclusive`.
#[derive(Debug)]
struct Slot {
    ino: u64,
    domain: Vec<u8>,
    resource: Vec<u8>,
    lock: Option<LockId>,
    granted: Option<Mode>,
    op: Option<SlotOp>,
    /// Open files holding PR and EX.
    pr: u32,
    ex: u32,
    handles: BTreeSet<u64>,
    waiters: VecDeque<Waiter>,
    /// The strongest mode another lock waits for, since our last grant.
    blocked: Option<Mode>,
    lvb: Lvb,
    lvb_valid: bool,
    /// The lock was taken away (lockd gone, domain left, broken by root):
    /// its open files get EIO until they are closed.
    lost: bool,
}

impl Slot {
    fn holders(&self) -> u32 {
        self.pr + self.ex
    }
    /// The mode the open files need.
    fn need(&self) -> Option<Mode> {
        if self.ex > 0 {
            Some(Mode::EX)
        } else if self.pr > 0 {
            Some(Mode::PR)
        } else {
            None
        }
    }
    /// Whether fairness to a waiting lock keeps a new local open at `level`
    /// from sharing the cached lock.
    fn fair_blocked(&self, level: Mode) -> bool {
        self.blocked.is_some_and(|b| !level.compatible(b))
    }
    fn covers(&self, level: Mode) -> bool {
        self.granted.is_some_and(|g| g >= level)
    }
    fn idle(&self) -> bool {
        self.holders() == 0 && self.waiters.is_empty() && self.op.is_none() && self.lock.is_none()
    }
}

#[derive(Debug)]
struct Handle {
    slot: u64,
    level: Mode,
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    parent: u64,
    name: Vec<u8>,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    children: BTreeMap<Vec<u8>, u64>,
    nlookup: u64,
    unlinked: bool,
    /// The slot new opens share (default mode).
    shared: Option<u64>,
    /// Every slot of this file, lost ones included (unlink is refused
    /// while there is one).
    slots: BTreeSet<u64>,
}

/// How the mount behaves.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    /// One lockd lock per open file instead of one per resource.
    pub exclusive: bool,
    /// Owner of the root directory.
    pub uid: u32,
    /// Group of the root directory.
    pub gid: u32,
    /// When the mount was made.
    pub now: SystemTime,
}

/// The state of the mount.
#[derive(Debug)]
pub struct Core {
    exclusive: bool,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    slots: BTreeMap<u64, Slot>,
    next_slot: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    by_lock: HashMap<LockId, u64>,
    pending: HashMap<u64, Cont>,
    next_tag: u64,
    connected: bool,
    stopping: bool,
    out: VecDeque<Output>,
}

const S_IFMT: u32 = libc::S_IFMT;
const S_IFREG: u32 = libc::S_IFREG;
const S_ISGID: u16 = libc::S_ISGID as u16;

fn errno_of(e: &DlmError) -> i32 {
    match e {
        DlmError::BadName { .. } => libc::ENAMETOOLONG,
        DlmError::Permission(_) => libc::EACCES,
        DlmError::NoSuchDomain(_) => libc::ENOENT,
        _ => libc::EIO,
    }
}

fn errno_of_failure(f: &Failure) -> i32 {
    match f {
        Failure::Busy { .. } => libc::ETXTBSY,
        Failure::TimedOut { .. } => libc::ETIMEDOUT,
        Failure::Deadlock { .. } => libc::EDEADLK,
        Failure::Cancelled => libc::EIO,
    }
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Core {
    /// A mount with an empty root, connected to lockd.
    pub fn new(cfg: CoreConfig) -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT_INO,
            Inode {
                kind: Kind::Dir,
                parent: ROOT_INO,
                name: Vec::new(),
                perm: 0o755,
                uid: cfg.uid,
                gid: cfg.gid,
                atime: cfg.now,
                mtime: cfg.now,
                ctime: cfg.now,
                children: BTreeMap::new(),
                nlookup: 1,
                unlinked: false,
                shared: None,
                slots: BTreeSet::new(),
            },
        );
        Core {
            exclusive: cfg.exclusive,
            inodes,
            next_ino: ROOT_INO + 1,
            slots: BTreeMap::new(),
            next_slot: 1,
            handles: HashMap::new(),
            next_fh: 1,
            by_lock: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            connected: true,
            stopping: false,
            out: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether lockd is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// How many open files there are (for tests and logs).
    pub fn open_files(&self) -> usize {
        self.handles.len()
    }

    // ------------------------------------------------------------ plumbing

    fn reply(&mut self, token: Token, answer: Answer) {
        self.out.push_back(Output::Reply { token, answer });
    }

    fn err(&mut self, token: Token, errno: i32) {
        self.reply(token, Answer::Err(errno));
    }

    fn send(&mut self, request: Request, cont: Cont) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(tag, cont);
        self.out.push_back(Output::Send {
            tag,
            request: ClientRequest::Dlm(request),
        });
    }

    fn attr(&self, ino: u64) -> Option<Attr> {
        let i = self.inodes.get(&ino)?;
        let (nlink, size) = match i.kind {
            Kind::Dir => {
                let subdirs = i
                    .children
                    .values()
                    .filter(|c| self.inodes.get(c).is_some_and(|c| c.kind == Kind::Dir))
                    .count();
                let n = if i.unlinked { 0 } else { 2 + subdirs as u32 };
                (n, 0)
            }
            Kind::File => (u32::from(!i.unlinked), LVB_LEN as u64),
        };
        Some(Attr {
            ino,
            kind: i.kind,
            perm: i.perm,
            nlink,
            uid: i.uid,
            gid: i.gid,
            size,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        })
    }

    fn entry(&mut self, token: Token, ino: u64) {
        match self.attr(ino) {
            Some(a) => {
                if let Some(i) = self.inodes.get_mut(&ino) {
                    i.nlookup += 1;
                }
                self.reply(token, Answer::Entry(a));
            }
            None => self.err(token, libc::ENOENT),
        }
    }

    fn maybe_drop_inode(&mut self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(i) = self.inodes.get(&ino) {
            if i.unlinked && i.nlookup == 0 && i.slots.is_empty() {
                self.inodes.remove(&ino);
            }
        }
    }

    // ------------------------------------------------------------ requests

    /// Handles one file system request; its answer (now or later) comes out
    /// of [`Core::poll_output`].
    pub fn handle_fs(&mut self, token: Token, op: FsOp, now: SystemTime) {
        match op {
            FsOp::Lookup { parent, name } => {
                let child = match self.inodes.get(&parent) {
                    None => return self.err(token, libc::ENOENT),
                    Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
                    Some(p) => p.children.get(&name).copied(),
                };
                match child {
                    Some(c) => self.entry(token, c),
                    None => self.err(token, libc::ENOENT),
                }
            }
            FsOp::Forget { ino, nlookup } => {
                if let Some(i) = self.inodes.get_mut(&ino) {
                    i.nlookup = i.nlookup.saturating_sub(nlookup);
                }
                self.maybe_drop_inode(ino);
            }
            FsOp::GetAttr { ino } => match self.attr(ino) {
                Some(a) => self.reply(token, Answer::Attr(a)),
                None => self.err(token, libc::ENOENT),
            },
            FsOp::SetAttr {
                ino,
                mode,
                uid,
                gid,
                atime,
                mtime,
            } => {
                let Some(i) = self.inodes.get_mut(&ino) else {
                    return self.err(token, libc::ENOENT);
                };
                if let Some(m) = mode {
                    i.perm = (m & 0o7777) as u16;
                }
                if let Some(u) = uid {
                    i.uid = u;
                }
                if let Some(g) = gid {
                    i.gid = g;
                }
                if let Some(t) = atime {
                    i.atime = t;
                }
                if let Some(t) = mtime {
                    i.mtime = t;
                }
                i.ctime = now;
                let a = self.attr(ino).expect("exists");
                self.reply(token, Answer::Attr(a));
            }
            FsOp::Mknod {
                parent,
                name,
                mode,
                uid,
                gid,
            } => self.mknod(token, parent, name, mode, uid, gid, now),
            FsOp::Mkdir {
                parent,
                name,
                mode,
                uid,
                gid,
            } => self.mkdir(token, parent, name, mode, uid, gid, now),
            FsOp::Unlink { parent, name } => self.unlink(token, parent, &name, now),
            FsOp::Rmdir { parent, name } => self.rmdir(token, parent, &name, now),
            FsOp::Open { ino, flags } => self.open(token, ino, flags),
            FsOp::Read { fh, offset, size } => self.read(token, fh, offset, size),
            FsOp::Write {
                fh,
                offset,
                data,
                flags,
            } => self.write(token, fh, offset, &data, flags, now),
            FsOp::Release { fh } => {
                self.release(fh);
                self.reply(token, Answer::Ok);
            }
            FsOp::ReadDir { ino, offset } => self.readdir(token, ino, offset),
            FsOp::Poll { fh } => {
                let Some(h) = self.handles.get(&fh) else {
                    return self.err(token, libc::EBADF);
                };
                let s = &self.slots[&h.slot];
                let ev = if s.lost {
                    libc::POLLERR
                } else if s.blocked.is_some() {
                    libc::POLLIN | libc::POLLRDNORM
                } else {
                    0
                };
                self.reply(token, Answer::Poll(ev as u32));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_inode(
        &mut self,
        parent: u64,
        name: Vec<u8>,
        kind: Kind,
        mut perm: u16,
        uid: u32,
        mut gid: u32,
        now: SystemTime,
    ) -> u64 {
        // Set-group-ID directories hand their group down, as on any Unix
        // file system.
        let p = &self.inodes[&parent];
        if p.perm & S_ISGID != 0 {
            gid = p.gid;
            if kind == Kind::Dir {
                perm |= S_ISGID;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                parent,
                name: name.clone(),
                perm,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                children: BTreeMap::new(),
                nlookup: 0,
                unlinked: false,
                shared: None,
                slots: BTreeSet::new(),
            },
        );
        let p = self.inodes.get_mut(&parent).expect("exists");
        p.children.insert(name, ino);
        p.mtime = now;
        p.ctime = now;
        ino
    }

    #[allow(clippy::too_many_arguments)]
    fn mknod(
        &mut self,
        token: Token,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        now: SystemTime,
    ) {
        match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            // Resource files live in domain directories.
            Some(_) if parent == ROOT_INO => return self.err(token, libc::EACCES),
            Some(p) if p.children.contains_key(&name) => return self.err(token, libc::EEXIST),
            Some(_) => {}
        }
        if mode & S_IFMT != S_IFREG {
            return self.err(token, libc::EPERM);
        }
        if name.len() > MAX_LOCK_NAME_LEN {
            return self.err(token, libc::ENAMETOOLONG);
        }
        // `$` names are reserved by the DLM ($RECOVERY).
        if name.first() == Some(&b'$') {
            return self.err(token, libc::EINVAL);
        }
        let ino = self.new_inode(
            parent,
            name,
            Kind::File,
            (mode & 0o7777) as u16,
            uid,
            gid,
            now,
        );
        self.entry(token, ino);
    }

    #[allow(clippy::too_many_arguments)]
    fn mkdir(
        &mut self,
        token: Token,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        now: SystemTime,
    ) {
        match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            // Domains only at the top level.
            Some(_) if parent != ROOT_INO => return self.err(token, libc::EPERM),
            Some(p) if p.children.contains_key(&name) => return self.err(token, libc::EEXIST),
            Some(_) => {}
        }
        if name.len() > MAX_DOMAIN_LEN {
            return self.err(token, libc::ENAMETOOLONG);
        }
        if !self.connected || self.stopping {
            return self.err(token, libc::EIO);
        }
        self.send(
            Request::Join {
                domain: name.clone(),
                pin: false,
            },
            Cont::Mkdir {
                token,
                name,
                perm: (mode & 0o7777) as u16,
                uid,
                gid,
                now,
            },
        );
    }

    fn unlink(&mut self, token: Token, parent: u64, name: &[u8], now: SystemTime) {
        let child = match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            Some(p) => p.children.get(name).copied(),
        };
        let Some(ino) = child else {
            return self.err(token, libc::ENOENT);
        };
        let c = &self.inodes[&ino];
        if c.kind == Kind::Dir {
            return self.err(token, libc::EISDIR);
        }
        // Open, or being opened: the kernel's dlmfs says EBUSY too.
        if !c.slots.is_empty() {
            return self.err(token, libc::EBUSY);
        }
        self.detach(parent, name, ino, now);
        self.reply(token, Answer::Ok);
    }

    fn detach(&mut self, parent: u64, name: &[u8], ino: u64, now: SystemTime) {
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.children.remove(name);
            p.mtime = now;
            p.ctime = now;
        }
        if let Some(c) = self.inodes.get_mut(&ino) {
            c.unlinked = true;
            c.ctime = now;
        }
        self.maybe_drop_inode(ino);
    }

    fn rmdir(&mut self, token: Token, parent: u64, name: &[u8], now: SystemTime) {
        let child = match self.inodes.get(&parent) {
            None => return self.err(token, libc::ENOENT),
            Some(p) if p.kind != Kind::Dir => return self.err(token, libc::ENOTDIR),
            Some(p) => p.children.get(name).copied(),
        };
        let Some(ino) = child else {
            return self.err(token, libc::ENOENT);
        };
        let c = &self.inodes[&ino];
        if c.kind != Kind::Dir {
            return self.err(token, libc::ENOTDIR);
        }
        if !c.children.is_empty() {
            return self.err(token, libc::ENOTEMPTY);
        }
        self.detach(parent, name, ino, now);
        if self.connected {
            self.send(
                Request::Leave {
                    domain: name.to_vec(),
                    force: false,
                },
                Cont::Rmdir { token },
            );
        } else {
            // lockd forgot us when it went: nothing to leave.
            self.reply(token, Answer::Ok);
        }
    }

    fn readdir(&mut self, token: Token, ino: u64, offset: u64) {
        let Some(d) = self.inodes.get(&ino) else {
            return self.err(token, libc::ENOENT);
        };
        if d.kind != Kind::Dir {
            return self.err(token, libc::ENOTDIR);
        }
        let mut all = vec![
            (ino, Kind::Dir, b".".to_vec()),
            (d.parent, Kind::Dir, b"..".to_vec()),
        ];
        for (name, &c) in &d.children {
            let kind = self.inodes.get(&c).map_or(Kind::File, |i| i.kind);
            all.push((c, kind, name.clone()));
        }
        let list = all
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(n, (ino, kind, name))| DirEntry {
                ino,
                next: n as u64 + 1,
                kind,
                name,
            })
            .collect();
        self.reply(token, Answer::Dir(list));
    }

    // ------------------------------------------------------------ locking

    fn open(&mut self, token: Token, ino: u64, flags: i32) {
        let Some(i) = self.inodes.get(&ino) else {
            return self.err(token, libc::ENOENT);
        };
        if i.kind != Kind::File {
            return self.err(token, libc::EISDIR);
        }
        // Removed (its domain may be gone too): nothing to lock any more.
        if i.unlinked || !self.inodes.contains_key(&i.parent) {
            return self.err(token, libc::ENOENT);
        }
        if !self.connected || self.stopping {
            return self.err(token, libc::EIO);
        }
        // Any write access means EX, as the kernel's dlmfs decides.
        let level = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            Mode::PR
        } else {
            Mode::EX
        };
        let noqueue = flags & libc::O_NONBLOCK != 0;
        let sid = match i.shared {
            Some(s) if !self.exclusive => s,
            _ => {
                let domain = self.inodes[&i.parent].name.clone();
                let resource = i.name.clone();
                let sid = self.next_slot;
                self.next_slot += 1;
                self.slots.insert(
                    sid,
                    Slot {
                        ino,
                        domain,
                        resource,
                        lock: None,
                        granted: None,
                        op: None,
                        pr: 0,
                        ex: 0,
                        handles: BTreeSet::new(),
                        waiters: VecDeque::new(),
                        blocked: None,
                        lvb: [0; LVB_LEN],
                        lvb_valid: true,
                        lost: false,
                    },
                );
                let i = self.inodes.get_mut(&ino).expect("exists");
                i.slots.insert(sid);
                if !self.exclusive {
                    i.shared = Some(sid);
                }
                sid
            }
        };
        self.slots
            .get_mut(&sid)
            .expect("exists")
            .waiters
            .push_back(Waiter {
                token,
                level,
                noqueue,
            });
        self.advance(sid);
    }

    /// Moves a slot along: serves the opens its lock covers, gives back what
    /// its open files no longer need, and asks lockd for what the next
    /// waiting open needs.
    fn advance(&mut self, sid: u64) {
        loop {
            let Some(s) = self.slots.get_mut(&sid) else {
                return;
            };
            if s.lost {
                let waiters: Vec<Waiter> = s.waiters.drain(..).collect();
                for w in waiters {
                    self.err(w.token, libc::EIO);
                }
                break;
            }
            if let Some(op) = &s.op {
                // A trylock does not wait behind a request lockd has queued.
                if op.queued {
                    let own = op.for_open;
                    let (fail, keep): (Vec<Waiter>, Vec<Waiter>) = s
                        .waiters
                        .drain(..)
                        .partition(|w| w.noqueue && Some(w.token) != own);
                    s.waiters = keep.into();
                    for w in fail {
                        self.err(w.token, libc::ETXTBSY);
                    }
                }
                break;
            }
            // Serve what the cached lock covers.
            let mut served = Vec::new();
            let mut i = 0;
            while i < s.waiters.len() {
                let w = &s.waiters[i];
                if s.covers(w.level) && !s.fair_blocked(w.level) {
                    let w = s.waiters.remove(i).expect("in range");
                    match w.level {
                        Mode::EX => s.ex += 1,
                        _ => s.pr += 1,
                    }
                    let fh = self.next_fh;
                    self.next_fh += 1;
                    s.handles.insert(fh);
                    served.push((w.token, fh, w.level));
                } else {
                    i += 1;
                }
            }
            for (token, fh, level) in served {
                self.handles.insert(fh, Handle { slot: sid, level });
                self.reply(token, Answer::Opened(fh));
            }
            let s = self.slots.get_mut(&sid).expect("exists");
            // Give back what the open files no longer need.
            match (s.granted, s.need()) {
                (Some(_), None) => {
                    self.unlock(sid);
                    continue;
                }
                (Some(Mode::EX), Some(Mode::PR)) => {
                    let lock = s.lock.expect("granted");
                    s.op = Some(SlotOp {
                        kind: OpKind::Convert,
                        for_open: None,
                        queued: false,
                    });
                    self.send(
                        Request::Convert {
                            lock,
                            mode: Mode::PR,
                            noqueue: false,
                            bast_on_busy: false,
                            timeout_ms: None,
                        },
                        Cont::Convert { slot: sid },
                    );
                    break;
                }
                _ => {}
            }
            let Some(w) = s.waiters.front() else {
                break;
            };
            if s.granted.is_some() && s.fair_blocked(w.level) {
                // Another lock waits for ours: new opens wait until the open
                // files close and the lock is given back, then queue behind it.
                let (fail, keep): (Vec<Waiter>, Vec<Waiter>) =
                    s.waiters.drain(..).partition(|w| w.noqueue);
                s.waiters = keep.into();
                for w in fail {
                    self.err(w.token, libc::ETXTBSY);
                }
                break;
            }
            let (token, level, noqueue) = (w.token, w.level, w.noqueue);
            match s.lock {
                None => {
                    s.op = Some(SlotOp {
                        kind: OpKind::Lock,
                        for_open: Some(token),
                        queued: false,
                    });
                    let (domain, resource) = (s.domain.clone(), s.resource.clone());
                    // Joining first (a no-op when already joined) keeps the
                    // lock from pinning the domain, even if someone made the
                    // node leave it meanwhile.
                    self.send(
                        Request::Join {
                            domain: domain.clone(),
                            pin: false,
                        },
                        Cont::Ignore("join"),
                    );
                    self.send(
                        Request::Lock(LockRequest {
                            domain,
                            resource,
                            mode: level,
                            flags: LockFlags {
                                noqueue,
                                persistent: false,
                                bast_on_busy: false,
                            },
                            timeout_ms: None,
                        }),
                        Cont::Lock { slot: sid },
                    );
                }
                Some(lock) => {
                    s.op = Some(SlotOp {
                        kind: OpKind::Convert,
                        for_open: Some(token),
                        queued: false,
                    });
                    self.send(
                        Request::Convert {
                            lock,
                            mode: level,
                            noqueue,
                            bast_on_busy: false,
                            timeout_ms: None,
                        },
                        Cont::Convert { slot: sid },
                    );
                }
            }
            break;
        }
        self.maybe_drop_slot(sid);
    }

    fn unlock(&mut self, sid: u64) {
        let s = self.slots.get_mut(&sid).expect("exists");
        s.granted = None;
        s.blocked = None;
        if let Some(lock) = s.lock.take() {
            self.by_lock.remove(&lock);
            // lockd serves one connection's requests in order, so a new
            // lock may be asked for right behind this without waiting.
            self.send(Request::Unlock { lock }, Cont::Ignore("unlock"));
        }
    }

    fn maybe_drop_slot(&mut self, sid: u64) {
        let Some(s) = self.slots.get(&sid) else {
            return;
        };
        if !s.idle() {
            return;
        }
        let ino = s.ino;
        self.slots.remove(&sid);
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.slots.remove(&sid);
            if i.shared == Some(sid) {
                i.shared = None;
            }
        }
        self.maybe_drop_inode(ino);
    }

    /// The slot's lock is gone: its open files get EIO, new opens a new slot.
    fn lose(&mut self, sid: u64) {
        let Some(s) = self.slots.get_mut(&sid) else {
            return;
        };
        s.lost = true;
        s.granted = None;
        if let Some(l) = s.lock.take() {
            self.by_lock.remove(&l);
        }
        if let Some(op) = s.op.take() {
            if let Some(t) = op.for_open {
                if let Some(p) = s.waiters.iter().position(|w| w.token == t) {
                    s.waiters.remove(p);
                }
                self.err(t, libc::EIO);
            }
        }
        let s = &self.slots[&sid];
        let wake: Vec<u64> = s.handles.iter().copied().collect();
        let ino = s.ino;
        for fh in wake {
            self.out.push_back(Output::PollWake(fh));
        }
        if let Some(i) = self.inodes.get_mut(&ino) {
            if i.shared == Some(sid) {
                i.shared = None;
            }
        }
        self.advance(sid);
    }

    fn release(&mut self, fh: u64) {
        let Some(h) = self.handles.remove(&fh) else {
            return;
        };
        self.out.push_back(Output::PollForget(fh));
        if let Some(s) = self.slots.get_mut(&h.slot) {
            s.handles.remove(&fh);
            match h.level {
                Mode::EX => s.ex = s.ex.saturating_sub(1),
                _ => s.pr = s.pr.saturating_sub(1),
            }
        }
        self.advance(h.slot);
    }

    fn read(&mut self, token: Token, fh: u64, offset: u64, size: u32) {
        let Some(h) = self.handles.get(&fh) else {
            return self.err(token, libc::EBADF);
        };
        let s = &self.slots[&h.slot];
        if s.lost {
            return self.err(token, libc::EIO);
        }
        // An invalid value block reads as nothing, as on the kernel's dlmfs.
        if !s.lvb_valid {
            return self.reply(token, Answer::Data(Vec::new()));
        }
        let start = offset.min(LVB_LEN as u64) as usize;
        let end = offset.saturating_add(u64::from(size)).min(LVB_LEN as u64) as usize;
        let data = s.lvb[start..end].to_vec();
        self.reply(token, Answer::Data(data));
    }

    fn write(
        &mut self,
        token: Token,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: i32,
        now: SystemTime,
    ) {
        let Some(h) = self.handles.get(&fh) else {
            return self.err(token, libc::EBADF);
        };
        // The kernel already refuses writes to files opened read-only.
        if h.level != Mode::EX {
            return self.err(token, libc::EBADF);
        }
        let sid = h.slot;
        // The kernel's dlmfs ignores O_APPEND; FUSE would write at the end
        // (64) instead, so such writes start at the beginning.
        let offset = if flags & libc::O_APPEND != 0 {
            0
        } else {
            offset
        };
        let s = self.slots.get_mut(&sid).expect("exists");
        if s.lost {
            return self.err(token, libc::EIO);
        }
        if offset >= LVB_LEN as u64 {
            return self.err(token, libc::ENOSPC);
        }
        let off = offset as usize;
        let n = data.len().min(LVB_LEN - off);
        if n == 0 {
            return self.reply(token, Answer::Written(0));
        }
        let Some(lock) = s.lock else {
            return self.err(token, libc::EIO);
        };
        s.lvb[off..off + n].copy_from_slice(&data[..n]);
        s.lvb_valid = true;
        let value = s.lvb;
        let ino = s.ino;
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.mtime = now;
            i.ctime = now;
        }
        self.send(
            Request::LvbSet { lock, value },
            Cont::Write {
                token,
                len: n as u32,
            },
        );
    }

    // ------------------------------------------------------------ lockd

    /// Handles a message from lockd.
    pub fn handle_lockd(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::Reply { tag, reply } => match self.pending.remove(&tag) {
                Some(cont) => self.on_reply(cont, reply),
                None => tracing::warn!(tag, "reply to a request never sent"),
            },
            ServerMsg::Event(e) => self.on_event(e),
            ServerMsg::Welcome { .. } => {}
            ServerMsg::Error { message } => {
                tracing::error!("lockd closes the connection: {message}");
            }
        }
    }

    fn on_reply(&mut self, cont: Cont, reply: ServerReply) {
        let r = match reply {
            ServerReply::Dlm(r) => r,
            other => {
                tracing::warn!(?other, "unexpected reply from lockd");
                Reply::Err(DlmError::UnknownClient)
            }
        };
        match cont {
            Cont::Ignore(what) => {
                if let Reply::Err(e) = r {
                    tracing::debug!("lockd refused {what}: {e}");
                }
            }
            Cont::Mkdir {
                token,
                name,
                perm,
                uid,
                gid,
                now,
            } => match r {
                Reply::Ok => {
                    if self.inodes[&ROOT_INO].children.contains_key(&name) {
                        return self.err(token, libc::EEXIST);
                    }
                    tracing::info!(domain = %show(&name), "joined");
                    let ino = self.new_inode(ROOT_INO, name, Kind::Dir, perm, uid, gid, now);
                    self.entry(token, ino);
                }
                Reply::Err(e) => {
                    tracing::warn!(domain = %show(&name), "cannot join: {e}");
                    self.err(token, errno_of(&e));
                }
                other => {
                    tracing::warn!(?other, "unexpected answer to join");
                    self.err(token, libc::EIO);
                }
            },
            Cont::Rmdir { token } => {
                if let Reply::Err(e) = r {
                    tracing::debug!("leave: {e}");
                }
                self.reply(token, Answer::Ok);
            }
            Cont::Lock { slot } => match r {
                Reply::LockAccepted { lock } => match self.slots.get_mut(&slot) {
                    Some(s) if matches!(&s.op, Some(op) if op.kind == OpKind::Lock) => {
                        s.lock = Some(lock);
                        self.by_lock.insert(lock, slot);
                    }
                    // Its open gave up meanwhile (shutdown): give it back.
                    _ => self.send(Request::Unlock { lock }, Cont::Ignore("unlock")),
                },
                Reply::Err(e) => self.op_failed(slot, errno_of(&e), &e.to_string()),
                other => {
                    tracing::warn!(?other, "unexpected answer to lock");
                    self.op_failed(slot, libc::EIO, "unexpected answer");
                }
            },
            Cont::Convert { slot } => match r {
                Reply::Ok => {}
                Reply::Err(e) => self.op_failed(slot, errno_of(&e), &e.to_string()),
                other => {
                    tracing::warn!(?other, "unexpected answer to convert");
                    self.op_failed(slot, libc::EIO, "unexpected answer");
                }
            },
            Cont::Fetch { slot } => {
                let Some(s) = self.slots.get_mut(&slot) else {
                    return;
                };
                if !matches!(&s.op, Some(op) if op.kind == OpKind::Fetch) {
                    return;
                }
                s.op = None;
                match r {
                    Reply::Lvb { value, valid } => {
                        s.lvb = value;
                        s.lvb_valid = valid;
                    }
                    other => {
                        tracing::warn!(?other, "cannot read the value block");
                        s.lvb = [0; LVB_LEN];
                        s.lvb_valid = false;
                    }
                }
                self.advance(slot);
            }
            Cont::Write { token, len } => match r {
                Reply::Ok => self.reply(token, Answer::Written(len)),
                Reply::Err(e) => {
                    tracing::warn!("cannot write the value block: {e}");
                    self.err(token, errno_of(&e));
                }
                _ => self.err(token, libc::EIO),
            },
        }
    }

    /// A slot's request was refused or failed: its open gets `errno`.
    fn op_failed(&mut self, sid: u64, errno: i32, why: &str) {
        let Some(s) = self.slots.get_mut(&sid) else {
            return;
        };
        let Some(op) = s.op.take() else {
            return;
        };
        tracing::debug!(slot = sid, "request failed: {why}");
        if op.kind == OpKind::Lock {
            if let Some(l) = s.lock.take() {
                self.by_lock.remove(&l);
            }
            s.granted = None;
        }
        match op.for_open {
            Some(t) => {
                if let Some(p) = s.waiters.iter().position(|w| w.token == t) {
                    s.waiters.remove(p);
                }
                self.err(t, errno);
            }
            None => {
                // A down-conversion cannot fail while the lock exists;
                // rather than ask again and again, give the lock up.
                tracing::warn!(slot = sid, "down-conversion refused: {why}");
                if let Some(lock) = s.lock {
                    self.send(Request::Unlock { lock }, Cont::Ignore("unlock"));
                }
                return self.lose(sid);
            }
        }
        self.advance(sid);
    }

    fn on_event(&mut self, e: Event) {
        let lock = match &e {
            Event::Granted { lock, .. }
            | Event::Waiting { lock, .. }
            | Event::Failed { lock, .. }
            | Event::Bast { lock, .. }
            | Event::Lost { lock, .. } => *lock,
        };
        // Events of a lock already given back are stale.
        let Some(&sid) = self.by_lock.get(&lock) else {
            return;
        };
        match e {
            Event::Granted { mode, .. } => {
                let s = self.slots.get_mut(&sid).expect("mapped");
                s.granted = Some(mode);
                // lockd tells again whom a granted lock still blocks.
                s.blocked = None;
                match s.op.as_ref().map(|o| o.kind) {
                    Some(OpKind::Lock) => {
                        s.op = Some(SlotOp {
                            kind: OpKind::Fetch,
                            for_open: None,
                            queued: false,
                        });
                        self.send(Request::LvbGet { lock }, Cont::Fetch { slot: sid });
                    }
                    _ => {
                        s.op = None;
                        self.advance(sid);
                    }
                }
            }
            Event::Waiting { .. } => {
                let s = self.slots.get_mut(&sid).expect("mapped");
                if let Some(op) = s.op.as_mut() {
                    op.queued = true;
                }
                self.advance(sid);
            }
            Event::Failed { failure, .. } => {
                let errno = errno_of_failure(&failure);
                self.op_failed(sid, errno, &format!("{failure:?}"));
            }
            Event::Bast { mode, .. } => {
                let s = self.slots.get_mut(&sid).expect("mapped");
                s.blocked = Some(match s.blocked {
                    Some(b) if !b.compatible(Mode::PR) => b,
                    _ => mode,
                });
                let wake: Vec<u64> = s.handles.iter().copied().collect();
                for fh in wake {
                    self.out.push_back(Output::PollWake(fh));
                }
                self.advance(sid);
            }
            Event::Lost { reason, .. } => {
                let s = &self.slots[&sid];
                tracing::warn!(
                    domain = %show(&s.domain),
                    resource = %show(&s.resource),
                    "lock lost: {reason:?}"
                );
                self.lose(sid);
            }
        }
    }

    /// The connection to lockd is gone: every lock with it. Waiting opens
    /// and writes fail with EIO, open files get EIO until closed.
    pub fn disconnected(&mut self) {
        self.connected = false;
        let pending: Vec<Cont> = self.pending.drain().map(|(_, c)| c).collect();
        for c in pending {
            match c {
                Cont::Mkdir { token, .. } | Cont::Write { token, .. } => {
                    self.err(token, libc::EIO);
                }
                Cont::Rmdir { token } => self.reply(token, Answer::Ok),
                Cont::Ignore(_) | Cont::Lock { .. } | Cont::Convert { .. } | Cont::Fetch { .. } => {
                }
            }
        }
        let sids: Vec<u64> = self.slots.keys().copied().collect();
        for sid in sids {
            self.lose(sid);
        }
        self.by_lock.clear();
    }

    /// A (new) connection to lockd is up: join the domains again.
    pub fn connected(&mut self) {
        self.connected = true;
        let domains: Vec<Vec<u8>> = self.inodes[&ROOT_INO].children.keys().cloned().collect();
        for domain in domains {
            self.send(Request::Join { domain, pin: false }, Cont::Ignore("join"));
        }
    }

    /// The mount is going away: waiting opens fail, every lock is given back
    /// and every domain left. Later requests that need lockd get EIO.
    pub fn shutdown(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let sids: Vec<u64> = self.slots.keys().copied().collect();
        for sid in sids {
            let s = self.slots.get_mut(&sid).expect("exists");
            if let Some(lock) = s.lock {
                self.send(Request::Unlock { lock }, Cont::Ignore("unlock"));
            }
            self.lose(sid);
        }
        if self.connected {
            let domains: Vec<Vec<u8>> = self.inodes[&ROOT_INO].children.keys().cloned().collect();
            for domain in domains {
                self.send(
                    Request::Leave {
                        domain,
                        force: false,
                    },
                    Cont::Ignore("leave"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
