//! The lock manager core: a pure state machine.
//!
//! Inputs go in through [`Dlm::handle`] (a client connected, a client request,
//! a client gone, a timer tick, and in a cluster a peer up, down, or its
//! message), each with the current time; what the outside world must do
//! comes out of [`Dlm::poll_action`] (replies and events for clients, and
//! in a cluster messages to send to other nodes). [`Dlm::next_deadline`] says when to call back with
//! [`Input::Tick`]. There are no sockets, threads, clocks or randomness here:
//! the same inputs always give the same actions, which is what lets the
//! simulator drive the very code lockd runs.
//!
//! Semantics (see `docs/ARCHITECTURE.md` and the reference on DLM semantics):
//! - Domains (lockspaces) hold resources; a resource holds three queues:
//!   granted, converting (granted locks waiting to change mode, still holding
//!   their old mode) and waiting (new requests).
//! - Grant rules are fs/dlm's: a new request is granted at once only if it is
//!   compatible with every granted mode and nothing is queued; a conversion is
//!   granted in place if compatible with every other granted mode; queued work
//!   is served strictly in order, conversions before new requests.
//! - A conversion that would wait on a lock that is itself waiting on it is a
//!   conversion deadlock: it fails with [`Failure::Deadlock`] and keeps its mode.
//! - Holders that block a queued request get a blocking notification
//!   ([`Event::Bast`]) once per blocked mode until they are granted again.
//! - Each resource has a 64-byte lock value block, readable in any mode but NL,
//!   writable in PW and EX; it outlives the locks while its domain exists.
//! - Locks belong to a client connection (gone when it goes) or are
//!   persistent (held for the node until unlocked by their uid or root).
//!
//! Every resource records its master node; in a single-node lockd that is
//! always this node.
//!
//! May depend on: std and `thiserror` only.

mod cluster;
mod mode;
mod node;
use node::Gate;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, DefaultHasher, Hasher};

pub use cluster::{
    ClusterConfig, DomainView, LvbCopy, NodeFailure, NodeHolder, NodeView, PeerMsg, ReportEntry,
    covers, master_of,
};
pub use mode::{BadMode, Mode};

/// A resource, by domain and name.
type ResKey = (Box<[u8]>, Box<[u8]>);

/// Hashes resource names for the core's tables: SipHash keyed by the lock
/// manager's hash key. The same key gives the same iteration order, so a
/// simulated run replays exactly; lockd picks a random key, so names that
/// collide cannot be worked out in advance. No `Default`: every table is
/// made with its lock manager's key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NameHasher(u64);

impl BuildHasher for NameHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// A table keyed by resource name.
pub(crate) type NameMap<V> = HashMap<Box<[u8]>, V, NameHasher>;

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
    fn is_root(&self) -> bool {
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
    /// Time passed (the deadline from [`Dlm::next_deadline`] may be due).
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

/// The state of a resource's value block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LvbState {
    value: Lvb,
    /// Number of writes; 0 = never written.
    seq: u64,
    valid: bool,
}

impl LvbState {
    const PRISTINE: LvbState = LvbState {
        value: [0; LVB_LEN],
        seq: 0,
        valid: true,
    };
    fn is_pristine(&self) -> bool {
        self.seq == 0 && self.valid
    }
}

#[derive(Debug, Default)]
struct Queues {
    granted: Vec<LockId>,
    converting: Vec<LockId>,
    waiting: Vec<LockId>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }
    fn remove(&mut self, id: LockId) {
        for q in [&mut self.granted, &mut self.converting, &mut self.waiting] {
            if let Some(p) = q.iter().position(|&l| l == id) {
                q.remove(p);
                return;
            }
        }
    }
}

#[derive(Debug)]
struct Resource {
    master: NodeId,
    /// The value block; in a cluster, this node's copy of it.
    lvb: LvbState,
    /// None while no lock refers to the resource (keeps idle resources small).
    queues: Option<Box<Queues>>,
    /// In a cluster: this node's lock on the resource at the cluster level.
    node: Option<Box<cluster::NodeLock>>,
}

#[derive(Debug)]
struct Domain {
    /// Stays until a forced leave.
    pinned: bool,
    /// Connections that joined it without pinning (dlmfs mounts).
    users: BTreeSet<ClientId>,
    /// Boxed values keep the table small: a hash table is up to half empty
    /// just after it grows, and an idle resource is mostly its value block.
    resources: NameMap<Box<Resource>>,
}

impl Domain {
    fn new(hash: NameHasher) -> Self {
        Domain {
            pinned: false,
            users: BTreeSet::new(),
            resources: NameMap::with_hasher(hash),
        }
    }
}

#[derive(Debug)]
struct Lock {
    domain: Box<[u8]>,
    resource: Box<[u8]>,
    node: NodeId,
    /// The connection that owns it; None for a persistent lock.
    owner: Option<ClientId>,
    /// The connection waiting for the pending request, if any.
    requester: Option<ClientId>,
    cred: Cred,
    granted: Option<Mode>,
    requested: Option<Mode>,
    deadline: Option<Millis>,
    /// Modes this lock has been told it blocks, since it was last granted.
    basted: u8,
    /// The pending request is a trylock waiting for the master's answer.
    noqueue: bool,
    /// The pending request needed a node-level request (not a cached grant).
    remote: bool,
}

