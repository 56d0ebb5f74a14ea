//! The lock manager's inputs and outputs: construction, feeding one
//! input (dispatched to the request handlers, the cluster layer or the
//! timers), fencing, clients going away, timeouts, and the actions and
//! deadline handed back to the caller.
//!
//! May depend on: the core's types and records, the request handlers,
//! the queues, the cluster layer (`node`: peer input, connections,
//! deaths, retries) and its configuration.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::cluster;
use super::state::{ClientState, NameHasher, ResKey};
use super::{
    Action, ClientId, Counters, Dlm, DlmError, Event, Failure, Input, LockId, LostReason, Millis,
    NodeId, Reply,
};

impl Dlm {
    /// A lock manager for node `node`.
    pub fn new(node: NodeId) -> Self {
        Dlm {
            node,
            next_lock: 1,
            domains: BTreeMap::new(),
            locks: BTreeMap::new(),
            clients: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            actions: VecDeque::new(),
            counters: Counters::default(),
            live: BTreeSet::new(),
            now: Millis(0),
            cluster: None,
            loopback: VecDeque::new(),
            fenced: false,
            hash: NameHasher(0),
        }
    }

    /// Keys the hash tables of resource names with `key` (0 by default).
    /// Their order of iteration reaches the outputs (the order of messages
    /// in a recovery), so a fixed key replays exactly, as the simulator
    /// needs; a daemon passes a random one, so that no client can choose
    /// names that collide. Call it before the first input.
    #[must_use]
    pub fn with_hash_key(mut self, key: u64) -> Self {
        debug_assert!(
            self.domains.is_empty(),
            "hash key set after the first domain"
        );
        self.hash = NameHasher(key);
        self
    }

    /// Other nodes that disk heartbeat says are alive, in order.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.live.iter().copied().collect()
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = now;
        if let Some(cl) = self.cluster.as_deref_mut() {
            cl.started.get_or_insert(now);
        }
        self.handle_input(now, input);
        self.drain_loopback(now);
    }

    fn handle_input(&mut self, now: Millis, input: Input) {
        match input {
            Input::Connected { client, cred } => {
                self.clients.insert(
                    client,
                    ClientState {
                        cred,
                        locks: BTreeSet::new(),
                        pending: BTreeSet::new(),
                        domains: BTreeSet::new(),
                    },
                );
            }
            Input::Request {
                client,
                tag,
                request,
            } => {
                let reply = match self.clients.get(&client).map(|c| c.cred) {
                    None => Err(DlmError::UnknownClient),
                    Some(_) if self.fenced => Err(DlmError::Fenced),
                    Some(cred) => self.request(now, client, cred, tag, request),
                };
                if let Err(e) = reply {
                    self.reply(client, tag, Reply::Err(e));
                }
            }
            Input::Disconnected { client } => self.disconnect(client),
            Input::Tick => {
                self.expire(now);
                if self.cluster.is_some() {
                    self.cluster_tick(now);
                }
            }
            Input::NodeUp { node } => {
                self.live.insert(node);
            }
            Input::NodeDown { node } => {
                self.live.remove(&node);
                self.node_dead(node);
            }
            Input::PeerUp { node } => self.peer_up(now, node),
            Input::PeerDown { node } => self.peer_down(node),
            Input::Peer { from, msg } => self.on_peer(now, from, msg),
            Input::Fence => self.fence(),
            Input::Unfence => self.fenced = false,
        }
    }

    /// Whether this node is fenced (see [`Input::Fence`]).
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Takes every lock back, tells its client, and starts over as a
    /// fresh node (same clients, same configuration) that refuses requests.
    fn fence(&mut self) {
        let ids: Vec<LockId> = self.locks.keys().copied().collect();
        for id in ids {
            let l = &self.locks[&id];
            let event = if l.granted.is_some() {
                Event::Lost {
                    lock: id,
                    reason: LostReason::Fenced,
                }
            } else {
                Event::Failed {
                    lock: id,
                    failure: Failure::Cancelled,
                }
            };
            self.event(l.notify(), event);
        }
        let waiting: Vec<(ClientId, u64)> = self
            .cluster
            .as_deref()
            .map(|cl| {
                cl.domains
                    .values()
                    .flat_map(|dc| dc.join_waiters.iter().chain(&dc.leave_waiters))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for (client, tag) in waiting {
            self.reply(client, tag, Reply::Err(DlmError::Fenced));
        }
        let mut fresh = match self.cluster.as_deref() {
            Some(cl) => Dlm::new_cluster(
                self.node,
                cluster::ClusterConfig {
                    nodes: cl.nodes.iter().copied().collect(),
                    settle_ms: cl.settle_ms,
                },
            ),
            None => Dlm::new(self.node),
        }
        .with_hash_key(self.hash.0);
        fresh.next_lock = self.next_lock;
        fresh.counters = std::mem::take(&mut self.counters);
        fresh.actions = std::mem::take(&mut self.actions);
        fresh.live = std::mem::take(&mut self.live);
        fresh.now = self.now;
        for (&id, c) in &self.clients {
            fresh.clients.insert(
                id,
                ClientState {
                    cred: c.cred,
                    locks: BTreeSet::new(),
                    pending: BTreeSet::new(),
                    domains: BTreeSet::new(),
                },
            );
        }
        fresh.fenced = true;
        *self = fresh;
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Input::Tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Millis> {
        let local = self.deadlines.first().map(|&(t, _)| t);
        let cluster = self
            .cluster
            .as_deref()
            .and_then(|c| c.retries.first().map(|(t, _)| *t));
        match (local, cluster) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn reply(&mut self, client: ClientId, tag: u64, reply: Reply) {
        self.actions.push_back(Action::Reply { client, tag, reply });
    }

    pub(super) fn event(&mut self, client: Option<ClientId>, event: Event) {
        if let Some(client) = client {
            self.actions.push_back(Action::Event { client, event });
        }
    }

    fn disconnect(&mut self, client: ClientId) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        let mut touched: BTreeSet<ResKey> = BTreeSet::new();
        for id in c.locks {
            let l = &self.locks[&id];
            touched.insert((l.domain.clone(), l.resource.clone()));
            self.counters.unlocks += 1;
            self.forget(id);
        }
        for id in c.pending {
            let l = self.locks.get_mut(&id).expect("pending lock exists");
            l.requester = None;
            touched.insert((l.domain.clone(), l.resource.clone()));
            if l.granted.is_some() {
                // A persistent lock's conversion dies with its requester.
                l.requested = None;
                if let Some(t) = l.deadline.take() {
                    self.deadlines.remove(&(t, id));
                }
                let (d, r) = (l.domain.clone(), l.resource.clone());
                let q = self.queues_mut(&d, &r);
                if q.converting.contains(&id) {
                    q.converting.retain(|&x| x != id);
                    q.granted.push(id);
                }
            } else {
                self.forget(id);
            }
        }
        for d in &c.domains {
            if let Some(dom) = self.domains.get_mut(d) {
                dom.users.remove(&client);
            }
        }
        for (d, r) in touched {
            self.grant_pending(&d, &r);
            self.maybe_free(&d, &r);
        }
        for d in c.domains {
            self.maybe_free_domain(&d);
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, id));
            self.locks.get_mut(&id).expect("armed lock exists").deadline = None;
            let mode = self.locks[&id].requested.expect("timed request");
            let blockers = self.blockers(id, mode);
            self.counters.timeouts += 1;
            self.end_request(id, Failure::TimedOut { blockers });
        }
    }
}
