//! The core's public types: ids, time, credentials, what clients ask and
//! are answered, the events of their locks, the inputs and actions of the
//! state machine, refusals, and the snapshots shown by `dlmctl`. Plain
//! data: the protocols encode them and the simulator prints them, so their
//! shape and `Debug` output are part of the contract.
//!
//! May depend on: std, `thiserror`, the modes, the peer messages.

use std::fmt;

use super::{Mode, NodeHolder, PeerMsg};

/// Length of a lock value block.
pub const LVB_LEN: usize = 64;
/// A lock value block.
pub type Lvb = [u8; LVB_LEN];
/// Longest domain or resource name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Milliseconds on the caller's monotonic clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn after(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}

/// A node of the cluster (its o2cb node number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u8);

/// A client connection, numbered by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// A lock. Ids carry the node number in their top 8 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockId(pub u64);

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who a client is, from the socket's peer credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cred {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: i32,
}

impl Cred {
    pub(super) fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Options of a lock request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockFlags {
    /// Trylock: fail at once instead of queueing.
    pub noqueue: bool,
    /// Held for the node until explicitly unlocked, not tied to the connection
    /// (once granted; a pending request is still cancelled with its connection).
    pub persistent: bool,
    /// With `noqueue`: tell the holders that block it, as if it had queued.
    pub bast_on_busy: bool,
}

/// A new lock request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// Domain (1–64 bytes); joined implicitly.
    pub domain: Vec<u8>,
    /// Resource (1–64 bytes).
    pub resource: Vec<u8>,
    /// Requested mode.
    pub mode: Mode,
    /// Options.
    pub flags: LockFlags,
    /// Give up (as if cancelled) after this long queued.
    pub timeout_ms: Option<u64>,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Join a domain. `pin`: the node stays in it until a forced leave
    /// (`dlmctl join`); otherwise this connection uses it until it leaves or goes.
    Join {
        /// The domain.
        domain: Vec<u8>,
        /// Keep the domain after this client goes.
        pin: bool,
    },
    /// Leave a domain. Not forced: this connection stops using it (the node
    /// leaves once nothing uses it and it is not pinned). Forced: the node
    /// leaves, releasing every lock and value block in it (root is needed if
    /// other users hold locks there).
    Leave {
        /// The domain.
        domain: Vec<u8>,
        /// Node-level leave.
        force: bool,
    },
    /// Request a new lock. Answered at once with its id; the grant or failure
    /// follows as an event.
    Lock(LockRequest),
    /// Change the mode of a granted lock. Answered at once; the grant or
    /// failure follows as an event.
    Convert {
        /// The lock.
        lock: LockId,
        /// The new mode.
        mode: Mode,
        /// Trylock.
        noqueue: bool,
        /// With `noqueue`: tell the holders that block it.
        bast_on_busy: bool,
        /// Give up after this long queued (the lock keeps its mode).
        timeout_ms: Option<u64>,
    },
    /// Release a lock (cancelling its pending request, if any).
    Unlock {
        /// The lock.
        lock: LockId,
    },
    /// Cancel the pending request (new or conversion) of a lock.
    Cancel {
        /// The lock.
        lock: LockId,
    },
    /// Read the value block through a lock granted in CR or above.
    LvbGet {
        /// The lock.
        lock: LockId,
    },
    /// Write the value block through a lock granted in PW or EX.
    LvbSet {
        /// The lock.
        lock: LockId,
        /// The new value.
        value: Lvb,
    },
}

/// The immediate answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done (join, leave, unlock, cancel, lvb set), or accepted (convert).
    Ok,
    /// A lock request was accepted under this id.
    LockAccepted {
        /// The new lock's id.
        lock: LockId,
    },
    /// A value block.
    Lvb {
        /// The bytes.
        value: Lvb,
        /// False when the value cannot be trusted (its writer's node died).
        valid: bool,
    },
    /// Refused; nothing changed.
    Err(DlmError),
}

/// A lock that holds or wants a resource, as shown to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The lock.
    pub lock: LockId,
    /// Its node.
    pub node: NodeId,
    /// The process that took it.
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Mode held, if granted.
    pub granted: Option<Mode>,
    /// Mode wanted, if a request is pending.
    pub requested: Option<Mode>,
    /// Whether it is a persistent lock.
    pub persistent: bool,
}

