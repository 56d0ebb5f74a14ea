//! A deterministic simulation of a cluster of lock managers.
//!
//! It runs the real core ([`Dlm`]) of 3–7 nodes over a simulated network:
//! one FIFO link per ordered pair of nodes, with random delays, and
//! connections that break (everything in flight is lost) and come back
//! later. Random clients on every node lock, convert, unlock, cancel, use
//! value blocks, join and leave domains and disconnect. Nodes crash (their
//! state is gone, their connections break); each survivor is told the node
//! is dead a little later (as disk heartbeat would), and once all have been
//! told the node restarts with a fresh core.
//!
//! The network also splits: a partition puts the running nodes on two (or
//! three) random sides; connections between sides break and stay broken
//! until it heals, while the disk heartbeat still shows every node to every
//! other (no death notice). A few hundred milliseconds later (the hold:
//! the heartbeat dead time and two intervals; per node) each node applies
//! the o2quo rule ([`quorate`](crate::quorum::quorate)) with its heartbeat's live nodes as the
//! voters and those on its own side as reachable, and again whenever it is
//! told of a death while the partition lasts. A node that is not quorate
//! fences itself ([`Input::Fence`]: its clients lose every lock, requests
//! are refused) and only then stops heartbeating: from there on it is dead
//! to the others exactly like a crashed node (links broken, a death notice
//! to each running node, restart once all are told and the partition has
//! healed). It comes back either restarted with a fresh core or, as lockd
//! does, as the same core: connected again at once as a new incarnation,
//! still fenced, then heartbeating again and unfenced ([`Input::Unfence`])
//! a little later. A quorate node carries on; what it asks of the other
//! side waits for the recovery the death notices start. The partition
//! heals once no quorum check is due (every node that lost quorum has
//! fenced). Everything random comes from one seeded generator and time is
//! virtual, so a seed replays exactly.
//!
//! After every step it checks:
//! - no two clients anywhere hold incompatible modes on one resource, and no
//!   two nodes believe they hold incompatible node locks on it (a node on
//!   the losing side counts until it has fenced);
//! - every local holder's mode is covered by its node's node lock;
//! - a fenced node (until it restarts) holds no node lock, asks for none,
//!   is in no domain, and its clients hold and wait for nothing;
//! - a value block read under PR or above is the last one written (reads
//!   under CR or CW see some value written before); after a crash or a
//!   fence, until the next write, it may instead be flagged invalid, or be
//!   back to never written (no survivor knew it); if the dead or fenced
//!   node held PW or EX it must not be read as valid with a value;
//! - every request is answered exactly once and immediately, except joins
//!   and forced leaves, which are answered once the membership change is
//!   done (a fence answers them with [`DlmError::Fenced`](crate::dlm::DlmError::Fenced)); only a fenced
//!   node refuses with that error or takes a lock back as fenced.
//!
//! At each fence it also checks that, with the fencing node's voters, at
//! most one side of the partition is quorate, and that its own is not.
//!
//! At the end, the partition heals (quorum checks still due run first), the
//! network heals, crashed and fenced nodes restart, clients stop asking
//! and release what they hold; every pending request must then be answered
//! and every lock request end, within a bound of virtual time, and every
//! master's record of the nodes' node locks must match what each node holds
//! (no lock of a dead node survives recovery).
//!
//! The parts: `rng` (the seeded generator), `net` (links, connecting and
//! breaking them), `faults` (crashes, partitions, quorum checks, fences,
//! death notices, restarts), `workload` (the random clients, their requests
//! and what the replies tell them) and `checks` (the invariants above);
//! this module is the driver: the cluster's state, the schedule, a step,
//! the drain and the trace.
//!
//! May depend on: `dlm`, `quorum`, std.

mod checks;
mod faults;
mod net;
mod rng;
mod workload;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::dlm::{
    Action, ClientId, ClusterConfig, Dlm, Input, LockId, Lvb, Millis, NodeId, Request,
};

use checks::{HeldAsked, NodeKey};
use faults::Partition;
use net::{Link, short};
pub use rng::Rng;
use workload::{Asked, SimClient};

