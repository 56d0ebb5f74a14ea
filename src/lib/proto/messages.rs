//! The client protocol's messages: what a client sends ([`ClientMsg`]) and
//! what lockd answers or pushes ([`ServerMsg`]), with the status and
//! heartbeat listings they carry. Their encoding is `encode` and `decode`.
//!
//! May depend on: `dlm` types, std.

use crate::dlm::{DomainInfo, Event, NodeId, Reply, Request, ResourceInfo, Stats};

/// A message from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// First message: who we are.
    Hello {
        /// Protocol version spoken.
        version: u16,
    },
    /// A request, answered by a reply with the same tag.
    Request {
        /// Chosen by the client; echoed in the reply.
        tag: u64,
        /// The request.
        request: ClientRequest,
    },
}

/// What a client can ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// A lock manager request.
    Dlm(Request),
    /// lockd's status.
    Status,
    /// The domains this node is in.
    Domains,
    /// Resources and their locks (of one domain, or all).
    Locks {
        /// Only this domain.
        domain: Option<Vec<u8>>,
    },
    /// Start heartbeating on a region (or take one more reference on it).
    /// Answered with [`ServerReply::HbRefs`] once the region is steady.
    HbStart {
        /// Which region.
        target: HbTarget,
        /// Who wants it (references are counted per service).
        service: String,
    },
    /// Drop a reference; the last one stops the region (a clean stop).
    HbStop {
        /// Which region.
        target: HbTarget,
        /// Whose reference.
        service: String,
    },
    /// The regions lockd heartbeats on.
    HbStatus,
    /// The references on a region.
    HbRefs {
        /// The region's UUID.
        uuid: [u8; 16],
    },
    /// Run the cluster `cluster` of the cluster.conf at `conf` as node
    /// `node` (a name; empty: the host name). Refused while lockd holds
    /// locks as a single node; a no-op if it runs that cluster already.
    RegisterCluster {
        /// cluster.conf.
        conf: Vec<u8>,
        /// The cluster's name.
        cluster: String,
        /// This node's name, or empty.
        node: String,
    },
    /// Go back to a single node. Refused while domains are joined or
    /// heartbeat regions are active.
    UnregisterCluster {
        /// The cluster's name (must be the one running).
        cluster: String,
    },
    /// Start or stop the running cluster's global heartbeat regions.
    ClusterHeartbeat {
        /// The cluster's name (must be the one running).
        cluster: String,
        /// Start (true) or stop.
        start: bool,
    },
}

/// A heartbeat region, by device (or file) or by UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HbTarget {
    /// A device or file path.
    Device(Vec<u8>),
    /// A region UUID, found by scanning block devices.
    Uuid([u8; 16]),
}

/// A heartbeat region lockd runs, for `hb_ctl status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbRegionInfo {
    /// The device or file.
    pub device: Vec<u8>,
    /// The region's UUID.
    pub uuid: [u8; 16],
    /// "ocfs2" or "raw".
    pub kind: String,
    /// Slot size.
    pub block_bytes: u32,
    /// Byte offset of slot 0.
    pub start_byte: u64,
    /// Number of slots.
    pub slots: u32,
    /// Our slot (node number).
    pub node: u8,
    /// Milliseconds between writes.
    pub interval_ms: u32,
    /// Dead time written in our blocks.
    pub dead_ms: u32,
    /// The region has been stable long enough.
    pub steady: bool,
    /// O_DIRECT I/O (false: buffered fallback).
    pub direct_io: bool,
    /// Other nodes alive on this region.
    pub live: Vec<u8>,
    /// Heartbeat iterations so far.
    pub iterations: u64,
    /// Trouble seen on the last iteration (another writer in our slot, I/O error).
    pub problem: Option<String>,
    /// References, per service.
    pub refs: Vec<(String, u32)>,
}

/// lockd's status, for `dlmctl status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// This node's number.
    pub node: NodeId,
    /// The cluster lockd runs, if any (None: single-node).
    pub cluster: Option<String>,
    /// lockd's process id.
    pub pid: u32,
    /// Milliseconds since lockd started.
    pub uptime_ms: u64,
    /// Whether lockd was started on demand by a tool.
    pub autostarted: bool,
    /// Sizes and counters of the core.
    pub stats: Stats,
    /// In a cluster: every configured node (empty for a single node).
    pub nodes: Vec<NodeStatus>,
    /// In a cluster: whether this node keeps its locks (None: single node).
    pub quorum: Option<QuorumState>,
}

/// Where a node of a cluster stands with the quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumState {
    /// It reaches a quorum of the live nodes and serves requests.
    Quorate,
    /// It lost quorum and is taking its locks back (waiting for clients).
    Fencing,
    /// It fenced itself: no locks, no heartbeat, requests refused until it
    /// reaches a quorum again.
    Fenced,
}

impl QuorumState {
    /// The word `dlmctl status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumState::Quorate => "quorate",
            QuorumState::Fencing => "fencing",
            QuorumState::Fenced => "fenced",
        }
    }
}

/// A configured node of the cluster, for `dlmctl status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its node number.
    pub number: u8,
    /// Its name.
    pub name: String,
    /// `ip:port` of its lockd.
    pub address: String,
    /// This node.
    pub local: bool,
    /// lockd is connected to it (always true for this node).
    pub connected: bool,
    /// Disk heartbeat sees it alive (always true for this node).
    pub heartbeat: bool,
}

/// A message from lockd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// Answer to the hello.
    Welcome {
        /// Protocol version lockd speaks.
        version: u16,
        /// This node.
        node: NodeId,
        /// lockd's process id.
        pid: u32,
        /// If this node fences itself, how long it waits for clients that
        /// held locks to let go before it stops heartbeating
        /// (`network.fence_grace_ms`).
        fence_grace_ms: u32,
    },
    /// Answer to one request.
    Reply {
        /// The request's tag.
        tag: u64,
        /// The answer.
        reply: ServerReply,
    },
    /// Something happened to one of the client's locks.
    Event(Event),
    /// The connection is being closed because of a protocol error.
    Error {
        /// Why.
        message: String,
    },
}

/// The answer to a [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerReply {
    /// Answer to a lock manager request.
    Dlm(Reply),
    /// Answer to `Status`.
    Status(StatusInfo),
    /// Answer to `Domains`.
    Domains(Vec<DomainInfo>),
    /// Answer to `Locks`.
    Locks(Vec<ResourceInfo>),
    /// Answer to `HbStart`, `HbStop` and `HbRefs`: a region's references.
    HbRefs {
        /// The region's UUID.
        uuid: [u8; 16],
        /// References left, all services together.
        refs: u32,
    },
    /// Answer to `HbStatus`.
    HbRegions(Vec<HbRegionInfo>),
    /// A daemon-level request failed; nothing changed.
    Failed {
        /// Why.
        message: String,
    },
    /// A daemon-level request (cluster registration, cluster heartbeat) is done.
    Done,
}
