//! The engine thread: the one owner of the [`Core`]. It takes file system
//! requests (with the fuser reply objects that answer them) from the FUSE
//! thread and lockd's messages from the reader thread, feeds them to the
//! core, and carries out what the core says: requests written to lockd,
//! replies sent to the kernel, poll notifications.
//!
//! May depend on: `state`, `link` (below it: the engine owns the
//! connection and tells the reader where to deliver), `client`, `proto`,
//! fuser.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, PollEvents,
    PollNotifier, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyPoll, ReplyWrite,
};

use crate::client::ConnectOptions;
use crate::proto::ServerMsg;

use super::link::{self, FromLockd, Link};
use super::state::{Answer, Attr, Core, FsOp, Kind, Output, Token};

/// How long the kernel may cache names and attributes. Every change goes
/// through this mount, so the kernel's copy stays right.
pub(crate) const TTL: Duration = Duration::from_secs(1);
/// How long shutting down waits for lockd to take back our locks.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// A fuser reply object waiting for its answer.
#[derive(Debug)]
pub(crate) enum Pending {
    /// lookup, mknod, mkdir.
    Entry(ReplyEntry),
    /// getattr, setattr.
    Attr(ReplyAttr),
    /// open.
    Open(ReplyOpen),
    /// read.
    Data(ReplyData),
    /// write.
    Write(ReplyWrite),
    /// unlink, rmdir, release.
    Empty(ReplyEmpty),
    /// readdir.
    Dir(ReplyDirectory),
    /// poll.
    Poll(ReplyPoll),
    /// forget: nothing to answer.
    None,
}

impl Pending {
    /// Answers with an errno.
    pub(crate) fn error(self, errno: i32) {
        let e = Errno::from_i32(errno);
        match self {
            Pending::Entry(r) => r.error(e),
            Pending::Attr(r) => r.error(e),
            Pending::Open(r) => r.error(e),
            Pending::Data(r) => r.error(e),
            Pending::Write(r) => r.error(e),
            Pending::Empty(r) => r.error(e),
            Pending::Dir(r) => r.error(e),
            Pending::Poll(r) => r.error(e),
            Pending::None => {}
        }
    }

    fn answer(self, answer: Answer) {
        match (self, answer) {
            (p, Answer::Err(e)) => p.error(e),
            (Pending::Entry(r), Answer::Entry(a)) => r.entry(&TTL, &file_attr(&a), Generation(0)),
            (Pending::Attr(r), Answer::Attr(a)) => r.attr(&TTL, &file_attr(&a)),
            (Pending::Open(r), Answer::Opened(fh)) => {
                // Direct I/O: every read asks us, never the page cache.
                r.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            (Pending::Data(r), Answer::Data(d)) => r.data(&d),
            (Pending::Write(r), Answer::Written(n)) => r.written(n),
            (Pending::Empty(r), Answer::Ok) => r.ok(),
            (Pending::Dir(mut r), Answer::Dir(entries)) => {
                for e in entries {
                    let kind = match e.kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    let name = std::ffi::OsStr::from_bytes(&e.name);
                    if r.add(INodeNo(e.ino), e.next, kind, name) {
                        break;
                    }
                }
                r.ok();
            }
            (Pending::Poll(r), Answer::Poll(ev)) => r.poll(PollEvents::from_bits_truncate(ev)),
            (Pending::None, _) => {}
            (p, a) => {
                tracing::error!(?a, "answer does not fit the request");
                p.error(libc::EIO);
            }
        }
    }
}

/// The kernel's view of an inode.
pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// What the engine thread is told.
pub(crate) enum Input {
    /// A file system request.
    Fuse {
        /// The request.
        op: FsOp,
        /// Its reply object.
        reply: Pending,
        /// For poll: how to wake the poller later.
        notify: Option<PollNotifier>,
    },
    /// A message from lockd on connection `generation`.
    Lockd {
        /// Which connection.
        generation: u64,
        /// The message.
        msg: ServerMsg,
    },
    /// Connection `generation` ended.
    LockdGone {
        /// Which connection.
        generation: u64,
        /// Why.
        why: String,
    },
    /// Give everything back and stop; the sender is told when done.
    Shutdown(Sender<()>),
}

/// Where the lockd reader of connection `generation` hands what it reads:
/// to the engine, as [`Input::Lockd`] and finally [`Input::LockdGone`].
/// False once the engine is gone.
pub(crate) fn from_lockd(
    tx: Sender<Input>,
    generation: u64,
) -> impl FnMut(FromLockd) -> bool + Send + 'static {
    move |m| {
        let input = match m {
            FromLockd::Msg(msg) => Input::Lockd { generation, msg },
            FromLockd::Gone(why) => Input::LockdGone { generation, why },
        };
        tx.send(input).is_ok()
    }
}

