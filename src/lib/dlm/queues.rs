//! A resource's queues: the grant rules (in order, conversions first),
//! queueing with timeouts, blocking notifications, grants, requests ending
//! without a grant, and freeing locks, resources and domains once unused.
//!
//! May depend on: the core's types and records, the cluster layer's grants
//! and membership (`node`), the node-lock record.

use std::collections::BTreeMap;

use super::cluster;
use super::state::{Lock, Queues, Resource};
use super::{Dlm, Event, Failure, Holder, LockId, Millis, Mode};

/// Whether `mode` may be granted beside every other lock's granted mode.
pub(super) fn compatible_with_holders(
    locks: &BTreeMap<LockId, Lock>,
    q: &Queues,
    me: LockId,
    mode: Mode,
) -> bool {
    q.granted
        .iter()
        .chain(&q.converting)
        .filter(|&&id| id != me)
        .all(|id| locks[id].granted.is_none_or(|g| g.compatible(mode)))
}

impl Dlm {
    pub(super) fn resource(&self, domain: &[u8], name: &[u8]) -> &Resource {
        &self.domains[domain].resources[name]
    }

    pub(super) fn resource_mut(&mut self, domain: &[u8], name: &[u8]) -> &mut Resource {
        self.domains
            .get_mut(domain)
            .and_then(|d| d.resources.get_mut(name))
            .expect("a lock's resource exists")
    }

    pub(super) fn queues(&self, domain: &[u8], name: &[u8]) -> &Queues {
        self.resource(domain, name)
            .queues
            .as_deref()
            .expect("a resource with locks has queues")
    }

    pub(super) fn queues_mut(&mut self, domain: &[u8], name: &[u8]) -> &mut Queues {
        self.resource_mut(domain, name)
            .queues
            .as_deref_mut()
            .expect("a resource with locks has queues")
    }

    /// A conversion that ends without a grant: the lock keeps its mode.
    pub(super) fn finish_failed_convert(&mut self, id: LockId, failure: Failure) {
        let l = self.locks.get_mut(&id).expect("exists");
        l.requested = None;
        l.noqueue = false;
        l.remote = false;
        let to = l.requester.take();
        if let Some(c) = to.and_then(|c| self.clients.get_mut(&c)) {
            c.pending.remove(&id);
        }
        self.event(to, Event::Failed { lock: id, failure });
    }

    /// A request now queued: arm its timeout, tell it who blocks it, tell
    /// the blockers.
    pub(super) fn queue_wait(&mut self, now: Millis, id: LockId, timeout_ms: Option<u64>) {
        if let Some(ms) = timeout_ms {
            let t = now.after(ms);
            self.locks.get_mut(&id).expect("exists").deadline = Some(t);
            self.deadlines.insert((t, id));
        }
        let l = &self.locks[&id];
        let mode = l.requested.expect("queued");
        let to = l.notify();
        let (d, r) = (l.domain.clone(), l.resource.clone());
        let blockers = self.blockers(id, mode);
        self.event(to, Event::Waiting { lock: id, blockers });
        self.send_basts(&d, &r);
    }

    /// Who keeps `id` from being granted `mode`: the holders of incompatible
    /// modes, or, when there are none, the requests queued ahead of it.
    pub(super) fn blockers(&self, id: LockId, mode: Mode) -> Vec<Holder> {
        let l = &self.locks[&id];
        let q = self.queues(&l.domain, &l.resource);
        let conflicting: Vec<Holder> = q
            .granted
            .iter()
            .chain(&q.converting)
            .filter(|&&x| x != id)
            .filter(|x| self.locks[x].granted.is_some_and(|g| !g.compatible(mode)))
            .map(|&x| self.locks[&x].holder(x))
            .collect();
        if !conflicting.is_empty() {
            return conflicting;
        }
        q.converting
            .iter()
            .chain(&q.waiting)
            .take_while(|&&x| x != id)
            .map(|&x| self.locks[&x].holder(x))
            .collect()
    }

