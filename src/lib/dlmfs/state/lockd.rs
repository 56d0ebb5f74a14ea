//! What lockd says: replies matched to the request that was sent (by its
//! tag's continuation), lock events mapped to their slot, and the
//! connection coming, going, or being given up at shutdown.
//!
//! May depend on: the core's state and plumbing (`super`), `inodes` (a
//! joined domain becomes a directory), `slots` (replies and events move a
//! slot along), `dlm` and `proto` types.

use super::slots::{OpKind, SlotOp};
use super::{Answer, Cont, Core, Kind, Output, ROOT_INO};
use crate::dlm::{DlmError, Event, Failure, LVB_LEN, Mode, Reply, Request};
use crate::proto::{ServerMsg, ServerReply};

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

    pub(super) fn on_reply(&mut self, cont: Cont, reply: ServerReply) {
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

    pub(super) fn on_event(&mut self, e: Event) {
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
