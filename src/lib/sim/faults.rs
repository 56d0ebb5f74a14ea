//! Faults and the way back from them: crashes, partitions and the quorum
//! checks they call for, fences, death notices, and nodes (re)starting or
//! unfencing.
//!
//! May depend on: the driver (`super`), `net` (connecting and breaking
//! links), the client state of `workload` (cleared when a node's clients
//! start over), `quorum` and `dlm`.

use std::collections::BTreeSet;

use super::{NEVER, Sim, SimFailure};
use crate::dlm::{ClusterConfig, Dlm, Input, Millis, NodeId};
use crate::quorum::quorate;

/// A network partition in progress.
#[derive(Debug)]
pub(super) struct Partition {
    /// The side of each node.
    pub(super) side: Vec<usize>,
    /// How many sides.
    pub(super) sides: usize,
    /// It heals then at the earliest (and once no quorum check is due).
    pub(super) heal_at: Millis,
    /// Quorum checks due: (when, node).
    pub(super) checks: BTreeSet<(Millis, usize)>,
}

impl Sim {
    pub(super) fn start_node(&mut self, n: usize) -> Result<(), SimFailure> {
        // A fenced node comes back either restarted (a fresh core, as after
        // a crash) or as lockd does: the same core, clients still connected,
        // connects again at once as a new incarnation, still fenced and not
        // heartbeating, and heartbeats again and serves requests a little
        // later (`come_back`).
        if self.fenced.contains(&n) {
            if self.rng.chance(500) {
                self.started[n] = true;
                self.log(format!("node {} connects again, still fenced", n + 1));
                for m in 0..self.cfg.nodes {
                    if m != n && self.started[m] {
                        self.connect(n, m)?;
                    }
                }
                let at = self.now.after(10 + self.rng.below(200));
                self.unfence_at.insert(n, at);
                return Ok(());
            }
            self.fenced.remove(&n);
            self.replace_core(n);
        }
        self.started[n] = true;
        let restart = self.down.remove(&n);
        self.log(format!(
            "node {} {}",
            n + 1,
            if restart { "restarts" } else { "starts" }
        ));
        // Disk heartbeat: every node not dead is alive (and sees this one).
        for m in 0..self.cfg.nodes {
            if !self.down.contains(&m) {
                self.input(
                    n,
                    Input::NodeUp {
                        node: NodeId(m as u8 + 1),
                    },
                )?;
            }
            if restart && m != n && self.started[m] {
                self.input(
                    m,
                    Input::NodeUp {
                        node: NodeId(n as u8 + 1),
                    },
                )?;
            }
        }
        for m in 0..self.cfg.nodes {
            if m != n && self.started[m] {
                self.connect(n, m)?;
            }
        }
        Ok(())
    }

    /// A fenced node that connected again heartbeats again (its view from
    /// before the fence is stale: the nodes dead now are dead) and serves
    /// requests.
    pub(super) fn come_back(&mut self, n: usize) -> Result<(), SimFailure> {
        self.unfence_at.remove(&n);
        self.fenced.remove(&n);
        self.down.remove(&n);
        self.log(format!("node {} heartbeats again and unfences", n + 1));
        for m in 0..self.cfg.nodes {
            let node = NodeId(m as u8 + 1);
            if self.down.contains(&m) {
                self.input(n, Input::NodeDown { node })?;
            } else {
                self.input(n, Input::NodeUp { node })?;
            }
            if m != n && self.started[m] {
                self.input(
                    m,
                    Input::NodeUp {
                        node: NodeId(n as u8 + 1),
                    },
                )?;
            }
        }
        self.input(n, Input::Unfence)
    }

    /// Node `n` crashes: its state, its clients' locks and everything in
    /// flight to or from it are gone; the survivors are told it is dead a
    /// little later, each at its own time.
    pub(super) fn crash(&mut self, n: usize) -> Result<(), SimFailure> {
        self.out.crashes += 1;
        self.log(format!("node {} crashes", n + 1));
        self.locks_lost(n);
        self.replace_core(n);
        self.stop_heartbeating(n)
    }