/// A start time that never comes (a crashed node waiting to restart).
const NEVER: Millis = Millis(u64::MAX);

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Nodes (3–7 in the test suite).
    pub nodes: usize,
    /// Clients per node.
    pub clients: usize,
    /// Domains used.
    pub domains: usize,
    /// Resources per domain.
    pub resources: usize,
    /// Steps of random traffic before the final drain.
    pub steps: usize,
    /// Per step, chance in 1000 that a connection breaks.
    pub break_per_mille: u64,
    /// Clients join domains explicitly (so nodes leave them when unused).
    pub churn: bool,
    /// Some nodes start late (joins wait for the mesh to settle).
    pub staggered: bool,
    /// Per client step, chance in 1000 that a node crashes.
    pub crash_per_mille: u64,
    /// Per client step, chance in 1000 that the network splits (when it is
    /// whole, every node runs and none is dead).
    pub partition_per_mille: u64,
}

impl Config {
    /// The configuration the test suite uses for `seed`: sizes vary with
    /// the seed so that many shapes are covered.
    pub fn for_seed(seed: u64, steps: usize) -> Config {
        let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        Config {
            nodes: 3 + r.below(5) as usize,
            clients: 1 + r.below(3) as usize,
            domains: 1 + r.below(2) as usize,
            resources: 1 + r.below(4) as usize,
            steps,
            break_per_mille: [0, 2, 5, 10][r.below(4) as usize],
            churn: r.chance(500),
            staggered: r.chance(300),
            crash_per_mille: [0, 0, 2, 6][r.below(4) as usize],
            partition_per_mille: [0, 0, 1, 3][r.below(4) as usize],
        }
    }
}

/// What a run did (for the test's summary line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Peer messages delivered.
    pub messages: u64,
    /// Peer messages lost with a broken connection.
    pub lost: u64,
    /// Grants seen by clients.
    pub grants: u64,
    /// Connections broken.
    pub breaks: u64,
    /// Membership changes completed (sum of final epochs is a proxy).
    pub joins: u64,
    /// Nodes crashed.
    pub crashes: u64,
    /// Network partitions.
    pub partitions: u64,
    /// Nodes fenced (lost quorum in a partition).
    pub fences: u64,
    /// Virtual time at the end, in milliseconds.
    pub virtual_ms: u64,
    /// FNV-1a over every event of the run as the trace prints it (step,
    /// time, messages, replies, faults): equal digests mean the same run,
    /// event for event. A refactoring that changes no behaviour keeps it.
    pub trace_digest: u64,
}

/// FNV-1a's 64-bit offset basis (the digest of nothing).
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `bytes` and a line end into an FNV-1a digest.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes.iter().chain(b"\n") {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A failed check, with what led to it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The step at which the check failed.
    pub step: usize,
    /// What went wrong.
    pub what: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.what
        )?;
        writeln!(f, "last events:")?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        write!(
            f,
            "replay with: O2TOOLS_SIM_SEED={} cargo test --release --test sim",
            self.seed
        )
    }
}

/// One simulated cluster.
pub struct Sim {
    seed: u64,
    cfg: Config,
    rng: Rng,
    now: Millis,
    step: usize,
    dlms: Vec<Dlm>,
    started: Vec<bool>,
    start_at: Vec<Millis>,
    clients: Vec<Vec<SimClient>>,
    links: BTreeMap<(usize, usize), Link>,
    /// Pairs connected now.
    up: BTreeSet<(usize, usize)>,
    /// Pairs to reconnect, and when.
    reconnect: BTreeMap<(usize, usize), Millis>,
    tag: u64,
    /// The last value written per (domain, resource), and every value ever
    /// written since the domain was last empty.
    lvb_last: BTreeMap<(usize, usize), Lvb>,
    lvb_seen: BTreeMap<(usize, usize), BTreeSet<Lvb>>,
    next_value: u64,
    trace: VecDeque<String>,
    out: Outcome,
    draining: bool,
    trace_len: usize,
    node_locks: BTreeMap<NodeKey, HeldAsked>,
    /// Per domain, the last epoch at which it was seen empty.
    emptied: BTreeMap<usize, u64>,
    /// Crashed nodes not restarted yet.
    down: BTreeSet<usize>,
    /// Death notices still to deliver: (when, survivor, dead node).
    notices: BTreeSet<(Millis, usize, usize)>,
    /// Value blocks that may read invalid or never written (a node died
    /// since their last write), and those that must not read valid with a
    /// value (the dead node held PW or EX).
    lvb_may_invalid: BTreeSet<(usize, usize)>,
    lvb_must_invalid: BTreeSet<(usize, usize)>,
    /// The partition in progress.
    partition: Option<Partition>,
    /// Nodes that fenced themselves and are not back yet (also in `down`:
    /// dead to the others). Their fenced core still takes client requests,
    /// to refuse them, and, once connected again, peer messages.
    fenced: BTreeSet<usize>,
    /// Fenced nodes connected again, and when they unfence.
    unfence_at: BTreeMap<usize, Millis>,
}

