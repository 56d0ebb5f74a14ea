//! Scenario tests of the core, and a property test against a reference model.

use super::*;

/// Drives a [`Dlm`] and keeps what it said, per client.
struct H {
    dlm: Dlm,
    now: Millis,
    tag: u64,
    out: Vec<Action>,
}

const D: &[u8] = b"dom";

fn c(n: u64) -> ClientId {
    ClientId(n)
}

impl H {
    fn new() -> Self {
        let mut h = H {
            dlm: Dlm::new(NodeId(0)),
            now: Millis(0),
            tag: 0,
            out: Vec::new(),
        };
        for n in 1..=6 {
            h.connect(n, 1000 + n as u32);
        }
        h
    }

    fn connect(&mut self, n: u64, uid: u32) {
        self.dlm.handle(
            self.now,
            Input::Connected {
                client: c(n),
                cred: Cred {
                    uid,
                    gid: uid,
                    pid: 100 + n as i32,
                },
            },
        );
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut v = Vec::new();
        while let Some(a) = self.dlm.poll_action() {
            v.push(a);
        }
        self.out.extend(v.clone());
        v
    }

    fn req(&mut self, n: u64, request: Request) -> (Reply, Vec<Event>) {
        self.tag += 1;
        let tag = self.tag;
        self.dlm.handle(
            self.now,
            Input::Request {
                client: c(n),
                tag,
                request,
            },
        );
        let acts = self.drain();
        let mut reply = None;
        let mut events = Vec::new();
        for a in acts {
            match a {
                Action::Reply {
                    client,
                    tag: t,
                    reply: r,
                } if client == c(n) && t == tag => {
                    assert!(reply.is_none(), "two replies");
                    reply = Some(r);
                }
                Action::Reply { .. } => panic!("reply to another request"),
                Action::Event { client, event } => events.push((client, event)),
                Action::Send { .. } => panic!("a single node sends nothing"),
            }
        }
        let mine = events
            .iter()
            .filter(|(cl, _)| *cl == c(n))
            .map(|(_, e)| e.clone())
            .collect();
        (reply.expect("a reply"), mine)
    }

    fn lock_with(
        &mut self,
        n: u64,
        res: &str,
        mode: Mode,
        flags: LockFlags,
        timeout_ms: Option<u64>,
    ) -> (LockId, Vec<Event>) {
        let (reply, events) = self.req(
            n,
            Request::Lock(LockRequest {
                domain: D.to_vec(),
                resource: res.as_bytes().to_vec(),
                mode,
                flags,
                timeout_ms,
            }),
        );
        match reply {
            Reply::LockAccepted { lock } => (lock, events),
            other => panic!("lock refused: {other:?}"),
        }
    }

    fn lock(&mut self, n: u64, res: &str, mode: Mode) -> (LockId, Vec<Event>) {
        self.lock_with(n, res, mode, LockFlags::default(), None)
    }

    fn trylock(&mut self, n: u64, res: &str, mode: Mode) -> (LockId, Vec<Event>) {
        self.lock_with(
            n,
            res,
            mode,
            LockFlags {
                noqueue: true,
                ..Default::default()
            },
            None,
        )
    }

    fn convert(&mut self, n: u64, lock: LockId, mode: Mode) -> (Reply, Vec<Event>) {
        self.req(
            n,
            Request::Convert {
                lock,
                mode,
                noqueue: false,
                bast_on_busy: false,
                timeout_ms: None,
            },
        )
    }

    fn unlock(&mut self, n: u64, lock: LockId) -> Reply {
        self.req(n, Request::Unlock { lock }).0
    }

    /// Events any client got in the last step, for `lock`.
    fn events_for(&self, lock: LockId) -> Vec<Event> {
        self.out
            .iter()
            .filter_map(|a| match a {
                Action::Event { event, .. } if event_lock(event) == lock => Some(event.clone()),
                _ => None,
            })
            .collect()
    }

    fn granted(&self, res: &str) -> Vec<(LockId, Mode)> {
        self.dlm
            .resources(Some(D))
            .into_iter()
            .filter(|r| r.name == res.as_bytes())
            .flat_map(|r| r.granted.into_iter().chain(r.converting))
            .map(|h| (h.lock, h.granted.unwrap()))
            .collect()
    }
}

fn event_lock(e: &Event) -> LockId {
    match e {
        Event::Granted { lock, .. }
        | Event::Waiting { lock, .. }
        | Event::Failed { lock, .. }
        | Event::Bast { lock, .. }
        | Event::Lost { lock, .. } => *lock,
    }
}

fn granted_ev(lock: LockId, mode: Mode) -> Event {
    Event::Granted { lock, mode }
}

/// The request was queued: a Waiting event and no completion.
fn is_waiting(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Waiting { .. }))
        && !events
            .iter()
            .any(|e| matches!(e, Event::Granted { .. } | Event::Failed { .. }))
}

/// The events that are not blocking notifications.
fn no_basts(events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| !matches!(e, Event::Bast { .. }))
        .collect()
}