    /// Node `n` lost quorum: it fences itself (its clients are told every
    /// lock is gone, and it refuses requests), and only then stops
    /// heartbeating, so the others recover its locks only once it holds
    /// none.
    pub(super) fn fence(&mut self, n: usize) -> Result<(), SimFailure> {
        self.out.fences += 1;
        self.log(format!("node {} lost quorum: fences", n + 1));
        // With this node's voters, at most one side keeps its locks, and
        // not this node's.
        let (voters, _) = self.quorum_view(n);
        if let Some(p) = &self.partition {
            let quorate_sides: Vec<usize> = (0..p.sides)
                .filter(|&s| {
                    let reach: BTreeSet<u8> = voters
                        .iter()
                        .copied()
                        .filter(|&x| p.side[x as usize - 1] == s)
                        .collect();
                    reach.first().is_some_and(|&m| quorate(m, &voters, &reach))
                })
                .collect();
            if quorate_sides.len() > 1 || quorate_sides.contains(&p.side[n]) {
                return Err(self.fail(format!(
                    "node {} fences with voters {voters:?}, sides {:?}: sides {quorate_sides:?} are quorate",
                    n + 1,
                    p.side
                )));
            }
        }
        self.locks_lost(n);
        self.input(n, Input::Fence)?;
        for c in &mut self.clients[n] {
            c.joined.clear();
        }
        self.fenced.insert(n);
        if let Some(p) = &mut self.partition {
            p.checks.retain(|&(_, m)| m != n);
        }
        // What it was still to be told of, it is not: a node waiting only
        // for that notice may restart. (A crash leaves such a node down
        // until the drain, as it always has: old seeds replay the same.)
        let waited: BTreeSet<usize> = self
            .notices
            .iter()
            .filter(|&&(_, s, _)| s == n)
            .map(|&(_, _, x)| x)
            .collect();
        self.stop_heartbeating(n)?;
        for x in waited {
            if self.start_at[x] == NEVER {
                self.schedule_restart(x);
            }
        }
        Ok(())
    }

    /// Node `n` is about to lose its locks without releasing them (a crash
    /// or a fence): the value blocks it could write may be lost, and every
    /// value block may now read invalid or never written.
    pub(super) fn locks_lost(&mut self, n: usize) {
        let index = |s: &[u8], p: char| -> Option<usize> {
            std::str::from_utf8(s).ok()?.strip_prefix(p)?.parse().ok()
        };
        let mut writers = Vec::new();
        self.dlms[n].for_each_node_lock(|d, r, m, _| {
            if m.is_some_and(|m| m.can_write_lvb()) {
                if let (Some(d), Some(r)) = (index(d, 'd'), index(r, 'r')) {
                    writers.push((d, r));
                }
            }
        });
        for &(d, r) in &writers {
            self.log(format!("node {} held PW or EX on d{d}/r{r}", n + 1));
        }
        self.lvb_must_invalid.extend(writers);
        for d in 0..self.cfg.domains {
            for r in 0..self.cfg.resources {
                self.lvb_may_invalid.insert((d, r));
            }
        }
    }

    /// Node `n` gets a fresh core (a new incarnation) and its clients start
    /// over.
    pub(super) fn replace_core(&mut self, n: usize) {
        let nodes: Vec<NodeId> = (0..self.cfg.nodes).map(|i| NodeId(i as u8 + 1)).collect();
        self.dlms[n] = Dlm::new_cluster(
            NodeId(n as u8 + 1),
            ClusterConfig {
                nodes,
                settle_ms: 50,
            },
        );
        for c in &mut self.clients[n] {
            c.connected = false;
            c.locks.clear();
            c.asked.clear();
            c.joined.clear();
        }
    }

    /// Node `n` (crashed or fenced) stops heartbeating: its links break and
    /// lose what is in flight, every running node is told it is dead at its
    /// own time, and once all are told it restarts.
    pub(super) fn stop_heartbeating(&mut self, n: usize) -> Result<(), SimFailure> {
        for m in 0..self.cfg.nodes {
            if m == n {
                continue;
            }
            let key = (n.min(m), n.max(m));
            self.reconnect.remove(&key);
            for k in [(n, m), (m, n)] {
                let link = self.links.get_mut(&k).expect("link");
                self.out.lost += link.queue.len() as u64;
                link.queue.clear();
            }
            if self.up.remove(&key) {
                self.input(
                    m,
                    Input::PeerDown {
                        node: NodeId(n as u8 + 1),
                    },
                )?;
            }
        }
        self.started[n] = false;
        self.down.insert(n);
        self.start_at[n] = NEVER;
        self.notices.retain(|&(_, s, _)| s != n);
        for m in 0..self.cfg.nodes {
            if m != n && self.started[m] {
                let at = self.now.after(20 + self.rng.below(300));
                self.notices.insert((at, m, n));
            }
        }
        self.schedule_restart(n);
        Ok(())
    }