    /// Tells the holders whose granted mode conflicts with `mode` (trylock
    /// with `bast_on_busy`).
    pub(super) fn bast_conflicting(&mut self, id: LockId, mode: Mode) {
        let l = &self.locks[&id];
        let q = self.queues(&l.domain, &l.resource);
        let targets: Vec<LockId> = q
            .granted
            .iter()
            .chain(&q.converting)
            .copied()
            .filter(|&x| x != id)
            .collect();
        for t in targets {
            self.maybe_bast(t, mode);
        }
    }

    pub(super) fn maybe_bast(&mut self, target: LockId, mode: Mode) {
        let l = self.locks.get_mut(&target).expect("exists");
        let Some(g) = l.granted else { return };
        if g.compatible(mode) || l.basted & mode.bit() != 0 {
            return;
        }
        l.basted |= mode.bit();
        let to = l.notify();
        self.counters.basts += 1;
        self.event(to, Event::Bast { lock: target, mode });
    }

    /// Every holder that blocks a queued request learns the blocked mode once.
    pub(super) fn send_basts(&mut self, d: &[u8], r: &[u8]) {
        let Some(q) = self.resource(d, r).queues.as_deref() else {
            return;
        };
        let queued: Vec<(LockId, Mode)> = q
            .converting
            .iter()
            .chain(&q.waiting)
            .map(|&x| (x, self.locks[&x].requested.expect("queued")))
            .collect();
        let holders: Vec<LockId> = q.granted.iter().chain(&q.converting).copied().collect();
        for (waiter, mode) in queued {
            for &h in &holders {
                // A converting lock is not blocked by its own old mode.
                if h != waiter {
                    self.maybe_bast(h, mode);
                }
            }
        }
    }

    /// Grants `id` its requested mode, wherever it is queued.
    pub(super) fn grant(&mut self, id: LockId) {
        let l = self.locks.get_mut(&id).expect("exists");
        let mode = l.requested.take().expect("a request to grant");
        l.granted = Some(mode);
        l.basted = 0;
        l.noqueue = false;
        if self.cluster.is_some() && !std::mem::take(&mut l.remote) {
            self.counters.local_grants += 1;
        }
        if let Some(t) = l.deadline.take() {
            self.deadlines.remove(&(t, id));
        }
        let to = l.requester.take();
        if l.owner.is_none() {
            if let Some(c) = to.and_then(|c| self.clients.get_mut(&c)) {
                c.pending.remove(&id);
            }
        }
        self.with_names(id, |s, d, r| {
            let q = s.queues_mut(d, r);
            q.waiting.retain(|&x| x != id);
            q.converting.retain(|&x| x != id);
            if !q.granted.contains(&id) {
                q.granted.push(id);
            }
        });
        self.counters.grants += 1;
        self.event(to, Event::Granted { lock: id, mode });
    }

    /// Serves the queues in order: the head conversion while it can be
    /// granted, then, with no conversion queued, the head new request.
    pub(super) fn grant_pending(&mut self, d: &[u8], r: &[u8]) {
        if self.cluster.is_some() {
            self.cluster_grant_pending(d, r);
            return;
        }
        loop {
            let Some(q) = self.resource(d, r).queues.as_deref() else {
                return;
            };
            let next = if let Some(&head) = q.converting.first() {
                let mode = self.locks[&head].requested.expect("converting");
                compatible_with_holders(&self.locks, q, head, mode).then_some(head)
            } else if let Some(&head) = q.waiting.first() {
                let mode = self.locks[&head].requested.expect("waiting");
                compatible_with_holders(&self.locks, q, head, mode).then_some(head)
            } else {
                None
            };
            match next {
                Some(id) => self.grant(id),
                None => break,
            }
        }
        self.send_basts(d, r);
    }

