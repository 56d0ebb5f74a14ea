//! The invariants: checked after every step (clients' modes, node locks,
//! answers, fenced nodes) and at the end (masters' records at rest), and
//! the report of what never ended.
//!
//! May depend on: the driver's state (`super`), the clients' beliefs of
//! `workload`, and `dlm`. Checks only read, except that `check_nodes` logs
//! node lock changes and forgets the value blocks of emptied domains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::workload::Asked;
use super::{Sim, SimFailure, dname, rname};
use crate::dlm::{Mode, NodeId};

/// A node's lock on a resource: (node index, domain, resource).
pub(super) type NodeKey = (usize, Vec<u8>, Vec<u8>);
/// Mode held and mode asked for.
pub(super) type HeldAsked = (Option<Mode>, Option<Mode>);

impl Sim {
    /// No two clients hold incompatible modes on `d/r`, anywhere.
    pub(super) fn check_resource(&self, d: usize, r: usize) -> Result<(), SimFailure> {
        let mut held: Vec<(usize, u64, Mode)> = Vec::new();
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for l in c.locks.values() {
                    if l.d == d && l.r == r {
                        if let Some(g) = l.granted {
                            for &(n2, c2, g2) in &held {
                                if !g.compatible(g2) {
                                    return Err(self.fail(format!(
                                        "d{d}/r{r}: node {} client {} holds {g} while node {} client {} holds {g2}",
                                        n + 1,
                                        c.id.0,
                                        n2 + 1,
                                        c2
                                    )));
                                }
                            }
                            held.push((n, c.id.0, g));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Node locks are compatible across nodes (those not changing mode: a
    /// node asking for a conversion may have been granted it already) and
    /// cover the local holders, both in the mode held and in the mode asked
    /// for; value blocks of domains that emptied are forgotten.
    pub(super) fn check_nodes(&mut self) -> Result<(), SimFailure> {
        type Key = (Vec<u8>, Vec<u8>);
        type Holders = Vec<(usize, Option<Mode>, Option<Mode>)>;
        let mut by_res: BTreeMap<Key, Holders> = BTreeMap::new();
        for (n, dlm) in self.dlms.iter().enumerate() {
            dlm.for_each_node_lock(|d, r, m, p| {
                by_res
                    .entry((d.to_vec(), r.to_vec()))
                    .or_default()
                    .push((n, m, p));
            });
        }
        // Log node lock changes (the trace shows no loopback messages).
        let flat: BTreeMap<NodeKey, HeldAsked> = by_res
            .iter()
            .flat_map(|((d, r), v)| {
                v.iter()
                    .map(move |&(n, m, p)| ((n, d.clone(), r.clone()), (m, p)))
            })
            .collect();
        if flat != self.node_locks {
            let keys: BTreeSet<&NodeKey> = flat.keys().chain(self.node_locks.keys()).collect();
            let mut changes = Vec::new();
            for k in keys {
                let (a, b) = (self.node_locks.get(k), flat.get(k));
                if a != b {
                    changes.push(format!(
                        "node {} {}/{} node lock (held, asked) {a:?} -> {b:?}",
                        k.0 + 1,
                        String::from_utf8_lossy(&k.1),
                        String::from_utf8_lossy(&k.2)
                    ));
                }
            }
            for c in changes {
                self.log(c);
            }
            self.node_locks = flat;
        }
        for ((d, r), v) in &by_res {
            let settled: Vec<(usize, Mode)> = v
                .iter()
                .filter(|x| x.2.is_none())
                .filter_map(|x| x.1.map(|m| (x.0, m)))
                .collect();
            for (i, &(n1, m1)) in settled.iter().enumerate() {
                for &(n2, m2) in &settled[i + 1..] {
                    if !m1.compatible(m2) {
                        return Err(self.fail(format!(
                            "{}/{}: node {} holds node lock {m1} while node {} holds {m2}",
                            String::from_utf8_lossy(d),
                            String::from_utf8_lossy(r),
                            n1 + 1,
                            n2 + 1
                        )));
                    }
                }
            }
        }
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for l in c.locks.values() {
                    let Some(g) = l.granted else { continue };
                    let key = (dname(l.d), rname(l.r));
                    let node = by_res
                        .get(&key)
                        .and_then(|v| v.iter().find(|x| x.0 == n))
                        .map(|x| (x.1, x.2));
                    let covered = node.is_some_and(|(m, p)| {
                        m.is_some_and(|m| crate::dlm::covers(m, g))
                            && p.is_none_or(|p| crate::dlm::covers(p, g))
                    });
                    if !covered {
                        return Err(self.fail(format!(
                            "d{}/r{}: node {} client {} holds {g} under node lock (held, asked) {node:?}",
                            l.d,
                            l.r,
                            n + 1,
                            c.id.0
                        )));
                    }
                }
            }
        }
        // A domain whose last member left is gone, value blocks included
        // (the last leaver's view shows the epoch it emptied at).
        for d in 0..self.cfg.domains {
            let name = dname(d);
            let emptied = self
                .dlms
                .iter()
                .filter_map(|dlm| dlm.membership(&name))
                .filter(|(e, members, _)| *e > 0 && members.is_empty())
                .map(|(e, _, _)| e)
                .max();
            if let Some(e) = emptied {
                if self.emptied.get(&d).is_none_or(|&seen| seen < e) {
                    self.emptied.insert(d, e);
                    self.log(format!("d{d} emptied at epoch {e}"));
                    for r in 0..self.cfg.resources {
                        self.lvb_last.remove(&(d, r));
                        self.lvb_seen.remove(&(d, r));
                    }
                }
            }
            // Every member died: the domain starts over.
            let living = (0..self.cfg.nodes).any(|n| {
                self.started[n]
                    && self.dlms[n]
                        .membership(&name)
                        .is_some_and(|(_, members, changing)| {
                            changing || members.contains(&NodeId(n as u8 + 1))
                        })
            });
            if !living
                && (0..self.cfg.resources).any(|r| {
                    self.lvb_last.contains_key(&(d, r)) || self.lvb_seen.contains_key(&(d, r))
                })
            {
                self.log(format!("d{d} has no living member"));
                for r in 0..self.cfg.resources {
                    self.lvb_last.remove(&(d, r));
                    self.lvb_seen.remove(&(d, r));
                }
            }
        }
        Ok(())
    }

    /// Requests must be answered at once, except joins and forced leaves.
    pub(super) fn check_answered(&self) -> Result<(), SimFailure> {
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for (tag, (asked, _)) in &c.asked {
                    if !matches!(asked, Asked::Join { .. } | Asked::Leave { force: true, .. }) {
                        return Err(self.fail(format!(
                            "node {} client {}: request {tag} {asked:?} not answered",
                            n + 1,
                            c.id.0
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A fenced node holds nothing until it restarts: no node lock held or
    /// asked for, no domain, and its clients hold and wait for nothing.
    pub(super) fn check_fenced(&self) -> Result<(), SimFailure> {
        for &n in &self.fenced {
            if !self.dlms[n].is_fenced() {
                return Err(self.fail(format!("node {} fenced but serving", n + 1)));
            }
            let mut held = Vec::new();
            self.dlms[n].for_each_node_lock(|d, r, m, p| {
                if m.is_some() || p.is_some() {
                    held.push(format!(
                        "{}/{} (held, asked) {:?}",
                        String::from_utf8_lossy(d),
                        String::from_utf8_lossy(r),
                        (m, p)
                    ));
                }
            });
            if !held.is_empty() {
                return Err(self.fail(format!(
                    "node {} is fenced but has node locks: {}",
                    n + 1,
                    held.join(", ")
                )));
            }
            let domains = self.dlms[n].domains();
            if !domains.is_empty() {
                let names: Vec<String> = domains
                    .iter()
                    .map(|i| String::from_utf8_lossy(&i.name).into_owned())
                    .collect();
                return Err(self.fail(format!("node {} is fenced but in domains {names:?}", n + 1)));
            }
            for c in &self.clients[n] {
                if let Some((id, l)) = c.locks.iter().next() {
                    return Err(self.fail(format!(
                        "node {} is fenced but its client {} holds lock {id}: {l:?}",
                        n + 1,
                        c.id.0
                    )));
                }
                if let Some((tag, (a, _))) = c.asked.iter().next() {
                    return Err(self.fail(format!(
                        "node {} is fenced but its client {} waits for {tag} {a:?}",
                        n + 1,
                        c.id.0
                    )));
                }
            }
        }
        Ok(())
    }

    /// At rest, what each master records of the nodes' node locks is what
    /// the nodes hold: in particular no lock of a dead node is left.
    pub(super) fn check_records(&self) -> Result<(), SimFailure> {
        type Key = (usize, Vec<u8>, Vec<u8>);
        let mut held: BTreeMap<Key, HeldAsked> = BTreeMap::new();
        for (n, dlm) in self.dlms.iter().enumerate() {
            dlm.for_each_node_lock(|d, r, m, p| {
                held.insert((n, d.to_vec(), r.to_vec()), (m, p));
            });
        }
        let mut recorded: BTreeMap<Key, HeldAsked> = BTreeMap::new();
        for dlm in &self.dlms {
            for r in dlm.resources(None) {
                for h in &r.nodes {
                    if h.granted.is_some() || h.requested.is_some() {
                        recorded.insert(
                            (h.node.0 as usize - 1, r.domain.clone(), r.name.clone()),
                            (h.granted, h.requested),
                        );
                    }
                }
            }
        }
        if held != recorded {
            let keys: BTreeSet<&Key> = held.keys().chain(recorded.keys()).collect();
            let mut s =
                String::from("at rest, masters' records differ from the nodes' node locks:");
            for k in keys {
                let (a, b) = (held.get(k), recorded.get(k));
                if a != b {
                    let _ = write!(
                        s,
                        "\n  node {} {}/{}: holds {a:?}, master records {b:?}",
                        k.0 + 1,
                        String::from_utf8_lossy(&k.1),
                        String::from_utf8_lossy(&k.2)
                    );
                }
            }
            return Err(self.fail(s));
        }
        Ok(())
    }

    pub(super) fn stuck(&self) -> String {
        let mut s = String::from("requests never answered after the network healed:");
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for (tag, (a, step)) in &c.asked {
                    let _ = write!(
                        s,
                        "\n  node {} client {} tag {tag} (step {step}): {a:?}",
                        n + 1,
                        c.id.0
                    );
                }
                for (id, l) in &c.locks {
                    let _ = write!(s, "\n  node {} client {} lock {id}: {l:?}", n + 1, c.id.0);
                }
            }
        }
        for (n, dlm) in self.dlms.iter().enumerate() {
            for r in dlm.resources(None) {
                let _ = write!(
                    s,
                    "\n  node {} sees {}/{}: master {} node lock {:?} nodes {:?} granted {} conv {} wait {}",
                    n + 1,
                    String::from_utf8_lossy(&r.domain),
                    String::from_utf8_lossy(&r.name),
                    r.master.0,
                    r.node_lock,
                    r.nodes
                        .iter()
                        .map(|h| (h.node.0, h.granted, h.requested))
                        .collect::<Vec<_>>(),
                    r.granted.len(),
                    r.converting.len(),
                    r.waiting.len()
                );
                let m = dlm.master_debug(&r.domain, &r.name);
                if !m.is_empty() {
                    let _ = write!(
                        s,
                        "\n    master record: {}",
                        m.replace("value: [", "value: [..")
                    );
                }
            }
            for d in 0..self.cfg.domains {
                let _ = write!(
                    s,
                    "\n  node {} d{d}: {}",
                    n + 1,
                    dlm.membership_debug(&dname(d))
                );
            }
        }
        s
    }
}
