//! Freeze, reports and rebuild: on a freeze, what this node reports to
//! the new masters (node locks, value blocks, writers a dead node may
//! have been); once every report is in, the masters this node rebuilds,
//! and the node running again at the new epoch.
//!
//! May depend on: the helpers in `node/mod.rs`, the queues and grants, the
//! peer, membership and connection handlers, the cluster types.

use std::collections::{BTreeMap, BTreeSet};

use crate::dlm::cluster::{
    Frozen, LvbCopy, MasterRes, NodeLock, OpPhase, PeerMsg, ReportEntry, master_of,
};
use crate::dlm::{Dlm, Millis, Mode, NameMap, NodeId, Reply};

/// The newer of two copies of a value block (by sequence; of two copies of
/// one write, an invalid one wins: the value may have changed since).
fn newest(a: LvbCopy, b: LvbCopy) -> LvbCopy {
    match a.seq.cmp(&b.seq) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => LvbCopy {
            valid: a.valid && b.valid,
            ..a
        },
    }
}

/// Whether a resource's master may have been a lost (dead) node: its master
/// among the old members, or, when this change overtakes one that died
/// half-way, among the members that change was making (the new ones and
/// the lost), which may have started mastering before dying.
fn master_was_lost(
    r: &[u8],
    old: &BTreeSet<NodeId>,
    new: &BTreeSet<NodeId>,
    lost: &BTreeSet<NodeId>,
) -> bool {
    if lost.is_empty() {
        return false;
    }
    let overtaken: BTreeSet<NodeId> = new.union(lost).copied().collect();
    [master_of(r, old), master_of(r, &overtaken)]
        .into_iter()
        .flatten()
        .any(|m| lost.contains(&m))
}

