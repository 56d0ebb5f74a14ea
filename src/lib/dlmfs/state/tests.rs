//! The file system core driven against the real lock manager core: our
//! requests go to a [`Dlm`] as client 1; other clients (dlmctl, another
//! mount) are clients 2 and 3.

use std::collections::HashMap;
use std::time::SystemTime;

use super::*;
use crate::dlm::{
    Action, ClientId, Cred, Dlm, Event, Input, LockFlags, LockRequest, Millis, Mode, NodeId, Reply,
};
use crate::proto::{ServerMsg, ServerReply};

const ME: ClientId = ClientId(1);
const OTHER: ClientId = ClientId(2);

struct Rig {
    core: Core,
    dlm: Dlm,
    next_token: Token,
    answers: HashMap<Token, Answer>,
    wakes: Vec<u64>,
    /// What lockd told the other clients.
    other: Vec<(ClientId, Action)>,
    other_tag: u64,
    connected: bool,
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

impl Rig {
    fn new(exclusive: bool) -> Self {
        let mut dlm = Dlm::new(NodeId(0));
        for (c, uid) in [(ME, 0), (OTHER, 0), (ClientId(3), 1000)] {
            dlm.handle(
                Millis(0),
                Input::Connected {
                    client: c,
                    cred: Cred {
                        uid,
                        gid: uid,
                        pid: c.0 as i32,
                    },
                },
            );
        }
        Rig {
            core: Core::new(CoreConfig {
                exclusive,
                uid: 0,
                gid: 0,
                now: t0(),
            }),
            dlm,
            next_token: 1,
            answers: HashMap::new(),
            wakes: Vec::new(),
            other: Vec::new(),
            other_tag: 1000,
            connected: true,
        }
    }

    /// Runs both state machines until neither has anything to say.
    fn pump(&mut self) {
        loop {
            let mut idle = true;
            while let Some(o) = self.core.poll_output() {
                idle = false;
                match o {
                    Output::Send { tag, request } => {
                        if !self.connected {
                            continue;
                        }
                        let ClientRequest::Dlm(request) = request else {
                            panic!("unexpected request {request:?}");
                        };
                        self.dlm.handle(
                            Millis(0),
                            Input::Request {
                                client: ME,
                                tag,
                                request,
                            },
                        );
                    }
                    Output::Reply { token, answer } => {
                        assert!(
                            self.answers.insert(token, answer).is_none(),
                            "token {token} answered twice"
                        );
                    }
                    Output::PollWake(fh) => self.wakes.push(fh),
                    Output::PollForget(_) => {}
                }
            }
            while let Some(a) = self.dlm.poll_action() {
                idle = false;
                match a {
                    Action::Reply { client, tag, reply } if client == ME => {
                        self.core.handle_lockd(ServerMsg::Reply {
                            tag,
                            reply: ServerReply::Dlm(reply),
                        });
                    }
                    Action::Event { client, event } if client == ME => {
                        self.core.handle_lockd(ServerMsg::Event(event));
                    }
                    Action::Reply { client, .. } | Action::Event { client, .. } => {
                        self.other.push((client, a));
                    }
                    Action::Send { .. } => {}
                }
            }
            if idle {
                return;
            }
        }
    }

    fn fs(&mut self, op: FsOp) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        self.core.handle_fs(t, op, t0());
        self.pump();
        t
    }

    fn answer(&self, t: Token) -> Option<&Answer> {
        self.answers.get(&t)
    }

    fn ok(&mut self, op: FsOp) -> Answer {
        let t = self.fs(op.clone());
        match self.answers.get(&t) {
            Some(Answer::Err(e)) => panic!("{op:?} failed with errno {e}"),
            Some(a) => a.clone(),
            None => panic!("{op:?} not answered"),
        }
    }

    fn errno(&mut self, op: FsOp) -> i32 {
        let t = self.fs(op.clone());
        match self.answers.get(&t) {
            Some(Answer::Err(e)) => *e,
            other => panic!("{op:?} should fail, got {other:?}"),
        }
    }

