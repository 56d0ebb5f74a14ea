//! lockd recovery benchmark: how long after a node's lockd is killed
//! (SIGKILL) a lock request waiting behind that node's lock, on another node,
//! is granted, compared with the configured dead time.
//!
//! Run: `cargo bench --bench recoverybench` (20 runs, about 2 minutes; add
//! `-- --quick` for 3 runs, or `-- --runs N`; `-- --jitter`, see below;
//! `-- --keep` keeps the logs). `RECOVERYBENCH_LOCKD=PATH` measures another
//! lockd build with the same bench binary (A/B of a patch).
//!
//! Setup, as in `tests/cluster.rs`: a three-node cluster on 127.0.0.1, .2
//! and .3 (one free port), written with our `o2cb`, global heartbeat on a
//! 1 MiB file formatted by `hb_ctl format --no-autostart`, and the settings
//! `[heartbeat] interval_ms = 1000, dead_threshold = 3` (dead time 3000 ms),
//! `[network] idle_timeout_ms = 30000, keepalive_delay_ms = 1000,
//! reconnect_delay_ms = 200`. Each lockd runs with its own socket in a
//! temporary directory and logs to `nodeN.log` there (never to this
//! program's output); every process is killed by pid at the end, on a panic
//! too.
//!
//! Each run, as the test `killing_the_holders_lockd_lets_a_waiter_in_and_
//! invalidates_the_value` does it:
//! 1. every node joins domain "rb" (`dlmctl join rb`), and each lists all
//!    three nodes as its members;
//! 2. node 1 takes a persistent EX lock on a fresh resource (`dlmctl lock
//!    --ex rb NAME`); runs alternate between a resource mastered by node 1
//!    and one mastered by a survivor (node 2, then node 3), picked with
//!    [`o2tools::dlm::master_of`] over the three members and checked against
//!    node 2's `dlmctl locks --json`;
//! 3. node 2 runs `dlmctl lock --ex rb NAME -- true` in the background, and
//!    the bench waits until node 2 lists that request under "waiting";
//! 4. t0, SIGKILL of node 1's lockd; the recovery time is t0 to the exit of
//!    the waiting dlmctl with status 0 (polled every 2 ms; it includes
//!    running `true`, about a millisecond);
//! 5. node 1's lockd is started again (same socket, settings and conf) and
//!    the bench waits until node 2's `dlmctl status --json` shows node 1
//!    connected with a live heartbeat (and every node sees every other so).
//!
//! Phases. A survivor declares node 1 down when it has seen no new
//! heartbeat from it for the dead time, counted from the heartbeat tick (its
//! own) at which it last saw one, not from the kill: kill → "down" lies
//! anywhere between the dead time minus one interval and plus one interval,
//! by where the kill falls between node 1's heartbeat writes and where those
//! fall between the survivors' reads. The first survivor to declare it
//! ends the wait (the other then hears it from that one). Without
//! `--jitter`, each run starts as node 1's heartbeat comes back and node 1 is
//! restarted right after the previous grant, so runs settle into one or two
//! fixed phases (figures then repeat to the millisecond and say little
//! about the spread). `-- --jitter` waits a random 0 to 1 interval before
//! the kill and before the restart, to sample every phase.
//!
//! Printed: each run's recovery time, with, from the survivors' logs, when
//! node 2 and node 3 declared node 1 down and how long after the first of
//! them the grant came; then min / median / p90 / max (percentiles
//! interpolated between the sorted samples), each also as a ratio to the
//! dead time, and the bound the integration test allows (dead time + 2
//! intervals + 3 s = 8000 ms). A waiter that is not granted within 60 s, or
//! exits non-zero, is a failed run: its details and the end of every node's
//! log go to stderr, the temporary directory is kept, the remaining runs go
//! on and the bench exits 1.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{code_of, json, wait_for, write_cluster_conf};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use o2tools::client::Client;
use o2tools::dlm::{NodeId, master_of};
use serde_json::Value;

