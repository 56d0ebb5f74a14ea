//! Mastery: which node masters a resource (rendezvous hashing over the
//! domain's members), and the master's queues of node locks, with the
//! single-node core's grant rules one level up. [`MasterRes`] decides;
//! what it decides comes out as [`MasterOut`], for the cluster layer to
//! send.
//!
//! May depend on: the core's ids and modes, the messages, the cover
//! relation.

use std::collections::{BTreeMap, BTreeSet};

use super::{LvbCopy, NodeFailure, covers};
use crate::dlm::{Mode, NodeId};

/// A node lock queued on its master.
#[derive(Clone, Debug)]
pub(in crate::dlm) struct NLock {
    pub granted: Option<Mode>,
    pub requested: Option<Mode>,
    pub noqueue: bool,
    /// Trylock: holders asked to come down at once, not answered yet.
    pub probing: BTreeSet<NodeId>,
    pub basted: u8,
    pub pid: i32,
    /// The number of the node's latest request.
    pub seq: u64,
}

/// A resource this node masters.
#[derive(Clone, Debug)]
pub(in crate::dlm) struct MasterRes {
    pub locks: BTreeMap<NodeId, NLock>,
    pub granted: Vec<NodeId>,
    pub converting: Vec<NodeId>,
    pub waiting: Vec<NodeId>,
    pub lvb: LvbCopy,
}

impl MasterRes {
    pub fn new() -> Self {
        MasterRes {
            locks: BTreeMap::new(),
            granted: Vec::new(),
            converting: Vec::new(),
            waiting: Vec::new(),
            lvb: LvbCopy::ZERO,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.locks.is_empty()
    }

    fn compatible_with_others(&self, me: NodeId, mode: Mode) -> bool {
        self.granted
            .iter()
            .chain(&self.converting)
            .filter(|&&n| n != me)
            .all(|n| self.locks[n].granted.is_none_or(|g| g.compatible(mode)))
    }

    fn holders_blocking(&self, me: NodeId, mode: Mode) -> Vec<(NodeId, Mode, i32)> {
        self.granted
            .iter()
            .chain(&self.converting)
            .filter(|&&n| n != me)
            .filter_map(|n| {
                let l = &self.locks[n];
                l.granted
                    .filter(|g| !g.compatible(mode))
                    .map(|g| (*n, g, l.pid))
            })
            .collect()
    }

    fn remove(&mut self, n: NodeId) -> Option<NLock> {
        self.granted.retain(|&x| x != n);
        self.converting.retain(|&x| x != n);
        self.waiting.retain(|&x| x != n);
        self.locks.remove(&n)
    }

    fn place_granted(&mut self, n: NodeId, mode: Mode) {
        self.converting.retain(|&x| x != n);
        self.waiting.retain(|&x| x != n);
        if !self.granted.contains(&n) {
            self.granted.push(n);
        }
        let l = self.locks.get_mut(&n).expect("placed lock exists");
        l.granted = Some(mode);
        l.requested = None;
        l.noqueue = false;
        l.probing.clear();
        l.basted = 0;
    }
}

/// What the master must send after a change to one of its resources.
#[derive(Debug)]
pub(in crate::dlm) enum MasterOut {
    /// Node, mode, request number.
    Grant(NodeId, Mode, u64),
    /// Node, mode wanted, why, request number.
    Failed(NodeId, Mode, NodeFailure, u64),
    /// Node, blocked mode, probe.
    Bast(NodeId, Mode, bool),
}

impl MasterRes {
    /// A node asks for `want` (new lock, or conversion up or down).
    pub fn request(
        &mut self,
        n: NodeId,
        want: Mode,
        noqueue: bool,
        pid: i32,
        seq: u64,
        out: &mut Vec<MasterOut>,
    ) {
        if let Some(l) = self.locks.get_mut(&n) {
            l.pid = pid;
            l.seq = seq;
            if l.granted == Some(want) {
                // A repeat: the grant was lost or is in flight; say it again.
                if l.requested.is_some() {
                    // It had asked for something else meanwhile: that is over.
                    l.requested = None;
                    self.converting.retain(|&x| x != n);
                    if !self.granted.contains(&n) {
                        self.granted.push(n);
                    }
                }
                out.push(MasterOut::Grant(n, want, seq));
                self.pump(out);
                return;
            }
            if l.requested == Some(want) {
                return;
            }
        }
        let held = self.locks.get(&n).and_then(|l| l.granted);
        match held {
            None => {
                self.waiting.retain(|&x| x != n);
                self.locks.insert(
                    n,
                    NLock {
                        granted: None,
                        requested: Some(want),
                        noqueue,
                        probing: BTreeSet::new(),
                        basted: 0,
                        pid,
                        seq,
                    },
                );
                let free = self.converting.is_empty()
                    && self.waiting.is_empty()
                    && self.compatible_with_others(n, want);
                if free {
                    self.waiting.push(n);
                    self.place_granted(n, want);
                    out.push(MasterOut::Grant(n, want, seq));
                } else if noqueue {
                    self.try_probe(n, want, out);
                } else {
                    self.waiting.push(n);
                }
            }
            Some(held) => {
                {
                    let l = self.locks.get_mut(&n).expect("held");
                    l.requested = Some(want);
                    l.noqueue = noqueue;
                    l.probing.clear();
                }
                if self.compatible_with_others(n, want) {
                    self.place_granted(n, want);
                    // A down-conversion is done by the node when it sends
                    // it: no answer (one could be taken for the answer to
                    // a later request). It answers the probes it satisfies.
                    if covers(held, want) {
                        self.probe_answered(n, Some(want));
                    } else {
                        out.push(MasterOut::Grant(n, want, seq));
                    }
                } else {
                    let dead: Vec<(NodeId, Mode, i32)> = self
                        .converting
                        .iter()
                        .filter(|&&c| c != n)
                        .map(|c| (*c, &self.locks[c]))
                        .filter(|(_, c)| !held.compatible(c.requested.expect("converting")))
                        .map(|(c, l)| (c, l.granted.expect("converting holds"), l.pid))
                        .collect();
                    if !dead.is_empty() {
                        let l = self.locks.get_mut(&n).expect("held");
                        l.requested = None;
                        l.noqueue = false;
                        out.push(MasterOut::Failed(n, want, NodeFailure::Deadlock(dead), seq));
                    } else if noqueue {
                        self.granted.retain(|&x| x != n);
                        self.converting.push(n);
                        self.try_probe(n, want, out);
                    } else {
                        self.granted.retain(|&x| x != n);
                        self.converting.push(n);
                    }
                }
            }
        }
        self.pump(out);
    }

