//! The simulated network: one FIFO link per ordered pair of nodes, the
//! pairs connected now, connecting and breaking a pair (what is in flight
//! is lost), and how a peer message reads in the trace.
//!
//! May depend on: the driver (`super`: the cluster's state, `input`, `log`,
//! `fail`) and `dlm`'s types. The partition itself belongs to `faults`;
//! this only asks whether two nodes are on different sides.

use std::collections::VecDeque;

use super::{Sim, SimFailure};
use crate::dlm::{Input, Millis, NodeId, PeerMsg};

/// A one-way link: messages in flight with their delivery times, and the
/// latest of those (delivery stays in order).
pub(super) struct Link {
    pub(super) queue: VecDeque<(Millis, PeerMsg)>,
    pub(super) last: Millis,
}

pub(super) fn short(msg: &PeerMsg) -> String {
    let s = format!("{msg:?}");
    // Value blocks make lines unreadable.
    let mut out = String::new();
    let mut skip = 0usize;
    for (i, part) in s.split("value: [").enumerate() {
        if i > 0 {
            out.push_str("value: [..");
            skip = part.find(']').unwrap_or(0);
        }
        out.push_str(&part[skip..]);
        skip = 0;
    }
    out
}

impl Sim {
    /// Whether `a` and `b` are on different sides of the partition.
    pub(super) fn split(&self, a: usize, b: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|p| p.side[a] != p.side[b])
    }

    pub(super) fn connect(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        if self.split(a, b) {
            return Err(self.fail(format!(
                "connecting {} and {} across the partition",
                a + 1,
                b + 1
            )));
        }
        let key = (a.min(b), a.max(b));
        self.up.insert(key);
        self.reconnect.remove(&key);
        self.log(format!("connect {} <-> {}", a + 1, b + 1));
        self.input(
            a,
            Input::PeerUp {
                node: NodeId(b as u8 + 1),
            },
        )?;
        self.input(
            b,
            Input::PeerUp {
                node: NodeId(a as u8 + 1),
            },
        )
    }

    pub(super) fn disconnect(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        let key = (a.min(b), a.max(b));
        self.up.remove(&key);
        for k in [(a, b), (b, a)] {
            let link = self.links.get_mut(&k).expect("link");
            self.out.lost += link.queue.len() as u64;
            link.queue.clear();
        }
        self.out.breaks += 1;
        let at = self.now.after(5 + self.rng.below(100));
        self.reconnect.insert(key, at);
        self.log(format!("break {} <-> {}", a + 1, b + 1));
        self.input(
            a,
            Input::PeerDown {
                node: NodeId(b as u8 + 1),
            },
        )?;
        self.input(
            b,
            Input::PeerDown {
                node: NodeId(a as u8 + 1),
            },
        )
    }
}
