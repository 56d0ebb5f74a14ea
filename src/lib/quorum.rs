//! Quorum: whether this node may keep its locks, and, in a cluster without a
//! shared disk heartbeat, when an unreachable node is dead.
//!
//! The rule is o2quo's. The *voters* are the nodes that are alive: with a
//! disk heartbeat, the nodes heartbeating on it; without one, the nodes this
//! node has been connected to and has not declared dead (a lease each). This
//! node, with `H` voters (itself included) of which `C` are reachable
//! (itself included), keeps its locks if `H` is 1, or
//! - `H` odd: `C ≥ (H + 1) / 2`, a strict majority;
//! - `H` even: `C > H / 2`, or `C = H / 2` with the lowest-numbered voter
//!   among the reachable ones.
//!
//! Two disjoint sets of nodes can never both pass for the same voters, so
//! at most one side of a split keeps its locks.
//!
//! A voter that is not connected still counts as reachable for a while (a
//! closed connection is a reason to check, not a proof of anything): with a
//! disk heartbeat for the hold after its connection went (the heartbeat
//! dead time plus two intervals, as o2net's quorum delay, so a node that
//! crashed is declared dead by its heartbeat before it is ever counted as
//! cut off); without one for `idle_timeout`, and a
//! voter cut off for `idle_timeout + fence_margin` is dead: by then a node
//! on the losing side has fenced itself (see [`Quorum::check`]).
//!
//! Time is the caller's monotonic clock; only durations are compared, so
//! the nodes' clocks need not agree, only run at about the same rate.
//!
//! May depend on: `dlm` (for [`Millis`]), std.

use std::collections::{BTreeMap, BTreeSet};

use crate::dlm::Millis;

/// Whether `me` keeps its locks, given the voters and the nodes it can
/// reach (each set may or may not include `me`; `me` counts in both).
pub fn quorate(me: u8, voters: &BTreeSet<u8>, reachable: &BTreeSet<u8>) -> bool {
    rule(me, voters, |n| reachable.contains(&n))
}

/// The rule, with reachability as a predicate (no set built: lockd asks
/// on every turn of its loop).
fn rule(me: u8, voters: &BTreeSet<u8>, reachable: impl Fn(u8) -> bool) -> bool {
    let others = || voters.iter().copied().filter(|&n| n != me);
    let h = 1 + others().count();
    if h == 1 {
        return true;
    }
    let c = 1 + others().filter(|&n| reachable(n)).count();
    let lowest = others().next().filter(|&n| n < me).unwrap_or(me);
    let lowest_reached = lowest == me || reachable(lowest);
    if h % 2 == 1 {
        c >= h.div_ceil(2)
    } else {
        c > h / 2 || (c == h / 2 && lowest_reached)
    }
}

/// Where the voters come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A shared disk heartbeat: the voters are the nodes alive on it. A
    /// voter whose connection is gone counts as reachable for `hold_ms`.
    Disk {
        /// The heartbeat dead time plus two intervals.
        hold_ms: u64,
    },
    /// No disk heartbeat: a lease per connected node. A voter whose
    /// connection is gone counts as reachable for `idle_timeout`, and is
    /// dead after `idle_timeout + margin_ms`.
    Lease {
        /// The fence margin: more than fencing takes.
        margin_ms: u64,
    },
}

/// What [`Quorum::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// This node may keep its locks.
    pub quorate: bool,
    /// Voters found dead (leases only): no longer voters.
    pub dead: Vec<u8>,
}

/// One node's view of the quorum.
#[derive(Clone, Debug)]
pub struct Quorum {
    me: u8,
    idle_ms: u64,
    source: Source,
    /// The other voters.
    voters: BTreeSet<u8>,
    /// Nodes connected now.
    connected: BTreeSet<u8>,
    /// For each voter not connected: since when (its connection went, or it
    /// became a voter).
    cut_since: BTreeMap<u8, Millis>,
    /// This node has fenced itself: with leases, nobody is declared dead
    /// (the voters it had are the ones it must reach again).
    fenced: bool,
}

impl Quorum {
    /// A view with no other voters yet.
    pub fn new(me: u8, idle_ms: u64, source: Source) -> Quorum {
        Quorum {
            me,
            idle_ms,
            source,
            voters: BTreeSet::new(),
            connected: BTreeSet::new(),
            cut_since: BTreeMap::new(),
            fenced: false,
        }
    }

    /// Changes where the voters come from: to a disk heartbeat, the voters
    /// are set by the next [`Quorum::heartbeating`]; to leases, the nodes
    /// connected now hold one.
    pub fn set_source(&mut self, source: Source) {
        if self.source == source {
            return;
        }
        self.source = source;
        if let Source::Lease { .. } = source {
            self.voters = self.connected.clone();
            self.cut_since.clear();
        }
    }

    /// The other voters.
    pub fn voters(&self) -> &BTreeSet<u8> {
        &self.voters
    }