    fn mkdir(&mut self, name: &str) -> u64 {
        match self.ok(FsOp::Mkdir {
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }) {
            Answer::Entry(a) => a.ino,
            other => panic!("{other:?}"),
        }
    }

    fn mknod(&mut self, dir: u64, name: &str) -> u64 {
        match self.ok(FsOp::Mknod {
            parent: dir,
            name: name.into(),
            mode: libc::S_IFREG | 0o644,
            uid: 0,
            gid: 0,
        }) {
            Answer::Entry(a) => a.ino,
            other => panic!("{other:?}"),
        }
    }

    /// Starts an open; returns its token (answered or not).
    fn open(&mut self, ino: u64, flags: i32) -> Token {
        self.fs(FsOp::Open { ino, flags })
    }

    /// Opens and expects the grant at once.
    fn take(&mut self, ino: u64, flags: i32) -> u64 {
        let t = self.open(ino, flags);
        self.opened(t)
    }

    fn opened(&self, t: Token) -> u64 {
        match self.answer(t) {
            Some(Answer::Opened(fh)) => *fh,
            other => panic!("open not granted: {other:?}"),
        }
    }

    fn close(&mut self, fh: u64) {
        self.ok(FsOp::Release { fh });
    }

    /// Modes granted by lockd on the resource, per client.
    fn granted(&self, res: &str) -> Vec<(i32, Mode)> {
        self.dlm
            .resources(None)
            .into_iter()
            .filter(|r| r.name == res.as_bytes())
            .flat_map(|r| r.granted.into_iter().chain(r.converting))
            .filter_map(|h| h.granted.map(|g| (h.pid, g)))
            .collect()
    }

    /// Another client's request; returns lockd's immediate reply.
    fn other_req(&mut self, client: ClientId, request: Request) -> Reply {
        self.other_tag += 1;
        let tag = self.other_tag;
        self.dlm.handle(
            Millis(0),
            Input::Request {
                client,
                tag,
                request,
            },
        );
        self.pump();
        self.other
            .iter()
            .find_map(|(c, a)| match a {
                Action::Reply { tag: t, reply, .. } if *c == client && *t == tag => {
                    Some(reply.clone())
                }
                _ => None,
            })
            .expect("lockd answers at once")
    }

    fn other_lock(&mut self, client: ClientId, res: &str, mode: Mode, noqueue: bool) -> LockId {
        match self.other_req(
            client,
            Request::Lock(LockRequest {
                domain: b"dom".to_vec(),
                resource: res.into(),
                mode,
                flags: LockFlags {
                    noqueue,
                    persistent: false,
                    bast_on_busy: false,
                },
                timeout_ms: None,
            }),
        ) {
            Reply::LockAccepted { lock } => lock,
            other => panic!("{other:?}"),
        }
    }

    fn other_granted(&self, lock: LockId) -> bool {
        self.other.iter().any(|(_, a)| {
            matches!(a, Action::Event { event: Event::Granted { lock: l, .. }, .. } if *l == lock)
        })
    }

