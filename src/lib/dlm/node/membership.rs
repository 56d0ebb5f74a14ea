//! Membership changes of this node's: when a domain needs one (join,
//! leave, recovery from a dead member), asking every node for approval,
//! approving others' changes, retries with backoff, sending the freeze,
//! and the end of a change once every new member is ready.
//!
//! May depend on: the helpers in `node/mod.rs`, the engine's replies, the
//! cluster types.

use std::collections::{BTreeMap, BTreeSet};

use crate::dlm::cluster::{Op, OpKind, OpPhase, PeerMsg, RETRY_MS};
use crate::dlm::{Dlm, Millis, NodeId, Reply};

impl Dlm {
    /// Whether this node should be a member of `d`: something here uses it.
    fn domain_wanted(&self, d: &[u8]) -> bool {
        let local = self.domains.get(d).is_some_and(|dom| {
            dom.pinned
                || !dom.users.is_empty()
                || dom.resources.values().any(|r| r.queues.is_some())
        });
        local || self.dc(d).is_some_and(|dc| !dc.join_waiters.is_empty())
    }

    /// Starts the membership change `d` needs, or finishes with a domain
    /// this node has left and no longer uses.
    pub(in crate::dlm) fn drive(&mut self, d: &[u8]) {
        if self.cluster.is_none() {
            return;
        }
        let me = self.node;
        let wanted = self.domain_wanted(d);
        let recover = self.needs_recovery(d);
        let dc = self.dc_mut(d);
        if dc.m.op.is_some() {
            return;
        }
        if recover {
            dc.m.op = Some(Box::new(Op {
                req: 0,
                kind: OpKind::Recover,
                phase: OpPhase::Retry(Millis(0)),
            }));
            self.ask_round(d);
            return;
        }
        if dc.m.frozen.is_some() {
            return;
        }
        let member = dc.m.members.contains(&me);
        if wanted && member {
            // A forced leave overtaken by new use of the domain is over.
            let waiters = std::mem::take(&mut dc.leave_waiters);
            for (c, tag) in waiters {
                self.reply(c, tag, Reply::Ok);
            }
            return;
        }
        if wanted != member {
            dc.m.op = Some(Box::new(Op {
                req: 0,
                kind: if member { OpKind::Leave } else { OpKind::Join },
                phase: OpPhase::Retry(Millis(0)),
            }));
            self.ask_round(d);
        } else if !wanted {
            let waiters = std::mem::take(&mut dc.leave_waiters);
            for (c, tag) in waiters {
                self.reply(c, tag, Reply::Ok);
            }
            if let Some(dom) = self.domains.get(d) {
                if dom.resources.values().all(|r| r.queues.is_none()) {
                    self.domains.remove(d);
                }
            }
        }
    }

    /// Whether `d` needs a change to recover from a dead node: this node is
    /// a member with a dead node among the members, or is frozen in a
    /// change a dead node started or owes a report to.
    fn needs_recovery(&self, d: &[u8]) -> bool {
        let Some(cl) = self.cluster.as_deref() else {
            return false;
        };
        if cl.dead.is_empty() {
            return false;
        }
        let Some(dc) = self.dc(d) else { return false };
        let member_dead =
            dc.m.members.contains(&self.node) && dc.m.members.iter().any(|n| cl.dead.contains(n));
        // A change whose initiator died may never have reached every node.
        let stuck = dc.m.frozen.as_ref().is_some_and(|f| {
            cl.dead.contains(&f.initiator)
                || f.reporters()
                    .iter()
                    .any(|n| cl.dead.contains(n) && !f.reports.contains_key(n))
        });
        member_dead || stuck
    }

    fn settled(&self) -> bool {
        let cl = self.cl();
        let all_up = cl
            .nodes
            .iter()
            .all(|n| *n == self.node || cl.up.contains(n));
        all_up
            || cl
                .started
                .is_some_and(|s| self.now >= s.after(cl.settle_ms))
    }

    fn schedule_retry(&mut self, d: &[u8], at: Millis) {
        let cl = self.cl_mut();
        cl.retries.insert((at, d.into()));
        let dc = cl.domains.get_mut(d).expect("known domain");
        if let Some(op) = dc.m.op.as_mut() {
            op.phase = OpPhase::Retry(at);
        }
    }

