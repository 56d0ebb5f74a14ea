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
//! The cluster's setup from cluster.conf is `setup`'s; checking the hello
//! of an accepted connection is `handshake`'s.
//!
//! May depend on: `config`, `dlm` types, `proto::peer`, std, nix.

mod handshake;
mod setup;

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd as _, IntoRawFd as _};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, getsockopt, socket, sockopt,
};
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::dlm::PeerMsg;
use crate::proto::peer::{self, PEER_VERSION, PeerFrame};
use handshake::{DECLARED_DEAD, Refusal};
pub use setup::{ClusterSetup, PeerAddr, SetupError, hostname, is_local_name};

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

    /// Writes what is buffered for a link.
    fn flush_link(&mut self, n: u8, epoll: &Epoll) -> io::Result<()> {
        let Some(c) = self.links.get_mut(&n).and_then(|l| l.conn.as_mut()) else {
            return Ok(());
        };
        if c.connecting {
            return Ok(());
        }
        super::outbuf::write_pending(&mut c.stream, &mut c.wbuf)?;
        if c.wbuf.len() > MAX_PENDING {
            warn!(node = n, "peer does not read; dropping the connection");
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let pending = !c.wbuf.is_empty();
        super::outbuf::watch_writable(epoll, c.stream.as_fd(), c.token, &mut c.writing, pending);
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
