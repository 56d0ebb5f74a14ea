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
//! A malformed or oversized frame gets an error message and that connection
//! is closed; nothing a client sends can stop the loop. SIGTERM and SIGINT
//! stop it cleanly and remove the socket file.
//!
//! May depend on: everything in the crate below `cli`; nix for epoll,
//! signalfd, flock and peer credentials. The only place that reads the clock.

mod heartbeat;

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
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::dlm::{Action, ClientId, Cred, Dlm, Input, Millis, NodeId};
use crate::heartbeat::{liveness, region};
use crate::proto::{
    self, ClientMsg, ClientRequest, HbRegionInfo, HbTarget, PROTOCOL_VERSION, ServerMsg,
    ServerReply, StatusInfo,
};
use heartbeat::{HbParams, RegionThread, Report};

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

/// The pid of the lockd answering on `path`, if one answers within 2 s.
fn running_pid(path: &std::path::Path) -> Option<u32> {
    let mut c = crate::client::Client::connect(path).ok()?;
    c.set_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    c.lockd_pid().ok()
}

/// Buffered output larger than this means the client is not reading: it is
/// disconnected rather than allowed to grow lockd's memory.
const MAX_PENDING_OUTPUT: usize = 8 << 20;

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const HEARTBEAT: u64 = 2;

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
    pub fn run(self) -> io::Result<()> {
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
        info!(
            socket = %self.opts.socket.path.display(),
            node = self.opts.node.0,
            autostarted = self.opts.autostarted,
            "lockd serving (single node)"
        );
        let mut lp = Loop {
            dlm: Dlm::new(self.opts.node),
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
            start: Instant::now(),
            opts: &self.opts,
        };
        let result = lp.serve(&self.listener, &sfd);
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
    wake: Arc<EventFd>,
    hb_tx: Sender<(u64, Report)>,
    hb_rx: Receiver<(u64, Report)>,
    /// The loop's last turn (ms since `start`), read by heartbeat threads.
    alive_ms: Arc<AtomicU64>,
    regions: BTreeMap<u64, RegionEntry>,
    next_region: u64,
    /// Nodes alive on any region, as last told to the core.
    live_union: BTreeSet<u8>,
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
                    token => self.conn_event(token, ev.events()),
                }
            }
            if self.dlm.next_deadline().is_some_and(|t| t <= self.now()) {
                self.dlm.handle(self.now(), Input::Tick);
                self.route();
            }
            self.flush_all();
        }
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
                        node: self.opts.node,
                        pid: std::process::id(),
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
                    let reply = ServerReply::Status(StatusInfo {
                        node: self.opts.node,
                        cluster: None,
                        pid: std::process::id(),
                        uptime_ms: self.start.elapsed().as_millis() as u64,
                        autostarted: self.opts.autostarted,
                        stats: self.dlm.stats(),
                        nodes: Vec::new(),
                    });
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::Domains => {
                    let reply = ServerReply::Domains(self.dlm.domains());
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::Locks { domain } => {
                    let reply = ServerReply::Locks(self.dlm.resources(domain.as_deref()));
                    self.send(token, &ServerMsg::Reply { tag, reply });
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
            node: self.opts.node.0,
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
        if u32::from(self.opts.node.0) >= reg.slots {
            return self.reply_failed(
                token,
                tag,
                format!(
                    "node {} has no slot in a region of {} slots",
                    self.opts.node.0, reg.slots
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
                node: self.opts.node.0,
                interval_ms: hb.interval_ms,
                dead_threshold: hb.dead_threshold,
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
            } => {
                for ev in &events {
                    match ev {
                        liveness::Event::NodeUp { .. } | liveness::Event::NodeDown { .. } => {
                            info!(device = %e.device.display(), "{ev}");
                        }
                        _ => {}
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
        for n in self.live_union.difference(&now) {
            self.dlm
                .handle(self.start_elapsed(), Input::NodeDown { node: NodeId(*n) });
        }
        self.live_union = now;
        self.route();
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
                Action::Event { client, event } => (client, ServerMsg::Event(event)),
                // Not a cluster yet: the core sends nothing.
                Action::Send { .. } => continue,
            };
            self.send(client.0, &msg);
        }
    }

    fn flush_all(&mut self) {
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
