//! The o2hb liveness rules for one heartbeat region, as a pure state machine.
//!
//! The caller owns the clock and the disk. Once per heartbeat interval
//! ([`REGION_TIMEOUT_MS`]) it reads the slots of every configured node and
//! hands them to [`Liveness::sample`] *before* writing its own slot, then
//! reports what it wrote with [`Liveness::wrote`]. `sample` returns the
//! membership [`Event`]s the reads imply. Nothing here does I/O, reads a
//! clock or draws random numbers.
//!
//! # Rules
//!
//! The slot index is the node number, and liveness is tracked per slot.
//! For every sampled slot other than our own:
//!
//! - **Baseline.** The first content known for a slot (from
//!   [`Liveness::start`], or else from the first sample that reads it) only
//!   records its seq and generation; it never counts as activity, so blocks
//!   left behind by earlier runs cannot bring a node up. Like the kernel, the
//!   baseline is taken whatever the checksum says.
//! - **Bad checksum.** Ignored silently while the node is not live (fresh
//!   areas carry no checksum); for a live node it is reported
//!   ([`Event::BadChecksum`]) and counted as a sample without change. Nothing
//!   else of such a block is used.
//! - **Counting.** A seq different from the last one seen is a *changed*
//!   sample, an equal seq an *equal* sample.
//! - **Restart.** A new non-zero generation means the writer restarted: the
//!   equal count is cleared, and a live node goes down at once
//!   ([`DownReason::GenerationChanged`]). Its changed count is kept, so the
//!   sample carrying the new generation counts towards bringing it up again.
//! - **Clean stop.** A block with generation 0 is what a node writes when it
//!   stops heartbeating: a live node goes down at once
//!   ([`DownReason::CleanStop`]). Such blocks never count as activity and clear
//!   both counts, so a restarted node needs `live_threshold` fresh changes.
//! - **Up.** A node that is not live comes up once its changed count reaches
//!   `live_threshold` ([`Event::NodeUp`]), with [`Event::DeadMsMismatch`] as
//!   well if it announces a non-zero dead time different from ours.
//! - **Down.** A live node goes down once its equal count reaches
//!   `dead_threshold` ([`DownReason::Timeout`]); any change on a live node
//!   clears both counts.
//! - **Unreadable slots** ([`SlotRead::Unreadable`]) are no sample at all:
//!   counts are left alone. (The kernel skips the whole iteration when its
//!   read fails; self-fencing on a stuck disk is the caller's write timeout.)
//!
//! Changes of a node that is not live need not be consecutive, as in the
//! kernel, which never clears the changed count while a node is not live:
//! two changes separated by any number of quiet samples bring a node up.
//! Setting [`LivenessConfig::consecutive_changes`] instead clears the changed
//! count on every sample without change, so a node must change on
//! `live_threshold` consecutive samples.
//!
//! - **Another node in the slot.** A block whose `node` field differs from
//!   its slot (a misconfigured node writing someone else's slot) says
//!   nothing of the slot's node: it is reported once per change of writer
//!   ([`Event::ForeignWriter`], and [`SlotStatus::writer`]) and otherwise
//!   counts like a damaged block, as a sample without change, leaving the
//!   seq and generation of the slot's node alone. So another node can
//!   neither keep the slot's node alive, nor bring it up, nor make it look
//!   restarted; the slot's node, which sees the other writer in its own
//!   slot, fences itself, and the others declare it dead by its clean stop
//!   or by silence, never while it may still hold locks. (The kernel counts
//!   such blocks as the slot's activity, so its generation flips between
//!   the two writers and the slot's node is declared down at once, while it
//!   still runs.)
//!
//! Our own slot is not evaluated as a peer and never becomes live here (the
//! kernel does evaluate it, so there the local node shows up in its own live
//! map; a caller wanting that can count itself live while its writes read
//! back).
//! Once [`Liveness::wrote`] has been called, every sample compares what is
//! read from our slot with what we last wrote and reports
//! [`Event::OwnSlotMismatch`] on every sample where they differ (the kernel
//! then still writes, but does not re-arm its write timeout).
//!
//! Small deliberate differences from the kernel: both counts are cleared when
//! a node comes up (the kernel keeps the changed count until the next sample),
//! generation 0 is a clean stop rather than just another generation, and a
//! bad checksum on our own slot is reported even when the fields match.

use std::fmt;

use super::format::{Decoded, FormatError, HbBlock};

