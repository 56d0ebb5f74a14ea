//! The multi-node half of the core: domain membership, mastery and
//! node-level locks. Still pure: peer messages come in as
//! [`Input::Peer`](super::Input::Peer) and go out as
//! [`Action::Send`](super::Action::Send).
//!
//! # Shape
//!
//! - **Two levels of locks.** Clients' locks live on their own node, in the
//!   local queues the single-node core already has. Each node holds one
//!   *node lock* per resource at the cluster level, at a mode that covers its
//!   local holders, and grants compatible local requests from it with no
//!   message (node-level caching, as dlmglue/userdlm do). Node locks are
//!   queued on the resource's **master**, with the same grant rules.
//! - **Mastery** is a pure function of the resource name and the domain's
//!   members (rendezvous hashing): no directory, no lookups.
//! - **Membership** of a domain changes (join, leave) under an approval
//!   taken from every connected node (each approves one change of a domain
//!   at a time, as o2dlm's join does), then a *freeze*: every member reports
//!   its node locks, and the LVBs of the resources it mastered, to the new
//!   masters, which rebuild their queues from the reports before serving
//!   again. Requests in flight are carried by the reports, so none is lost.
//! - **Messages are idempotent and carry the domain's epoch**; stale ones are
//!   dropped. When a link is re-established after messages may have been
//!   lost, both ends re-send what the other may be waiting for.
//!
//! - **Death.** A node declared dead ([`Input::NodeDown`](super::Input::NodeDown))
//!   is removed from every domain by a membership change that does not wait
//!   for its report; masters are rebuilt from the survivors, and value
//!   blocks it may have written are flagged invalid. A disconnected node
//!   only delays what needs it: a lost connection is not a death. Quorum
//!   and fencing are not here yet.

use std::collections::{BTreeMap, BTreeSet};

use super::{Lvb, Millis, Mode, NameHasher, NameMap, NodeId};

/// One copy of a lock value block: its bytes, how many writes made it, and
/// whether it can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvbCopy {
    /// The bytes.
    pub value: Lvb,
    /// Writes so far (higher is newer).
    pub seq: u64,
    /// False when the last writer's node died before the value was saved.
    pub valid: bool,
}

impl LvbCopy {
    /// The value of a block never written.
    pub const ZERO: LvbCopy = LvbCopy {
        value: [0; super::LVB_LEN],
        seq: 0,
        valid: true,
    };
}

/// What one node tells a new master about one resource when a domain's
/// membership changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportEntry {
    /// The resource.
    pub resource: Vec<u8>,
    /// The node lock's granted mode, as the node believes it.
    pub granted: Option<Mode>,
    /// The mode the node is waiting for, if any.
    pub want: Option<Mode>,
    /// The pending request is a trylock.
    pub noqueue: bool,
    /// The pending request's number (echoed by the grant that answers it).
    pub seq: u64,
    /// A process behind the node lock (for "busy" messages).
    pub pid: i32,
    /// The node's copy of the LVB (held, or written back and not yet stored).
    pub lvb: Option<LvbCopy>,
    /// The resource's LVB as kept by this node when it was the master.
    pub master_lvb: Option<LvbCopy>,
    /// A node lost (dead) in this change held PW or EX on it, as far as this
    /// node knows: its value block cannot be trusted.
    pub lost_writer: bool,
}

/// Why a node-level request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeFailure {
    /// Trylock: held by these nodes (with a pid of each).
    Busy(Vec<(NodeId, Mode, i32)>),
    /// A conversion deadlock with these nodes' conversions.
    Deadlock(Vec<(NodeId, Mode, i32)>),
}