    fn poll(&mut self, fh: u64) -> u32 {
        match self.ok(FsOp::Poll { fh }) {
            Answer::Poll(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    fn read(&mut self, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        match self.ok(FsOp::Read { fh, offset, size }) {
            Answer::Data(d) => d,
            other => panic!("{other:?}"),
        }
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Answer {
        let t = self.fs(FsOp::Write {
            fh,
            offset,
            data: data.to_vec(),
            flags: libc::O_RDWR,
        });
        self.answers[&t].clone()
    }
}

const RO: i32 = libc::O_RDONLY;
const RW: i32 = libc::O_RDWR;
const WO: i32 = libc::O_WRONLY;
const NB: i32 = libc::O_NONBLOCK;

fn setup(exclusive: bool) -> (Rig, u64) {
    let mut r = Rig::new(exclusive);
    let d = r.mkdir("dom");
    let f = r.mknod(d, "res");
    (r, f)
}

#[test]
fn open_flags_choose_the_mode_and_close_unlocks() {
    let (mut r, f) = setup(false);
    for (flags, mode) in [(RO, Mode::PR), (RW, Mode::EX), (WO, Mode::EX)] {
        let t = r.open(f, flags);
        let fh = r.opened(t);
        assert_eq!(r.granted("res"), vec![(1, mode)], "flags {flags:#x}");
        r.close(fh);
        assert!(r.granted("res").is_empty());
    }
}

#[test]
fn mkdir_joins_without_pinning_and_rmdir_leaves() {
    let mut r = Rig::new(false);
    let d = r.mkdir("dom");
    let doms = r.dlm.domains();
    assert_eq!(doms.len(), 1);
    assert!(!doms[0].pinned);
    assert_eq!(doms[0].users, 1);
    let f = r.mknod(d, "res");
    // Taking a lock does not pin the domain either.
    let fh = r.take(f, RW);
    r.close(fh);
    assert!(!r.dlm.domains()[0].pinned);
    assert_eq!(
        r.errno(FsOp::Rmdir {
            parent: ROOT_INO,
            name: b"dom".to_vec()
        }),
        libc::ENOTEMPTY
    );
    r.ok(FsOp::Unlink {
        parent: d,
        name: b"res".to_vec(),
    });
    r.ok(FsOp::Rmdir {
        parent: ROOT_INO,
        name: b"dom".to_vec(),
    });
    assert!(r.dlm.domains().is_empty());
}

#[test]
fn names_follow_the_kernel_limits() {
    let mut r = Rig::new(false);
    let long = "d".repeat(64);
    assert_eq!(
        r.errno(FsOp::Mkdir {
            parent: ROOT_INO,
            name: long.into(),
            mode: 0o755,
            uid: 0,
            gid: 0
        }),
        libc::ENAMETOOLONG
    );
    let d = r.mkdir(&"d".repeat(63));
    let mk = |name: &str| FsOp::Mknod {
        parent: d,
        name: name.into(),
        mode: libc::S_IFREG | 0o600,
        uid: 0,
        gid: 0,
    };
    assert_eq!(r.errno(mk(&"r".repeat(32))), libc::ENAMETOOLONG);
    assert_eq!(r.errno(mk("$RECOVERY")), libc::EINVAL);
    r.ok(mk(&"r".repeat(31)));
    assert_eq!(r.errno(mk(&"r".repeat(31))), libc::EEXIST);
    // No domains inside domains, no files at the top.
    assert_eq!(
        r.errno(FsOp::Mkdir {
            parent: d,
            name: b"x".to_vec(),
            mode: 0o755,
            uid: 0,
            gid: 0
        }),
        libc::EPERM
    );
    assert_eq!(
        r.errno(FsOp::Mknod {
            parent: ROOT_INO,
            name: b"x".to_vec(),
            mode: libc::S_IFREG | 0o600,
            uid: 0,
            gid: 0
        }),
        libc::EACCES
    );
}

#[test]
fn local_opens_share_one_lock_converting_up_and_down() {
    let (mut r, f) = setup(false);
    let a = r.take(f, RW);
    let b = r.take(f, RW);
    assert_eq!(r.granted("res"), vec![(1, Mode::EX)]);
    r.close(a);
    assert_eq!(r.granted("res"), vec![(1, Mode::EX)]);
    r.close(b);
    assert!(r.granted("res").is_empty());

    let pr = r.take(f, RO);
    assert_eq!(r.granted("res"), vec![(1, Mode::PR)]);
    let ex = r.take(f, RW);
    assert_eq!(r.granted("res"), vec![(1, Mode::EX)]);
    r.close(ex);
    assert_eq!(r.granted("res"), vec![(1, Mode::PR)], "down-converted");
    r.close(pr);
    assert!(r.granted("res").is_empty());
}

#[test]
fn trylock_is_etxtbsy_and_a_blocking_open_waits() {
    let (mut r, f) = setup(false);
    let l = r.other_lock(OTHER, "res", Mode::EX, false);
    assert_eq!(
        r.errno(FsOp::Open {
            ino: f,
            flags: RO | NB
        }),
        libc::ETXTBSY
    );
    assert_eq!(
        r.errno(FsOp::Open {
            ino: f,
            flags: RW | NB
        }),
        libc::ETXTBSY
    );
    let t = r.open(f, RW);
    assert!(r.answer(t).is_none(), "waits");
    // A trylock behind a queued request fails at once.
    assert_eq!(
        r.errno(FsOp::Open {
            ino: f,
            flags: RO | NB
        }),
        libc::ETXTBSY
    );
    // unlink is refused while an open waits.
    assert_eq!(
        r.errno(FsOp::Unlink {
            parent: 2,
            name: b"res".to_vec()
        }),
        libc::EBUSY
    );
    r.other_req(OTHER, Request::Unlock { lock: l });
    let fh = r.opened(t);
    assert_eq!(r.granted("res"), vec![(1, Mode::EX)]);
    // And the other way round: our lock blocks the others.
    let l2 = r.other_lock(OTHER, "res", Mode::PR, true);
    assert!(!r.other_granted(l2));
    r.close(fh);
    let l3 = r.other_lock(OTHER, "res", Mode::EX, true);
    assert!(r.other_granted(l3));
}

#[test]
fn exclusive_mode_gives_each_open_its_own_lock() {
    let (mut r, f) = setup(true);
    let a = r.take(f, RW);
    assert_eq!(
        r.errno(FsOp::Open {
            ino: f,
            flags: RW | NB
        }),
        libc::ETXTBSY
    );
    let t = r.open(f, RW);
    assert!(
        r.answer(t).is_none(),
        "the second EX open waits for the first"
    );
    // The holder is told.
    assert_ne!(r.poll(a) & libc::POLLIN as u32, 0);
    assert!(r.wakes.contains(&a));
    r.close(a);
    let b = r.opened(t);
    r.close(b);
    let p1 = r.take(f, RO);
    let p2 = r.take(f, RO);
    assert_eq!(r.granted("res"), vec![(1, Mode::PR), (1, Mode::PR)]);
    r.close(p1);
    r.close(p2);
    assert!(r.granted("res").is_empty());
}

#[test]
fn a_blocking_notification_makes_the_file_readable_and_new_opens_wait() {
    let (mut r, f) = setup(false);
    let a = r.take(f, RW);
    assert_eq!(r.poll(a), 0);
    let l = r.other_lock(OTHER, "res", Mode::EX, false);
    assert!(!r.other_granted(l));
    assert_eq!(
        r.poll(a),
        (libc::POLLIN | libc::POLLRDNORM) as u32,
        "readable after the bast"
    );
    assert_eq!(r.wakes, vec![a]);
    // Fairness: a new local open does not jump the queue...
    let t = r.open(f, RW);
    assert!(r.answer(t).is_none());
    assert_eq!(
        r.errno(FsOp::Open {
            ino: f,
            flags: RO | NB
        }),
        libc::ETXTBSY
    );
    // ...the holder closes, the waiter gets the lock, then we get it back.
    r.close(a);
    assert!(r.other_granted(l));
    assert!(r.answer(t).is_none());
    r.other_req(OTHER, Request::Unlock { lock: l });
    let b = r.opened(t);
    assert_eq!(r.poll(b), 0);
}

#[test]
fn the_value_block_rules() {
    let (mut r, f) = setup(false);
    let w = r.take(f, RW);
    assert_eq!(r.read(w, 0, 4096), vec![0; 64]);
    assert_eq!(r.write(w, 0, b"hello"), Answer::Written(5));
    assert_eq!(r.write(w, 60, b"123456789"), Answer::Written(4));
    assert_eq!(r.write(w, 64, b"x"), Answer::Err(libc::ENOSPC));
    assert_eq!(r.write(w, 1000, b"x"), Answer::Err(libc::ENOSPC));
    assert_eq!(&r.read(w, 0, 5)[..], b"hello");
    assert_eq!(&r.read(w, 60, 100)[..], b"1234");
    assert!(r.read(w, 64, 10).is_empty());
    assert_eq!(r.write(w, 0, &[b'z'; 100]), Answer::Written(64));
    r.close(w);
    // Stored in lockd, for the next holder anywhere.
    let res = r.dlm.resources(None);
    assert_eq!(res[0].lvb.value, [b'z'; 64]);
    let p = r.take(f, RO);
    assert_eq!(r.read(p, 0, 64), vec![b'z'; 64]);
    assert_eq!(r.write(p, 0, b"no"), Answer::Err(libc::EBADF));
}

#[test]
fn losing_lockd_fails_waiting_and_open_files_with_eio() {
    let (mut r, f) = setup(false);
    let a = r.take(f, RO);
    let _l = r.other_lock(OTHER, "res", Mode::EX, false);
    let t = r.open(f, RW);
    assert!(r.answer(t).is_none());
    r.connected = false;
    r.core.disconnected();
    r.pump();
    assert_eq!(r.answer(t), Some(&Answer::Err(libc::EIO)));
    assert_eq!(
        r.errno(FsOp::Read {
            fh: a,
            offset: 0,
            size: 64
        }),
        libc::EIO
    );
    assert_eq!(r.errno(FsOp::Open { ino: f, flags: RO }), libc::EIO);
    assert_eq!(r.poll(a), libc::POLLERR as u32);
    r.close(a);
    assert_eq!(r.core.open_files(), 0);
}

#[test]
fn shutdown_gives_every_lock_back() {
    let (mut r, f) = setup(false);
    let _a = r.take(f, RW);
    let l = r.other_lock(OTHER, "res", Mode::EX, false);
    let t = r.open(f, RO);
    r.core.shutdown();
    r.pump();
    assert!(r.other_granted(l));
    assert!(matches!(r.answer(t), Some(Answer::Err(libc::EIO))) || r.answer(t).is_none());
    assert!(r.dlm.domains().iter().all(|d| d.users == 0));
}

#[test]
fn unlink_is_refused_while_open_and_readdir_lists_entries() {
    let (mut r, f) = setup(false);
    let fh = r.take(f, RO);
    assert_eq!(
        r.errno(FsOp::Unlink {
            parent: 2,
            name: b"res".to_vec()
        }),
        libc::EBUSY
    );
    let names = |r: &mut Rig, ino| match r.ok(FsOp::ReadDir { ino, offset: 0 }) {
        Answer::Dir(v) => v
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(names(&mut r, ROOT_INO), [".", "..", "dom"]);
    assert_eq!(names(&mut r, 2), [".", "..", "res"]);
    r.close(fh);
    r.ok(FsOp::Unlink {
        parent: 2,
        name: b"res".to_vec(),
    });
    assert_eq!(names(&mut r, 2), [".", ".."]);
}

#[test]
fn a_forced_leave_loses_the_lock_and_the_next_open_joins_again() {
    let (mut r, f) = setup(false);
    let a = r.take(f, RW);
    assert_eq!(
        r.other_req(
            OTHER,
            Request::Leave {
                domain: b"dom".to_vec(),
                force: true
            }
        ),
        Reply::Ok
    );
    assert!(r.dlm.domains().is_empty());
    assert_eq!(
        r.errno(FsOp::Read {
            fh: a,
            offset: 0,
            size: 64
        }),
        libc::EIO
    );
    assert_eq!(r.poll(a), libc::POLLERR as u32);
    // A new open takes a new lock, joining the domain again (unpinned).
    let b = r.take(f, RO);
    assert_eq!(r.granted("res"), vec![(1, Mode::PR)]);
    let d = r.dlm.domains();
    assert_eq!((d[0].users, d[0].pinned), (1, false));
    r.close(a);
    r.close(b);
    assert!(r.granted("res").is_empty());
    assert_eq!(r.core.open_files(), 0);
}
