//! The cluster layer of [`Dlm`]: what a node does with peer messages, how it
//! joins and leaves domains, and how its local queues use its node locks.
//! The message and master types are in `cluster`; see its doc comment for
//! the protocol.
//!
//! Each file adds an `impl Dlm` for one part of it:
//! - `gate`: node locks, and the gate they put on local grants.
//! - `peer`: peer messages, and those about node locks in particular.
//! - `membership`: membership changes (join, leave, recovery): approvals,
//!   retries, the freeze, the end of a change.
//! - `rebuild`: reports to the new masters, and rebuilding from them.
//! - `conn`: connections, node deaths, new incarnations.
//! - `views`: status listings and diagnostics.
//! - This file: the cluster constructor, and what the others share
//!   (the cluster state, sending, the loopback queue).
//!
//! May depend on: the single-node engine (its records, queues and grants)
//! and the cluster types; nothing outside `dlm`.

mod conn;
mod gate;
mod membership;
mod peer;
mod rebuild;
mod views;

use std::collections::{BTreeMap, BTreeSet};

use super::cluster::{ClusterConfig, ClusterState, DomainCluster, LvbCopy, PeerMsg};
use super::state::LvbState;
use super::{Action, Dlm, Millis, NodeId};

pub(super) use gate::Gate;

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
}
