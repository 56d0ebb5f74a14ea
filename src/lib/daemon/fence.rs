//! Quorum and self-fencing in lockd (see docs/ARCHITECTURE.md, "Quorum and
//! fencing").
//!
//! Every turn of the loop asks [`crate::quorum::Quorum`] whether this node
//! is still on the side that keeps its locks. When it is not (or another
//! node writes its heartbeat slot, or a peer says it declared this node
//! dead), the node fences itself, in this order:
//! 1. it closes its peer connections and its peer port (nothing it says
//!    may count any more), and the core takes every lock back and tells
//!    each client ([`Input::Fence`]); requests are refused from now on;
//! 2. it waits for the clients that held locks to let go (disconnect), at
//!    most `network.fence_grace_ms` (`dlmctl lock` kills its command before
//!    that); clients still connected then (a dlmfs mount, a program using
//!    the library) were told, and stay connected: their requests are
//!    refused until the node is back;
//! 3. only then it stops heartbeating (the clean-stop block: the others
//!    recover its locks at once) and, two heartbeat intervals later, listens
//!    and connects again as a new incarnation;
//! 4. once it reaches a quorum again it heartbeats again, under a new
//!    generation, and serves requests ([`Input::Unfence`]).
//!
//! May depend on: the parent module, `quorum`, `dlm`.

use std::collections::BTreeSet;

use tracing::{error, info, warn};

use super::mesh::{ClusterSetup, Mesh};
use super::{Loop, PEER_LISTENER};
use crate::dlm::{Input, Millis, NodeId};
use crate::proto::QuorumState;
use crate::quorum::Source;

/// Where this node is in fencing itself.
pub(super) enum Fence {
    /// Serving.
    No,
    /// Locks taken back; waiting for the clients that held them to go.
    Fencing {
        /// Client connections that were told their locks are lost.
        waiting: BTreeSet<u64>,
        /// When the wait ends regardless.
        until: Millis,
        /// The cluster, to connect to again afterwards.
        setup: ClusterSetup,
    },
    /// Fenced: not heartbeating, refusing requests.
    Fenced {
        /// The peer mesh starts again (a new incarnation) at this time.
        mesh_at: Option<(Millis, ClusterSetup)>,
    },
}

impl Fence {
    /// When [`Loop::check_quorum`] has something to do at the latest.
    pub(super) fn deadline(&self) -> Option<Millis> {
        match self {
            Fence::No => None,
            Fence::Fencing { until, .. } => Some(*until),
            Fence::Fenced { mesh_at } => mesh_at.as_ref().map(|(t, _)| *t),
        }
    }

    /// Whether client requests are refused.
    pub(super) fn is_fenced(&self) -> bool {
        !matches!(self, Fence::No)
    }

    /// The cluster of a node between closing its mesh and opening a new one.
    pub(super) fn setup(&self) -> Option<&ClusterSetup> {
        match self {
            Fence::Fencing { setup, .. }
            | Fence::Fenced {
                mesh_at: Some((_, setup)),
            } => Some(setup),
            _ => None,
        }
    }

    /// For `dlmctl status`.
    pub(super) fn state(&self) -> QuorumState {
        match self {
            Fence::No => QuorumState::Quorate,
            Fence::Fencing { .. } => QuorumState::Fencing,
            Fence::Fenced { .. } => QuorumState::Fenced,
        }
    }
}

