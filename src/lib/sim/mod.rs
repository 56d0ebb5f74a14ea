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
//! the o2quo rule ([`quorate`]) with its heartbeat's live nodes as the
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
//!   done (a fence answers them with [`DlmError::Fenced`]); only a fenced
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
//! May depend on: `dlm`, `quorum`, std.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use crate::dlm::{
    Action, ClientId, ClusterConfig, Cred, Dlm, DlmError, Event, Input, LVB_LEN, LockFlags, LockId,
    LockRequest, LostReason, Lvb, Millis, Mode, NodeId, PeerMsg, Reply, Request,
};
use crate::quorum::quorate;

/// A start time that never comes (a crashed node waiting to restart).
const NEVER: Millis = Millis(u64::MAX);

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

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

#[derive(Clone, Debug)]
struct CLock {
    d: usize,
    r: usize,
    granted: Option<Mode>,
    pending: Option<Mode>,
}

#[derive(Clone, Debug)]
enum Asked {
    Lock { d: usize, r: usize, mode: Mode },
    Convert { lock: LockId, mode: Mode },
    Unlock { lock: LockId },
    Cancel,
    LvbGet { lock: LockId },
    LvbSet { lock: LockId, value: Lvb },
    Join { d: usize },
    Leave { d: usize, force: bool },
}

#[derive(Debug)]
struct SimClient {
    id: ClientId,
    connected: bool,
    locks: BTreeMap<LockId, CLock>,
    asked: BTreeMap<u64, (Asked, usize)>,
    /// Domains joined explicitly (or being joined).
    joined: BTreeSet<usize>,
}

struct Link {
    queue: VecDeque<(Millis, PeerMsg)>,
    last: Millis,
}

/// A network partition in progress.
#[derive(Debug)]
struct Partition {
    /// The side of each node.
    side: Vec<usize>,
    /// How many sides.
    sides: usize,
    /// It heals then at the earliest (and once no quorum check is due).
    heal_at: Millis,
    /// Quorum checks due: (when, node).
    checks: BTreeSet<(Millis, usize)>,
}

/// A node's lock on a resource: (node index, domain, resource).
type NodeKey = (usize, Vec<u8>, Vec<u8>);
/// Mode held and mode asked for.
type HeldAsked = (Option<Mode>, Option<Mode>);

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

