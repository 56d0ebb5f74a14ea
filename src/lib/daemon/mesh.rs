//! lockd's connections to the other nodes' lockd: the peer mesh.
//!
//! Every lockd of a cluster listens on its node's `ip_address:ip_port` from
//! cluster.conf and keeps one TCP connection to every other configured
//! node. As o2net does, the node with the higher number connects to the
//! lower one, from its own configured address; the accepting side checks the
//! handshake (protocol version, cluster name, the node's number and name,
//! the source address) and answers `Welcome` or `Refused`. An established
//! connection carries lock manager messages; when nothing was sent for the
//! keepalive delay a keepalive goes out, and a connection that heard nothing
//! for the idle timeout is dropped. The connecting side tries again after
//! the reconnect delay. A malformed frame drops that connection, never the
//! daemon.
//!
//! The mesh is driven by the daemon's epoll loop: it registers its sockets
//! there and reports what happened (a peer up or down, a message) as
//! [`MeshEvent`]s for the lock manager core.
//!
//! May depend on: `config`, `dlm` types, `proto::peer`, std, nix.

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd as _, IntoRawFd as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, getsockopt, socket, sockopt,
};
use tracing::{debug, info, warn};

use crate::config::file::LoadError;
use crate::config::{self, HeartbeatMode, Settings};
use crate::dlm::PeerMsg;
use crate::proto::peer::{self, PEER_VERSION, PeerFrame};

/// A configured node, as the mesh needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its name in cluster.conf.
    pub name: String,
    /// Where its lockd listens.
    pub addr: SocketAddrV4,
}

/// The cluster a lockd runs, from cluster.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSetup {
    /// The file it came from.
    pub conf: PathBuf,
    /// The cluster's name.
    pub name: String,
    /// This node's number.
    pub node: u8,
    /// Every configured node, this one included.
    pub nodes: BTreeMap<u8, PeerAddr>,
    /// Global heartbeat regions (absolute paths or UUIDs), empty in local
    /// heartbeat mode.
    pub regions: Vec<String>,
}

/// Whether `node_name` names this host the way o2cb decides which node is
/// local: equal ignoring case to the host name, or to its part before the
/// first dot.
pub fn is_local_name(node_name: &str, hostname: &str) -> bool {
    let short = hostname.split('.').next().unwrap_or(hostname);
    node_name.eq_ignore_ascii_case(hostname) || node_name.eq_ignore_ascii_case(short)
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Why the cluster of a cluster.conf cannot be run. The text is what
/// lockd prints, or `o2cb register-cluster` reports.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The file cannot be read or parsed.
    #[error(transparent)]
    Load {
        /// Why.
        #[from]
        source: LoadError,
    },
    /// The named cluster is not in the file.
    #[error("cluster '{name}' is not in {} (clusters: {})", conf.display(), names(clusters))]
    NoSuchCluster {
        /// The cluster asked for.
        name: String,
        /// The file.
        conf: PathBuf,
        /// The clusters it defines.
        clusters: Vec<String>,
    },
    /// No cluster was named and the file defines none.
    #[error("{} defines no cluster", conf.display())]
    NoCluster {
        /// The file.
        conf: PathBuf,
    },
    /// No cluster was named and the file defines more than one.
    #[error("{} defines several clusters ({}); name one", conf.display(), names(clusters))]
    SeveralClusters {
        /// The file.
        conf: PathBuf,
        /// The clusters it defines.
        clusters: Vec<String>,
    },
    /// The node named is not in the cluster.
    #[error(
        "node '{node}' is not in cluster '{cluster}' of {} (configured nodes: {}); pass --node NAME",
        conf.display(),
        names(nodes)
    )]
    NoSuchNode {
        /// The node asked for.
        node: String,
        /// The cluster.
        cluster: String,
        /// The file.
        conf: PathBuf,
        /// The cluster's nodes.
        nodes: Vec<String>,
    },
    /// No node was named and none matches the host name.
    #[error(
        "node host name '{host}' is not in cluster '{cluster}' of {} (configured nodes: {}); pass --node NAME",
        conf.display(),
        names(nodes)
    )]
    HostNotInCluster {
        /// This machine's host name.
        host: String,
        /// The cluster.
        cluster: String,
        /// The file.
        conf: PathBuf,
        /// The cluster's nodes.
        nodes: Vec<String>,
    },
    /// A node number lockd cannot use.
    #[error("node '{name}' has number {number}, above 254")]
    BadNumber {
        /// The node.
        name: String,
        /// Its number.
        number: u32,
    },
    /// A port that is not one.
    #[error("node '{name}' has port {port}, not 1-65535")]
    BadPort {
        /// The node.
        name: String,
        /// Its port.
        port: u32,
    },
}

