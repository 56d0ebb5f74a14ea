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
//! May depend on: everything in the crate below `cli`; nix for epoll,
//! signalfd, flock and peer credentials. The only place that reads the clock.

mod fence;
mod heartbeat;
pub mod mesh;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, info, warn};

use crate::client::SocketPath;
use crate::config::Settings;
use crate::dlm::{Action, ClientId, ClusterConfig, Cred, Dlm, Input, Millis, NodeId};
use crate::heartbeat::{liveness, region};
use crate::proto::{
    self, ClientMsg, ClientRequest, HbRegionInfo, HbTarget, NodeStatus, PROTOCOL_VERSION,
    QuorumState, ServerMsg, ServerReply, StatusInfo,
};
use crate::quorum::Quorum;
use fence::Fence;
use heartbeat::{HbParams, RegionThread, Report};
use mesh::{ClusterSetup, Mesh, MeshError, MeshEvent, SetupError};

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

/// Why lockd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another lockd serves this socket.
    #[error("another lockd is already running on {}{}", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
        /// Its pid, if it answered.
        pid: Option<u32>,
    },
    /// A system call failed while setting up.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
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

/// The pid of the lockd answering on `path`, if one answers within 2 s.
fn running_pid(path: &std::path::Path) -> Option<u32> {
    let mut c = crate::client::Client::connect(path).ok()?;
    c.set_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    c.lockd_pid().ok()
}

/// Buffered output larger than this means the client is not reading: it is
/// disconnected rather than allowed to grow lockd's memory.
const MAX_PENDING_OUTPUT: usize = proto::MAX_REPLY_FRAME + (8 << 20);

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const HEARTBEAT: u64 = 2;
/// The peer listener (client and peer connections count up from 3).
const PEER_LISTENER: u64 = 1 << 62;
/// A "connection" that does not exist: replies to it are dropped (for work
/// lockd starts on its own, such as the cluster's heartbeat regions).
const NO_CONN: u64 = u64::MAX;
/// The heartbeat service name of the cluster's global regions.
const CLUSTER_SERVICE: &str = "o2cb";

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

impl RegionEntry {
    fn total_refs(&self) -> u32 {
        self.refs.values().sum()
    }
}

/// A heartbeat region as cluster.conf names it: an absolute path (a file or
/// device of ours) or a UUID (32 hex digits, found by scanning block devices).
fn parse_region(region: &str) -> Result<HbTarget, DaemonError> {
    if region.starts_with('/') {
        return Ok(HbTarget::Device(region.as_bytes().to_vec()));
    }
    let hex: String = region.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut uuid = [0u8; 16];
        for (i, b) in uuid.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
        }
        return Ok(HbTarget::Uuid(uuid));
    }
    Err(DaemonError::BadRegion {
        region: region.to_owned(),
    })
}

/// Block devices from /proc/partitions, for finding a region by UUID.
fn find_by_uuid(uuid: &[u8; 16]) -> Option<(PathBuf, region::Region)> {
    let parts = std::fs::read_to_string("/proc/partitions").ok()?;
    parts
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|name| PathBuf::from("/dev").join(name))
        .filter(|p| p.exists())
        .find_map(|p| match region::locate(&p) {
            Ok(r) if &r.uuid == uuid => Some((p, r)),
            _ => None,
        })
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

