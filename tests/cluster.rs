//! Three real lockd processes on 127.0.0.1, .2 and .3 as one cluster:
//! contention across nodes, FIFO order across nodes, value blocks, node-level
//! caching and its give-back on a bast, lockd refusing a node that is not
//! configured, `scripts/dev-cluster.sh`, and recovery after kill -9 of a
//! node's lockd (shared heartbeat file, short dead time).
//!
//! Each test writes its own cluster.conf with our `o2cb` in a temporary
//! directory and picks a port from the test process's pid (the harness in
//! `tests/common/cluster.rs`). Every bound is
//! generous (a shared 2-CPU machine is slow to wake); a dlmctl that hangs is
//! killed and fails the test instead of hanging it. lockd and background
//! dlmctl processes are killed by pid (or process group) when the test ends,
//! whether it passed or not, and a failing test prints the end of every
//! node's log. The tests run one at a time.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Heartbeat, Spec, pick_port};
use common::{bin, code_of, json, run_bounded, wait_for};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use o2tools::dlm::master_of;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bound for anything that waits on the cluster (start, settle, a bast and
/// its answer).
const WAIT_S: u64 = 60;
/// Bound for one dlmctl run: past it the run is killed and the test fails.
const CMD_S: u64 = 90;
const CLUSTER: &str = "testc";

/// The settings of most tests: a long dead time and idle timeout (no test
/// using them kills a node, and a busy machine must not make a live one look
/// dead).
const SETTINGS: &str = "[heartbeat]\ninterval_ms = 1000\ndead_threshold = 30\n\
     [network]\nidle_timeout_ms = 30000\nkeepalive_delay_ms = 1000\n\
     reconnect_delay_ms = 200\n";

/// `n` nodes on 127.0.0.1..n, configured (cluster.conf written with our
/// o2cb, a heartbeat region when global, [`SETTINGS`]), not started.
fn configure(n: u8, hb: Heartbeat) -> Cluster {
    Spec::new(CLUSTER, n, hb)
        .settings(SETTINGS)
        .bounds(WAIT_S, CMD_S)
        .configure()
}

/// Configures and starts `n` nodes, and waits until every node answers
/// and sees every other one connected (and live, with a region).
fn start(n: u8, hb: Heartbeat) -> Cluster {
    configure(n, hb).launch()
}

/// (a) An EX lock held on node 1 makes a trylock on node 2 (and node 3)
/// busy, naming node 1 and the holder's pid; once it is released, node 2
/// gets the lock at once, trylock included.
#[test]
fn contention_across_nodes_names_the_holder_and_ends_with_the_release() {
    let _s = serial();
    let c = start(3, Heartbeat::Global);
    let holder = c.spawn(0, &["lock", "--ex", "d", "r", "--", "sleep", "600"]);
    wait_for("node 1 holds d/r", WAIT_S, || {
        c.local(0, "d", "r", "granted")
            .iter()
            .any(|l| l["pid"] == holder.pid)
    });
    for i in [1, 2] {
        let (code, _, err) = c.run(i, &["lock", "-n", "d", "r", "--", "true"]);
        assert_eq!(code, 75, "trylock on node {}: {err}", i + 1);
        assert!(
            err.contains(&format!(
                "dlmctl: busy: d/r held EX by node 1 pid {}",
                holder.pid
            )),
            "node {}: {err}",
            i + 1
        );
    }
    // A bounded wait is busy too, and a shared lock conflicts as well.
    let (code, _, err) = c.run(1, &["lock", "-w", "0.5", "d", "r", "--", "true"]);
    assert_eq!(code, 75, "{err}");
    let (code, _, err) = c.run(2, &["lock", "-n", "--pr", "d", "r", "--", "true"]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("by node 1"), "{err}");

    // Killing the holder's process group releases the lock.
    drop(holder);
    wait_for("node 1 releases d/r", WAIT_S, || {
        c.local(0, "d", "r", "granted").is_empty()
    });
    // Node 1 still caches its node lock; a trylock elsewhere makes it give
    // the lock back rather than fail.
    let (code, out, err) = c.run(
        1,
        &[
            "lock",
            "-n",
            "--ex",
            "d",
            "r",
            "--",
            "sh",
            "-c",
            "echo $DLM_MODE",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "EX\n"), "{err}");
    let (code, _, err) = c.run(2, &["lock", "-w", "30", "--ex", "d", "r", "--", "true"]);
    assert_eq!(code, 0, "{err}");
}

/// (b) Waiters from nodes 2, 3, 1, 2, 3 and 1, queued in that order behind
/// a holder on node 1, get the lock in that order: a node that has the lock
/// does not serve its later local waiters before earlier waiters elsewhere.
#[test]
fn waiters_on_different_nodes_are_granted_in_fifo_order() {
    let _s = serial();
    let c = start(3, Heartbeat::Global);
    c.join_all("q");
    let id = c.ok(0, &["lock", "--ex", "q", "fifo"]);
    assert!(id.trim().parse::<u64>().is_ok(), "{id}");
    let file = c.path.join("order");
    let f = file.to_str().unwrap();
    let master = c.master_index(0, "q", "fifo");
    let mut waiters = Vec::new();
    for (n, i) in [1usize, 2, 0, 1, 2, 0].into_iter().enumerate() {
        let script = format!("echo node{} >> {f}", i + 1);
        waiters.push(c.spawn(i, &["lock", "--ex", "q", "fifo", "--", "sh", "-c", &script]));
        let pid = waiters.last().unwrap().pid;
        // Queued on its own node...
        wait_for(&format!("node {} queues its waiter", i + 1), WAIT_S, || {
            let mut q = c.local(i, "q", "fifo", "waiting");
            q.extend(c.local(i, "q", "fifo", "converting"));
            q.iter().any(|l| l["pid"] == pid)
        });
        // ...and, in the first round, from another node than the holder's,
        // on the master (later ones wait behind their node's first).
        if n < 3 && i != 0 {
            wait_for(
                &format!("the master (node {}) queues node {}", master + 1, i + 1),
                WAIT_S,
                || {
                    c.node_lock_at_master("q", "fifo", c.nodes[i].number)
                        .is_some_and(|x| x["requested"] == "EX")
                },
            );
        }
    }
    assert!(!file.exists(), "nobody ran while node 1 held the lock");
    c.ok(0, &["unlock", "q", "fifo"]);
    for w in &mut waiters {
        assert_eq!(w.wait(WAIT_S).0, 0, "{}", w.what);
    }
    let order = std::fs::read_to_string(&file).unwrap();
    assert_eq!(order, "node2\nnode3\nnode1\nnode2\nnode3\nnode1\n");
}

/// (c) A value block written on node 1 is read on nodes 2 and 3; one
/// written on node 3 is read on node 1 (local heartbeat mode: no region).
#[test]
fn value_block_written_on_one_node_is_read_on_the_others() {
    let _s = serial();
    let c = start(3, Heartbeat::Local);
    assert_eq!(c.status(0)["mode"], "cluster");
    c.ok(0, &["lvb", "set", "v", "r", "written-on-node1"]);
    for i in [1, 2] {
        assert_eq!(c.ok(i, &["lvb", "get", "v", "r"]), "written-on-node1\n");
    }
    c.ok(2, &["lvb", "set", "v", "r", "then-node3"]);
    assert_eq!(c.ok(0, &["lvb", "get", "v", "r"]), "then-node3\n");
    let v = json(&c.ok(1, &["lvb", "get", "--json", "v", "r"]));
    assert_eq!(v["text"], "then-node3");
    assert_eq!(v["valid"], true);
    // Under a lock held on node 2, lvb get reads through that lock.
    let (code, out, err) = run_bounded(
        c.dlmctl(1)
            .args(["lock", "--pr", "v", "r", "--"])
            .arg(bin("dlmctl"))
            .args(["lvb", "get", "v", "r"]),
        CMD_S,
    );
    assert_eq!((code, out.as_str()), (0, "then-node3\n"), "{err}");
}

/// (d) A second lock on node 1 of a resource mastered elsewhere is granted
/// from node 1's cached node lock: no request goes to the master.
#[test]
fn a_cached_node_lock_grants_again_without_a_message() {
    let _s = serial();
    let c = start(3, Heartbeat::Global);
    c.join_all("cache");
    let res = c.resource_mastered("cached-", |m| m != 1);
    let r = res.as_str();
    let remote0 = c.counter(0, "remote_requests");
    c.ok(0, &["lock", "--ex", "cache", r, "--", "true"]);
    let master = c.master_index(0, "cache", r);
    assert_ne!(
        master, 0,
        "{r} should be mastered by another node than node 1"
    );
    assert_eq!(
        c.nodes[master].number,
        master_of(r.as_bytes(), &c.members()).unwrap().0,
        "the master is the rendezvous hash over the domain's members"
    );
    let remote1 = c.counter(0, "remote_requests");
    let local1 = c.counter(0, "local_grants");
    assert!(remote1 > remote0, "the first lock asked the master");
    // Released locally, still held by the node.
    assert_eq!(c.node_lock(0, "cache", r)["granted"], "EX");
    assert!(
        c.node_lock_at_master("cache", r, 1)
            .is_some_and(|x| x["granted"] == "EX"),
        "the master sees node 1's node lock at EX"
    );

    c.ok(0, &["lock", "--ex", "cache", r, "--", "true"]);
    assert_eq!(
        c.counter(0, "remote_requests"),
        remote1,
        "the second lock sent nothing to the master"
    );
    let local2 = c.counter(0, "local_grants");
    assert!(local2 > local1, "local_grants {local1} -> {local2}");
    // A compatible lower mode is covered by the cached EX as well.
    c.ok(0, &["lock", "--pr", "cache", r, "--", "true"]);
    assert_eq!(c.counter(0, "remote_requests"), remote1);
    assert!(c.counter(0, "local_grants") > local2);
}

/// (e) Node 1's cached node lock is given back when node 2 asks: node 2
/// gets EX (the master, node 3, sent node 1 a bast), and then node 1 gets
/// it back the same way. Node 2 lists nodes 1 and 3 as connected.
#[test]
fn a_bast_makes_a_node_give_back_its_cached_lock() {
    let _s = serial();
    let c = start(3, Heartbeat::Global);
    c.join_all("bast");
    let res = c.resource_mastered("basted-", |m| m == 3);
    let r = res.as_str();
    c.ok(0, &["lock", "--ex", "bast", r, "--", "true"]);
    assert_eq!(c.master_index(0, "bast", r), 2);
    assert_eq!(
        c.node_lock(0, "bast", r)["granted"],
        "EX",
        "cached on node 1"
    );

    let (code, out, err) = c.run(
        1,
        &[
            "lock",
            "-w",
            "30",
            "--ex",
            "bast",
            r,
            "--",
            "sh",
            "-c",
            "echo $DLM_MODE",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "EX\n"), "{err}");
    let n1 = c.node_lock(0, "bast", r);
    assert!(
        n1.is_null() || n1["granted"].is_null() || n1["granted"] == "NL",
        "node 1 gave its EX back: {n1}"
    );
    assert!(
        c.node_lock_at_master("bast", r, 2)
            .is_some_and(|x| x["granted"] == "EX"),
        "the master lists node 2 at EX"
    );
    // And back to node 1.
    let (code, _, err) = c.run(0, &["lock", "-w", "30", "--ex", "bast", r, "--", "true"]);
    assert_eq!(code, 0, "{err}");

    let st = c.status(1);
    assert_eq!(st["mode"], "cluster");
    assert_eq!(st["cluster"], CLUSTER);
    let nodes = st["nodes"].as_array().expect("nodes in status --json");
    let by = |n: u64| {
        nodes
            .iter()
            .find(|x| x["number"] == n)
            .unwrap_or_else(|| panic!("node {n} missing: {st}"))
    };
    assert_eq!(by(2)["local"], true);
    assert_eq!(by(2)["name"], "node2");
    for n in [1, 3] {
        let x = by(n);
        assert_eq!(x["local"], false, "{x}");
        assert_eq!(x["connected"], true, "{x}");
        assert_eq!(x["heartbeat"], true, "{x}");
        assert_eq!(x["name"], format!("node{n}"));
        assert_eq!(x["address"], format!("127.0.0.{n}:{}", c.port));
    }
}

/// The busy line names a process that holds the lock now: after a lock was
/// granted from node 1's cached node lock, not the process that first took
/// the node lock (it has exited; the probed node names a current holder).
#[test]
fn busy_names_a_current_holder_after_a_cached_grant() {
    let _s = serial();
    let c = start(3, Heartbeat::Global);
    c.join_all("p");
    c.ok(0, &["lock", "--ex", "p", "r", "--", "true"]);
    let holder = c.spawn(0, &["lock", "--ex", "p", "r", "--", "sleep", "600"]);
    wait_for("node 1 holds p/r", WAIT_S, || {
        c.local(0, "p", "r", "granted")
            .iter()
            .any(|l| l["pid"] == holder.pid)
    });
    let (code, _, err) = c.run(1, &["lock", "-n", "p", "r", "--", "true"]);
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains(&format!("by node 1 pid {}", holder.pid)),
        "the holder is pid {}: {err}",
        holder.pid
    );
}

