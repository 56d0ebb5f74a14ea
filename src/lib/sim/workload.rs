//! The random clients: what each believes it holds and has asked for,
//! the requests they make, and the replies and events that update their
//! beliefs (checking each reply against what was asked, and value block
//! reads against what was written).
//!
//! May depend on: the driver (`super`), `rng` (through the driver's
//! generator), `checks` (a grant is checked at once) and `dlm`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Sim, SimFailure, dname, rname};
use crate::dlm::{
    ClientId, Cred, DlmError, Event, Input, LVB_LEN, LockFlags, LockId, LockRequest, LostReason,
    Lvb, Mode, Reply, Request,
};

#[derive(Clone, Debug)]
pub(super) struct CLock {
    pub(super) d: usize,
    pub(super) r: usize,
    pub(super) granted: Option<Mode>,
    pub(super) pending: Option<Mode>,
}

#[derive(Clone, Debug)]
pub(super) enum Asked {
    Lock { d: usize, r: usize, mode: Mode },
    Convert { lock: LockId, mode: Mode },
    Unlock { lock: LockId },
    Cancel,
    LvbGet { lock: LockId },
    LvbSet { lock: LockId, value: Lvb },
    Join { d: usize },
    Leave { d: usize, force: bool },
}

#[derive(Debug)]
pub(super) struct SimClient {
    pub(super) id: ClientId,
    pub(super) connected: bool,
    pub(super) locks: BTreeMap<LockId, CLock>,
    pub(super) asked: BTreeMap<u64, (Asked, usize)>,
    /// Domains joined explicitly (or being joined).
    pub(super) joined: BTreeSet<usize>,
}

impl Sim {
    pub(super) fn client_mut(&mut self, n: usize, id: ClientId) -> &mut SimClient {
        &mut self.clients[n][id.0 as usize - 1]
    }