impl Lock {
    fn notify(&self) -> Option<ClientId> {
        self.requester.or(self.owner)
    }
    fn holder(&self, id: LockId) -> Holder {
        Holder {
            lock: id,
            node: self.node,
            pid: self.cred.pid,
            uid: self.cred.uid,
            granted: self.granted,
            requested: self.requested,
            persistent: self.owner.is_none(),
        }
    }
}

#[derive(Debug)]
struct ClientState {
    cred: Cred,
    /// Locks it owns.
    locks: BTreeSet<LockId>,
    /// Persistent locks whose pending request it waits for.
    pending: BTreeSet<LockId>,
    /// Domains it uses without pinning.
    domains: BTreeSet<Box<[u8]>>,
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

/// The lock manager of one node.
#[derive(Debug)]
pub struct Dlm {
    node: NodeId,
    next_lock: u64,
    domains: BTreeMap<Box<[u8]>, Domain>,
    locks: BTreeMap<LockId, Lock>,
    clients: BTreeMap<ClientId, ClientState>,
    deadlines: BTreeSet<(Millis, LockId)>,
    actions: VecDeque<Action>,
    counters: Counters,
    /// Other nodes that disk heartbeat says are alive.
    live: BTreeSet<NodeId>,
    /// The time of the input being handled.
    now: Millis,
    /// In a cluster: peers, domain membership, mastered resources.
    cluster: Option<Box<cluster::ClusterState>>,
    /// Messages to this node itself, handled after the current input.
    loopback: VecDeque<PeerMsg>,
    /// Fenced: every request is refused.
    fenced: bool,
    /// Keys the name tables (see [`NameHasher`]).
    hash: NameHasher,
}

fn check_name(what: &'static str, name: &[u8]) -> Result<(), DlmError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(DlmError::BadName {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

/// Whether `mode` may be granted beside every other lock's granted mode.
fn compatible_with_holders(
    locks: &BTreeMap<LockId, Lock>,
    q: &Queues,
    me: LockId,
    mode: Mode,
) -> bool {
    q.granted
        .iter()
        .chain(&q.converting)
        .filter(|&&id| id != me)
        .all(|id| locks[id].granted.is_none_or(|g| g.compatible(mode)))
}

impl Dlm {
    /// A lock manager for node `node`.
    pub fn new(node: NodeId) -> Self {
        Dlm {
            node,
            next_lock: 1,
            domains: BTreeMap::new(),
            locks: BTreeMap::new(),
            clients: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            actions: VecDeque::new(),
            counters: Counters::default(),
            live: BTreeSet::new(),
            now: Millis(0),
            cluster: None,
            loopback: VecDeque::new(),
            fenced: false,
            hash: NameHasher(0),
        }
    }

    /// Keys the hash tables of resource names with `key` (0 by default).
    /// Their order of iteration reaches the outputs (the order of messages
    /// in a recovery), so a fixed key replays exactly, as the simulator
    /// needs; a daemon passes a random one, so that no client can choose
    /// names that collide. Call it before the first input.
    #[must_use]
    pub fn with_hash_key(mut self, key: u64) -> Self {
        debug_assert!(
            self.domains.is_empty(),
            "hash key set after the first domain"
        );
        self.hash = NameHasher(key);
        self
    }

    /// Other nodes that disk heartbeat says are alive, in order.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.live.iter().copied().collect()
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = now;
        if let Some(cl) = self.cluster.as_deref_mut() {
            cl.started.get_or_insert(now);
        }
        self.handle_input(now, input);
        self.drain_loopback(now);
    }

    fn handle_input(&mut self, now: Millis, input: Input) {
        match input {
            Input::Connected { client, cred } => {
                self.clients.insert(
                    client,
                    ClientState {
                        cred,
                        locks: BTreeSet::new(),
                        pending: BTreeSet::new(),
                        domains: BTreeSet::new(),
                    },
                );
            }
            Input::Request {
                client,
                tag,
                request,
            } => {
                let reply = match self.clients.get(&client).map(|c| c.cred) {
                    None => Err(DlmError::UnknownClient),
                    Some(_) if self.fenced => Err(DlmError::Fenced),
                    Some(cred) => self.request(now, client, cred, tag, request),
                };
                if let Err(e) = reply {
                    self.reply(client, tag, Reply::Err(e));
                }
            }
            Input::Disconnected { client } => self.disconnect(client),
            Input::Tick => {
                self.expire(now);
                if self.cluster.is_some() {
                    self.cluster_tick(now);
                }
            }
            Input::NodeUp { node } => {
                self.live.insert(node);
            }
            Input::NodeDown { node } => {
                self.live.remove(&node);
                self.node_dead(node);
            }
            Input::PeerUp { node } => self.peer_up(now, node),
            Input::PeerDown { node } => self.peer_down(node),
            Input::Peer { from, msg } => self.on_peer(now, from, msg),
            Input::Fence => self.fence(),
            Input::Unfence => self.fenced = false,
        }
    }

    /// Whether this node is fenced (see [`Input::Fence`]).
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Takes every lock back, tells its client, and starts over as a
    /// fresh node (same clients, same configuration) that refuses requests.
    fn fence(&mut self) {
        let ids: Vec<LockId> = self.locks.keys().copied().collect();
        for id in ids {
            let l = &self.locks[&id];
            let event = if l.granted.is_some() {
                Event::Lost {
                    lock: id,
                    reason: LostReason::Fenced,
                }
            } else {
                Event::Failed {
                    lock: id,
                    failure: Failure::Cancelled,
                }
            };
            self.event(l.notify(), event);
        }
        let waiting: Vec<(ClientId, u64)> = self
            .cluster
            .as_deref()
            .map(|cl| {
                cl.domains
                    .values()
                    .flat_map(|dc| dc.join_waiters.iter().chain(&dc.leave_waiters))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for (client, tag) in waiting {
            self.reply(client, tag, Reply::Err(DlmError::Fenced));
        }
        let mut fresh = match self.cluster.as_deref() {
            Some(cl) => Dlm::new_cluster(
                self.node,
                cluster::ClusterConfig {
                    nodes: cl.nodes.iter().copied().collect(),
                    settle_ms: cl.settle_ms,
                },
            ),
            None => Dlm::new(self.node),
        }
        .with_hash_key(self.hash.0);
        fresh.next_lock = self.next_lock;
        fresh.counters = std::mem::take(&mut self.counters);
        fresh.actions = std::mem::take(&mut self.actions);
        fresh.live = std::mem::take(&mut self.live);
        fresh.now = self.now;
        for (&id, c) in &self.clients {
            fresh.clients.insert(
                id,
                ClientState {
                    cred: c.cred,
                    locks: BTreeSet::new(),
                    pending: BTreeSet::new(),
                    domains: BTreeSet::new(),
                },
            );
        }
        fresh.fenced = true;
        *self = fresh;
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Input::Tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Millis> {
        let local = self.deadlines.first().map(|&(t, _)| t);
        let cluster = self
            .cluster
            .as_deref()
            .and_then(|c| c.retries.first().map(|(t, _)| *t));
        match (local, cluster) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn reply(&mut self, client: ClientId, tag: u64, reply: Reply) {
        self.actions.push_back(Action::Reply { client, tag, reply });
    }

    fn event(&mut self, client: Option<ClientId>, event: Event) {
        if let Some(client) = client {
            self.actions.push_back(Action::Event { client, event });
        }
    }

    fn request(
        &mut self,
        now: Millis,
        client: ClientId,
        cred: Cred,
        tag: u64,
        request: Request,
    ) -> Result<(), DlmError> {
        match request {
            Request::Join { domain, pin } => {
                check_name("domain", &domain)?;
                let hash = self.hash;
                let d = self
                    .domains
                    .entry(domain.clone().into())
                    .or_insert_with(|| Domain::new(hash));
                if pin {
                    d.pinned = true;
                } else {
                    d.users.insert(client);
                    self.clients
                        .get_mut(&client)
                        .expect("known client")
                        .domains
                        .insert(domain.clone().into());
                }
                if self.cluster.is_some() && !self.domain_running(&domain) {
                    // Answered once the cluster has let this node in.
                    self.dc_mut(&domain).join_waiters.push((client, tag));
                    self.drive(&domain);
                } else {
                    self.reply(client, tag, Reply::Ok);
                }
                Ok(())
            }
            Request::Leave { domain, force } => {
                if !self.domains.contains_key(&domain[..]) {
                    return Err(DlmError::NoSuchDomain(
                        String::from_utf8_lossy(&domain).into_owned(),
                    ));
                }
                if force {
                    self.leave_domain(cred, &domain)?;
                    if self.cluster.is_some() {
                        // Answered once the other nodes have taken over.
                        self.dc_mut(&domain).leave_waiters.push((client, tag));
                        self.drive(&domain);
                        return Ok(());
                    }
                } else {
                    let d = self.domains.get_mut(&domain[..]).expect("checked");
                    d.users.remove(&client);
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.domains.remove(&domain[..]);
                    }
                    self.maybe_free_domain(&domain);
                }
                self.reply(client, tag, Reply::Ok);
                Ok(())
            }
            Request::Lock(req) => self.lock(now, client, cred, tag, req),
            Request::Convert {
                lock,
                mode,
                noqueue,
                bast_on_busy,
                timeout_ms,
            } => self.convert(
                now,
                client,
                cred,
                tag,
                lock,
                mode,
                noqueue,
                bast_on_busy,
                timeout_ms,
            ),
            Request::Unlock { lock } => self.unlock(client, cred, tag, lock),
            Request::Cancel { lock } => {
                self.authorize(client, cred, lock, false)?;
                let l = &self.locks[&lock];
                if l.requested.is_none() {
                    return Err(DlmError::NothingToCancel(lock));
                }
                self.reply(client, tag, Reply::Ok);
                self.end_request(lock, Failure::Cancelled);
                Ok(())
            }
            Request::LvbGet { lock } => {
                self.authorize_lvb(client, cred, lock)?;
                let l = &self.locks[&lock];
                let held = l.granted.ok_or(DlmError::NotGranted(lock))?;
                if !held.can_read_lvb() {
                    return Err(DlmError::ModeTooLow {
                        lock,
                        held,
                        need: Mode::CR,
                    });
                }
                let lvb = self.resource(&l.domain, &l.resource).lvb;
                self.reply(
                    client,
                    tag,
                    Reply::Lvb {
                        value: lvb.value,
                        valid: lvb.valid,
                    },
                );
                Ok(())
            }
            Request::LvbSet { lock, value } => {
                self.authorize_lvb(client, cred, lock)?;
                let l = &self.locks[&lock];
                let held = l.granted.ok_or(DlmError::NotGranted(lock))?;
                if !held.can_write_lvb() {
                    return Err(DlmError::ModeTooLow {
                        lock,
                        held,
                        need: Mode::PW,
                    });
                }
                let (d, r) = (l.domain.clone(), l.resource.clone());
                let res = self.resource_mut(&d, &r);
                res.lvb.value = value;
                res.lvb.seq += 1;
                res.lvb.valid = true;
                if let Some(n) = res.node.as_deref_mut() {
                    n.dirty = true;
                }
                self.reply(client, tag, Reply::Ok);
                Ok(())
            }
        }
    }

    /// Checks that `client` may act on `lock`: its own lock, or a persistent
    /// lock of its uid (root: any persistent lock; with `break_any`, any lock).
    fn authorize(
        &self,
        client: ClientId,
        cred: Cred,
        lock: LockId,
        break_any: bool,
    ) -> Result<(), DlmError> {
        let l = self.locks.get(&lock).ok_or(DlmError::NoSuchLock(lock))?;
        match l.owner {
            Some(owner) if owner == client => Ok(()),
            Some(_) if break_any && cred.is_root() => Ok(()),
            Some(_) => Err(DlmError::Permission(format!(
                "lock {lock} belongs to another connection (pid {})",
                l.cred.pid
            ))),
            None if l.cred.uid == cred.uid || cred.is_root() => Ok(()),
            None => Err(DlmError::Permission(format!(
                "lock {lock} belongs to uid {}",
                l.cred.uid
            ))),
        }
    }

    /// Value blocks may be read and written through any lock of the caller's
    /// uid (so a command run under `dlmctl lock` can use its lock), or by root.
    fn authorize_lvb(&self, client: ClientId, cred: Cred, lock: LockId) -> Result<(), DlmError> {
        let l = self.locks.get(&lock).ok_or(DlmError::NoSuchLock(lock))?;
        if l.owner == Some(client) || l.cred.uid == cred.uid || cred.is_root() {
            Ok(())
        } else {
            Err(DlmError::Permission(format!(
                "lock {lock} belongs to uid {}",
                l.cred.uid
            )))
        }
    }

    fn resource(&self, domain: &[u8], name: &[u8]) -> &Resource {
        &self.domains[domain].resources[name]
    }

    fn resource_mut(&mut self, domain: &[u8], name: &[u8]) -> &mut Resource {
        self.domains
            .get_mut(domain)
            .and_then(|d| d.resources.get_mut(name))
            .expect("a lock's resource exists")
    }

    fn queues(&self, domain: &[u8], name: &[u8]) -> &Queues {
        self.resource(domain, name)
            .queues
            .as_deref()
            .expect("a resource with locks has queues")
    }

    fn queues_mut(&mut self, domain: &[u8], name: &[u8]) -> &mut Queues {
        self.resource_mut(domain, name)
            .queues
            .as_deref_mut()
            .expect("a resource with locks has queues")
    }

    fn new_lock_id(&mut self) -> LockId {
        let id = LockId((u64::from(self.node.0) << 56) | self.next_lock);
        self.next_lock += 1;
        id
    }

    fn lock(
        &mut self,
        now: Millis,
        client: ClientId,
        cred: Cred,
        tag: u64,
        req: LockRequest,
    ) -> Result<(), DlmError> {
        check_name("domain", &req.domain)?;
        check_name("resource", &req.resource)?;
        let id = self.new_lock_id();
        let node = self.node;
        let uses = self.clients[&client].domains.contains(&req.domain[..]);
        let (d, r): (Box<[u8]>, Box<[u8]>) = (req.domain.into(), req.resource.into());
        if !self.domains.contains_key(&d) {
            self.domains.insert(d.clone(), Domain::new(self.hash));
        }
        let domain = self.domains.get_mut(&d).expect("just ensured");
        // A lock joins its domain for good unless this client uses it explicitly.
        if !uses {
            domain.pinned = true;
        }
        if !domain.resources.contains_key(&r) {
            domain.resources.insert(
                r.clone(),
                Box::new(Resource {
                    master: node,
                    lvb: LvbState::PRISTINE,
                    queues: None,
                    node: None,
                }),
            );
        }
        domain
            .resources
            .get_mut(&r)
            .expect("just ensured")
            .queues
            .get_or_insert_with(Default::default);
        let persistent = req.flags.persistent;
        self.locks.insert(
            id,
            Lock {
                domain: d,
                resource: r,
                node,
                owner: (!persistent).then_some(client),
                requester: Some(client),
                cred,
                granted: None,
                requested: Some(req.mode),
                deadline: None,
                basted: 0,
                noqueue: false,
                remote: false,
            },
        );
        let c = self.clients.get_mut(&client).expect("known client");
        if persistent {
            c.pending.insert(id);
        } else {
            c.locks.insert(id);
        }
        self.counters.lock_requests += 1;
        self.reply(client, tag, Reply::LockAccepted { lock: id });

        let (grantable, gate) = self.with_names(id, |s, d, r| {
            let q = s.queues(d, r);
            let grantable = q.converting.is_empty()
                && q.waiting.is_empty()
                && compatible_with_holders(&s.locks, q, id, req.mode);
            (grantable, s.node_gate(d, r, req.mode, false))
        });
        // In a cluster, a trylock the node lock does not cover asks the
        // master; one that waits behind a blocked node lock is busy.
        let ask = grantable && gate == Gate::Ask;
        if grantable || ask || !req.flags.noqueue {
            self.with_names(id, |s, d, r| s.queues_mut(d, r).waiting.push(id));
        }
        if grantable && gate == Gate::Yes {
            self.grant(id);
        } else if ask && req.flags.noqueue {
            let l = self.locks.get_mut(&id).expect("exists");
            l.noqueue = true;
            let (d, r) = (l.domain.clone(), l.resource.clone());
            self.grant_pending(&d, &r);
            self.drive(&d);
        } else if req.flags.noqueue {
            let blockers = self.blockers(id, req.mode);
            if req.flags.bast_on_busy {
                self.bast_conflicting(id, req.mode);
            }
            self.counters.busy += 1;
            let l = self.forget(id);
            self.event(
                Some(client),
                Event::Failed {
                    lock: id,
                    failure: Failure::Busy { blockers },
                },
            );
            self.maybe_free(&l.domain, &l.resource);
        } else {
            self.queue_wait(now, id, req.timeout_ms);
            if self.cluster.is_some() {
                // (Names cloned: granting borrows them from the lock.)
                let l = &self.locks[&id];
                let (d, r) = (l.domain.clone(), l.resource.clone());
                self.grant_pending(&d, &r);
                self.drive(&d);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn convert(
        &mut self,
        now: Millis,
        client: ClientId,
        cred: Cred,
        tag: u64,
        id: LockId,
        mode: Mode,
        noqueue: bool,
        bast_on_busy: bool,
        timeout_ms: Option<u64>,
    ) -> Result<(), DlmError> {
        self.authorize(client, cred, id, false)?;
        let l = &self.locks[&id];
        let held = l.granted.ok_or(DlmError::NotGranted(id))?;
        if l.requested.is_some() {
            return Err(DlmError::Pending(id));
        }
        let (d, r) = (l.domain.clone(), l.resource.clone());
        let persistent = l.owner.is_none();
        self.counters.convert_requests += 1;
        self.reply(client, tag, Reply::Ok);
        {
            let l = self.locks.get_mut(&id).expect("exists");
            l.requester = Some(client);
            l.requested = Some(mode);
        }
        if persistent {
            self.clients
                .get_mut(&client)
                .expect("known client")
                .pending
                .insert(id);
        }
        let q = self.queues(&d, &r);
        if mode == held || compatible_with_holders(&self.locks, q, id, mode) {
            let gate = if mode == held {
                Gate::Yes
            } else {
                self.node_gate(&d, &r, mode, true)
            };
            if gate == Gate::Yes {
                self.grant(id);
                self.grant_pending(&d, &r);
                return Ok(());
            }
            // The node lock must go up first: queue it as a conversion and
            // let the node ask its master (a trylock asks with no queueing).
            let q = self.queues_mut(&d, &r);
            q.granted.retain(|&x| x != id);
            q.converting.push(id);
            if noqueue {
                self.locks.get_mut(&id).expect("exists").noqueue = true;
            } else {
                self.queue_wait(now, id, timeout_ms);
            }
            self.grant_pending(&d, &r);
            return Ok(());
        }
        // Conversion deadlock: our granted mode blocks a conversion queued ahead.
        let deadlocked: Vec<Holder> = q
            .converting
            .iter()
            .map(|c| (c, &self.locks[c]))
            .filter(|(_, c)| !held.compatible(c.requested.expect("converting")))
            .map(|(&cid, c)| c.holder(cid))
            .collect();
        if !deadlocked.is_empty() {
            self.counters.deadlocks += 1;
            self.finish_failed_convert(
                id,
                Failure::Deadlock {
                    blockers: deadlocked,
                },
            );
            return Ok(());
        }
        if noqueue {
            let blockers = self.blockers(id, mode);
            if bast_on_busy {
                self.bast_conflicting(id, mode);
            }
            self.counters.busy += 1;
            self.finish_failed_convert(id, Failure::Busy { blockers });
            return Ok(());
        }
        let q = self.queues_mut(&d, &r);
        q.granted.retain(|&x| x != id);
        q.converting.push(id);
        self.queue_wait(now, id, timeout_ms);
        Ok(())
    }

    /// A conversion that ends without a grant: the lock keeps its mode.
    fn finish_failed_convert(&mut self, id: LockId, failure: Failure) {
        let l = self.locks.get_mut(&id).expect("exists");
        l.requested = None;
        l.noqueue = false;
        l.remote = false;
        let to = l.requester.take();
        if let Some(c) = to.and_then(|c| self.clients.get_mut(&c)) {
            c.pending.remove(&id);
        }
        self.event(to, Event::Failed { lock: id, failure });
    }

    /// A request now queued: arm its timeout, tell it who blocks it, tell
    /// the blockers.
    fn queue_wait(&mut self, now: Millis, id: LockId, timeout_ms: Option<u64>) {
        if let Some(ms) = timeout_ms {
            let t = now.after(ms);
            self.locks.get_mut(&id).expect("exists").deadline = Some(t);
            self.deadlines.insert((t, id));
        }
        let l = &self.locks[&id];
        let mode = l.requested.expect("queued");
        let to = l.notify();
        let (d, r) = (l.domain.clone(), l.resource.clone());
        let blockers = self.blockers(id, mode);
        self.event(to, Event::Waiting { lock: id, blockers });
        self.send_basts(&d, &r);
    }

    /// Who keeps `id` from being granted `mode`: the holders of incompatible
    /// modes, or, when there are none, the requests queued ahead of it.
    fn blockers(&self, id: LockId, mode: Mode) -> Vec<Holder> {
        let l = &self.locks[&id];
        let q = self.queues(&l.domain, &l.resource);
        let conflicting: Vec<Holder> = q
            .granted
            .iter()
            .chain(&q.converting)
            .filter(|&&x| x != id)
            .filter(|x| self.locks[x].granted.is_some_and(|g| !g.compatible(mode)))
            .map(|&x| self.locks[&x].holder(x))
            .collect();
        if !conflicting.is_empty() {
            return conflicting;
        }
        q.converting
            .iter()
            .chain(&q.waiting)
            .take_while(|&&x| x != id)
            .map(|&x| self.locks[&x].holder(x))
            .collect()
    }

    /// Tells the holders whose granted mode conflicts with `mode` (trylock
    /// with `bast_on_busy`).
    fn bast_conflicting(&mut self, id: LockId, mode: Mode) {
        let l = &self.locks[&id];
        let q = self.queues(&l.domain, &l.resource);
        let targets: Vec<LockId> = q
            .granted
            .iter()
            .chain(&q.converting)
            .copied()
            .filter(|&x| x != id)
            .collect();
        for t in targets {
            self.maybe_bast(t, mode);
        }
    }

    fn maybe_bast(&mut self, target: LockId, mode: Mode) {
        let l = self.locks.get_mut(&target).expect("exists");
        let Some(g) = l.granted else { return };
        if g.compatible(mode) || l.basted & mode.bit() != 0 {
            return;
        }
        l.basted |= mode.bit();
        let to = l.notify();
        self.counters.basts += 1;
        self.event(to, Event::Bast { lock: target, mode });
    }

    /// Every holder that blocks a queued request learns the blocked mode once.
    fn send_basts(&mut self, d: &[u8], r: &[u8]) {
        let Some(q) = self.resource(d, r).queues.as_deref() else {
            return;
        };
        let queued: Vec<(LockId, Mode)> = q
            .converting
            .iter()
            .chain(&q.waiting)
            .map(|&x| (x, self.locks[&x].requested.expect("queued")))
            .collect();
        let holders: Vec<LockId> = q.granted.iter().chain(&q.converting).copied().collect();
        for (waiter, mode) in queued {
            for &h in &holders {
                // A converting lock is not blocked by its own old mode.
                if h != waiter {
                    self.maybe_bast(h, mode);
                }
            }
        }
    }

    /// Grants `id` its requested mode, wherever it is queued.
    fn grant(&mut self, id: LockId) {
        let l = self.locks.get_mut(&id).expect("exists");
        let mode = l.requested.take().expect("a request to grant");
        l.granted = Some(mode);
        l.basted = 0;
        l.noqueue = false;
        if self.cluster.is_some() && !std::mem::take(&mut l.remote) {
            self.counters.local_grants += 1;
        }
        if let Some(t) = l.deadline.take() {
            self.deadlines.remove(&(t, id));
        }
        let to = l.requester.take();
        if l.owner.is_none() {
            if let Some(c) = to.and_then(|c| self.clients.get_mut(&c)) {
                c.pending.remove(&id);
            }
        }
        self.with_names(id, |s, d, r| {
            let q = s.queues_mut(d, r);
            q.waiting.retain(|&x| x != id);
            q.converting.retain(|&x| x != id);
            if !q.granted.contains(&id) {
                q.granted.push(id);
            }
        });
        self.counters.grants += 1;
        self.event(to, Event::Granted { lock: id, mode });
    }

    /// Serves the queues in order: the head conversion while it can be
    /// granted, then, with no conversion queued, the head new request.
    fn grant_pending(&mut self, d: &[u8], r: &[u8]) {
        if self.cluster.is_some() {
            self.cluster_grant_pending(d, r);
            return;
        }
        loop {
            let Some(q) = self.resource(d, r).queues.as_deref() else {
                return;
            };
            let next = if let Some(&head) = q.converting.first() {
                let mode = self.locks[&head].requested.expect("converting");
                compatible_with_holders(&self.locks, q, head, mode).then_some(head)
            } else if let Some(&head) = q.waiting.first() {
                let mode = self.locks[&head].requested.expect("waiting");
                compatible_with_holders(&self.locks, q, head, mode).then_some(head)
            } else {
                None
            };
            match next {
                Some(id) => self.grant(id),
                None => break,
            }
        }
        self.send_basts(d, r);
    }

    /// Ends the pending request of `id` without a grant (cancel, timeout):
    /// a new lock disappears, a conversion keeps its mode.
    fn end_request(&mut self, id: LockId, failure: Failure) {
        let l = self.locks.get_mut(&id).expect("exists");
        let (d, r) = (l.domain.clone(), l.resource.clone());
        if let Some(t) = l.deadline.take() {
            self.deadlines.remove(&(t, id));
        }
        if l.granted.is_some() {
            let q = self.queues_mut(&d, &r);
            q.converting.retain(|&x| x != id);
            q.granted.push(id);
            self.finish_failed_convert(id, failure);
        } else {
            let to = l.requester;
            self.forget(id);
            self.event(to, Event::Failed { lock: id, failure });
        }
        self.grant_pending(&d, &r);
        self.maybe_free(&d, &r);
    }

    fn unlock(
        &mut self,
        client: ClientId,
        cred: Cred,
        tag: u64,
        id: LockId,
    ) -> Result<(), DlmError> {
        self.authorize(client, cred, id, true)?;
        let l = &self.locks[&id];
        let broken = l.owner.filter(|&o| o != client);
        let pending_to = l.requested.is_some().then_some(l.requester).flatten();
        let pending = l.requested.is_some();
        self.reply(client, tag, Reply::Ok);
        if let Some(owner) = broken {
            self.event(
                Some(owner),
                Event::Lost {
                    lock: id,
                    reason: LostReason::BrokenByRoot,
                },
            );
        } else if pending {
            self.event(
                pending_to,
                Event::Failed {
                    lock: id,
                    failure: Failure::Cancelled,
                },
            );
        }
        self.release(id);
        Ok(())
    }

    /// Removes a lock and lets the queues move.
    fn release(&mut self, id: LockId) {
        self.counters.unlocks += 1;
        let l = self.forget(id);
        self.grant_pending(&l.domain, &l.resource);
        self.maybe_free(&l.domain, &l.resource);
    }

    /// Runs `f` with the lock's domain and resource names borrowed out of it
    /// (no copies on the hot path); they are put back if the lock survives.
    fn with_names<T>(&mut self, id: LockId, f: impl FnOnce(&mut Self, &[u8], &[u8]) -> T) -> T {
        let l = self.locks.get_mut(&id).expect("exists");
        let d = std::mem::take(&mut l.domain);
        let r = std::mem::take(&mut l.resource);
        let out = f(self, &d, &r);
        if let Some(l) = self.locks.get_mut(&id) {
            l.domain = d;
            l.resource = r;
        }
        out
    }

    /// Drops every trace of a lock (queues, deadlines, client bookkeeping)
    /// and returns it.
    fn forget(&mut self, id: LockId) -> Lock {
        let l = self.locks.remove(&id).expect("exists");
        if let Some(t) = l.deadline {
            self.deadlines.remove(&(t, id));
        }
        for c in [l.owner, l.requester].into_iter().flatten() {
            if let Some(c) = self.clients.get_mut(&c) {
                c.locks.remove(&id);
                c.pending.remove(&id);
            }
        }
        if let Some(q) = self
            .domains
            .get_mut(&l.domain)
            .and_then(|d| d.resources.get_mut(&l.resource))
            .and_then(|r| r.queues.as_deref_mut())
        {
            q.remove(id);
        }
        l
    }

    /// Frees a resource with no locks and a value block never written.
    fn maybe_free(&mut self, d: &[u8], r: &[u8]) {
        let Some(dom) = self.domains.get_mut(d) else {
            return;
        };
        let cluster = self.cluster.is_some();
        if let Some(res) = dom.resources.get_mut(r) {
            if res.queues.as_deref().is_some_and(Queues::is_empty) {
                res.queues = None;
            }
            // In a cluster the value block lives on the master; this node's
            // copy goes with its node lock.
            let free = if cluster {
                res.node.as_deref().is_none_or(cluster::NodeLock::is_idle)
            } else {
                res.lvb.is_pristine()
            };
            if res.queues.is_none() && free {
                dom.resources.remove(r);
            }
        }
        self.maybe_free_domain(d);
    }

    /// Frees a domain nobody pins or uses and in which nobody holds locks.
    fn maybe_free_domain(&mut self, d: &[u8]) {
        if self.cluster.is_some() {
            // The node leaves the domain first (see `drive`).
            self.drive(d);
            return;
        }
        let Some(dom) = self.domains.get(d) else {
            return;
        };
        let idle = !dom.pinned
            && dom.users.is_empty()
            && dom.resources.values().all(|r| r.queues.is_none());
        if idle {
            self.domains.remove(d);
        }
    }

    /// A node-level leave: every lock in the domain goes, then the domain.
    fn leave_domain(&mut self, cred: Cred, domain: &[u8]) -> Result<(), DlmError> {
        let ids: Vec<LockId> = self
            .locks
            .iter()
            .filter(|(_, l)| &l.domain[..] == domain)
            .map(|(&id, _)| id)
            .collect();
        let others: BTreeSet<u32> = ids
            .iter()
            .map(|id| self.locks[id].cred.uid)
            .filter(|&u| u != cred.uid)
            .collect();
        if !others.is_empty() && !cred.is_root() {
            return Err(DlmError::Permission(format!(
                "locks in '{}' are held by other users (uid {})",
                String::from_utf8_lossy(domain),
                others
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for id in ids {
            let l = &self.locks[&id];
            if let Some(to) = l.notify() {
                let event = if l.granted.is_some() {
                    Event::Lost {
                        lock: id,
                        reason: LostReason::DomainLeft,
                    }
                } else {
                    Event::Failed {
                        lock: id,
                        failure: Failure::Cancelled,
                    }
                };
                self.event(Some(to), event);
            }
            self.forget(id);
        }
        for c in self.clients.values_mut() {
            c.domains.remove(domain);
        }
        if self.cluster.is_some() {
            // The node lock records stay until the node has left.
            let dom = self.domains.get_mut(domain).expect("checked");
            dom.pinned = false;
            dom.users.clear();
            for r in dom.resources.values_mut() {
                r.queues = None;
            }
            // Node locks others wait for come down now (the node may stay
            // in the domain if something here uses it again).
            let mut names: Vec<Box<[u8]>> = dom.resources.keys().cloned().collect();
            names.sort();
            for r in names {
                self.grant_pending(domain, &r);
                self.maybe_free(domain, &r);
            }
        } else {
            self.domains.remove(domain);
        }
        Ok(())
    }

    fn disconnect(&mut self, client: ClientId) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        let mut touched: BTreeSet<ResKey> = BTreeSet::new();
        for id in c.locks {
            let l = &self.locks[&id];
            touched.insert((l.domain.clone(), l.resource.clone()));
            self.counters.unlocks += 1;
            self.forget(id);
        }
        for id in c.pending {
            let l = self.locks.get_mut(&id).expect("pending lock exists");
            l.requester = None;
            touched.insert((l.domain.clone(), l.resource.clone()));
            if l.granted.is_some() {
                // A persistent lock's conversion dies with its requester.
                l.requested = None;
                if let Some(t) = l.deadline.take() {
                    self.deadlines.remove(&(t, id));
                }
                let (d, r) = (l.domain.clone(), l.resource.clone());
                let q = self.queues_mut(&d, &r);
                if q.converting.contains(&id) {
                    q.converting.retain(|&x| x != id);
                    q.granted.push(id);
                }
            } else {
                self.forget(id);
            }
        }
        for d in &c.domains {
            if let Some(dom) = self.domains.get_mut(d) {
                dom.users.remove(&client);
            }
        }
        for (d, r) in touched {
            self.grant_pending(&d, &r);
            self.maybe_free(&d, &r);
        }
        for d in c.domains {
            self.maybe_free_domain(&d);
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, id));
            self.locks.get_mut(&id).expect("armed lock exists").deadline = None;
            let mode = self.locks[&id].requested.expect("timed request");
            let blockers = self.blockers(id, mode);
            self.counters.timeouts += 1;
            self.end_request(id, Failure::TimedOut { blockers });
        }
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        Stats {
            domains: self.domains.len(),
            resources: self.domains.values().map(|d| d.resources.len()).sum(),
            locks: self.locks.len(),
            clients: self.clients.len(),
            counters: self.counters,
        }
    }

    /// Every domain, sorted by name.
    pub fn domains(&self) -> Vec<DomainInfo> {
        let mut views: BTreeMap<Vec<u8>, (u64, Vec<NodeId>)> = self
            .cluster_domains()
            .into_iter()
            .map(|v| (v.name, (v.epoch, v.members)))
            .collect();
        let mut locks: BTreeMap<&[u8], usize> = BTreeMap::new();
        for l in self.locks.values() {
            *locks.entry(&l.domain[..]).or_default() += 1;
        }
        self.domains
            .iter()
            .map(|(name, d)| {
                let (epoch, members) = views.remove(&name[..]).unwrap_or_default();
                DomainInfo {
                    name: name.to_vec(),
                    pinned: d.pinned,
                    users: d.users.len(),
                    resources: d.resources.len(),
                    locks: locks.get(&name[..]).copied().unwrap_or(0),
                    epoch,
                    members,
                }
            })
            .collect()
    }

    /// Every resource (of one domain, or all), sorted by domain and name.
    /// In a cluster this is what this node knows: its own locks and node
    /// lock, and every node's node lock on the resources it masters.
    pub fn resources(&self, domain: Option<&[u8]>) -> Vec<ResourceInfo> {
        let mut out = Vec::new();
        let mut names: BTreeSet<&[u8]> = self.domains.keys().map(|d| &d[..]).collect();
        let cluster_names: Vec<Box<[u8]>> = self
            .cluster
            .as_deref()
            .map(|c| c.domains.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(cluster_names.iter().map(|d| &d[..]));
        for dname in names {
            if domain.is_some_and(|want| want != dname) {
                continue;
            }
            let mastered = if self.cluster.is_some() {
                self.mastered_names(dname)
            } else {
                Vec::new()
            };
            let mut rnames: BTreeSet<&[u8]> = mastered.iter().map(|r| &r[..]).collect();
            if let Some(d) = self.domains.get(dname) {
                rnames.extend(d.resources.keys().map(|r| &r[..]));
            }
            for name in rnames {
                let r = self.domains.get(dname).and_then(|d| d.resources.get(name));
                let list = |ids: &[LockId]| -> Vec<Holder> {
                    ids.iter().map(|&id| self.locks[&id].holder(id)).collect()
                };
                let (granted, converting, waiting) = match r.and_then(|r| r.queues.as_deref()) {
                    Some(q) => (list(&q.granted), list(&q.converting), list(&q.waiting)),
                    None => Default::default(),
                };
                let (master, nodes, master_lvb) = if self.cluster.is_some() {
                    self.cluster_resource_view(dname, name)
                } else {
                    (r.map_or(self.node, |r| r.master), Vec::new(), None)
                };
                let mut lvb = r.map_or(LvbState::PRISTINE, |r| r.lvb);
                // The master's copy is newer than ours when another node
                // wrote it since we last held the lock.
                if let Some(m) = master_lvb.filter(|m| m.seq > lvb.seq) {
                    lvb = LvbState::from_copy(&m);
                }
                out.push(ResourceInfo {
                    domain: dname.to_vec(),
                    name: name.to_vec(),
                    master,
                    lvb: LvbInfo {
                        value: lvb.value,
                        seq: lvb.seq,
                        valid: lvb.valid,
                    },
                    granted,
                    converting,
                    waiting,
                    node_lock: r
                        .and_then(|r| r.node.as_deref())
                        .map(|n| (n.mode, n.pending.map(|p| p.0))),
                    nodes,
                });
            }
        }
        out
    }

    /// A lock's holder record, if it exists.
    pub fn lock_info(&self, id: LockId) -> Option<Holder> {
        self.locks.get(&id).map(|l| l.holder(id))
    }
}
