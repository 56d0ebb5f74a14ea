//! Messages about node locks, in the epoch they were sent for: as a
//! master (requests, unlocks, busy probes, a reconnected node's sync) and
//! as a holder (grants, failures, blocking notes, stored value blocks).
//! Also the entry point for every peer message, which hands membership
//! messages on.
//!
//! May depend on: the helpers in `node/mod.rs`, the queues and grants, the
//! node locks (`gate`), the membership and rebuild handlers, the cluster
//! types.

use std::collections::BTreeSet;

use crate::dlm::cluster::{
    LvbCopy, MasterOut, MasterRes, NodeFailure, PeerMsg, ReportEntry, down_to, master_of,
};
use crate::dlm::state::LvbState;
use crate::dlm::{Dlm, Failure, Holder, LockId, Millis, Mode, NodeId};

/// A holder on another node, as shown to clients ("held EX by node 2 pid 7").
fn remote_holder(node: NodeId, mode: Mode, pid: i32) -> Holder {
    Holder {
        lock: LockId(0),
        node,
        pid,
        uid: u32::MAX,
        granted: Some(mode),
        requested: None,
        persistent: false,
    }
}

fn blockers_of(failure: &NodeFailure) -> Vec<Holder> {
    match failure {
        NodeFailure::Busy(v) | NodeFailure::Deadlock(v) => {
            v.iter().map(|&(n, m, p)| remote_holder(n, m, p)).collect()
        }
    }
}

impl Dlm {
    pub(in crate::dlm) fn on_peer(&mut self, now: Millis, from: NodeId, msg: PeerMsg) {
        if self.cluster.is_none() || !self.cl().nodes.contains(&from) {
            return;
        }
        if self.cl().dead.contains(&from) {
            // From before it died, or from a new incarnation not believed
            // yet (recovery is not over here): an Ask is refused, so that
            // it asks again later, anything else dropped.
            if let PeerMsg::Ask { domain, req } = msg {
                let answer = self.answer(&domain, req, false);
                self.send(from, answer);
            }
            return;
        }
        match msg {
            PeerMsg::Ask { domain, req } => self.on_ask(from, &domain, req),
            PeerMsg::Answer {
                domain,
                req,
                ok,
                epoch,
                members,
                frozen,
            } => self.on_answer(now, from, &domain, req, ok, (epoch, members, frozen)),
            PeerMsg::Cancel { domain, req } => self.on_release(from, &domain, req, false),
            PeerMsg::Done { domain, req, epoch } => {
                self.change_done_everywhere(&domain, epoch);
                self.on_release(from, &domain, req, true);
            }
            PeerMsg::Freeze {
                domain,
                epoch,
                old,
                new,
                initiator,
                lost,
            } => self.on_freeze(
                now,
                &domain,
                epoch,
                old.into_iter().collect(),
                new.into_iter().collect(),
                initiator,
                lost.into_iter().collect(),
            ),
            PeerMsg::Report {
                domain,
                epoch,
                entries,
            } => self.on_report(now, from, &domain, epoch, entries),
            PeerMsg::Ready { domain, epoch } => self.on_ready(now, from, &domain, epoch),
            msg => self.on_lock_msg(now, from, msg),
        }
    }

