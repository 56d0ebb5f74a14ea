//! Views of the cluster layer: status listings (nodes, domains, a
//! resource's master and node locks), the simulator's invariant checks,
//! and debug strings.
//!
//! May depend on: the helpers in `node/mod.rs`, the cluster types.

use crate::dlm::cluster::{DomainView, LvbCopy, NodeHolder, NodeView, master_of};
use crate::dlm::{Dlm, Mode, NodeId};

impl Dlm {
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

    /// The master of `d/r` as far as this node knows; when this node masters
    /// it, also every node's node lock there and the master's value block.
    pub(in crate::dlm) fn cluster_resource_view(
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
    pub(in crate::dlm) fn mastered_names(&self, d: &[u8]) -> Vec<Box<[u8]>> {
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