    /// Ends the pending request of `id` without a grant (cancel, timeout):
    /// a new lock disappears, a conversion keeps its mode.
    pub(super) fn end_request(&mut self, id: LockId, failure: Failure) {
        let l = self.locks.get_mut(&id).expect("exists");
        let (d, r) = (l.domain.clone(), l.resource.clone());
        if let Some(t) = l.deadline.take() {
            self.deadlines.remove(&(t, id));
        }
        if l.granted.is_some() {
            let q = self.queues_mut(&d, &r);
            q.converting.retain(|&x| x != id);
            q.granted.push(id);
            self.finish_failed_convert(id, failure);
        } else {
            let to = l.requester;
            self.forget(id);
            self.event(to, Event::Failed { lock: id, failure });
        }
        self.grant_pending(&d, &r);
        self.maybe_free(&d, &r);
    }

    /// Removes a lock and lets the queues move.
    pub(super) fn release(&mut self, id: LockId) {
        self.counters.unlocks += 1;
        let l = self.forget(id);
        self.grant_pending(&l.domain, &l.resource);
        self.maybe_free(&l.domain, &l.resource);
    }

    /// Runs `f` with the lock's domain and resource names borrowed out of it
    /// (no copies on the hot path); they are put back if the lock survives.
    pub(super) fn with_names<T>(
        &mut self,
        id: LockId,
        f: impl FnOnce(&mut Self, &[u8], &[u8]) -> T,
    ) -> T {
        let l = self.locks.get_mut(&id).expect("exists");
        let d = std::mem::take(&mut l.domain);
        let r = std::mem::take(&mut l.resource);
        let out = f(self, &d, &r);
        if let Some(l) = self.locks.get_mut(&id) {
            l.domain = d;
            l.resource = r;
        }
        out
    }

    /// Drops every trace of a lock (queues, deadlines, client bookkeeping)
    /// and returns it.
    pub(super) fn forget(&mut self, id: LockId) -> Lock {
        let l = self.locks.remove(&id).expect("exists");
        if let Some(t) = l.deadline {
            self.deadlines.remove(&(t, id));
        }
        for c in [l.owner, l.requester].into_iter().flatten() {
            if let Some(c) = self.clients.get_mut(&c) {
                c.locks.remove(&id);
                c.pending.remove(&id);
            }
        }
        if let Some(q) = self
            .domains
            .get_mut(&l.domain)
            .and_then(|d| d.resources.get_mut(&l.resource))
            .and_then(|r| r.queues.as_deref_mut())
        {
            q.remove(id);
        }
        l
    }

    /// Frees a resource with no locks and a value block never written.
    pub(super) fn maybe_free(&mut self, d: &[u8], r: &[u8]) {
        let Some(dom) = self.domains.get_mut(d) else {
            return;
        };
        let cluster = self.cluster.is_some();
        if let Some(res) = dom.resources.get_mut(r) {
            if res.queues.as_deref().is_some_and(Queues::is_empty) {
                res.queues = None;
            }
            // In a cluster the value block lives on the master; this node's
            // copy goes with its node lock.
            let free = if cluster {
                res.node.as_deref().is_none_or(cluster::NodeLock::is_idle)
            } else {
                res.lvb.is_pristine()
            };
            if res.queues.is_none() && free {
                dom.resources.remove(r);
            }
        }
        self.maybe_free_domain(d);
    }

    /// Frees a domain nobody pins or uses and in which nobody holds locks.
    pub(super) fn maybe_free_domain(&mut self, d: &[u8]) {
        if self.cluster.is_some() {
            // The node leaves the domain first (see `drive`).
            self.drive(d);
            return;
        }
        let Some(dom) = self.domains.get(d) else {
            return;
        };
        let idle = !dom.pinned
            && dom.users.is_empty()
            && dom.resources.values().all(|r| r.queues.is_none());
        if idle {
            self.domains.remove(d);
        }
    }
}