    /// Messages about node locks: handled in the epoch they were sent for.
    fn on_lock_msg(&mut self, now: Millis, from: NodeId, msg: PeerMsg) {
        let _ = now;
        let epoch = match &msg {
            PeerMsg::Lock { epoch, .. }
            | PeerMsg::Unlock { epoch, .. }
            | PeerMsg::Grant { epoch, .. }
            | PeerMsg::Failed { epoch, .. }
            | PeerMsg::Bast { epoch, .. }
            | PeerMsg::ProbeBusy { epoch, .. }
            | PeerMsg::LvbStored { epoch, .. }
            | PeerMsg::Sync { epoch, .. } => *epoch,
            _ => return,
        };
        let me = self.node;
        let d = msg.domain().to_vec();
        let dc = self.dc_mut(&d);
        if epoch < dc.m.epoch {
            return;
        }
        if epoch > dc.m.epoch {
            dc.deferred.push((from, msg));
            return;
        }
        if dc.m.frozen.is_some() || !dc.m.members.contains(&me) || !dc.m.members.contains(&from) {
            // Sent before the sender froze: its report will say the same.
            return;
        }
        match msg {
            PeerMsg::Lock {
                resource,
                want,
                noqueue,
                seq,
                pid,
                lvb,
                ..
            } => {
                let mut out = Vec::new();
                let Some(m) = self.mastered(&d, &resource, from, lvb) else {
                    return;
                };
                m.request(from, want, noqueue, pid, seq, &mut out);
                self.master_out(&d, &resource, out);
            }
            PeerMsg::Unlock { resource, lvb, .. } => {
                let mut out = Vec::new();
                let Some(m) = self.mastered(&d, &resource, from, lvb) else {
                    return;
                };
                m.unlock(from, &mut out);
                self.master_out(&d, &resource, out);
            }
            PeerMsg::ProbeBusy { resource, pid, .. } => {
                let mut out = Vec::new();
                let Some(m) = self.mastered(&d, &resource, from, None) else {
                    return;
                };
                m.probe_busy(from, pid, &mut out);
                self.master_out(&d, &resource, out);
            }
            PeerMsg::Sync { entries, .. } => self.on_sync(from, &d, entries),
            PeerMsg::Grant {
                resource,
                mode,
                seq,
                lvb,
                ..
            } => self.on_grant(&d, &resource, mode, seq, &lvb),
            PeerMsg::Failed {
                resource,
                want,
                seq,
                failure,
                ..
            } => self.on_failed(&d, &resource, want, seq, failure),
            PeerMsg::Bast {
                resource,
                mode,
                probe,
                ..
            } => self.on_bast(&d, &resource, mode, probe),
            PeerMsg::LvbStored { resource, seq, .. } => {
                let Some(node) = self
                    .domains
                    .get_mut(&d[..])
                    .and_then(|dom| dom.resources.get_mut(&resource[..]))
                    .and_then(|res| res.node.as_deref_mut())
                else {
                    return;
                };
                if node.unacked.as_ref().is_some_and(|u| u.seq <= seq) {
                    node.unacked = None;
                }
                self.maybe_free(&d, &resource);
            }
            _ => {}
        }
    }

    /// The master record of `d/r`, after storing a value block written
    /// back by `from` (and acknowledging it). None if this node is not its
    /// master.
    fn mastered(
        &mut self,
        d: &[u8],
        r: &[u8],
        from: NodeId,
        lvb: Option<LvbCopy>,
    ) -> Option<&mut MasterRes> {
        let me = self.node;
        let dc = self.dc(d)?;
        if master_of(r, &dc.m.members) != Some(me) {
            return None;
        }
        let epoch = dc.m.epoch;
        if let Some(l) = &lvb {
            self.send(
                from,
                PeerMsg::LvbStored {
                    domain: d.to_vec(),
                    epoch,
                    resource: r.to_vec(),
                    seq: l.seq,
                },
            );
        }
        let m = self
            .dc_mut(d)
            .mastered
            .entry(r.into())
            .or_insert_with(|| Box::new(MasterRes::new()));
        if let Some(l) = lvb {
            if l.seq > m.lvb.seq {
                m.lvb = l;
            }
        }
        Some(m)
    }

    /// Sends what the master decided about `d/r`.
    pub(super) fn master_out(&mut self, d: &[u8], r: &[u8], out: Vec<MasterOut>) {
        let epoch = self.dc(d).expect("member").m.epoch;
        for o in out {
            match o {
                MasterOut::Grant(n, mode, seq) => {
                    let lvb = self.dc(d).expect("member").mastered[r].lvb.clone();
                    self.send(
                        n,
                        PeerMsg::Grant {
                            domain: d.to_vec(),
                            epoch,
                            resource: r.to_vec(),
                            mode,
                            seq,
                            lvb,
                        },
                    );
                }
                MasterOut::Failed(n, want, failure, seq) => self.send(
                    n,
                    PeerMsg::Failed {
                        domain: d.to_vec(),
                        epoch,
                        resource: r.to_vec(),
                        want,
                        seq,
                        failure,
                    },
                ),
                MasterOut::Bast(n, mode, probe) => self.send(
                    n,
                    PeerMsg::Bast {
                        domain: d.to_vec(),
                        epoch,
                        resource: r.to_vec(),
                        mode,
                        probe,
                    },
                ),
            }
        }
        let dc = self.dc_mut(d);
        if dc
            .mastered
            .get(r)
            .is_some_and(|m| m.is_idle() && m.lvb == LvbCopy::ZERO)
        {
            dc.mastered.remove(r);
        }
    }

