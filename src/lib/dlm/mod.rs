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
//! # Files
//!
//! - `types`: the public types (ids, requests, replies, events, inputs,
//!   actions, errors, listings).
//! - `state`: the records the core keeps (domains, resources, locks,
//!   clients) and its name tables.
//! - `engine`: construction, inputs in and actions out, fencing,
//!   disconnections, timeouts.
//! - `requests`: client requests and who may make them.
//! - `queues`: the grant rules over a resource's queues, blocking
//!   notifications, freeing what is unused.
//! - `views`: listings for `dlmctl`.
//! - `mode`: the lock modes.
//! - `cluster` and `node`: the multi-node half (its types, and the cluster
//!   layer of [`Dlm`]); see `cluster` for the protocol.
//! - This file: [`Dlm`] itself.
//!
//! May depend on: std and `thiserror` only.

mod cluster;
mod engine;
mod mode;
mod node;
mod queues;
mod requests;
mod state;
#[cfg(test)]
mod tests;
mod types;
mod views;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use cluster::{
    ClusterConfig, DomainView, LvbCopy, NodeFailure, NodeHolder, NodeView, PeerMsg, ReportEntry,
    covers, master_of,
};
pub use mode::{BadMode, Mode};
use state::{ClientState, Domain, Lock};
pub(crate) use state::{NameHasher, NameMap};
pub use types::{
    Action, ClientId, Counters, Cred, DlmError, DomainInfo, Event, Failure, Holder, Input, LVB_LEN,
    LockFlags, LockId, LockRequest, LostReason, Lvb, LvbInfo, MAX_NAME_LEN, Millis, NodeId, Reply,
    Request, ResourceInfo, Stats,
};

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
