//! The multi-node harness: several real lockd processes as one cluster, for
//! `tests/cluster.rs` (loopback), `tests/partition.rs` (each lockd in its
//! own network namespace) and `benches/recoverybench.rs`.
//!
//! A [`Spec`] says how many nodes, their addresses and port, the heartbeat
//! mode, the settings and the bounds; [`Spec::configure`] writes
//! cluster.conf with our `o2cb` (and, with a global heartbeat, a region file
//! formatted by `hb_ctl`) and the settings into a temporary directory, and
//! [`Cluster::launch`] starts every node and waits until each sees all the
//! others. Each lockd runs on its own socket in that directory and appends
//! to `nodeK.log` there; [`Spec::wrap`] puts a command in front of lockd
//! (`ip netns exec NS`, which must exec it: the child's pid is checked to be
//! lockd's). Every process is killed by pid (a background dlmctl with its
//! process group) when its guard is dropped, and when a test fails the end
//! of every node's log is printed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use o2tools::dlm::{NodeId, master_of};
use serde_json::Value;

use super::{bin, code_of, json, run_bounded, track, untrack, wait_for, write_cluster_conf};

/// How the nodes heartbeat.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Heartbeat {
    /// No disk heartbeat (`heartbeat_mode = local`, no region): leases.
    Local,
    /// One global region: a file formatted by `hb_ctl format`.
    Global,
}

/// A port for a cluster of this process: derived from the pid (below the
/// ephemeral range), a new one for every call, and free on 127.0.0.1 to
/// 127.0.0.`nodes` right now.
pub fn pick_port(nodes: u8) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 1000) as u16 * 20;
    for _ in 0..200 {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
        let free = (1..=nodes).all(|k| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, k), p)).is_ok()
        });
        if free {
            return p;
        }
    }
    panic!("no free port near {base}");
}

/// lockd's `RUST_LOG` unless [`Spec::log_filter`] says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "info,o2tools::dlm=debug,o2tools::daemon::mesh=debug";

/// What to build: see [`Spec::new`] for the defaults.
pub struct Spec {
    cluster: String,
    nodes: u8,
    hb: Heartbeat,
    addrs: Option<(Vec<String>, u16)>,
    settings: String,
    wait_s: u64,
    cmd_s: u64,
    lockd: PathBuf,
    log_filter: String,
    wrap: Option<Box<dyn Fn(usize) -> Vec<OsString>>>,
    log_lines: usize,
    dir_prefix: String,
    keep_on_failure: bool,
}

impl Spec {
    /// Cluster `cluster` of nodes `node1`..`nodeN` numbered from 1, on
    /// 127.0.0.1..N and one port from [`pick_port`]; lockd's default
    /// settings; 60 s to wait for the cluster, 90 s for one dlmctl; our
    /// lockd, unwrapped, logging at [`DEFAULT_LOG_FILTER`]; the last 80
    /// lines of each log on a failure.
    pub fn new(cluster: &str, nodes: u8, hb: Heartbeat) -> Spec {
        Spec {
            cluster: cluster.to_owned(),
            nodes,
            hb,
            addrs: None,
            settings: String::new(),
            wait_s: 60,
            cmd_s: 90,
            lockd: bin("lockd"),
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            wrap: None,
            log_lines: 80,
            dir_prefix: ".tmp".to_owned(),
            keep_on_failure: false,
        }
    }

    /// lockd.toml's text.
    pub fn settings(mut self, toml: impl Into<String>) -> Spec {
        self.settings = toml.into();
        self
    }

    /// One address per node, all on `port`.
    pub fn addrs(mut self, addrs: Vec<String>, port: u16) -> Spec {
        assert_eq!(addrs.len(), usize::from(self.nodes), "one address per node");
        self.addrs = Some((addrs, port));
        self
    }

    /// Bound for anything that waits on the cluster (start, settle, a join),
    /// and for one dlmctl run (past it the run is killed and the test fails).
    pub fn bounds(mut self, wait_s: u64, cmd_s: u64) -> Spec {
        self.wait_s = wait_s;
        self.cmd_s = cmd_s;
        self
    }

    /// Another lockd binary.
    pub fn lockd(mut self, path: PathBuf) -> Spec {
        self.lockd = path;
        self
    }