    /// The nodes alive on the disk heartbeat (disk source only).
    pub fn heartbeating(&mut self, now: Millis, live: &BTreeSet<u8>) {
        if !matches!(self.source, Source::Disk { .. }) {
            return;
        }
        let me = self.me;
        let live: BTreeSet<u8> = live.iter().copied().filter(|&n| n != me).collect();
        for &n in live.difference(&self.voters) {
            if !self.connected.contains(&n) {
                self.cut_since.insert(n, now);
            }
        }
        self.cut_since.retain(|n, _| live.contains(n));
        self.voters = live;
    }

    /// A connection to `n` is up.
    pub fn connected(&mut self, n: u8) {
        if n == self.me {
            return;
        }
        self.connected.insert(n);
        self.cut_since.remove(&n);
        if let Source::Lease { .. } = self.source {
            self.voters.insert(n);
        }
    }

    /// The connection to `n` is gone.
    pub fn disconnected(&mut self, now: Millis, n: u8) {
        if self.connected.remove(&n) && self.voters.contains(&n) {
            self.cut_since.insert(n, now);
        }
    }

    /// Every connection is gone (this node closed them).
    pub fn disconnected_all(&mut self, now: Millis) {
        let all: Vec<u8> = self.connected.iter().copied().collect();
        for n in all {
            self.disconnected(now, n);
        }
    }

    /// `n` was declared dead by other means (its heartbeat, a restart):
    /// with leases it is no longer a voter until it connects again.
    pub fn dead(&mut self, n: u8) {
        if let Source::Lease { .. } = self.source {
            if !self.connected.contains(&n) {
                self.voters.remove(&n);
                self.cut_since.remove(&n);
            }
        }
    }

    /// This node fenced itself (or is back): while fenced, leases do not
    /// expire.
    pub fn set_fenced(&mut self, now: Millis, fenced: bool) {
        if self.fenced && !fenced {
            // The clocks of voters still cut off start again.
            for t in self.cut_since.values_mut() {
                *t = now;
            }
        }
        self.fenced = fenced;
    }

    fn reach_ms(&self) -> u64 {
        match self.source {
            Source::Disk { hold_ms } => hold_ms,
            Source::Lease { .. } => self.idle_ms,
        }
    }

    fn dead_ms(&self) -> Option<u64> {
        match self.source {
            Source::Lease { margin_ms } if !self.fenced => Some(self.idle_ms + margin_ms),
            _ => None,
        }
    }

    /// The voters reachable now: connected, or cut off too recently to tell
    /// (not while fenced: a fenced node must really reach a quorum again).
    pub fn reachable(&self, now: Millis) -> BTreeSet<u8> {
        self.voters
            .iter()
            .copied()
            .filter(|&n| self.reaches(now, n))
            .collect()
    }

    fn reaches(&self, now: Millis, n: u8) -> bool {
        let reach = if self.fenced { 0 } else { self.reach_ms() };
        self.connected.contains(&n)
            || self
                .cut_since
                .get(&n)
                .is_none_or(|&t| now.0.saturating_sub(t.0) < reach)
    }

    /// Decides: leases past their margin are dead (no longer voters), then
    /// whether this node is on the side that keeps its locks.
    pub fn check(&mut self, now: Millis) -> Verdict {
        let mut dead = Vec::new();
        if let Some(d) = self.dead_ms() {
            for (&n, &t) in &self.cut_since {
                if now.0.saturating_sub(t.0) >= d {
                    dead.push(n);
                }
            }
            for n in &dead {
                self.voters.remove(n);
                self.cut_since.remove(n);
            }
        }
        Verdict {
            quorate: rule(self.me, &self.voters, |n| self.reaches(now, n)),
            dead,
        }
    }