#[test]
fn compatibility_matrix_exhaustive_through_trylock() {
    for held in Mode::ALL {
        for wanted in Mode::ALL {
            let mut h = H::new();
            let (a, ev) = h.lock(1, "r", held);
            assert_eq!(ev, [granted_ev(a, held)]);
            let (b, ev) = h.trylock(2, "r", wanted);
            if held.compatible(wanted) {
                assert_eq!(ev, [granted_ev(b, wanted)], "{held} then {wanted}");
            } else {
                assert!(
                    matches!(&ev[..], [Event::Failed { failure: Failure::Busy { blockers }, .. }] if blockers.len() == 1 && blockers[0].lock == a && blockers[0].pid == 101),
                    "{held} then {wanted}: {ev:?}"
                );
                // A failed trylock leaves no trace.
                assert_eq!(h.granted("r"), [(a, held)]);
            }
        }
    }
}

#[test]
fn fifo_new_request_does_not_jump_ahead_of_earlier_waiter() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (b, ev) = h.lock(2, "r", Mode::EX);
    assert!(is_waiting(&ev));
    // Compatible with the granted PR, but an EX waits ahead of it.
    let (cc, ev) = h.lock(3, "r", Mode::PR);
    assert!(is_waiting(&ev), "{ev:?}");
    let (_, ev) = h.trylock(4, "r", Mode::PR);
    assert!(matches!(
        &ev[..],
        [Event::Failed {
            failure: Failure::Busy { .. },
            ..
        }]
    ));
    h.out.clear();
    h.unlock(1, a);
    assert_eq!(no_basts(h.events_for(b)), [granted_ev(b, Mode::EX)]);
    // The new holder learns at once that a PR request waits for it.
    assert!(h.events_for(b).contains(&Event::Bast {
        lock: b,
        mode: Mode::PR
    }));
    assert!(h.events_for(cc).is_empty());
    h.out.clear();
    h.unlock(2, b);
    assert_eq!(h.events_for(cc), [granted_ev(cc, Mode::PR)]);
}

#[test]
fn waiters_are_granted_in_order_and_together_when_compatible() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    let (b, _) = h.lock(2, "r", Mode::PR);
    let (c3, _) = h.lock(3, "r", Mode::PR);
    let (d, _) = h.lock(4, "r", Mode::EX);
    let (e, _) = h.lock(5, "r", Mode::PR);
    h.out.clear();
    h.unlock(1, a);
    let grants: Vec<LockId> = h
        .out
        .iter()
        .filter_map(|x| match x {
            Action::Event {
                event: Event::Granted { lock, .. },
                ..
            } => Some(*lock),
            _ => None,
        })
        .collect();
    assert_eq!(grants, [b, c3]);
    h.out.clear();
    h.unlock(2, b);
    h.unlock(3, c3);
    assert_eq!(no_basts(h.events_for(d)), [granted_ev(d, Mode::EX)]);
    assert!(
        h.events_for(e)
            .iter()
            .all(|x| !matches!(x, Event::Granted { .. }))
    );
}

#[test]
fn conversions_before_new_requests() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (b, _) = h.lock(2, "r", Mode::PR);
    let (w, ev) = h.lock(3, "r", Mode::EX);
    assert!(is_waiting(&ev));
    // A's up-conversion waits for B's PR, but is queued before W.
    let (r, ev) = h.convert(1, a, Mode::EX);
    assert_eq!(r, Reply::Ok);
    assert!(is_waiting(&ev), "{ev:?}");
    h.out.clear();
    h.unlock(2, b);
    assert_eq!(no_basts(h.events_for(a)), [granted_ev(a, Mode::EX)]);
    assert!(h.events_for(w).is_empty());
    h.out.clear();
    h.unlock(1, a);
    assert_eq!(h.events_for(w), [granted_ev(w, Mode::EX)]);
}

#[test]
fn compatible_conversion_is_granted_in_place_past_waiters() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::NL);
    let (_b, _) = h.lock(2, "r", Mode::PR);
    let (_w, ev) = h.lock(3, "r", Mode::EX);
    assert!(is_waiting(&ev));
    // NL -> CR is compatible with every granted mode: granted at once,
    // ahead of the queued EX.
    let (_, ev) = h.convert(1, a, Mode::CR);
    assert_eq!(no_basts(ev), [granted_ev(a, Mode::CR)]);
}

#[test]
fn down_conversion_grants_waiters() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    let (b, _) = h.lock(2, "r", Mode::PR);
    h.out.clear();
    let (_, ev) = h.convert(1, a, Mode::PR);
    assert_eq!(ev, [granted_ev(a, Mode::PR)]);
    assert_eq!(h.events_for(b), [granted_ev(b, Mode::PR)]);
    let (_, ev) = h.convert(1, a, Mode::NL);
    assert_eq!(ev, [granted_ev(a, Mode::NL)]);
    // Same-mode conversion is a no-op grant.
    let (_, ev) = h.convert(1, a, Mode::NL);
    assert_eq!(ev, [granted_ev(a, Mode::NL)]);
}

#[test]
fn conversion_deadlock_fails_one_party() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (b, _) = h.lock(2, "r", Mode::PR);
    let (_, ev) = h.convert(1, a, Mode::EX);
    assert!(is_waiting(&ev));
    let (r, ev) = h.convert(2, b, Mode::EX);
    assert_eq!(r, Reply::Ok);
    assert!(
        matches!(&ev[..], [Event::Failed { lock, failure: Failure::Deadlock { blockers } }] if *lock == b && blockers[0].lock == a),
        "{ev:?}"
    );
    // B keeps PR; A still waits; releasing B lets A through.
    assert!(h.granted("r").contains(&(b, Mode::PR)));
    h.out.clear();
    h.unlock(2, b);
    assert_eq!(h.events_for(a), [granted_ev(a, Mode::EX)]);
}