impl ClusterSetup {
    /// Reads the cluster from `conf`: the one named `cluster` (or the only
    /// one), with this node found by `node` (a node name; default: the host
    /// name, as o2cb matches it).
    pub fn load(
        conf: &Path,
        cluster: Option<&str>,
        node: Option<&str>,
    ) -> Result<Self, SetupError> {
        let cc = config::file::load(conf)?;
        let cluster_names = || cc.clusters.iter().map(|c| c.name.clone()).collect();
        let c = match cluster {
            Some(name) => cc.cluster(name).ok_or_else(|| SetupError::NoSuchCluster {
                name: name.to_owned(),
                conf: conf.to_owned(),
                clusters: cluster_names(),
            })?,
            None => match cc.clusters.as_slice() {
                [one] => one,
                [] => {
                    return Err(SetupError::NoCluster {
                        conf: conf.to_owned(),
                    });
                }
                _ => {
                    return Err(SetupError::SeveralClusters {
                        conf: conf.to_owned(),
                        clusters: cluster_names(),
                    });
                }
            },
        };
        let host = hostname();
        let me = match node {
            Some(n) => c
                .nodes
                .iter()
                .find(|x| x.name == n)
                .or_else(|| c.nodes.iter().find(|x| x.name.eq_ignore_ascii_case(n))),
            None => c.nodes.iter().find(|x| is_local_name(&x.name, &host)),
        };
        let Some(me) = me else {
            let cluster = c.name.clone();
            let conf = conf.to_owned();
            let nodes = c.nodes.iter().map(|n| n.name.clone()).collect();
            return Err(match node {
                Some(n) => SetupError::NoSuchNode {
                    node: n.to_owned(),
                    cluster,
                    conf,
                    nodes,
                },
                None => SetupError::HostNotInCluster {
                    host,
                    cluster,
                    conf,
                    nodes,
                },
            });
        };
        let mut nodes = BTreeMap::new();
        for n in &c.nodes {
            let number = u8::try_from(n.number)
                .ok()
                .filter(|&x| x < 255)
                .ok_or_else(|| SetupError::BadNumber {
                    name: n.name.clone(),
                    number: n.number,
                })?;
            let port = u16::try_from(n.ip_port)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| SetupError::BadPort {
                    name: n.name.clone(),
                    port: n.ip_port,
                })?;
            nodes.insert(
                number,
                PeerAddr {
                    name: n.name.clone(),
                    addr: SocketAddrV4::new(n.ip_address, port),
                },
            );
        }
        let regions = if c.heartbeat_mode == HeartbeatMode::Global {
            c.heartbeats.iter().map(|h| h.region.clone()).collect()
        } else {
            Vec::new()
        };
        Ok(ClusterSetup {
            conf: conf.to_owned(),
            name: c.name.clone(),
            node: me.number as u8,
            nodes,
            regions,
        })
    }

    /// This node's listening address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.nodes[&self.node].addr
    }
}

/// Names for a message: "a, b", or "none".
fn names(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// What the mesh tells the core.
#[derive(Debug)]
pub enum MeshEvent {
    /// A connection to the node is established.
    Up(u8),
    /// The connection to the node is gone.
    Down(u8),
    /// The node's lockd restarted (a new incarnation connected): its old
    /// incarnation is dead, its locks gone. Comes before the `Up`.
    Restarted(u8),
    /// A message from the node.
    Msg(u8, PeerMsg),
    /// The node refused this one as an incarnation it declared dead (and
    /// recovered from): this lockd must fence itself and come back anew.
    DeclaredDead(u8),
}

/// The refusal that tells a node it was declared dead (recognised by
/// [`MeshEvent::DeclaredDead`]).
const DECLARED_DEAD: &str = "was declared dead and its locks recovered; its lockd must restart";

/// Why the mesh cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// This node's address cannot be listened on.
    #[error("cannot listen on {addr} (node {node}): {source}")]
    Listen {
        /// The address.
        addr: SocketAddrV4,
        /// This node.
        node: u8,
        /// Why.
        source: io::Error,
    },
    /// The listening socket cannot be set up or watched.
    #[error(transparent)]
    Io {
        /// Why.
        #[from]
        source: io::Error,
    },
}

