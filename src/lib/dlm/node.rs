//! The cluster layer of [`Dlm`]: what a node does with peer messages, how it
//! joins and leaves domains, and how its local queues use its node locks.
//! The message and master types are in `cluster`; see its doc comment for
//! the protocol.

use std::collections::{BTreeMap, BTreeSet};

use super::cluster::{
    ClusterConfig, ClusterState, DomainCluster, DomainView, Frozen, LvbCopy, MasterOut, MasterRes,
    NodeFailure, NodeHolder, NodeLock, NodeView, Op, OpKind, OpPhase, PeerMsg, RETRY_MS,
    ReportEntry, cover_all, covers, down_to, master_of,
};
use super::{
    Action, Dlm, Failure, Holder, LockId, LvbState, Millis, Mode, NameMap, NodeId, Reply,
    compatible_with_holders,
};

/// Whether the node lock lets a local request be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Yes (or not a cluster).
    Yes,
    /// Not yet: the node lock must go up first.
    Ask,
    /// Not now: another node waits for the node lock to come down.
    No,
}

impl LvbState {
    fn copy(&self) -> LvbCopy {
        LvbCopy {
            value: self.value,
            seq: self.seq,
            valid: self.valid,
        }
    }
    pub(super) fn from_copy(c: &LvbCopy) -> LvbState {
        LvbState {
            value: c.value,
            seq: c.seq,
            valid: c.valid,
        }
    }
}

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

fn bits(mask: u8) -> impl Iterator<Item = Mode> {
    Mode::ALL.into_iter().filter(move |m| mask & m.bit() != 0)
}

impl Dlm {
    /// A lock manager for node `node` of a cluster.
    pub fn new_cluster(node: NodeId, config: ClusterConfig) -> Self {
        let mut dlm = Dlm::new(node);
        let mut nodes: BTreeSet<NodeId> = config.nodes.into_iter().collect();
        nodes.insert(node);
        dlm.cluster = Some(Box::new(ClusterState {
            nodes,
            up: BTreeSet::new(),
            next_req: 1,
            domains: BTreeMap::new(),
            retries: BTreeSet::new(),
            settle_ms: config.settle_ms,
            started: None,
            next_seq: 0,
            dead: BTreeSet::new(),
            revived: BTreeSet::new(),
        }));
        dlm
    }

