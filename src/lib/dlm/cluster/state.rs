//! A node's cluster-level state: the peers, each domain's membership as
//! this node knows it (epoch, members, a freeze, its own change under
//! way), the resources it masters, and its node lock on each resource.
//! Records only: the cluster layer of [`Dlm`](crate::dlm::Dlm) (`node`)
//! changes them.
//!
//! May depend on: the core's ids and name tables, the messages, the
//! master's records.

use std::collections::{BTreeMap, BTreeSet};

use super::{LvbCopy, MasterRes, PeerMsg, ReportEntry};
use crate::dlm::{ClientId, Millis, Mode, NameHasher, NameMap, NodeId};

/// How long a refused membership change waits before asking again, per rank
/// of the node (lower node numbers retry first, so one of them wins).
pub(in crate::dlm) const RETRY_MS: u64 = 20;

#[derive(Debug)]
pub(in crate::dlm) struct ClusterState {
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
pub(in crate::dlm) struct DomainCluster {
    pub m: Membership,
    /// Resources this node masters in the current epoch.
    pub mastered: NameMap<Box<MasterRes>>,
    /// Messages for a later epoch than ours, handled when we reach it.
    pub deferred: Vec<(NodeId, PeerMsg)>,
    /// Reports that came before their freeze: epoch -> sender -> entries.
    pub early: BTreeMap<u64, BTreeMap<NodeId, Vec<ReportEntry>>>,
    /// Clients waiting for the node to be a member.
    pub join_waiters: Vec<(ClientId, u64)>,
    /// Clients waiting for the node to have left.
    pub leave_waiters: Vec<(ClientId, u64)>,
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
pub(in crate::dlm) struct Membership {
    pub epoch: u64,
    pub members: BTreeSet<NodeId>,
    pub frozen: Option<Box<Frozen>>,
    /// The change this node has approved, if any: (node, its request).
    pub approved: Option<(NodeId, u64)>,
    /// This node's own change in progress.
    pub op: Option<Box<Op>>,
}

#[derive(Debug)]
pub(in crate::dlm) struct Frozen {
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
pub(in crate::dlm) struct Op {
    pub req: u64,
    pub kind: OpKind,
    pub phase: OpPhase,
}

/// What a membership change of this node's is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::dlm) enum OpKind {
    /// This node joins.
    Join,
    /// This node leaves.
    Leave,
    /// Dead members are removed (this node stays as it is).
    Recover,
}

#[derive(Debug)]
pub(in crate::dlm) enum OpPhase {
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
pub(in crate::dlm) struct NodeLock {
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