/// Events kept for a failure report (`O2TOOLS_SIM_TRACE` changes it).
fn trace_len() -> usize {
    std::env::var("O2TOOLS_SIM_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

fn dname(d: usize) -> Vec<u8> {
    format!("d{d}").into_bytes()
}

fn rname(r: usize) -> Vec<u8> {
    format!("r{r}").into_bytes()
}

impl Sim {
    /// A cluster for `seed` shaped by `cfg`.
    pub fn new(seed: u64, cfg: Config) -> Sim {
        let mut rng = Rng::new(seed);
        let nodes: Vec<NodeId> = (0..cfg.nodes).map(|i| NodeId(i as u8 + 1)).collect();
        let dlms = nodes
            .iter()
            .map(|&n| {
                Dlm::new_cluster(
                    n,
                    ClusterConfig {
                        nodes: nodes.clone(),
                        settle_ms: 50,
                    },
                )
            })
            .collect();
        let start_at = (0..cfg.nodes)
            .map(|_| {
                if cfg.staggered && rng.chance(400) {
                    Millis(rng.below(300))
                } else {
                    Millis(0)
                }
            })
            .collect();
        let clients = (0..cfg.nodes)
            .map(|_| {
                (0..cfg.clients)
                    .map(|c| SimClient {
                        id: ClientId(c as u64 + 1),
                        connected: false,
                        locks: BTreeMap::new(),
                        asked: BTreeMap::new(),
                        joined: BTreeSet::new(),
                    })
                    .collect()
            })
            .collect();
        let mut links = BTreeMap::new();
        for a in 0..cfg.nodes {
            for b in 0..cfg.nodes {
                if a != b {
                    links.insert(
                        (a, b),
                        Link {
                            queue: VecDeque::new(),
                            last: Millis(0),
                        },
                    );
                }
            }
        }
        Sim {
            seed,
            started: vec![false; cfg.nodes],
            cfg,
            rng,
            now: Millis(0),
            step: 0,
            dlms,
            start_at,
            clients,
            links,
            up: BTreeSet::new(),
            reconnect: BTreeMap::new(),
            tag: 0,
            lvb_last: BTreeMap::new(),
            lvb_seen: BTreeMap::new(),
            next_value: 1,
            trace: VecDeque::new(),
            out: Outcome {
                trace_digest: FNV_BASIS,
                ..Outcome::default()
            },
            draining: false,
            trace_len: trace_len(),
            node_locks: BTreeMap::new(),
            emptied: BTreeMap::new(),
            down: BTreeSet::new(),
            notices: BTreeSet::new(),
            lvb_may_invalid: BTreeSet::new(),
            lvb_must_invalid: BTreeSet::new(),
            partition: None,
            fenced: BTreeSet::new(),
            unfence_at: BTreeMap::new(),
        }
    }

    fn log(&mut self, s: String) {
        if self.trace.len() >= self.trace_len {
            self.trace.pop_front();
        }
        let line = format!("[{} t={}] {s}", self.step, self.now.0);
        self.out.trace_digest = fnv1a(self.out.trace_digest, line.as_bytes());
        self.trace.push_back(line);
    }

    fn fail(&self, what: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            step: self.step,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    /// Runs the random traffic, then the drain; Err on the first failed check.
    pub fn run(mut self) -> Result<Outcome, SimFailure> {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for step in 0..self.cfg.steps {
                self.step = step;
                self.one_step()?;
            }
            self.drain()
        }));
        match result {
            Ok(r) => r?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(self.fail(format!("the core panicked: {what}")));
            }
        }
        self.out.virtual_ms = self.now.0;
        Ok(self.out)
    }

    fn input(&mut self, n: usize, input: Input) -> Result<(), SimFailure> {
        self.dlms[n].handle(self.now, input);
        self.collect(n)
    }

    /// Takes node `n`'s actions: messages onto links, replies and events
    /// to the clients' beliefs.
    fn collect(&mut self, n: usize) -> Result<(), SimFailure> {
        while let Some(a) = self.dlms[n].poll_action() {
            match a {
                Action::Send { to, msg } => {
                    let to = to.0 as usize - 1;
                    if !self.up.contains(&(n.min(to), n.max(to))) {
                        return Err(self.fail(format!(
                            "node {} sent to node {} with no connection: {}",
                            n + 1,
                            to + 1,
                            short(&msg)
                        )));
                    }
                    let delay = 1 + self.rng.below(5);
                    let link = self.links.get_mut(&(n, to)).expect("link");
                    let at = self.now.after(delay).max(link.last);
                    link.last = at;
                    link.queue.push_back((at, msg));
                }
                Action::Reply { client, tag, reply } => self.on_reply(n, client, tag, reply)?,
                Action::Event { client, event } => self.on_event(n, client, event)?,
            }
        }
        Ok(())
    }

    /// The earliest scheduled thing: (time, kind) where kind 0 = node start,
    /// 1 = reconnect, 2 = message, 3 = timer, 4 = death notice, 5 = quorum
    /// check, 6 = the partition heals, 7 = a fenced node unfences.
    fn next_scheduled(&self) -> Option<(Millis, u8, usize, usize)> {
        let mut best: Option<(Millis, u8, usize, usize)> = None;
        let mut consider = |c: (Millis, u8, usize, usize)| {
            if best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        };
        // The dead come back once the network is whole.
        let partitioned = self.partition.is_some();
        for (n, &t) in self.start_at.iter().enumerate() {
            if !self.started[n] && t != NEVER && !(partitioned && self.down.contains(&n)) {
                consider((t, 0, n, 0));
            }
        }
        if let Some(&(t, s, x)) = self.notices.first() {
            consider((t, 4, s, x));
        }
        for (&(a, b), &t) in &self.reconnect {
            if self.started[a] && self.started[b] && !self.split(a, b) {
                consider((t, 1, a, b));
            }
        }
        for (&n, &t) in &self.unfence_at {
            consider((t, 7, n, 0));
        }
        if let Some(p) = &self.partition {
            match p.checks.first() {
                Some(&(t, n)) => consider((t, 5, n, 0)),
                None => consider((p.heal_at, 6, 0, 0)),
            }
        }
        for (&(a, b), link) in &self.links {
            if let Some(&(t, _)) = link.queue.front() {
                consider((t, 2, a, b));
            }
        }
        for (n, dlm) in self.dlms.iter().enumerate() {
            if let Some(t) = dlm.next_deadline() {
                if self.started[n] || self.fenced.contains(&n) {
                    consider((t.max(self.now), 3, n, 0));
                }
            }
        }
        best
    }

    fn run_scheduled(
        &mut self,
        (t, kind, a, b): (Millis, u8, usize, usize),
    ) -> Result<(), SimFailure> {
        self.now = self.now.max(t);
        match kind {
            0 => self.start_node(a),
            1 => self.connect(a, b),
            2 => {
                let (_, msg) = self
                    .links
                    .get_mut(&(a, b))
                    .expect("link")
                    .queue
                    .pop_front()
                    .expect("message");
                self.out.messages += 1;
                self.log(format!("{} -> {}: {}", a + 1, b + 1, short(&msg)));
                self.input(
                    b,
                    Input::Peer {
                        from: NodeId(a as u8 + 1),
                        msg,
                    },
                )
            }
            4 => {
                self.notices.remove(&(t, a, b));
                self.notice(a, b)
            }
            5 => {
                if let Some(p) = &mut self.partition {
                    p.checks.remove(&(t, a));
                }
                self.quorum_check(a)
            }
            6 => {
                self.heal();
                Ok(())
            }
            7 => self.come_back(a),
            _ => self.input(a, Input::Tick),
        }
    }

    fn one_step(&mut self) -> Result<(), SimFailure> {
        let next = self.next_scheduled();
        // Half the steps are client actions (at most 2 ms after now), the
        // rest run what is due next.
        let client_turn = self.rng.chance(450) || next.is_none();
        if client_turn {
            self.now = self.now.after(self.rng.below(3));
            // Due work first, so time never goes back.
            while let Some(s) = self.next_scheduled() {
                if s.0 > self.now {
                    break;
                }
                self.run_scheduled(s)?;
            }
            if self.rng.chance(self.cfg.break_per_mille) && !self.up.is_empty() {
                let pairs: Vec<(usize, usize)> = self.up.iter().copied().collect();
                let (a, b) = self.rng.pick(&pairs);
                self.disconnect(a, b)?;
            }
            // (A fenced node connected again is not heartbeating: it has
            // nothing to lose and is dead already.)
            let alive: Vec<usize> = (0..self.cfg.nodes)
                .filter(|&n| self.started[n] && !self.fenced.contains(&n))
                .collect();
            if alive.len() > 2 && self.rng.chance(self.cfg.crash_per_mille) {
                let n = self.rng.pick(&alive);
                self.crash(n)?;
            }
            if self.cfg.partition_per_mille > 0
                && self.partition.is_none()
                && self.down.is_empty()
                && self.notices.is_empty()
                && self.started.iter().all(|&s| s)
                && self.rng.chance(self.cfg.partition_per_mille)
            {
                self.start_partition()?;
            }
            let n = self.rng.below(self.cfg.nodes as u64) as usize;
            // A fenced node's clients still ask (and are refused).
            if self.started[n] || self.fenced.contains(&n) {
                let c = self.rng.below(self.cfg.clients as u64) as usize;
                self.client_action(n, c)?;
            }
        } else if let Some(s) = next {
            self.run_scheduled(s)?;
        }
        self.check_nodes()?;
        self.check_answered()?;
        self.check_fenced()
    }

    /// Heals the network, stops new work, releases what is held; every
    /// request must end within the bound.
    fn drain(&mut self) -> Result<(), SimFailure> {
        self.draining = true;
        self.step = self.cfg.steps;
        self.log("drain".into());
        // The partition ends: the quorum checks still due run (with the
        // death notices due before them, which may call for more), then
        // it heals.
        while let Some(p) = &self.partition {
            let check = p.checks.first().copied();
            match (check, self.notices.first().copied()) {
                (None, _) => self.heal(),
                (Some((tc, _)), Some((t, s, x))) if t <= tc => {
                    self.notices.remove(&(t, s, x));
                    self.now = self.now.max(t);
                    self.notice(s, x)?;
                }
                (Some((t, n)), _) => {
                    if let Some(p) = &mut self.partition {
                        p.checks.remove(&(t, n));
                    }
                    self.now = self.now.max(t);
                    self.quorum_check(n)?;
                }
            }
            self.check_nodes()?;
            self.check_fenced()?;
        }
        while let Some((t, s, x)) = self.notices.pop_first() {
            self.now = self.now.max(t);
            self.notice(s, x)?;
        }
        for n in 0..self.cfg.nodes {
            if !self.started[n] {
                self.start_node(n)?;
            }
        }
        while let Some((n, t)) = self.unfence_at.pop_first() {
            self.now = self.now.max(t);
            self.come_back(n)?;
        }
        let pairs: Vec<(usize, usize)> = self.reconnect.keys().copied().collect();
        for (a, b) in pairs {
            self.connect(a, b)?;
        }
        let limit = self.now.after(120_000);
        loop {
            self.step += 1;
            // Release everything granted (a waiter behind it is then served).
            let mut released = false;
            for n in 0..self.cfg.nodes {
                for c in 0..self.cfg.clients {
                    let idle = self.clients[n][c].asked.values().all(|(a, _)| {
                        matches!(a, Asked::Join { .. } | Asked::Leave { force: true, .. })
                    });
                    if !idle {
                        continue;
                    }
                    let held: Vec<LockId> = self.clients[n][c]
                        .locks
                        .iter()
                        .filter(|(_, l)| l.granted.is_some() && l.pending.is_none())
                        .map(|(k, _)| *k)
                        .collect();
                    for lock in held {
                        released = true;
                        self.request(n, c, Asked::Unlock { lock }, Request::Unlock { lock })?;
                    }
                }
            }
            self.check_nodes()?;
            self.check_answered()?;
            self.check_fenced()?;
            let outstanding = self
                .clients
                .iter()
                .flatten()
                .any(|c| !c.asked.is_empty() || !c.locks.is_empty());
            if released {
                continue;
            }
            let Some(s) = self.next_scheduled() else {
                if outstanding {
                    return Err(self.fail(self.stuck()));
                }
                break;
            };
            if !outstanding {
                // Only background work left (cached locks, timers): done
                // once no message is in flight and no membership change
                // (a recovery, say) is under way.
                let changing = self.dlms.iter().any(|dlm| {
                    (0..self.cfg.domains)
                        .any(|d| dlm.membership(&dname(d)).is_some_and(|(_, _, c)| c))
                });
                if !changing && self.links.values().all(|l| l.queue.is_empty()) {
                    break;
                }
            }
            if s.0 > limit {
                return Err(self.fail(self.stuck()));
            }
            self.run_scheduled(s)?;
        }
        self.check_records()?;
        for dlm in &self.dlms {
            for v in dlm.cluster_domains() {
                self.out.joins += v.epoch;
            }
        }
        Ok(())
    }
}

/// Runs one seed with the suite's configuration.
pub fn run_seed(seed: u64, steps: usize) -> Result<Outcome, SimFailure> {
    Sim::new(seed, Config::for_seed(seed, steps)).run()
}