impl Loop<'_> {
    /// Where the quorum's voters come from now.
    pub(super) fn quorum_source(&self) -> Source {
        let s = &self.opts.settings;
        if self.regions.values().any(|e| !e.stopping) {
            Source::Disk {
                hold_ms: s.dead_ms() + 2 * u64::from(s.heartbeat.interval_ms),
            }
        } else {
            Source::Lease {
                margin_ms: s.fence_margin_ms(),
            }
        }
    }

    /// Declares dead the nodes whose lease ran out, fences this node when
    /// it has lost quorum, and brings it back when it has one again.
    pub(super) fn check_quorum(&mut self) {
        let now = self.now();
        let source = self.quorum_source();
        let Some(q) = self.quorum.as_mut() else {
            return;
        };
        q.set_source(source);
        let verdict = q.check(now);
        for n in verdict.dead {
            warn!(
                node = n,
                "node unreachable for the idle timeout and the fence margin: declared dead"
            );
            self.dlm.handle(now, Input::NodeDown { node: NodeId(n) });
            if let Some(m) = self.mesh.as_mut() {
                m.disconnect(n, &self.epoll, &mut self.mesh_out);
            }
        }
        if !self.mesh_out.is_empty() {
            self.feed_mesh();
        }
        self.route();
        if let Some(why) = self.fence_reason.take() {
            if !self.fence.is_fenced() {
                self.start_fence(&why);
            }
        }
        match &self.fence {
            Fence::No if !verdict.quorate => {
                let q = self.quorum.as_ref().expect("checked");
                let why = format!(
                    "lost quorum: reaches {} of the {} live nodes",
                    q.reachable(now).len() + 1,
                    q.voters().len() + 1
                );
                self.start_fence(&why);
            }
            Fence::Fencing { .. } => self.maybe_end_fencing(),
            Fence::Fenced { mesh_at } => {
                if mesh_at.as_ref().is_some_and(|(t, _)| *t <= now) {
                    self.restart_mesh();
                } else if verdict.quorate && mesh_at.is_none() && self.mesh.is_some() {
                    self.unfence();
                }
            }
            Fence::No => {}
        }
    }

    /// Step 1: cut off, and take every lock back.
    fn start_fence(&mut self, why: &str) {
        let Some(mesh) = self.mesh.take() else {
            return;
        };
        error!(reason = %why, "fencing this node: every lock is taken back");
        let setup = mesh.setup.clone();
        mesh.shutdown(&self.epoll);
        let now = self.now();
        if let Some(q) = self.quorum.as_mut() {
            q.disconnected_all(now);
            q.set_fenced(now, true);
        }
        self.fence_waiting = Some(BTreeSet::new());
        self.dlm.handle(now, Input::Fence);
        self.route();
        let waiting = self.fence_waiting.take().unwrap_or_default();
        self.fence = Fence::Fencing {
            waiting,
            until: now.after(u64::from(self.opts.settings.network.fence_grace_ms)),
            setup,
        };
        self.maybe_end_fencing();
    }

    /// Step 2 and 3: once the clients have let go (or the grace is over),
    /// stop heartbeating.
    fn maybe_end_fencing(&mut self) {
        let now = self.now();
        let Fence::Fencing { waiting, until, .. } = &mut self.fence else {
            return;
        };
        waiting.retain(|t| self.conns.contains_key(t));
        if !waiting.is_empty() && now < *until {
            return;
        }
        let stubborn: Vec<u64> = waiting.iter().copied().collect();
        let Fence::Fencing { setup, .. } = std::mem::replace(&mut self.fence, Fence::No) else {
            unreachable!("matched above");
        };
        for t in stubborn {
            warn!(
                client = t,
                "client told its locks are lost is still connected at the end of the fence grace"
            );
        }
        self.hb_silent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // The others see the heartbeat stop within an interval; the new
        // incarnation connects after that, so that the death they see is
        // the old one's.
        let wait = if self.regions.is_empty() {
            0
        } else {
            2 * u64::from(self.opts.settings.heartbeat.interval_ms)
        };
        error!("fenced: no locks held; heartbeat stopped; requests refused until quorum is back");
        self.fence = Fence::Fenced {
            mesh_at: Some((now.after(wait), setup)),
        };
    }

    /// Listens and connects again, as a new incarnation.
    fn restart_mesh(&mut self) {
        let Fence::Fenced { mesh_at } = &mut self.fence else {
            return;
        };
        let Some((_, setup)) = mesh_at.take() else {
            return;
        };
        match Mesh::start(
            setup.clone(),
            &self.opts.settings,
            &self.epoll,
            PEER_LISTENER,
        ) {
            Ok(m) => {
                info!("fenced: reconnecting to the other nodes as a new incarnation");
                self.mesh = Some(m);
            }
            Err(e) => {
                warn!(error = %e, "fenced: cannot listen for peers yet; trying again");
                let at = self
                    .now()
                    .after(u64::from(self.opts.settings.network.reconnect_delay_ms));
                self.fence = Fence::Fenced {
                    mesh_at: Some((at, setup)),
                };
            }
        }
    }

    /// Step 4: back in a quorum.
    fn unfence(&mut self) {
        let now = self.now();
        info!("quorum reached again: heartbeating and serving as a new incarnation");
        self.hb_silent
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(q) = self.quorum.as_mut() {
            q.set_fenced(now, false);
        }
        self.dlm.handle(now, Input::Unfence);
        self.fence = Fence::No;
    }

    /// A peer refused this node as one it declared dead.
    pub(super) fn declared_dead(&mut self, by: u8) {
        match &self.fence {
            Fence::No => {
                self.fence_reason = Some(format!(
                    "node {by} declared this node dead and recovered its locks"
                ));
            }
            Fence::Fenced { mesh_at: None } => {
                // This incarnation is the dead one: start another.
                if let Some(m) = self.mesh.take() {
                    let setup = m.setup.clone();
                    m.shutdown(&self.epoll);
                    let at = self
                        .now()
                        .after(u64::from(self.opts.settings.network.reconnect_delay_ms));
                    self.fence = Fence::Fenced {
                        mesh_at: Some((at, setup)),
                    };
                }
            }
            _ => {}
        }
    }
}