impl Dlm {
    /// What this node tells the masters of the new membership: its node
    /// locks and LVB copies, and the LVBs it kept as a master. A leaving
    /// node gives everything up. With `lost` (dead) members: a value block
    /// a dead node may have written is marked invalid, and copies this node
    /// has of values a dead master kept are reported; `carry` holds value
    /// blocks of a change that died, to be passed on.
    fn build_reports(
        &mut self,
        d: &[u8],
        old: &BTreeSet<NodeId>,
        new: &BTreeSet<NodeId>,
        lost: &BTreeSet<NodeId>,
        carry: BTreeMap<Vec<u8>, LvbCopy>,
        poison: BTreeSet<Vec<u8>>,
    ) -> BTreeMap<NodeId, Vec<ReportEntry>> {
        let me = self.node;
        let leaving = !new.contains(&me);
        let prev_master_lost = |r: &[u8]| master_was_lost(r, old, new, lost);
        let mut out: BTreeMap<NodeId, BTreeMap<Vec<u8>, ReportEntry>> =
            new.iter().map(|n| (*n, BTreeMap::new())).collect();
        // The entry for `r` in the report to its new master.
        fn entry_for<'a>(
            out: &'a mut BTreeMap<NodeId, BTreeMap<Vec<u8>, ReportEntry>>,
            new: &BTreeSet<NodeId>,
            r: &[u8],
        ) -> &'a mut ReportEntry {
            let target = master_of(r, new).expect("members");
            out.get_mut(&target)
                .expect("a member")
                .entry(r.to_vec())
                .or_insert_with(|| ReportEntry {
                    resource: r.to_vec(),
                    granted: None,
                    want: None,
                    noqueue: false,
                    seq: 0,
                    pid: 0,
                    lvb: None,
                    master_lvb: None,
                    lost_writer: false,
                })
        }
        if let Some(dom) = self.domains.get_mut(d) {
            for (r, res) in dom.resources.iter_mut() {
                let copy = res.lvb.copy();
                let keep_copy = copy.seq > 0 && prev_master_lost(r);
                let Some(node) = res.node.as_deref_mut() else {
                    if keep_copy && !new.is_empty() {
                        entry_for(&mut out, new, r).lvb = Some(copy);
                    }
                    continue;
                };
                let lvb = if node.dirty {
                    Some(copy)
                } else {
                    node.unacked.take().or_else(|| keep_copy.then_some(copy))
                };
                node.blocked = 0;
                if leaving {
                    *node = NodeLock::default();
                }
                let (granted, want) = (node.mode, node.pending);
                if (granted.is_none() && want.is_none() && lvb.is_none()) || new.is_empty() {
                    continue;
                }
                let e = entry_for(&mut out, new, r);
                e.granted = granted;
                e.want = want.map(|w| w.0);
                e.noqueue = want.is_some_and(|w| w.1);
                e.seq = node.seq;
                e.pid = node.pid;
                e.lvb = lvb;
            }
        }
        let hash = self.hash;
        let dc = self.dc_mut(d);
        let mastered = std::mem::replace(&mut dc.mastered, NameMap::with_hasher(hash));
        // Who could write what this node mastered: needed if one of them
        // dies before the change completes.
        for (r, m) in &mastered {
            let w: Vec<NodeId> = m
                .locks
                .iter()
                .filter(|(_, l)| l.granted.is_some_and(|g| g.can_write_lvb()))
                .map(|(n, _)| *n)
                .collect();
            if !w.is_empty() {
                dc.writers.entry(r.clone()).or_default().extend(w);
            }
        }
        let mut suspect: BTreeSet<Vec<u8>> = poison;
        if !lost.is_empty() {
            suspect.extend(
                dc.writers
                    .iter()
                    .filter(|(_, w)| w.iter().any(|n| lost.contains(n)))
                    .map(|(r, _)| r.to_vec()),
            );
        }
        let keep =
            |out: &mut BTreeMap<NodeId, BTreeMap<Vec<u8>, ReportEntry>>, r: &[u8], l: LvbCopy| {
                let e = entry_for(out, new, r);
                e.master_lvb = Some(match e.master_lvb.take() {
                    Some(have) => newest(have, l),
                    None => l,
                });
            };
        for (r, m) in mastered {
            if m.lvb == LvbCopy::ZERO || new.is_empty() {
                continue;
            }
            keep(&mut out, &r, m.lvb);
        }
        if !new.is_empty() {
            for (r, l) in carry {
                keep(&mut out, &r, l);
            }
            // A dead node that could write the value block may have.
            for r in suspect {
                entry_for(&mut out, new, &r).lost_writer = true;
            }
        }
        out.into_iter()
            .map(|(n, m)| (n, m.into_values().collect()))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_freeze(
        &mut self,
        now: Millis,
        d: &[u8],
        epoch: u64,
        old: BTreeSet<NodeId>,
        new: BTreeSet<NodeId>,
        initiator: NodeId,
        lost: BTreeSet<NodeId>,
    ) {
        let me = self.node;
        let dc = self.dc_mut(d);
        if epoch <= dc.m.epoch || dc.m.frozen.as_ref().is_some_and(|f| f.epoch >= epoch) {
            return;
        }
        // A change this node was frozen in and that never completed here
        // is overtaken: the value blocks it was given or gave for it are
        // passed on with this one.
        // Writers recorded for a change that completed everywhere are of no
        // use now.
        let superseding = dc.m.frozen.is_some()
            || dc.m.epoch > dc.done_epoch
            || dc.last_reports.as_ref().is_some_and(|(e, _)| {
                *e > dc.m.epoch || (initiator == me && *e == dc.m.epoch && !new.contains(&me))
            });
        if !superseding {
            dc.writers.clear();
        }
        let mut carry: BTreeMap<Vec<u8>, LvbCopy> = BTreeMap::new();
        let mut poison: BTreeSet<Vec<u8>> = BTreeSet::new();
        if let Some(f) = dc.m.frozen.as_deref() {
            for (n, entries) in &f.reports {
                for e in entries {
                    if e.lost_writer {
                        poison.insert(e.resource.clone());
                    }
                    if e.granted.is_some_and(|g| g.can_write_lvb()) {
                        dc.writers
                            .entry(e.resource.clone().into())
                            .or_default()
                            .insert(*n);
                    }
                }
            }
        }
        let mut add = |e: &ReportEntry| {
            for l in [&e.lvb, &e.master_lvb].into_iter().flatten() {
                let l = l.clone();
                let v = match carry.remove(&e.resource) {
                    Some(have) => newest(have, l),
                    None => l,
                };
                carry.insert(e.resource.clone(), v);
            }
        };
        if let Some(f) = dc.m.frozen.take() {
            f.reports.values().flatten().for_each(&mut add);
        }
        if let Some((e, sent)) = &dc.last_reports {
            // Reports of a change that never completed here, or of this
            // node's own leave that a dead node overtook.
            let own_leave = initiator == me && *e == dc.m.epoch && !new.contains(&me);
            if *e > dc.m.epoch || own_leave {
                sent.values().flatten().for_each(&mut add);
            }
        }
        let reports = dc.early.remove(&epoch).unwrap_or_default();
        dc.early.retain(|e, _| *e > epoch);
        let newly: Vec<NodeId> = lost
            .iter()
            .filter(|n| **n != me && !self.cl().dead.contains(n) && !self.cl().revived.contains(n))
            .copied()
            .collect();
        for x in newly {
            // The initiator saw it die first; a round of ours still asking
            // it starts over.
            self.mark_dead(x);
            let asking = self.dc(d).and_then(|dc| dc.m.op.as_ref()).is_some_and(
                |op| matches!(&op.phase, OpPhase::Asking { asked, .. } if asked.contains(&x)),
            );
            if asking {
                self.abandon_asking(d);
            }
        }
        let sent = self.build_reports(d, &old, &new, &lost, carry, poison);
        for (n, entries) in &sent {
            self.send(
                *n,
                PeerMsg::Report {
                    domain: d.to_vec(),
                    epoch,
                    entries: entries.clone(),
                },
            );
        }
        let dc = self.dc_mut(d);
        dc.last_reports = Some((epoch, sent));
        dc.m.frozen = Some(Box::new(Frozen {
            epoch,
            old,
            new: new.clone(),
            initiator,
            lost,
            reports,
        }));
        if new.contains(&me) {
            self.check_rebuild(now, d);
        } else {
            // Leaving: nothing to rebuild here.
            dc.m.frozen = None;
            dc.m.epoch = epoch;
            dc.m.members = new;
            dc.deferred.clear();
            let names: Vec<Box<[u8]>> = self
                .domains
                .get(d)
                .map(|dom| dom.resources.keys().cloned().collect())
                .unwrap_or_default();
            for r in names {
                self.maybe_free(d, &r);
            }
            self.check_change_done(d);
            self.revive_all();
        }
    }

    pub(super) fn on_report(
        &mut self,
        now: Millis,
        from: NodeId,
        d: &[u8],
        epoch: u64,
        entries: Vec<ReportEntry>,
    ) {
        let dc = self.dc_mut(d);
        match dc.m.frozen.as_deref_mut() {
            Some(f) if f.epoch == epoch => {
                f.reports.insert(from, entries);
                self.check_rebuild(now, d);
            }
            Some(f) if f.epoch > epoch => {}
            _ if epoch > dc.m.epoch => {
                dc.early.entry(epoch).or_default().insert(from, entries);
            }
            _ => {}
        }
    }

    fn check_rebuild(&mut self, now: Millis, d: &[u8]) {
        let Some(f) = self.dc(d).and_then(|dc| dc.m.frozen.as_deref()) else {
            return;
        };
        if f.reporters().iter().all(|n| f.reports.contains_key(n)) {
            self.rebuild(now, d);
        }
    }

    /// Every report is in: become the master of this node's share of the
    /// domain's resources, and run again.
    fn rebuild(&mut self, now: Millis, d: &[u8]) {
        let me = self.node;
        let dc = self.dc_mut(d);
        let f = dc.m.frozen.take().expect("frozen");
        let mut by_res: BTreeMap<Vec<u8>, Vec<(NodeId, ReportEntry)>> = BTreeMap::new();
        for (n, entries) in f.reports {
            for e in entries {
                by_res.entry(e.resource.clone()).or_default().push((n, e));
            }
        }
        dc.m.epoch = f.epoch;
        dc.m.members = f.new.clone();
        dc.ready_to = Some((f.epoch, f.initiator));
        let mut outs = Vec::new();
        for (r, list) in by_res {
            if master_of(&r, &f.new) != Some(me) {
                continue;
            }
            let mut m = MasterRes::new();
            for (_, e) in &list {
                for l in [&e.master_lvb, &e.lvb].into_iter().flatten() {
                    m.lvb = newest(m.lvb.clone(), l.clone());
                }
            }
            // The master died: what it kept may be newer than every copy
            // here, unless a node still holds a mode no writer can share.
            let master_lost = master_was_lost(&r, &f.old, &f.new, &f.lost);
            let reader = list.iter().any(|(_, e)| {
                e.granted
                    .is_some_and(|g| matches!(g, Mode::PR | Mode::PW | Mode::EX))
            });
            if (master_lost && !reader) || list.iter().any(|(_, e)| e.lost_writer) {
                m.lvb.valid = false;
            }
            for (n, e) in &list {
                m.restore(*n, e.granted, e.pid);
            }
            let mut out = Vec::new();
            for (n, e) in &list {
                if let Some(w) = e.want {
                    m.request(*n, w, e.noqueue, e.pid, e.seq, &mut out);
                }
            }
            m.pump(&mut out);
            if !(m.is_idle() && m.lvb == LvbCopy::ZERO) {
                self.dc_mut(d)
                    .mastered
                    .insert(r.clone().into(), Box::new(m));
            }
            outs.push((r, out));
        }
        self.send(
            f.initiator,
            PeerMsg::Ready {
                domain: d.to_vec(),
                epoch: f.epoch,
            },
        );
        let waiters = std::mem::take(&mut self.dc_mut(d).join_waiters);
        for (c, tag) in waiters {
            self.reply(c, tag, Reply::Ok);
        }
        for (r, out) in outs {
            if self.dc(d).expect("member").mastered.contains_key(&r[..]) {
                self.master_out(d, &r, out);
            } else {
                // Idle: only the sends (none expected) matter.
                debug_assert!(out.is_empty());
            }
        }
        // Peers that reconnected meanwhile learn this node's node locks
        // (messages lost with the old connection are made good).
        let resync = std::mem::take(&mut self.dc_mut(d).resync);
        let members = f.new.clone();
        for p in resync {
            if p != me && members.contains(&p) {
                let entries = self.sync_entries(d, p, &members);
                self.send(
                    p,
                    PeerMsg::Sync {
                        domain: d.to_vec(),
                        epoch: f.epoch,
                        entries,
                    },
                );
            }
        }
        let deferred = std::mem::take(&mut self.dc_mut(d).deferred);
        for (from, msg) in deferred {
            self.on_peer(now, from, msg);
        }
        // Sorted: hash order would make the messages' order differ from run
        // to run (the simulation replays a seed exactly).
        let mut names: Vec<Box<[u8]>> = self
            .domains
            .get(d)
            .map(|dom| dom.resources.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        for r in names {
            if self
                .domains
                .get(d)
                .is_some_and(|dom| dom.resources.contains_key(&r))
            {
                self.grant_pending(d, &r);
                self.maybe_free(d, &r);
            }
        }
        self.check_change_done(d);
        self.drive(d);
        self.revive_all();
    }
}