/// A message between lock managers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// May I change the membership of `domain` (join, or leave)?
    Ask {
        /// The domain.
        domain: Vec<u8>,
        /// Request number (per asking node).
        req: u64,
    },
    /// The answer to [`PeerMsg::Ask`], with what the node knows of the domain.
    Answer {
        /// The domain.
        domain: Vec<u8>,
        /// The request answered.
        req: u64,
        /// Approved.
        ok: bool,
        /// The domain's epoch at this node (0: it never took part; a node that
        /// left keeps its last epoch, and `members` says whether it is in).
        epoch: u64,
        /// Its members at this node.
        members: Vec<NodeId>,
        /// The epoch of a change this node is frozen in (0: none): a
        /// change after it must have a higher epoch.
        frozen: u64,
    },
    /// The asking node gives up; release the approval.
    Cancel {
        /// The domain.
        domain: Vec<u8>,
        /// The request (0: whichever request of the sender was approved).
        req: u64,
    },
    /// The membership changes: stop granting, report to the new masters.
    Freeze {
        /// The domain.
        domain: Vec<u8>,
        /// The new epoch.
        epoch: u64,
        /// Members before.
        old: Vec<NodeId>,
        /// Members after.
        new: Vec<NodeId>,
        /// Who drives the change.
        initiator: NodeId,
        /// Members declared dead: they neither report nor stay (recovery).
        lost: Vec<NodeId>,
    },
    /// One node's locks and LVBs for the resources the receiver masters in `epoch`.
    Report {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch reported for.
        epoch: u64,
        /// The entries.
        entries: Vec<ReportEntry>,
    },
    /// The sender has rebuilt its masters for `epoch`.
    Ready {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
    },
    /// The change is over: approvals are released.
    Done {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch reached.
        epoch: u64,
        /// The asking node's request.
        req: u64,
    },
    /// Node lock request or conversion (up or down) to the master.
    Lock {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch the sender believes current.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// The mode wanted.
        want: Mode,
        /// Trylock.
        noqueue: bool,
        /// The request's number, per node and resource, increasing: the
        /// answer carries it, so that a repeated answer to an older request
        /// is never taken for the answer to a newer one.
        seq: u64,
        /// A process behind it.
        pid: i32,
        /// LVB written back when coming down from PW/EX.
        lvb: Option<LvbCopy>,
    },
    /// The node gives its node lock back.
    Unlock {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// LVB written back (from PW/EX).
        lvb: Option<LvbCopy>,
    },
    /// The master grants a node lock.
    Grant {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// The mode granted.
        mode: Mode,
        /// The number of the request granted.
        seq: u64,
        /// The resource's LVB.
        lvb: LvbCopy,
    },
    /// The master refuses a node-level request.
    Failed {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// The mode that was wanted.
        want: Mode,
        /// The number of the request refused.
        seq: u64,
        /// Why.
        failure: NodeFailure,
    },
    /// The master asks a holder to come down: a request for `mode` waits.
    /// With `probe`, a trylock waits: come down at once or say busy.
    Bast {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// The blocked mode.
        mode: Mode,
        /// Answer at once.
        probe: bool,
    },
    /// A probed holder cannot come down now.
    ProbeBusy {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// A process holding it there now (0: unknown), for "busy" messages:
        /// the one that took the node lock may be long gone.
        pid: i32,
    },
    /// The master stored an LVB written back.
    LvbStored {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The resource.
        resource: Vec<u8>,
        /// Its sequence.
        seq: u64,
    },
    /// After a reconnection: the sender's node locks on every resource the
    /// receiver masters (an absent resource means none), so that messages
    /// lost with the old connection are made good.
    Sync {
        /// The domain.
        domain: Vec<u8>,
        /// The epoch.
        epoch: u64,
        /// The sender's node locks and unacknowledged LVBs.
        entries: Vec<ReportEntry>,
    },
}

impl PeerMsg {
    /// The domain a message is about.
    pub fn domain(&self) -> &[u8] {
        match self {
            PeerMsg::Ask { domain, .. }
            | PeerMsg::Answer { domain, .. }
            | PeerMsg::Cancel { domain, .. }
            | PeerMsg::Freeze { domain, .. }
            | PeerMsg::Report { domain, .. }
            | PeerMsg::Ready { domain, .. }
            | PeerMsg::Done { domain, .. }
            | PeerMsg::Lock { domain, .. }
            | PeerMsg::Unlock { domain, .. }
            | PeerMsg::Grant { domain, .. }
            | PeerMsg::Failed { domain, .. }
            | PeerMsg::Bast { domain, .. }
            | PeerMsg::ProbeBusy { domain, .. }
            | PeerMsg::LvbStored { domain, .. }
            | PeerMsg::Sync { domain, .. } => domain,
        }
    }

