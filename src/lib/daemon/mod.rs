//! lockd's event loop: the I/O shell around the lock manager core.
//!
//! One thread owns the [`Dlm`] and runs an epoll loop over the listening Unix
//! socket, the client connections and a signalfd; the timer is the epoll
//! timeout, computed from the core's next deadline. Each readable connection
//! is read until it would block, every complete frame is decoded and fed to
//! the core, and what the core asks for is encoded into per-connection write
//! buffers that are flushed before the loop sleeps again — one `write` per
//! connection per turn, no lock, no thread hop.
//!
//! In a cluster ([`mesh`]) the same loop also owns the TCP connections to
//! the other nodes' lockd: peer frames are decoded and fed to the core as
//! peer inputs, and the core's messages to other nodes are queued on those
//! connections; disk heartbeat runs on threads that report to the loop.
//!
//! A malformed or oversized frame gets an error message and that connection
//! is closed; nothing a client sends can stop the loop. SIGTERM and SIGINT
//! stop it cleanly and remove the socket file.
//!
//! The loop's state ([`Daemon`], `Loop`, the client connections and the
//! heartbeat regions) is defined here; what the loop does is split by
//! concern: `event_loop` (the turns, the wakeups, routing the core's
//! actions), `clients` (the Unix-socket connections and their requests),
//! `cluster` (registering a cluster, going back to a single node),
//! `regions` (heartbeat regions and the membership they give), `status`
//! (what `dlmctl status` and `hb_ctl status` show), `socket` (taking the
//! socket and its lock file), `fence` (quorum and self-fencing).
//!
//! May depend on: everything in the crate below `cli`; nix for epoll,
//! signalfd, flock and peer credentials. The only place that reads the clock.

mod clients;
mod cluster;
mod event_loop;
mod fence;
mod heartbeat;
pub mod mesh;
mod outbuf;
mod regions;
mod socket;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use nix::fcntl::Flock;
use nix::sys::epoll::Epoll;
use nix::sys::eventfd::EventFd;

use crate::client::SocketPath;
use crate::config::Settings;
use crate::dlm::{Cred, Dlm, Millis, NodeId};
use crate::heartbeat::region;
use crate::quorum::Quorum;
use fence::Fence;
use heartbeat::{RegionThread, Report};
use mesh::{ClusterSetup, Mesh, MeshError, MeshEvent, SetupError};
pub use socket::StartError;

/// What lockd runs as.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Where to listen.
    pub socket: SocketPath,
    /// This node's number.
    pub node: NodeId,
    /// Started on demand by a tool.
    pub autostarted: bool,
    /// Timing settings.
    pub settings: Settings,
    /// The cluster to run (None: a single node, until `o2cb register-cluster`).
    pub cluster: Option<ClusterSetup>,
}

/// Why a daemon-level request (cluster registration, the cluster's
/// heartbeat) is refused, or why lockd stops serving. The text is what the
/// client's `Failed` reply, or lockd on stderr, says.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Neither root nor lockd's own user asked.
    #[error("permission denied: only root or uid {uid} may change lockd's cluster")]
    PermissionDenied {
        /// lockd's user.
        uid: u32,
    },
    /// The request names a cluster and lockd runs none.
    #[error("lockd runs no cluster (single node)")]
    NoCluster,
    /// The request names another cluster than the one running.
    #[error("lockd runs cluster '{running}', not '{asked}'")]
    OtherCluster {
        /// The cluster lockd runs.
        running: String,
        /// The one the request names.
        asked: String,
    },
    /// Registering a cluster while another runs.
    #[error("lockd already runs cluster '{running}'; unregister it first")]
    ClusterRunning {
        /// The cluster lockd runs.
        running: String,
    },
    /// Registering a cluster while the single node holds locks.
    #[error(
        "lockd holds {locks} lock(s) in {domains} domain(s) as a single node, which the cluster never saw; release them (or restart lockd) first"
    )]
    SingleNodeLocks {
        /// Locks held.
        locks: usize,
        /// Domains joined.
        domains: usize,
    },
    /// Registering a cluster while the single node heartbeats.
    #[error("heartbeat regions are active as a single node; stop them first (hb_ctl status)")]
    SingleNodeRegions,
    /// Unregistering while domains are joined.
    #[error("domains are joined: {}", domains.join(", "))]
    DomainsJoined {
        /// Their names.
        domains: Vec<String>,
    },
    /// Unregistering while heartbeat regions are active.
    #[error("heartbeat regions are active; stop them first (o2cb stop-heartbeat {cluster})")]
    RegionsActive {
        /// The cluster.
        cluster: String,
    },
    /// Stopping the heartbeat while domains are joined.
    #[error(
        "domains are joined: {}; the other nodes would take this node for dead while it holds locks",
        domains.join(", ")
    )]
    HeartbeatNeeded {
        /// Their names.
        domains: Vec<String>,
    },
    /// A cluster.conf heartbeat region that names nothing lockd can find.
    #[error("heartbeat region '{region}' is neither an absolute path nor a UUID")]
    BadRegion {
        /// As cluster.conf has it.
        region: String,
    },
    /// Some of the cluster's regions could not be started or stopped.
    #[error("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Regions {
        /// Why, for each.
        errors: Vec<DaemonError>,
    },
    /// The cluster's setup cannot be read.
    #[error(transparent)]
    Setup {
        /// Why.
        #[from]
        source: SetupError,
    },
    /// The connections to the other nodes cannot start.
    #[error(transparent)]
    Mesh {
        /// Why.
        #[from]
        source: MeshError,
    },
    /// A system call failed.
    #[error(transparent)]
    Io {
        /// Why.
        #[from]
        source: io::Error,
    },
}

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const HEARTBEAT: u64 = 2;
/// The peer listener (client and peer connections count up from 3).
const PEER_LISTENER: u64 = 1 << 62;
/// A "connection" that does not exist: replies to it are dropped (for work
/// lockd starts on its own, such as the cluster's heartbeat regions).
const NO_CONN: u64 = u64::MAX;