#[test]
fn pending_request_blocks_a_second_one() {
    let mut h = H::new();
    let (_a, _) = h.lock(1, "r", Mode::EX);
    let (b, _) = h.lock(2, "r", Mode::NL);
    assert_eq!(h.convert(2, b, Mode::EX).0, Reply::Ok);
    assert_eq!(
        h.convert(2, b, Mode::PR).0,
        Reply::Err(DlmError::Pending(b))
    );
    let (w, _) = h.lock(3, "r", Mode::EX);
    assert_eq!(
        h.convert(3, w, Mode::PR).0,
        Reply::Err(DlmError::NotGranted(w))
    );
}

#[test]
fn trylock_on_idle_resource_succeeds_and_never_queues() {
    let mut h = H::new();
    for mode in Mode::ALL {
        let (l, ev) = h.trylock(1, "idle", mode);
        assert_eq!(ev, [granted_ev(l, mode)]);
        h.unlock(1, l);
    }
    let (_a, _) = h.lock(1, "r", Mode::EX);
    let (_, ev) = h.trylock(2, "r", Mode::EX);
    assert!(!ev.iter().any(|e| matches!(e, Event::Waiting { .. })));
    assert_eq!(
        h.dlm
            .resources(Some(D))
            .iter()
            .find(|r| r.name == b"r")
            .unwrap()
            .waiting
            .len(),
        0
    );
}

#[test]
fn trylock_conversion_busy_keeps_mode() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (_b, _) = h.lock(2, "r", Mode::PR);
    let (_, ev) = h.req(
        1,
        Request::Convert {
            lock: a,
            mode: Mode::EX,
            noqueue: true,
            bast_on_busy: false,
            timeout_ms: None,
        },
    );
    assert!(matches!(
        &ev[..],
        [Event::Failed {
            failure: Failure::Busy { .. },
            ..
        }]
    ));
    assert!(h.granted("r").contains(&(a, Mode::PR)));
    assert_eq!(h.convert(1, a, Mode::NL).1, [granted_ev(a, Mode::NL)]);
}

#[test]
fn cancel_waiting_and_converting() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (b, _) = h.lock(2, "r", Mode::EX);
    let (r, ev) = h.req(2, Request::Cancel { lock: b });
    assert_eq!(r, Reply::Ok);
    assert_eq!(
        ev,
        [Event::Failed {
            lock: b,
            failure: Failure::Cancelled
        }]
    );
    assert_eq!(
        h.req(2, Request::Cancel { lock: b }).0,
        Reply::Err(DlmError::NoSuchLock(b))
    );
    let (x, _) = h.lock(3, "r", Mode::PR);
    let (_, ev) = h.convert(3, x, Mode::EX);
    assert!(is_waiting(&ev));
    let (_, ev) = h.req(3, Request::Cancel { lock: x });
    assert_eq!(
        ev,
        [Event::Failed {
            lock: x,
            failure: Failure::Cancelled
        }]
    );
    assert!(h.granted("r").contains(&(x, Mode::PR)));
    assert_eq!(
        h.req(1, Request::Cancel { lock: a }).0,
        Reply::Err(DlmError::NothingToCancel(a))
    );
}

#[test]
fn cancelling_the_head_waiter_lets_the_next_through() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (b, _) = h.lock(2, "r", Mode::EX);
    let (cc, _) = h.lock(3, "r", Mode::PR);
    h.out.clear();
    h.req(2, Request::Cancel { lock: b });
    assert_eq!(h.events_for(cc), [granted_ev(cc, Mode::PR)]);
    let _ = a;
}

#[test]
fn timeout_expires_at_deadline_with_blockers() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    h.now = Millis(1000);
    let (b, ev) = h.lock_with(2, "r", Mode::EX, LockFlags::default(), Some(250));
    assert!(is_waiting(&ev));
    assert_eq!(h.dlm.next_deadline(), Some(Millis(1250)));
    h.dlm.handle(Millis(1249), Input::Tick);
    assert!(h.drain().is_empty());
    h.dlm.handle(Millis(1250), Input::Tick);
    let acts = h.drain();
    assert!(
        matches!(&acts[..], [Action::Event { client, event: Event::Failed { lock, failure: Failure::TimedOut { blockers } } }] if *client == c(2) && *lock == b && blockers[0].lock == a),
        "{acts:?}"
    );
    assert_eq!(h.dlm.next_deadline(), None);
    // A conversion that times out keeps its mode.
    let (x, _) = h.lock(3, "q", Mode::PR);
    let (_y, _) = h.lock(4, "q", Mode::PR);
    h.req(
        3,
        Request::Convert {
            lock: x,
            mode: Mode::EX,
            noqueue: false,
            bast_on_busy: false,
            timeout_ms: Some(10),
        },
    );
    h.dlm.handle(Millis(1260), Input::Tick);
    let acts = h.drain();
    assert!(
        matches!(
            &acts[..],
            [Action::Event {
                event: Event::Failed {
                    failure: Failure::TimedOut { .. },
                    ..
                },
                ..
            }]
        ),
        "{acts:?}"
    );
    assert!(h.granted("q").contains(&(x, Mode::PR)));
}