    /// Whether this message asks the master for a node lock (counted as a
    /// remote request when it crosses the network).
    pub fn is_request(&self) -> bool {
        matches!(self, PeerMsg::Lock { .. } | PeerMsg::Unlock { .. })
    }
}

/// The cluster the core runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Every configured node, this one included.
    pub nodes: Vec<NodeId>,
    /// After start, membership changes wait up to this long for every
    /// configured node to connect (a node that comes up later joins the
    /// domains as they are then).
    pub settle_ms: u64,
}

/// A configured node, for status listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node.
    pub node: NodeId,
    /// Connected to this node (this node itself: true).
    pub connected: bool,
    /// Alive by disk heartbeat (this node itself: true).
    pub heartbeat: bool,
}

/// A domain's membership as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainView {
    /// Its name.
    pub name: Vec<u8>,
    /// Membership changes so far.
    pub epoch: u64,
    /// Its members.
    pub members: Vec<NodeId>,
    /// A membership change is in progress.
    pub changing: bool,
    /// Resources this node masters in it.
    pub mastered: usize,
}

/// A node's lock on a resource, as its master sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHolder {
    /// The node.
    pub node: NodeId,
    /// Mode held.
    pub granted: Option<Mode>,
    /// Mode asked for.
    pub requested: Option<Mode>,
    /// A process behind it.
    pub pid: i32,
}

/// How long a refused membership change waits before asking again, per rank
/// of the node (lower node numbers retry first, so one of them wins).
pub(super) const RETRY_MS: u64 = 20;

#[derive(Debug)]
pub(super) struct ClusterState {
    pub nodes: BTreeSet<NodeId>,
    /// Peers with an established connection (not this node).
    pub up: BTreeSet<NodeId>,
    pub next_req: u64,
    /// Membership and mastered resources of every domain this node has
    /// taken part in (kept after a leave: the epoch must not go back).
    pub domains: BTreeMap<Box<[u8]>, Box<DomainCluster>>,
    /// Membership changes to retry: (when, domain).
    pub retries: BTreeSet<(Millis, Box<[u8]>)>,
    /// Joins wait this long after start for the peers to connect.
    pub settle_ms: u64,
    /// The time of the first input.
    pub started: Option<Millis>,
    /// The last number given to a node-lock request.
    pub next_seq: u64,
    /// Nodes declared dead (by lockd: disk heartbeat, or a restart seen in
    /// the handshake; or by a freeze naming them lost) and not back since:
    /// they are recovered from, and nothing they send is believed.
    pub dead: BTreeSet<NodeId>,
    /// Dead nodes that came back (a new incarnation, believed again): a
    /// late freeze naming the old one lost must not kill the new one.
    pub revived: BTreeSet<NodeId>,
}

/// A domain's cluster-level state on this node.
#[derive(Debug)]
pub(super) struct DomainCluster {
    pub m: Membership,
    /// Resources this node masters in the current epoch.
    pub mastered: NameMap<Box<MasterRes>>,
    /// Messages for a later epoch than ours, handled when we reach it.
    pub deferred: Vec<(NodeId, PeerMsg)>,
    /// Reports that came before their freeze: epoch -> sender -> entries.
    pub early: BTreeMap<u64, BTreeMap<NodeId, Vec<ReportEntry>>>,
    /// Clients waiting for the node to be a member.
    pub join_waiters: Vec<(super::ClientId, u64)>,
    /// Clients waiting for the node to have left.
    pub leave_waiters: Vec<(super::ClientId, u64)>,
    /// Ready was sent for this change: (epoch, initiator).
    pub ready_to: Option<(u64, NodeId)>,
    /// Refused attempts in a row (backoff).
    pub attempts: u32,
    /// The reports this node sent for the last change: sent again after a
    /// reconnection (a node may still wait for them after this one is done).
    pub last_reports: Option<(u64, BTreeMap<NodeId, Vec<ReportEntry>>)>,
    /// Peers reconnected while this node was changing membership: they get
    /// a Sync once it runs again.
    pub resync: BTreeSet<NodeId>,
    /// Nodes that held PW or EX on the resources this node gave up
    /// mastering (or was told of in reports) in a change not known to be
    /// complete on every node: if one of them dies before then, its value
    /// block is suspect. Rebuilding here is not enough: the new master may
    /// still wait for a report the dead node never sent.
    pub writers: BTreeMap<Box<[u8]>, BTreeSet<NodeId>>,
    /// The last epoch this node knows completed on every node (its `Done`
    /// came, or this node drove it): writers older than that are of no use.
    pub done_epoch: u64,
}