/// (f) lockd will not run a node that cluster.conf does not list, and says
/// which nodes it does list.
#[test]
fn lockd_refuses_a_node_not_in_cluster_conf() {
    let c = configure(3, Heartbeat::Local);
    let sock = c.path.join("stranger.sock");
    let (code, out, err) = run_bounded(
        Command::new(bin("lockd"))
            .arg("--socket")
            .arg(&sock)
            .arg("--settings")
            .arg(&c.settings)
            .arg("--config")
            .arg(&c.conf)
            .args(["--node", "stranger"])
            .env_remove("LOCKD_SETTINGS"),
        CMD_S,
    );
    assert_ne!(code, 0, "lockd ran an unknown node; stdout: {out}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stranger"), "{err}");
    assert!(err.contains("node1, node2, node3"), "{err}");
    assert!(!sock.exists(), "no socket for a node that cannot run");
    // An unknown cluster is named with the configured ones.
    let (code, _, err) = run_bounded(
        Command::new(bin("lockd"))
            .arg("--socket")
            .arg(&sock)
            .arg("--config")
            .arg(&c.conf)
            .args(["--cluster", "other", "--node", "node1"])
            .env_remove("LOCKD_SETTINGS"),
        CMD_S,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("other") && err.contains(CLUSTER), "{err}");
}

