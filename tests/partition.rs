//! Network partitions: three real lockd processes, each in its own network
//! namespace, joined by a bridge that lives in one more namespace. Cutting
//! node 3's port on the bridge splits the cluster into {1, 2} and {3}:
//! node 3 must fence itself (its `dlmctl lock -- cmd` clients see their
//! locks lost and exit 4, it refuses requests, "fencing this node" is in
//! its log), the majority must get node 3's locks only after that and keep
//! locking, and once the bridge port is back up node 3 comes back as a new
//! incarnation and locks again.
//!
//! Once with a shared disk heartbeat (`heartbeat_mode = global`, a region
//! file: o2quo's quorum, the majority recovers when node 3's heartbeat
//! stops) and once without (leases: the majority declares node 3 dead after
//! the idle timeout plus the fence margin, which the test checks it waited).
//!
//! Needs root and iproute2's `ip`; fails (never skips) without them. Every
//! namespace is named after the test process's pid and deleted when the
//! test ends, passed or not (the bridge and veth pairs live in them, none
//! in the root namespace); lockd runs under `ip netns exec`, which execs it,
//! so the child's pid is lockd's (checked) and it is killed by pid. Bounds
//! are generous (a shared 2-CPU machine is slow); the order of events and
//! the lower bound are not. The tests run one at a time.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Bg, Cluster, Heartbeat, Spec};
use common::{output, wait_for};
use nix::sys::signal::kill;
use nix::unistd::Pid;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bound for anything that waits on the cluster (start, settle).
const WAIT_S: u64 = 60;
/// Bound for one dlmctl run, and for a fence or a recovery to happen.
const CMD_S: u64 = 90;
const CLUSTER: &str = "ptest";
/// Every node has its own address (and namespace): one port for all.
const PORT: u16 = 7777;
const DOMAIN: &str = "dom";

// The settings every test uses (lockd.toml).
const INTERVAL_MS: u64 = 1000;
const DEAD_THRESHOLD: u64 = 3;
const IDLE_MS: u64 = 3000;
const KEEPALIVE_MS: u64 = 1000;
const RECONNECT_MS: u64 = 500;
const GRACE_MS: u64 = 3000;
/// `Settings::fence_margin_ms`: the fence grace plus the keepalive delay
/// plus two seconds.
const MARGIN_MS: u64 = GRACE_MS + KEEPALIVE_MS + 2000;

// ---- network namespaces ------------------------------------------------------