/// Why the accepting side refuses a connection. Its text is the reason
/// the `Refused` frame carries to the other node.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The first frame was something else.
    #[error("expected a hello")]
    NotHello,
    /// Another peer protocol version.
    #[error("peer protocol version {version} is not supported; this lockd speaks {PEER_VERSION}")]
    Version {
        /// The version spoken.
        version: u16,
    },
    /// Another cluster.
    #[error("cluster '{cluster}' does not match this node's cluster '{ours}'")]
    OtherCluster {
        /// The connecting node's cluster.
        cluster: String,
        /// This node's.
        ours: String,
    },
    /// Meant for another node.
    #[error("this is node {me}, not node {to}")]
    NotThisNode {
        /// This node.
        me: u8,
        /// The node asked for.
        to: u8,
    },
    /// A node number this cluster does not have (or this node's own).
    #[error("node {from} is not configured in cluster '{cluster}'")]
    NotConfigured {
        /// The connecting node's number.
        from: u8,
        /// The cluster.
        cluster: String,
    },
    /// The node's name is not the one configured for its number.
    #[error("node {from} is '{configured}' in this node's cluster.conf, not '{name}'")]
    WrongName {
        /// The connecting node's number.
        from: u8,
        /// The name configured for it.
        configured: String,
        /// The name it gave.
        name: String,
    },
    /// The lower number waits to be connected to.
    #[error("node {from} must wait for node {me} to connect (higher numbers connect to lower)")]
    MustWait {
        /// The connecting node's number.
        from: u8,
        /// This node.
        me: u8,
    },
    /// Not from the node's configured address.
    #[error("node {from} must connect from {expected}, not {}", .got.map_or_else(|| "?".into(), |i| i.to_string()))]
    WrongAddress {
        /// The connecting node's number.
        from: u8,
        /// Its configured address.
        expected: Ipv4Addr,
        /// Where it connected from, if IPv4.
        got: Option<Ipv4Addr>,
    },
    /// An incarnation this node declared dead.
    #[error("node {node} {DECLARED_DEAD}")]
    DeclaredDead {
        /// The node.
        node: u8,
    },
}

/// Output buffered beyond this means the peer does not read: the
/// connection is dropped (the core sends what matters again on reconnect).
const MAX_PENDING: usize = 64 << 20;
/// A handshake must complete within this long.
const HANDSHAKE_MS: u64 = 10_000;

struct PConn {
    stream: TcpStream,
    token: u64,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    writing: bool,
    /// Non-blocking connect in progress.
    connecting: bool,
    /// Handshake done.
    up: bool,
    since: Instant,
    last_rx: Instant,
    last_tx: Instant,
}

impl PConn {
    fn new(stream: TcpStream, token: u64, connecting: bool, now: Instant) -> Self {
        PConn {
            stream,
            token,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            writing: false,
            connecting,
            up: false,
            since: now,
            last_rx: now,
            last_tx: now,
        }
    }
    fn push(&mut self, frame: &PeerFrame, now: Instant) {
        peer::encode_peer_into(frame, &mut self.wbuf);
        self.last_tx = now;
    }
}

#[derive(Default)]
struct Link {
    conn: Option<PConn>,
    /// When the connecting side tries again.
    retry_at: Option<Instant>,
    /// Last refusal or connect error, for status and to log once.
    last_error: Option<String>,
    /// The incarnation of the node's lockd last connected.
    generation: Option<u64>,
    /// An incarnation declared dead: it may not come back.
    dead_generation: Option<u64>,
    /// The connection up now is a new incarnation's, reported as
    /// [`MeshEvent::Restarted`].
    restart_reported: bool,
}

/// A configured node's connection state, for status listings.
#[derive(Clone, Debug)]
pub struct LinkStatus {
    /// Node number.
    pub node: u8,
    /// Its name.
    pub name: String,
    /// `ip:port`.
    pub addr: SocketAddrV4,
    /// This node itself.
    pub local: bool,
    /// Connected and past the handshake.
    pub connected: bool,
}

/// The peer mesh of one lockd.
pub struct Mesh {
    /// The cluster it connects.
    pub setup: ClusterSetup,
    listener: TcpListener,
    listener_token: u64,
    links: BTreeMap<u8, Link>,
    /// Accepted connections waiting for their Hello.
    accepted: BTreeMap<u64, PConn>,
    /// Token of each established or connecting link.
    tokens: BTreeMap<u64, u8>,
    keepalive: Duration,
    idle: Duration,
    reconnect: Duration,
    /// This lockd's incarnation, sent in the handshake.
    generation: u64,
    /// Reused for reads (not zeroed for each one).
    scratch: Box<[u8]>,
}