    /// lockd's `RUST_LOG` (a benchmark wants less than the tests' debug).
    pub fn log_filter(mut self, filter: &str) -> Spec {
        self.log_filter = filter.to_owned();
        self
    }

    /// Node `i`'s lockd is started as `f(i)` followed by lockd's command
    /// line; the program must exec lockd (checked).
    pub fn wrap(mut self, f: impl Fn(usize) -> Vec<OsString> + 'static) -> Spec {
        self.wrap = Some(Box::new(f));
        self
    }

    /// How many lines of each node's log a failure prints.
    pub fn log_lines(mut self, n: usize) -> Spec {
        self.log_lines = n;
        self
    }

    /// The temporary directory's name starts with `prefix`.
    pub fn dir_prefix(mut self, prefix: &str) -> Spec {
        self.dir_prefix = prefix.to_owned();
        self
    }

    /// Keep the directory (and say where) when a panic drops the cluster.
    pub fn keep_on_failure(mut self) -> Spec {
        self.keep_on_failure = true;
        self
    }

    /// Writes cluster.conf (with our o2cb), the heartbeat region when
    /// global, and the settings; starts nothing.
    pub fn configure(self) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&self.dir_prefix)
            .tempdir()
            .unwrap();
        let path = dir.path().to_owned();
        let (addrs, port) = self.addrs.unwrap_or_else(|| {
            let addrs = (1..=self.nodes).map(|k| format!("127.0.0.{k}")).collect();
            (addrs, pick_port(self.nodes))
        });
        let conf = write_cluster_conf(
            &path,
            &self.cluster,
            &addrs,
            port,
            self.hb == Heartbeat::Global,
        );
        let nodes = (1..=self.nodes)
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
        std::fs::write(&settings, &self.settings).unwrap();
        Cluster {
            dir: Some(dir),
            path,
            conf,
            settings,
            port,
            cluster: self.cluster,
            hb: self.hb,
            nodes,
            keep: false,
            wait_s: self.wait_s,
            cmd_s: self.cmd_s,
            lockd: self.lockd,
            log_filter: self.log_filter,
            wrap: self.wrap,
            log_lines: self.log_lines,
            keep_on_failure: self.keep_on_failure,
            bg: AtomicUsize::new(0),
        }
    }

    /// Configures and launches: every node answers and sees every other.
    pub fn start(self) -> Cluster {
        self.configure().launch()
    }
}

/// A process killed by pid and reaped when dropped (unless it was reaped
/// already); tracked for [`super::kill_tracked`] meanwhile.
pub struct Proc {
    child: Child,
    reaped: bool,
}

impl Proc {
    /// Starts `cmd` (a lockd of the cluster, or any helper process).
    pub fn spawn(cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        track(child.id() as i32, false);
        Proc {
            child,
            reaped: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its exit status, if it has exited (then it is reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped {
            return None;
        }
        let st = self.child.try_wait().unwrap();
        if st.is_some() {
            self.reaped = true;
            untrack(self.pid());
        }
        st
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
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
        if !self.reaped {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
            untrack(self.pid());
        }
    }
}

/// A background dlmctl (holding or waiting for a lock) in its own process
/// group, its stderr in a file. A thread waits for it and notes when it
/// exited; the group is killed when dropped.
pub struct Bg {
    pub pid: i32,
    pub what: String,
    err: PathBuf,
    exit: Arc<Mutex<Option<(i32, Instant)>>>,
    reaper: Option<JoinHandle<()>>,
}

impl Bg {
    /// Exit status and when it exited, if it has.
    pub fn exited(&self) -> Option<(i32, Instant)> {
        *self.exit.lock().unwrap()
    }

    /// Waits for it to exit; panics after `secs`.
    pub fn wait(&self, secs: u64) -> (i32, Instant) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.exited() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {secs} s; its stderr:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // The group outlives its leader while the command under the lock
        // runs: kill it whether dlmctl is still there or not.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if let Some(t) = self.reaper.take() {
            let _ = t.join();
        }
        untrack(self.pid);
    }
}

/// One configured node and, while it runs, its lockd.
pub struct Node {
    pub name: String,
    pub number: u8,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub lockd: Option<Proc>,
}

