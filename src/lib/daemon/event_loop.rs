//! The event loop's turns: setting up epoll, the signalfd and the
//! heartbeat eventfd; waiting until the nearest deadline (core, mesh,
//! quorum, heartbeat tick); dispatching what woke it; and handing the
//! core's actions to the connections.
//!
//! May depend on: the parent module and its siblings, `dlm`, `proto`, nix.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::info;

use super::fence::Fence;
use super::heartbeat;
use super::mesh::{Mesh, MeshEvent};
use super::{Daemon, DaemonError, HEARTBEAT, LISTENER, Loop, SIGNALS};
use crate::dlm::{Action, Dlm, Input, Millis, NodeId};
use crate::proto::{ServerMsg, ServerReply};
use crate::quorum::Quorum;

impl Daemon {
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

impl Loop<'_> {
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
    pub(super) fn feed_mesh(&mut self) {
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

    pub(super) fn start_elapsed(&self) -> Millis {
        self.now()
    }

    /// Moves the core's actions into the connections' write buffers.
    pub(super) fn route(&mut self) {
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
}