impl DomainCluster {
    pub fn new(hash: NameHasher) -> Self {
        DomainCluster {
            m: Membership::default(),
            mastered: NameMap::with_hasher(hash),
            deferred: Vec::new(),
            early: BTreeMap::new(),
            join_waiters: Vec::new(),
            leave_waiters: Vec::new(),
            ready_to: None,
            attempts: 0,
            last_reports: None,
            resync: BTreeSet::new(),
            writers: BTreeMap::new(),
            done_epoch: 0,
        }
    }
}

/// A node's view of one domain's membership.
#[derive(Debug, Default)]
pub(super) struct Membership {
    pub epoch: u64,
    pub members: BTreeSet<NodeId>,
    pub frozen: Option<Box<Frozen>>,
    /// The change this node has approved, if any: (node, its request).
    pub approved: Option<(NodeId, u64)>,
    /// This node's own change in progress.
    pub op: Option<Box<Op>>,
}

#[derive(Debug)]
pub(super) struct Frozen {
    pub epoch: u64,
    pub old: BTreeSet<NodeId>,
    pub new: BTreeSet<NodeId>,
    pub initiator: NodeId,
    /// Dead members: no report is awaited from them.
    pub lost: BTreeSet<NodeId>,
    /// Reports received (the sender's entries for us).
    pub reports: BTreeMap<NodeId, Vec<ReportEntry>>,
}

impl Frozen {
    /// The nodes whose reports the rebuild needs.
    pub fn reporters(&self) -> BTreeSet<NodeId> {
        self.old
            .union(&self.new)
            .filter(|n| !self.lost.contains(n))
            .copied()
            .collect()
    }
}

#[derive(Debug)]
pub(super) struct Op {
    pub req: u64,
    pub kind: OpKind,
    pub phase: OpPhase,
}

/// What a membership change of this node's is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    /// This node joins.
    Join,
    /// This node leaves.
    Leave,
    /// Dead members are removed (this node stays as it is).
    Recover,
}

#[derive(Debug)]
pub(super) enum OpPhase {
    /// Waiting for every connected node's answer.
    Asking {
        asked: BTreeSet<NodeId>,
        /// (ok, epoch, members, epoch frozen in) per node.
        answers: BTreeMap<NodeId, (bool, u64, Vec<NodeId>, u64)>,
    },
    /// Refused; ask again at this time.
    Retry(Millis),
    /// Approved: the freeze is out; waiting for the new members' Ready.
    Changing {
        epoch: u64,
        old: BTreeSet<NodeId>,
        new: BTreeSet<NodeId>,
        ready: BTreeSet<NodeId>,
        approvers: BTreeSet<NodeId>,
        lost: BTreeSet<NodeId>,
    },
}

impl Membership {
    /// Running: a member, not frozen.
    pub fn running(&self, me: NodeId) -> bool {
        self.frozen.is_none() && self.members.contains(&me)
    }
}

/// This node's cluster-level lock on a resource.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeLock {
    pub mode: Option<Mode>,
    /// A request sent to the master and not answered: (mode, trylock).
    pub pending: Option<(Mode, bool)>,
    /// The number of the last request sent (the pending one, if any);
    /// numbers are unique per node, across resources.
    pub seq: u64,
    /// Modes the master said other nodes wait for.
    pub blocked: u8,
    /// The LVB copy has been written since it came from the master.
    pub dirty: bool,
    /// An LVB written back and not yet acknowledged.
    pub unacked: Option<LvbCopy>,
    /// The process behind the last request (for "busy" lines elsewhere).
    pub pid: i32,
}

impl NodeLock {
    /// Nothing held, asked or owed: the record can go.
    pub fn is_idle(&self) -> bool {
        self.mode.is_none() && self.pending.is_none() && self.unacked.is_none() && !self.dirty
    }
}