#[test]
fn grant_disarms_timeout() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    let (b, _) = h.lock_with(2, "r", Mode::EX, LockFlags::default(), Some(100));
    h.unlock(1, a);
    assert_eq!(h.dlm.next_deadline(), None);
    h.dlm.handle(Millis(500), Input::Tick);
    assert!(h.drain().is_empty());
    assert_eq!(h.granted("r"), [(b, Mode::EX)]);
}

#[test]
fn bast_once_per_blocked_mode() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    h.out.clear();
    let (_b, _) = h.lock(2, "r", Mode::EX);
    assert_eq!(
        h.events_for(a),
        [Event::Bast {
            lock: a,
            mode: Mode::EX
        }]
    );
    h.out.clear();
    let (_c, _) = h.lock(3, "r", Mode::EX);
    assert!(h.events_for(a).is_empty(), "told twice about EX");
    let (_d, _) = h.lock(4, "r", Mode::PW);
    assert_eq!(
        h.events_for(a),
        [Event::Bast {
            lock: a,
            mode: Mode::PW
        }]
    );
    // Compatible waiters (queued by order only) do not bast it.
    h.out.clear();
    let (_e, _) = h.lock(5, "r", Mode::CR);
    assert!(h.events_for(a).is_empty());
}

#[test]
fn bast_is_reset_by_a_new_grant_and_never_sent_to_the_requester() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::PR);
    let (b, _) = h.lock(2, "r", Mode::PR);
    h.out.clear();
    let (_, _) = h.convert(1, a, Mode::EX);
    assert_eq!(
        h.events_for(b),
        [Event::Bast {
            lock: b,
            mode: Mode::EX
        }]
    );
    assert!(
        !h.events_for(a)
            .iter()
            .any(|e| matches!(e, Event::Bast { .. }))
    );
    h.unlock(2, b);
    // a is EX now; a new PR waiter tells it.
    h.out.clear();
    let (_w, _) = h.lock(3, "r", Mode::PR);
    assert_eq!(
        h.events_for(a),
        [Event::Bast {
            lock: a,
            mode: Mode::PR
        }]
    );
}

#[test]
fn trylock_can_bast_holders_on_request() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    h.out.clear();
    h.trylock(2, "r", Mode::PR);
    assert!(h.events_for(a).is_empty());
    h.lock_with(
        2,
        "r",
        Mode::PR,
        LockFlags {
            noqueue: true,
            bast_on_busy: true,
            ..Default::default()
        },
        None,
    );
    assert_eq!(
        h.events_for(a),
        [Event::Bast {
            lock: a,
            mode: Mode::PR
        }]
    );
}

#[test]
fn lvb_rules() {
    let mut h = H::new();
    let mut v = [0u8; LVB_LEN];
    v[..5].copy_from_slice(b"hello");
    let (a, _) = h.lock(1, "r", Mode::EX);
    assert_eq!(
        h.req(1, Request::LvbGet { lock: a }).0,
        Reply::Lvb {
            value: [0; LVB_LEN],
            valid: true
        }
    );
    assert_eq!(h.req(1, Request::LvbSet { lock: a, value: v }).0, Reply::Ok);
    let (b, _) = h.lock(2, "r", Mode::PR);
    h.unlock(1, a);
    // The next holder sees it.
    assert_eq!(
        h.req(2, Request::LvbGet { lock: b }).0,
        Reply::Lvb {
            value: v,
            valid: true
        }
    );
    // PR may not write.
    assert_eq!(
        h.req(
            2,
            Request::LvbSet {
                lock: b,
                value: [1; LVB_LEN]
            }
        )
        .0,
        Reply::Err(DlmError::ModeTooLow {
            lock: b,
            held: Mode::PR,
            need: Mode::PW
        })
    );
    h.unlock(2, b);
    // NL may not read; CR may.
    let (n, _) = h.lock(3, "r", Mode::NL);
    assert_eq!(
        h.req(3, Request::LvbGet { lock: n }).0,
        Reply::Err(DlmError::ModeTooLow {
            lock: n,
            held: Mode::NL,
            need: Mode::CR
        })
    );
    h.unlock(3, n);
    // Kept with no locks while the domain exists.
    let info = h.dlm.resources(Some(D));
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].lvb.value, v);
    assert_eq!(info[0].lvb.seq, 1);
    let (cr, _) = h.lock(4, "r", Mode::CR);
    assert_eq!(
        h.req(4, Request::LvbGet { lock: cr }).0,
        Reply::Lvb {
            value: v,
            valid: true
        }
    );
    // A waiting lock has nothing to read.
    let (_x, _) = h.lock(5, "r", Mode::EX);
    let (pw, _) = h.lock(6, "r", Mode::PW);
    assert_eq!(
        h.req(6, Request::LvbGet { lock: pw }).0,
        Reply::Err(DlmError::NotGranted(pw))
    );
}

#[test]
fn resource_without_locks_or_lvb_is_freed_but_domain_stays() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    h.unlock(1, a);
    assert!(h.dlm.resources(None).is_empty());
    assert_eq!(h.dlm.domains().len(), 1);
    assert!(h.dlm.domains()[0].pinned);
}