    /// A trylock that cannot be granted at once: if only other holders are
    /// in the way (nothing queued ahead), ask them to come down now;
    /// otherwise it fails.
    fn try_probe(&mut self, n: NodeId, want: Mode, out: &mut Vec<MasterOut>) {
        let ahead = self.converting.iter().chain(&self.waiting).any(|&x| x != n);
        let blockers = self.holders_blocking(n, want);
        if ahead || blockers.is_empty() {
            self.fail_try(n, want, blockers, out);
            return;
        }
        if self.waiting.contains(&n) || self.converting.contains(&n) {
            // already placed
        } else if self.locks[&n].granted.is_some() {
            self.converting.push(n);
        } else {
            self.waiting.push(n);
        }
        let l = self.locks.get_mut(&n).expect("probing lock");
        l.probing = blockers.iter().map(|b| b.0).collect();
        for (b, _, _) in blockers {
            out.push(MasterOut::Bast(b, want, true));
        }
    }

    fn fail_try(
        &mut self,
        n: NodeId,
        want: Mode,
        blockers: Vec<(NodeId, Mode, i32)>,
        out: &mut Vec<MasterOut>,
    ) {
        let l = self.locks.get_mut(&n).expect("trylock");
        let seq = l.seq;
        if l.granted.is_some() {
            l.requested = None;
            l.noqueue = false;
            l.probing.clear();
            self.converting.retain(|&x| x != n);
            if !self.granted.contains(&n) {
                self.granted.push(n);
            }
        } else {
            self.remove(n);
        }
        out.push(MasterOut::Failed(n, want, NodeFailure::Busy(blockers), seq));
    }

    /// A probed holder cannot come down: the trylocks probing it fail.
    pub fn probe_busy(&mut self, holder: NodeId, pid: i32, out: &mut Vec<MasterOut>) {
        if let Some(l) = self.locks.get_mut(&holder) {
            if pid != 0 {
                l.pid = pid;
            }
        }
        let probing: Vec<NodeId> = self
            .locks
            .iter()
            .filter(|(_, l)| l.probing.contains(&holder))
            .map(|(&n, _)| n)
            .collect();
        for n in probing {
            let want = self.locks[&n].requested.expect("probing request");
            let blockers = self.holders_blocking(n, want);
            self.fail_try(n, want, blockers, out);
        }
        self.pump(out);
    }

    /// A node gives its lock back.
    pub fn unlock(&mut self, n: NodeId, out: &mut Vec<MasterOut>) {
        self.remove(n);
        self.probe_answered(n, None);
        self.pump(out);
    }

    /// Node `n` came down to `now`: the probes of trylocks that `now` no
    /// longer blocks are answered.
    fn probe_answered(&mut self, n: NodeId, now: Option<Mode>) {
        for l in self.locks.values_mut() {
            if let Some(w) = l.requested {
                if now.is_none_or(|m| m.compatible(w)) {
                    l.probing.remove(&n);
                }
            }
        }
    }