impl Mesh {
    /// Listens on this node's address and registers with `epoll`.
    pub fn start(
        setup: ClusterSetup,
        settings: &Settings,
        epoll: &Epoll,
        listener_token: u64,
    ) -> Result<Mesh, MeshError> {
        let addr = setup.addr();
        let listener = TcpListener::bind(addr).map_err(|source| MeshError::Listen {
            addr,
            node: setup.node,
            source,
        })?;
        listener.set_nonblocking(true)?;
        epoll
            .add(
                &listener,
                EpollEvent::new(EpollFlags::EPOLLIN, listener_token),
            )
            .map_err(io::Error::from)?;
        let now = Instant::now();
        let links = setup
            .nodes
            .keys()
            .filter(|&&n| n != setup.node)
            .map(|&n| {
                (
                    n,
                    Link {
                        retry_at: (n < setup.node).then_some(now),
                        ..Link::default()
                    },
                )
            })
            .collect();
        info!(cluster = %setup.name, node = setup.node, %addr, "listening for peers");
        Ok(Mesh {
            setup,
            listener,
            listener_token,
            links,
            accepted: BTreeMap::new(),
            tokens: BTreeMap::new(),
            keepalive: Duration::from_millis(u64::from(settings.network.keepalive_delay_ms.max(1))),
            idle: Duration::from_millis(u64::from(settings.network.idle_timeout_ms.max(1))),
            reconnect: Duration::from_millis(u64::from(settings.network.reconnect_delay_ms)),
            generation: super::heartbeat::random_generation(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        })
    }

    /// Whether `token` is one of the mesh's.
    pub fn owns(&self, token: u64) -> bool {
        token == self.listener_token
            || self.tokens.contains_key(&token)
            || self.accepted.contains_key(&token)
    }

    /// Closes everything (unregister-cluster, shutdown).
    pub fn shutdown(mut self, epoll: &Epoll) {
        let _ = epoll.delete(&self.listener);
        for (_, l) in std::mem::take(&mut self.links) {
            if let Some(c) = l.conn {
                let _ = epoll.delete(c.stream.as_fd());
            }
        }
        for (_, c) in std::mem::take(&mut self.accepted) {
            let _ = epoll.delete(c.stream.as_fd());
        }
    }

    /// Connection states of every configured node.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.setup
            .nodes
            .iter()
            .map(|(&n, p)| LinkStatus {
                node: n,
                name: p.name.clone(),
                addr: p.addr,
                local: n == self.setup.node,
                connected: n == self.setup.node
                    || self
                        .links
                        .get(&n)
                        .and_then(|l| l.conn.as_ref())
                        .is_some_and(|c| c.up),
            })
            .collect()
    }

    /// Queues a lock manager message (dropped when there is no connection:
    /// the core sends what matters again after the next `Up`).
    pub fn send(&mut self, to: u8, msg: PeerMsg) {
        let now = Instant::now();
        if let Some(c) = self.links.get_mut(&to).and_then(|l| l.conn.as_mut()) {
            if c.up {
                c.push(&PeerFrame::Msg(msg), now);
            }
        }
    }