#[test]
fn disconnect_releases_locks_and_pending_requests() {
    let mut h = H::new();
    let (_a, _) = h.lock(1, "r", Mode::EX);
    let (_w, _) = h.lock(1, "q", Mode::EX);
    let (b, _) = h.lock(2, "r", Mode::EX);
    h.out.clear();
    h.dlm.handle(h.now, Input::Disconnected { client: c(1) });
    h.drain();
    assert_eq!(h.events_for(b), [granted_ev(b, Mode::EX)]);
    assert_eq!(h.dlm.stats().locks, 1);
    // Events are never addressed to the gone client.
    assert!(
        h.out
            .iter()
            .all(|a| !matches!(a, Action::Event { client, .. } if *client == c(1)))
    );
}

#[test]
fn persistent_locks_outlive_their_connection_and_obey_uids() {
    let mut h = H::new();
    h.connect(7, 1001); // same uid as client 1
    h.connect(8, 0); // root
    let p = LockFlags {
        persistent: true,
        ..Default::default()
    };
    let (a, ev) = h.lock_with(1, "r", Mode::EX, p, None);
    assert_eq!(ev, [granted_ev(a, Mode::EX)]);
    h.dlm.handle(h.now, Input::Disconnected { client: c(1) });
    h.drain();
    assert_eq!(h.granted("r"), [(a, Mode::EX)]);
    // Two persistent EX locks exclude each other.
    let (b, ev) = h.lock_with(
        2,
        "r",
        Mode::EX,
        LockFlags {
            noqueue: true,
            persistent: true,
            ..Default::default()
        },
        None,
    );
    assert!(
        matches!(&ev[..], [Event::Failed { lock, failure: Failure::Busy { .. } }] if *lock == b)
    );
    // Another uid may neither convert nor unlock it.
    assert!(matches!(
        h.unlock(2, a),
        Reply::Err(DlmError::Permission(_))
    ));
    assert!(matches!(
        h.convert(2, a, Mode::PR).0,
        Reply::Err(DlmError::Permission(_))
    ));
    // Its uid may, from another connection.
    assert_eq!(h.convert(7, a, Mode::PR).1, [granted_ev(a, Mode::PR)]);
    assert_eq!(
        h.req(7, Request::LvbGet { lock: a }).0,
        Reply::Lvb {
            value: [0; LVB_LEN],
            valid: true
        }
    );
    // Root may unlock it.
    assert_eq!(h.unlock(8, a), Reply::Ok);
    assert!(h.granted("r").is_empty());
}

#[test]
fn pending_persistent_request_dies_with_its_connection() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    let p = LockFlags {
        persistent: true,
        ..Default::default()
    };
    let (b, ev) = h.lock_with(2, "r", Mode::EX, p, None);
    assert!(is_waiting(&ev));
    h.dlm.handle(h.now, Input::Disconnected { client: c(2) });
    h.drain();
    h.unlock(1, a);
    assert!(h.granted("r").is_empty());
    assert!(h.dlm.lock_info(b).is_none());
    // A persistent lock's queued conversion reverts when its requester goes.
    let (x, _) = h.lock_with(3, "q", Mode::PR, p, None);
    let (_y, _) = h.lock(4, "q", Mode::PR);
    h.convert(3, x, Mode::EX);
    h.dlm.handle(h.now, Input::Disconnected { client: c(3) });
    h.drain();
    assert!(h.granted("q").contains(&(x, Mode::PR)));
    assert_eq!(h.dlm.lock_info(x).unwrap().requested, None);
}

#[test]
fn root_can_break_a_connection_lock_and_the_owner_is_told() {
    let mut h = H::new();
    h.connect(8, 0);
    let (a, _) = h.lock(1, "r", Mode::EX);
    assert!(matches!(
        h.unlock(2, a),
        Reply::Err(DlmError::Permission(_))
    ));
    h.out.clear();
    assert_eq!(h.unlock(8, a), Reply::Ok);
    assert_eq!(
        h.events_for(a),
        [Event::Lost {
            lock: a,
            reason: LostReason::BrokenByRoot
        }]
    );
}

#[test]
fn names_are_bounded_bytes() {
    let mut h = H::new();
    let lock = |res: Vec<u8>| {
        Request::Lock(LockRequest {
            domain: D.to_vec(),
            resource: res,
            mode: Mode::EX,
            flags: LockFlags::default(),
            timeout_ms: None,
        })
    };
    assert_eq!(
        h.req(1, lock(vec![])).0,
        Reply::Err(DlmError::BadName {
            what: "resource",
            len: 0
        })
    );
    assert_eq!(
        h.req(1, lock(vec![b'x'; 65])).0,
        Reply::Err(DlmError::BadName {
            what: "resource",
            len: 65
        })
    );
    assert!(matches!(
        h.req(1, lock(vec![b'x'; 64])).0,
        Reply::LockAccepted { .. }
    ));
    assert!(matches!(
        h.req(1, lock(vec![0, b'/', 0xff])).0,
        Reply::LockAccepted { .. }
    ));
    assert_eq!(
        h.req(
            1,
            Request::Join {
                domain: vec![b'd'; 65],
                pin: true
            }
        )
        .0,
        Reply::Err(DlmError::BadName {
            what: "domain",
            len: 65
        })
    );
}

