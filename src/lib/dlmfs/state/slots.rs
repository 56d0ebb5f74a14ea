//! Lock slots and open files: one lockd lock shared by the open files of
//! a resource (or one per open file with `-o exclusive`), which opens it
//! serves, when it is converted up or down or given back, fairness to a
//! lock waiting for ours, trylocks, a lost lock, and the value block
//! reads and writes served from the slot.
//!
//! May depend on: the core's state and plumbing (`super`), `inodes` (an
//! inode is dropped with its last slot) and `dlm` types.

use std::collections::{BTreeSet, VecDeque};
use std::time::SystemTime;

use super::{Answer, Cont, Core, Kind, Output, Token};
use crate::dlm::{LVB_LEN, LockFlags, LockId, LockRequest, Lvb, Mode, Request};

/// A lockd request a slot has in flight.
#[derive(Debug)]
pub(super) struct SlotOp {
    pub(super) kind: OpKind,
    /// The open it is for (None: a down-conversion of the slot's own).
    pub(super) for_open: Option<Token>,
    /// lockd said it is queued behind other holders.
    pub(super) queued: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    /// A new lock.
    Lock,
    /// A conversion.
    Convert,
    /// Reading the value block after a grant.
    Fetch,
}

/// An open waiting for a slot's lock.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) token: Token,
    pub(super) level: Mode,
    pub(super) noqueue: bool,
}

/// One lockd lock and the open files that share it: per resource by
/// default, per open file with `-o exclusive`.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) ino: u64,
    pub(super) domain: Vec<u8>,
    pub(super) resource: Vec<u8>,
    pub(super) lock: Option<LockId>,
    pub(super) granted: Option<Mode>,
    pub(super) op: Option<SlotOp>,
    /// Open files holding PR and EX.
    pub(super) pr: u32,
    pub(super) ex: u32,
    pub(super) handles: BTreeSet<u64>,
    pub(super) waiters: VecDeque<Waiter>,
    /// The strongest mode another lock waits for, since our last grant.
    pub(super) blocked: Option<Mode>,
    pub(super) lvb: Lvb,
    pub(super) lvb_valid: bool,
    /// The lock was taken away (lockd gone, domain left, broken by root):
    /// its open files get EIO until they are closed.
    pub(super) lost: bool,
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
pub(super) struct Handle {
    pub(super) slot: u64,
    pub(super) level: Mode,
}

impl Core {
    pub(super) fn open(&mut self, token: Token, ino: u64, flags: i32) {
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
    pub(super) fn advance(&mut self, sid: u64) {
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

    pub(super) fn unlock(&mut self, sid: u64) {
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

    pub(super) fn maybe_drop_slot(&mut self, sid: u64) {
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
    pub(super) fn lose(&mut self, sid: u64) {
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

    pub(super) fn release(&mut self, fh: u64) {
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

    pub(super) fn read(&mut self, token: Token, fh: u64, offset: u64, size: u32) {
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

    pub(super) fn write(
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

    /// A slot's request was refused or failed: its open gets `errno`.
    pub(super) fn op_failed(&mut self, sid: u64, errno: i32, why: &str) {
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
}