    /// Whether this lock manager is one node of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    fn cl(&self) -> &ClusterState {
        self.cluster.as_deref().expect("cluster mode")
    }

    fn cl_mut(&mut self) -> &mut ClusterState {
        self.cluster.as_deref_mut().expect("cluster mode")
    }

    fn dc(&self, d: &[u8]) -> Option<&DomainCluster> {
        self.cluster.as_deref()?.domains.get(d).map(|b| &**b)
    }

    pub(super) fn dc_mut(&mut self, d: &[u8]) -> &mut DomainCluster {
        let hash = self.hash;
        self.cl_mut()
            .domains
            .entry(d.into())
            .or_insert_with(|| Box::new(DomainCluster::new(hash)))
    }

    /// `d`'s cluster state, if this node has any (not created).
    fn dc_if(&mut self, d: &[u8]) -> Option<&mut DomainCluster> {
        self.cluster
            .as_deref_mut()?
            .domains
            .get_mut(d)
            .map(|b| &mut **b)
    }

    /// A member of `d` that is not changing membership.
    pub(super) fn domain_running(&self, d: &[u8]) -> bool {
        self.dc(d).is_some_and(|dc| dc.m.running(self.node))
    }

    /// A number for a node-lock request, never used before by this node (a
    /// resource's record may be freed and made again: its numbers must not
    /// start over, or an old answer could match a new request).
    fn next_seq(&mut self) -> u64 {
        let cl = self.cl_mut();
        cl.next_seq += 1;
        cl.next_seq
    }

    /// Sends a message (to itself through the loopback queue).
    fn send(&mut self, to: NodeId, msg: PeerMsg) {
        if to == self.node {
            self.loopback.push_back(msg);
            return;
        }
        if !self.cl().up.contains(&to) {
            return;
        }
        if msg.is_request() {
            self.counters.remote_requests += 1;
        }
        self.actions.push_back(Action::Send { to, msg });
    }

    pub(super) fn drain_loopback(&mut self, now: Millis) {
        while let Some(msg) = self.loopback.pop_front() {
            self.on_peer(now, self.node, msg);
        }
    }

    // ---------------------------------------------------------------
    // Local queues and node locks
    // ---------------------------------------------------------------

    /// Whether the node lock on `d/r` lets a local request for `mode` be
    /// granted now. Conversions of local holders may use a node lock that
    /// another node waits for; new requests may not (they queue behind it).
    pub(super) fn node_gate(&self, d: &[u8], r: &[u8], mode: Mode, conversion: bool) -> Gate {
        if self.cluster.is_none() {
            return Gate::Yes;
        }
        let node = self
            .domains
            .get(d)
            .and_then(|dom| dom.resources.get(r))
            .and_then(|res| res.node.as_deref());
        let (held, blocked, pending) =
            node.map_or((None, 0, None), |n| (n.mode, n.blocked, n.pending));
        if !conversion && bits(blocked).any(|b| !mode.compatible(b)) {
            return Gate::No;
        }
        // While the node lock changes mode, a local grant must fit the mode
        // it will have too.
        let fits_pending = pending.is_none_or(|(p, _)| covers(p, mode));
        if held.is_some_and(|h| covers(h, mode)) && fits_pending {
            Gate::Yes
        } else {
            Gate::Ask
        }
    }

    /// The granted modes of the local locks on `d/r`.
    fn local_held(&self, d: &[u8], r: &[u8]) -> Vec<Mode> {
        let Some(q) = self
            .domains
            .get(d)
            .and_then(|dom| dom.resources.get(r))
            .and_then(|res| res.queues.as_deref())
        else {
            return Vec::new();
        };
        q.granted
            .iter()
            .chain(&q.converting)
            .filter_map(|id| self.locks[id].granted)
            .collect()
    }

    /// The process of a local lock on `d/r` whose granted mode conflicts
    /// with `mode` (the first in queue order).
    fn local_blocker_pid(&self, d: &[u8], r: &[u8], mode: Mode) -> Option<i32> {
        let q = self.domains.get(d)?.resources.get(r)?.queues.as_deref()?;
        q.granted
            .iter()
            .chain(&q.converting)
            .map(|id| &self.locks[id])
            .find(|l| l.granted.is_some_and(|g| !g.compatible(mode)))
            .map(|l| l.cred.pid)
    }

    /// The local request the node lock should be raised for: the first
    /// conversion the local holders allow, or, with none queued, the first
    /// new request if they allow it. (lock, mode, conversion, trylock)
    fn node_need(&self, d: &[u8], r: &[u8]) -> Option<(LockId, Mode, bool, bool)> {
        let q = self.domains.get(d)?.resources.get(r)?.queues.as_deref()?;
        for &id in &q.converting {
            let l = &self.locks[&id];
            let want = l.requested.expect("converting");
            if compatible_with_holders(&self.locks, q, id, want) {
                return Some((id, want, true, l.noqueue));
            }
        }
        if !q.converting.is_empty() {
            return None;
        }
        let &id = q.waiting.first()?;
        let l = &self.locks[&id];
        let want = l.requested.expect("waiting");
        compatible_with_holders(&self.locks, q, id, want).then_some((id, want, false, l.noqueue))
    }

    /// The cluster version of `grant_pending`: conversions the local
    /// holders and the node lock allow are granted in place, then the head
    /// new request; then the node lock follows what the queues need.
    pub(super) fn cluster_grant_pending(&mut self, d: &[u8], r: &[u8]) {
        while let Some(q) = self
            .domains
            .get(d)
            .and_then(|dom| dom.resources.get(r))
            .and_then(|res| res.queues.as_deref())
        {
            let mut next = None;
            for &id in &q.converting {
                let want = self.locks[&id].requested.expect("converting");
                if compatible_with_holders(&self.locks, q, id, want)
                    && self.node_gate(d, r, want, true) == Gate::Yes
                {
                    next = Some(id);
                    break;
                }
            }
            if next.is_none() && q.converting.is_empty() {
                if let Some(&head) = q.waiting.first() {
                    let want = self.locks[&head].requested.expect("waiting");
                    if compatible_with_holders(&self.locks, q, head, want)
                        && self.node_gate(d, r, want, false) == Gate::Yes
                    {
                        next = Some(head);
                    }
                }
            }
            match next {
                Some(id) => self.grant(id),
                None => break,
            }
        }
        if self
            .domains
            .get(d)
            .is_some_and(|dom| dom.resources.contains_key(r))
        {
            self.send_basts(d, r);
            self.node_step(d, r);
        }
    }

    /// Makes the node lock follow the local queues: come down when another
    /// node waits and the local holders allow it, go up for the local
    /// request that needs it.
    fn node_step(&mut self, d: &[u8], r: &[u8]) {
        if !self.domain_running(d) {
            return;
        }
        let local = self.local_held(d, r);
        let res = self
            .domains
            .get_mut(d)
            .and_then(|dom| dom.resources.get_mut(r))
            .expect("resource exists");
        let node = res.node.get_or_insert_with(Default::default);
        // Blocked modes the node lock no longer conflicts with are done.
        let held = node.mode;
        node.blocked &= !bits(node.blocked)
            .filter(|&b| held.is_none_or(|h| h.compatible(b)))
            .fold(0, |acc, b| acc | b.bit());
        let blocked = node.blocked;
        let pending = node.pending;
        if blocked != 0 {
            // Tell the local holders in the way, then come down if they allow.
            let holders: Vec<LockId> = res
                .queues
                .as_deref()
                .map(|q| q.granted.iter().chain(&q.converting).copied().collect())
                .unwrap_or_default();
            for b in bits(blocked) {
                for &h in &holders {
                    self.maybe_bast(h, b);
                }
            }
            if pending.is_none() {
                if let Ok(t) = down_to(blocked, &local, held.expect("blocked holds")) {
                    self.send_down(d, r, t);
                }
            }
        }
        let node = self.node_lock(d, r);
        if node.pending.is_some() {
            return;
        }
        let (held, blocked) = (node.mode, node.blocked);
        let Some((id, want, conversion, noqueue)) = self.node_need(d, r) else {
            return;
        };
        if held.is_some_and(|h| covers(h, want)) {
            return;
        }
        if !conversion && bits(blocked).any(|b| !want.compatible(b)) {
            // Another node waits: new requests queue behind it.
            return;
        }
        let local = self.local_held(d, r);
        let target = cover_all(local.iter().copied().chain([want])).expect("not empty");
        let l = self.locks.get_mut(&id).expect("exists");
        l.remote = true;
        let pid = l.cred.pid;
        let seq = self.next_seq();
        let node = self.node_lock_mut(d, r);
        node.pending = Some((target, noqueue));
        node.pid = pid;
        node.seq = seq;
        let msg = PeerMsg::Lock {
            domain: d.to_vec(),
            epoch: self.dc(d).expect("running").m.epoch,
            resource: r.to_vec(),
            want: target,
            noqueue,
            seq,
            pid,
            lvb: None,
        };
        let master = self.master_in(d, r);
        self.send(master, msg);
    }

    fn node_lock(&self, d: &[u8], r: &[u8]) -> &NodeLock {
        self.domains[d].resources[r]
            .node
            .as_deref()
            .expect("node lock exists")
    }

    fn node_lock_mut(&mut self, d: &[u8], r: &[u8]) -> &mut NodeLock {
        self.domains
            .get_mut(d)
            .and_then(|dom| dom.resources.get_mut(r))
            .and_then(|res| res.node.as_deref_mut())
            .expect("node lock exists")
    }

    /// The master of `d/r` in the current membership.
    fn master_in(&self, d: &[u8], r: &[u8]) -> NodeId {
        let dc = self.dc(d).expect("member");
        master_of(r, &dc.m.members).unwrap_or(self.node)
    }

    /// Brings the node lock down to `to` (None: gives it back), writing a
    /// changed value block back to the master when leaving PW/EX.
    fn send_down(&mut self, d: &[u8], r: &[u8], to: Option<Mode>) {
        let epoch = self.dc(d).expect("running").m.epoch;
        let seq = self.next_seq();
        let master = self.master_in(d, r);
        let res = self
            .domains
            .get_mut(d)
            .and_then(|dom| dom.resources.get_mut(r))
            .expect("resource exists");
        let copy = res.lvb.copy();
        let node = res.node.as_deref_mut().expect("node lock exists");
        if node.mode == to {
            return;
        }
        let lvb = if node.dirty && to.is_none_or(|t| !t.can_write_lvb()) {
            node.dirty = false;
            node.unacked = Some(copy.clone());
            Some(copy)
        } else {
            None
        };
        node.mode = to;
        node.blocked &= !bits(node.blocked)
            .filter(|&b| to.is_none_or(|t| t.compatible(b)))
            .fold(0, |acc, b| acc | b.bit());
        let pid = node.pid;
        node.seq = seq;
        let msg = match to {
            None => PeerMsg::Unlock {
                domain: d.to_vec(),
                epoch,
                resource: r.to_vec(),
                lvb,
            },
            Some(want) => PeerMsg::Lock {
                domain: d.to_vec(),
                epoch,
                resource: r.to_vec(),
                want,
                noqueue: false,
                seq,
                pid,
                lvb,
            },
        };
        self.send(master, msg);
    }

    // ---------------------------------------------------------------
    // Messages
    // ---------------------------------------------------------------

    pub(super) fn on_peer(&mut self, now: Millis, from: NodeId, msg: PeerMsg) {
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
    fn master_out(&mut self, d: &[u8], r: &[u8], out: Vec<MasterOut>) {
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

    // ---------------------------------------------------------------
    // Membership
    // ---------------------------------------------------------------

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
    pub(super) fn drive(&mut self, d: &[u8]) {
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
    fn ask_round(&mut self, d: &[u8]) {
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

    pub(super) fn cluster_tick(&mut self, now: Millis) {
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
    fn poke(&mut self, d: &[u8]) {
        let retry = self
            .dc(d)
            .and_then(|dc| dc.m.op.as_ref())
            .is_some_and(|op| matches!(op.phase, OpPhase::Retry(_)));
        if retry {
            self.ask_round(d);
        }
    }

    fn on_ask(&mut self, from: NodeId, d: &[u8], req: u64) {
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
    fn answer(&mut self, d: &[u8], req: u64, ok: bool) -> PeerMsg {
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
    fn abandon_asking(&mut self, d: &[u8]) {
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

    fn on_answer(
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
    fn send_freeze(
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
    fn on_release(&mut self, from: NodeId, d: &[u8], req: u64, done: bool) {
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
    fn on_freeze(
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

    fn on_report(
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

    fn on_ready(&mut self, _now: Millis, from: NodeId, d: &[u8], epoch: u64) {
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
    fn check_change_done(&mut self, d: &[u8]) {
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
    fn change_done_everywhere(&mut self, d: &[u8], epoch: u64) {
        let Some(dc) = self.dc_if(d) else {
            return;
        };
        if dc.m.frozen.is_none() && epoch == dc.m.epoch && epoch > dc.done_epoch {
            dc.done_epoch = epoch;
            dc.writers.clear();
        }
    }

    // ---------------------------------------------------------------
    // Connections
    // ---------------------------------------------------------------

    pub(super) fn peer_down(&mut self, node: NodeId) {
        if let Some(cl) = self.cluster.as_deref_mut() {
            cl.up.remove(&node);
        }
    }

    /// A fresh connection to `p`: send again whatever it may be waiting for.
    pub(super) fn peer_up(&mut self, _now: Millis, p: NodeId) {
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
    fn revive_all(&mut self) {
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
    fn mark_dead(&mut self, x: NodeId) {
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
    pub(super) fn node_dead(&mut self, x: NodeId) {
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
    fn sync_entries(&self, d: &[u8], p: NodeId, members: &BTreeSet<NodeId>) -> Vec<ReportEntry> {
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

    // ---------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------

    /// Configured nodes with their connection and heartbeat state (None
    /// outside a cluster).
    pub fn cluster_nodes(&self) -> Option<Vec<NodeView>> {
        let cl = self.cluster.as_deref()?;
        Some(
            cl.nodes
                .iter()
                .map(|&n| NodeView {
                    node: n,
                    connected: n == self.node || cl.up.contains(&n),
                    heartbeat: n == self.node || self.live.contains(&n),
                })
                .collect(),
        )
    }

    /// Every domain this node has taken part in, with its membership.
    pub fn cluster_domains(&self) -> Vec<DomainView> {
        let Some(cl) = self.cluster.as_deref() else {
            return Vec::new();
        };
        cl.domains
            .iter()
            .filter(|(_, dc)| dc.m.members.contains(&self.node) || dc.m.op.is_some())
            .map(|(name, dc)| DomainView {
                name: name.to_vec(),
                epoch: dc.m.epoch,
                members: dc.m.members.iter().copied().collect(),
                changing: dc.m.frozen.is_some() || dc.m.op.is_some(),
                mastered: dc.mastered.len(),
            })
            .collect()
    }

    /// The master of `d/r` and every node's node lock there, when this node
    /// masters it.
    /// (master, every node's node lock, the master's value block) of a
    /// resource, as far as this node knows.
    pub(super) fn cluster_resource_view(
        &self,
        d: &[u8],
        r: &[u8],
    ) -> (NodeId, Vec<NodeHolder>, Option<LvbCopy>) {
        let Some(dc) = self.dc(d) else {
            return (self.node, Vec::new(), None);
        };
        let master = master_of(r, &dc.m.members).unwrap_or(self.node);
        let holders = dc
            .mastered
            .get(r)
            .map(|m| {
                m.locks
                    .iter()
                    .map(|(&n, l)| NodeHolder {
                        node: n,
                        granted: l.granted,
                        requested: l.requested,
                        pid: l.pid,
                    })
                    .collect()
            })
            .unwrap_or_default();
        (master, holders, dc.mastered.get(r).map(|m| m.lvb.clone()))
    }

    /// Names of the resources this node masters in `d` (for listings).
    pub(super) fn mastered_names(&self, d: &[u8]) -> Vec<Box<[u8]>> {
        self.dc(d)
            .map(|dc| dc.mastered.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Calls `f` with every node lock this node believes it holds or is
    /// asking for (domain, resource, mode held, mode asked): for the
    /// simulator's invariant checks.
    pub fn for_each_node_lock(&self, mut f: impl FnMut(&[u8], &[u8], Option<Mode>, Option<Mode>)) {
        for (d, dom) in &self.domains {
            for (r, res) in &dom.resources {
                if let Some(n) = res.node.as_deref() {
                    if n.mode.is_some() || n.pending.is_some() {
                        f(d, r, n.mode, n.pending.map(|p| p.0));
                    }
                }
            }
        }
    }

    /// This node's view of domain `d`: (epoch, members, a change in
    /// progress here), if it has taken part in it.
    pub fn membership(&self, d: &[u8]) -> Option<(u64, Vec<NodeId>, bool)> {
        self.dc(d).map(|dc| {
            (
                dc.m.epoch,
                dc.m.members.iter().copied().collect(),
                dc.m.op.is_some() || dc.m.frozen.is_some(),
            )
        })
    }

    /// This node's membership record of `d`, for diagnostics.
    pub fn membership_debug(&self, d: &[u8]) -> String {
        self.dc(d).map_or(String::new(), |dc| {
            format!(
                "epoch {} members {:?} approved {:?} op {:?} frozen {:?} deferred {} dead {:?} up {:?} revived {:?}",
                dc.m.epoch,
                dc.m.members,
                dc.m.approved,
                dc.m.op,
                dc.m.frozen.as_ref().map(|f| (
                    f.epoch,
                    &f.old,
                    &f.new,
                    f.initiator,
                    f.reports.keys().collect::<Vec<_>>()
                )),
                dc.deferred.len(),
                self.cl().dead,
                self.cl().up,
                self.cl().revived,
            )
        })
    }

    /// The master record of `d/r` on this node, for diagnostics.
    pub fn master_debug(&self, d: &[u8], r: &[u8]) -> String {
        self.dc(d)
            .and_then(|dc| dc.mastered.get(r))
            .map_or(String::new(), |m| format!("{m:?}"))
    }
}
