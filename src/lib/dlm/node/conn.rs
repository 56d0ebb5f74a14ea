//! Connections and deaths: a peer connecting or disconnecting, what is
//! sent again on a new connection, a node declared dead (recovery starts
//! in every domain it was in), and a dead node's new incarnation believed
//! once recovery no longer needs the old one.
//!
//! May depend on: the helpers in `node/mod.rs`, the membership handlers,
//! the cluster types.

use std::collections::BTreeSet;

use crate::dlm::cluster::{OpPhase, PeerMsg, ReportEntry, master_of};
use crate::dlm::{Dlm, Millis, NodeId};

impl Dlm {
    pub(in crate::dlm) fn peer_down(&mut self, node: NodeId) {
        if let Some(cl) = self.cluster.as_deref_mut() {
            cl.up.remove(&node);
        }
    }

    /// A fresh connection to `p`: send again whatever it may be waiting for.
    pub(in crate::dlm) fn peer_up(&mut self, _now: Millis, p: NodeId) {
        if self.cluster.is_none() || p == self.node || !self.cl().nodes.contains(&p) {
            return;
        }
        self.cl_mut().up.insert(p);
        if self.cl().dead.contains(&p) {
            // A new incarnation of a dead node: believed once no domain here
            // still counts the old one.
            self.maybe_revive(p);
            return;
        }
        self.resend_to(p);
    }

    /// A dead node that has reconnected is a fresh node once no domain
    /// here counts it as a member any more (recovery is over here).
    fn maybe_revive(&mut self, p: NodeId) {
        let cl = self.cl();
        if !cl.dead.contains(&p) || !cl.up.contains(&p) {
            return;
        }
        let me = self.node;
        // Only where this node takes part: a view kept after leaving is stale.
        let counted = cl.domains.values().any(|dc| {
            (dc.m.members.contains(&me) && dc.m.members.contains(&p))
                || dc
                    .m
                    .frozen
                    .as_ref()
                    .is_some_and(|f| f.reporters().contains(&p))
        });
        if counted {
            return;
        }
        let cl = self.cl_mut();
        cl.dead.remove(&p);
        cl.revived.insert(p);
        self.resend_to(p);
    }

    /// Revives every reconnected dead node that recovery no longer needs.
    pub(super) fn revive_all(&mut self) {
        let Some(cl) = self.cluster.as_deref() else {
            return;
        };
        let back: Vec<NodeId> = cl.dead.intersection(&cl.up).copied().collect();
        for p in back {
            self.maybe_revive(p);
        }
    }

    /// Believes `x` dead: nothing it sent before is believed, approvals it
    /// holds are released, and reports it owed are no longer awaited.
    pub(super) fn mark_dead(&mut self, x: NodeId) {
        // The connection is the transport's business: lockd closes it when
        // it declares a node dead; a connection up now may be a new
        // incarnation's, which is believed once recovery is over here.
        let cl = self.cl_mut();
        cl.dead.insert(x);
        for dc in cl.domains.values_mut() {
            if dc.m.approved.is_some_and(|(n, _)| n == x) {
                dc.m.approved = None;
            }
            dc.deferred.retain(|(from, _)| *from != x);
            for reports in dc.early.values_mut() {
                reports.remove(&x);
            }
            dc.resync.remove(&x);
        }
        self.live.remove(&x);
    }

    /// Node `x` is declared dead (its heartbeat stopped, or its lockd restarted):
    /// every domain it was in recovers without it.
    pub(in crate::dlm) fn node_dead(&mut self, x: NodeId) {
        if self.cluster.is_none() || x == self.node || !self.cl().nodes.contains(&x) {
            return;
        }
        self.cl_mut().revived.remove(&x);
        if !self.cl().dead.contains(&x) {
            self.mark_dead(x);
        }
        let names: Vec<Box<[u8]>> = self.cl().domains.keys().cloned().collect();
        for d in names {
            self.fix_op_after_death(&d);
            self.poke(&d);
            self.drive(&d);
        }
        // Connected already (a new incarnation) and in no domain here: it
        // is believed at once.
        self.maybe_revive(x);
    }

    /// This node's change of `d` after a death: a round still asking a dead
    /// node starts over; a change waiting for a dead node's report goes on
    /// without it, at a new epoch.
    fn fix_op_after_death(&mut self, d: &[u8]) {
        let dead = self.cl().dead.clone();
        let Some(op) = self.dc(d).and_then(|dc| dc.m.op.as_ref()) else {
            return;
        };
        match &op.phase {
            OpPhase::Asking { asked, .. } if asked.iter().any(|n| dead.contains(n)) => {
                self.abandon_asking(d);
            }
            OpPhase::Changing { .. } => self.supersede(d),
            _ => {}
        }
    }