    /// Once every survivor has been told `n` is dead, it restarts.
    pub(super) fn schedule_restart(&mut self, n: usize) {
        if self.down.contains(&n) && !self.notices.iter().any(|&(_, _, x)| x == n) {
            self.start_at[n] = self.now.after(20 + self.rng.below(300));
        }
    }

    /// Tells survivor `s` that `x` is dead.
    pub(super) fn notice(&mut self, s: usize, x: usize) -> Result<(), SimFailure> {
        self.log(format!("node {} learns node {} is dead", s + 1, x + 1));
        self.input(
            s,
            Input::NodeDown {
                node: NodeId(x as u8 + 1),
            },
        )?;
        self.schedule_restart(x);
        // Its voters changed: during a partition it decides again.
        if self.partition.is_some() {
            let at = self.now.after(1 + self.rng.below(20));
            if let Some(p) = &mut self.partition {
                p.checks.insert((at, s));
            }
        }
        Ok(())
    }

    /// The network splits into two (or three) random sides: connections
    /// between sides break and stay broken until it heals; each node
    /// decides whether it keeps its locks after its detection delay.
    pub(super) fn start_partition(&mut self) -> Result<(), SimFailure> {
        let n = self.cfg.nodes;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut cuts = vec![1 + self.rng.below(n as u64 - 1) as usize];
        if self.rng.chance(150) {
            let a = 1 + self.rng.below(n as u64 - 2) as usize;
            let b = a + 1 + self.rng.below((n - 1 - a) as u64) as usize;
            cuts = vec![a, b];
        }
        let mut side = vec![0; n];
        for (i, &m) in order.iter().enumerate() {
            side[m] = cuts.iter().filter(|&&c| c <= i).count();
        }
        let heal_at = self.now.after(100 + self.rng.below(2500));
        let mut checks = BTreeSet::new();
        for m in 0..n {
            // The hold (the heartbeat dead time and two intervals): longer
            // than a death notice takes.
            checks.insert((self.now.after(320 + self.rng.below(400)), m));
        }
        self.out.partitions += 1;
        let sides: Vec<Vec<usize>> = (0..=cuts.len())
            .map(|s| (0..n).filter(|&m| side[m] == s).map(|m| m + 1).collect())
            .collect();
        self.log(format!("the network splits: {sides:?}"));
        self.partition = Some(Partition {
            side,
            sides: cuts.len() + 1,
            heal_at,
            checks,
        });
        let across: Vec<(usize, usize)> = self
            .up
            .iter()
            .copied()
            .filter(|&(a, b)| self.split(a, b))
            .collect();
        for (a, b) in across {
            self.disconnect(a, b)?;
        }
        Ok(())
    }

    /// Node `n`'s voters (the nodes alive on its heartbeat, itself
    /// included) and those of them on its side.
    pub(super) fn quorum_view(&self, n: usize) -> (BTreeSet<u8>, BTreeSet<u8>) {
        let mut voters: BTreeSet<u8> = self.dlms[n].live_nodes().iter().map(|x| x.0).collect();
        voters.insert(n as u8 + 1);
        let reachable = match &self.partition {
            Some(p) => voters
                .iter()
                .copied()
                .filter(|&x| p.side[x as usize - 1] == p.side[n])
                .collect(),
            None => voters.clone(),
        };
        (voters, reachable)
    }

    /// Node `n` decides whether it keeps its locks.
    pub(super) fn quorum_check(&mut self, n: usize) -> Result<(), SimFailure> {
        if !self.started[n] {
            return Ok(());
        }
        let (voters, reachable) = self.quorum_view(n);
        let ok = quorate(n as u8 + 1, &voters, &reachable);
        self.log(format!(
            "node {} quorum: voters {voters:?}, reachable {reachable:?}: {}",
            n + 1,
            if ok { "keeps its locks" } else { "lost" }
        ));
        if ok { Ok(()) } else { self.fence(n) }
    }

    pub(super) fn heal(&mut self) {
        self.partition = None;
        self.log("the partition heals".into());
    }
}