    /// When [`Quorum::check`] may next find something new.
    pub fn next_deadline(&self) -> Option<Millis> {
        let reach = self.reach_ms();
        let dead = self.dead_ms();
        self.cut_since
            .values()
            .flat_map(|&t| [Some(t.after(reach)), dead.map(|d| t.after(d))])
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u8]) -> BTreeSet<u8> {
        v.iter().copied().collect()
    }

    #[test]
    fn the_o2quo_rule() {
        // (me, voters, reachable, quorate)
        let cases: &[(u8, &[u8], &[u8], bool)] = &[
            (1, &[], &[], true),
            (1, &[1], &[], true),
            // Odd: a strict majority.
            (1, &[1, 2, 3], &[2], true),
            (1, &[1, 2, 3], &[], false),
            (3, &[1, 2, 3], &[], false),
            (3, &[1, 2, 3], &[1], true),
            (2, &[1, 2, 3, 4, 5], &[4, 5], true),
            (2, &[1, 2, 3, 4, 5], &[4], false),
            // Even: half with the lowest node, or more than half.
            (1, &[1, 2], &[], true),
            (2, &[1, 2], &[], false),
            (2, &[1, 2], &[1], true),
            (1, &[1, 2, 3, 4], &[4], true),
            (3, &[1, 2, 3, 4], &[4], false),
            (3, &[1, 2, 3, 4], &[1], true),
            (3, &[1, 2, 3, 4], &[1, 4], true),
            (4, &[1, 2, 3, 4], &[], false),
            // Nodes that are not voters do not count.
            (2, &[1, 2, 3], &[5, 6], false),
        ];
        for &(me, v, r, want) in cases {
            assert_eq!(quorate(me, &set(v), &set(r)), want, "{me} {v:?} {r:?}");
        }
    }

    #[test]
    fn two_disjoint_sides_never_both_keep_their_locks() {
        // Every split of up to 7 voters into two sides, each side able to
        // reach only itself.
        for n in 1..=7u8 {
            let all: Vec<u8> = (1..=n).collect();
            for mask in 0u32..(1 << n) {
                let a: BTreeSet<u8> = all
                    .iter()
                    .copied()
                    .filter(|i| mask & (1 << (i - 1)) != 0)
                    .collect();
                let b: BTreeSet<u8> = all.iter().copied().filter(|i| !a.contains(i)).collect();
                let voters = set(&all);
                let a_ok = a.first().is_some_and(|&m| quorate(m, &voters, &a));
                let b_ok = b.first().is_some_and(|&m| quorate(m, &voters, &b));
                assert!(!(a_ok && b_ok), "{a:?} and {b:?} both quorate");
                // And one side always keeps them.
                assert!(a_ok || b_ok, "{a:?} | {b:?}: neither side quorate");
            }
        }
    }

    #[test]
    fn with_a_disk_heartbeat_a_cut_off_voter_counts_until_the_hold_ends() {
        let mut q = Quorum::new(2, 1000, Source::Disk { hold_ms: 5000 });
        q.heartbeating(Millis(0), &set(&[1, 2]));
        q.connected(1);
        assert!(q.check(Millis(10)).quorate);
        q.disconnected(Millis(100), 1);
        // Reconnecting in time is nothing.
        assert!(q.check(Millis(100 + 4999)).quorate);
        assert_eq!(q.next_deadline(), Some(Millis(5100)));
        let v = q.check(Millis(5100));
        assert!(!v.quorate, "node 2 alone without the lowest node");
        assert!(v.dead.is_empty(), "the heartbeat says who is dead");
        // The heartbeat declares node 1 dead: node 2 is alone and fine.
        q.heartbeating(Millis(6200), &set(&[2]));
        assert!(q.check(Millis(6200)).quorate);
    }

    #[test]
    fn a_new_heartbeating_node_has_time_to_connect() {
        let mut q = Quorum::new(1, 1000, Source::Disk { hold_ms: 3000 });
        q.heartbeating(Millis(0), &set(&[1]));
        q.heartbeating(Millis(500), &set(&[1, 2, 3]));
        assert!(q.check(Millis(3499)).quorate);
        assert!(!q.check(Millis(3500)).quorate);
        q.connected(3);
        assert!(q.check(Millis(4600)).quorate);
    }

    #[test]
    fn with_leases_the_majority_declares_the_cut_off_node_dead_after_the_margin() {
        let idle = 1000;
        let margin = 4000;
        let src = Source::Lease { margin_ms: margin };
        let mut major = Quorum::new(1, idle, src);
        let mut minor = Quorum::new(3, idle, src);
        for n in [2, 3] {
            major.connected(n);
        }
        for n in [1, 2] {
            minor.connected(n);
        }
        // Node 3 is cut off at t=100.
        major.disconnected(Millis(100), 3);
        for n in [1, 2] {
            minor.disconnected(Millis(100), n);
        }
        let fenced_at = (100..10_000)
            .find(|&t| !minor.check(Millis(t)).quorate)
            .expect("the minority fences");
        assert_eq!(fenced_at, 100 + idle);
        minor.set_fenced(Millis(fenced_at), true);
        let mut dead_at = None;
        for t in 100..10_000 {
            let v = major.check(Millis(t));
            assert!(v.quorate, "the majority keeps its locks at {t}");
            if !v.dead.is_empty() {
                assert_eq!(v.dead, vec![3]);
                dead_at = Some(t);
                break;
            }
        }
        assert_eq!(dead_at, Some(100 + idle + margin));
        assert_eq!(major.voters(), &set(&[2]));
        // The fenced node forgets nobody: alone it is still not quorate.
        assert!(minor.check(Millis(60_000)).dead.is_empty());
        assert!(!minor.check(Millis(60_000)).quorate);
        // Back in touch with the others, it is.
        minor.connected(1);
        minor.connected(2);
        minor.set_fenced(Millis(60_001), false);
        assert!(minor.check(Millis(60_001)).quorate);
    }

    #[test]
    fn a_lease_node_alone_from_the_start_is_quorate() {
        let mut q = Quorum::new(2, 1000, Source::Lease { margin_ms: 100 });
        assert!(q.check(Millis(0)).quorate);
        assert_eq!(q.next_deadline(), None);
        q.connected(1);
        q.disconnected(Millis(10), 1);
        q.dead(1);
        assert!(q.check(Millis(20)).quorate);
        assert!(q.voters().is_empty());
    }
}