/// The engine's state.
pub(crate) struct Engine {
    core: Core,
    replies: HashMap<Token, Pending>,
    next_token: Token,
    polls: HashMap<u64, PollNotifier>,
    link: Option<Link>,
    generation: u64,
    connect: ConnectOptions,
    tx: Sender<Input>,
}

impl Engine {
    /// An engine over `core`, connected through `link` (connection 1).
    pub(crate) fn new(core: Core, link: Link, connect: ConnectOptions, tx: Sender<Input>) -> Self {
        Engine {
            core,
            replies: HashMap::new(),
            next_token: 1,
            polls: HashMap::new(),
            link: Some(link),
            generation: 1,
            connect,
            tx,
        }
    }

    /// Runs until shut down (or until every sender is gone).
    pub(crate) fn run(mut self, rx: Receiver<Input>) {
        let mut stopping: Option<(Instant, Sender<()>)> = None;
        loop {
            let input = match &stopping {
                None => match rx.recv() {
                    Ok(i) => i,
                    Err(_) => break,
                },
                Some((deadline, _)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(i) => i,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match input {
                Input::Fuse { op, reply, notify } => {
                    if op.needs_lockd() && self.link.is_none() && stopping.is_none() {
                        self.reconnect();
                    }
                    if let (FsOp::Poll { fh }, Some(n)) = (&op, notify) {
                        self.polls.insert(*fh, n);
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    // Forget is never answered.
                    if !matches!(reply, Pending::None) {
                        self.replies.insert(token, reply);
                    }
                    self.core.handle_fs(token, op, SystemTime::now());
                }
                Input::Lockd { generation, msg } => {
                    if generation == self.generation {
                        self.core.handle_lockd(msg);
                    }
                }
                Input::LockdGone { generation, why } => {
                    if generation == self.generation && self.link.is_some() {
                        if stopping.is_none() {
                            tracing::warn!("{why}; locks held through this mount are lost");
                        }
                        self.link = None;
                        self.core.disconnected();
                    }
                }
                Input::Shutdown(done) => {
                    tracing::debug!("shutting down");
                    if stopping.is_none() {
                        self.core.shutdown();
                        self.drain();
                        match &self.link {
                            Some(l) => l.close_write(),
                            None => {
                                let _ = done.send(());
                                break;
                            }
                        }
                        stopping = Some((Instant::now() + SHUTDOWN_WAIT, done));
                    } else {
                        let _ = done.send(());
                    }
                }
            }
            self.drain();
            if stopping.is_some() && self.link.is_none() {
                break;
            }
        }
        tracing::debug!("stopped");
        // Whatever is still waiting will never be answered by lockd.
        self.core.disconnected();
        self.drain();
        for (_, p) in self.replies.drain() {
            p.error(libc::EIO);
        }
        if let Some((_, done)) = stopping {
            let _ = done.send(());
        }
    }

    /// Carries out what the core says.
    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Send { tag, request } => {
                    let Some(link) = self.link.as_mut() else {
                        continue;
                    };
                    if let Err(e) = link.send(tag, request) {
                        tracing::warn!(
                            "writing to lockd: {e}; locks held through this mount are lost"
                        );
                        link.abort();
                        self.link = None;
                        // Stale messages of this connection are ignored.
                        self.generation += 1;
                        self.core.disconnected();
                    }
                }
                Output::Reply { token, answer } => match self.replies.remove(&token) {
                    Some(p) => p.answer(answer),
                    None => tracing::error!(token, "answer to an unknown request"),
                },
                Output::PollWake(fh) => {
                    if let Some(n) = self.polls.remove(&fh) {
                        if let Err(e) = n.notify() {
                            tracing::debug!("poll notification: {e}");
                        }
                    }
                }
                Output::PollForget(fh) => {
                    self.polls.remove(&fh);
                }
            }
        }
    }

    /// After lockd went away: connect again if one answers now (never
    /// starting one: the mount's locks died with the old one, and whoever
    /// restarts lockd decides where it runs).
    fn reconnect(&mut self) {
        match link::connect(&self.connect, false) {
            Ok(c) => {
                self.generation += 1;
                let deliver = from_lockd(self.tx.clone(), self.generation);
                if let Err(e) = link::spawn_reader(c.reader, c.leftover, deliver) {
                    tracing::warn!("cannot start the lockd reader: {e}");
                    return;
                }
                tracing::info!("connected to lockd again");
                self.link = Some(c.link);
                self.core.connected();
            }
            Err(e) => tracing::debug!("lockd still unreachable: {e}"),
        }
    }
}
