//! Listings of the core, for `dlmctl status`, `domains` and `locks`: the
//! counters and sizes, every domain, every resource with its queues (in a
//! cluster, with node locks and the master's view), one lock.
//!
//! May depend on: the core's types and records, the cluster layer's views.

use std::collections::{BTreeMap, BTreeSet};

use super::state::LvbState;
use super::{Dlm, DomainInfo, Holder, LockId, LvbInfo, NodeId, ResourceInfo, Stats};

impl Dlm {
    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        Stats {
            domains: self.domains.len(),
            resources: self.domains.values().map(|d| d.resources.len()).sum(),
            locks: self.locks.len(),
            clients: self.clients.len(),
            counters: self.counters,
        }
    }

    /// Every domain, sorted by name.
    pub fn domains(&self) -> Vec<DomainInfo> {
        let mut views: BTreeMap<Vec<u8>, (u64, Vec<NodeId>)> = self
            .cluster_domains()
            .into_iter()
            .map(|v| (v.name, (v.epoch, v.members)))
            .collect();
        let mut locks: BTreeMap<&[u8], usize> = BTreeMap::new();
        for l in self.locks.values() {
            *locks.entry(&l.domain[..]).or_default() += 1;
        }
        self.domains
            .iter()
            .map(|(name, d)| {
                let (epoch, members) = views.remove(&name[..]).unwrap_or_default();
                DomainInfo {
                    name: name.to_vec(),
                    pinned: d.pinned,
                    users: d.users.len(),
                    resources: d.resources.len(),
                    locks: locks.get(&name[..]).copied().unwrap_or(0),
                    epoch,
                    members,
                }
            })
            .collect()
    }

    /// Every resource (of one domain, or all), sorted by domain and name.
    /// In a cluster this is what this node knows: its own locks and node
    /// lock, and every node's node lock on the resources it masters.
    pub fn resources(&self, domain: Option<&[u8]>) -> Vec<ResourceInfo> {
        let mut out = Vec::new();
        let mut names: BTreeSet<&[u8]> = self.domains.keys().map(|d| &d[..]).collect();
        let cluster_names: Vec<Box<[u8]>> = self
            .cluster
            .as_deref()
            .map(|c| c.domains.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(cluster_names.iter().map(|d| &d[..]));
        for dname in names {
            if domain.is_some_and(|want| want != dname) {
                continue;
            }
            let mastered = if self.cluster.is_some() {
                self.mastered_names(dname)
            } else {
                Vec::new()
            };
            let mut rnames: BTreeSet<&[u8]> = mastered.iter().map(|r| &r[..]).collect();
            if let Some(d) = self.domains.get(dname) {
                rnames.extend(d.resources.keys().map(|r| &r[..]));
            }
            for name in rnames {
                let r = self.domains.get(dname).and_then(|d| d.resources.get(name));
                let list = |ids: &[LockId]| -> Vec<Holder> {
                    ids.iter().map(|&id| self.locks[&id].holder(id)).collect()
                };
                let (granted, converting, waiting) = match r.and_then(|r| r.queues.as_deref()) {
                    Some(q) => (list(&q.granted), list(&q.converting), list(&q.waiting)),
                    None => Default::default(),
                };
                let (master, nodes, master_lvb) = if self.cluster.is_some() {
                    self.cluster_resource_view(dname, name)
                } else {
                    (r.map_or(self.node, |r| r.master), Vec::new(), None)
                };
                let mut lvb = r.map_or(LvbState::PRISTINE, |r| r.lvb);
                // The master's copy is newer than ours when another node
                // wrote it since we last held the lock.
                if let Some(m) = master_lvb.filter(|m| m.seq > lvb.seq) {
                    lvb = LvbState::from_copy(&m);
                }
                out.push(ResourceInfo {
                    domain: dname.to_vec(),
                    name: name.to_vec(),
                    master,
                    lvb: LvbInfo {
                        value: lvb.value,
                        seq: lvb.seq,
                        valid: lvb.valid,
                    },
                    granted,
                    converting,
                    waiting,
                    node_lock: r
                        .and_then(|r| r.node.as_deref())
                        .map(|n| (n.mode, n.pending.map(|p| p.0))),
                    nodes,
                });
            }
        }
        out
    }

    /// A lock's holder record, if it exists.
    pub fn lock_info(&self, id: LockId) -> Option<Holder> {
        self.locks.get(&id).map(|l| l.holder(id))
    }
}