/// The heartbeat interval: how often a region is read and written.
pub const REGION_TIMEOUT_MS: u32 = 2000;
/// Default number of unchanged samples after which a live node is dead.
pub const DEFAULT_DEAD_THRESHOLD: u32 = 31;
/// Number of changed samples after which a node is live.
pub const LIVE_THRESHOLD: u32 = 2;
/// The default dead time written into heartbeat blocks (31 × 2000 ms).
pub const DEFAULT_DEAD_MS: u32 = DEFAULT_DEAD_THRESHOLD * REGION_TIMEOUT_MS;

/// Settings of a [`Liveness`] tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Our node number; its slot is checked, not evaluated as a peer.
    pub our_node: u8,
    /// Unchanged samples after which a live node is declared dead (at least 1).
    pub dead_threshold: u32,
    /// Changed samples after which a node is declared live (at least 1).
    pub live_threshold: u32,
    /// Our dead time in milliseconds, compared with what peers announce.
    pub dead_ms: u32,
    /// Require `live_threshold` changes on consecutive samples instead of at
    /// any time while the node is not live (the kernel's rule, the default).
    pub consecutive_changes: bool,
}

impl LivenessConfig {
    /// The kernel defaults for `our_node`: dead after 31 unchanged samples,
    /// live after 2 changes, 62000 ms dead time, changes need not be
    /// consecutive.
    pub fn new(our_node: u8) -> Self {
        Self {
            our_node,
            dead_threshold: DEFAULT_DEAD_THRESHOLD,
            live_threshold: LIVE_THRESHOLD,
            dead_ms: DEFAULT_DEAD_MS,
            consecutive_changes: false,
        }
    }
}

/// What was read from one slot in a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRead {
    /// The slot was read and decoded (the checksum may still be bad).
    Block(Decoded),
    /// The slot could not be read or decoded; it counts as no sample.
    Unreadable,
}

impl From<Decoded> for SlotRead {
    fn from(d: Decoded) -> Self {
        SlotRead::Block(d)
    }
}

impl From<Result<Decoded, FormatError>> for SlotRead {
    fn from(r: Result<Decoded, FormatError>) -> Self {
        match r {
            Ok(d) => SlotRead::Block(d),
            Err(_) => SlotRead::Unreadable,
        }
    }
}

/// The identifying fields of a heartbeat block, as compared in our own slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The writer's node number.
    pub node: u8,
    /// The writer's generation.
    pub generation: u64,
    /// The block's seq.
    pub seq: u64,
}

impl From<&HbBlock> for Stamp {
    fn from(b: &HbBlock) -> Self {
        Self {
            node: b.node,
            generation: b.generation,
            seq: b.seq,
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:0x{:x}, 0x{:x}", self.node, self.generation, self.seq)
    }
}

/// Why a node went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// Its slot did not change for `dead_threshold` samples.
    Timeout,
    /// It started writing a new generation (it restarted).
    GenerationChanged,
    /// It wrote generation 0 (it stopped heartbeating cleanly).
    CleanStop,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DownReason::Timeout => "heartbeat timed out",
            DownReason::GenerationChanged => "generation changed",
            DownReason::CleanStop => "stopped heartbeating",
        })
    }
}

/// How our own slot differs from what we last wrote, in the order checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MismatchKind {
    /// Another node number is written there.
    OtherNode,
    /// Our node number, but another generation.
    Generation,
    /// Our node and generation, but another seq.
    Sequence,
    /// The fields match but the checksum does not.
    Checksum,
}

/// Something a sample revealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A node became live.
    NodeUp {
        /// The node (slot) that came up.
        node: u8,
        /// The node number in the block that brought it up; differs from
        /// `node` when another node writes this slot.
        writer: u8,
    },
    /// A live node is live no more.
    NodeDown {
        /// The node (slot) that went down.
        node: u8,
        /// Why.
        reason: DownReason,
    },
    /// A live node's slot failed its checksum (counted as a sample without
    /// change).
    BadChecksum {
        /// The slot.
        slot: u8,
        /// The node number as read from the damaged block; may be junk.
        node: u8,
    },
    /// Our own slot does not hold what we last wrote.
    OwnSlotMismatch {
        /// What we wrote.
        expected: Stamp,
        /// What is on disk.
        found: Stamp,
        /// The first difference.
        kind: MismatchKind,
    },
    /// Another node writes this peer's slot (from now on: reported when
    /// the writer changes).
    ForeignWriter {
        /// The slot.
        slot: u8,
        /// The node number in the block.
        writer: u8,
    },
    /// A node came up announcing a dead time different from ours.
    DeadMsMismatch {
        /// The node.
        node: u8,
        /// Its dead time in milliseconds.
        theirs: u32,
        /// Ours.
        ours: u32,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::NodeUp { node, writer } if node == writer => write!(f, "node {node} is up"),
            Event::NodeUp { node, writer } => {
                write!(
                    f,
                    "node {node} is up (its slot is written by node {writer})"
                )
            }
            Event::NodeDown { node, reason } => write!(f, "node {node} is down: {reason}"),
            Event::BadChecksum { slot, .. } => {
                write!(f, "node {slot} has written a bad checksum")
            }
            Event::ForeignWriter { slot, writer } => write!(
                f,
                "node {writer} writes node {slot}'s heartbeat slot (not a sign of life of node {slot})"
            ),
            Event::OwnSlotMismatch {
                expected,
                found,
                kind,
            } => {
                let what = match kind {
                    MismatchKind::OtherNode => "another node is heartbeating in our slot",
                    MismatchKind::Generation => "heartbeat generation mismatch in our slot",
                    MismatchKind::Sequence => "heartbeat sequence mismatch in our slot",
                    MismatchKind::Checksum => "our slot has a bad checksum",
                };
                write!(f, "{what}: expected({expected}), ondisk({found})")
            }
            Event::DeadMsMismatch { node, theirs, ours } => write!(
                f,
                "node {node} has a dead time of {theirs} ms, but ours is {ours} ms"
            ),
        }
    }
}