#[test]
fn forced_leave_needs_root_when_other_uids_hold_locks() {
    let mut h = H::new();
    h.connect(8, 0);
    let (a, _) = h.lock(1, "r", Mode::EX);
    let (w, _) = h.lock(2, "r", Mode::EX);
    let leave = Request::Leave {
        domain: D.to_vec(),
        force: true,
    };
    assert!(matches!(
        h.req(1, leave.clone()).0,
        Reply::Err(DlmError::Permission(_))
    ));
    h.out.clear();
    assert_eq!(h.req(8, leave.clone()).0, Reply::Ok);
    assert_eq!(
        h.events_for(a),
        [Event::Lost {
            lock: a,
            reason: LostReason::DomainLeft
        }]
    );
    assert_eq!(
        h.events_for(w),
        [Event::Failed {
            lock: w,
            failure: Failure::Cancelled
        }]
    );
    assert!(h.dlm.domains().is_empty());
    assert_eq!(h.dlm.stats().locks, 0);
    assert!(matches!(
        h.req(1, leave).0,
        Reply::Err(DlmError::NoSuchDomain(_))
    ));
}

#[test]
fn own_locks_do_not_need_root_to_leave() {
    let mut h = H::new();
    let (_a, _) = h.lock(1, "r", Mode::EX);
    assert_eq!(
        h.req(
            1,
            Request::Leave {
                domain: D.to_vec(),
                force: true
            }
        )
        .0,
        Reply::Ok
    );
}

#[test]
fn unpinned_use_ends_with_the_last_user() {
    let mut h = H::new();
    assert_eq!(
        h.req(
            1,
            Request::Join {
                domain: D.to_vec(),
                pin: false
            }
        )
        .0,
        Reply::Ok
    );
    assert_eq!(
        h.req(
            2,
            Request::Join {
                domain: D.to_vec(),
                pin: false
            }
        )
        .0,
        Reply::Ok
    );
    let (a, _) = h.lock(1, "r", Mode::EX);
    h.unlock(1, a);
    assert!(!h.dlm.domains()[0].pinned);
    h.req(
        1,
        Request::Leave {
            domain: D.to_vec(),
            force: false,
        },
    );
    assert_eq!(h.dlm.domains().len(), 1);
    h.dlm.handle(h.now, Input::Disconnected { client: c(2) });
    assert!(h.dlm.domains().is_empty());
}