    /// A reconnected node's node locks on the resources this node masters.
    fn on_sync(&mut self, from: NodeId, d: &[u8], entries: Vec<ReportEntry>) {
        let listed: BTreeSet<Vec<u8>> = entries.iter().map(|e| e.resource.clone()).collect();
        let stale: BTreeSet<Box<[u8]>> = self
            .dc(d)
            .expect("member")
            .mastered
            .iter()
            .filter(|(r, m)| m.locks.contains_key(&from) && !listed.contains(&r[..]))
            .map(|(r, _)| r.clone())
            .collect::<BTreeSet<_>>();
        for r in stale {
            let mut out = Vec::new();
            let m = self.dc_mut(d).mastered.get_mut(&r).expect("listed");
            m.resync(from, None, None, 0, 0, &mut out);
            self.master_out(d, &r, out);
        }
        for e in entries {
            let mut out = Vec::new();
            let Some(m) = self.mastered(d, &e.resource, from, e.lvb) else {
                continue;
            };
            m.resync(
                from,
                e.granted,
                e.want.map(|w| (w, e.noqueue)),
                e.pid,
                e.seq,
                &mut out,
            );
            self.master_out(d, &e.resource, out);
        }
    }

    fn on_grant(&mut self, d: &[u8], r: &[u8], mode: Mode, seq: u64, lvb: &LvbCopy) {
        let epoch = self.dc(d).expect("member").m.epoch;
        let Some(res) = self
            .domains
            .get_mut(d)
            .and_then(|dom| dom.resources.get_mut(r))
        else {
            // Nothing here wants it any more: give it back.
            let master = self.master_in(d, r);
            self.send(
                master,
                PeerMsg::Unlock {
                    domain: d.to_vec(),
                    epoch,
                    resource: r.to_vec(),
                    lvb: None,
                },
            );
            return;
        };
        let node = res.node.get_or_insert_with(Default::default);
        match node.pending {
            Some((w, _)) if w == mode && node.seq == seq => node.pending = None,
            // Not the answer to the request pending (a repeat after a
            // reconnection, answering an older request).
            _ => return,
        }
        node.mode = Some(mode);
        if mode.can_read_lvb() && !node.dirty {
            res.lvb = LvbState::from_copy(lvb);
        }
        self.grant_pending(d, r);
        self.maybe_free(d, r);
    }

    fn on_failed(&mut self, d: &[u8], r: &[u8], want: Mode, seq: u64, failure: NodeFailure) {
        let Some(node) = self
            .domains
            .get_mut(d)
            .and_then(|dom| dom.resources.get_mut(r))
            .and_then(|res| res.node.as_deref_mut())
        else {
            return;
        };
        if node.pending.is_none_or(|(w, _)| w != want) || node.seq != seq {
            return;
        }
        node.pending = None;
        let need = self.node_need(d, r);
        match failure {
            NodeFailure::Busy(_) => {
                if let Some((id, _, _, true)) = need {
                    self.counters.busy += 1;
                    let blockers = blockers_of(&failure);
                    self.end_request(id, Failure::Busy { blockers });
                    return;
                }
            }
            NodeFailure::Deadlock(_) => {
                if self.local_held(d, r).is_empty() {
                    // Only the cache was in the way: give it back and ask
                    // again as a new request.
                    self.send_down(d, r, None);
                } else if let Some((id, _, _, _)) = need {
                    self.counters.deadlocks += 1;
                    let blockers = blockers_of(&failure);
                    self.end_request(id, Failure::Deadlock { blockers });
                    return;
                }
            }
        }
        self.grant_pending(d, r);
        self.maybe_free(d, r);
    }

    fn on_bast(&mut self, d: &[u8], r: &[u8], mode: Mode, probe: bool) {
        let epoch = self.dc(d).expect("member").m.epoch;
        let master = self.master_in(d, r);
        let Some(node) = self
            .domains
            .get_mut(d)
            .and_then(|dom| dom.resources.get_mut(r))
            .and_then(|res| res.node.as_deref_mut())
        else {
            // This node holds nothing here: the master's record is stale.
            self.send(
                master,
                PeerMsg::Unlock {
                    domain: d.to_vec(),
                    epoch,
                    resource: r.to_vec(),
                    lvb: None,
                },
            );
            return;
        };
        let Some(held) = node.mode else { return };
        if held.compatible(mode) {
            // Already down (the message crossed ours).
            return;
        }
        if probe {
            // A trylock elsewhere: come down at once if nothing here uses
            // the mode, else say busy.
            let pending = node.pending.is_some();
            let fallback = node.pid;
            let local = self.local_held(d, r);
            match down_to(mode.bit(), &local, held) {
                Ok(t) if !pending => self.send_down(d, r, t),
                _ => {
                    let pid = self.local_blocker_pid(d, r, mode).unwrap_or(fallback);
                    self.send(
                        master,
                        PeerMsg::ProbeBusy {
                            domain: d.to_vec(),
                            epoch,
                            resource: r.to_vec(),
                            pid,
                        },
                    )
                }
            }
        } else {
            node.blocked |= mode.bit();
            self.grant_pending(d, r);
        }
        self.maybe_free(d, r);
    }
}