    /// Serves the queues in order, then tells the holders that block what waits.
    pub fn pump(&mut self, out: &mut Vec<MasterOut>) {
        loop {
            let next = if let Some(&head) = self.converting.first() {
                let want = self.locks[&head].requested.expect("converting");
                self.compatible_with_others(head, want)
                    .then_some((head, want))
            } else if let Some(&head) = self.waiting.first() {
                let want = self.locks[&head].requested.expect("waiting");
                self.compatible_with_others(head, want)
                    .then_some((head, want))
            } else {
                None
            };
            let Some((n, want)) = next else { break };
            self.place_granted(n, want);
            out.push(MasterOut::Grant(n, want, self.locks[&n].seq));
        }
        // A trylock whose probed holders all answered and that still cannot
        // be granted (someone else got in first, or a holder went up
        // again) fails now.
        let stuck: Vec<NodeId> = self
            .locks
            .iter()
            .filter(|(_, l)| l.noqueue && l.requested.is_some() && l.probing.is_empty())
            .filter(|(n, l)| !self.compatible_with_others(**n, l.requested.expect("filtered")))
            .map(|(&n, _)| n)
            .collect();
        for n in stuck {
            let want = self.locks[&n].requested.expect("stuck");
            let blockers = self.holders_blocking(n, want);
            self.fail_try(n, want, blockers, out);
        }
        // Basts, once per blocked mode, for queued (non-trylock) requests.
        let queued: Vec<(NodeId, Mode)> = self
            .converting
            .iter()
            .chain(&self.waiting)
            .filter(|n| !self.locks[n].noqueue)
            .map(|&n| (n, self.locks[&n].requested.expect("queued")))
            .collect();
        let holders: Vec<NodeId> = self
            .granted
            .iter()
            .chain(&self.converting)
            .copied()
            .collect();
        for (waiter, mode) in queued {
            for &h in &holders {
                if h == waiter {
                    continue;
                }
                let l = self.locks.get_mut(&h).expect("holder");
                let Some(g) = l.granted else { continue };
                if g.compatible(mode) || l.basted & mode.bit() != 0 {
                    continue;
                }
                l.basted |= mode.bit();
                out.push(MasterOut::Bast(h, mode, false));
            }
        }
    }

    /// After a reconnection, node `n` says what it holds and wants; the
    /// master's record follows it (messages either way may have been lost).
    pub fn resync(
        &mut self,
        n: NodeId,
        granted: Option<Mode>,
        want: Option<(Mode, bool)>,
        pid: i32,
        seq: u64,
        out: &mut Vec<MasterOut>,
    ) {
        self.forget_basts(n);
        let before = self.locks.get(&n).map(|l| (l.granted, l.requested));
        match (before, want) {
            // The grant was lost on the way: say it again.
            (Some((Some(g), _)), Some((w, _))) if g == w => {
                self.place_granted(n, w);
                self.locks.get_mut(&n).expect("placed").seq = seq;
                out.push(MasterOut::Grant(n, w, seq));
            }
            // Nothing was lost on its side.
            (Some((g, r)), w) if g == granted && r == w.map(|w| w.0) => {}
            (None, None) if granted.is_none() => {}
            _ => {
                // The node's word is the truth: it never holds more than the
                // master granted, and it may hold less (an unlock was lost).
                self.remove(n);
                if let Some(g) = granted {
                    self.locks.insert(
                        n,
                        NLock {
                            granted: Some(g),
                            requested: None,
                            noqueue: false,
                            probing: BTreeSet::new(),
                            basted: 0,
                            pid,
                            seq,
                        },
                    );
                    self.granted.push(n);
                }
                if let Some((w, noqueue)) = want {
                    self.request(n, w, noqueue, pid, seq, out);
                }
            }
        }
        // Probes sent to it may have been lost: ask again.
        let held = self.locks.get(&n).and_then(|l| l.granted);
        let probes: Vec<Mode> = self
            .locks
            .values()
            .filter(|l| l.probing.contains(&n))
            .filter_map(|l| l.requested)
            .collect();
        for w in probes {
            if held.is_some_and(|g| !g.compatible(w)) {
                out.push(MasterOut::Bast(n, w, true));
            } else {
                self.probe_answered(n, held);
            }
        }
        self.pump(out);
    }

    /// Rebuilds from one node's report: its granted mode is placed (its
    /// pending request is queued by a `request` call after every holder is
    /// placed, then [`MasterRes::pump`]).
    pub fn restore(&mut self, n: NodeId, granted: Option<Mode>, pid: i32) {
        if let Some(g) = granted {
            self.locks.insert(
                n,
                NLock {
                    granted: Some(g),
                    requested: None,
                    noqueue: false,
                    probing: BTreeSet::new(),
                    basted: 0,
                    pid,
                    seq: 0,
                },
            );
            self.granted.push(n);
        }
    }