    /// The next time [`Mesh::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut take = |t: Instant| {
            if best.is_none_or(|b| t < b) {
                best = Some(t);
            }
        };
        for l in self.links.values() {
            match &l.conn {
                Some(c) if c.up => {
                    take(c.last_tx + self.keepalive);
                    take(c.last_rx + self.idle);
                }
                Some(c) => take(c.since + Duration::from_millis(HANDSHAKE_MS)),
                None => {
                    if let Some(t) = l.retry_at {
                        take(t);
                    }
                }
            }
        }
        for c in self.accepted.values() {
            take(c.since + Duration::from_millis(HANDSHAKE_MS));
        }
        best
    }

    /// Connect attempts, keepalives, idle and handshake timeouts.
    pub fn tick(&mut self, epoll: &Epoll, next_token: &mut u64, out: &mut Vec<MeshEvent>) {
        let now = Instant::now();
        let nodes: Vec<u8> = self.links.keys().copied().collect();
        for n in nodes {
            let l = self.links.get_mut(&n).expect("listed");
            match &mut l.conn {
                Some(c) if c.up => {
                    if now >= c.last_rx + self.idle {
                        warn!(
                            node = n,
                            idle_ms = self.idle.as_millis() as u64,
                            "peer silent for the idle timeout; dropping the connection"
                        );
                        self.drop_link(n, epoll, out);
                    } else if now >= c.last_tx + self.keepalive {
                        c.push(&PeerFrame::Keepalive, now);
                    }
                }
                Some(c) => {
                    if now >= c.since + Duration::from_millis(HANDSHAKE_MS) {
                        debug!(node = n, "handshake timed out");
                        self.drop_link(n, epoll, out);
                    }
                }
                None => {
                    if l.retry_at.is_some_and(|t| now >= t) {
                        self.connect(n, epoll, next_token);
                    }
                }
            }
        }
        let stale: Vec<u64> = self
            .accepted
            .iter()
            .filter(|(_, c)| now >= c.since + Duration::from_millis(HANDSHAKE_MS))
            .map(|(&t, _)| t)
            .collect();
        for t in stale {
            if let Some(c) = self.accepted.remove(&t) {
                let _ = epoll.delete(c.stream.as_fd());
            }
        }
    }

    /// Starts a non-blocking connect to `n`, from this node's address.
    fn connect(&mut self, n: u8, epoll: &Epoll, next_token: &mut u64) {
        let now = Instant::now();
        let me = self.setup.addr();
        let to = self.setup.nodes[&n].addr;
        let link = self.links.get_mut(&n).expect("configured");
        link.retry_at = None;
        let result = (|| -> io::Result<TcpStream> {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::from(SocketAddrV4::new(*me.ip(), 0)),
            )?;
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)) {
                Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
                Err(e) => return Err(e.into()),
            }
            // SAFETY: the descriptor was just created and is owned here.
            Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
        })();
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                self.note_error(n, format!("cannot connect to {to}: {e}"));
                self.links.get_mut(&n).expect("configured").retry_at = Some(now + self.reconnect);
                return;
            }
        };
        let token = *next_token;
        *next_token += 1;
        if let Err(e) = epoll.add(
            stream.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLIN, token),
        ) {
            warn!(error = %e, "cannot watch a peer connection");
            link.retry_at = Some(now + self.reconnect);
            return;
        }
        let mut c = PConn::new(stream, token, true, now);
        c.writing = true;
        let link = self.links.get_mut(&n).expect("configured");
        link.conn = Some(c);
        self.tokens.insert(token, n);
    }

    fn note_error(&mut self, n: u8, msg: String) {
        let link = self.links.get_mut(&n).expect("configured");
        if link.last_error.as_deref() != Some(msg.as_str()) {
            // Logged once per distinct error, not on every retry.
            info!(node = n, "{msg}");
            link.last_error = Some(msg);
        } else {
            debug!(node = n, "{msg}");
        }
    }

    /// Accepts incoming connections.
    pub fn accept(&mut self, epoll: &Epoll, next_token: &mut u64) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept on the peer port failed");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let token = *next_token;
            *next_token += 1;
            if epoll
                .add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
                .is_err()
            {
                continue;
            }
            self.accepted
                .insert(token, PConn::new(stream, token, false, Instant::now()));
        }
    }

    /// Something happened on one of the mesh's sockets.
    pub fn event(
        &mut self,
        token: u64,
        flags: EpollFlags,
        epoll: &Epoll,
        next_token: &mut u64,
        out: &mut Vec<MeshEvent>,
    ) {
        if token == self.listener_token {
            self.accept(epoll, next_token);
            return;
        }
        if self.accepted.contains_key(&token) {
            self.accepted_event(token, epoll, out);
            return;
        }
        let Some(&n) = self.tokens.get(&token) else {
            return;
        };
        let now = Instant::now();
        let c = self
            .links
            .get_mut(&n)
            .and_then(|l| l.conn.as_mut())
            .expect("token of a link");
        if c.connecting
            && flags.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
        {
            let err = getsockopt(&c.stream, sockopt::SocketError).unwrap_or(libc::EIO);
            if err != 0 {
                let to = self.setup.nodes[&n].addr;
                let e = io::Error::from_raw_os_error(err);
                self.note_error(n, format!("cannot connect to {to}: {e}"));
                self.drop_link(n, epoll, out);
                return;
            }
            c.connecting = false;
            let _ = c.stream.set_nodelay(true);
            let hello = PeerFrame::Hello {
                version: PEER_VERSION,
                cluster: self.setup.name.clone(),
                from: self.setup.node,
                from_name: self.setup.nodes[&self.setup.node].name.clone(),
                to: n,
                generation: self.generation,
            };
            c.push(&hello, now);
        }
        if (flags.contains(EpollFlags::EPOLLOUT) || !c.wbuf.is_empty())
            && self.flush_link(n, epoll).is_err()
        {
            self.drop_link(n, epoll, out);
            return;
        }
        if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            let c = self
                .links
                .get_mut(&n)
                .and_then(|l| l.conn.as_mut())
                .expect("still there");
            if c.connecting {
                return;
            }
            let eof = read_all(&mut c.stream, &mut c.rbuf, &mut self.scratch);
            c.last_rx = now;
            if !self.process_link(n, epoll, out) {
                return;
            }
            if eof {
                debug!(node = n, "peer closed the connection");
                self.drop_link(n, epoll, out);
            }
        }
    }

    /// Decodes a link's frames; false if the link was dropped.
    fn process_link(&mut self, n: u8, epoll: &Epoll, out: &mut Vec<MeshEvent>) -> bool {
        loop {
            let dead_generation = self.links[&n].dead_generation;
            let c = self
                .links
                .get_mut(&n)
                .and_then(|l| l.conn.as_mut())
                .expect("link");
            let frame = match peer::decode_peer(&c.rbuf) {
                Ok(Some((f, used))) => {
                    c.rbuf.drain(..used);
                    f
                }
                Ok(None) => return true,
                Err(e) => {
                    warn!(node = n, error = %e, "malformed frame from peer; dropping the connection");
                    self.drop_link(n, epoll, out);
                    return false;
                }
            };
            match frame {
                PeerFrame::Msg(m) if c.up => out.push(MeshEvent::Msg(n, m)),
                PeerFrame::Keepalive if c.up => {}
                PeerFrame::Welcome { generation, .. } if dead_generation == Some(generation) => {
                    let reason = Refusal::DeclaredDead { node: n }.to_string();
                    // It must learn it: it may not know it was cut off.
                    c.push(
                        &PeerFrame::Refused {
                            reason: reason.clone(),
                        },
                        Instant::now(),
                    );
                    let _ = c.stream.write(&c.wbuf);
                    self.note_error(n, reason);
                    self.drop_link(n, epoll, out);
                    return false;
                }
                PeerFrame::Welcome { node, generation } if !c.up && node == n => {
                    c.up = true;
                    let link = self.links.get_mut(&n).expect("link");
                    link.last_error = None;
                    info!(node = n, "connected to peer");
                    Self::new_generation(link, n, generation, out);
                    out.push(MeshEvent::Up(n));
                }
                PeerFrame::Refused { reason } => {
                    if reason.ends_with(DECLARED_DEAD) {
                        out.push(MeshEvent::DeclaredDead(n));
                    }
                    self.note_error(n, format!("node {n} refused the connection: {reason}"));
                    self.drop_link(n, epoll, out);
                    return false;
                }
                other => {
                    warn!(node = n, frame = ?other, "unexpected frame from peer; dropping the connection");
                    self.drop_link(n, epoll, out);
                    return false;
                }
            }
        }
    }

    /// A connection accepted and not yet identified.
    fn accepted_event(&mut self, token: u64, epoll: &Epoll, out: &mut Vec<MeshEvent>) {
        let c = self.accepted.get_mut(&token).expect("accepted");
        let eof = read_all(&mut c.stream, &mut c.rbuf, &mut self.scratch);
        let frame = match peer::decode_peer(&c.rbuf) {
            Ok(Some((f, used))) => {
                c.rbuf.drain(..used);
                f
            }
            Ok(None) => {
                if eof {
                    let c = self.accepted.remove(&token).expect("accepted");
                    let _ = epoll.delete(c.stream.as_fd());
                }
                return;
            }
            Err(e) => {
                let c = self.accepted.remove(&token).expect("accepted");
                warn!(peer = ?c.stream.peer_addr().ok(), error = %e, "malformed handshake; closing");
                let _ = epoll.delete(c.stream.as_fd());
                return;
            }
        };
        let mut c = self.accepted.remove(&token).expect("accepted");
        let peer_ip = c.stream.peer_addr().ok().and_then(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
            std::net::SocketAddr::V6(_) => None,
        });
        match self.check_hello(&frame, peer_ip) {
            Err(reason) => {
                warn!(peer = ?c.stream.peer_addr().ok(), %reason, "refusing a peer connection");
                let now = Instant::now();
                c.push(
                    &PeerFrame::Refused {
                        reason: reason.to_string(),
                    },
                    now,
                );
                // Best effort: the refusal is small; then close.
                let _ = c.stream.write(&c.wbuf);
                let _ = epoll.delete(c.stream.as_fd());
            }
            Ok(n) => {
                // A new connection from a node replaces its old one.
                if self.links.get(&n).is_some_and(|l| l.conn.is_some()) {
                    debug!(node = n, "replacing the connection to a peer");
                    self.drop_link(n, epoll, out);
                }
                let now = Instant::now();
                c.up = true;
                c.push(
                    &PeerFrame::Welcome {
                        node: self.setup.node,
                        generation: self.generation,
                    },
                    now,
                );
                self.tokens.insert(token, n);
                let generation = match frame {
                    PeerFrame::Hello { generation, .. } => generation,
                    _ => 0,
                };
                let link = self.links.get_mut(&n).expect("checked");
                link.conn = Some(c);
                link.last_error = None;
                info!(node = n, "peer connected");
                Self::new_generation(link, n, generation, out);
                out.push(MeshEvent::Up(n));
                // Frames that came right behind the hello.
                if self.process_link(n, epoll, out) {
                    let _ = self.flush_link(n, epoll);
                    if eof {
                        self.drop_link(n, epoll, out);
                    }
                }
            }
        }
    }

    /// The node a valid hello comes from.
    fn check_hello(&self, frame: &PeerFrame, peer_ip: Option<Ipv4Addr>) -> Result<u8, Refusal> {
        let PeerFrame::Hello {
            version,
            cluster,
            from,
            from_name,
            to,
            generation,
        } = frame
        else {
            return Err(Refusal::NotHello);
        };
        if *version != PEER_VERSION {
            return Err(Refusal::Version { version: *version });
        }
        if *cluster != self.setup.name {
            return Err(Refusal::OtherCluster {
                cluster: cluster.clone(),
                ours: self.setup.name.clone(),
            });
        }
        if *to != self.setup.node {
            return Err(Refusal::NotThisNode {
                me: self.setup.node,
                to: *to,
            });
        }
        let Some(p) = self
            .setup
            .nodes
            .get(from)
            .filter(|_| *from != self.setup.node)
        else {
            return Err(Refusal::NotConfigured {
                from: *from,
                cluster: cluster.clone(),
            });
        };
        if p.name != *from_name {
            return Err(Refusal::WrongName {
                from: *from,
                configured: p.name.clone(),
                name: from_name.clone(),
            });
        }
        if *from < self.setup.node {
            return Err(Refusal::MustWait {
                from: *from,
                me: self.setup.node,
            });
        }
        if peer_ip != Some(*p.addr.ip()) {
            return Err(Refusal::WrongAddress {
                from: *from,
                expected: *p.addr.ip(),
                got: peer_ip,
            });
        }
        if self.links[from].dead_generation == Some(*generation) {
            return Err(Refusal::DeclaredDead { node: *from });
        }
        Ok(*from)
    }

    /// Writes what is buffered for a link.
    fn flush_link(&mut self, n: u8, epoll: &Epoll) -> io::Result<()> {
        let Some(c) = self.links.get_mut(&n).and_then(|l| l.conn.as_mut()) else {
            return Ok(());
        };
        if c.connecting {
            return Ok(());
        }
        let mut written = 0;
        while written < c.wbuf.len() {
            match c.stream.write(&c.wbuf[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => written += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.wbuf.drain(..written);
        if c.wbuf.len() > MAX_PENDING {
            warn!(node = n, "peer does not read; dropping the connection");
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let want = !c.wbuf.is_empty();
        if want != c.writing {
            c.writing = want;
            let flags = if want {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
            } else {
                EpollFlags::EPOLLIN
            };
            let mut ev = EpollEvent::new(flags, c.token);
            let _ = epoll.modify(c.stream.as_fd(), &mut ev);
        }
        Ok(())
    }

    /// Flushes every link with output.
    pub fn flush_all(&mut self, epoll: &Epoll, out: &mut Vec<MeshEvent>) {
        let dirty: Vec<u8> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.conn
                    .as_ref()
                    .is_some_and(|c| !c.wbuf.is_empty() && !c.connecting)
            })
            .map(|(&n, _)| n)
            .collect();
        for n in dirty {
            if self.flush_link(n, epoll).is_err() {
                self.drop_link(n, epoll, out);
            }
        }
    }

    /// Records the incarnation a connection came from; a different one
    /// than before means the node restarted.
    fn new_generation(link: &mut Link, n: u8, generation: u64, out: &mut Vec<MeshEvent>) {
        let restarted = link.generation.is_some_and(|g| g != generation);
        if restarted {
            info!(
                node = n,
                "peer restarted (new incarnation): its old locks are gone"
            );
            out.push(MeshEvent::Restarted(n));
        }
        link.restart_reported =
            restarted || (link.restart_reported && link.generation == Some(generation));
        link.generation = Some(generation);
    }

    /// Whether node `n` is connected and its restart (a new incarnation) was
    /// already reported.
    pub fn restart_reported(&self, n: u8) -> bool {
        self.links
            .get(&n)
            .is_some_and(|l| l.restart_reported && l.conn.as_ref().is_some_and(|c| c.up))
    }

    /// Drops the connection to node `n` (declared dead): a later connection
    /// from it is a new start.
    pub fn disconnect(&mut self, n: u8, epoll: &Epoll, out: &mut Vec<MeshEvent>) {
        if let Some(l) = self.links.get_mut(&n) {
            if l.generation.is_some() {
                l.dead_generation = l.generation;
            }
        }
        self.drop_link(n, epoll, out);
    }

    /// Closes a link's connection; the connecting side retries later.
    fn drop_link(&mut self, n: u8, epoll: &Epoll, out: &mut Vec<MeshEvent>) {
        let me = self.setup.node;
        let reconnect = self.reconnect;
        let Some(l) = self.links.get_mut(&n) else {
            return;
        };
        if let Some(c) = l.conn.take() {
            let _ = epoll.delete(c.stream.as_fd());
            self.tokens.remove(&c.token);
            if c.up {
                info!(node = n, "peer connection lost");
                out.push(MeshEvent::Down(n));
            }
        }
        if n < me {
            l.retry_at = Some(Instant::now() + reconnect);
        }
    }
}

/// Reads everything available; true at end of stream or on error.
fn read_all(stream: &mut TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> bool {
    loop {
        match stream.read(chunk) {
            Ok(0) => return true,
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                if k < chunk.len() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_node_names_follow_o2cb() {
        assert!(is_local_name("node1", "node1"));
        assert!(is_local_name("NODE1", "node1.example.com"));
        assert!(is_local_name("node1.example.com", "node1.example.com"));
        assert!(!is_local_name("node", "node1"));
        assert!(!is_local_name("node1.example", "node1.example.com"));
    }

    #[test]
    fn setup_names_the_missing_node_and_lists_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("cluster.conf");
        std::fs::write(
            &conf,
            "cluster:\n\tname = c1\n\theartbeat_mode = global\n\tnode_count = 2\n\n\
             node:\n\tcluster = c1\n\tnumber = 1\n\tip_port = 7001\n\tip_address = 127.0.0.1\n\tname = alpha\n\n\
             node:\n\tcluster = c1\n\tnumber = 2\n\tip_port = 7002\n\tip_address = 127.0.0.2\n\tname = beta\n\n\
             heartbeat:\n\tcluster = c1\n\tregion = /tmp/hb\n",
        )
        .unwrap();
        let s = ClusterSetup::load(&conf, None, Some("beta")).unwrap();
        assert_eq!(s.node, 2);
        assert_eq!(s.name, "c1");
        assert_eq!(s.addr(), "127.0.0.2:7002".parse().unwrap());
        assert_eq!(s.regions, vec!["/tmp/hb".to_string()]);
        let e = ClusterSetup::load(&conf, None, Some("gamma"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'gamma'") && e.contains("alpha, beta"), "{e}");
        let e = ClusterSetup::load(&conf, Some("c2"), Some("beta"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'c2'") && e.contains("c1"), "{e}");
    }

    #[test]
    fn setup_errors_read_as_lockd_prints_them() {
        let conf = PathBuf::from("/etc/ocfs2/cluster.conf");
        let cases = [
            (
                SetupError::NoSuchCluster {
                    name: "c2".into(),
                    conf: conf.clone(),
                    clusters: vec!["c1".into(), "c3".into()],
                },
                "cluster 'c2' is not in /etc/ocfs2/cluster.conf (clusters: c1, c3)",
            ),
            (
                SetupError::NoCluster { conf: conf.clone() },
                "/etc/ocfs2/cluster.conf defines no cluster",
            ),
            (
                SetupError::SeveralClusters {
                    conf: conf.clone(),
                    clusters: vec!["c1".into(), "c3".into()],
                },
                "/etc/ocfs2/cluster.conf defines several clusters (c1, c3); name one",
            ),
            (
                SetupError::NoSuchNode {
                    node: "gamma".into(),
                    cluster: "c1".into(),
                    conf: conf.clone(),
                    nodes: Vec::new(),
                },
                "node 'gamma' is not in cluster 'c1' of /etc/ocfs2/cluster.conf \
                 (configured nodes: none); pass --node NAME",
            ),
            (
                SetupError::HostNotInCluster {
                    host: "h".into(),
                    cluster: "c1".into(),
                    conf,
                    nodes: vec!["alpha".into(), "beta".into()],
                },
                "node host name 'h' is not in cluster 'c1' of /etc/ocfs2/cluster.conf \
                 (configured nodes: alpha, beta); pass --node NAME",
            ),
            (
                SetupError::BadNumber {
                    name: "n".into(),
                    number: 255,
                },
                "node 'n' has number 255, above 254",
            ),
            (
                SetupError::BadPort {
                    name: "n".into(),
                    port: 0,
                },
                "node 'n' has port 0, not 1-65535",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn refusals_read_as_the_other_node_gets_them() {
        let cases = [
            (Refusal::NotHello, "expected a hello"),
            (
                Refusal::Version { version: 9 },
                "peer protocol version 9 is not supported; this lockd speaks 3",
            ),
            (
                Refusal::OtherCluster {
                    cluster: "x".into(),
                    ours: "c1".into(),
                },
                "cluster 'x' does not match this node's cluster 'c1'",
            ),
            (
                Refusal::NotThisNode { me: 1, to: 2 },
                "this is node 1, not node 2",
            ),
            (
                Refusal::NotConfigured {
                    from: 9,
                    cluster: "c1".into(),
                },
                "node 9 is not configured in cluster 'c1'",
            ),
            (
                Refusal::WrongName {
                    from: 2,
                    configured: "beta".into(),
                    name: "b".into(),
                },
                "node 2 is 'beta' in this node's cluster.conf, not 'b'",
            ),
            (
                Refusal::MustWait { from: 1, me: 2 },
                "node 1 must wait for node 2 to connect (higher numbers connect to lower)",
            ),
            (
                Refusal::WrongAddress {
                    from: 2,
                    expected: Ipv4Addr::new(127, 0, 0, 2),
                    got: Some(Ipv4Addr::new(127, 0, 0, 3)),
                },
                "node 2 must connect from 127.0.0.2, not 127.0.0.3",
            ),
            (
                Refusal::WrongAddress {
                    from: 2,
                    expected: Ipv4Addr::new(127, 0, 0, 2),
                    got: None,
                },
                "node 2 must connect from 127.0.0.2, not ?",
            ),
            (
                Refusal::DeclaredDead { node: 3 },
                "node 3 was declared dead and its locks recovered; its lockd must restart",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
