//! lockd recovery benchmark: how long after a node's lockd is killed
//! (SIGKILL) a lock request waiting behind that node's lock, on another node,
//! is granted, compared with the configured dead time.
//!
//! Run: `cargo bench --bench recoverybench` (20 runs, about 2 minutes; add
//! `-- --quick` for 3 runs, or `-- --runs N`; `-- --jitter`, see below;
//! `-- --keep` keeps the logs). `RECOVERYBENCH_LOCKD=PATH` measures another
//! lockd build with the same bench binary (A/B of a patch).
//!
//! Setup, with the harness of `tests/cluster.rs` (`tests/common/cluster.rs`):
//! a three-node cluster on 127.0.0.1, .2 and .3 (one port, derived from the
//! pid and checked free), written with our `o2cb`, global heartbeat on a
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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::cluster::{Cluster, Heartbeat, Spec};
use common::wait_for;
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

fn lockd_bin() -> PathBuf {
    std::env::var_os("RECOVERYBENCH_LOCKD")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::bin("lockd"))
}

/// Three lockd on loopback with a shared heartbeat file (the test harness's
/// cluster, `tests/common/cluster.rs`), configured, not started.
fn configure() -> Cluster {
    Spec::new(CLUSTER, NODES, Heartbeat::Global)
        .settings(format!(
            "[heartbeat]\ninterval_ms = {INTERVAL_MS}\ndead_threshold = {DEAD_THRESHOLD}\n\
             [network]\nidle_timeout_ms = 30000\nkeepalive_delay_ms = 1000\n\
             reconnect_delay_ms = 200\n"
        ))
        .bounds(WAIT_S, CMD_S)
        .lockd(lockd_bin())
        .log_lines(60)
        .dir_prefix("recoverybench.")
        .keep_on_failure()
        .configure()
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
            || c.domain_members(i, DOMAIN) == want,
        );
    }
    let r = name_mastered_by(k, master, &members);
    c.ok(VICTIM, &["lock", "--ex", DOMAIN, &r]);
    let waiter = c.spawn(WAITER, &["lock", "--ex", DOMAIN, &r, "--", "true"]);
    let mut lockd_master = None;
    wait_for("node 2's request waits", WAIT_S, || {
        let Some(res) = c.resource(WAITER, DOMAIN, &r) else {
            return false;
        };
        lockd_master = res["master"].as_u64();
        res["waiting"].as_array().is_some_and(|w| !w.is_empty())
    });
    if let Some((code, _)) = waiter.exited() {
        panic!("the waiter exited ({code}) before the kill");
    }

    // A random phase of the kill against the heartbeat ticks.
    random_sleep(&mut jitter);
    let wall0 = unix_now();
    let t0 = Instant::now();
    c.kill9(VICTIM);
    let deadline = t0 + Duration::from_secs(GRANT_S);
    let outcome = loop {
        if let Some((code, _)) = waiter.exited() {
            break Ok((t0.elapsed(), code));
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
                c.resource(WAITER, DOMAIN, &r).unwrap_or(Value::Null)
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
    c.start_node(VICTIM, &format!("restart after run {}", k + 1));
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
            common::kill_tracked();
        })
    });
    let started = Instant::now();

    let mut c = configure();
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
        c.start_node(i, "first start");
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