/// Runs `ip ARGS` and requires success.
fn ip(args: &[&str]) {
    let out = output(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names `ip netns list` shows.
fn netns_list() -> Vec<String> {
    let out = output(Command::new("ip").args(["netns", "list"]));
    assert!(
        out.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// These tests need root and `ip`: a clear failure otherwise.
fn require_root_and_ip() {
    common::require_root("network namespaces");
    common::require_program("ip", "iproute2");
}

/// Namespaces left by a test process that was killed before it could clean
/// up (`o2p<pid>-<n>…` with no such process any more): deleted.
fn delete_stale_namespaces() {
    for name in netns_list() {
        let Some(rest) = name.strip_prefix("o2p") else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('-') else {
            continue;
        };
        let ours = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && tail.starts_with(|c: char| c.is_ascii_digit())
            && (tail.ends_with('s') || tail.contains('n'));
        if ours && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = output(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// A switch namespace holding a bridge, and one namespace per node whose
/// `eth0` is a veth pair with its other end (`v<k>`) on the bridge. Every
/// namespace made is deleted when dropped (with the links in it).
struct Net {
    /// The switch's namespace: bridge `br0` and ports `v1`, `v2`, ...
    switch: String,
    /// One namespace per node.
    nodes: Vec<String>,
    /// Node k is 10.`subnet`.0.k/24.
    subnet: u8,
    /// The namespaces made so far.
    made: Vec<String>,
}

impl Net {
    fn new(n: u8) -> Net {
        require_root_and_ip();
        delete_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let prefix = format!("o2p{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut net = Net {
            switch: format!("{prefix}s"),
            nodes: (1..=n).map(|k| format!("{prefix}n{k}")).collect(),
            subnet: 200 + (pid % 50) as u8,
            made: Vec::new(),
        };
        for name in std::iter::once(&net.switch).chain(&net.nodes) {
            assert!(name.len() <= 15, "namespace name {name} too long");
        }
        let sw = net.switch.clone();
        net.add_ns(&sw);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for k in 1..=n {
            let ns = net.nodes[usize::from(k - 1)].clone();
            net.add_ns(&ns);
            let port = format!("v{k}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &net.cidr(k), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.made.push(name.to_owned());
    }

    fn addr(&self, k: u8) -> String {
        format!("10.{}.0.{k}", self.subnet)
    }

    fn cidr(&self, k: u8) -> String {
        format!("{}/24", self.addr(k))
    }

    /// Takes node `k`'s port on the bridge down: node `k` is cut off.
    fn cut(&self, k: u8) {
        ip(&["-n", &self.switch, "link", "set", &format!("v{k}"), "down"]);
    }

    /// Brings node `k`'s port on the bridge back up.
    fn heal(&self, k: u8) {
        ip(&["-n", &self.switch, "link", "set", &format!("v{k}"), "up"]);
    }

    /// Every namespace name this network uses.
    fn names(&self) -> Vec<String> {
        std::iter::once(&self.switch)
            .chain(&self.nodes)
            .cloned()
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", name]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "ip netns del {name}: {}",
                    String::from_utf8_lossy(&o.stderr).trim_end()
                ),
                Err(e) => eprintln!("ip netns del {name}: {e}"),
            }
        }
    }
}

// ---- the cluster ---------------------------------------------------------------

/// Three lockd processes, one per namespace of `net` (the harness's
/// [`Cluster`], each lockd under `ip netns exec`); dropped, the lockd
/// processes are killed first, then the namespaces are deleted.
struct Partitioned {
    cluster: Cluster,
    net: Net,
}

impl std::ops::Deref for Partitioned {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for Partitioned {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

/// Starts `n` nodes, node k in namespace k at 10.x.0.k, and waits until
/// every node answers and sees every other one.
fn start(n: u8, hb: Heartbeat) -> Partitioned {
    let net = Net::new(n);
    let addrs: Vec<String> = (1..=n).map(|k| net.addr(k)).collect();
    let namespaces = net.nodes.clone();
    let cluster = Spec::new(CLUSTER, n, hb)
        .addrs(addrs, PORT)
        .settings(format!(
            "[heartbeat]\ninterval_ms = {INTERVAL_MS}\ndead_threshold = {DEAD_THRESHOLD}\n\
             [network]\nidle_timeout_ms = {IDLE_MS}\nkeepalive_delay_ms = {KEEPALIVE_MS}\n\
             reconnect_delay_ms = {RECONNECT_MS}\nfence_grace_ms = {GRACE_MS}\n"
        ))
        .bounds(WAIT_S, CMD_S)
        .wrap(move |i| {
            ["ip", "netns", "exec", &namespaces[i]]
                .map(OsString::from)
                .to_vec()
        })
        .log_lines(120)
        .start();
    Partitioned { cluster, net }
}

/// The time of day, in seconds, of the first line of a lockd log that
/// contains `needle` (lines start with an RFC 3339 UTC timestamp).
fn log_time(log: &str, needle: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    let parse = || -> Option<f64> {
        let stamp = line.split_whitespace().next()?;
        let time = stamp.split_once('T')?.1.trim_end_matches('Z');
        let mut hms = time.split(':');
        let h: f64 = hms.next()?.parse().ok()?;
        let m: f64 = hms.next()?.parse().ok()?;
        let s: f64 = hms.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    };
    parse().unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The scenario both tests run; `hb` picks the quorum rule.
fn partition_and_heal(hb: Heartbeat) {
    let mut c = start(3, hb);
    let names = c.net.names();
    c.join_all(DOMAIN);
    for i in 0..3 {
        assert_eq!(c.status(i)["quorum"], "quorate", "node {}", i + 1);
    }
    let (n1, n2, n3) = (0, 1, 2);
    // Node 3 holds EX on two resources with a command running under each:
    // one it masters, one node 1 masters. Node 1 holds B (mastered by node
    // 3) and keeps it throughout.
    let a3 = c.mastered_by("a", 3);
    let a1 = c.mastered_by("a", 1);
    let b = c.mastered_by("b", 3);
    let keeper = c.spawn(n1, &["lock", "--ex", DOMAIN, &b, "--", "sleep", "600"]);
    c.wait_granted(n1, DOMAIN, &b, &keeper);
    // The command under a1 ignores SIGTERM: dlmctl must SIGKILL it (a
    // second before the fence grace ends), and node 3 must wait for it.
    let holders: Vec<(String, Bg)> = [
        (&a3, &["sleep", "600"][..]),
        (&a1, &["sh", "-c", "trap '' TERM; exec sleep 600"][..]),
    ]
    .into_iter()
    .map(|(r, cmd)| {
        let mut args = vec!["lock", "--ex", DOMAIN, r, "--"];
        args.extend_from_slice(cmd);
        let h = c.spawn(n3, &args);
        c.wait_granted(n3, DOMAIN, r, &h);
        (r.clone(), h)
    })
    .collect();
    // Node 2 waits for both.
    let waiters: Vec<(String, Bg)> = [&a3, &a1]
        .into_iter()
        .map(|r| {
            let w = c.spawn(n2, &["lock", "--ex", DOMAIN, r, "--", "true"]);
            wait_for(&format!("node 2's request for {r} waits"), WAIT_S, || {
                c.local(n2, DOMAIN, r, "waiting")
                    .iter()
                    .any(|l| l["pid"] == w.pid)
            });
            (r.clone(), w)
        })
        .collect();

    // ---- partition: {1, 2} | {3} ----
    let t0 = Instant::now();
    c.net.cut(3);
    eprintln!("[{hb:?}] node 3 cut off");

    // Nodes 1 and 2 lock what they master while node 3 is being cut off.
    for (i, m) in [(n1, 1), (n1, 2), (n2, 1), (n2, 2)] {
        let r = c.mastered_by(&format!("early{}-", i + 1), m);
        let t = Instant::now();
        c.ok(i, &["lock", "--ex", DOMAIN, &r, "--", "true"]);
        eprintln!(
            "[{hb:?}] node {} locked {r} (master {m}) during the partition in {}",
            i + 1,
            secs(t.elapsed())
        );
    }

    // Node 3 fences itself: each holder sees its lock lost (exit 4).
    let mut fenced_at = t0;
    for (r, h) in &holders {
        let (code, at) = h.wait(CMD_S);
        let err = h.stderr();
        assert_eq!(
            code, 4,
            "{}: lock on {r} lost, exit 4; stderr:\n{err}",
            h.what
        );
        assert!(
            err.contains("lost the lock") && err.contains("fenced itself"),
            "{}: {err}",
            h.what
        );
        fenced_at = fenced_at.max(at);
    }
    let to_fence = fenced_at - t0;
    let (_, quick) = holders[0].1.exited().unwrap();
    let (_, stubborn) = holders[1].1.exited().unwrap();
    let kill_floor = Duration::from_millis(GRACE_MS - 1000 - 500);
    assert!(
        stubborn >= quick + kill_floor,
        "the command ignoring SIGTERM got SIGKILL {} after the other holder exited (the \
         fence grace less one second is {} ms)",
        secs(stubborn.saturating_duration_since(quick)),
        GRACE_MS - 1000
    );
    let to_lost = quick - t0;
    eprintln!(
        "[{hb:?}] partition -> node 3 fences (the first holder exits 4): {}; -> the SIGKILLed \
         holder exits 4: {}",
        secs(to_lost),
        secs(to_fence)
    );

    // Node 2's waiters get the locks, each after node 3's holders exited.
    let mut granted_at = t0;
    for (r, w) in &waiters {
        let (code, at) = w.wait(CMD_S);
        assert_eq!(code, 0, "{}: granted; stderr:\n{}", w.what, w.stderr());
        assert!(
            at > fenced_at,
            "{r}: node 2 got the lock {} after the partition, before node 3's holders let go ({})",
            secs(at - t0),
            secs(to_fence)
        );
        granted_at = granted_at.max(at);
    }
    let to_grant = granted_at - t0;
    eprintln!(
        "[{hb:?}] partition -> node 2's waiters granted: {}",
        secs(to_grant)
    );
    if hb == Heartbeat::Local {
        // Without a disk heartbeat only time says node 3 is gone. The
        // majority's connection to node 3 drops after the idle timeout of
        // silence (node 3 was last heard at most a keepalive delay before
        // the cut), and node 3 is declared dead the idle timeout plus the
        // fence margin after that. 1.5 s of slack for timers and scheduling.
        let floor = Duration::from_millis((IDLE_MS - KEEPALIVE_MS) + IDLE_MS + MARGIN_MS - 1500);
        assert!(
            to_grant >= floor,
            "node 2 got node 3's locks {} after the partition: the majority must wait for the \
             connection to drop ({IDLE_MS} ms of silence, less a keepalive delay of \
             {KEEPALIVE_MS} ms) and then the idle timeout plus the fence margin ({} ms): at \
             least {} with the slack",
            secs(to_grant),
            IDLE_MS + MARGIN_MS,
            secs(floor)
        );
    }

    // Node 3 refuses requests while cut off, and says why.
    let st = c.status(n3);
    assert!(
        st["quorum"] == "fenced" || st["quorum"] == "fencing",
        "node 3 is fenced: {st}"
    );
    // Still a node of its cluster, whose nodes it lists.
    assert_eq!(st["mode"], "cluster", "{st}");
    assert_eq!(st["nodes"].as_array().map(Vec::len), Some(3), "{st}");
    let (code, out, err) = c.run(n3, &["lock", "-n", DOMAIN, "refused", "--", "true"]);
    assert_ne!(code, 0, "node 3 refuses while fenced: {out}");
    assert!(
        err.contains("lost quorum and fenced itself"),
        "node 3's refusal says why: {err}"
    );
    assert!(
        c.log(n3).contains("fencing this node"),
        "node 3's log says it fences itself"
    );
    wait_for("node 3's log says it is fenced", WAIT_S, || {
        c.log(n3).contains("fenced:")
    });
    // It stopped heartbeating only once the stubborn command was gone.
    let log3 = c.log(n3);
    // (Across midnight the time of day wraps.)
    let waited =
        (log_time(&log3, "fenced:") - log_time(&log3, "fencing this node")).rem_euclid(86_400.0);
    assert!(
        waited >= kill_floor.as_secs_f64(),
        "node 3 waited {waited:.3} s for its clients between \"fencing this node\" and \
         \"fenced:\"; one of them let go only when SIGKILLed ({} ms into the grace)",
        GRACE_MS - 1000
    );
    // The majority never fenced, and serves.
    for i in [n1, n2] {
        assert!(
            !c.log(i).contains("fencing this node"),
            "node {} fenced itself",
            i + 1
        );
        assert_eq!(c.status(i)["quorum"], "quorate", "node {}", i + 1);
    }
    let seen = c.node_seen(n2, 3);
    assert_eq!(seen["connected"], false, "node 2's view of node 3: {seen}");
    if hb == Heartbeat::Global {
        assert_eq!(
            seen["heartbeat"], false,
            "node 3 stopped heartbeating: {seen}"
        );
    }
    // Node 1 kept B (its command still runs), and the new master knows it.
    assert!(keeper.exited().is_none(), "node 1's command under {b} runs");
    assert!(
        c.local(n1, DOMAIN, &b, "granted")
            .iter()
            .any(|l| l["pid"] == keeper.pid),
        "node 1 still holds {b}"
    );
    let (code, _, err) = c.run(n2, &["lock", "-n", DOMAIN, &b, "--", "true"]);
    assert_eq!(code, 75, "{b} is still held by node 1: {err}");
    // The majority keeps locking: resources that node 3, 1 or 2 mastered,
    // on both nodes, and the ones node 3 had.
    for i in [n1, n2] {
        for m in 1..=3 {
            let r = c.mastered_by(&format!("after{}-", i + 1), m);
            c.ok(i, &["lock", "--ex", DOMAIN, &r, "--", "true"]);
            c.ok(i, &["lock", "--pr", DOMAIN, &r, "--", "true"]);
        }
        for r in [&a3, &a1] {
            c.ok(i, &["lock", "--ex", DOMAIN, r, "--", "true"]);
        }
    }

    // ---- heal ----
    let t1 = Instant::now();
    c.net.heal(3);
    eprintln!("[{hb:?}] node 3's link back up");
    wait_for("node 3 locks again after the heal", CMD_S, || {
        c.run(n3, &["lock", "-n", DOMAIN, "back", "--", "true"]).0 == 0
    });
    eprintln!(
        "[{hb:?}] heal -> node 3 locks again: {}",
        secs(t1.elapsed())
    );
    assert!(c.running(n3), "node 3's lockd is the same process");
    assert_eq!(c.status(n3)["quorum"], "quorate");
    let log3 = c.log(n3);
    assert!(
        log3.contains("new incarnation"),
        "node 3 reconnected as a new incarnation"
    );
    assert!(log3.contains("quorum reached again"), "node 3 is back");
    for i in [n1, n2] {
        c.wait_sees_all(i, WAIT_S);
        wait_for(
            &format!("node {} takes node 3 as a new incarnation", i + 1),
            WAIT_S,
            || c.log(i).contains("peer restarted (new incarnation)"),
        );
    }
    c.wait_sees_all(n3, WAIT_S);
    // Node 3 sees node 1's lock on B, and takes part in locking again.
    let (code, _, err) = c.run(n3, &["lock", "-n", DOMAIN, &b, "--", "true"]);
    assert_eq!(code, 75, "node 3 sees {b} held by node 1: {err}");
    for r in [&a3, &a1] {
        c.ok(n3, &["lock", "--ex", DOMAIN, r, "--", "true"]);
    }
    let r = c.mastered_by("healed-", 3);
    c.ok(n1, &["lock", "--ex", DOMAIN, &r, "--", "true"]);
    assert!(keeper.exited().is_none(), "node 1's command under {b} runs");
    for i in [n1, n2] {
        assert!(
            !c.log(i).contains("fencing this node"),
            "node {} fenced itself",
            i + 1
        );
    }
    eprintln!(
        "[{hb:?}] timings: partition -> node 3 fences {}, -> its last client is gone {} \
         (lockd waited {waited:.1} s), -> node 2's waiters granted {}",
        secs(to_lost),
        secs(to_fence),
        secs(to_grant)
    );

    // Everything goes: lockd processes, then the namespaces.
    let pids: Vec<i32> = (0..c.nodes.len()).map(|i| c.pid(i)).collect();
    drop(waiters);
    drop(holders);
    drop(keeper);
    drop(c);
    for p in pids {
        assert_eq!(
            kill(Pid::from_raw(p), None),
            Err(nix::errno::Errno::ESRCH),
            "lockd pid {p} is gone"
        );
    }
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// With a shared disk heartbeat: node 3, cut off from nodes 1 and 2, fences
/// itself (its holders exit 4, it refuses requests); node 2 gets node 3's
/// locks only after that, and nodes 1 and 2 keep locking; back on the
/// network, node 3 rejoins as a new incarnation and locks again.
#[test]
fn minority_fences_itself_while_the_majority_keeps_locking() {
    let _s = serial();
    partition_and_heal(Heartbeat::Global);
}

/// Without a disk heartbeat (leases): the same, and the majority declares
/// node 3 dead only after the idle timeout plus the fence margin.
#[test]
fn without_a_disk_heartbeat_the_majority_declares_the_cut_off_node_dead() {
    let _s = serial();
    partition_and_heal(Heartbeat::Local);
}