/// What is known about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStatus {
    /// Whether the slot's node is live (never for our own slot).
    pub live: bool,
    /// The last seq seen.
    pub seq: u64,
    /// The last generation seen.
    pub generation: u64,
    /// The node number in the last block seen.
    pub writer: u8,
    /// The dead time in the last block seen.
    pub dead_ms: u32,
    /// The `now_ms` of the sample in which the seq last changed; None while
    /// it has not changed since the baseline.
    pub seq_changed_ms: Option<u64>,
    /// Changed samples counted towards coming up.
    pub changed_samples: u32,
    /// Unchanged samples counted towards going down.
    pub equal_samples: u32,
}

impl SlotStatus {
    fn baseline(b: &HbBlock) -> Self {
        Self {
            live: false,
            seq: b.seq,
            generation: b.generation,
            writer: b.node,
            dead_ms: b.dead_ms,
            seq_changed_ms: None,
            changed_samples: 0,
            equal_samples: 0,
        }
    }
}

/// Per-region liveness of the nodes heartbeating there.
#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    /// Indexed by slot number; 256 entries so any `u8` is in range.
    slots: Vec<Option<SlotStatus>>,
    last_written: Option<Stamp>,
}

impl Liveness {
    /// A tracker with nothing known. Thresholds of 0 are raised to 1.
    pub fn new(config: LivenessConfig) -> Self {
        let config = LivenessConfig {
            dead_threshold: config.dead_threshold.max(1),
            live_threshold: config.live_threshold.max(1),
            ..config
        };
        Self {
            config,
            slots: vec![None; 256],
            last_written: None,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Forgets everything and records the content of each slot as read when
    /// the region starts, so that it never counts as activity. A `None` read
    /// (or a slot not listed) takes its baseline from the first sample that
    /// reads it instead. Produces no events.
    pub fn start(&mut self, initial: &[(u8, Option<Decoded>)]) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.last_written = None;
        for (slot, read) in initial {
            if let Some(d) = read {
                self.slots[usize::from(*slot)] = Some(SlotStatus::baseline(&d.block));
            }
        }
    }

    /// Records what we have just written into our own slot; later samples
    /// expect to read it back.
    pub fn wrote(&mut self, block: &HbBlock) {
        self.last_written = Some(Stamp::from(block));
    }

    /// Evaluates one heartbeat interval's reads, taken at `now_ms` (any
    /// monotonic milliseconds; only stored for [`SlotStatus::seq_changed_ms`])
    /// before our own write of this interval. Each slot should be listed
    /// once; events come in the order of `slots`.
    pub fn sample(&mut self, now_ms: u64, slots: &[(u8, SlotRead)]) -> Vec<Event> {
        let mut events = Vec::new();
        for (slot, read) in slots {
            let SlotRead::Block(d) = read else { continue };
            if *slot == self.config.our_node {
                self.check_own(now_ms, *slot, d, &mut events);
            } else {
                self.check_peer(now_ms, *slot, d, &mut events);
            }
        }
        events
    }

    fn check_own(&mut self, now_ms: u64, slot: u8, d: &Decoded, events: &mut Vec<Event>) {
        let b = &d.block;
        match &mut self.slots[usize::from(slot)] {
            Some(st) => {
                if st.seq != b.seq {
                    st.seq_changed_ms = Some(now_ms);
                }
                st.seq = b.seq;
                st.generation = b.generation;
                st.writer = b.node;
                st.dead_ms = b.dead_ms;
            }
            empty @ None => *empty = Some(SlotStatus::baseline(b)),
        }
        let Some(expected) = self.last_written else {
            return;
        };
        let found = Stamp::from(b);
        let kind = if found.node != expected.node {
            MismatchKind::OtherNode
        } else if found.generation != expected.generation {
            MismatchKind::Generation
        } else if found.seq != expected.seq {
            MismatchKind::Sequence
        } else if !d.checksum_ok {
            MismatchKind::Checksum
        } else {
            return;
        };
        events.push(Event::OwnSlotMismatch {
            expected,
            found,
            kind,
        });
    }

    fn check_peer(&mut self, now_ms: u64, slot: u8, d: &Decoded, events: &mut Vec<Event>) {
        let cfg = self.config;
        let entry = &mut self.slots[usize::from(slot)];
        let Some(st) = entry else {
            *entry = Some(SlotStatus::baseline(&d.block));
            return;
        };

        if !d.checksum_ok {
            if st.live {
                events.push(Event::BadChecksum {
                    slot,
                    node: d.block.node,
                });
                st.equal_samples = st.equal_samples.saturating_add(1);
                if st.equal_samples >= cfg.dead_threshold {
                    Self::go_down(st, slot, DownReason::Timeout, events);
                }
            }
            return;
        }

        let b = &d.block;
        if b.node != slot {
            if st.writer != b.node {
                events.push(Event::ForeignWriter {
                    slot,
                    writer: b.node,
                });
            }
            st.writer = b.node;
            if st.live {
                st.equal_samples = st.equal_samples.saturating_add(1);
                if st.equal_samples >= cfg.dead_threshold {
                    Self::go_down(st, slot, DownReason::Timeout, events);
                }
            } else if cfg.consecutive_changes {
                st.changed_samples = 0;
            }
            return;
        }
        let changed = b.seq != st.seq;
        if changed {
            st.seq = b.seq;
            st.seq_changed_ms = Some(now_ms);
            st.changed_samples = st.changed_samples.saturating_add(1);
        } else {
            st.equal_samples = st.equal_samples.saturating_add(1);
        }
        st.writer = b.node;
        st.dead_ms = b.dead_ms;

        if b.generation == 0 {
            st.generation = 0;
            if st.live {
                Self::go_down(st, slot, DownReason::CleanStop, events);
            }
            st.changed_samples = 0;
            st.equal_samples = 0;
            return;
        }
        if b.generation != st.generation {
            st.generation = b.generation;
            st.equal_samples = 0;
            if st.live {
                // The changed count is kept: this block already shows the
                // new incarnation at work.
                st.live = false;
                events.push(Event::NodeDown {
                    node: slot,
                    reason: DownReason::GenerationChanged,
                });
                return;
            }
        }

        if !st.live {
            if st.changed_samples >= cfg.live_threshold {
                st.live = true;
                st.changed_samples = 0;
                st.equal_samples = 0;
                events.push(Event::NodeUp {
                    node: slot,
                    writer: b.node,
                });
                if b.dead_ms != 0 && b.dead_ms != cfg.dead_ms {
                    events.push(Event::DeadMsMismatch {
                        node: slot,
                        theirs: b.dead_ms,
                        ours: cfg.dead_ms,
                    });
                }
            } else if cfg.consecutive_changes && !changed {
                st.changed_samples = 0;
            }
            return;
        }

        if st.equal_samples >= cfg.dead_threshold {
            Self::go_down(st, slot, DownReason::Timeout, events);
        } else if changed {
            st.changed_samples = 0;
            st.equal_samples = 0;
        }
    }

    fn go_down(st: &mut SlotStatus, slot: u8, reason: DownReason, events: &mut Vec<Event>) {
        st.live = false;
        st.changed_samples = 0;
        st.equal_samples = 0;
        events.push(Event::NodeDown { node: slot, reason });
    }

    /// Whether `node` is live.
    pub fn is_live(&self, node: u8) -> bool {
        self.slots[usize::from(node)].is_some_and(|s| s.live)
    }

    /// The live nodes, in ascending order.
    pub fn live_nodes(&self) -> Vec<u8> {
        (0..=u8::MAX).filter(|&n| self.is_live(n)).collect()
    }

    /// What is known about `slot`; None until something has been read there.
    pub fn slot(&self, slot: u8) -> Option<SlotStatus> {
        self.slots[usize::from(slot)]
    }

    /// Milliseconds from the last change of `slot`'s seq to `now_ms`; None if
    /// it has not changed since its baseline.
    pub fn seq_age_ms(&self, slot: u8, now_ms: u64) -> Option<u64> {
        self.slot(slot)?
            .seq_changed_ms
            .map(|t| now_ms.saturating_sub(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::format::{decode, encode_vec};

    const ME: u8 = 1;
    const PEER: u8 = 3;
    const G: u64 = 0x1122_3344_5566_7788;
    const G2: u64 = 0x0a0b_0c0d_0e0f_1011;
    const STEP_MS: u64 = REGION_TIMEOUT_MS as u64;

    fn decoded(node: u8, seq: u64, generation: u64, dead_ms: u32) -> Decoded {
        let b = HbBlock {
            seq,
            node,
            generation,
            dead_ms,
        };
        decode(&encode_vec(&b, 512).unwrap()).unwrap()
    }

    fn ok(seq: u64, generation: u64) -> SlotRead {
        SlotRead::Block(decoded(PEER, seq, generation, DEFAULT_DEAD_MS))
    }

    fn with_dead_ms(seq: u64, dead_ms: u32) -> SlotRead {
        SlotRead::Block(decoded(PEER, seq, G, dead_ms))
    }

    fn written_by(writer: u8, seq: u64) -> SlotRead {
        SlotRead::Block(decoded(writer, seq, G, DEFAULT_DEAD_MS))
    }

    /// A block whose checksum fails (a damaged tail byte).
    fn bad(seq: u64, generation: u64) -> SlotRead {
        let b = HbBlock {
            seq,
            node: PEER,
            generation,
            dead_ms: DEFAULT_DEAD_MS,
        };
        let mut raw = encode_vec(&b, 512).unwrap();
        raw[400] = 0x5a;
        let d = decode(&raw).unwrap();
        assert!(!d.checksum_ok);
        SlotRead::Block(d)
    }

    fn changes(from: u64, n: usize) -> Vec<SlotRead> {
        (0..n as u64).map(|i| ok(from + i, G)).collect()
    }

    fn same(seq: u64, n: usize) -> Vec<SlotRead> {
        vec![ok(seq, G); n]
    }

    fn cat<T>(parts: Vec<Vec<T>>) -> Vec<T> {
        parts.into_iter().flatten().collect()
    }

    fn up(at: usize) -> (usize, Event) {
        (
            at,
            Event::NodeUp {
                node: PEER,
                writer: PEER,
            },
        )
    }

    fn down(at: usize, reason: DownReason) -> (usize, Event) {
        (at, Event::NodeDown { node: PEER, reason })
    }

    fn foreign(at: usize, writer: u8) -> (usize, Event) {
        (at, Event::ForeignWriter { slot: PEER, writer })
    }

    fn bad_ck(at: usize) -> (usize, Event) {
        (
            at,
            Event::BadChecksum {
                slot: PEER,
                node: PEER,
            },
        )
    }

    enum Init {
        /// `start` with this block in the peer's slot.
        Block(SlotRead),
        /// `start` with the slot unreadable.
        Unknown,
        /// `start` never called.
        NoStart,
    }

    struct Case {
        name: &'static str,
        consecutive: bool,
        init: Init,
        reads: Vec<SlotRead>,
        /// Every event expected, with the index of the sample producing it.
        want: Vec<(usize, Event)>,
        live_at_end: bool,
    }

    fn case(
        name: &'static str,
        reads: Vec<SlotRead>,
        want: Vec<(usize, Event)>,
        live: bool,
    ) -> Case {
        Case {
            name,
            consecutive: false,
            init: Init::Block(ok(100, G)),
            reads,
            want,
            live_at_end: live,
        }
    }

    fn run(c: &Case) -> (Liveness, Vec<(usize, Event)>) {
        let mut cfg = LivenessConfig::new(ME);
        cfg.consecutive_changes = c.consecutive;
        let mut l = Liveness::new(cfg);
        match &c.init {
            Init::Block(SlotRead::Block(d)) => l.start(&[(PEER, Some(*d))]),
            Init::Block(SlotRead::Unreadable) | Init::Unknown => l.start(&[(PEER, None)]),
            Init::NoStart => {}
        }
        let mut got = Vec::new();
        for (i, r) in c.reads.iter().enumerate() {
            let now = i as u64 * STEP_MS;
            got.extend(l.sample(now, &[(PEER, *r)]).into_iter().map(|e| (i, e)));
        }
        (l, got)
    }

    #[test]
    fn peer_rules() {
        use DownReason::*;
        let cases = vec![
            case("up after two changes", changes(101, 2), vec![up(1)], true),
            case(
                "not up after one change",
                cat(vec![changes(101, 1), same(101, 40)]),
                vec![],
                false,
            ),
            case(
                "changes need not be consecutive (kernel)",
                cat(vec![changes(101, 1), same(101, 5), changes(102, 1)]),
                vec![up(6)],
                true,
            ),
            Case {
                consecutive: true,
                ..case(
                    "consecutive mode: a quiet sample clears the count",
                    cat(vec![
                        changes(101, 1),
                        same(101, 5),
                        changes(102, 1),
                        changes(103, 1),
                    ]),
                    vec![up(7)],
                    true,
                )
            },
            case(
                "down after exactly dead_threshold unchanged samples",
                cat(vec![changes(101, 2), same(102, 31)]),
                vec![up(1), down(32, Timeout)],
                false,
            ),
            case(
                "not down one sample before",
                cat(vec![changes(101, 2), same(102, 30)]),
                vec![up(1)],
                true,
            ),
            case(
                "a change restarts the dead count",
                cat(vec![
                    changes(101, 2),
                    same(102, 30),
                    changes(103, 1),
                    same(103, 30),
                ]),
                vec![up(1)],
                true,
            ),
            case(
                "after a timeout, two fresh changes are needed",
                cat(vec![
                    changes(101, 2),
                    same(102, 31),
                    changes(103, 1),
                    same(103, 3),
                    changes(104, 1),
                ]),
                vec![up(1), down(32, Timeout), up(37)],
                true,
            ),
            case(
                "generation change: down at once, up on the next change",
                vec![ok(101, G), ok(102, G), ok(103, G2), ok(104, G2)],
                vec![up(1), down(2, GenerationChanged), up(3)],
                true,
            ),
            case(
                "generation change with an unchanged seq still restarts",
                vec![
                    ok(101, G),
                    ok(102, G),
                    ok(102, G2),
                    ok(103, G2),
                    ok(104, G2),
                ],
                vec![up(1), down(2, GenerationChanged), up(4)],
                true,
            ),
            case(
                "clean stop: down at once; a restart needs two fresh changes",
                cat(vec![
                    vec![ok(101, G), ok(102, G), ok(103, 0)],
                    vec![ok(103, 0); 40],
                    vec![ok(200, G2), ok(201, G2)],
                ]),
                vec![up(1), down(2, CleanStop), up(44)],
                true,
            ),
            case(
                "generation-0 blocks never bring a node up",
                vec![ok(101, 0), ok(102, 0), ok(103, 0), ok(104, 0)],
                vec![],
                false,
            ),
            Case {
                init: Init::Block(SlotRead::Block(decoded(0, 0, 0, 0))),
                ..case(
                    "a node starting from a fresh (zero) slot",
                    vec![ok(1, G), ok(2, G)],
                    vec![up(1)],
                    true,
                )
            },
            case(
                "bad checksum on a node that is not live is ignored",
                cat(vec![
                    vec![bad(500, G); 40],
                    changes(101, 1),
                    vec![bad(7, G2); 3],
                    changes(102, 1),
                ]),
                vec![up(44)],
                true,
            ),
            case(
                "bad checksum on a live node is reported and counted as a miss",
                cat(vec![changes(101, 2), vec![bad(103, G); 31]]),
                cat(vec![
                    vec![up(1)],
                    (2..33).map(bad_ck).collect(),
                    vec![down(32, Timeout)],
                ]),
                false,
            ),
            case(
                "bad checksums followed by a change keep the node live",
                cat(vec![
                    changes(101, 2),
                    vec![bad(103, G); 30],
                    changes(103, 1),
                    same(103, 30),
                ]),
                cat(vec![vec![up(1)], (2..32).map(bad_ck).collect()]),
                true,
            ),
            case(
                "unreadable samples count for nothing",
                cat(vec![
                    changes(101, 2),
                    vec![SlotRead::Unreadable; 100],
                    same(102, 30),
                ]),
                vec![up(1)],
                true,
            ),
            case(
                "dead_ms mismatch is reported when the node comes up",
                vec![with_dead_ms(101, 122_000), with_dead_ms(102, 122_000)],
                vec![
                    up(1),
                    (
                        1,
                        Event::DeadMsMismatch {
                            node: PEER,
                            theirs: 122_000,
                            ours: DEFAULT_DEAD_MS,
                        },
                    ),
                ],
                true,
            ),
            case(
                "dead_ms 0 is not a mismatch",
                vec![with_dead_ms(101, 0), with_dead_ms(102, 0)],
                vec![up(1)],
                true,
            ),
            case(
                "another node writing the slot is no activity of the slot",
                vec![written_by(5, 101), written_by(5, 102), written_by(5, 103)],
                vec![foreign(0, 5)],
                false,
            ),
            case(
                "another node in a live node's slot neither keeps it alive",
                cat(vec![
                    changes(101, 2),
                    (0..u64::from(DEFAULT_DEAD_THRESHOLD))
                        .map(|i| written_by(5, 200 + i))
                        .collect(),
                ]),
                vec![
                    up(1),
                    foreign(2, 5),
                    down(1 + DEFAULT_DEAD_THRESHOLD as usize, DownReason::Timeout),
                ],
                false,
            ),
            case(
                "nor makes it look restarted (alternating writers)",
                cat(vec![
                    changes(101, 2),
                    (0..10)
                        .flat_map(|i| [written_by(5, 900 + i), ok(103 + i, G)])
                        .collect(),
                ]),
                cat(vec![
                    vec![up(1)],
                    (0..10).map(|i| foreign(2 + 2 * i, 5)).collect(),
                ]),
                true,
            ),
            case(
                "nor brings it up",
                cat(vec![
                    vec![ok(101, G)],
                    (0..5).map(|i| written_by(5, 200 + i)).collect(),
                ]),
                vec![foreign(1, 5)],
                false,
            ),
            case(
                "stale initial content never counts",
                same(100, 40),
                vec![],
                false,
            ),
            Case {
                init: Init::Block(bad(100, G)),
                ..case(
                    "stale damaged initial content never counts",
                    cat(vec![vec![bad(100, G); 40], same(100, 5), changes(101, 1)]),
                    vec![],
                    false,
                )
            },
            Case {
                init: Init::Unknown,
                ..case(
                    "unknown start: the first read is the baseline",
                    cat(vec![same(500, 40), changes(501, 2)]),
                    vec![up(41)],
                    true,
                )
            },
            Case {
                init: Init::NoStart,
                ..case(
                    "no start: the first read is the baseline",
                    cat(vec![changes(500, 1), changes(501, 1), changes(502, 1)]),
                    vec![up(2)],
                    true,
                )
            },
        ];
        for c in &cases {
            let (l, got) = run(c);
            assert_eq!(got, c.want, "{}", c.name);
            assert_eq!(l.is_live(PEER), c.live_at_end, "{}", c.name);
            assert_eq!(l.live_nodes().contains(&PEER), c.live_at_end, "{}", c.name);
        }
    }

    fn own(node: u8, seq: u64, generation: u64) -> SlotRead {
        SlotRead::Block(decoded(node, seq, generation, DEFAULT_DEAD_MS))
    }

    #[test]
    fn own_slot_rules() {
        let mine = HbBlock {
            seq: 10,
            node: ME,
            generation: G,
            dead_ms: DEFAULT_DEAD_MS,
        };
        let expected = Stamp::from(&mine);
        let mut damaged = encode_vec(&mine, 512).unwrap();
        damaged[100] = 1;
        let damaged = SlotRead::Block(decode(&damaged).unwrap());
        let cases: Vec<(&str, SlotRead, Option<MismatchKind>)> = vec![
            ("reads back what we wrote", own(ME, 10, G), None),
            ("another node", own(2, 10, G), Some(MismatchKind::OtherNode)),
            (
                "other node wins over other fields",
                own(2, 11, G2),
                Some(MismatchKind::OtherNode),
            ),
            (
                "our node, other generation",
                own(ME, 11, G2),
                Some(MismatchKind::Generation),
            ),
            (
                "our node and generation, other seq",
                own(ME, 9, G),
                Some(MismatchKind::Sequence),
            ),
            (
                "same fields, bad checksum",
                damaged,
                Some(MismatchKind::Checksum),
            ),
            ("unreadable", SlotRead::Unreadable, None),
        ];
        for (name, read, kind) in cases {
            let mut l = Liveness::new(LivenessConfig::new(ME));
            l.start(&[(ME, Some(decoded(0, 0, 0, 0)))]);
            // First sample: nothing written yet, nothing compared.
            assert!(l.sample(0, &[(ME, read)]).is_empty(), "{name}");
            l.wrote(&mine);
            for i in 1..4 {
                let got = l.sample(i * STEP_MS, &[(ME, read)]);
                let want: Vec<Event> = kind
                    .into_iter()
                    .map(|kind| {
                        let SlotRead::Block(d) = read else {
                            unreachable!()
                        };
                        Event::OwnSlotMismatch {
                            expected,
                            found: Stamp::from(&d.block),
                            kind,
                        }
                    })
                    .collect();
                assert_eq!(got, want, "{name}, sample {i}");
            }
            assert!(!l.is_live(ME), "{name}");
        }
    }

    #[test]
    fn own_slot_is_never_a_peer() {
        let mut l = Liveness::new(LivenessConfig::new(ME));
        l.start(&[(ME, None)]);
        for seq in 1..10u64 {
            let ev = l.sample(seq * STEP_MS, &[(ME, own(ME, seq, G))]);
            assert!(ev.is_empty(), "{ev:?}");
            l.wrote(&HbBlock {
                seq: seq + 1,
                node: ME,
                generation: G,
                dead_ms: DEFAULT_DEAD_MS,
            });
        }
        assert!(!l.is_live(ME));
        assert!(l.live_nodes().is_empty());
        assert_eq!(l.slot(ME).map(|s| s.seq), Some(9));
    }

    #[test]
    fn several_nodes_and_status() {
        let mut l = Liveness::new(LivenessConfig::new(ME));
        let nodes = [0u8, 7, 254, 3];
        l.start(&nodes.map(|n| (n, Some(decoded(n, 100, G, 0)))));
        let read = |n: u8, seq: u64| (n, SlotRead::Block(decoded(n, seq, G, DEFAULT_DEAD_MS)));
        // Nodes 254, 7 and 3 heartbeat; node 0 stays stale.
        let mut all = Vec::new();
        for i in 1..=3u64 {
            let ev = l.sample(
                i * 1000,
                &[
                    read(254, 100 + i),
                    read(0, 100),
                    read(7, 100 + i),
                    read(3, 100 + i),
                ],
            );
            all.extend(ev);
        }
        let ups: Vec<u8> = all
            .iter()
            .map(|e| match e {
                Event::NodeUp { node, .. } => *node,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ups, vec![254, 7, 3], "events follow the order of the reads");
        assert_eq!(l.live_nodes(), vec![3, 7, 254]);
        assert!(!l.is_live(0));
        let s = l.slot(7).unwrap();
        assert!(s.live);
        assert_eq!((s.seq, s.generation, s.writer), (103, G, 7));
        assert_eq!(s.seq_changed_ms, Some(3000));
        assert_eq!(l.seq_age_ms(7, 9500), Some(6500));
        assert_eq!(l.slot(0).unwrap().seq_changed_ms, None);
        assert_eq!(l.seq_age_ms(0, 9500), None);
        assert_eq!(l.slot(42), None);
        // Starting again forgets everything.
        l.start(&[]);
        assert!(l.live_nodes().is_empty());
        assert_eq!(l.slot(7), None);
    }

    #[test]
    fn custom_thresholds() {
        let mut cfg = LivenessConfig::new(ME);
        cfg.dead_threshold = 3;
        cfg.live_threshold = 1;
        let mut l = Liveness::new(cfg);
        l.start(&[(PEER, Some(decoded(PEER, 1, G, 0)))]);
        assert_eq!(
            l.sample(0, &[(PEER, ok(2, G))]),
            vec![Event::NodeUp {
                node: PEER,
                writer: PEER
            }]
        );
        assert!(l.sample(1, &[(PEER, ok(2, G))]).is_empty());
        assert!(l.sample(2, &[(PEER, ok(2, G))]).is_empty());
        assert_eq!(
            l.sample(3, &[(PEER, ok(2, G))]),
            vec![Event::NodeDown {
                node: PEER,
                reason: DownReason::Timeout
            }]
        );
        // Zero thresholds are raised to 1.
        cfg.dead_threshold = 0;
        cfg.live_threshold = 0;
        let l = Liveness::new(cfg);
        assert_eq!(
            (l.config().dead_threshold, l.config().live_threshold),
            (1, 1)
        );
    }

    #[test]
    fn event_messages() {
        let e = Event::OwnSlotMismatch {
            expected: Stamp {
                node: 1,
                generation: 0xab,
                seq: 0x10,
            },
            found: Stamp {
                node: 2,
                generation: 0xcd,
                seq: 0x11,
            },
            kind: MismatchKind::OtherNode,
        };
        assert_eq!(
            e.to_string(),
            "another node is heartbeating in our slot: expected(1:0xab, 0x10), ondisk(2:0xcd, 0x11)"
        );
        let e = Event::NodeDown {
            node: 4,
            reason: DownReason::CleanStop,
        };
        assert_eq!(e.to_string(), "node 4 is down: stopped heartbeating");
        let e = Event::NodeUp { node: 2, writer: 5 };
        assert_eq!(
            e.to_string(),
            "node 2 is up (its slot is written by node 5)"
        );
    }
}