// ---- scripts/dev-cluster.sh ---------------------------------------------------

fn dev_cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-cluster.sh")
}

/// The script and the lockds it started; everything is killed when
/// dropped, whatever happened.
struct DevCluster {
    child: Child,
    pids: Vec<i32>,
    out: PathBuf,
    err: PathBuf,
}

impl DevCluster {
    fn start(n: u8, dir: Option<&Path>, tmp: &Path, port: u16) -> DevCluster {
        let out = tmp.join("dev-cluster.out");
        let err = tmp.join("dev-cluster.err");
        let mut cmd = Command::new("bash");
        cmd.arg(dev_cluster_script()).arg(n.to_string());
        if let Some(d) = dir {
            cmd.arg(d);
        }
        let child = cmd
            .env("O2TOOLS_BIN", bin("lockd").parent().unwrap())
            .env("DEV_CLUSTER_PORT", port.to_string())
            .env("TMPDIR", tmp)
            .env_remove("LOCKD_SOCKET")
            .env_remove("LOCKD_SETTINGS")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        DevCluster {
            child,
            pids: Vec::new(),
            out,
            err,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the `nodeK: LOCKD_SOCKET=PATH ... # lockd pid N` lines;
    /// returns (socket, pid) per node.
    fn wait_ready(&mut self, n: u8) -> Vec<(PathBuf, i32)> {
        let deadline = Instant::now() + Duration::from_secs(WAIT_S);
        loop {
            let text = self.output();
            let nodes: Vec<(PathBuf, i32)> = (1..=n)
                .filter_map(|k| {
                    let line = text
                        .lines()
                        .find(|l| l.starts_with(&format!("node{k}: LOCKD_SOCKET=")))?;
                    let sock = line
                        .split_once("LOCKD_SOCKET=")?
                        .1
                        .split_whitespace()
                        .next()?;
                    let pid = line
                        .split_once("lockd pid ")?
                        .1
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()?;
                    Some((PathBuf::from(sock), pid))
                })
                .collect();
            if nodes.len() == n as usize {
                self.pids = nodes.iter().map(|x| x.1).collect();
                return nodes;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "dev-cluster.sh exited ({st}) before it was ready:\n{text}\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dev-cluster.sh not ready within {WAIT_S} s:\n{text}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `sig` to the script alone and waits for it to exit.
    fn stop(&mut self, sig: Signal) -> i32 {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
        let deadline = Instant::now() + Duration::from_secs(WAIT_S);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return code_of(st);
            }
            assert!(
                Instant::now() < deadline,
                "dev-cluster.sh did not stop on {sig:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        for &p in &self.pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
}

fn dlmctl_at(sock: &Path) -> Command {
    let mut c = Command::new(bin("dlmctl"));
    c.env("LOCKD_SOCKET", sock)
        .env("LOCKD_NO_AUTOSTART", "1")
        .env("O2CB_CONFIG_FILE", "/nonexistent/cluster.conf")
        .env_remove("DLM_DOMAIN")
        .env_remove("DLM_RESOURCE")
        .env_remove("DLM_LOCK_ID");
    c
}

/// (g) `scripts/dev-cluster.sh 3` runs three nodes that share locks and
/// value blocks; SIGTERM stops every lockd it started and removes the
/// directory it made.
#[test]
fn dev_cluster_script_runs_a_cluster_and_sigterm_stops_it() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut dc = DevCluster::start(3, None, tmp.path(), pick_port(3));
    let nodes = dc.wait_ready(3);
    let dir = nodes[0].0.parent().unwrap().to_owned();
    assert!(
        dir.starts_with(tmp.path()),
        "the script's directory {} is made under TMPDIR",
        dir.display()
    );
    assert!(dir.join("cluster.conf").is_file());
    // Each printed socket is a lockd of the cluster whose pid was printed.
    for (k, (sock, pid)) in nodes.iter().enumerate() {
        let (code, out, err) = run_bounded(dlmctl_at(sock).args(["status", "--json"]), CMD_S);
        assert_eq!(code, 0, "{err}");
        let st = json(&out);
        assert_eq!(st["pid"], *pid);
        assert_eq!(st["mode"], "cluster");
        assert_eq!(st["node"], k + 1);
    }
    let (code, _, err) = run_bounded(
        dlmctl_at(&nodes[0].0).args(["lvb", "set", "dev", "r", "set-on-node1"]),
        CMD_S,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_bounded(
        dlmctl_at(&nodes[1].0)
            .args(["lock", "--ex", "dev", "r", "--"])
            .arg(bin("dlmctl"))
            .args(["lvb", "get", "dev", "r"]),
        CMD_S,
    );
    assert_eq!((code, out.as_str()), (0, "set-on-node1\n"), "{err}");

    let code = dc.stop(Signal::SIGTERM);
    assert_eq!(code, 0, "{}", dc.stderr());
    wait_for("every lockd of the script is gone", WAIT_S, || {
        nodes.iter().all(|(_, pid)| gone(*pid))
    });
    assert!(!dir.exists(), "the directory it made is removed");
}

/// (g) With a directory given, SIGINT (Ctrl-C) stops the cluster too, and
/// the directory, its cluster.conf and the logs stay.
#[test]
fn dev_cluster_script_keeps_a_given_directory_and_stops_on_sigint() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let given = tmp.path().join("mycluster");
    let mut dc = DevCluster::start(2, Some(&given), tmp.path(), pick_port(2));
    let nodes = dc.wait_ready(2);
    assert_eq!(nodes[0].0, given.join("node1.sock"));
    // Written by o2cb: global heartbeat on the region file in the directory.
    let conf = std::fs::read_to_string(given.join("cluster.conf")).unwrap();
    assert!(conf.contains("\theartbeat_mode = global\n"), "{conf}");
    assert!(
        conf.contains(&format!(
            "\tregion = {}\n",
            given.join("heartbeat.img").display()
        )),
        "{conf}"
    );
    assert!(conf.contains("\tip_address = 127.0.0.2\n"), "{conf}");
    let (code, _, err) = run_bounded(
        dlmctl_at(&nodes[1].0).args(["lock", "--ex", "dev", "r", "--", "true"]),
        CMD_S,
    );
    assert_eq!(code, 0, "{err}");
    let code = dc.stop(Signal::SIGINT);
    assert_eq!(code, 0, "{}", dc.stderr());
    wait_for("every lockd of the script is gone", WAIT_S, || {
        nodes.iter().all(|(_, pid)| gone(*pid))
    });
    assert!(given.join("cluster.conf").is_file());
    assert!(given.join("node1.log").is_file());
    assert!(
        !given.join("node1.sock").exists(),
        "lockd removed its socket"
    );
}

/// The script refuses a node count out of range, with exit status 2.
#[test]
fn dev_cluster_script_refuses_a_bad_node_count() {
    for bad in ["0", "17", "x", "-1", "999999999999999999999"] {
        let (code, out, err) = run_bounded(
            Command::new("bash")
                .arg(dev_cluster_script())
                .arg(bad)
                .env("O2TOOLS_BIN", bin("lockd").parent().unwrap()),
            CMD_S,
        );
        assert_eq!(code, 2, "{bad}: {out}{err}");
        assert!(err.contains("usage:"), "{bad}: {err}");
        assert!(err.contains(bad), "{bad}: {err}");
    }
    let (code, _, err) = run_bounded(Command::new("bash").arg(dev_cluster_script()), CMD_S);
    assert_eq!(code, 2, "{err}");
}

/// kill -9 of the lockd holding EX (and having written the value block) lets
/// a waiter on another node in within the dead time plus two intervals plus
/// 3 s; the value block is then reported invalid on every survivor; the
/// killed node restarts with a new incarnation, rejoins, and locks again,
/// and a new write makes the value valid everywhere.
#[test]
fn killing_the_holders_lockd_lets_a_waiter_in_and_invalidates_the_value() {
    let _s = serial();
    let c = configure(3, Heartbeat::Global);
    // Dead time 3 x 1000 ms.
    std::fs::write(
        &c.settings,
        "[heartbeat]\ninterval_ms = 1000\ndead_threshold = 3\n\
         [network]\nidle_timeout_ms = 30000\nkeepalive_delay_ms = 1000\n\
         reconnect_delay_ms = 200\n",
    )
    .unwrap();
    let mut c = c.launch();
    c.join_all("rec");
    // Mastered by a survivor or by node 1 itself: both must recover.
    for (k, resource) in [
        c.resource_mastered("s", |m| m == 2),
        c.resource_mastered("m", |m| m == 1),
    ]
    .into_iter()
    .enumerate()
    {
        let r = resource.as_str();
        let victim = 0;
        if k == 1 {
            // The first round killed node 1: it is back and a member again.
            c.restart(victim);
            wait_for("node 1 sees the others again", WAIT_S, || {
                c.status(victim)["nodes"].as_array().is_some_and(|ns| {
                    ns.iter().all(|x| {
                        x["local"] == true || (x["connected"] == true && x["heartbeat"] == true)
                    })
                })
            });
            c.ok(victim, &["join", "rec"]);
        }
        c.ok(victim, &["lock", "--ex", "rec", r]);
        c.ok(victim, &["lvb", "set", "rec", r, "before the crash"]);
        let waiter = c.spawn(1, &["lock", "--ex", "rec", r, "--", "true"]);
        wait_for("node 2's request waits", WAIT_S, || {
            !c.local(1, "rec", r, "waiting").is_empty()
        });
        let t0 = Instant::now();
        c.kill9(victim);
        let (code, _) = waiter.wait(CMD_S);
        let took = t0.elapsed();
        assert_eq!(code, 0, "the waiter on node 2 got the lock");
        // dead time + 2 intervals + 3 s
        let bound = Duration::from_millis(3 * 1000 + 2 * 1000 + 3000);
        assert!(
            took < bound,
            "{r}: node 2 waited {took:?} after the kill (bound {bound:?})"
        );
        for i in [1, 2] {
            let (code, out, err) = c.run(i, &["lvb", "get", "rec", r]);
            assert_eq!(
                code,
                3,
                "{r} on node {}: value reported invalid ({out}{err})",
                i + 1
            );
        }
        // A new write under EX makes it valid again, everywhere.
        let dlmctl = bin("dlmctl");
        let dlmctl = dlmctl.to_str().unwrap();
        c.ok(
            2,
            &[
                "lock", "--ex", "rec", r, "--", dlmctl, "lvb", "set", "rec", r, "after",
            ],
        );
        let (code, out, err) = c.run(1, &["lvb", "get", "rec", r]);
        assert_eq!((code, out.trim_end()), (0, "after"), "{err}");
    }
    // The last victim comes back too and takes part.
    c.restart(0);
    wait_for("node 1 rejoins and locks", WAIT_S, || {
        c.run(0, &["lock", "-n", "rec", "fresh", "--", "true"]).0 == 0
    });
    let st = c.status(1);
    assert_eq!(st["nodes"][0]["connected"], true, "{st}");
}

/// Another writer in a node's heartbeat slot makes that node fence itself:
/// the command run under its lock is stopped (dlmctl exits 4), a waiter on
/// the other node gets the lock only after that, and the fenced node serves
/// again, as a new incarnation, once the other writer is gone. A library
/// client that ignores the loss of its lock keeps the node fencing (status:
/// `fencing`, still a node of its cluster) until the grace ends, then the
/// fence goes on without it, and its connection stays usable.
#[test]
fn a_node_whose_heartbeat_slot_is_taken_fences_itself_and_comes_back() {
    let _s = serial();
    let c = configure(2, Heartbeat::Global);
    std::fs::write(
        &c.settings,
        "[heartbeat]\ninterval_ms = 1000\ndead_threshold = 3\n\
         [network]\nidle_timeout_ms = 30000\nkeepalive_delay_ms = 1000\n\
         reconnect_delay_ms = 200\nfence_grace_ms = 3000\n",
    )
    .unwrap();
    let c = c.launch();
    c.join_all("fence");
    let mut holder = c.spawn(1, &["lock", "--ex", "fence", "r", "--", "sleep", "600"]);
    wait_for("node 2 holds the lock", WAIT_S, || {
        !c.local(1, "fence", "r", "granted").is_empty()
    });
    let mut lib = o2tools::client::Client::connect(&c.nodes[1].socket).unwrap();
    let lib_lock = lib
        .lock(
            b"fence",
            b"lib",
            o2tools::dlm::Mode::EX,
            &o2tools::client::LockOptions::default(),
        )
        .unwrap();
    let mut waiter = c.spawn(0, &["lock", "--ex", "fence", "r", "--", "true"]);
    wait_for("node 1's request waits", WAIT_S, || {
        !c.local(0, "fence", "r", "waiting").is_empty()
    });
    // A foreign writer takes node 2's slot for a few intervals.
    let mut fencing = None;
    let image = c.path.join("heartbeat.img");
    let r = o2tools::heartbeat::region::locate(&image).unwrap();
    let mut io = o2tools::heartbeat::device::RegionIo::open(&image, &r, true).unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let block = o2tools::heartbeat::format::HbBlock {
            seq: 1000 + t.elapsed().as_millis() as u64,
            node: 7,
            generation: 0xdead_beef,
            dead_ms: 3000,
        };
        io.write_slot(2, &block).unwrap();
        if fencing.is_none() {
            let st = c.status(1);
            if st["quorum"] == "fencing" {
                fencing = Some(st);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(io);
    let st = fencing.expect("node 2 was seen fencing (waiting for its library client)");
    assert_eq!(st["mode"], "cluster", "{st}");
    assert_eq!(st["nodes"].as_array().map(Vec::len), Some(2), "{st}");
    // Both end; the waiter not before the holder's command was stopped.
    let (mut holder_end, mut waiter_end) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(CMD_S);
    while holder_end.is_none() || waiter_end.is_none() {
        assert!(Instant::now() < deadline, "holder or waiter still running");
        for (bg, end) in [
            (&mut holder, &mut holder_end),
            (&mut waiter, &mut waiter_end),
        ] {
            if end.is_none() {
                if let Some((code, at)) = bg.exited() {
                    *end = Some((at, code));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (held_until, code) = holder_end.unwrap();
    assert_eq!(code, 4, "node 2's lock was lost");
    let (granted_at, code) = waiter_end.unwrap();
    assert_eq!(code, 0, "node 1 got the lock");
    assert!(
        granted_at >= held_until,
        "node 1 got the lock before node 2's command was stopped"
    );
    let log = c.log(1);
    assert!(
        log.contains("fencing this node") && log.contains("heartbeat slot"),
        "node 2's log names the fence and why:\n{log}"
    );
    // The library client was told, and is still connected.
    let lost = loop {
        match lib.next_event(Some(Duration::from_secs(CMD_S))).unwrap() {
            Some(o2tools::dlm::Event::Lost { lock, reason }) if lock == lib_lock => break reason,
            Some(_) => {}
            None => panic!("the library client was not told its lock is lost"),
        }
    };
    assert_eq!(lost, o2tools::dlm::LostReason::Fenced);
    assert!(
        log.contains("still connected at the end of the fence grace"),
        "{log}"
    );
    lib.status()
        .expect("the library client's connection still works");
    // Node 2 comes back: quorate, and it locks again.
    wait_for("node 2 serves again", WAIT_S * 2, || {
        c.status(1)["quorum"] == "quorate"
            && c.run(1, &["lock", "-n", "fence", "again", "--", "true"]).0 == 0
    });
    assert_eq!(c.status(0)["quorum"], "quorate");
}

/// Without a disk heartbeat: a lockd that stops answering (SIGSTOP, as a
/// paused VM) is declared dead by the others once its lease runs out (the
/// idle timeout, twice, plus the fence margin), not before, and a waiter
/// gets its lock; resumed, the old incarnation is refused as declared dead,
/// fences itself for that reason (its persistent lock is gone), and comes
/// back as a new incarnation that locks again. Node 3 dials the others and
/// is refused in their answer to its hello.
#[test]
fn without_a_heartbeat_a_silent_node_is_declared_dead_after_its_lease_and_fences_on_return() {
    silent_node(2, 0);
}

/// As above for node 1, which the others dial: it learns it was declared
/// dead from the refusal they send after its welcome.
#[test]
fn a_silent_node_that_the_others_dial_learns_it_was_declared_dead() {
    silent_node(0, 1);
}

/// SIGSTOP of node `victim`'s lockd (0-based) while it holds a persistent
/// lock that node `waiter` waits for; see the tests above.
fn silent_node(victim: usize, waiter: usize) {
    let _s = serial();
    let c = configure(3, Heartbeat::Local);
    let (idle, keepalive, grace) = (2000u64, 500u64, 1000u64);
    std::fs::write(
        &c.settings,
        format!(
            "[network]\nidle_timeout_ms = {idle}\nkeepalive_delay_ms = {keepalive}\n\
             reconnect_delay_ms = 200\nfence_grace_ms = {grace}\n"
        ),
    )
    .unwrap();
    let c = c.launch();
    c.join_all("lease");
    let (vn, wn) = (victim + 1, waiter + 1);
    // A persistent lock of the victim, on a resource the waiter masters.
    let r = c.resource_mastered("p", |m| usize::from(m) == wn);
    c.ok(victim, &["lock", "--ex", "lease", &r]);
    let w = c.spawn(waiter, &["lock", "--ex", "lease", &r, "--", "true"]);
    wait_for(&format!("node {wn}'s request waits"), WAIT_S, || {
        !c.local(waiter, "lease", &r, "waiting").is_empty()
    });
    let pid = Pid::from_raw(c.pid(victim));
    kill(pid, Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let (code, _) = w.wait(CMD_S);
    let took = t0.elapsed();
    assert_eq!(code, 0, "node {wn} got the lock");
    // The connection drops after `idle` of silence, the lease runs out
    // `idle` + margin later; the last thing heard may be a keepalive ago.
    let margin = grace + keepalive + 2000;
    let least = Duration::from_millis(idle + idle + margin - keepalive);
    assert!(
        took >= least,
        "node {wn} got the lock {took:?} after node {vn} stopped, before its lease ran out ({least:?})"
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    wait_for(
        &format!("the survivors log that node {vn} was declared dead"),
        WAIT_S,
        || {
            survivors
                .iter()
                .all(|&i| c.log(i).contains("declared dead"))
        },
    );
    kill(pid, Signal::SIGCONT).unwrap();
    wait_for(&format!("node {vn} fences itself"), WAIT_S, || {
        c.log(victim).contains("fencing this node")
    });
    wait_for(
        &format!("node {vn} serves again as a new incarnation"),
        WAIT_S * 2,
        || {
            c.status(victim)["quorum"] == "quorate"
                && c.run(victim, &["lock", "-n", "lease", "back", "--", "true"])
                    .0
                    == 0
        },
    );
    // Its persistent lock went with the old incarnation.
    assert!(
        c.local(victim, "lease", &r, "granted").is_empty(),
        "node {vn} still lists its old lock"
    );
    // Refused within a reconnect delay of waking, long before its own
    // quorum check (an idle timeout) could fence it.
    let log = c.log(victim);
    assert!(
        log.contains("declared this node dead"),
        "node {vn} fenced because it was refused as declared dead:\n{log}"
    );
}