#[test]
fn lock_ids_carry_the_node() {
    let mut d = Dlm::new(NodeId(3));
    d.handle(
        Millis(0),
        Input::Connected {
            client: c(1),
            cred: Cred::default(),
        },
    );
    d.handle(
        Millis(0),
        Input::Request {
            client: c(1),
            tag: 1,
            request: Request::Lock(LockRequest {
                domain: b"d".to_vec(),
                resource: b"r".to_vec(),
                mode: Mode::EX,
                flags: LockFlags::default(),
                timeout_ms: None,
            }),
        },
    );
    match d.poll_action() {
        Some(Action::Reply {
            reply: Reply::LockAccepted { lock },
            ..
        }) => assert_eq!(lock.0 >> 56, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.resources(None)[0].master, NodeId(3));
}

#[test]
fn unknown_client_gets_an_error() {
    let mut d = Dlm::new(NodeId(0));
    d.handle(
        Millis(0),
        Input::Request {
            client: c(9),
            tag: 5,
            request: Request::Unlock { lock: LockId(1) },
        },
    );
    assert_eq!(
        d.poll_action(),
        Some(Action::Reply {
            client: c(9),
            tag: 5,
            reply: Reply::Err(DlmError::UnknownClient)
        })
    );
}

mod model {
    //! A second, deliberately naive implementation of the grant rules for
    //! one resource, to compare the core against.

    use super::super::Mode;

    #[derive(Clone, Debug)]
    pub struct MLock {
        pub id: u64,
        pub granted: Option<Mode>,
        pub requested: Option<Mode>,
        /// Order of the pending request (for FIFO).
        pub seq: u64,
        pub converting: bool,
    }

    #[derive(Default, Debug)]
    pub struct Model {
        pub locks: Vec<MLock>,
        seq: u64,
    }

    impl Model {
        fn others_ok(&self, id: u64, mode: Mode) -> bool {
            self.locks
                .iter()
                .filter(|l| l.id != id)
                .all(|l| l.granted.is_none_or(|g| g.compatible(mode)))
        }
        fn queued_converts(&self) -> Vec<&MLock> {
            let mut v: Vec<&MLock> = self.locks.iter().filter(|l| l.converting).collect();
            v.sort_by_key(|l| l.seq);
            v
        }
        fn queued_new(&self) -> Vec<&MLock> {
            let mut v: Vec<&MLock> = self.locks.iter().filter(|l| l.granted.is_none()).collect();
            v.sort_by_key(|l| l.seq);
            v
        }
        /// Returns true if granted at once; None if refused as trylock.
        pub fn lock(&mut self, id: u64, mode: Mode, noqueue: bool) -> Option<bool> {
            let now = self.queued_converts().is_empty()
                && self.queued_new().is_empty()
                && self.others_ok(id, mode);
            if now {
                self.locks.push(MLock {
                    id,
                    granted: Some(mode),
                    requested: None,
                    seq: 0,
                    converting: false,
                });
                return Some(true);
            }
            if noqueue {
                return None;
            }
            self.seq += 1;
            self.locks.push(MLock {
                id,
                granted: None,
                requested: Some(mode),
                seq: self.seq,
                converting: false,
            });
            Some(false)
        }
        /// Some(true) granted now, Some(false) queued, None refused (busy or deadlock).
        pub fn convert(&mut self, id: u64, mode: Mode, noqueue: bool) -> Option<bool> {
            let held = self
                .locks
                .iter()
                .find(|l| l.id == id)
                .unwrap()
                .granted
                .unwrap();
            if mode == held || self.others_ok(id, mode) {
                let l = self.locks.iter_mut().find(|l| l.id == id).unwrap();
                l.granted = Some(mode);
                self.settle();
                return Some(true);
            }
            let deadlock = self
                .queued_converts()
                .iter()
                .any(|c| !held.compatible(c.requested.unwrap()));
            if deadlock || noqueue {
                return None;
            }
            self.seq += 1;
            let seq = self.seq;
            let l = self.locks.iter_mut().find(|l| l.id == id).unwrap();
            l.requested = Some(mode);
            l.converting = true;
            l.seq = seq;
            Some(false)
        }
        pub fn remove(&mut self, id: u64) {
            self.locks.retain(|l| l.id != id);
            self.settle();
        }
        pub fn cancel(&mut self, id: u64) {
            let l = self.locks.iter_mut().find(|l| l.id == id).unwrap();
            if l.granted.is_some() {
                l.requested = None;
                l.converting = false;
                self.settle();
            } else {
                self.remove(id);
            }
        }
        /// Grants queued work in order: conversions first, then new requests.
        pub fn settle(&mut self) {
            loop {
                let next = if let Some(c) = self.queued_converts().first() {
                    self.others_ok(c.id, c.requested.unwrap()).then_some(c.id)
                } else if let Some(w) = self.queued_new().first() {
                    self.others_ok(w.id, w.requested.unwrap()).then_some(w.id)
                } else {
                    None
                };
                let Some(id) = next else { return };
                let l = self.locks.iter_mut().find(|l| l.id == id).unwrap();
                l.granted = l.requested.take();
                l.converting = false;
            }
        }
        pub fn granted(&self) -> Vec<(u64, Mode)> {
            let mut v: Vec<(u64, Mode)> = self
                .locks
                .iter()
                .filter_map(|l| l.granted.map(|g| (l.id, g)))
                .collect();
            v.sort();
            v
        }
    }
}

mod props {
    use super::model::Model;
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Lock {
            client: u64,
            mode: u8,
            noqueue: bool,
        },
        Convert {
            pick: usize,
            mode: u8,
            noqueue: bool,
        },
        Unlock {
            pick: usize,
        },
        Cancel {
            pick: usize,
        },
        Disconnect {
            client: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..=4, 0u8..6, any::<bool>()).prop_map(|(client, mode, noqueue)| Op::Lock { client, mode, noqueue }),
            3 => (any::<usize>(), 0u8..6, any::<bool>()).prop_map(|(pick, mode, noqueue)| Op::Convert { pick, mode, noqueue }),
            3 => any::<usize>().prop_map(|pick| Op::Unlock { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            1 => (1u64..=4).prop_map(|client| Op::Disconnect { client }),
        ]
    }

    fn check_compatible(granted: &[(u64, Mode)]) -> Result<(), TestCaseError> {
        for (i, (a, ma)) in granted.iter().enumerate() {
            for (b, mb) in &granted[i + 1..] {
                prop_assert!(ma.compatible(*mb), "{a}:{ma} and {b}:{mb} granted together");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn core_matches_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut h = H::new();
            let mut m = Model::default();
            // lock id -> owning client, for locks alive in the model
            let mut owners: Vec<(LockId, u64)> = Vec::new();
            let mut connected = [true; 5];
            for op in ops {
                match op {
                    Op::Lock { client, mode, noqueue } => {
                        if !connected[client as usize] { h.connect(client, 1000 + client as u32); connected[client as usize] = true; }
                        let mode = Mode::from_u8(mode).unwrap();
                        let (id, ev) = h.lock_with(client, "r", mode, LockFlags { noqueue, ..Default::default() }, None);
                        match m.lock(id.0, mode, noqueue) {
                            Some(true) => prop_assert_eq!(ev, vec![granted_ev(id, mode)]),
                            Some(false) => { prop_assert!(is_waiting(&ev), "waiting expected: {:?}", ev); }
                            None => prop_assert!(matches!(&ev[..], [Event::Failed { failure: Failure::Busy { .. }, .. }]), "busy expected: {:?}", ev),
                        }
                        if h.dlm.lock_info(id).is_some() { owners.push((id, client)); }
                    }
                    Op::Convert { pick, mode, noqueue } => {
                        let granted: Vec<(LockId, u64)> = owners.iter().copied().filter(|(id, _)| {
                            let info = h.dlm.lock_info(*id).unwrap();
                            info.granted.is_some() && info.requested.is_none()
                        }).collect();
                        if granted.is_empty() { continue; }
                        let (id, client) = granted[pick % granted.len()];
                        let mode = Mode::from_u8(mode).unwrap();
                        let (r, ev) = h.req(client, Request::Convert { lock: id, mode, noqueue, bast_on_busy: false, timeout_ms: None });
                        prop_assert_eq!(r, Reply::Ok);
                        match m.convert(id.0, mode, noqueue) {
                            Some(true) => prop_assert!(ev.contains(&granted_ev(id, mode)), "{:?}", ev),
                            Some(false) => prop_assert!(ev.iter().any(|e| matches!(e, Event::Waiting { .. })), "waiting expected: {:?}", ev),
                            None => prop_assert!(ev.iter().any(|e| matches!(e, Event::Failed { failure: Failure::Busy { .. } | Failure::Deadlock { .. }, .. })), "refusal expected: {:?}", ev),
                        }
                    }
                    Op::Unlock { pick } => {
                        if owners.is_empty() { continue; }
                        let (id, client) = owners.remove(pick % owners.len());
                        prop_assert_eq!(h.unlock(client, id), Reply::Ok);
                        m.remove(id.0);
                    }
                    Op::Cancel { pick } => {
                        let pending: Vec<(LockId, u64)> = owners.iter().copied().filter(|(id, _)| h.dlm.lock_info(*id).unwrap().requested.is_some()).collect();
                        if pending.is_empty() { continue; }
                        let (id, client) = pending[pick % pending.len()];
                        prop_assert_eq!(h.req(client, Request::Cancel { lock: id }).0, Reply::Ok);
                        m.cancel(id.0);
                        if h.dlm.lock_info(id).is_none() { owners.retain(|(l, _)| *l != id); }
                    }
                    Op::Disconnect { client } => {
                        h.dlm.handle(h.now, Input::Disconnected { client: c(client) });
                        h.drain();
                        connected[client as usize] = false;
                        // The model releases them one by one, in id order.
                        let gone: Vec<LockId> = owners.iter().filter(|(_, cl)| *cl == client).map(|(id, _)| *id).collect();
                        owners.retain(|(_, cl)| *cl != client);
                        for id in gone { m.remove(id.0); }
                    }
                }
                let mut core: Vec<(u64, Mode)> = h.granted("r").into_iter().map(|(id, m)| (id.0, m)).collect();
                core.sort();
                check_compatible(&core)?;
                prop_assert_eq!(&core, &m.granted(), "core and model disagree");
            }
            // Liveness: once every holder goes, every waiter is eventually granted.
            for _ in 0..200 {
                let holders: Vec<(LockId, u64)> = owners.iter().copied().filter(|(id, _)| h.dlm.lock_info(*id).is_some_and(|i| i.granted.is_some() && i.requested.is_none())).collect();
                let Some(&(id, client)) = holders.first() else { break };
                h.out.clear();
                h.unlock(client, id);
                owners.retain(|(l, _)| *l != id);
            }
            for (id, _) in &owners {
                let info = h.dlm.lock_info(*id);
                prop_assert!(info.as_ref().is_none_or(|i| i.requested.is_none()), "lock {id} still waits: {:?}", info);
            }
        }
    }
}

#[test]
fn heartbeat_membership_is_recorded() {
    let mut d = Dlm::new(NodeId(1));
    d.handle(Millis(0), Input::NodeUp { node: NodeId(3) });
    d.handle(Millis(0), Input::NodeUp { node: NodeId(2) });
    assert_eq!(d.live_nodes(), [NodeId(2), NodeId(3)]);
    d.handle(Millis(0), Input::NodeDown { node: NodeId(3) });
    assert_eq!(d.live_nodes(), [NodeId(2)]);
    assert!(d.poll_action().is_none());
}

#[test]
fn fencing_takes_every_lock_back_and_refuses_requests_until_unfenced() {
    let mut h = H::new();
    let (a, _) = h.lock(1, "r", Mode::EX);
    let (w, _) = h.lock(2, "r", Mode::PR);
    let (b, _) = h.lock(3, "other", Mode::PR);
    h.out.clear();
    h.dlm.handle(h.now, Input::Fence);
    h.drain();
    assert!(h.dlm.is_fenced());
    for (lock, event) in [
        (
            a,
            Event::Lost {
                lock: a,
                reason: LostReason::Fenced,
            },
        ),
        (
            b,
            Event::Lost {
                lock: b,
                reason: LostReason::Fenced,
            },
        ),
        (
            w,
            Event::Failed {
                lock: w,
                failure: Failure::Cancelled,
            },
        ),
    ] {
        assert_eq!(h.events_for(lock), [event]);
    }
    assert!(h.dlm.domains().is_empty());
    assert_eq!(h.dlm.stats().locks, 0);
    let lock = Request::Lock(LockRequest {
        domain: D.to_vec(),
        resource: b"r".to_vec(),
        mode: Mode::EX,
        flags: LockFlags::default(),
        timeout_ms: None,
    });
    assert_eq!(h.req(4, lock.clone()).0, Reply::Err(DlmError::Fenced));
    h.dlm.handle(h.now, Input::Unfence);
    let (r, events) = h.req(4, lock);
    let Reply::LockAccepted { lock: id } = r else {
        panic!("{r:?}");
    };
    assert!(id.0 > b.0, "lock ids are not reused");
    assert!(matches!(events[..], [Event::Granted { .. }]), "{events:?}");
}