    fn backoff(&self, d: &[u8]) -> u64 {
        let cl = self.cl();
        let rank = cl.nodes.iter().position(|n| *n == self.node).unwrap_or(0) as u64;
        let attempts = self.dc(d).map_or(0, |dc| dc.attempts).min(5);
        RETRY_MS * (rank + 1) * (1 << attempts)
    }

    /// Asks every node that may be a member for its approval of this
    /// node's change of `d`.
    pub(super) fn ask_round(&mut self, d: &[u8]) {
        let me = self.node;
        let now = self.now;
        if !self.op_still_wanted(d) {
            // What the change was for has changed meanwhile.
            self.dc_mut(d).m.op = None;
            self.drive(d);
            return;
        }
        let cl = self.cl();
        let required: BTreeSet<NodeId> = cl
            .nodes
            .iter()
            .copied()
            .filter(|n| {
                *n == me || (!cl.dead.contains(n) && (cl.up.contains(n) || self.live.contains(n)))
            })
            .collect();
        let missing = required.iter().any(|n| *n != me && !cl.up.contains(n));
        if !self.settled() || missing {
            let settle_end = cl.started.unwrap_or(now).after(cl.settle_ms);
            let at = if self.settled() {
                now.after(self.backoff(d))
            } else {
                settle_end.max(now.after(1))
            };
            self.schedule_retry(d, at);
            return;
        }
        let cl = self.cl_mut();
        let req = cl.next_req;
        cl.next_req += 1;
        let dc = self.dc_mut(d);
        let op = dc.m.op.as_mut().expect("an op to ask for");
        op.req = req;
        op.phase = OpPhase::Asking {
            asked: required.clone(),
            answers: BTreeMap::new(),
        };
        for n in required {
            self.send(
                n,
                PeerMsg::Ask {
                    domain: d.to_vec(),
                    req,
                },
            );
        }
    }

    /// Whether this node's pending change still goes where the node wants:
    /// a leave while something here uses the domain again must not go on.
    fn op_still_wanted(&self, d: &[u8]) -> bool {
        let wanted = self.domain_wanted(d);
        self.dc(d)
            .and_then(|dc| dc.m.op.as_ref())
            .is_some_and(|op| match op.kind {
                OpKind::Join => wanted,
                OpKind::Leave => !wanted,
                OpKind::Recover => self.needs_recovery(d),
            })
    }

    pub(in crate::dlm) fn cluster_tick(&mut self, now: Millis) {
        while let Some((t, d)) = self.cl().retries.first().cloned() {
            if t > now {
                break;
            }
            self.cl_mut().retries.remove(&(t, d.clone()));
            let due = self
                .dc(&d)
                .and_then(|dc| dc.m.op.as_ref())
                .is_some_and(|op| matches!(op.phase, OpPhase::Retry(at) if at == t));
            if due {
                self.ask_round(&d);
            }
        }
    }

    /// Retries this node's refused change now (an approval was released).
    pub(super) fn poke(&mut self, d: &[u8]) {
        let retry = self
            .dc(d)
            .and_then(|dc| dc.m.op.as_ref())
            .is_some_and(|op| matches!(op.phase, OpPhase::Retry(_)));
        if retry {
            self.ask_round(d);
        }
    }

    pub(super) fn on_ask(&mut self, from: NodeId, d: &[u8], req: u64) {
        let me = self.node;
        let dc = self.dc_mut(d);
        // This node's own change, still asking, yields to a lower-numbered
        // node: without that, nodes that ask at once all approve themselves
        // first and refuse each other forever.
        let yield_own = dc.m.approved.is_some_and(|(n, _)| n == me)
            && from < me
            && dc
                .m
                .op
                .as_ref()
                .is_some_and(|op| matches!(op.phase, OpPhase::Asking { .. }));
        if yield_own {
            self.abandon_asking(d);
        }
        let dc = self.dc_mut(d);
        let ok = dc.m.approved.is_none_or(|(n, _)| n == from);
        if ok {
            dc.m.approved = Some((from, req));
        }
        let msg = self.answer(d, req, ok);
        self.send(from, msg);
    }