/// A heartbeat region lockd runs.
struct RegionEntry {
    device: PathBuf,
    region: region::Region,
    thread: Option<RegionThread>,
    /// References per service.
    refs: BTreeMap<String, u32>,
    /// `HbStart` requests answered once the region is steady.
    start_waiters: Vec<(u64, u64)>,
    /// `HbStop` requests answered once the clean-stop block is written.
    stop_waiters: Vec<(u64, u64)>,
    steady: bool,
    direct: bool,
    live: Vec<u8>,
    iterations: u64,
    problem: Option<String>,
    stopping: bool,
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    cred: Cred,
    hello: bool,
    /// Registered for EPOLLOUT.
    writing: bool,
    /// Close once the write buffer is flushed (after a protocol error).
    closing: bool,
}

/// A bound, ready lockd.
pub struct Daemon {
    opts: DaemonOptions,
    listener: UnixListener,
    _lock: Flock<File>,
}

struct Loop<'a> {
    dlm: Dlm,
    /// This node's number (from cluster.conf in a cluster).
    node: NodeId,
    /// Connections to the other nodes, in a cluster.
    mesh: Option<Mesh>,
    /// What the mesh reported, for the core.
    mesh_out: Vec<MeshEvent>,
    wake: Arc<EventFd>,
    hb_tx: Sender<(u64, Report)>,
    hb_rx: Receiver<(u64, Report)>,
    /// The loop's last turn (ms since `start`), read by heartbeat threads.
    alive_ms: Arc<AtomicU64>,
    regions: BTreeMap<u64, RegionEntry>,
    next_region: u64,
    /// Nodes alive on any region, as last told to the core.
    live_union: BTreeSet<u8>,
    /// Nodes the heartbeat saw restart (a new generation in their slot):
    /// their connection may already be the new incarnation's.
    hb_restarted: BTreeSet<u8>,
    /// Nodes a heartbeat region saw die since the last membership update
    /// (a node no longer seen because a region stopped is not dead).
    hb_down: BTreeSet<u8>,
    /// In a cluster: whether this node keeps its locks if the cluster splits.
    quorum: Option<Quorum>,
    /// Where this node is in fencing itself.
    fence: Fence,
    /// A reason to fence found since the last turn (slot taken, declared dead).
    fence_reason: Option<String>,
    /// While the core takes the locks back: the clients told.
    fence_waiting: Option<BTreeSet<u64>>,
    /// Set while fenced: the heartbeat threads stay silent.
    hb_silent: Arc<AtomicBool>,
    /// Read buffer shared by all connections (zeroed once, not per read).
    scratch: Box<[u8]>,
    epoll: Epoll,
    conns: BTreeMap<u64, Conn>,
    next_client: u64,
    start: Instant,
    opts: &'a DaemonOptions,
}

impl Loop<'_> {
    fn now(&self) -> Millis {
        Millis(self.start.elapsed().as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_tools_show_them() {
        let cases = [
            (
                DaemonError::PermissionDenied { uid: 1000 },
                "permission denied: only root or uid 1000 may change lockd's cluster",
            ),
            (
                DaemonError::NoCluster,
                "lockd runs no cluster (single node)",
            ),
            (
                DaemonError::OtherCluster {
                    running: "c1".into(),
                    asked: "c2".into(),
                },
                "lockd runs cluster 'c1', not 'c2'",
            ),
            (
                DaemonError::ClusterRunning {
                    running: "c1".into(),
                },
                "lockd already runs cluster 'c1'; unregister it first",
            ),
            (
                DaemonError::SingleNodeLocks {
                    locks: 2,
                    domains: 1,
                },
                "lockd holds 2 lock(s) in 1 domain(s) as a single node, which the cluster \
                 never saw; release them (or restart lockd) first",
            ),
            (
                DaemonError::SingleNodeRegions,
                "heartbeat regions are active as a single node; stop them first (hb_ctl status)",
            ),
            (
                DaemonError::DomainsJoined {
                    domains: vec!["a".into(), "b".into()],
                },
                "domains are joined: a, b",
            ),
            (
                DaemonError::RegionsActive {
                    cluster: "c1".into(),
                },
                "heartbeat regions are active; stop them first (o2cb stop-heartbeat c1)",
            ),
            (
                DaemonError::HeartbeatNeeded {
                    domains: vec!["d".into()],
                },
                "domains are joined: d; the other nodes would take this node for dead while \
                 it holds locks",
            ),
            (
                DaemonError::Regions {
                    errors: vec![
                        DaemonError::BadRegion {
                            region: "hb1".into(),
                        },
                        DaemonError::BadRegion {
                            region: "sdb".into(),
                        },
                    ],
                },
                "heartbeat region 'hb1' is neither an absolute path nor a UUID; \
                 heartbeat region 'sdb' is neither an absolute path nor a UUID",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
