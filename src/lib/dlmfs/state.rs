//! The file system as a state machine: inodes, open files and the lockd
//! locks behind them.
//!
//! Pure: file system requests ([`FsOp`], each with a [`Token`] to answer)
//! and lockd's messages go in; answers to the requests, requests for lockd
//! (already tagged) and poll wake-ups come out of [`Core::poll_output`]. No
//! sockets, threads or clocks (the caller passes the time for timestamps),
//! so the unit tests drive it against the real lock manager core.
//!
//! This module holds what crosses its boundary (requests, answers,
//! outputs), the core's state, the plumbing every part uses (answers,
//! tagged requests to lockd with their continuations) and the dispatch of
//! file system requests. The parts: `inodes` (the namespace and inode
//! attributes), `slots` (lockd locks shared by open files: serving,
//! converting, giving back, losing; value block reads and writes) and
//! `lockd` (replies, events and the connection coming and going).

mod inodes;
mod lockd;
mod slots;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::SystemTime;

use crate::dlm::{LockId, Request};
use crate::proto::ClientRequest;

use inodes::Inode;
use slots::{Handle, Slot};

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
}

#[cfg(test)]
mod tests;