const CLUSTER: &str = "rbc";
const DOMAIN: &str = "rb";
const NODES: u8 = 3;
const INTERVAL_MS: u64 = 1000;
const DEAD_THRESHOLD: u64 = 3;
const DEAD_MS: u64 = INTERVAL_MS * DEAD_THRESHOLD;
/// The integration test's bound: dead time + 2 intervals + 3 s.
const BOUND_MS: u64 = DEAD_MS + 2 * INTERVAL_MS + 3000;
/// Bound for the cluster to settle (start, restart, join).
const WAIT_S: u64 = 60;
/// Bound for one dlmctl run.
const CMD_S: u64 = 30;
/// Bound for the waiter after the kill: past it the run failed.
const GRANT_S: u64 = 60;
/// The node killed each run (index 0: node 1) and the one that waits.
const VICTIM: usize = 0;
const WAITER: usize = 1;

// ---------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------

/// Every process this bench started and has not reaped, by pid (a process
/// group when true): killed by the panic hook, since the release profile
/// may abort on a panic without running the Drop guards.
static LIVE: Mutex<Vec<(i32, bool)>> = Mutex::new(Vec::new());

fn track(pid: i32, group: bool) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((pid, group));
}

fn untrack(pid: i32) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&(p, _)| p != pid);
}

fn kill_tracked() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for (pid, group) in live {
        let _ = if group {
            killpg(Pid::from_raw(pid), Signal::SIGKILL)
        } else {
            kill(Pid::from_raw(pid), Signal::SIGKILL)
        };
    }
}

/// A process, killed (with its process group when `group`) and reaped when
/// dropped, unless it was already reaped.
struct Proc {
    child: Child,
    group: bool,
    reaped: bool,
}