    /// The answer to an Ask for `d`, with what this node knows of it.
    pub(super) fn answer(&mut self, d: &[u8], req: u64, ok: bool) -> PeerMsg {
        let dc = self.dc_mut(d);
        PeerMsg::Answer {
            domain: d.to_vec(),
            req,
            ok,
            epoch: dc.m.epoch,
            members: dc.m.members.iter().copied().collect(),
            frozen: dc.m.frozen.as_ref().map_or(0, |f| f.epoch),
        }
    }

    /// Gives up this node's change while it is asking: the approvals it got
    /// are released and it asks again later.
    pub(super) fn abandon_asking(&mut self, d: &[u8]) {
        let me = self.node;
        let now = self.now;
        let dc = self.dc_mut(d);
        let Some(op) = dc.m.op.as_mut() else { return };
        let OpPhase::Asking { answers, .. } = &op.phase else {
            return;
        };
        let req = op.req;
        let oks: Vec<NodeId> = answers
            .iter()
            .filter(|(n, a)| a.0 && **n != me)
            .map(|(n, _)| *n)
            .collect();
        if dc.m.approved == Some((me, req)) {
            dc.m.approved = None;
        }
        dc.attempts += 1;
        for n in oks {
            self.send(
                n,
                PeerMsg::Cancel {
                    domain: d.to_vec(),
                    req,
                },
            );
        }
        let at = now.after(self.backoff(d));
        self.schedule_retry(d, at);
    }

    pub(super) fn on_answer(
        &mut self,
        now: Millis,
        from: NodeId,
        d: &[u8],
        req: u64,
        ok: bool,
        (epoch, members, frozen): (u64, Vec<NodeId>, u64),
    ) {
        let me = self.node;
        let dead = self.cl().dead.clone();
        let still_wanted = self.op_still_wanted(d);
        let current = self
            .dc(d)
            .and_then(|dc| dc.m.op.as_ref())
            .is_some_and(|op| {
                op.req == req
                    && matches!(&op.phase, OpPhase::Asking { asked, .. } if asked.contains(&from))
            });
        if !current {
            // An answer to a round this node gave up: an approval given in
            // it must not stay held.
            if ok {
                self.send(
                    from,
                    PeerMsg::Cancel {
                        domain: d.to_vec(),
                        req,
                    },
                );
            }
            return;
        }
        let dc = self.dc_mut(d);
        let op = dc.m.op.as_mut().expect("current");
        let OpPhase::Asking { asked, answers } = &mut op.phase else {
            return;
        };
        answers.insert(from, (ok, epoch, members, frozen));
        if answers.len() < asked.len() {
            return;
        }
        let all_ok = answers.values().all(|a| a.0);
        let (last, old) = answers
            .values()
            .max_by_key(|a| a.1)
            .map(|a| (a.1, a.2.iter().copied().collect::<BTreeSet<NodeId>>()))
            .expect("answers");
        // Above every epoch completed or frozen in anywhere: a change that
        // died with its initiator is overtaken, not waited for.
        let top = answers
            .values()
            .map(|a| a.1.max(a.3))
            .max()
            .unwrap_or(last)
            .max(last);
        // Lost: members this node knows are dead, and members whose answer
        // shows they never saw the epoch they are members of (a new
        // incarnation: the old one died, maybe before this node learned it).
        let forgot: BTreeSet<NodeId> = old
            .iter()
            .filter(|n| {
                answers
                    .get(n)
                    .is_some_and(|a| a.1 < last && a.3 < last && !a.2.contains(n))
            })
            .copied()
            .collect();
        let lost: BTreeSet<NodeId> = old.intersection(&dead).chain(&forgot).copied().collect();
        let asked = asked.clone();
        if !still_wanted {
            // Release the approvals; `drive` starts what is wanted now.
            for n in asked
                .iter()
                .filter(|n| answers[n].0)
                .copied()
                .collect::<Vec<_>>()
            {
                self.send(
                    n,
                    PeerMsg::Cancel {
                        domain: d.to_vec(),
                        req,
                    },
                );
            }
            self.dc_mut(d).m.op = None;
            self.drive(d);
            return;
        }
        if all_ok && old.iter().all(|n| asked.contains(n) || lost.contains(n)) {
            let mut new: BTreeSet<NodeId> = old.difference(&lost).copied().collect();
            match op.kind {
                OpKind::Leave => {
                    new.remove(&me);
                }
                OpKind::Join => {
                    new.insert(me);
                }
                OpKind::Recover => {}
            }
            let epoch = top + 1;
            op.phase = OpPhase::Changing {
                epoch,
                old: old.clone(),
                new: new.clone(),
                ready: BTreeSet::new(),
                approvers: asked,
                lost: lost.clone(),
            };
            dc.attempts = 0;
            // A node that forgot answered: it is a new incarnation, alive,
            // and may take part in other changes here; only its old one is
            // lost (the freeze must not make this node drop what it says).
            let cl = self.cl_mut();
            for n in &forgot {
                if !cl.dead.contains(n) {
                    cl.revived.insert(*n);
                }
            }
            self.send_freeze(d, epoch, &old, &new, &lost);
        } else {
            let oks: Vec<NodeId> = answers
                .iter()
                .filter(|(_, a)| a.0)
                .map(|(n, _)| *n)
                .collect();
            dc.attempts += 1;
            for n in oks {
                self.send(
                    n,
                    PeerMsg::Cancel {
                        domain: d.to_vec(),
                        req,
                    },
                );
            }
            let at = now.after(self.backoff(d));
            self.schedule_retry(d, at);
        }
    }