impl Daemon {
    /// Takes the socket: refuses if another lockd holds it, replaces a stale
    /// socket file, binds, and makes the socket usable by every local user
    /// (access is decided per request by uid).
    pub fn bind(opts: DaemonOptions) -> Result<Daemon, StartError> {
        let sock = &opts.socket;
        let io_err =
            |what: &'static str, path: PathBuf| move |source| StartError::Io { what, path, source };
        sock.ensure_dir()
            .map_err(io_err("cannot create the directory of", sock.dir()))?;
        let lock_path = sock.lock_file();
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("cannot open", lock_path.clone()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            StartError::AlreadyRunning {
                path: sock.path.clone(),
                pid: running_pid(&sock.path),
            }
        })?;
        if sock.path.exists() {
            if let Some(pid) = running_pid(&sock.path) {
                return Err(StartError::AlreadyRunning {
                    path: sock.path.clone(),
                    pid: Some(pid),
                });
            }
            info!(socket = %sock.path.display(), "replacing a stale socket file");
            std::fs::remove_file(&sock.path)
                .map_err(io_err("cannot remove the stale socket", sock.path.clone()))?;
        }
        let listener = UnixListener::bind(&sock.path)
            .map_err(io_err("cannot listen on", sock.path.clone()))?;
        std::fs::set_permissions(&sock.path, std::fs::Permissions::from_mode(0o666))
            .map_err(io_err("cannot set the mode of", sock.path.clone()))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot configure", sock.path.clone()))?;
        Ok(Daemon {
            opts,
            listener,
            _lock: lock,
        })
    }

    /// Serves until SIGTERM or SIGINT, then removes the socket file.
    pub fn run(self) -> Result<(), DaemonError> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGTERM);
        signals.add(Signal::SIGINT);
        signals.thread_block().map_err(io::Error::from)?;
        // A client that goes away mid-write must give EPIPE, not kill us.
        // SAFETY: setting SIGPIPE to SIG_IGN has no handler to be unsafe about.
        unsafe {
            nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn)
                .map_err(io::Error::from)?;
        }
        let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        epoll
            .add(
                &self.listener,
                EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
            )
            .map_err(io::Error::from)?;
        epoll
            .add(&sfd, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))
            .map_err(io::Error::from)?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(io::Error::from)?,
        );
        epoll
            .add(
                wake.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, HEARTBEAT),
            )
            .map_err(io::Error::from)?;
        let (hb_tx, hb_rx) = channel();
        let mut lp = Loop {
            dlm: Dlm::new(self.opts.node).with_hash_key(heartbeat::random_generation()),
            node: self.opts.node,
            mesh: None,
            mesh_out: Vec::new(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            epoll,
            conns: BTreeMap::new(),
            next_client: 3,
            wake,
            hb_tx,
            hb_rx,
            alive_ms: Arc::new(AtomicU64::new(0)),
            regions: BTreeMap::new(),
            next_region: 1,
            live_union: BTreeSet::new(),
            hb_restarted: BTreeSet::new(),
            hb_down: BTreeSet::new(),
            quorum: None,
            fence: Fence::No,
            fence_reason: None,
            fence_waiting: None,
            hb_silent: Arc::new(AtomicBool::new(false)),
            start: Instant::now(),
            opts: &self.opts,
        };
        if let Some(setup) = self.opts.cluster.clone() {
            lp.enter_cluster(setup)?;
        } else {
            info!(
                socket = %self.opts.socket.path.display(),
                node = self.opts.node.0,
                autostarted = self.opts.autostarted,
                "lockd serving (single node)"
            );
        }
        let result = lp.serve(&self.listener, &sfd).map_err(DaemonError::from);
        if let Some(m) = lp.mesh.take() {
            m.shutdown(&lp.epoll);
        }
        // Clean stops: every region writes its generation-0 block.
        for (_, e) in std::mem::take(&mut lp.regions) {
            if let Some(t) = e.thread {
                t.join();
            }
        }
        let _ = std::fs::remove_file(&self.opts.socket.path);
        info!("lockd stopped");
        result
    }
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

    fn serve(&mut self, listener: &UnixListener, sfd: &SignalFd) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            self.alive_ms.store(self.now().0, Ordering::SeqCst);
            // While heartbeating, turn at least twice per interval so the
            // heartbeat threads see a live loop.
            let hb_tick = (!self.regions.is_empty())
                .then(|| u64::from(self.opts.settings.heartbeat.interval_ms / 2));
            let deadline = self
                .dlm
                .next_deadline()
                .map(|t| t.0.saturating_sub(self.now().0));
            let mesh_deadline = self
                .mesh
                .as_ref()
                .and_then(Mesh::next_deadline)
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64 + 1);
            let quorum_deadline = self
                .quorum
                .as_ref()
                .and_then(Quorum::next_deadline)
                .into_iter()
                .chain(self.fence.deadline())
                .min()
                .map(|t| t.0.saturating_sub(self.now().0) + 1);
            let deadline = [deadline, mesh_deadline, quorum_deadline]
                .into_iter()
                .flatten()
                .min();
            let timeout = match (deadline, hb_tick) {
                (None, None) => EpollTimeout::NONE,
                (a, b) => {
                    let ms = a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)).min(60_000);
                    EpollTimeout::try_from(ms as i32).unwrap_or(EpollTimeout::NONE)
                }
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept(listener),
                    SIGNALS => {
                        if let Ok(Some(si)) = sfd.read_signal() {
                            info!(signal = si.ssi_signo, "stopping");
                            return Ok(());
                        }
                    }
                    HEARTBEAT => {
                        let _ = self.wake.read();
                        while let Ok((key, report)) = self.hb_rx.try_recv() {
                            self.region_report(key, report);
                        }
                    }
                    token if self.mesh.as_ref().is_some_and(|m| m.owns(token)) => {
                        self.mesh_event(token, ev.events());
                    }
                    token => self.conn_event(token, ev.events()),
                }
            }
            if let Some(m) = self.mesh.as_mut() {
                if m.next_deadline().is_some_and(|t| t <= Instant::now()) {
                    m.tick(&self.epoll, &mut self.next_client, &mut self.mesh_out);
                    self.feed_mesh();
                }
            }
            if self.dlm.next_deadline().is_some_and(|t| t <= self.now()) {
                self.dlm.handle(self.now(), Input::Tick);
                self.route();
            }
            self.check_quorum();
            self.flush_all();
        }
    }

    fn mesh_event(&mut self, token: u64, flags: EpollFlags) {
        if let Some(m) = self.mesh.as_mut() {
            m.event(
                token,
                flags,
                &self.epoll,
                &mut self.next_client,
                &mut self.mesh_out,
            );
        }
        self.feed_mesh();
    }

    /// Hands what the mesh reported to the core.
    fn feed_mesh(&mut self) {
        let now = self.now();
        for ev in std::mem::take(&mut self.mesh_out) {
            let input = match ev {
                // Its old incarnation is dead: recovered from before the
                // new one is believed.
                MeshEvent::Restarted(n) => {
                    self.dlm.handle(now, Input::NodeDown { node: NodeId(n) });
                    // The heartbeat may have seen the new one alive already.
                    if self.live_union.contains(&n) {
                        Input::NodeUp { node: NodeId(n) }
                    } else {
                        continue;
                    }
                }
                MeshEvent::Up(n) => {
                    if let Some(q) = self.quorum.as_mut() {
                        q.connected(n);
                    }
                    Input::PeerUp { node: NodeId(n) }
                }
                MeshEvent::Down(n) => {
                    if let Some(q) = self.quorum.as_mut() {
                        q.disconnected(now, n);
                    }
                    Input::PeerDown { node: NodeId(n) }
                }
                MeshEvent::DeclaredDead(n) => {
                    self.declared_dead(n);
                    continue;
                }
                MeshEvent::Msg(n, msg) => Input::Peer {
                    from: NodeId(n),
                    msg,
                },
            };
            self.dlm.handle(now, input);
        }
        self.route();
    }

    /// Becomes a node of `setup`'s cluster: listens for peers, connects,
    /// runs a cluster core, and starts the cluster's global heartbeat.
    fn enter_cluster(&mut self, setup: ClusterSetup) -> Result<(), MeshError> {
        let node = NodeId(setup.node);
        let hb = &self.opts.settings.heartbeat;
        let net = &self.opts.settings.network;
        // Joins wait for the mesh to form (and heartbeat to see the other
        // nodes, when there is a region), unless every node connects first.
        let mut settle_ms = u64::from(net.reconnect_delay_ms) + 1000;
        if !setup.regions.is_empty() {
            settle_ms += u64::from(hb.interval_ms) * u64::from(liveness::LIVE_THRESHOLD + 2);
        }
        let config = ClusterConfig {
            nodes: setup.nodes.keys().map(|&n| NodeId(n)).collect(),
            settle_ms,
        };
        let regions = setup.regions.clone();
        let mesh = Mesh::start(setup, &self.opts.settings, &self.epoll, PEER_LISTENER)?;
        info!(
            socket = %self.opts.socket.path.display(),
            cluster = %mesh.setup.name,
            node = node.0,
            "lockd serving (cluster)"
        );
        self.mesh = Some(mesh);
        self.node = node;
        self.dlm = Dlm::new_cluster(node, config).with_hash_key(heartbeat::random_generation());
        self.quorum = Some(Quorum::new(
            node.0,
            u64::from(net.idle_timeout_ms),
            self.quorum_source(),
        ));
        // The settle wait counts from now, not from the first request.
        let now = self.now();
        self.dlm.handle(now, Input::Tick);
        self.reconnect_clients();
        for r in regions {
            if let Err(e) = self.cluster_region(&r, true) {
                warn!(region = %r, error = %e, "cannot start the cluster's heartbeat region");
            }
        }
        Ok(())
    }

    /// Tells a fresh core about the connected clients.
    fn reconnect_clients(&mut self) {
        let now = self.now();
        let clients: Vec<(u64, Cred)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.hello)
            .map(|(&t, c)| (t, c.cred))
            .collect();
        for (t, cred) in clients {
            self.dlm.handle(
                now,
                Input::Connected {
                    client: ClientId(t),
                    cred,
                },
            );
        }
    }

    /// Starts or stops (this service's reference on) one of the cluster's
    /// global regions, named by absolute path or UUID.
    fn cluster_region(&mut self, region: &str, start: bool) -> Result<(), DaemonError> {
        let target = parse_region(region)?;
        let found = self.find_region(&target);
        let has_ref = found.is_some_and(|k| self.regions[&k].refs.contains_key(CLUSTER_SERVICE));
        match (start, has_ref) {
            (true, false) => self.hb_start(NO_CONN, 0, target, CLUSTER_SERVICE.into()),
            (false, true) => self.hb_stop(NO_CONN, 0, target, CLUSTER_SERVICE.into()),
            _ => {}
        }
        Ok(())
    }

    fn accept(&mut self, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    return;
                }
            };
            let cred = match getsockopt(&stream, PeerCredentials) {
                Ok(c) => Cred {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    warn!(error = %e, "no peer credentials; closing");
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_client;
            self.next_client += 1;
            if let Err(e) = self
                .epoll
                .add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                warn!(error = %e, "cannot watch a client");
                continue;
            }
            debug!(client = token, uid = cred.uid, pid = cred.pid, "connected");
            self.conns.insert(
                token,
                Conn {
                    stream,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    cred,
                    hello: false,
                    writing: false,
                    closing: false,
                },
            );
        }
    }

    fn conn_event(&mut self, token: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(token);
        }
        if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            let eof = self.read(token);
            self.process(token);
            if eof {
                self.close(token);
            }
        }
    }

    /// Reads what is available; true at end of stream or on error. A short
    /// read means the socket is drained for now (the poll is level-triggered,
    /// so anything arriving later is reported again), which saves the read
    /// that would only say EAGAIN.
    fn read(&mut self, token: u64) -> bool {
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        let buf = &mut self.scratch[..];
        loop {
            match c.stream.read(buf) {
                Ok(0) => return true,
                Ok(n) => {
                    c.rbuf.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Decodes and handles every complete frame of a connection.
    fn process(&mut self, token: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            if c.closing {
                return;
            }
            let msg = match proto::decode_client(&c.rbuf) {
                Ok(Some((m, used))) => {
                    c.rbuf.drain(..used);
                    m
                }
                Ok(None) => return,
                Err(e) => {
                    debug!(client = token, error = %e, "bad frame; closing");
                    self.fail(token, format!("bad frame: {e}"));
                    return;
                }
            };
            self.handle(token, msg);
        }
    }

    /// Sends a protocol error and closes once it is written.
    fn fail(&mut self, token: u64, message: String) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.wbuf
                .extend_from_slice(&proto::encode_server(&ServerMsg::Error { message }));
            c.closing = true;
            c.rbuf.clear();
        }
    }

    fn send(&mut self, token: u64, msg: &ServerMsg) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.wbuf = proto::encode_server_into(msg, std::mem::take(&mut c.wbuf));
        }
    }

    fn handle(&mut self, token: u64, msg: ClientMsg) {
        let c = &self.conns[&token];
        let client = ClientId(token);
        match msg {
            ClientMsg::Hello { version } if !c.hello => {
                if version != PROTOCOL_VERSION {
                    self.fail(
                        token,
                        format!("protocol version {version} is not supported; this lockd speaks {PROTOCOL_VERSION}"),
                    );
                    return;
                }
                let cred = c.cred;
                self.conns.get_mut(&token).expect("exists").hello = true;
                self.dlm
                    .handle(self.now(), Input::Connected { client, cred });
                self.send(
                    token,
                    &ServerMsg::Welcome {
                        version: PROTOCOL_VERSION,
                        node: self.node,
                        pid: std::process::id(),
                        fence_grace_ms: self.opts.settings.network.fence_grace_ms,
                    },
                );
            }
            ClientMsg::Hello { .. } => self.fail(token, "second hello".into()),
            ClientMsg::Request { .. } if !c.hello => {
                self.fail(token, "hello expected first".into())
            }
            ClientMsg::Request { tag, request } => match request {
                ClientRequest::Dlm(request) => {
                    self.dlm.handle(
                        self.now(),
                        Input::Request {
                            client,
                            tag,
                            request,
                        },
                    );
                    self.route();
                }
                ClientRequest::Status => {
                    // A fencing node has no mesh for a while: its nodes
                    // are listed unconnected.
                    let links: Vec<(u8, String, String, bool)> = match &self.mesh {
                        Some(m) => m
                            .status()
                            .into_iter()
                            .map(|l| (l.node, l.name, l.addr.to_string(), l.connected))
                            .collect(),
                        None => self
                            .fence
                            .setup()
                            .map(|s| {
                                s.nodes
                                    .iter()
                                    .map(|(&n, p)| {
                                        (n, p.name.clone(), p.addr.to_string(), n == s.node)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    };
                    let nodes = links
                        .into_iter()
                        .map(|(number, name, address, connected)| {
                            let local = number == self.node.0;
                            NodeStatus {
                                number,
                                name,
                                address,
                                local,
                                connected,
                                heartbeat: local || self.live_union.contains(&number),
                            }
                        })
                        .collect();
                    let cluster = self
                        .mesh
                        .as_ref()
                        .map(|m| &m.setup)
                        .or(self.fence.setup())
                        .map(|s| s.name.clone());
                    let reply = ServerReply::Status(StatusInfo {
                        node: self.node,
                        cluster,
                        pid: std::process::id(),
                        uptime_ms: self.start.elapsed().as_millis() as u64,
                        autostarted: self.opts.autostarted,
                        stats: self.dlm.stats(),
                        nodes,
                        quorum: self.quorum.as_ref().map(|_| self.fence.state()),
                    });
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::RegisterCluster {
                    conf,
                    cluster,
                    node,
                } => {
                    let cred = self.conns[&token].cred;
                    let r = self.allowed(cred).and_then(|()| {
                        self.register_cluster(
                            PathBuf::from(OsStr::from_bytes(&conf)),
                            &cluster,
                            &node,
                        )
                    });
                    self.answer(token, tag, r);
                }
                ClientRequest::UnregisterCluster { cluster } => {
                    let cred = self.conns[&token].cred;
                    let r = self
                        .allowed(cred)
                        .and_then(|()| self.unregister_cluster(&cluster));
                    self.answer(token, tag, r);
                }
                ClientRequest::ClusterHeartbeat { cluster, start } => {
                    let cred = self.conns[&token].cred;
                    let r = self
                        .allowed(cred)
                        .and_then(|()| self.cluster_heartbeat(&cluster, start));
                    self.answer(token, tag, r);
                }
                ClientRequest::Domains => {
                    let reply = ServerReply::Domains(self.dlm.domains());
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::Locks { domain } => {
                    let resources = self.dlm.resources(domain.as_deref());
                    let count = resources.len();
                    let msg = ServerMsg::Reply {
                        tag,
                        reply: ServerReply::Locks(resources),
                    };
                    let frame = proto::encode_server(&msg);
                    if frame.len() - 4 > proto::MAX_REPLY_FRAME {
                        let message = format!(
                            "the listing of {count} resources is too large ({} bytes, at most {}); list one domain",
                            frame.len() - 4,
                            proto::MAX_REPLY_FRAME
                        );
                        self.reply_failed(token, tag, message);
                    } else if let Some(c) = self.conns.get_mut(&token) {
                        c.wbuf.extend_from_slice(&frame);
                    }
                }
                ClientRequest::HbStart { target, service } => {
                    self.hb_start(token, tag, target, service)
                }
                ClientRequest::HbStop { target, service } => {
                    self.hb_stop(token, tag, target, service)
                }
                ClientRequest::HbStatus => {
                    let reply = ServerReply::HbRegions(
                        self.regions.values().map(|e| self.region_info(e)).collect(),
                    );
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::HbRefs { uuid } => {
                    let refs = self
                        .regions
                        .values()
                        .filter(|e| e.region.uuid == uuid && !e.stopping)
                        .map(RegionEntry::total_refs)
                        .sum();
                    self.send(
                        token,
                        &ServerMsg::Reply {
                            tag,
                            reply: ServerReply::HbRefs { uuid, refs },
                        },
                    );
                }
            },
        }
    }

    /// Cluster registration is for root or lockd's own user.
    fn allowed(&self, cred: Cred) -> Result<(), DaemonError> {
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid == 0 || cred.uid == me {
            Ok(())
        } else {
            Err(DaemonError::PermissionDenied { uid: me })
        }
    }

    fn answer(&mut self, token: u64, tag: u64, r: Result<(), DaemonError>) {
        let reply = match r {
            Ok(()) => ServerReply::Done,
            Err(e) => ServerReply::Failed {
                message: e.to_string(),
            },
        };
        self.send(token, &ServerMsg::Reply { tag, reply });
    }

    fn running_cluster(&self, cluster: &str) -> Result<&Mesh, DaemonError> {
        match &self.mesh {
            None => Err(DaemonError::NoCluster),
            Some(m) if m.setup.name != cluster => Err(DaemonError::OtherCluster {
                running: m.setup.name.clone(),
                asked: cluster.to_owned(),
            }),
            Some(m) => Ok(m),
        }
    }

    fn register_cluster(
        &mut self,
        conf: PathBuf,
        cluster: &str,
        node: &str,
    ) -> Result<(), DaemonError> {
        if let Some(m) = &self.mesh {
            return if m.setup.name == cluster {
                Ok(())
            } else {
                Err(DaemonError::ClusterRunning {
                    running: m.setup.name.clone(),
                })
            };
        }
        let st = self.dlm.stats();
        if st.locks > 0 || st.domains > 0 {
            return Err(DaemonError::SingleNodeLocks {
                locks: st.locks,
                domains: st.domains,
            });
        }
        if !self.regions.is_empty() {
            return Err(DaemonError::SingleNodeRegions);
        }
        let setup = ClusterSetup::load(&conf, Some(cluster), (!node.is_empty()).then_some(node))?;
        Ok(self.enter_cluster(setup)?)
    }

    /// The names of the domains joined.
    fn joined_domains(&self) -> Vec<String> {
        self.dlm
            .domains()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.name).into_owned())
            .collect()
    }

    fn unregister_cluster(&mut self, cluster: &str) -> Result<(), DaemonError> {
        self.running_cluster(cluster)?;
        let domains = self.joined_domains();
        if !domains.is_empty() {
            return Err(DaemonError::DomainsJoined { domains });
        }
        if self.regions.values().any(|e| !e.stopping) {
            return Err(DaemonError::RegionsActive {
                cluster: cluster.to_owned(),
            });
        }
        let m = self.mesh.take().expect("running");
        m.shutdown(&self.epoll);
        self.quorum = None;
        self.node = self.opts.node;
        self.dlm = Dlm::new(self.node).with_hash_key(heartbeat::random_generation());
        self.reconnect_clients();
        info!(cluster, "cluster unregistered; lockd serves a single node");
        Ok(())
    }

    fn cluster_heartbeat(&mut self, cluster: &str, start: bool) -> Result<(), DaemonError> {
        let regions = self.running_cluster(cluster)?.setup.regions.clone();
        if !start && !regions.is_empty() {
            // The others would see this node stop and recover its locks
            // while it still holds them.
            let domains = self.joined_domains();
            if !domains.is_empty() {
                return Err(DaemonError::HeartbeatNeeded { domains });
            }
        }
        let errors: Vec<DaemonError> = regions
            .iter()
            .filter_map(|r| self.cluster_region(r, start).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DaemonError::Regions { errors })
        }
    }

    fn reply_failed(&mut self, token: u64, tag: u64, message: String) {
        self.send(
            token,
            &ServerMsg::Reply {
                tag,
                reply: ServerReply::Failed { message },
            },
        );
    }

    fn region_info(&self, e: &RegionEntry) -> HbRegionInfo {
        let hb = &self.opts.settings.heartbeat;
        HbRegionInfo {
            device: e.device.as_os_str().as_bytes().to_vec(),
            uuid: e.region.uuid,
            kind: e.region.kind.to_string(),
            block_bytes: e.region.block_bytes,
            start_byte: e.region.start_byte,
            slots: e.region.slots,
            node: self.node.0,
            interval_ms: hb.interval_ms,
            dead_ms: hb.interval_ms.saturating_mul(hb.dead_threshold),
            steady: e.steady,
            direct_io: e.direct,
            live: e.live.clone(),
            iterations: e.iterations,
            problem: e.problem.clone(),
            refs: e.refs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// The active region a target names, if any.
    fn find_region(&self, target: &HbTarget) -> Option<u64> {
        let by_uuid = |u: &[u8; 16]| {
            self.regions
                .iter()
                .find(|(_, e)| &e.region.uuid == u && !e.stopping)
                .map(|(&k, _)| k)
        };
        match target {
            HbTarget::Uuid(u) => by_uuid(u),
            HbTarget::Device(p) => {
                let path = PathBuf::from(OsStr::from_bytes(p));
                self.regions
                    .iter()
                    .find(|(_, e)| e.device == path && !e.stopping)
                    .map(|(&k, _)| k)
                    .or_else(|| region::locate(&path).ok().and_then(|r| by_uuid(&r.uuid)))
            }
        }
    }

    fn hb_start(&mut self, token: u64, tag: u64, target: HbTarget, service: String) {
        if let Some(key) = self.find_region(&target) {
            let e = self.regions.get_mut(&key).expect("found");
            *e.refs.entry(service).or_default() += 1;
            if e.steady {
                let reply = ServerReply::HbRefs {
                    uuid: e.region.uuid,
                    refs: e.total_refs(),
                };
                self.send(token, &ServerMsg::Reply { tag, reply });
            } else {
                e.start_waiters.push((token, tag));
            }
            return;
        }
        // Locating reads a few blocks; it is done here, on the loop, as the
        // kernel's configfs write is synchronous too.
        let found = match &target {
            HbTarget::Device(p) => {
                let path = PathBuf::from(OsStr::from_bytes(p));
                region::locate(&path)
                    .map(|r| (path, r))
                    .map_err(|e| e.to_string())
            }
            HbTarget::Uuid(u) => find_by_uuid(u).ok_or_else(|| {
                format!(
                    "no block device holds heartbeat region {}",
                    u.iter().map(|b| format!("{b:02X}")).collect::<String>()
                )
            }),
        };
        let (device, reg) = match found {
            Ok(f) => f,
            Err(m) => return self.reply_failed(token, tag, m),
        };
        if u32::from(self.node.0) >= reg.slots {
            return self.reply_failed(
                token,
                tag,
                format!(
                    "node {} has no slot in a region of {} slots",
                    self.node.0, reg.slots
                ),
            );
        }
        let key = self.next_region;
        self.next_region += 1;
        let hb = &self.opts.settings.heartbeat;
        let thread = heartbeat::spawn(
            key,
            HbParams {
                device: device.clone(),
                region: reg.clone(),
                node: self.node.0,
                interval_ms: hb.interval_ms,
                dead_threshold: hb.dead_threshold,
                silent: self.hb_silent.clone(),
            },
            self.alive_ms.clone(),
            self.start,
            self.hb_tx.clone(),
            self.wake.clone(),
        );
        self.regions.insert(
            key,
            RegionEntry {
                device,
                region: reg,
                thread: Some(thread),
                refs: BTreeMap::from([(service, 1)]),
                start_waiters: vec![(token, tag)],
                stop_waiters: Vec::new(),
                steady: false,
                direct: false,
                live: Vec::new(),
                iterations: 0,
                problem: None,
                stopping: false,
            },
        );
    }

    fn hb_stop(&mut self, token: u64, tag: u64, target: HbTarget, service: String) {
        let Some(key) = self.find_region(&target) else {
            return self.reply_failed(
                token,
                tag,
                "lockd is not heartbeating on that region".into(),
            );
        };
        let e = self.regions.get_mut(&key).expect("found");
        let uuid = e.region.uuid;
        match e.refs.get_mut(&service) {
            None => {
                let held: Vec<String> = e.refs.iter().map(|(s, n)| format!("{s}: {n}")).collect();
                let message = format!(
                    "the region has no reference for service '{service}' (references: {})",
                    held.join(", ")
                );
                return self.reply_failed(token, tag, message);
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    e.refs.remove(&service);
                }
            }
        }
        let refs = e.total_refs();
        if refs > 0 {
            self.send(
                token,
                &ServerMsg::Reply {
                    tag,
                    reply: ServerReply::HbRefs { uuid, refs },
                },
            );
            return;
        }
        e.stopping = true;
        e.stop_waiters.push((token, tag));
        if let Some(t) = &e.thread {
            t.stop();
        }
    }

    /// What a region thread said.
    fn region_report(&mut self, key: u64, report: Report) {
        let Some(e) = self.regions.get_mut(&key) else {
            return;
        };
        let uuid = e.region.uuid;
        match report {
            Report::Started { direct } => e.direct = direct,
            Report::Failed(message) => {
                warn!(device = %e.device.display(), error = %message, "heartbeat could not start");
                let e = self.regions.remove(&key).expect("exists");
                for (t, tag) in e.start_waiters.iter().chain(&e.stop_waiters) {
                    self.reply_failed(*t, *tag, message.clone());
                }
                self.update_membership();
            }
            Report::Iteration {
                events,
                live,
                steady,
                iterations,
                problem,
                slot_taken,
            } => {
                if slot_taken {
                    self.fence_reason = Some(format!(
                        "another node writes this node's heartbeat slot on {}",
                        e.device.display()
                    ));
                }
                for ev in &events {
                    match ev {
                        liveness::Event::NodeUp { .. } | liveness::Event::NodeDown { .. } => {
                            info!(device = %e.device.display(), "{ev}");
                        }
                        _ => {}
                    }
                    if let liveness::Event::NodeDown { node, reason } = ev {
                        self.hb_down.insert(*node);
                        if *reason == liveness::DownReason::GenerationChanged {
                            self.hb_restarted.insert(*node);
                        }
                    }
                }
                e.live = live;
                e.steady = e.steady || steady;
                e.iterations = iterations;
                e.problem = problem;
                // The kernel gives up on a region that does not settle within
                // three times the steady count.
                let give_up = !e.steady
                    && iterations >= 3 * (u64::from(liveness::LIVE_THRESHOLD) + 1)
                    && !e.stopping;
                let waiters = if e.steady || give_up {
                    std::mem::take(&mut e.start_waiters)
                } else {
                    Vec::new()
                };
                let refs = e.total_refs();
                if give_up {
                    e.stopping = true;
                    e.refs.clear();
                    if let Some(t) = &e.thread {
                        t.stop();
                    }
                }
                for (t, tag) in waiters {
                    if give_up {
                        self.reply_failed(t, tag, "unable to stabilize heartbeat".into());
                    } else {
                        self.send(
                            t,
                            &ServerMsg::Reply {
                                tag,
                                reply: ServerReply::HbRefs { uuid, refs },
                            },
                        );
                    }
                }
                self.update_membership();
            }
            Report::Stopped => {
                let e = self.regions.remove(&key).expect("exists");
                if let Some(t) = e.thread {
                    t.join();
                }
                for (t, tag) in e.stop_waiters {
                    self.send(
                        t,
                        &ServerMsg::Reply {
                            tag,
                            reply: ServerReply::HbRefs { uuid, refs: 0 },
                        },
                    );
                }
                self.update_membership();
            }
        }
    }

    /// A node is alive if it is alive on any region; tell the core of changes.
    fn update_membership(&mut self) {
        let source = self.quorum_source();
        let now: BTreeSet<u8> = self
            .regions
            .values()
            .filter(|e| !e.stopping)
            .flat_map(|e| e.live.iter().copied())
            .collect();
        for n in now.difference(&self.live_union) {
            self.dlm
                .handle(self.start_elapsed(), Input::NodeUp { node: NodeId(*n) });
        }
        let died = std::mem::take(&mut self.hb_down);
        // Only a death a region saw is a death: a node unseen because this
        // node stopped its own heartbeat may be alive and well.
        let dead: Vec<u8> = self
            .live_union
            .difference(&now)
            .filter(|n| died.contains(n))
            .copied()
            .collect();
        self.live_union = now;
        let t = self.now();
        if let Some(q) = self.quorum.as_mut() {
            q.set_source(source);
            q.heartbeating(t, &self.live_union);
            for n in &dead {
                q.dead(*n);
            }
        }
        let restarted = std::mem::take(&mut self.hb_restarted);
        for n in dead {
            // A restart the handshake already reported (the new incarnation
            // is connected, maybe a member again): nothing more to do.
            if restarted.contains(&n) && self.mesh.as_ref().is_some_and(|m| m.restart_reported(n)) {
                continue;
            }
            self.dlm
                .handle(self.start_elapsed(), Input::NodeDown { node: NodeId(n) });
            // A node that stopped heartbeating: its connection, if any, is
            // the dead incarnation's, and that incarnation may not come
            // back. One that restarted: the handshake tells the incarnations
            // apart, and the connection may already be the new one's.
            if !restarted.contains(&n) {
                if let Some(m) = self.mesh.as_mut() {
                    m.disconnect(n, &self.epoll, &mut self.mesh_out);
                }
            }
        }
        if self.mesh_out.is_empty() {
            self.route();
        } else {
            self.feed_mesh();
        }
    }

    fn start_elapsed(&self) -> Millis {
        self.now()
    }

    /// Moves the core's actions into the connections' write buffers.
    fn route(&mut self) {
        while let Some(a) = self.dlm.poll_action() {
            let (client, msg) = match a {
                Action::Reply { client, tag, reply } => (
                    client,
                    ServerMsg::Reply {
                        tag,
                        reply: ServerReply::Dlm(reply),
                    },
                ),
                Action::Event { client, event } => {
                    if let (Some(w), crate::dlm::Event::Lost { .. }) =
                        (self.fence_waiting.as_mut(), &event)
                    {
                        w.insert(client.0);
                    }
                    (client, ServerMsg::Event(event))
                }
                Action::Send { to, msg } => {
                    if let Some(m) = self.mesh.as_mut() {
                        m.send(to.0, msg);
                    }
                    continue;
                }
            };
            self.send(client.0, &msg);
        }
    }

    fn flush_all(&mut self) {
        if let Some(m) = self.mesh.as_mut() {
            m.flush_all(&self.epoll, &mut self.mesh_out);
            if !self.mesh_out.is_empty() {
                self.feed_mesh();
            }
        }
        let dirty: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.wbuf.is_empty() || c.closing)
            .map(|(&t, _)| t)
            .collect();
        for t in dirty {
            self.flush(t);
        }
    }

    fn flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let mut written = 0;
        let mut broken = false;
        while written < c.wbuf.len() {
            match c.stream.write(&c.wbuf[written..]) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        c.wbuf.drain(..written);
        if broken || (c.closing && c.wbuf.is_empty()) {
            self.close(token);
            return;
        }
        if c.wbuf.len() > MAX_PENDING_OUTPUT {
            warn!(client = token, "client does not read its replies; closing");
            self.close(token);
            return;
        }
        let want = !c.wbuf.is_empty();
        if want != c.writing {
            c.writing = want;
            let flags = if want {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
            } else {
                EpollFlags::EPOLLIN
            };
            let mut ev = EpollEvent::new(flags, token);
            let _ = self.epoll.modify(c.stream.as_fd(), &mut ev);
        }
    }

    fn close(&mut self, token: u64) {
        let Some(c) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.epoll.delete(c.stream.as_fd());
        debug!(client = token, "disconnected");
        if c.hello {
            self.dlm.handle(
                self.now(),
                Input::Disconnected {
                    client: ClientId(token),
                },
            );
            self.route();
        }
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
                        parse_region("hb1").unwrap_err(),
                        parse_region("sdb").unwrap_err(),
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

    #[test]
    fn regions_are_paths_or_uuids() {
        assert_eq!(
            parse_region("/dev/sdb").unwrap(),
            HbTarget::Device(b"/dev/sdb".to_vec())
        );
        assert_eq!(
            parse_region("0123456789ABCDEF-0123456789abcdef").unwrap(),
            HbTarget::Uuid([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ])
        );
        assert!(matches!(
            parse_region("sdb"),
            Err(DaemonError::BadRegion { region }) if region == "sdb"
        ));
    }
}