    fn supersede(&mut self, d: &[u8]) {
        let dead = self.cl().dead.clone();
        let dc = self.dc_mut(d);
        let Some(op) = dc.m.op.as_mut() else { return };
        let OpPhase::Changing {
            epoch,
            old,
            new,
            ready,
            approvers,
            lost,
        } = &mut op.phase
        else {
            return;
        };
        let newly: Vec<NodeId> = old
            .union(new)
            .filter(|n| dead.contains(n) && !lost.contains(n))
            .copied()
            .collect();
        if newly.is_empty() {
            return;
        }
        lost.extend(newly);
        new.retain(|n| !dead.contains(n));
        approvers.retain(|n| !dead.contains(n));
        ready.clear();
        *epoch += 1;
        let (e, o, n, l) = (*epoch, old.clone(), new.clone(), lost.clone());
        self.send_freeze(d, e, &o, &n, &l);
    }

    /// Sends `p` whatever it may be waiting for after a new connection.
    fn resend_to(&mut self, p: NodeId) {
        let me = self.node;
        let names: Vec<Box<[u8]>> = self.cl().domains.keys().cloned().collect();
        for d in names {
            let mut msgs = Vec::new();
            let dc = self.dc_mut(&d);
            let dv = d.to_vec();
            let mut retry = false;
            if let Some(op) = dc.m.op.as_ref() {
                match &op.phase {
                    OpPhase::Asking { asked, answers }
                        if asked.contains(&p) && !answers.contains_key(&p) =>
                    {
                        msgs.push(PeerMsg::Ask {
                            domain: dv.clone(),
                            req: op.req,
                        });
                    }
                    OpPhase::Changing {
                        epoch,
                        old,
                        new,
                        lost,
                        ..
                    } if (old.contains(&p) || new.contains(&p)) && !lost.contains(&p) => {
                        msgs.push(PeerMsg::Freeze {
                            domain: dv.clone(),
                            epoch: *epoch,
                            old: old.iter().copied().collect(),
                            new: new.iter().copied().collect(),
                            initiator: me,
                            lost: lost.iter().copied().collect(),
                        });
                    }
                    OpPhase::Retry(_) => retry = true,
                    _ => {}
                }
            }
            // With no change of its own under way, any approval the peer
            // still holds for this node is stale (its Cancel or Done may
            // have been lost): request 0 releases it.
            let active =
                dc.m.op
                    .as_ref()
                    .is_some_and(|op| !matches!(op.phase, OpPhase::Retry(_)));
            if !active {
                msgs.push(PeerMsg::Cancel {
                    domain: dv.clone(),
                    req: 0,
                });
            }
            // Before any Sync: the receiver may still need the report.
            if let Some((epoch, sent)) = &dc.last_reports {
                if let Some(entries) = sent.get(&p) {
                    msgs.push(PeerMsg::Report {
                        domain: dv.clone(),
                        epoch: *epoch,
                        entries: entries.clone(),
                    });
                }
            }
            if let Some((e, init)) = dc.ready_to {
                if init == p && dc.m.epoch == e && dc.m.frozen.is_none() {
                    msgs.push(PeerMsg::Ready {
                        domain: dv.clone(),
                        epoch: e,
                    });
                }
            }
            if !dc.m.running(me) && (dc.m.frozen.is_some() || dc.m.members.contains(&me)) {
                dc.resync.insert(p);
            }
            if dc.m.running(me) && dc.m.members.contains(&p) {
                for m in dc.mastered.values_mut() {
                    m.forget_basts(p);
                }
                let epoch = dc.m.epoch;
                let members = dc.m.members.clone();
                let entries = self.sync_entries(&d, p, &members);
                msgs.push(PeerMsg::Sync {
                    domain: dv.clone(),
                    epoch,
                    entries,
                });
            }
            for msg in msgs {
                self.send(p, msg);
            }
            if retry {
                self.ask_round(&d);
            }
        }
    }

    /// This node's node locks on the resources of `d` that `p` masters.
    pub(super) fn sync_entries(
        &self,
        d: &[u8],
        p: NodeId,
        members: &BTreeSet<NodeId>,
    ) -> Vec<ReportEntry> {
        let Some(dom) = self.domains.get(d) else {
            return Vec::new();
        };
        let mut out: Vec<ReportEntry> = dom
            .resources
            .iter()
            .filter(|(r, _)| master_of(r, members) == Some(p))
            .filter_map(|(r, res)| {
                let n = res.node.as_deref()?;
                (n.mode.is_some() || n.pending.is_some() || n.unacked.is_some()).then(|| {
                    ReportEntry {
                        resource: r.to_vec(),
                        granted: n.mode,
                        want: n.pending.map(|w| w.0),
                        noqueue: n.pending.is_some_and(|w| w.1),
                        seq: n.seq,
                        pid: n.pid,
                        lvb: n.unacked.clone(),
                        master_lvb: None,
                        lost_writer: false,
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| a.resource.cmp(&b.resource));
        out
    }
}