    /// Sends the freeze of this node's change to every node that reports in
    /// it, and to itself (a node frozen in a change that died is released
    /// by any later freeze, even one it has no part in).
    pub(super) fn send_freeze(
        &mut self,
        d: &[u8],
        epoch: u64,
        old: &BTreeSet<NodeId>,
        new: &BTreeSet<NodeId>,
        lost: &BTreeSet<NodeId>,
    ) {
        let me = self.node;
        let mut to: BTreeSet<NodeId> = old
            .union(new)
            .filter(|n| !lost.contains(n))
            .copied()
            .collect();
        to.insert(me);
        for n in to {
            self.send(
                n,
                PeerMsg::Freeze {
                    domain: d.to_vec(),
                    epoch,
                    old: old.iter().copied().collect(),
                    new: new.iter().copied().collect(),
                    initiator: me,
                    lost: lost.iter().copied().collect(),
                },
            );
        }
    }

    /// Cancel or Done: the approval given to `from` is released.
    pub(super) fn on_release(&mut self, from: NodeId, d: &[u8], req: u64, done: bool) {
        let dc = self.dc_mut(d);
        let matches =
            dc.m.approved
                .is_some_and(|(n, r)| n == from && (r == req || req == 0));
        if matches {
            dc.m.approved = None;
            if done {
                self.poke(d);
            }
        }
    }
    pub(super) fn on_ready(&mut self, _now: Millis, from: NodeId, d: &[u8], epoch: u64) {
        let Some(dc) = self.dc_if(d) else {
            return;
        };
        if let Some(op) = dc.m.op.as_mut() {
            if let OpPhase::Changing {
                epoch: e, ready, ..
            } = &mut op.phase
            {
                if *e == epoch {
                    ready.insert(from);
                    self.check_change_done(d);
                }
            }
        }
    }

    /// This node's change is over once every new member has rebuilt (and
    /// this node has done its own part): the approvals are released.
    pub(super) fn check_change_done(&mut self, d: &[u8]) {
        let Some(dc) = self.dc_if(d) else {
            return;
        };
        let Some(op) = dc.m.op.as_ref() else { return };
        let OpPhase::Changing {
            epoch,
            new,
            ready,
            approvers,
            ..
        } = &op.phase
        else {
            return;
        };
        if dc.m.epoch < *epoch || !new.is_subset(ready) {
            return;
        }
        let (req, epoch, approvers) = (op.req, *epoch, approvers.clone());
        dc.m.op = None;
        self.change_done_everywhere(d, epoch);
        for n in approvers {
            self.send(
                n,
                PeerMsg::Done {
                    domain: d.to_vec(),
                    epoch,
                    req,
                },
            );
        }
        self.drive(d);
    }

    /// The change to `epoch` of `d` completed on every node: the writers
    /// kept for it are of no use any more.
    pub(super) fn change_done_everywhere(&mut self, d: &[u8], epoch: u64) {
        let Some(dc) = self.dc_if(d) else {
            return;
        };
        if dc.m.frozen.is_none() && epoch == dc.m.epoch && epoch > dc.done_epoch {
            dc.done_epoch = epoch;
            dc.writers.clear();
        }
    }
}