impl Proc {
    fn spawn(cmd: &mut Command, group: bool) -> Proc {
        if group {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        track(child.id() as i32, group);
        Proc {
            child,
            group,
            reaped: false,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let st = self.child.try_wait().unwrap();
        if st.is_some() {
            self.reaped = true;
            untrack(self.pid());
        }
        st
    }

    /// SIGKILL (of the process only) and reap.
    fn kill9(&mut self) {
        if !self.reaped {
            kill(Pid::from_raw(self.pid()), Signal::SIGKILL).unwrap();
            let _ = self.child.wait();
            self.reaped = true;
            untrack(self.pid());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = Pid::from_raw(self.pid());
        let _ = if self.group {
            killpg(pid, Signal::SIGKILL)
        } else {
            kill(pid, Signal::SIGKILL)
        };
        let _ = self.child.wait();
        untrack(self.pid());
    }
}

/// Runs `cmd` in its own process group with its output captured; kills the
/// group and panics if it does not finish within `secs`.
fn run_bounded(cmd: &mut Command, secs: u64) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = Proc::spawn(cmd, true);
    let mut so = p.child.stdout.take().unwrap();
    let mut se = p.child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = p.try_wait() {
            break st;
        }
        if Instant::now() > deadline {
            drop(p);
            let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
            panic!("{cmd:?} did not finish within {secs} s; stderr so far:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = String::from_utf8_lossy(&to.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    (code_of(status), out, err)
}

fn lockd_bin() -> PathBuf {
    std::env::var_os("RECOVERYBENCH_LOCKD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lockd")))
}

/// A port free on the addresses of all the nodes.
fn free_port() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        if (2..=NODES).all(|k| TcpListener::bind((Ipv4Addr::new(127, 0, 0, k), port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1 to 127.0.0.{NODES}");
}

// ---------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------

/// One configured node and, while it runs, its lockd.
struct Node {
    name: String,
    number: u8,
    socket: PathBuf,
    log: PathBuf,
    lockd: Option<Proc>,
}

/// Three lockd on loopback with a shared heartbeat file; every process is
/// killed by pid when dropped. The directory is kept when `keep` is set.
struct Cluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    conf: PathBuf,
    settings: PathBuf,
    port: u16,
    nodes: Vec<Node>,
    keep: bool,
}

impl Cluster {
    /// Writes cluster.conf (with our o2cb), the heartbeat file and the
    /// settings; starts nothing.
    fn configure() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("recoverybench.")
            .tempdir()
            .unwrap();
        let path = dir.path().to_owned();
        let port = free_port();
        let addrs: Vec<String> = (1..=NODES).map(|k| format!("127.0.0.{k}")).collect();
        let conf = write_cluster_conf(&path, CLUSTER, &addrs, port, true);
        let nodes = (1..=NODES)
            .map(|k| {
                let name = format!("node{k}");
                Node {
                    socket: path.join(format!("{name}.sock")),
                    log: path.join(format!("{name}.log")),
                    name,
                    number: k,
                    lockd: None,
                }
            })
            .collect();
        let settings = path.join("lockd.toml");
        std::fs::write(
            &settings,
            format!(
                "[heartbeat]\ninterval_ms = {INTERVAL_MS}\ndead_threshold = {DEAD_THRESHOLD}\n\
                 [network]\nidle_timeout_ms = 30000\nkeepalive_delay_ms = 1000\n\
                 reconnect_delay_ms = 200\n"
            ),
        )
        .unwrap();
        Cluster {
            dir: Some(dir),
            path,
            conf,
            settings,
            port,
            nodes,
            keep: false,
        }
    }

    /// Starts node `i`'s lockd (appending to its log, with a marker line).
    fn start_lockd(&mut self, i: usize, why: &str) {
        let n = &self.nodes[i];
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        writeln!(
            log,
            "==== recoverybench: lockd of {} started: {why}",
            n.name
        )
        .unwrap();
        let mut cmd = Command::new(lockd_bin());
        cmd.arg("--socket")
            .arg(&n.socket)
            .arg("--settings")
            .arg(&self.settings)
            .arg("--config")
            .arg(&self.conf)
            .args(["--cluster", CLUSTER, "--node", &n.name])
            .env_remove("LOCKD_SETTINGS")
            .env_remove("LOCKD_SOCKET")
            .env(
                "RUST_LOG",
                "info,o2tools::dlm=debug,o2tools::daemon::mesh=debug",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.nodes[i].lockd = Some(Proc::spawn(&mut cmd, false));
        self.wait_answers(i);
    }

    /// SIGKILL of node `i`'s lockd, reaped.
    fn kill9(&mut self, i: usize) {
        self.nodes[i].lockd.take().expect("running").kill9();
    }

    fn wait_answers(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(WAIT_S);
        loop {
            if let Some(st) = self.nodes[i].lockd.as_mut().unwrap().try_wait() {
                panic!(
                    "lockd of {} exited ({st}); log:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 80)
                );
            }
            if self.run(i, &["status"]).0 == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lockd of {} does not answer; log:\n{}",
                self.nodes[i].name,
                self.log_tail(i, 80)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node sees every other one connected with
    /// a live heartbeat.
    fn wait_settled(&self) {
        for i in 0..self.nodes.len() {
            wait_for(
                &format!("{} sees every node connected and live", self.nodes[i].name),
                WAIT_S,
                || {
                    self.status(i)["nodes"].as_array().is_some_and(|ns| {
                        ns.len() == self.nodes.len()
                            && ns.iter().all(|x| {
                                x["local"] == true
                                    || (x["connected"] == true && x["heartbeat"] == true)
                            })
                    })
                },
            );
        }
    }

    fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// dlmctl against node `i` (0-based): its socket, no autostart.
    fn dlmctl(&self, i: usize) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dlmctl"));
        c.env("LOCKD_SOCKET", &self.nodes[i].socket)
            .env("LOCKD_NO_AUTOSTART", "1")
            .env("O2CB_CONFIG_FILE", &self.conf)
            .env_remove("DLM_DOMAIN")
            .env_remove("DLM_RESOURCE")
            .env_remove("DLM_LOCK_ID")
            .env_remove("DLM_MODE");
        c
    }

    /// Runs dlmctl on node `i`; (status, stdout, stderr).
    fn run(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        run_bounded(self.dlmctl(i).args(args), CMD_S)
    }

    /// Runs dlmctl on node `i` and requires exit status 0; its stdout.
    fn ok(&self, i: usize, args: &[&str]) -> String {
        let (code, out, err) = self.run(i, args);
        assert_eq!(code, 0, "dlmctl {args:?} on {}: {err}", self.nodes[i].name);
        out
    }

    /// Starts dlmctl on node `i` in the background, in its own process
    /// group, with no output.
    fn spawn(&self, i: usize, args: &[&str]) -> Proc {
        let mut c = self.dlmctl(i);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc::spawn(&mut c, true)
    }

    fn status(&self, i: usize) -> Value {
        json(&self.ok(i, &["status", "--json"]))
    }

    /// Node `i`'s view of the resource in `dlmctl locks --json DOMAIN`.
    fn resource(&self, i: usize, resource: &str) -> Option<Value> {
        let v = json(&self.ok(i, &["locks", "--json", DOMAIN]));
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["domain"] == DOMAIN && r["name"] == resource)
            .cloned()
    }

    /// Node `i`'s members of the domain (empty if it is not in it).
    fn members_seen(&self, i: usize) -> Vec<NodeId> {
        let Ok(mut c) = Client::connect(&self.nodes[i].socket) else {
            return Vec::new();
        };
        let _ = c.set_timeout(Some(Duration::from_secs(CMD_S)));
        c.domains()
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.name == DOMAIN.as_bytes())
            .map(|d| d.members)
            .unwrap_or_default()
    }

    fn members(&self) -> BTreeSet<NodeId> {
        self.nodes.iter().map(|n| NodeId(n.number)).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.lockd = None;
        }
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "---- end of {}'s log (port {}) ----",
                    self.nodes[i].name, self.port
                );
                eprintln!("{}", self.log_tail(i, 60));
            }
            self.keep = true;
        }
        if self.keep {
            if let Some(d) = self.dir.take() {
                eprintln!("recoverybench: logs kept in {}", d.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------

/// A fresh resource name for run `k` whose master over `members` is `want`.
fn name_mastered_by(k: usize, want: u8, members: &BTreeSet<NodeId>) -> String {
    (0..100_000)
        .map(|j| format!("r{k}-{j}"))
        .find(|r| master_of(r.as_bytes(), members) == Some(NodeId(want)))
        .expect("some name has that master")
}

struct RunResult {
    master: u8,
    /// The master node 2 named for the resource while its request waited.
    lockd_master: Option<u64>,
    ms: Option<f64>,
    /// Milliseconds from the kill to "node 1 is down" in node 2's and node
    /// 3's logs, before node 1 came back (None: that node did not declare
    /// it down itself: the other survivor's notice came first).
    down: [Option<f64>; 2],
    /// Seconds from the restart of node 1's lockd to a settled cluster.
    back_s: f64,
}

/// One run: lock on node 1, waiter on node 2, kill node 1, time the grant,
/// bring node 1 back.
fn one_run(
    c: &mut Cluster,
    k: usize,
    runs: usize,
    master: u8,
    mut jitter: Option<&mut u64>,
) -> RunResult {
    let members = c.members();
    for i in 0..c.nodes.len() {
        c.ok(i, &["join", DOMAIN]);
    }
    let want: Vec<NodeId> = members.iter().copied().collect();
    for i in 0..c.nodes.len() {
        wait_for(
            &format!("{} lists all nodes in {DOMAIN}", c.nodes[i].name),
            WAIT_S,
            || c.members_seen(i) == want,
        );
    }
    let r = name_mastered_by(k, master, &members);
    c.ok(VICTIM, &["lock", "--ex", DOMAIN, &r]);
    let mut waiter = c.spawn(WAITER, &["lock", "--ex", DOMAIN, &r, "--", "true"]);
    let mut lockd_master = None;
    wait_for("node 2's request waits", WAIT_S, || {
        let Some(res) = c.resource(WAITER, &r) else {
            return false;
        };
        lockd_master = res["master"].as_u64();
        res["waiting"].as_array().is_some_and(|w| !w.is_empty())
    });
    if let Some(st) = waiter.try_wait() {
        panic!("the waiter exited ({st}) before the kill");
    }

    // A random phase of the kill against the heartbeat ticks.
    random_sleep(&mut jitter);
    let wall0 = unix_now();
    let t0 = Instant::now();
    c.kill9(VICTIM);
    let deadline = t0 + Duration::from_secs(GRANT_S);
    let outcome = loop {
        if let Some(st) = waiter.try_wait() {
            break Ok((t0.elapsed(), code_of(st)));
        }
        if Instant::now() > deadline {
            break Err(());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let ms = match outcome {
        Ok((took, 0)) => Some(took.as_secs_f64() * 1000.0),
        other => {
            let what = match other {
                Ok((took, code)) => format!("the waiter exited {code} after {took:.2?}"),
                Err(()) => format!("the waiter was not granted within {GRANT_S} s"),
            };
            eprintln!(
                "\nrecoverybench: run {}/{runs} FAILED on {DOMAIN}/{r} (master node {master}): {what}",
                k + 1
            );
            eprintln!(
                "node 2 locks: {}",
                c.resource(WAITER, &r).unwrap_or(Value::Null)
            );
            eprintln!("node 2 status: {}", c.status(WAITER));
            for i in 0..c.nodes.len() {
                eprintln!("---- end of {}'s log ----", c.nodes[i].name);
                eprintln!("{}", c.log_tail(i, 60));
            }
            c.keep = true;
            None
        }
    };
    drop(waiter);

    // And of node 1's next heartbeat writes against the survivors' reads.
    random_sleep(&mut jitter);
    let wall1 = unix_now();
    let t1 = Instant::now();
    c.start_lockd(VICTIM, &format!("restart after run {}", k + 1));
    wait_for("node 2 sees node 1 connected and live", WAIT_S, || {
        c.status(WAITER)["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|x| x["number"] == 1 && x["connected"] == true && x["heartbeat"] == true)
        })
    });
    c.wait_settled();
    let down = [1, 2].map(|i| down_after(&c.nodes[i].log, c.nodes[VICTIM].number, wall0, wall1));
    RunResult {
        master,
        lockd_master,
        ms,
        down,
        back_s: t1.elapsed().as_secs_f64(),
    }
}

/// Sleeps 0 to 1 heartbeat interval, at random, when jittering.
fn random_sleep(seed: &mut Option<&mut u64>) {
    if let Some(x) = seed {
        // xorshift64
        **x ^= **x << 13;
        **x ^= **x >> 7;
        **x ^= **x << 17;
        std::thread::sleep(Duration::from_micros(**x % (INTERVAL_MS * 1000)));
    }
}

/// When the first survivor declared node 1 down (ms after the kill).
fn first_down(r: &RunResult) -> Option<f64> {
    r.down.iter().flatten().copied().reduce(f64::min)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds since the epoch of a log line's leading UTC timestamp
/// (`2026-11-25T14:17:43.115904Z`, tracing's format).
fn log_time(line: &str) -> Option<f64> {
    let (date, time) = line
        .split_whitespace()
        .next()?
        .strip_suffix('Z')?
        .split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, mi): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

/// Milliseconds from `since` (seconds since the epoch) to the first "node
/// N is down" that the log records after it and before `until`.
fn down_after(log: &Path, node: u8, since: f64, until: f64) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let needle = format!("node {node} is down");
    text.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(log_time)
        .find(|&t| t >= since)
        .filter(|&t| t <= until)
        .map(|t| (t - since) * 1000.0)
}

/// The `p` quantile of sorted `v`, interpolated between neighbours.
fn quantile(v: &[f64], p: f64) -> f64 {
    let pos = (v.len() - 1) as f64 * p;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut seed = args
        .iter()
        .any(|a| a == "--jitter")
        .then(|| (unix_now().fract() * 1e9) as u64 ^ (u64::from(std::process::id()) << 32) | 1);
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .map(|i| {
            args.get(i + 1)
                .and_then(|n| n.parse().ok())
                .expect("--runs N")
        })
        .unwrap_or(if quick { 3 } else { 20 });
    std::panic::set_hook({
        let default = std::panic::take_hook();
        Box::new(move |info| {
            default(info);
            // With panic = abort the guards never run: kill what they own.
            // (When unwinding, the guards then reap these.)
            kill_tracked();
        })
    });
    let started = Instant::now();

    let mut c = Cluster::configure();
    c.keep = args.iter().any(|a| a == "--keep");
    println!(
        "recoverybench ({runs} runs{}): {NODES} lockd on 127.0.0.1..{NODES}:{}, global heartbeat on a file,",
        if quick { ", quick" } else { "" },
        c.port
    );
    println!(
        "interval {INTERVAL_MS} ms × dead_threshold {DEAD_THRESHOLD} = dead time {DEAD_MS} ms; \
         lockd {}",
        lockd_bin().display()
    );
    for i in 0..c.nodes.len() {
        c.start_lockd(i, "first start");
    }
    c.wait_settled();
    println!(
        "cluster settled in {:.1} s; logs in {} (removed at the end unless a run fails or --keep)",
        started.elapsed().as_secs_f64(),
        c.path.display()
    );
    println!(
        "each run: node 1 holds EX on a fresh resource, node 2 waits for EX; kill -9 of node 1's lockd → node 2 granted{}",
        if seed.is_some() {
            " (--jitter: random 0-1 interval delays before the kill and the restart)"
        } else {
            ""
        }
    );
    println!(
        "down@2, down@3: kill → \"node 1 is down\" in node 2's, node 3's log (-: not declared by that node);\n\
         after: grant − the first of them (ms)"
    );
    println!();
    println!(
        "{:>7}  {:<16} {:>11} {:>7} {:>7} {:>7} {:>6} {:>12}",
        "run", "master", "recovery ms", "÷ dead", "down@2", "down@3", "after", "node 1 back"
    );

    let mut results = Vec::new();
    for k in 0..runs {
        // Alternate: a survivor (node 2, then node 3), node 1, ...
        let master = if k % 2 == 1 {
            1
        } else if k % 4 == 0 {
            2
        } else {
            3
        };
        let res = one_run(&mut c, k, runs, master, seed.as_mut());
        let who = match res.lockd_master {
            Some(m) if m == u64::from(res.master) => format!("node {}", res.master),
            Some(m) => format!("node {} (lockd: {m})", res.master),
            None => format!("node {} (lockd: ?)", res.master),
        };
        let (ms, ratio) = match res.ms {
            Some(ms) => (format!("{ms:.0}"), format!("{:.2}", ms / DEAD_MS as f64)),
            None => ("FAILED".to_string(), "-".to_string()),
        };
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
        println!(
            "{:>7}  {:<16} {:>11} {:>7} {:>7} {:>7} {:>6} {:>10.1} s",
            format!("{}/{runs}", k + 1),
            who,
            ms,
            ratio,
            opt(res.down[0]),
            opt(res.down[1]),
            opt(res.ms.zip(first_down(&res)).map(|(a, b)| a - b)),
            res.back_s
        );
        results.push(res);
    }

    let mut v: Vec<f64> = results.iter().filter_map(|r| r.ms).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let failed = results.len() - v.len();
    println!();
    println!(
        "recovery time, kill -9 of the holder's lockd → waiter on node 2 granted ({} of {runs} runs granted):",
        v.len()
    );
    if !v.is_empty() {
        println!("{:<8} {:>9} {:>14}", "", "ms", "÷ dead time");
        for (what, x) in [
            ("min", v[0]),
            ("median", quantile(&v, 0.5)),
            ("p90", quantile(&v, 0.9)),
            ("max", v[v.len() - 1]),
        ] {
            println!("{what:<8} {x:>9.0} {:>14.2}", x / DEAD_MS as f64);
        }
        for (label, of_node1) in [("master node 1", true), ("master a survivor", false)] {
            let mut w: Vec<f64> = results
                .iter()
                .filter(|r| (r.master == 1) == of_node1)
                .filter_map(|r| r.ms)
                .collect();
            w.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut d: Vec<f64> = results
                .iter()
                .filter(|r| (r.master == 1) == of_node1)
                .filter_map(first_down)
                .collect();
            d.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut a: Vec<f64> = results
                .iter()
                .filter(|r| (r.master == 1) == of_node1)
                .filter_map(|r| Some(r.ms? - first_down(r)?))
                .collect();
            a.sort_by(|a, b| a.partial_cmp(b).unwrap());
            if !w.is_empty() {
                let m = quantile(&w, 0.5);
                print!(
                    "{label}: {} runs, median {m:.0} ms ({:.2} × dead time), range {:.0}–{:.0} ms",
                    w.len(),
                    m / DEAD_MS as f64,
                    w[0],
                    w[w.len() - 1]
                );
                if !d.is_empty() && !a.is_empty() {
                    print!(
                        "; median first \"down\" {:.0} ms, grant {:.0} ms after it",
                        quantile(&d, 0.5),
                        quantile(&a, 0.5)
                    );
                }
                println!();
            }
        }
    }
    let over = v.iter().filter(|&&x| x >= BOUND_MS as f64).count();
    println!(
        "dead time {DEAD_MS} ms; the integration test's bound (dead time + 2 intervals + 3 s) {BOUND_MS} ms \
         = {:.2} × dead time: {over} run(s) at or over it",
        BOUND_MS as f64 / DEAD_MS as f64
    );
    if failed > 0 {
        println!("{failed} run(s) FAILED (details on stderr)");
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(c);
    if failed > 0 {
        std::process::exit(1);
    }
}