fn short(msg: &PeerMsg) -> String {
    let s = format!("{msg:?}");
    // Value blocks make lines unreadable.
    let mut out = String::new();
    let mut skip = 0usize;
    for (i, part) in s.split("value: [").enumerate() {
        if i > 0 {
            out.push_str("value: [..");
            skip = part.find(']').unwrap_or(0);
        }
        out.push_str(&part[skip..]);
        skip = 0;
    }
    out
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

    fn client_mut(&mut self, n: usize, id: ClientId) -> &mut SimClient {
        &mut self.clients[n][id.0 as usize - 1]
    }

    fn on_reply(
        &mut self,
        n: usize,
        id: ClientId,
        tag: u64,
        reply: Reply,
    ) -> Result<(), SimFailure> {
        let step = self.step;
        let Some((asked, _)) = self.client_mut(n, id).asked.remove(&tag) else {
            return Err(self.fail(format!(
                "node {} client {}: reply to unknown tag {tag}",
                n + 1,
                id.0
            )));
        };
        self.log(format!("n{} c{} reply {asked:?} -> {reply:?}", n + 1, id.0));
        let _ = step;
        match (asked, reply) {
            (asked, Reply::Err(DlmError::Fenced)) => {
                if !self.dlms[n].is_fenced() {
                    return Err(self.fail(format!(
                        "node {} client {}: {asked:?} refused as fenced by a node that is not",
                        n + 1,
                        id.0
                    )));
                }
                // A fenced node is in no domain.
                if let Asked::Join { d } = asked {
                    self.client_mut(n, id).joined.remove(&d);
                }
            }
            (Asked::Lock { d, r, mode }, Reply::LockAccepted { lock }) => {
                self.client_mut(n, id).locks.insert(
                    lock,
                    CLock {
                        d,
                        r,
                        granted: None,
                        pending: Some(mode),
                    },
                );
            }
            (Asked::Convert { lock, mode }, Reply::Ok) => {
                if let Some(l) = self.client_mut(n, id).locks.get_mut(&lock) {
                    l.pending = Some(mode);
                }
            }
            (Asked::Unlock { lock }, Reply::Ok) => {
                self.client_mut(n, id).locks.remove(&lock);
            }
            (Asked::LvbSet { lock, value }, Reply::Ok) => {
                let l = self.clients[n][id.0 as usize - 1].locks[&lock].clone();
                if !l.granted.is_some_and(|g| g.can_write_lvb()) {
                    return Err(self.fail(format!("LVB written through {l:?}")));
                }
                self.lvb_last.insert((l.d, l.r), value);
                self.lvb_seen.entry((l.d, l.r)).or_default().insert(value);
                // While a dead node is not recovered from yet, a master may
                // still grant it a mode (requests it sent before dying), and
                // recovery then rightly distrusts the value.
                if self.down.is_empty() && self.notices.is_empty() {
                    self.lvb_may_invalid.remove(&(l.d, l.r));
                }
                self.lvb_must_invalid.remove(&(l.d, l.r));
            }
            (Asked::LvbGet { lock }, Reply::Lvb { value, valid }) => {
                let l = self.clients[n][id.0 as usize - 1].locks[&lock].clone();
                let g = l.granted.expect("read through a granted lock");
                let key = (l.d, l.r);
                let last = self.lvb_last.get(&key).copied().unwrap_or([0; LVB_LEN]);
                let pristine = value == [0; LVB_LEN];
                // Under CR or CW the copy may be older than the last write
                // (a writer can share the resource): only what it was when
                // read matters, and it was some earlier state.
                let strong = matches!(g, Mode::PR | Mode::PW | Mode::EX);
                let may_invalid = if strong {
                    self.lvb_may_invalid.contains(&key)
                } else {
                    self.out.crashes + self.out.fences > 0
                };
                if !valid && !may_invalid {
                    return Err(self.fail(format!(
                        "node {} client {} read d{}/r{} as invalid with no crash or fence since its last write",
                        n + 1,
                        id.0,
                        l.d,
                        l.r
                    )));
                }
                if strong && valid && !pristine && self.lvb_must_invalid.contains(&key) {
                    return Err(self.fail(format!(
                        "node {} client {} read d{}/r{} as valid ({:?}) after its writer's node died",
                        n + 1,
                        id.0,
                        l.d,
                        l.r,
                        &value[..8]
                    )));
                }
                let after_crash = may_invalid && (!valid || pristine);
                if after_crash {
                    // Flagged, or forgotten with the dead node: allowed.
                } else if matches!(g, Mode::PR | Mode::PW | Mode::EX) {
                    if value != last {
                        return Err(self.fail(format!(
                            "node {} client {} read d{}/r{} under {g}: {:?}, but the last value written is {:?}",
                            n + 1,
                            id.0,
                            l.d,
                            l.r,
                            &value[..8],
                            &last[..8]
                        )));
                    }
                } else if value != [0; LVB_LEN]
                    && !self
                        .lvb_seen
                        .get(&(l.d, l.r))
                        .is_some_and(|s| s.contains(&value))
                {
                    return Err(self.fail(format!("read a value never written: {:?}", &value[..8])));
                }
            }
            (Asked::Cancel, Reply::Ok | Reply::Err(_)) => {}
            (Asked::Join { .. }, Reply::Ok) => {}
            (Asked::Leave { d, force }, Reply::Ok) => {
                if force {
                    // Every client of the node stopped using it.
                    for c in &mut self.clients[n] {
                        c.joined.remove(&d);
                    }
                } else {
                    self.client_mut(n, id).joined.remove(&d);
                }
            }
            (asked, reply) => {
                return Err(self.fail(format!(
                    "node {} client {}: unexpected reply {reply:?} to {asked:?}",
                    n + 1,
                    id.0
                )));
            }
        }
        Ok(())
    }

    fn on_event(&mut self, n: usize, id: ClientId, event: Event) -> Result<(), SimFailure> {
        self.log(format!("n{} c{} event {event:?}", n + 1, id.0));
        match event {
            Event::Granted { lock, mode } => {
                self.out.grants += 1;
                let Some(l) = self.client_mut(n, id).locks.get_mut(&lock) else {
                    return Err(self.fail(format!("grant of unknown lock {lock}")));
                };
                if l.pending != Some(mode) {
                    let asked = l.pending;
                    return Err(self.fail(format!("granted {mode} but asked {asked:?}")));
                }
                l.granted = Some(mode);
                l.pending = None;
                let (d, r) = (l.d, l.r);
                self.check_resource(d, r)?;
            }
            Event::Failed { lock, .. } => {
                let c = self.client_mut(n, id);
                if let Some(l) = c.locks.get_mut(&lock) {
                    l.pending = None;
                    if l.granted.is_none() {
                        c.locks.remove(&lock);
                    }
                }
            }
            Event::Lost { lock, reason } => {
                if reason == LostReason::Fenced && !self.dlms[n].is_fenced() {
                    return Err(self.fail(format!(
                        "node {} client {}: lock {lock} lost as fenced by a node that is not",
                        n + 1,
                        id.0
                    )));
                }
                self.client_mut(n, id).locks.remove(&lock);
            }
            Event::Waiting { .. } | Event::Bast { .. } => {}
        }
        Ok(())
    }

    /// No two clients hold incompatible modes on `d/r`, anywhere.
    fn check_resource(&self, d: usize, r: usize) -> Result<(), SimFailure> {
        let mut held: Vec<(usize, u64, Mode)> = Vec::new();
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for l in c.locks.values() {
                    if l.d == d && l.r == r {
                        if let Some(g) = l.granted {
                            for &(n2, c2, g2) in &held {
                                if !g.compatible(g2) {
                                    return Err(self.fail(format!(
                                        "d{d}/r{r}: node {} client {} holds {g} while node {} client {} holds {g2}",
                                        n + 1,
                                        c.id.0,
                                        n2 + 1,
                                        c2
                                    )));
                                }
                            }
                            held.push((n, c.id.0, g));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Node locks are compatible across nodes (those not changing mode: a
    /// node asking for a conversion may have been granted it already) and
    /// cover the local holders, both in the mode held and in the mode asked
    /// for; value blocks of domains that emptied are forgotten.
    fn check_nodes(&mut self) -> Result<(), SimFailure> {
        type Key = (Vec<u8>, Vec<u8>);
        type Holders = Vec<(usize, Option<Mode>, Option<Mode>)>;
        let mut by_res: BTreeMap<Key, Holders> = BTreeMap::new();
        for (n, dlm) in self.dlms.iter().enumerate() {
            dlm.for_each_node_lock(|d, r, m, p| {
                by_res
                    .entry((d.to_vec(), r.to_vec()))
                    .or_default()
                    .push((n, m, p));
            });
        }
        // Log node lock changes (the trace shows no loopback messages).
        let flat: BTreeMap<NodeKey, HeldAsked> = by_res
            .iter()
            .flat_map(|((d, r), v)| {
                v.iter()
                    .map(move |&(n, m, p)| ((n, d.clone(), r.clone()), (m, p)))
            })
            .collect();
        if flat != self.node_locks {
            let keys: BTreeSet<&NodeKey> = flat.keys().chain(self.node_locks.keys()).collect();
            let mut changes = Vec::new();
            for k in keys {
                let (a, b) = (self.node_locks.get(k), flat.get(k));
                if a != b {
                    changes.push(format!(
                        "node {} {}/{} node lock (held, asked) {a:?} -> {b:?}",
                        k.0 + 1,
                        String::from_utf8_lossy(&k.1),
                        String::from_utf8_lossy(&k.2)
                    ));
                }
            }
            for c in changes {
                self.log(c);
            }
            self.node_locks = flat;
        }
        for ((d, r), v) in &by_res {
            let settled: Vec<(usize, Mode)> = v
                .iter()
                .filter(|x| x.2.is_none())
                .filter_map(|x| x.1.map(|m| (x.0, m)))
                .collect();
            for (i, &(n1, m1)) in settled.iter().enumerate() {
                for &(n2, m2) in &settled[i + 1..] {
                    if !m1.compatible(m2) {
                        return Err(self.fail(format!(
                            "{}/{}: node {} holds node lock {m1} while node {} holds {m2}",
                            String::from_utf8_lossy(d),
                            String::from_utf8_lossy(r),
                            n1 + 1,
                            n2 + 1
                        )));
                    }
                }
            }
        }
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for l in c.locks.values() {
                    let Some(g) = l.granted else { continue };
                    let key = (dname(l.d), rname(l.r));
                    let node = by_res
                        .get(&key)
                        .and_then(|v| v.iter().find(|x| x.0 == n))
                        .map(|x| (x.1, x.2));
                    let covered = node.is_some_and(|(m, p)| {
                        m.is_some_and(|m| crate::dlm::covers(m, g))
                            && p.is_none_or(|p| crate::dlm::covers(p, g))
                    });
                    if !covered {
                        return Err(self.fail(format!(
                            "d{}/r{}: node {} client {} holds {g} under node lock (held, asked) {node:?}",
                            l.d,
                            l.r,
                            n + 1,
                            c.id.0
                        )));
                    }
                }
            }
        }
        // A domain whose last member left is gone, value blocks included
        // (the last leaver's view shows the epoch it emptied at).
        for d in 0..self.cfg.domains {
            let name = dname(d);
            let emptied = self
                .dlms
                .iter()
                .filter_map(|dlm| dlm.membership(&name))
                .filter(|(e, members, _)| *e > 0 && members.is_empty())
                .map(|(e, _, _)| e)
                .max();
            if let Some(e) = emptied {
                if self.emptied.get(&d).is_none_or(|&seen| seen < e) {
                    self.emptied.insert(d, e);
                    self.log(format!("d{d} emptied at epoch {e}"));
                    for r in 0..self.cfg.resources {
                        self.lvb_last.remove(&(d, r));
                        self.lvb_seen.remove(&(d, r));
                    }
                }
            }
            // Every member died: the domain starts over.
            let living = (0..self.cfg.nodes).any(|n| {
                self.started[n]
                    && self.dlms[n]
                        .membership(&name)
                        .is_some_and(|(_, members, changing)| {
                            changing || members.contains(&NodeId(n as u8 + 1))
                        })
            });
            if !living
                && (0..self.cfg.resources).any(|r| {
                    self.lvb_last.contains_key(&(d, r)) || self.lvb_seen.contains_key(&(d, r))
                })
            {
                self.log(format!("d{d} has no living member"));
                for r in 0..self.cfg.resources {
                    self.lvb_last.remove(&(d, r));
                    self.lvb_seen.remove(&(d, r));
                }
            }
        }
        Ok(())
    }

    /// Requests must be answered at once, except joins and forced leaves.
    fn check_answered(&self) -> Result<(), SimFailure> {
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for (tag, (asked, _)) in &c.asked {
                    if !matches!(asked, Asked::Join { .. } | Asked::Leave { force: true, .. }) {
                        return Err(self.fail(format!(
                            "node {} client {}: request {tag} {asked:?} not answered",
                            n + 1,
                            c.id.0
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A fenced node holds nothing until it restarts: no node lock held or
    /// asked for, no domain, and its clients hold and wait for nothing.
    fn check_fenced(&self) -> Result<(), SimFailure> {
        for &n in &self.fenced {
            if !self.dlms[n].is_fenced() {
                return Err(self.fail(format!("node {} fenced but serving", n + 1)));
            }
            let mut held = Vec::new();
            self.dlms[n].for_each_node_lock(|d, r, m, p| {
                if m.is_some() || p.is_some() {
                    held.push(format!(
                        "{}/{} (held, asked) {:?}",
                        String::from_utf8_lossy(d),
                        String::from_utf8_lossy(r),
                        (m, p)
                    ));
                }
            });
            if !held.is_empty() {
                return Err(self.fail(format!(
                    "node {} is fenced but has node locks: {}",
                    n + 1,
                    held.join(", ")
                )));
            }
            let domains = self.dlms[n].domains();
            if !domains.is_empty() {
                let names: Vec<String> = domains
                    .iter()
                    .map(|i| String::from_utf8_lossy(&i.name).into_owned())
                    .collect();
                return Err(self.fail(format!("node {} is fenced but in domains {names:?}", n + 1)));
            }
            for c in &self.clients[n] {
                if let Some((id, l)) = c.locks.iter().next() {
                    return Err(self.fail(format!(
                        "node {} is fenced but its client {} holds lock {id}: {l:?}",
                        n + 1,
                        c.id.0
                    )));
                }
                if let Some((tag, (a, _))) = c.asked.iter().next() {
                    return Err(self.fail(format!(
                        "node {} is fenced but its client {} waits for {tag} {a:?}",
                        n + 1,
                        c.id.0
                    )));
                }
            }
        }
        Ok(())
    }

    fn start_node(&mut self, n: usize) -> Result<(), SimFailure> {
        // A fenced node comes back either restarted (a fresh core, as after
        // a crash) or as lockd does: the same core, clients still connected,
        // connects again at once as a new incarnation, still fenced and not
        // heartbeating, and heartbeats again and serves requests a little
        // later (`come_back`).
        if self.fenced.contains(&n) {
            if self.rng.chance(500) {
                self.started[n] = true;
                self.log(format!("node {} connects again, still fenced", n + 1));
                for m in 0..self.cfg.nodes {
                    if m != n && self.started[m] {
                        self.connect(n, m)?;
                    }
                }
                let at = self.now.after(10 + self.rng.below(200));
                self.unfence_at.insert(n, at);
                return Ok(());
            }
            self.fenced.remove(&n);
            self.replace_core(n);
        }
        self.started[n] = true;
        let restart = self.down.remove(&n);
        self.log(format!(
            "node {} {}",
            n + 1,
            if restart { "restarts" } else { "starts" }
        ));
        // Disk heartbeat: every node not dead is alive (and sees this one).
        for m in 0..self.cfg.nodes {
            if !self.down.contains(&m) {
                self.input(
                    n,
                    Input::NodeUp {
                        node: NodeId(m as u8 + 1),
                    },
                )?;
            }
            if restart && m != n && self.started[m] {
                self.input(
                    m,
                    Input::NodeUp {
                        node: NodeId(n as u8 + 1),
                    },
                )?;
            }
        }
        for m in 0..self.cfg.nodes {
            if m != n && self.started[m] {
                self.connect(n, m)?;
            }
        }
        Ok(())
    }

    /// A fenced node that connected again heartbeats again (its view from
    /// before the fence is stale: the nodes dead now are dead) and serves
    /// requests.
    fn come_back(&mut self, n: usize) -> Result<(), SimFailure> {
        self.unfence_at.remove(&n);
        self.fenced.remove(&n);
        self.down.remove(&n);
        self.log(format!("node {} heartbeats again and unfences", n + 1));
        for m in 0..self.cfg.nodes {
            let node = NodeId(m as u8 + 1);
            if self.down.contains(&m) {
                self.input(n, Input::NodeDown { node })?;
            } else {
                self.input(n, Input::NodeUp { node })?;
            }
            if m != n && self.started[m] {
                self.input(
                    m,
                    Input::NodeUp {
                        node: NodeId(n as u8 + 1),
                    },
                )?;
            }
        }
        self.input(n, Input::Unfence)
    }

    /// Whether `a` and `b` are on different sides of the partition.
    fn split(&self, a: usize, b: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|p| p.side[a] != p.side[b])
    }

    fn connect(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        if self.split(a, b) {
            return Err(self.fail(format!(
                "connecting {} and {} across the partition",
                a + 1,
                b + 1
            )));
        }
        let key = (a.min(b), a.max(b));
        self.up.insert(key);
        self.reconnect.remove(&key);
        self.log(format!("connect {} <-> {}", a + 1, b + 1));
        self.input(
            a,
            Input::PeerUp {
                node: NodeId(b as u8 + 1),
            },
        )?;
        self.input(
            b,
            Input::PeerUp {
                node: NodeId(a as u8 + 1),
            },
        )
    }

    fn disconnect(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        let key = (a.min(b), a.max(b));
        self.up.remove(&key);
        for k in [(a, b), (b, a)] {
            let link = self.links.get_mut(&k).expect("link");
            self.out.lost += link.queue.len() as u64;
            link.queue.clear();
        }
        self.out.breaks += 1;
        let at = self.now.after(5 + self.rng.below(100));
        self.reconnect.insert(key, at);
        self.log(format!("break {} <-> {}", a + 1, b + 1));
        self.input(
            a,
            Input::PeerDown {
                node: NodeId(b as u8 + 1),
            },
        )?;
        self.input(
            b,
            Input::PeerDown {
                node: NodeId(a as u8 + 1),
            },
        )
    }

    /// Node `n` crashes: its state, its clients' locks and everything in
    /// flight to or from it are gone; the survivors are told it is dead a
    /// little later, each at its own time.
    fn crash(&mut self, n: usize) -> Result<(), SimFailure> {
        self.out.crashes += 1;
        self.log(format!("node {} crashes", n + 1));
        self.locks_lost(n);
        self.replace_core(n);
        self.stop_heartbeating(n)
    }

    /// Node `n` lost quorum: it fences itself (its clients are told every
    /// lock is gone, and it refuses requests), and only then stops
    /// heartbeating, so the others recover its locks only once it holds
    /// none.
    fn fence(&mut self, n: usize) -> Result<(), SimFailure> {
        self.out.fences += 1;
        self.log(format!("node {} lost quorum: fences", n + 1));
        // With this node's voters, at most one side keeps its locks, and
        // not this node's.
        let (voters, _) = self.quorum_view(n);
        if let Some(p) = &self.partition {
            let quorate_sides: Vec<usize> = (0..p.sides)
                .filter(|&s| {
                    let reach: BTreeSet<u8> = voters
                        .iter()
                        .copied()
                        .filter(|&x| p.side[x as usize - 1] == s)
                        .collect();
                    reach.first().is_some_and(|&m| quorate(m, &voters, &reach))
                })
                .collect();
            if quorate_sides.len() > 1 || quorate_sides.contains(&p.side[n]) {
                return Err(self.fail(format!(
                    "node {} fences with voters {voters:?}, sides {:?}: sides {quorate_sides:?} are quorate",
                    n + 1,
                    p.side
                )));
            }
        }
        self.locks_lost(n);
        self.input(n, Input::Fence)?;
        for c in &mut self.clients[n] {
            c.joined.clear();
        }
        self.fenced.insert(n);
        if let Some(p) = &mut self.partition {
            p.checks.retain(|&(_, m)| m != n);
        }
        // What it was still to be told of, it is not: a node waiting only
        // for that notice may restart. (A crash leaves such a node down
        // until the drain, as it always has: old seeds replay the same.)
        let waited: BTreeSet<usize> = self
            .notices
            .iter()
            .filter(|&&(_, s, _)| s == n)
            .map(|&(_, _, x)| x)
            .collect();
        self.stop_heartbeating(n)?;
        for x in waited {
            if self.start_at[x] == NEVER {
                self.schedule_restart(x);
            }
        }
        Ok(())
    }

    /// Node `n` is about to lose its locks without releasing them (a crash
    /// or a fence): the value blocks it could write may be lost, and every
    /// value block may now read invalid or never written.
    fn locks_lost(&mut self, n: usize) {
        let index = |s: &[u8], p: char| -> Option<usize> {
            std::str::from_utf8(s).ok()?.strip_prefix(p)?.parse().ok()
        };
        let mut writers = Vec::new();
        self.dlms[n].for_each_node_lock(|d, r, m, _| {
            if m.is_some_and(|m| m.can_write_lvb()) {
                if let (Some(d), Some(r)) = (index(d, 'd'), index(r, 'r')) {
                    writers.push((d, r));
                }
            }
        });
        for &(d, r) in &writers {
            self.log(format!("node {} held PW or EX on d{d}/r{r}", n + 1));
        }
        self.lvb_must_invalid.extend(writers);
        for d in 0..self.cfg.domains {
            for r in 0..self.cfg.resources {
                self.lvb_may_invalid.insert((d, r));
            }
        }
    }

    /// Node `n` gets a fresh core (a new incarnation) and its clients start
    /// over.
    fn replace_core(&mut self, n: usize) {
        let nodes: Vec<NodeId> = (0..self.cfg.nodes).map(|i| NodeId(i as u8 + 1)).collect();
        self.dlms[n] = Dlm::new_cluster(
            NodeId(n as u8 + 1),
            ClusterConfig {
                nodes,
                settle_ms: 50,
            },
        );
        for c in &mut self.clients[n] {
            c.connected = false;
            c.locks.clear();
            c.asked.clear();
            c.joined.clear();
        }
    }

    /// Node `n` (crashed or fenced) stops heartbeating: its links break and
    /// lose what is in flight, every running node is told it is dead at its
    /// own time, and once all are told it restarts.
    fn stop_heartbeating(&mut self, n: usize) -> Result<(), SimFailure> {
        for m in 0..self.cfg.nodes {
            if m == n {
                continue;
            }
            let key = (n.min(m), n.max(m));
            self.reconnect.remove(&key);
            for k in [(n, m), (m, n)] {
                let link = self.links.get_mut(&k).expect("link");
                self.out.lost += link.queue.len() as u64;
                link.queue.clear();
            }
            if self.up.remove(&key) {
                self.input(
                    m,
                    Input::PeerDown {
                        node: NodeId(n as u8 + 1),
                    },
                )?;
            }
        }
        self.started[n] = false;
        self.down.insert(n);
        self.start_at[n] = NEVER;
        self.notices.retain(|&(_, s, _)| s != n);
        for m in 0..self.cfg.nodes {
            if m != n && self.started[m] {
                let at = self.now.after(20 + self.rng.below(300));
                self.notices.insert((at, m, n));
            }
        }
        self.schedule_restart(n);
        Ok(())
    }

    /// Once every survivor has been told `n` is dead, it restarts.
    fn schedule_restart(&mut self, n: usize) {
        if self.down.contains(&n) && !self.notices.iter().any(|&(_, _, x)| x == n) {
            self.start_at[n] = self.now.after(20 + self.rng.below(300));
        }
    }

    /// Tells survivor `s` that `x` is dead.
    fn notice(&mut self, s: usize, x: usize) -> Result<(), SimFailure> {
        self.log(format!("node {} learns node {} is dead", s + 1, x + 1));
        self.input(
            s,
            Input::NodeDown {
                node: NodeId(x as u8 + 1),
            },
        )?;
        self.schedule_restart(x);
        // Its voters changed: during a partition it decides again.
        if self.partition.is_some() {
            let at = self.now.after(1 + self.rng.below(20));
            if let Some(p) = &mut self.partition {
                p.checks.insert((at, s));
            }
        }
        Ok(())
    }

    /// The network splits into two (or three) random sides: connections
    /// between sides break and stay broken until it heals; each node
    /// decides whether it keeps its locks after its detection delay.
    fn start_partition(&mut self) -> Result<(), SimFailure> {
        let n = self.cfg.nodes;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut cuts = vec![1 + self.rng.below(n as u64 - 1) as usize];
        if self.rng.chance(150) {
            let a = 1 + self.rng.below(n as u64 - 2) as usize;
            let b = a + 1 + self.rng.below((n - 1 - a) as u64) as usize;
            cuts = vec![a, b];
        }
        let mut side = vec![0; n];
        for (i, &m) in order.iter().enumerate() {
            side[m] = cuts.iter().filter(|&&c| c <= i).count();
        }
        let heal_at = self.now.after(100 + self.rng.below(2500));
        let mut checks = BTreeSet::new();
        for m in 0..n {
            // The hold (the heartbeat dead time and two intervals): longer
            // than a death notice takes.
            checks.insert((self.now.after(320 + self.rng.below(400)), m));
        }
        self.out.partitions += 1;
        let sides: Vec<Vec<usize>> = (0..=cuts.len())
            .map(|s| (0..n).filter(|&m| side[m] == s).map(|m| m + 1).collect())
            .collect();
        self.log(format!("the network splits: {sides:?}"));
        self.partition = Some(Partition {
            side,
            sides: cuts.len() + 1,
            heal_at,
            checks,
        });
        let across: Vec<(usize, usize)> = self
            .up
            .iter()
            .copied()
            .filter(|&(a, b)| self.split(a, b))
            .collect();
        for (a, b) in across {
            self.disconnect(a, b)?;
        }
        Ok(())
    }

    /// Node `n`'s voters (the nodes alive on its heartbeat, itself
    /// included) and those of them on its side.
    fn quorum_view(&self, n: usize) -> (BTreeSet<u8>, BTreeSet<u8>) {
        let mut voters: BTreeSet<u8> = self.dlms[n].live_nodes().iter().map(|x| x.0).collect();
        voters.insert(n as u8 + 1);
        let reachable = match &self.partition {
            Some(p) => voters
                .iter()
                .copied()
                .filter(|&x| p.side[x as usize - 1] == p.side[n])
                .collect(),
            None => voters.clone(),
        };
        (voters, reachable)
    }

    /// Node `n` decides whether it keeps its locks.
    fn quorum_check(&mut self, n: usize) -> Result<(), SimFailure> {
        if !self.started[n] {
            return Ok(());
        }
        let (voters, reachable) = self.quorum_view(n);
        let ok = quorate(n as u8 + 1, &voters, &reachable);
        self.log(format!(
            "node {} quorum: voters {voters:?}, reachable {reachable:?}: {}",
            n + 1,
            if ok { "keeps its locks" } else { "lost" }
        ));
        if ok { Ok(()) } else { self.fence(n) }
    }

    fn heal(&mut self) {
        self.partition = None;
        self.log("the partition heals".into());
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

    fn request(
        &mut self,
        n: usize,
        c: usize,
        asked: Asked,
        request: Request,
    ) -> Result<(), SimFailure> {
        self.tag += 1;
        let tag = self.tag;
        let id = self.clients[n][c].id;
        let step = self.step;
        self.clients[n][c].asked.insert(tag, (asked, step));
        self.log(
            format!("n{} c{} asks {request:?}", n + 1, id.0).replace("value: [", "value: [.."),
        );
        self.input(
            n,
            Input::Request {
                client: id,
                tag,
                request,
            },
        )
    }

    fn client_action(&mut self, n: usize, c: usize) -> Result<(), SimFailure> {
        let id = self.clients[n][c].id;
        if !self.clients[n][c].connected {
            self.clients[n][c].connected = true;
            self.log(format!("n{} c{} connects", n + 1, id.0));
            return self.input(
                n,
                Input::Connected {
                    client: id,
                    cred: Cred {
                        uid: 0,
                        gid: 0,
                        pid: (n * 100 + c) as i32 + 1,
                    },
                },
            );
        }
        let roll = self.rng.below(100);
        let locks: Vec<(LockId, CLock)> = self.clients[n][c]
            .locks
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let granted: Vec<(LockId, CLock)> = locks
            .iter()
            .filter(|(_, l)| l.granted.is_some() && l.pending.is_none())
            .cloned()
            .collect();
        let pending: Vec<LockId> = locks
            .iter()
            .filter(|(_, l)| l.pending.is_some())
            .map(|(k, _)| *k)
            .collect();
        let modes = Mode::ALL;
        match roll {
            0..=29 => {
                if locks.len() >= 3 {
                    return Ok(());
                }
                let d = self.rng.below(self.cfg.domains as u64) as usize;
                let r = self.rng.below(self.cfg.resources as u64) as usize;
                if self.cfg.churn && !self.clients[n][c].joined.contains(&d) {
                    self.clients[n][c].joined.insert(d);
                    return self.request(
                        n,
                        c,
                        Asked::Join { d },
                        Request::Join {
                            domain: dname(d),
                            pin: false,
                        },
                    );
                }
                let mode = self.weighted_mode();
                let noqueue = self.rng.chance(250);
                let timeout_ms = self.rng.chance(100).then(|| 1 + self.rng.below(200));
                self.request(
                    n,
                    c,
                    Asked::Lock { d, r, mode },
                    Request::Lock(LockRequest {
                        domain: dname(d),
                        resource: rname(r),
                        mode,
                        flags: LockFlags {
                            noqueue,
                            persistent: false,
                            bast_on_busy: false,
                        },
                        timeout_ms,
                    }),
                )
            }
            30..=51 => {
                let Some(&(lock, _)) = granted.first().or(locks.first()) else {
                    return Ok(());
                };
                let lock = if self.rng.chance(500) && !locks.is_empty() {
                    self.rng
                        .pick(&locks.iter().map(|l| l.0).collect::<Vec<_>>())
                } else {
                    lock
                };
                self.request(n, c, Asked::Unlock { lock }, Request::Unlock { lock })
            }
            52..=64 => {
                if granted.is_empty() {
                    return Ok(());
                }
                let (lock, _) = granted[self.rng.below(granted.len() as u64) as usize].clone();
                let mode = self.rng.pick(&modes);
                let noqueue = self.rng.chance(250);
                let timeout_ms = self.rng.chance(150).then(|| 1 + self.rng.below(200));
                self.request(
                    n,
                    c,
                    Asked::Convert { lock, mode },
                    Request::Convert {
                        lock,
                        mode,
                        noqueue,
                        bast_on_busy: false,
                        timeout_ms,
                    },
                )
            }
            65..=72 => {
                let readable: Vec<LockId> = granted
                    .iter()
                    .filter(|(_, l)| l.granted.is_some_and(|g| g.can_read_lvb()))
                    .map(|(k, _)| *k)
                    .collect();
                if readable.is_empty() {
                    return Ok(());
                }
                let lock = self.rng.pick(&readable);
                self.request(n, c, Asked::LvbGet { lock }, Request::LvbGet { lock })
            }
            73..=79 => {
                let writable: Vec<LockId> = granted
                    .iter()
                    .filter(|(_, l)| l.granted.is_some_and(|g| g.can_write_lvb()))
                    .map(|(k, _)| *k)
                    .collect();
                if writable.is_empty() {
                    return Ok(());
                }
                let lock = self.rng.pick(&writable);
                let mut value = [0u8; LVB_LEN];
                value[..8].copy_from_slice(&self.next_value.to_le_bytes());
                value[8..16].copy_from_slice(&self.seed.to_le_bytes());
                self.next_value += 1;
                self.request(
                    n,
                    c,
                    Asked::LvbSet { lock, value },
                    Request::LvbSet { lock, value },
                )
            }
            80..=83 => {
                if pending.is_empty() {
                    return Ok(());
                }
                let lock = self.rng.pick(&pending);
                self.request(n, c, Asked::Cancel, Request::Cancel { lock })
            }
            84..=90 => {
                // Stop using a domain (a node leaves it when nothing uses it).
                let joined: Vec<usize> = self.clients[n][c].joined.iter().copied().collect();
                if joined.is_empty() || !self.cfg.churn {
                    return Ok(());
                }
                let d = self.rng.pick(&joined);
                if locks.iter().any(|(_, l)| l.d == d) {
                    return Ok(());
                }
                let waiting_join = self.clients[n][c]
                    .asked
                    .values()
                    .any(|(a, _)| matches!(a, Asked::Join { d: x } if *x == d));
                if waiting_join {
                    return Ok(());
                }
                self.request(
                    n,
                    c,
                    Asked::Leave { d, force: false },
                    Request::Leave {
                        domain: dname(d),
                        force: false,
                    },
                )
            }
            91..=92 => {
                if !self.rng.chance(300) {
                    return Ok(());
                }
                let d = self.rng.below(self.cfg.domains as u64) as usize;
                let exists = self.dlms[n].domains().iter().any(|i| i.name == dname(d));
                if !exists {
                    return Ok(());
                }
                let busy = self.clients[n].iter().any(|cl| {
                    cl.asked.values().any(|(a, _)| {
                        matches!(a, Asked::Join { d: x } | Asked::Leave { d: x, .. } if *x == d)
                    })
                });
                if busy {
                    return Ok(());
                }
                self.request(
                    n,
                    c,
                    Asked::Leave { d, force: true },
                    Request::Leave {
                        domain: dname(d),
                        force: true,
                    },
                )
            }
            93..=94 => {
                // The client process exits: its locks go.
                if !self.rng.chance(300) {
                    return Ok(());
                }
                if !self.clients[n][c].asked.is_empty() {
                    return Ok(());
                }
                self.log(format!("n{} c{} disconnects", n + 1, id.0));
                let cl = &mut self.clients[n][c];
                cl.connected = false;
                cl.locks.clear();
                cl.joined.clear();
                self.input(n, Input::Disconnected { client: id })
            }
            _ => Ok(()),
        }
    }

    fn weighted_mode(&mut self) -> Mode {
        match self.rng.below(10) {
            0..=3 => Mode::EX,
            4..=5 => Mode::PR,
            6 => Mode::PW,
            7 => Mode::CR,
            8 => Mode::CW,
            _ => Mode::NL,
        }
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

    /// At rest, what each master records of the nodes' node locks is what
    /// the nodes hold: in particular no lock of a dead node is left.
    fn check_records(&self) -> Result<(), SimFailure> {
        type Key = (usize, Vec<u8>, Vec<u8>);
        let mut held: BTreeMap<Key, HeldAsked> = BTreeMap::new();
        for (n, dlm) in self.dlms.iter().enumerate() {
            dlm.for_each_node_lock(|d, r, m, p| {
                held.insert((n, d.to_vec(), r.to_vec()), (m, p));
            });
        }
        let mut recorded: BTreeMap<Key, HeldAsked> = BTreeMap::new();
        for dlm in &self.dlms {
            for r in dlm.resources(None) {
                for h in &r.nodes {
                    if h.granted.is_some() || h.requested.is_some() {
                        recorded.insert(
                            (h.node.0 as usize - 1, r.domain.clone(), r.name.clone()),
                            (h.granted, h.requested),
                        );
                    }
                }
            }
        }
        if held != recorded {
            let keys: BTreeSet<&Key> = held.keys().chain(recorded.keys()).collect();
            let mut s =
                String::from("at rest, masters' records differ from the nodes' node locks:");
            for k in keys {
                let (a, b) = (held.get(k), recorded.get(k));
                if a != b {
                    let _ = write!(
                        s,
                        "\n  node {} {}/{}: holds {a:?}, master records {b:?}",
                        k.0 + 1,
                        String::from_utf8_lossy(&k.1),
                        String::from_utf8_lossy(&k.2)
                    );
                }
            }
            return Err(self.fail(s));
        }
        Ok(())
    }

    fn stuck(&self) -> String {
        let mut s = String::from("requests never answered after the network healed:");
        for (n, cs) in self.clients.iter().enumerate() {
            for c in cs {
                for (tag, (a, step)) in &c.asked {
                    let _ = write!(
                        s,
                        "\n  node {} client {} tag {tag} (step {step}): {a:?}",
                        n + 1,
                        c.id.0
                    );
                }
                for (id, l) in &c.locks {
                    let _ = write!(s, "\n  node {} client {} lock {id}: {l:?}", n + 1, c.id.0);
                }
            }
        }
        for (n, dlm) in self.dlms.iter().enumerate() {
            for r in dlm.resources(None) {
                let _ = write!(
                    s,
                    "\n  node {} sees {}/{}: master {} node lock {:?} nodes {:?} granted {} conv {} wait {}",
                    n + 1,
                    String::from_utf8_lossy(&r.domain),
                    String::from_utf8_lossy(&r.name),
                    r.master.0,
                    r.node_lock,
                    r.nodes
                        .iter()
                        .map(|h| (h.node.0, h.granted, h.requested))
                        .collect::<Vec<_>>(),
                    r.granted.len(),
                    r.converting.len(),
                    r.waiting.len()
                );
                let m = dlm.master_debug(&r.domain, &r.name);
                if !m.is_empty() {
                    let _ = write!(
                        s,
                        "\n    master record: {}",
                        m.replace("value: [", "value: [..")
                    );
                }
            }
            for d in 0..self.cfg.domains {
                let _ = write!(
                    s,
                    "\n  node {} d{d}: {}",
                    n + 1,
                    dlm.membership_debug(&dname(d))
                );
            }
        }
        s
    }
}

/// Runs one seed with the suite's configuration.
pub fn run_seed(seed: u64, steps: usize) -> Result<Outcome, SimFailure> {
    Sim::new(seed, Config::for_seed(seed, steps)).run()
}