/// The nodes of one cluster; every lockd is killed by pid when dropped.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    /// The directory: cluster.conf, lockd.toml, heartbeat.img, sockets, logs.
    pub path: PathBuf,
    pub conf: PathBuf,
    /// lockd.toml: rewrite it before [`Cluster::launch`] to change settings.
    pub settings: PathBuf,
    pub port: u16,
    pub cluster: String,
    pub hb: Heartbeat,
    pub nodes: Vec<Node>,
    /// Keep the directory when dropped.
    pub keep: bool,
    pub wait_s: u64,
    pub cmd_s: u64,
    lockd: PathBuf,
    log_filter: String,
    wrap: Option<Box<dyn Fn(usize) -> Vec<OsString>>>,
    log_lines: usize,
    keep_on_failure: bool,
    bg: AtomicUsize,
}

impl Cluster {
    /// Starts every node's lockd, then waits until each answers and sees
    /// every other one connected (and live on the region, if any).
    pub fn launch(mut self) -> Cluster {
        for i in 0..self.nodes.len() {
            self.spawn_lockd(i, "first start");
        }
        for i in 0..self.nodes.len() {
            self.wait_answers(i);
        }
        self.wait_settled();
        self
    }

    /// Starts node `i`'s lockd (again: a new incarnation) and waits until
    /// it answers; `why` goes into its log.
    pub fn start_node(&mut self, i: usize, why: &str) {
        self.spawn_lockd(i, why);
        self.wait_answers(i);
    }