/// Why a lock request or conversion did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Trylock: could not be granted at once.
    Busy {
        /// Who stood in the way.
        blockers: Vec<Holder>,
    },
    /// Still queued when its timeout expired.
    TimedOut {
        /// Who stood in the way.
        blockers: Vec<Holder>,
    },
    /// A conversion that would deadlock with queued conversions.
    Deadlock {
        /// The conversions it would wait for.
        blockers: Vec<Holder>,
    },
    /// Cancelled (by `Cancel` or `Unlock`).
    Cancelled,
}

/// Why a granted lock was taken away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Root, or the owner's uid, made the node leave the domain.
    DomainLeft,
    /// Root unlocked it.
    BrokenByRoot,
    /// This node lost quorum and fenced itself: every lock on it was taken
    /// back (the other nodes recover them once it stops heartbeating).
    Fenced,
}

/// Something that happened to a client's lock after its request was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The pending request was granted: the lock is now held in `mode`.
    Granted {
        /// The lock.
        lock: LockId,
        /// The mode now held.
        mode: Mode,
    },
    /// The request is queued behind these.
    Waiting {
        /// The lock.
        lock: LockId,
        /// Who it waits for.
        blockers: Vec<Holder>,
    },
    /// The pending request ended without a grant. A new lock is gone; a
    /// conversion keeps its old mode.
    Failed {
        /// The lock.
        lock: LockId,
        /// Why.
        failure: Failure,
    },
    /// This lock blocks a request for `mode`; release or convert down if you can.
    Bast {
        /// The lock.
        lock: LockId,
        /// The blocked mode.
        mode: Mode,
    },
    /// The lock was taken away.
    Lost {
        /// The lock.
        lock: LockId,
        /// Why.
        reason: LostReason,
    },
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Answer request `tag` of `client`.
    Reply {
        /// The client.
        client: ClientId,
        /// The tag of its request.
        tag: u64,
        /// The answer.
        reply: Reply,
    },
    /// Tell `client` about one of its locks.
    Event {
        /// The client.
        client: ClientId,
        /// What happened.
        event: Event,
    },
    /// Send a message to another node's lock manager (dropped by the shell
    /// when there is no connection: the core sends again after
    /// [`Input::PeerUp`]).
    Send {
        /// The node.
        to: NodeId,
        /// The message.
        msg: PeerMsg,
    },
}

/// Why a request was refused. Refusals are answers, not failures of lockd.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DlmError {
    /// A domain or resource name out of bounds.
    #[error("{what} name must be 1 to {MAX_NAME_LEN} bytes, not {len}")]
    BadName {
        /// "domain" or "resource".
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// No lock with that id.
    #[error("no lock {0}")]
    NoSuchLock(LockId),
    /// No domain with that name on this node.
    #[error("not in domain '{0}'")]
    NoSuchDomain(String),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    Permission(String),
    /// The lock already has a request pending.
    #[error("lock {0} already has a request pending")]
    Pending(LockId),
    /// The lock is not granted.
    #[error("lock {0} is not granted")]
    NotGranted(LockId),
    /// Cancel of a lock with nothing pending.
    #[error("lock {0} has no pending request to cancel")]
    NothingToCancel(LockId),
    /// The value block needs a stronger mode.
    #[error("lock {lock} is held in {held}; {need} or stronger is needed")]
    ModeTooLow {
        /// The lock.
        lock: LockId,
        /// Its mode.
        held: Mode,
        /// What is needed.
        need: Mode,
    },
    /// The request came from a connection the core does not know.
    #[error("unknown client")]
    UnknownClient,
    /// This node lost quorum and fenced itself; it takes requests again
    /// once it reaches a quorum of the cluster.
    #[error(
        "this node lost quorum and fenced itself; it takes requests again once it reaches the other nodes"
    )]
    Fenced,
}