    /// After a reconnection with `n`: forget which basts it got (they may
    /// be lost) so they are sent again.
    pub fn forget_basts(&mut self, n: NodeId) {
        if let Some(l) = self.locks.get_mut(&n) {
            l.basted = 0;
        }
    }
}

/// FNV-1a, for rendezvous hashing: the same on every node, no seed.
fn fnv(bytes: &[u8], salt: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes.iter().chain(std::iter::once(&salt)) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finalize (splitmix) so nearby names spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The master of `resource` among `members`: the member with the highest
/// rendezvous weight. Changing membership moves only the resources whose
/// winner joined or left.
pub fn master_of(resource: &[u8], members: &BTreeSet<NodeId>) -> Option<NodeId> {
    members
        .iter()
        .max_by_key(|n| (fnv(resource, n.0), n.0))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let all: BTreeSet<NodeId> = (1..=5).map(NodeId).collect();
        let mut counts = BTreeMap::new();
        for i in 0..1000 {
            let r = format!("res{i}");
            let m = master_of(r.as_bytes(), &all).unwrap();
            *counts.entry(m).or_insert(0) += 1;
            // Removing a node moves only its resources.
            let mut fewer = all.clone();
            fewer.remove(&NodeId(3));
            let m2 = master_of(r.as_bytes(), &fewer).unwrap();
            if m != NodeId(3) {
                assert_eq!(m, m2);
            }
        }
        assert_eq!(counts.len(), 5);
        assert!(counts.values().all(|&c| c > 100), "{counts:?}");
    }

    #[test]
    fn master_queue_rules() {
        let mut m = MasterRes::new();
        let mut out = Vec::new();
        m.request(NodeId(1), Mode::EX, false, 11, 0, &mut out);
        assert!(matches!(
            &out[..],
            [MasterOut::Grant(NodeId(1), Mode::EX, _)]
        ));
        out.clear();
        m.request(NodeId(2), Mode::PR, false, 22, 0, &mut out);
        assert!(matches!(
            &out[..],
            [MasterOut::Bast(NodeId(1), Mode::PR, false)]
        ));
        out.clear();
        // A repeat changes nothing.
        m.request(NodeId(2), Mode::PR, false, 22, 0, &mut out);
        assert!(out.is_empty());
        // The holder comes down to NL (no answer): the PR waiter is granted.
        m.request(NodeId(1), Mode::NL, false, 11, 0, &mut out);
        assert!(
            !out.iter()
                .any(|o| matches!(o, MasterOut::Grant(NodeId(1), _, _)))
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, MasterOut::Grant(NodeId(2), Mode::PR, _)))
        );
        out.clear();
        // A trylock for EX blocked by node 2's PR probes node 2.
        m.request(NodeId(3), Mode::EX, true, 33, 0, &mut out);
        assert!(
            matches!(&out[..], [MasterOut::Bast(NodeId(2), Mode::EX, true)]),
            "{out:?}"
        );
        out.clear();
        m.probe_busy(NodeId(2), 0, &mut out);
        assert!(
            matches!(
                &out[..],
                [MasterOut::Failed(
                    NodeId(3),
                    Mode::EX,
                    NodeFailure::Busy(_),
                    _
                )]
            ),
            "{out:?}"
        );
        assert!(!m.locks.contains_key(&NodeId(3)));
        out.clear();
        // Probe again; this time node 2 unlocks and node 3 is granted.
        m.request(NodeId(3), Mode::EX, true, 33, 0, &mut out);
        out.clear();
        m.unlock(NodeId(2), &mut out);
        // Node 1 still holds NL, which is compatible with EX: node 3 is granted.
        assert!(
            matches!(&out[..], [MasterOut::Grant(NodeId(3), Mode::EX, _)]),
            "{out:?}"
        );
        assert!(
            m.locks
                .get(&NodeId(3))
                .is_some_and(|l| l.granted == Some(Mode::EX))
        );
    }

    #[test]
    fn master_conversion_deadlock() {
        let mut m = MasterRes::new();
        let mut out = Vec::new();
        m.request(NodeId(1), Mode::PR, false, 1, 0, &mut out);
        m.request(NodeId(2), Mode::PR, false, 2, 0, &mut out);
        out.clear();
        m.request(NodeId(1), Mode::EX, false, 1, 0, &mut out);
        assert!(out.iter().all(|o| !matches!(o, MasterOut::Grant(..))));
        out.clear();
        m.request(NodeId(2), Mode::EX, false, 2, 0, &mut out);
        assert!(
            out.iter().any(|o| matches!(
                o,
                MasterOut::Failed(NodeId(2), Mode::EX, NodeFailure::Deadlock(_), _)
            )),
            "{out:?}"
        );
    }
}