    /// Starts node `i`'s lockd again and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.start_node(i, "restart");
    }

    /// The command line in front of lockd for node `i`, if any.
    fn wrapper(&self, i: usize) -> Option<Vec<OsString>> {
        self.wrap.as_ref().map(|f| f(i))
    }

    /// Starts node `i`'s lockd, its output appended to its log after a
    /// line saying why. Wrapped, waits until the child is lockd itself.
    fn spawn_lockd(&mut self, i: usize, why: &str) {
        let n = &self.nodes[i];
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        writeln!(log, "==== lockd of {} started: {why}", n.name).unwrap();
        let wrapper = self.wrapper(i);
        let mut cmd = match &wrapper {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(&self.lockd);
                c
            }
            None => Command::new(&self.lockd),
        };
        cmd.arg("--socket")
            .arg(&n.socket)
            .arg("--settings")
            .arg(&self.settings)
            .arg("--config")
            .arg(&self.conf)
            .args(["--cluster", &self.cluster, "--node", &n.name])
            .env_remove("LOCKD_SETTINGS")
            .env_remove("LOCKD_SOCKET")
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let proc = Proc::spawn(&mut cmd);
        let pid = proc.pid();
        self.nodes[i].lockd = Some(proc);
        if wrapper.is_none() {
            return;
        }
        let want = std::fs::canonicalize(&self.lockd).unwrap();
        let want = want.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(self.wait_s);
        loop {
            if let Some(st) = self.nodes[i].lockd.as_mut().unwrap().try_wait() {
                panic!(
                    "{} … lockd for {} exited ({st}); log:\n{}",
                    self.place(i),
                    self.nodes[i].name,
                    self.log(i)
                );
            }
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            // " (deleted)": the binary was rebuilt since it started.
            if exe == want || exe == format!("{want} (deleted)") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} of `{}` is still {exe}, not {want}",
                self.place(i)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where node `i` runs, for messages: the wrapper or the port.
    fn place(&self, i: usize) -> String {
        match self.wrapper(i) {
            Some(w) => w
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            None => format!("port {}", self.port),
        }
    }

    /// kill -9 of node `i`'s lockd, reaped.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].lockd.take().expect("running").kill9();
    }

    /// Node `i`'s lockd is still the process started (it did not exit).
    pub fn running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .lockd
            .as_mut()
            .is_some_and(|p| p.try_wait().is_none())
    }

    /// The pid of node `i`'s lockd.
    pub fn pid(&self, i: usize) -> i32 {
        self.nodes[i].lockd.as_ref().expect("running").pid()
    }

    /// Waits until node `i`'s lockd answers `dlmctl status`; panics with
    /// its log if it exits or does not answer in time. Wrapped, the process
    /// answering must be the one started.
    pub fn wait_answers(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(self.wait_s);
        let wrapped = self.wrap.is_some();
        loop {
            if let Some(st) = self.nodes[i].lockd.as_mut().unwrap().try_wait() {
                panic!(
                    "lockd of {} exited ({st}); log:\n{}",
                    self.nodes[i].name,
                    self.log(i)
                );
            }
            let args: &[&str] = if wrapped {
                &["status", "--json"]
            } else {
                &["status"]
            };
            let (code, out, _) = self.run(i, args);
            if code == 0 {
                if wrapped {
                    assert_eq!(json(&out)["pid"], self.pid(i), "{}", self.nodes[i].name);
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lockd of {} does not answer; log:\n{}",
                self.nodes[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i` sees every node connected (and heartbeating, with a
    /// region) within `secs`.
    pub fn wait_sees_all(&self, i: usize, secs: u64) {
        let hb = self.hb;
        wait_for(
            &format!("{} sees every node connected", self.nodes[i].name),
            secs,
            || {
                let st = self.status(i);
                st["nodes"].as_array().is_some_and(|ns| {
                    ns.len() == self.nodes.len()
                        && ns.iter().all(|x| {
                            x["local"] == true
                                || (x["connected"] == true
                                    && (hb == Heartbeat::Local || x["heartbeat"] == true))
                        })
                })
            },
        );
    }

    /// Every node sees every other one ([`Cluster::wait_sees_all`]).
    pub fn wait_settled(&self) {
        for i in 0..self.nodes.len() {
            self.wait_sees_all(i, self.wait_s);
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = self.log(i);
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// dlmctl against node `i` (0-based): its socket, no autostart. It runs
    /// here (in the test's namespace): the socket is a path.
    pub fn dlmctl(&self, i: usize) -> Command {
        let mut c = Command::new(bin("dlmctl"));
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
    pub fn run(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        run_bounded(self.dlmctl(i).args(args), self.cmd_s)
    }

    /// Runs dlmctl on node `i` and requires exit status 0; its stdout.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let (code, out, err) = self.run(i, args);
        assert_eq!(code, 0, "dlmctl {args:?} on {}: {err}", self.nodes[i].name);
        out
    }

    /// Starts dlmctl on node `i` in the background (own process group).
    pub fn spawn(&self, i: usize, args: &[&str]) -> Bg {
        let k = self.bg.fetch_add(1, Ordering::Relaxed);
        let err = self.path.join(format!("bg{k}.err"));
        let mut c = self.dlmctl(i);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0);
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
        let pid = child.id() as i32;
        track(pid, true);
        let exit = Arc::new(Mutex::new(None));
        let e = exit.clone();
        let reaper = std::thread::spawn(move || {
            if let Ok(st) = child.wait() {
                *e.lock().unwrap() = Some((code_of(st), Instant::now()));
            }
        });
        Bg {
            pid,
            what: format!("dlmctl {args:?} on {}", self.nodes[i].name),
            err,
            exit,
            reaper: Some(reaper),
        }
    }

    pub fn status(&self, i: usize) -> Value {
        json(&self.ok(i, &["status", "--json"]))
    }

    /// A counter of node `i`'s `dlmctl status --json`.
    pub fn counter(&self, i: usize, key: &str) -> u64 {
        let st = self.status(i);
        st["counters"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no counters.{key} in dlmctl status --json: {st}"))
    }

    /// Node `i`'s entry for node number `n` in its status.
    pub fn node_seen(&self, i: usize, n: u8) -> Value {
        let st = self.status(i);
        st["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|x| x["number"] == n))
            .cloned()
            .unwrap_or_else(|| panic!("node {n} missing in node {}'s status: {st}", i + 1))
    }

    /// Node `i`'s view of `domain/resource` in `dlmctl locks --json`.
    pub fn resource(&self, i: usize, domain: &str, resource: &str) -> Option<Value> {
        let v = json(&self.ok(i, &["locks", "--json", domain]));
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["domain"] == domain && r["name"] == resource)
            .cloned()
    }

    /// The local locks of node `i` on the resource in one of its queues.
    pub fn local(&self, i: usize, domain: &str, resource: &str, queue: &str) -> Vec<Value> {
        self.resource(i, domain, resource)
            .and_then(|r| r[queue].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until `bg`'s lock on the resource is granted on node `i`.
    pub fn wait_granted(&self, i: usize, domain: &str, resource: &str, bg: &Bg) {
        wait_for(
            &format!("{} holds {resource}", bg.what),
            self.wait_s,
            || {
                self.local(i, domain, resource, "granted")
                    .iter()
                    .any(|l| l["pid"] == bg.pid)
            },
        );
    }

    /// Index of the node that masters the resource, as node `i` says.
    pub fn master_index(&self, i: usize, domain: &str, resource: &str) -> usize {
        let r = self
            .resource(i, domain, resource)
            .unwrap_or_else(|| panic!("{domain}/{resource} unknown on node {}", i + 1));
        let m = r["master"].as_u64().expect("a master") as u8;
        self.nodes
            .iter()
            .position(|n| n.number == m)
            .unwrap_or_else(|| panic!("master {m} is not a node"))
    }

    /// The master's entry for node `number`'s node lock, if it has one.
    pub fn node_lock_at_master(&self, domain: &str, resource: &str, number: u8) -> Option<Value> {
        // Ask a node that knows the resource (one without a lock on it may
        // have forgotten it).
        let m = (0..self.nodes.len())
            .find(|&i| self.resource(i, domain, resource).is_some())
            .map(|i| self.master_index(i, domain, resource))?;
        let r = self.resource(m, domain, resource)?;
        let nodes = r["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"nodes\" key in the master's dlmctl locks --json: {r}"));
        nodes.iter().find(|x| x["node"] == number).cloned()
    }

    /// Node `i`'s own node lock on the resource (`node_lock`; null: none,
    /// as when the node no longer lists the resource).
    pub fn node_lock(&self, i: usize, domain: &str, resource: &str) -> Value {
        let Some(r) = self.resource(i, domain, resource) else {
            return Value::Null;
        };
        assert!(
            r.get("node_lock").is_some(),
            "no \"node_lock\" key in dlmctl locks --json: {r}"
        );
        r["node_lock"].clone()
    }

    /// Every node joins the domain (so mastery is spread over all of them)
    /// and lists it.
    pub fn join_all(&self, domain: &str) {
        for i in 0..self.nodes.len() {
            self.ok(i, &["join", domain]);
        }
        for i in 0..self.nodes.len() {
            wait_for(
                &format!("node {} lists domain {domain}", i + 1),
                self.wait_s,
                || {
                    json(&self.ok(i, &["domains", "--json"]))["domains"]
                        .as_array()
                        .is_some_and(|ds| ds.iter().any(|d| d["name"] == domain))
                },
            );
        }
    }

    /// Node `i`'s members of the domain, asked with the library client
    /// (empty if it is not in it or does not answer).
    pub fn domain_members(&self, i: usize, domain: &str) -> Vec<NodeId> {
        let Ok(mut c) = o2tools::client::Client::connect(&self.nodes[i].socket) else {
            return Vec::new();
        };
        let _ = c.set_timeout(Some(Duration::from_secs(self.cmd_s)));
        c.domains()
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.name == domain.as_bytes())
            .map(|d| d.members)
            .unwrap_or_default()
    }

    /// Every configured node.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.nodes.iter().map(|n| NodeId(n.number)).collect()
    }

    /// A resource name (`prefix` + a number) whose master over all the
    /// nodes satisfies `want`.
    pub fn resource_mastered(&self, prefix: &str, want: impl Fn(u8) -> bool) -> String {
        let members = self.members();
        (0..1000)
            .map(|k| format!("{prefix}{k}"))
            .find(|name| want(master_of(name.as_bytes(), &members).unwrap().0))
            .expect("some name has such a master")
    }

    /// A resource name (`prefix` + a number) mastered by node number `m`.
    pub fn mastered_by(&self, prefix: &str, m: u8) -> String {
        self.resource_mastered(prefix, |x| x == m)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.lockd = None;
        }
        let failed = std::thread::panicking();
        if failed {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "---- end of {}'s log ({}) ----",
                    self.nodes[i].name,
                    self.place(i)
                );
                eprintln!("{}", self.log_tail(i, self.log_lines));
            }
        }
        if self.keep || (failed && self.keep_on_failure) {
            if let Some(d) = self.dir.take() {
                eprintln!("logs kept in {}", d.keep().display());
            }
        }
    }
}
