//! The Rust client library: talk to lockd over its Unix socket.
//!
//! ```no_run
//! use o2tools::client::{Client, ConnectOptions, LockOptions};
//! use o2tools::dlm::Mode;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Finds the socket as every tool does; starts a single-node lockd if none answers.
//! let mut c = Client::connect_with(&ConnectOptions::from_env(None))?;
//! let lock = c.lock(b"mydomain", b"res1", Mode::EX, &LockOptions::default())?;
//! c.lvb_set(lock, b"hello")?;
//! c.unlock(lock)?;
//! # Ok(()) }
//! ```
//!
//! The protocol is asynchronous (a lock request is accepted at once, its grant
//! arrives later); the blocking calls here wait for the answer and keep any
//! other event (a blocking notification for another lock, say) for
//! [`Client::next_event`].
//!
//! May depend on: `proto`, `dlm` types, `config` (to know whether a cluster
//! is configured), std, nix.

mod connect;
pub mod paths;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::time::Duration;

pub use connect::{
    AUTOSTART_WAIT, ConnectOptions, LockdProgram, NO_AUTOSTART_ENV, configured_cluster,
};
pub use paths::SocketPath;

use crate::dlm::{
    DlmError, DomainInfo, Event, Failure, Holder, LVB_LEN, LockFlags, LockId, LockRequest,
    LostReason, Lvb, Mode, NodeId, Reply, Request, ResourceInfo,
};
use crate::proto::{
    self, ClientMsg, ClientRequest, HbRegionInfo, HbTarget, PROTOCOL_VERSION, ServerMsg,
    ServerReply, StatusInfo,
};

/// Why talking to lockd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No lockd answers on the socket (and none was started).
    #[error("lockd is not running (no answer on {}: {reason})", path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What connecting said.
        reason: String,
    },
    /// No lockd answers, and a cluster is configured, so none is started on demand.
    #[error(
        "lockd is not running (no answer on {}), and {} names cluster '{cluster}': start lockd for the cluster; a private single-node lockd would hand out locks the cluster does not see",
        path.display(),
        config.display()
    )]
    ClusterConfigured {
        /// The socket.
        path: PathBuf,
        /// The cluster.conf that names a cluster.
        config: PathBuf,
        /// The first cluster it names.
        cluster: String,
    },
    /// Starting lockd on demand failed.
    #[error("cannot start lockd: {0}")]
    Autostart(String),
    /// lockd went away.
    #[error("lockd closed the connection")]
    Closed,
    /// A system error on the socket.
    #[error("talking to lockd: {0}")]
    Io(#[from] io::Error),
    /// lockd said something this client cannot understand, or refused the hello.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// lockd refused the request (nothing changed).
    #[error("{0}")]
    Refused(DlmError),
    /// A daemon-level request (heartbeat) failed; lockd says why.
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// Whether lockd could not be reached at all (tools exit 69).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::ClusterConfigured { .. }
                | ClientError::Autostart(_)
        )
    }
}

/// Why a lock or conversion was not granted.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Trylock: it was busy.
    #[error("busy")]
    Busy(Vec<Holder>),
    /// The timeout expired.
    #[error("timed out")]
    TimedOut(Vec<Holder>),
    /// A conversion would deadlock with these.
    #[error("conversion deadlock")]
    Deadlock(Vec<Holder>),
    /// Cancelled (or the domain was left) while waiting.
    #[error("cancelled")]
    Cancelled,
    /// Anything else.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Options of a lock request.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    /// Trylock.
    pub noqueue: bool,
    /// Held for the node until unlocked, not tied to this connection.
    pub persistent: bool,
    /// With `noqueue`: tell the holders that block it.
    pub bast_on_busy: bool,
    /// Give up after this long.
    pub timeout: Option<Duration>,
}

/// A connection to lockd.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    rbuf: Vec<u8>,
    next_tag: u64,
    events: VecDeque<Event>,
    /// lockd's node, pid and fence grace (ms), once its welcome has been read. The hello is
    /// not waited for: the first request goes out right behind it.
    welcome: Option<(NodeId, u32, u32)>,
    /// Read buffer (zeroed once, not per read).
    scratch: Box<[u8]>,
    /// Reused encoding buffer.
    wbuf: Vec<u8>,
}