    pub(super) fn on_reply(
        &mut self,
        n: usize,
        id: ClientId,
        tag: u64,
        reply: Reply,
    ) -> Result<(), SimFailure> {
        let step = self.step;
        let Some((asked, _)) = self.client_mut(n, id).asked.remove(&tag) else {
            return Err(self.fail(format!(
                "node {} client {}: reply to unknown tag {tag}",
                n + 1,
                id.0
            )));
        };
        self.log(format!("n{} c{} reply {asked:?} -> {reply:?}", n + 1, id.0));
        let _ = step;
        match (asked, reply) {
            (asked, Reply::Err(DlmError::Fenced)) => {
                if !self.dlms[n].is_fenced() {
                    return Err(self.fail(format!(
                        "node {} client {}: {asked:?} refused as fenced by a node that is not",
                        n + 1,
                        id.0
                    )));
                }
                // A fenced node is in no domain.
                if let Asked::Join { d } = asked {
                    self.client_mut(n, id).joined.remove(&d);
                }
            }
            (Asked::Lock { d, r, mode }, Reply::LockAccepted { lock }) => {
                self.client_mut(n, id).locks.insert(
                    lock,
                    CLock {
                        d,
                        r,
                        granted: None,
                        pending: Some(mode),
                    },
                );
            }
            (Asked::Convert { lock, mode }, Reply::Ok) => {
                if let Some(l) = self.client_mut(n, id).locks.get_mut(&lock) {
                    l.pending = Some(mode);
                }
            }
            (Asked::Unlock { lock }, Reply::Ok) => {
                self.client_mut(n, id).locks.remove(&lock);
            }
            (Asked::LvbSet { lock, value }, Reply::Ok) => {
                let l = self.clients[n][id.0 as usize - 1].locks[&lock].clone();
                if !l.granted.is_some_and(|g| g.can_write_lvb()) {
                    return Err(self.fail(format!("LVB written through {l:?}")));
                }
                self.lvb_last.insert((l.d, l.r), value);
                self.lvb_seen.entry((l.d, l.r)).or_default().insert(value);
                // While a dead node is not recovered from yet, a master may
                // still grant it a mode (requests it sent before dying), and
                // recovery then rightly distrusts the value.
                if self.down.is_empty() && self.notices.is_empty() {
                    self.lvb_may_invalid.remove(&(l.d, l.r));
                }
                self.lvb_must_invalid.remove(&(l.d, l.r));
            }
            (Asked::LvbGet { lock }, Reply::Lvb { value, valid }) => {
                let l = self.clients[n][id.0 as usize - 1].locks[&lock].clone();
                let g = l.granted.expect("read through a granted lock");
                let key = (l.d, l.r);
                let last = self.lvb_last.get(&key).copied().unwrap_or([0; LVB_LEN]);
                let pristine = value == [0; LVB_LEN];
                // Under CR or CW the copy may be older than the last write
                // (a writer can share the resource): only what it was when
                // read matters, and it was some earlier state.
                let strong = matches!(g, Mode::PR | Mode::PW | Mode::EX);
                let may_invalid = if strong {
                    self.lvb_may_invalid.contains(&key)
                } else {
                    self.out.crashes + self.out.fences > 0
                };
                if !valid && !may_invalid {
                    return Err(self.fail(format!(
                        "node {} client {} read d{}/r{} as invalid with no crash or fence since its last write",
                        n + 1,
                        id.0,
                        l.d,
                        l.r
                    )));
                }
                if strong && valid && !pristine && self.lvb_must_invalid.contains(&key) {
                    return Err(self.fail(format!(
                        "node {} client {} read d{}/r{} as valid ({:?}) after its writer's node died",
                        n + 1,
                        id.0,
                        l.d,
                        l.r,
                        &value[..8]
                    )));
                }
                let after_crash = may_invalid && (!valid || pristine);
                if after_crash {
                    // Flagged, or forgotten with the dead node: allowed.
                } else if matches!(g, Mode::PR | Mode::PW | Mode::EX) {
                    if value != last {
                        return Err(self.fail(format!(
                            "node {} client {} read d{}/r{} under {g}: {:?}, but the last value written is {:?}",
                            n + 1,
                            id.0,
                            l.d,
                            l.r,
                            &value[..8],
                            &last[..8]
                        )));
                    }
                } else if value != [0; LVB_LEN]
                    && !self
                        .lvb_seen
                        .get(&(l.d, l.r))
                        .is_some_and(|s| s.contains(&value))
                {
                    return Err(self.fail(format!("read a value never written: {:?}", &value[..8])));
                }
            }
            (Asked::Cancel, Reply::Ok | Reply::Err(_)) => {}
            (Asked::Join { .. }, Reply::Ok) => {}
            (Asked::Leave { d, force }, Reply::Ok) => {
                if force {
                    // Every client of the node stopped using it.
                    for c in &mut self.clients[n] {
                        c.joined.remove(&d);
                    }
                } else {
                    self.client_mut(n, id).joined.remove(&d);
                }
            }
            (asked, reply) => {
                return Err(self.fail(format!(
                    "node {} client {}: unexpected reply {reply:?} to {asked:?}",
                    n + 1,
                    id.0
                )));
            }
        }
        Ok(())
    }

    pub(super) fn on_event(
        &mut self,
        n: usize,
        id: ClientId,
        event: Event,
    ) -> Result<(), SimFailure> {
        self.log(format!("n{} c{} event {event:?}", n + 1, id.0));
        match event {
            Event::Granted { lock, mode } => {
                self.out.grants += 1;
                let Some(l) = self.client_mut(n, id).locks.get_mut(&lock) else {
                    return Err(self.fail(format!("grant of unknown lock {lock}")));
                };
                if l.pending != Some(mode) {
                    let asked = l.pending;
                    return Err(self.fail(format!("granted {mode} but asked {asked:?}")));
                }
                l.granted = Some(mode);
                l.pending = None;
                let (d, r) = (l.d, l.r);
                self.check_resource(d, r)?;
            }
            Event::Failed { lock, .. } => {
                let c = self.client_mut(n, id);
                if let Some(l) = c.locks.get_mut(&lock) {
                    l.pending = None;
                    if l.granted.is_none() {
                        c.locks.remove(&lock);
                    }
                }
            }
            Event::Lost { lock, reason } => {
                if reason == LostReason::Fenced && !self.dlms[n].is_fenced() {
                    return Err(self.fail(format!(
                        "node {} client {}: lock {lock} lost as fenced by a node that is not",
                        n + 1,
                        id.0
                    )));
                }
                self.client_mut(n, id).locks.remove(&lock);
            }
            Event::Waiting { .. } | Event::Bast { .. } => {}
        }
        Ok(())
    }