/// A node lock queued on its master.
#[derive(Clone, Debug)]
pub(super) struct NLock {
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
pub(super) struct MasterRes {
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
pub(super) enum MasterOut {
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

/// Whether a node lock in `held` lets the node grant a local lock in `want`:
/// every mode compatible with `held` (what other nodes may hold) must be
/// compatible with `want`.
pub fn covers(held: Mode, want: Mode) -> bool {
    Mode::ALL
        .iter()
        .all(|&x| !held.compatible(x) || want.compatible(x))
}

/// The weakest mode that covers every mode in `modes`.
pub fn cover_all(modes: impl IntoIterator<Item = Mode>) -> Option<Mode> {
    let modes: Vec<Mode> = modes.into_iter().collect();
    if modes.is_empty() {
        return None;
    }
    Mode::ALL
        .into_iter()
        .filter(|&m| modes.iter().all(|&w| covers(m, w)))
        .max_by_key(|m| Mode::ALL.iter().filter(|&&x| m.compatible(x)).count())
}

/// Where a node lock held in `held` can come down to so that every mode in
/// `blocked` can be granted elsewhere, while still covering the local
/// holders' modes `local`: the strongest such mode below `held` (a
/// down-conversion the master grants at once). `Ok(None)`: no local holder,
/// the node lock can go. `Err(())`: the local holders must release first.
pub fn down_to(blocked: u8, local: &[Mode], held: Mode) -> Result<Option<Mode>, ()> {
    if local.is_empty() {
        return Ok(None);
    }
    Mode::ALL
        .into_iter()
        .filter(|m| {
            Mode::ALL
                .iter()
                .all(|&b| blocked & b.bit() == 0 || m.compatible(b))
        })
        .filter(|&m| covers(held, m))
        .filter(|&m| local.iter().all(|&w| covers(m, w)))
        // The strongest: compatible with the fewest modes.
        .min_by_key(|m| Mode::ALL.iter().filter(|&&x| m.compatible(x)).count())
        .map(Some)
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_relation() {
        assert!(covers(Mode::EX, Mode::EX));
        for m in Mode::ALL {
            assert!(covers(Mode::EX, m));
            assert!(covers(m, Mode::NL));
            assert!(covers(m, m));
        }
        assert!(covers(Mode::PR, Mode::CR));
        assert!(!covers(Mode::PR, Mode::CW));
        assert!(!covers(Mode::CW, Mode::PR));
        assert!(covers(Mode::PW, Mode::PR));
        assert!(covers(Mode::PW, Mode::CW));
        assert!(!covers(Mode::PW, Mode::EX));
        assert_eq!(cover_all([Mode::PR, Mode::CR]), Some(Mode::PR));
        assert_eq!(cover_all([Mode::PR, Mode::CW]), Some(Mode::PW));
        assert_eq!(cover_all([Mode::NL]), Some(Mode::NL));
        assert_eq!(cover_all([]), None);
    }

    #[test]
    fn down_conversion_targets() {
        // EX wanted elsewhere: only NL remains, or nothing.
        assert_eq!(down_to(Mode::EX.bit(), &[], Mode::EX), Ok(None));
        assert_eq!(
            down_to(Mode::EX.bit(), &[Mode::NL], Mode::EX),
            Ok(Some(Mode::NL))
        );
        assert_eq!(down_to(Mode::EX.bit(), &[Mode::PR], Mode::EX), Err(()));
        // PR wanted elsewhere, local PR holders: keep PR.
        assert_eq!(
            down_to(Mode::PR.bit(), &[Mode::PR], Mode::EX),
            Ok(Some(Mode::PR))
        );
        assert_eq!(
            down_to(Mode::PR.bit(), &[Mode::CR], Mode::PW),
            Ok(Some(Mode::PR))
        );
        // Never sideways: from PR, with CW wanted elsewhere and a local CR
        // holder, CR (not CW, which other PR holders would block).
        assert_eq!(
            down_to(Mode::CW.bit(), &[Mode::CR], Mode::PR),
            Ok(Some(Mode::CR))
        );
        // Every answer is covered by the held mode and covers the holders.
        for held in Mode::ALL {
            for b in Mode::ALL {
                for l in Mode::ALL {
                    if let Ok(Some(t)) = down_to(b.bit(), &[l], held) {
                        assert!(covers(held, t) && covers(t, l) && t.compatible(b));
                    }
                }
            }
        }
    }

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