impl Client {
    fn handshake(stream: UnixStream) -> Result<Client, ClientError> {
        let mut c = Client {
            stream,
            rbuf: Vec::with_capacity(4096),
            next_tag: 1,
            events: VecDeque::new(),
            welcome: None,
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            wbuf: Vec::with_capacity(256),
        };
        c.send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        })?;
        Ok(c)
    }

    /// Waits for lockd's welcome if it has not been read yet.
    fn welcomed(&mut self) -> Result<(NodeId, u32, u32), ClientError> {
        loop {
            // Decoding consumes the welcome, if it is buffered.
            let m = self.try_decode()?;
            if let Some(w) = self.welcome {
                match m {
                    None => {}
                    Some(ServerMsg::Event(e)) => self.events.push_back(e),
                    // Only called before any request is in flight.
                    Some(other) => {
                        return Err(ClientError::Protocol(format!("unexpected {other:?}")));
                    }
                }
                return Ok(w);
            }
            if m.is_none() {
                self.fill()?;
            }
        }
    }

    /// Gives up reading after `timeout` (None: wait forever), for callers
    /// that must not hang on a wedged peer.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    /// The node lockd runs as.
    pub fn node(&mut self) -> Result<NodeId, ClientError> {
        Ok(self.welcomed()?.0)
    }

    /// lockd's process id.
    pub fn lockd_pid(&mut self) -> Result<u32, ClientError> {
        Ok(self.welcomed()?.1)
    }

    /// How long lockd waits, when it fences itself, for clients that held
    /// locks to let go before it stops heartbeating (and the other nodes
    /// recover the locks): whatever runs under a lock lost to fencing must
    /// stop within this.
    pub fn fence_grace(&mut self) -> Result<Duration, ClientError> {
        Ok(Duration::from_millis(u64::from(self.welcomed()?.2)))
    }

    fn send(&mut self, m: &ClientMsg) -> Result<(), ClientError> {
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let buf = proto::encode_client_into(m, buf);
        let r = self.stream.write_all(&buf);
        self.wbuf = buf;
        r?;
        Ok(())
    }

    /// Reads until one whole message is buffered and returns it.
    fn recv(&mut self) -> Result<ServerMsg, ClientError> {
        loop {
            if let Some(m) = self.try_decode()? {
                return Ok(m);
            }
            self.fill()?;
        }
    }

    /// Decodes one buffered message; lockd's welcome is consumed here.
    fn try_decode(&mut self) -> Result<Option<ServerMsg>, ClientError> {
        loop {
            let m = match proto::decode_server(&self.rbuf) {
                Ok(Some((m, used))) => {
                    self.rbuf.drain(..used);
                    m
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            };
            match (m, self.welcome) {
                (
                    ServerMsg::Welcome {
                        version,
                        node,
                        pid,
                        fence_grace_ms,
                    },
                    None,
                ) => {
                    if version != PROTOCOL_VERSION {
                        return Err(ClientError::Protocol(format!(
                            "lockd speaks protocol {version}, we speak {PROTOCOL_VERSION}"
                        )));
                    }
                    self.welcome = Some((node, pid, fence_grace_ms));
                }
                (ServerMsg::Error { message }, None) => return Err(ClientError::Protocol(message)),
                (m, None) => {
                    return Err(ClientError::Protocol(format!(
                        "expected a welcome, got {m:?}"
                    )));
                }
                (m, Some(_)) => return Ok(Some(m)),
            }
        }
    }

    fn fill(&mut self) -> Result<(), ClientError> {
        let buf = &mut self.scratch[..];
        let n = loop {
            match self.stream.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(ClientError::Closed);
        }
        self.rbuf.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// Sends a request and waits for its reply; events that arrive meanwhile
    /// are kept for [`Client::next_event`].
    pub fn call(&mut self, request: ClientRequest) -> Result<ServerReply, ClientError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(&ClientMsg::Request { tag, request })?;
        loop {
            match self.recv()? {
                ServerMsg::Reply { tag: t, reply } if t == tag => return Ok(reply),
                ServerMsg::Reply { tag: t, .. } => {
                    return Err(ClientError::Protocol(format!(
                        "reply to unknown request {t}"
                    )));
                }
                ServerMsg::Event(e) => self.events.push_back(e),
                ServerMsg::Error { message } => return Err(ClientError::Protocol(message)),
                ServerMsg::Welcome { .. } => {
                    return Err(ClientError::Protocol("unexpected welcome".into()));
                }
            }
        }
    }

    fn dlm(&mut self, r: Request) -> Result<Reply, ClientError> {
        match self.call(ClientRequest::Dlm(r))? {
            ServerReply::Dlm(Reply::Err(e)) => Err(ClientError::Refused(e)),
            ServerReply::Dlm(r) => Ok(r),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    fn expect_ok(&mut self, r: Request) -> Result<(), ClientError> {
        match self.dlm(r)? {
            Reply::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Joins a domain. `pin`: the node stays in it after this connection goes.
    pub fn join(&mut self, domain: &[u8], pin: bool) -> Result<(), ClientError> {
        self.expect_ok(Request::Join {
            domain: domain.to_vec(),
            pin,
        })
    }

    /// Leaves a domain: `force` makes the node leave (releasing every lock
    /// and value block in it); otherwise only this connection stops using it.
    pub fn leave(&mut self, domain: &[u8], force: bool) -> Result<(), ClientError> {
        self.expect_ok(Request::Leave {
            domain: domain.to_vec(),
            force,
        })
    }

    /// Requests a lock and returns its id as soon as lockd accepts it; the
    /// grant or failure comes as an event.
    pub fn lock_async(
        &mut self,
        domain: &[u8],
        resource: &[u8],
        mode: Mode,
        opts: &LockOptions,
    ) -> Result<LockId, ClientError> {
        let r = self.dlm(Request::Lock(LockRequest {
            domain: domain.to_vec(),
            resource: resource.to_vec(),
            mode,
            flags: LockFlags {
                noqueue: opts.noqueue,
                persistent: opts.persistent,
                bast_on_busy: opts.bast_on_busy,
            },
            timeout_ms: opts.timeout.map(|t| t.as_millis() as u64),
        }))?;
        match r {
            Reply::LockAccepted { lock } => Ok(lock),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Takes a lock, waiting until it is granted (or fails).
    pub fn lock(
        &mut self,
        domain: &[u8],
        resource: &[u8],
        mode: Mode,
        opts: &LockOptions,
    ) -> Result<LockId, LockError> {
        self.lock_with_progress(domain, resource, mode, opts, |_| {})
    }

    /// As [`Client::lock`], calling `waiting` with the blockers when the
    /// request has to queue.
    pub fn lock_with_progress(
        &mut self,
        domain: &[u8],
        resource: &[u8],
        mode: Mode,
        opts: &LockOptions,
        waiting: impl FnMut(&[Holder]),
    ) -> Result<LockId, LockError> {
        let id = self.lock_async(domain, resource, mode, opts)?;
        self.wait_for(id, waiting)?;
        Ok(id)
    }

    /// Changes a granted lock's mode, waiting for the outcome.
    pub fn convert(
        &mut self,
        lock: LockId,
        mode: Mode,
        opts: &LockOptions,
    ) -> Result<(), LockError> {
        self.convert_with_progress(lock, mode, opts, |_| {})
    }

    /// As [`Client::convert`], calling `waiting` when it has to queue.
    pub fn convert_with_progress(
        &mut self,
        lock: LockId,
        mode: Mode,
        opts: &LockOptions,
        waiting: impl FnMut(&[Holder]),
    ) -> Result<(), LockError> {
        self.expect_ok(Request::Convert {
            lock,
            mode,
            noqueue: opts.noqueue,
            bast_on_busy: opts.bast_on_busy,
            timeout_ms: opts.timeout.map(|t| t.as_millis() as u64),
        })?;
        self.wait_for(lock, waiting)?;
        Ok(())
    }

    /// Waits for the grant or failure of `lock`'s pending request.
    fn wait_for(
        &mut self,
        lock: LockId,
        mut waiting: impl FnMut(&[Holder]),
    ) -> Result<Mode, LockError> {
        loop {
            let pos = self.events.iter().position(|e| match e {
                Event::Granted { lock: l, .. }
                | Event::Failed { lock: l, .. }
                | Event::Waiting { lock: l, .. } => *l == lock,
                _ => false,
            });
            let Some(pos) = pos else {
                match self.recv()? {
                    ServerMsg::Event(e) => self.events.push_back(e),
                    ServerMsg::Error { message } => {
                        return Err(ClientError::Protocol(message).into());
                    }
                    other => {
                        return Err(ClientError::Protocol(format!("unexpected {other:?}")).into());
                    }
                }
                continue;
            };
            match self.events.remove(pos).expect("found") {
                Event::Granted { mode, .. } => return Ok(mode),
                Event::Waiting { blockers, .. } => waiting(&blockers),
                Event::Failed { failure, .. } => {
                    return Err(match failure {
                        Failure::Busy { blockers } => LockError::Busy(blockers),
                        Failure::TimedOut { blockers } => LockError::TimedOut(blockers),
                        Failure::Deadlock { blockers } => LockError::Deadlock(blockers),
                        Failure::Cancelled => LockError::Cancelled,
                    });
                }
                _ => unreachable!("filtered above"),
            }
        }
    }

    /// Releases a lock.
    pub fn unlock(&mut self, lock: LockId) -> Result<(), ClientError> {
        self.expect_ok(Request::Unlock { lock })
    }

    /// Cancels the pending request of a lock.
    pub fn cancel(&mut self, lock: LockId) -> Result<(), ClientError> {
        self.expect_ok(Request::Cancel { lock })
    }

    /// Reads the value block through a lock held in CR or above: the bytes and
    /// whether they are valid.
    pub fn lvb_get(&mut self, lock: LockId) -> Result<(Lvb, bool), ClientError> {
        match self.dlm(Request::LvbGet { lock })? {
            Reply::Lvb { value, valid } => Ok((value, valid)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Writes the value block (zero-padded to 64 bytes) through a lock held
    /// in PW or EX. More than 64 bytes is refused before anything is sent.
    pub fn lvb_set(&mut self, lock: LockId, value: &[u8]) -> Result<(), ClientError> {
        if value.len() > LVB_LEN {
            return Err(ClientError::Protocol(format!(
                "a value block holds {LVB_LEN} bytes, not {}",
                value.len()
            )));
        }
        let mut v = [0u8; LVB_LEN];
        v[..value.len()].copy_from_slice(value);
        self.expect_ok(Request::LvbSet { lock, value: v })
    }

    /// lockd's status.
    pub fn status(&mut self) -> Result<StatusInfo, ClientError> {
        match self.call(ClientRequest::Status)? {
            ServerReply::Status(s) => Ok(s),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// The domains this node is in.
    pub fn domains(&mut self) -> Result<Vec<DomainInfo>, ClientError> {
        match self.call(ClientRequest::Domains)? {
            ServerReply::Domains(d) => Ok(d),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Resources and their locks, of one domain or all.
    pub fn locks(&mut self, domain: Option<&[u8]>) -> Result<Vec<ResourceInfo>, ClientError> {
        match self.call(ClientRequest::Locks {
            domain: domain.map(<[u8]>::to_vec),
        })? {
            ServerReply::Locks(l) => Ok(l),
            ServerReply::Failed { message } => Err(ClientError::Failed(message)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    fn hb(&mut self, request: ClientRequest) -> Result<([u8; 16], u32), ClientError> {
        match self.call(request)? {
            ServerReply::HbRefs { uuid, refs } => Ok((uuid, refs)),
            ServerReply::Failed { message } => Err(ClientError::Failed(message)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Starts heartbeating on a region, or takes one more reference on it
    /// for `service`. Returns when the region is steady (a few heartbeat
    /// intervals), with its UUID and its references.
    pub fn hb_start(
        &mut self,
        target: HbTarget,
        service: &str,
    ) -> Result<([u8; 16], u32), ClientError> {
        self.hb(ClientRequest::HbStart {
            target,
            service: service.to_owned(),
        })
    }

    /// Drops `service`'s reference on a region; the last one stops it (a clean
    /// stop: peers see this node die at once).
    pub fn hb_stop(
        &mut self,
        target: HbTarget,
        service: &str,
    ) -> Result<([u8; 16], u32), ClientError> {
        self.hb(ClientRequest::HbStop {
            target,
            service: service.to_owned(),
        })
    }

    /// The references on the region with this UUID (0 when lockd does not run it).
    pub fn hb_refs(&mut self, uuid: [u8; 16]) -> Result<u32, ClientError> {
        Ok(self.hb(ClientRequest::HbRefs { uuid })?.1)
    }

    /// The regions lockd heartbeats on.
    pub fn hb_status(&mut self) -> Result<Vec<HbRegionInfo>, ClientError> {
        match self.call(ClientRequest::HbStatus)? {
            ServerReply::HbRegions(r) => Ok(r),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    fn done(&mut self, request: ClientRequest) -> Result<(), ClientError> {
        match self.call(request)? {
            ServerReply::Done => Ok(()),
            ServerReply::Failed { message } => Err(ClientError::Failed(message)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Makes a single-node lockd run `cluster` of the cluster.conf at
    /// `conf` (a path lockd opens) as node `node` (None: lockd's host
    /// name). A no-op when it already runs that cluster.
    pub fn register_cluster(
        &mut self,
        conf: &Path,
        cluster: &str,
        node: Option<&str>,
    ) -> Result<(), ClientError> {
        self.done(ClientRequest::RegisterCluster {
            conf: conf.as_os_str().as_bytes().to_vec(),
            cluster: cluster.to_owned(),
            node: node.unwrap_or_default().to_owned(),
        })
    }

    /// Makes lockd leave the cluster it runs and serve a single node again
    /// (refused while domains are joined or heartbeat regions active).
    pub fn unregister_cluster(&mut self, cluster: &str) -> Result<(), ClientError> {
        self.done(ClientRequest::UnregisterCluster {
            cluster: cluster.to_owned(),
        })
    }

    /// Starts (or stops) the running cluster's global heartbeat regions.
    pub fn cluster_heartbeat(&mut self, cluster: &str, start: bool) -> Result<(), ClientError> {
        self.done(ClientRequest::ClusterHeartbeat {
            cluster: cluster.to_owned(),
            start,
        })
    }

    /// The next event (a blocking notification, a lost lock, ...): one kept
    /// from earlier, or one read now, waiting at most `timeout` (None: forever).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.stream
            .set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))?;
        let r = loop {
            match self.try_decode()? {
                Some(ServerMsg::Event(e)) => break Ok(Some(e)),
                Some(other) => break Err(ClientError::Protocol(format!("unexpected {other:?}"))),
                None => {}
            }
            match self.fill() {
                Ok(()) => {}
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(None);
                }
                Err(e) => break Err(e),
            }
        };
        self.stream.set_read_timeout(None)?;
        r
    }

    /// Reads whatever lockd has sent without waiting and returns the events
    /// in it. `Err(Closed)` when lockd has gone. For use after `poll(2)` says
    /// the socket is readable.
    pub fn read_ready_events(&mut self) -> Result<Vec<Event>, ClientError> {
        self.stream.set_nonblocking(true)?;
        let r = self.fill();
        self.stream.set_nonblocking(false)?;
        match r {
            Ok(()) => {}
            Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let mut out: Vec<Event> = self.events.drain(..).collect();
        while let Some(m) = self.try_decode()? {
            match m {
                ServerMsg::Event(e) => out.push(e),
                other => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            }
        }
        Ok(out)
    }

    /// Whether an event says `lock` was lost.
    pub fn is_lost(event: &Event, lock: LockId) -> Option<LostReason> {
        match event {
            Event::Lost { lock: l, reason } if *l == lock => Some(*reason),
            _ => None,
        }
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