    pub(super) fn request(
        &mut self,
        n: usize,
        c: usize,
        asked: Asked,
        request: Request,
    ) -> Result<(), SimFailure> {
        self.tag += 1;
        let tag = self.tag;
        let id = self.clients[n][c].id;
        let step = self.step;
        self.clients[n][c].asked.insert(tag, (asked, step));
        self.log(
            format!("n{} c{} asks {request:?}", n + 1, id.0).replace("value: [", "value: [.."),
        );
        self.input(
            n,
            Input::Request {
                client: id,
                tag,
                request,
            },
        )
    }

    pub(super) fn client_action(&mut self, n: usize, c: usize) -> Result<(), SimFailure> {
        let id = self.clients[n][c].id;
        if !self.clients[n][c].connected {
            self.clients[n][c].connected = true;
            self.log(format!("n{} c{} connects", n + 1, id.0));
            return self.input(
                n,
                Input::Connected {
                    client: id,
                    cred: Cred {
                        uid: 0,
                        gid: 0,
                        pid: (n * 100 + c) as i32 + 1,
                    },
                },
            );
        }
        let roll = self.rng.below(100);
        let locks: Vec<(LockId, CLock)> = self.clients[n][c]
            .locks
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let granted: Vec<(LockId, CLock)> = locks
            .iter()
            .filter(|(_, l)| l.granted.is_some() && l.pending.is_none())
            .cloned()
            .collect();
        let pending: Vec<LockId> = locks
            .iter()
            .filter(|(_, l)| l.pending.is_some())
            .map(|(k, _)| *k)
            .collect();
        let modes = Mode::ALL;
        match roll {
            0..=29 => {
                if locks.len() >= 3 {
                    return Ok(());
                }
                let d = self.rng.below(self.cfg.domains as u64) as usize;
                let r = self.rng.below(self.cfg.resources as u64) as usize;
                if self.cfg.churn && !self.clients[n][c].joined.contains(&d) {
                    self.clients[n][c].joined.insert(d);
                    return self.request(
                        n,
                        c,
                        Asked::Join { d },
                        Request::Join {
                            domain: dname(d),
                            pin: false,
                        },
                    );
                }
                let mode = self.weighted_mode();
                let noqueue = self.rng.chance(250);
                let timeout_ms = self.rng.chance(100).then(|| 1 + self.rng.below(200));
                self.request(
                    n,
                    c,
                    Asked::Lock { d, r, mode },
                    Request::Lock(LockRequest {
                        domain: dname(d),
                        resource: rname(r),
                        mode,
                        flags: LockFlags {
                            noqueue,
                            persistent: false,
                            bast_on_busy: false,
                        },
                        timeout_ms,
                    }),
                )
            }
            30..=51 => {
                let Some(&(lock, _)) = granted.first().or(locks.first()) else {
                    return Ok(());
                };
                let lock = if self.rng.chance(500) && !locks.is_empty() {
                    self.rng
                        .pick(&locks.iter().map(|l| l.0).collect::<Vec<_>>())
                } else {
                    lock
                };
                self.request(n, c, Asked::Unlock { lock }, Request::Unlock { lock })
            }
            52..=64 => {
                if granted.is_empty() {
                    return Ok(());
                }
                let (lock, _) = granted[self.rng.below(granted.len() as u64) as usize].clone();
                let mode = self.rng.pick(&modes);
                let noqueue = self.rng.chance(250);
                let timeout_ms = self.rng.chance(150).then(|| 1 + self.rng.below(200));
                self.request(
                    n,
                    c,
                    Asked::Convert { lock, mode },
                    Request::Convert {
                        lock,
                        mode,
                        noqueue,
                        bast_on_busy: false,
                        timeout_ms,
                    },
                )
            }
            65..=72 => {
                let readable: Vec<LockId> = granted
                    .iter()
                    .filter(|(_, l)| l.granted.is_some_and(|g| g.can_read_lvb()))
                    .map(|(k, _)| *k)
                    .collect();
                if readable.is_empty() {
                    return Ok(());
                }
                let lock = self.rng.pick(&readable);
                self.request(n, c, Asked::LvbGet { lock }, Request::LvbGet { lock })
            }
            73..=79 => {
                let writable: Vec<LockId> = granted
                    .iter()
                    .filter(|(_, l)| l.granted.is_some_and(|g| g.can_write_lvb()))
                    .map(|(k, _)| *k)
                    .collect();
                if writable.is_empty() {
                    return Ok(());
                }
                let lock = self.rng.pick(&writable);
                let mut value = [0u8; LVB_LEN];
                value[..8].copy_from_slice(&self.next_value.to_le_bytes());
                value[8..16].copy_from_slice(&self.seed.to_le_bytes());
                self.next_value += 1;
                self.request(
                    n,
                    c,
                    Asked::LvbSet { lock, value },
                    Request::LvbSet { lock, value },
                )
            }
            80..=83 => {
                if pending.is_empty() {
                    return Ok(());
                }
                let lock = self.rng.pick(&pending);
                self.request(n, c, Asked::Cancel, Request::Cancel { lock })
            }
            84..=90 => {
                // Stop using a domain (a node leaves it when nothing uses it).
                let joined: Vec<usize> = self.clients[n][c].joined.iter().copied().collect();
                if joined.is_empty() || !self.cfg.churn {
                    return Ok(());
                }
                let d = self.rng.pick(&joined);
                if locks.iter().any(|(_, l)| l.d == d) {
                    return Ok(());
                }
                let waiting_join = self.clients[n][c]
                    .asked
                    .values()
                    .any(|(a, _)| matches!(a, Asked::Join { d: x } if *x == d));
                if waiting_join {
                    return Ok(());
                }
                self.request(
                    n,
                    c,
                    Asked::Leave { d, force: false },
                    Request::Leave {
                        domain: dname(d),
                        force: false,
                    },
                )
            }
            91..=92 => {
                if !self.rng.chance(300) {
                    return Ok(());
                }
                let d = self.rng.below(self.cfg.domains as u64) as usize;
                let exists = self.dlms[n].domains().iter().any(|i| i.name == dname(d));
                if !exists {
                    return Ok(());
                }
                let busy = self.clients[n].iter().any(|cl| {
                    cl.asked.values().any(|(a, _)| {
                        matches!(a, Asked::Join { d: x } | Asked::Leave { d: x, .. } if *x == d)
                    })
                });
                if busy {
                    return Ok(());
                }
                self.request(
                    n,
                    c,
                    Asked::Leave { d, force: true },
                    Request::Leave {
                        domain: dname(d),
                        force: true,
                    },
                )
            }
            93..=94 => {
                // The client process exits: its locks go.
                if !self.rng.chance(300) {
                    return Ok(());
                }
                if !self.clients[n][c].asked.is_empty() {
                    return Ok(());
                }
                self.log(format!("n{} c{} disconnects", n + 1, id.0));
                let cl = &mut self.clients[n][c];
                cl.connected = false;
                cl.locks.clear();
                cl.joined.clear();
                self.input(n, Input::Disconnected { client: id })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn weighted_mode(&mut self) -> Mode {
        match self.rng.below(10) {
            0..=3 => Mode::EX,
            4..=5 => Mode::PR,
            6 => Mode::PW,
            7 => Mode::CR,
            8 => Mode::CW,
            _ => Mode::NL,
        }
    }
}