/// An input to the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A client connected, with its credentials.
    Connected {
        /// The new client.
        client: ClientId,
        /// Who it is.
        cred: Cred,
    },
    /// A request from a client, with the tag its answer must carry.
    Request {
        /// The client.
        client: ClientId,
        /// Echoed in the reply.
        tag: u64,
        /// The request.
        request: Request,
    },
    /// A client's connection closed: its locks are released.
    Disconnected {
        /// The client.
        client: ClientId,
    },
    /// Time passed (the deadline from
    /// [`Dlm::next_deadline`](super::Dlm::next_deadline) may be due).
    Tick,
    /// Disk heartbeat says a node is alive.
    NodeUp {
        /// The node.
        node: NodeId,
    },
    /// A node is declared dead (its disk heartbeat stopped, or its lockd
    /// restarted): in a cluster, every domain it was in recovers without
    /// it; a later [`Input::PeerUp`] from it is a new incarnation.
    NodeDown {
        /// The node.
        node: NodeId,
    },
    /// A connection to another node's lock manager is established (a fresh
    /// one: whatever was in flight on an older connection is lost).
    PeerUp {
        /// The node.
        node: NodeId,
    },
    /// The connection to another node's lock manager is gone.
    PeerDown {
        /// The node.
        node: NodeId,
    },
    /// A message from another node's lock manager.
    Peer {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: PeerMsg,
    },
    /// This node lost quorum: every lock is taken back (a granted lock's
    /// client gets [`Event::Lost`] with [`LostReason::Fenced`], a pending
    /// one's [`Failure::Cancelled`], a waiting join or leave
    /// [`DlmError::Fenced`]), the node forgets every domain as if it had
    /// just started, and refuses requests until [`Input::Unfence`].
    Fence,
    /// This node reaches a quorum again: requests are served.
    Unfence,
}

/// Counters, for status displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lock requests accepted.
    pub lock_requests: u64,
    /// Conversions accepted.
    pub convert_requests: u64,
    /// Grants (new locks and conversions).
    pub grants: u64,
    /// Unlocks.
    pub unlocks: u64,
    /// Trylocks that failed.
    pub busy: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Conversion deadlocks.
    pub deadlocks: u64,
    /// Blocking notifications sent.
    pub basts: u64,
    /// In a cluster: grants made from the node's cached node lock, with no
    /// message to a master.
    pub local_grants: u64,
    /// In a cluster: node-level requests (lock, convert, unlock) sent to a
    /// master on another node.
    pub remote_requests: u64,
}

/// A snapshot of the core, for `dlmctl status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Domains joined.
    pub domains: usize,
    /// Resources alive (with locks or a value block).
    pub resources: usize,
    /// Locks (granted, converting and waiting).
    pub locks: usize,
    /// Connected clients.
    pub clients: usize,
    /// Counters since start.
    pub counters: Counters,
}

/// A domain, for `dlmctl domains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// Its name.
    pub name: Vec<u8>,
    /// Stays until a forced leave.
    pub pinned: bool,
    /// Connections using it without pinning.
    pub users: usize,
    /// Resources alive.
    pub resources: usize,
    /// Locks in it.
    pub locks: usize,
    /// In a cluster: membership changes so far (0 on a single node).
    pub epoch: u64,
    /// In a cluster: the nodes in it (empty on a single node).
    pub members: Vec<NodeId>,
}

/// A resource's value block, for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LvbInfo {
    /// The bytes.
    pub value: Lvb,
    /// Writes so far (0 = never written).
    pub seq: u64,
    /// False when its writer's node died.
    pub valid: bool,
}

/// A resource with its queues, for `dlmctl locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Its domain.
    pub domain: Vec<u8>,
    /// Its name.
    pub name: Vec<u8>,
    /// The node holding its queues.
    pub master: NodeId,
    /// Its value block.
    pub lvb: LvbInfo,
    /// Granted locks.
    pub granted: Vec<Holder>,
    /// Granted locks waiting to change mode.
    pub converting: Vec<Holder>,
    /// New requests waiting.
    pub waiting: Vec<Holder>,
    /// In a cluster: this node's node lock (mode held, mode asked for).
    pub node_lock: Option<(Option<Mode>, Option<Mode>)>,
    /// In a cluster, on the master: every node's node lock.
    pub nodes: Vec<NodeHolder>,
}
