//! Messages between lock managers: what one node's core tells another's,
//! and the value-block copies and report entries they carry. Plain data:
//! the lockd peer protocol (`proto::peer`) encodes them, and the simulator
//! hashes their `Debug` output, so their shape is part of the contract.
//!
//! May depend on: the core's ids and modes.

use crate::dlm::{LVB_LEN, Lvb, Mode, NodeId};

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
        value: [0; LVB_LEN],
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
