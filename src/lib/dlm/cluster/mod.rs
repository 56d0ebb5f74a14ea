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
//!   only delays what needs it: a lost connection is not a death. Whether
//!   a node that cannot reach the others keeps its locks is decided outside
//!   the core (`quorum`); a node that loses quorum is fenced
//!   ([`super::Input::Fence`]): it takes every lock back and leaves every
//!   domain before the others are told it is dead.
//!
//! # Files
//!
//! The types of the multi-node half are here; what a node does with them
//! is the cluster layer of [`Dlm`](super::Dlm), in `node`.
//! - `msg`: the messages between lock managers.
//! - `state`: a node's cluster-level state (peers, membership, node locks).
//! - `master`: mastery, and the master's queues of node locks.
//! - `cover`: how a node lock's mode covers local locks.
//! - This file: the cluster's configuration and its status views.
//!
//! May depend on: std and the core's types.

mod cover;
mod master;
mod msg;
mod state;

pub use cover::{cover_all, covers, down_to};
pub use master::master_of;
pub(super) use master::{MasterOut, MasterRes};
pub use msg::{LvbCopy, NodeFailure, PeerMsg, ReportEntry};
pub(super) use state::{
    ClusterState, DomainCluster, Frozen, NodeLock, Op, OpKind, OpPhase, RETRY_MS,
};

use super::{Mode, NodeId};

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
