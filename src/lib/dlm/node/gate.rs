//! The node locks and the local queues: whether a node lock lets a local
//! request be granted (the gate), granting what it lets through, and
//! making the node lock follow what the local queues need (up for a
//! request, down when another node waits).
//!
//! May depend on: the helpers in `node/mod.rs`, the queues and grants,
//! the cluster types.

use crate::dlm::cluster::{NodeLock, PeerMsg, cover_all, covers, down_to, master_of};
use crate::dlm::queues::compatible_with_holders;
use crate::dlm::{Dlm, LockId, Mode, NodeId};

/// Whether the node lock lets a local request be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::dlm) enum Gate {
    /// Yes (or not a cluster).
    Yes,
    /// Not yet: the node lock must go up first.
    Ask,
    /// Not now: another node waits for the node lock to come down.
    No,
}

fn bits(mask: u8) -> impl Iterator<Item = Mode> {
    Mode::ALL.into_iter().filter(move |m| mask & m.bit() != 0)
}

impl Dlm {
    /// Whether the node lock on `d/r` lets a local request for `mode` be
    /// granted now. Conversions of local holders may use a node lock that
    /// another node waits for; new requests may not (they queue behind it).
    pub(in crate::dlm) fn node_gate(
        &self,
        d: &[u8],
        r: &[u8],
        mode: Mode,
        conversion: bool,
    ) -> Gate {
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
    pub(super) fn local_held(&self, d: &[u8], r: &[u8]) -> Vec<Mode> {
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
    pub(super) fn local_blocker_pid(&self, d: &[u8], r: &[u8], mode: Mode) -> Option<i32> {
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
    pub(super) fn node_need(&self, d: &[u8], r: &[u8]) -> Option<(LockId, Mode, bool, bool)> {
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
    pub(in crate::dlm) fn cluster_grant_pending(&mut self, d: &[u8], r: &[u8]) {
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
    pub(super) fn master_in(&self, d: &[u8], r: &[u8]) -> NodeId {
        let dc = self.dc(d).expect("member");
        master_of(r, &dc.m.members).unwrap_or(self.node)
    }

    /// Brings the node lock down to `to` (None: gives it back), writing a
    /// changed value block back to the master when leaving PW/EX.
    pub(super) fn send_down(&mut self, d: &[u8], r: &[u8], to: Option<Mode>) {
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
}
