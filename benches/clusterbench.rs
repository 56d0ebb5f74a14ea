//! lockd cluster benchmark: two lockd nodes on loopback, every figure printed
//! next to baselines measured in the same run, interleaved in batches so
//! that all of them see the same machine conditions.
//!
//! Run: `cargo bench --bench clusterbench` (add `-- --quick` for a short run;
//! `-- --spin WHAT SECS` loops one figure, unpinned, for `perf`/`strace`,
//! with WHAT one of handoff, fresh, fresh-split, cached, single, relay,
//! relay1, relay-split, unix, tcp). `CLUSTERBENCH_LOCKD=PATH` measures
//! another lockd build with the same bench binary (A/B of a patch).
//!
//! Setup, with the multi-node harness of the tests
//! (`tests/common/cluster.rs`): a two-node cluster (`heartbeat_mode =
//! local`, so no disk heartbeat; `reconnect_delay_ms = 100`): node 1
//! listens on 127.0.0.1, node 2 on 127.0.0.2, same free port; each lockd
//! runs on its own socket in a temporary directory, logs (warnings only) to
//! `nodeN.log` there, and is killed by pid at the end, as are the
//! single-node lockd and the helper processes below. The harness returns
//! once each node sees the other connected. Both nodes join (and pin)
//! the domain before anything is timed. "A" is a client of node 1, "B" a
//! client of node 2. Masters are computed with [`o2tools::dlm::master_of`]
//! over the domain's members and checked once against lockd (`Client::locks`).
//!
//! Baselines (medians, same run):
//! - U: a raw 64-byte Unix-socket round trip to a single-threaded epoll echo
//!   process (the least a request to lockd can cost);
//! - T: a raw 64-byte TCP round trip, TCP_NODELAY, from 127.0.0.1 to an
//!   epoll echo process on 127.0.0.2 (one message to a peer and its answer);
//! - S: lock+unlock on a single-node lockd (no cluster);
//! - R: the exact message pattern of a remote lock+unlock with no lock
//!   manager behind it: a relay process answers the client's "lock" with
//!   "accepted" at once, forwards 64 bytes over TCP to the echo process and
//!   answers "granted" when they come back, then answers "unlock" at once.
//!   R1: the same with "accepted" held back and sent with "granted" (one
//!   client wake-up fewer). R / floor is what the protocol's shape costs;
//!   lockd / R is what lockd's own work costs.
//!
//! Figures (lock EX + unlock pairs):
//! - **cached relock**: on node 1, of a resource mastered by node 2, while
//!   node 1 already holds the node lock in EX. The node grants from its
//!   cached node lock and the unlock leaves the node lock in place, so no
//!   network message at all: checked with lockd's counters (node-level
//!   requests of both nodes must not move) and by node 2's lockd making no
//!   read or write meanwhile (`/proc/PID/io`). Compared with S; target ≈ 1.0.
//! - **remote master, fresh resource**: on node 1, of a resource never used
//!   before and mastered by node 2, a new one each time. The lock asks the
//!   master (one TCP round trip: request, grant); the unlock is a local
//!   round trip that keeps the node lock cached and sends nothing.
//!   Floor = 2 U + 1 T.
//! - **remote master, handoff**: A and B alternate on one resource mastered
//!   by node 2, so the node lock moves between the nodes every time. A's
//!   pair: node 1 asks the master, which takes back its own idle cached node
//!   lock locally and grants (one TCP round trip). B's pair, on the master
//!   while node 1 holds the mode: the master basts node 1, which gives the
//!   node lock back (one TCP round trip). Floor = 2 U + 1 T for both.
//!
//! Handoff A is the honest "lock+unlock with the master remote" in steady
//! state: nothing grows from one iteration to the next, and each lock really
//! crosses the network. A plain lock+unlock loop on node 1 would be served
//! from the node's cache after its first iteration and measure only the
//! cached relock; the fresh-resource figure is the first use of a name
//! (it also creates the resource on the master and leaves one cached node
//! lock behind per iteration).
//!
//! Target (the issue): remote-master lock+unlock ≤ 1.5 × floor. Each row
//! prints median, p99, the baseline from the same run's medians and the
//! ratio of medians; `net/pair` is node-level requests sent by either lockd
//! per pair (lockd's counters): 0 for the cached relock, 1 for the others.
//!
//! Placements (2+ CPUs): `node-per-cpu` (node 1's lockd and client, the
//! Unix echo, the relay and the single-node lockd on CPU 0; node 2's lockd
//! and client and the TCP echo on CPU 1: one CPU per "machine"), `one-cpu`
//! (everything on CPU 0) and `unpinned`. This VM wakes an idle vCPU slowly,
//! so placement matters.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{num_cpus, percentile, pin, samples};
use harness::cluster::{Cluster, Heartbeat, Proc, Spec, pick_port};
use harness::wait_for;
use o2tools::client::{Client, LockOptions};
use o2tools::dlm::{Mode, NodeId, master_of};

const CLUSTER: &str = "benchc";
const DOMAIN: &[u8] = b"bench";
const NODE_A: u8 = 1;
const NODE_B: u8 = 2;
const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn micros(t: Instant) -> f64 {
    t.elapsed().as_nanos() as f64 / 1000.0
}

// ---------------------------------------------------------------------
// Echo servers (this executable re-executed, so each is its own process,
// like lockd): `--echo-unix PATH` and `--echo-tcp IP:PORT`.
// ---------------------------------------------------------------------

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
}

/// A single-threaded epoll echo server; `accept` yields non-blocking streams.
fn echo_loop(listener: BorrowedFd<'_>, mut accept: impl FnMut() -> Option<Stream>) -> ! {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    ep.add(listener, EpollEvent::new(EpollFlags::EPOLLIN, 0))
        .unwrap();
    let mut conns: Vec<Option<Stream>> = vec![None];
    let mut evs = vec![EpollEvent::empty(); 64];
    let mut buf = [0u8; 65536];
    loop {
        let n = ep.wait(&mut evs, EpollTimeout::NONE).unwrap_or(0);
        for ev in &evs[..n] {
            let t = ev.data() as usize;
            if t == 0 {
                while let Some(s) = accept() {
                    ep.add(
                        s.fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, conns.len() as u64),
                    )
                    .unwrap();
                    conns.push(Some(s));
                }
                continue;
            }
            let Some(s) = conns[t].as_mut() else { continue };
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = ep.delete(s.fd());
                        conns[t] = None;
                        break;
                    }
                    Ok(k) => {
                        let mut off = 0;
                        while off < k {
                            match s.write(&buf[off..k]) {
                                Ok(w) => off += w,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(e) => panic!("echo write: {e}"),
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

fn echo_unix(path: &Path) -> ! {
    let l = UnixListener::bind(path).unwrap();
    l.set_nonblocking(true).unwrap();
    echo_loop(l.as_fd(), || {
        let (s, _) = l.accept().ok()?;
        s.set_nonblocking(true).unwrap();
        Some(Stream::Unix(s))
    })
}

fn echo_tcp(addr: &str) -> ! {
    let l = TcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    echo_loop(l.as_fd(), || {
        let (s, _) = l.accept().ok()?;
        s.set_nonblocking(true).unwrap();
        s.set_nodelay(true).unwrap();
        Some(Stream::Tcp(s))
    })
}

/// The message pattern of a remote-master lock+unlock with no lock manager
/// behind it: a Unix server that, for a 64-byte "lock" from its client,
/// sends 64 bytes to the TCP echo server and answers "accepted" at once
/// (`L`) and "granted" when the echo comes back, or both at once then
/// (`M`: what a reply deferred to the grant would cost); "unlock" (`U`) is
/// answered at once. Single-threaded epoll, like lockd.
fn relay(path: &Path, to: &str) -> ! {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use std::collections::VecDeque;
    let l = UnixListener::bind(path).unwrap();
    l.set_nonblocking(true).unwrap();
    let mut peer = TcpStream::connect(to).unwrap();
    peer.set_nodelay(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    ep.add(&l, EpollEvent::new(EpollFlags::EPOLLIN, 0)).unwrap();
    ep.add(&peer, EpollEvent::new(EpollFlags::EPOLLIN, 1))
        .unwrap();
    let mut conns: Vec<Option<UnixStream>> = vec![None, None];
    // Clients waiting for the peer, in order, and whether "accepted" was deferred.
    let mut waiting: VecDeque<(usize, bool)> = VecDeque::new();
    let mut evs = vec![EpollEvent::empty(); 64];
    let mut buf = [0u8; 4096];
    let mut pbuf: Vec<u8> = Vec::new();
    let msg = [9u8; 128];
    // Small writes to a Unix or loopback TCP socket with room do not block.
    fn put(s: &mut impl Write, b: &[u8]) {
        s.write_all(b).unwrap();
    }
    loop {
        let n = ep.wait(&mut evs, EpollTimeout::NONE).unwrap_or(0);
        for ev in &evs[..n] {
            match ev.data() as usize {
                0 => {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        ep.add(&s, EpollEvent::new(EpollFlags::EPOLLIN, conns.len() as u64))
                            .unwrap();
                        conns.push(Some(s));
                    }
                }
                1 => {
                    while let Ok(k) = peer.read(&mut buf) {
                        if k == 0 {
                            std::process::exit(0);
                        }
                        pbuf.extend_from_slice(&buf[..k]);
                        if k < buf.len() {
                            break;
                        }
                    }
                    while pbuf.len() >= 64 {
                        pbuf.drain(..64);
                        let (t, deferred) = waiting.pop_front().expect("a request");
                        if let Some(c) = conns[t].as_mut() {
                            put(c, &msg[..if deferred { 128 } else { 64 }]);
                        }
                    }
                }
                t => {
                    let Some(c) = conns[t].as_mut() else { continue };
                    let k = match c.read(&mut buf) {
                        Ok(0) => {
                            let _ = ep.delete(&*c);
                            conns[t] = None;
                            continue;
                        }
                        Ok(k) => k,
                        Err(_) => continue,
                    };
                    for m in buf[..k].chunks(64) {
                        match m[0] {
                            b'L' => {
                                put(&mut peer, &msg[..64]);
                                put(c, &msg[..64]);
                                waiting.push_back((t, false));
                            }
                            b'M' => {
                                put(&mut peer, &msg[..64]);
                                waiting.push_back((t, true));
                            }
                            _ => put(c, &msg[..64]),
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------

/// The two nodes, configured and started by the multi-node harness
/// (`tests/common/cluster.rs`): cluster.conf written with our `o2cb`, node 1
/// on 127.0.0.1 and node 2 on 127.0.0.2, one port free on both; returns
/// once each node sees the other connected.
fn start_cluster() -> Cluster {
    Spec::new(CLUSTER, 2, Heartbeat::Local)
        .addrs(vec![IP_A.to_string(), IP_B.to_string()], pick_port(2))
        // The shortest reconnect delay: the first join settles 1.1 s after start.
        .settings("[network]\nreconnect_delay_ms = 100\n")
        .lockd(lockd_bin())
        .log_filter("warn")
        .dir_prefix("clusterbench.")
        .start()
}

/// The lockd to measure: `$CLUSTERBENCH_LOCKD` (to compare a patched build
/// with the same bench binary), else the one cargo built with this bench.
fn lockd_bin() -> PathBuf {
    std::env::var_os("CLUSTERBENCH_LOCKD")
        .map(PathBuf::from)
        .unwrap_or_else(|| harness::bin("lockd"))
}

/// Waits (5 s at most) until `path` accepts a connection.
fn wait_listening(what: &str, path: &Path) {
    wait_for(what, 5, || UnixStream::connect(path).is_ok());
}

/// The single-node baseline: a lockd in no cluster, with empty settings
/// (not the machine's settings, nor its cluster.conf).
fn start_single(dir: &Path) -> (Proc, PathBuf) {
    let path = dir.join("single.sock");
    let settings = dir.join("single.toml");
    std::fs::write(&settings, "").unwrap();
    let log = std::fs::File::create(dir.join("single.log")).unwrap();
    let p = Proc::spawn(
        Command::new(lockd_bin())
            .arg("--socket")
            .arg(&path)
            .arg("--settings")
            .arg(&settings)
            .env("RUST_LOG", "warn")
            .env("O2CB_CONFIG_FILE", dir.join("no-cluster.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    wait_listening("the single-node lockd", &path);
    (p, path)
}

/// This executable again as one of its helper processes (`--echo-unix`,
/// `--echo-tcp`, `--relay`), killed by pid when dropped.
fn start_helper(args: &[&OsStr]) -> Proc {
    Proc::spawn(
        Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn start_echo_unix(dir: &Path) -> (Proc, PathBuf) {
    let path = dir.join("echo.sock");
    let p = start_helper(&["--echo-unix".as_ref(), path.as_ref()]);
    wait_listening("the Unix echo server", &path);
    (p, path)
}

fn start_echo_tcp(addr: SocketAddrV4) -> Proc {
    let p = start_helper(&["--echo-tcp".as_ref(), addr.to_string().as_ref()]);
    wait_for("the TCP echo server", 5, || {
        TcpStream::connect(addr).is_ok()
    });
    p
}

fn start_relay(dir: &Path, to: SocketAddrV4) -> (Proc, PathBuf) {
    let path = dir.join("relay.sock");
    let p = start_helper(&["--relay".as_ref(), path.as_ref(), to.to_string().as_ref()]);
    wait_for("the relay", 5, || path.exists());
    (p, path)
}

/// Read and write system calls of a process so far (None if unreadable).
fn syscalls(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let get = |k: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(get("syscr:")? + get("syscw:")?)
}

/// Node-level requests this lockd sent to a master on another node.
fn remote_requests(c: &mut Client) -> u64 {
    c.status().unwrap().stats.counters.remote_requests
}

// ---------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------

fn raw_unix(s: &mut UnixStream) {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    s.write_all(&msg).unwrap();
    s.read_exact(&mut back).unwrap();
}

fn raw_tcp(s: &mut TcpStream) {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    s.write_all(&msg).unwrap();
    s.read_exact(&mut back).unwrap();
}

/// The relay's lock+unlock: `deferred`, one answer to the lock, else two.
fn relay_pair(s: &mut UnixStream, deferred: bool) {
    let mut m = [0u8; 64];
    let mut back = [0u8; 128];
    m[0] = if deferred { b'M' } else { b'L' };
    s.write_all(&m).unwrap();
    if deferred {
        s.read_exact(&mut back).unwrap();
    } else {
        s.read_exact(&mut back[..64]).unwrap();
        s.read_exact(&mut back[..64]).unwrap();
    }
    m[0] = b'U';
    s.write_all(&m).unwrap();
    s.read_exact(&mut back[..64]).unwrap();
}

fn lock_pair(c: &mut Client, res: &[u8]) {
    let id = c
        .lock(DOMAIN, res, Mode::EX, &LockOptions::default())
        .unwrap();
    c.unlock(id).unwrap();
}

/// Names mastered by node B, with the prefix `p`.
fn names_on_b(p: &str, n: usize) -> Vec<Vec<u8>> {
    let members = [NodeId(NODE_A), NodeId(NODE_B)].into_iter().collect();
    (0u64..)
        .map(|i| format!("{p}-{i:08}").into_bytes())
        .filter(|r| master_of(r, &members) == Some(NodeId(NODE_B)))
        .take(n)
        .collect()
}

struct Row {
    name: &'static str,
    v: Vec<f64>,
    /// Node-level requests (both nodes) during the timed runs.
    remote: u64,
}

impl Row {
    fn new(name: &'static str) -> Self {
        Row {
            name,
            v: Vec::new(),
            remote: 0,
        }
    }
    fn med(&mut self) -> f64 {
        percentile(&mut self.v, 0.5)
    }
    fn p99(&mut self) -> f64 {
        percentile(&mut self.v, 0.99)
    }
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

/// One row of a placement's table.
#[allow(clippy::too_many_arguments)]
fn line(
    what: &str,
    med: &str,
    p99: &str,
    base: &str,
    ratio: &str,
    vs_r: &str,
    target: &str,
    net: &str,
) {
    println!("{what:<36} {med:>9} {p99:>9} {base:>16} {ratio:>6} {vs_r:>6} {target:>7} {net:>8}");
}

/// What node 2's client thread does next.
enum BCmd {
    Pin(Option<usize>),
    Pair,
}

struct Placement {
    name: &'static str,
    /// The client (this thread), node A's lockd, the Unix echo, single lockd.
    near: Option<usize>,
    /// Node B's lockd, the TCP echo, node 2's client thread.
    far: Option<usize>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo-unix") {
        echo_unix(Path::new(&args[i + 1]));
    }
    if let Some(i) = args.iter().position(|a| a == "--echo-tcp") {
        echo_tcp(&args[i + 1]);
    }
    if let Some(i) = args.iter().position(|a| a == "--relay") {
        relay(Path::new(&args[i + 1]), &args[i + 2]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    // Timed samples of each figure per placement, in `batches` interleaved batches.
    let n = if quick { 2000 } else { 20_000 };
    let batches = 20;
    let per = n / batches;
    let warm = (per / 10).max(5);
    let cpus = num_cpus();
    std::panic::set_hook({
        let default = std::panic::take_hook();
        Box::new(move |info| {
            default(info);
            // With panic = abort no guard runs: kill every process started.
            harness::kill_tracked();
        })
    });
    let started = Instant::now();

    println!(
        "clusterbench ({} CPUs{})",
        cpus,
        if quick { ", quick" } else { "" }
    );

    // The processes, started once and re-pinned per placement.
    let cluster = start_cluster();
    let port = cluster.port;
    let (lockd_a, lockd_b) = (cluster.pid(0), cluster.pid(1));
    let (sock_a, sock_b) = (&cluster.nodes[0].socket, &cluster.nodes[1].socket);
    // The other processes' sockets and the single lockd's log: there too.
    let dir = &cluster.path;
    let (single, sock_s) = start_single(dir);
    let (echo_u, path_u) = start_echo_unix(dir);
    let echo_addr = {
        let l = TcpListener::bind((IP_B, 0)).unwrap();
        SocketAddrV4::new(IP_B, l.local_addr().unwrap().port())
    };
    let echo_t = start_echo_tcp(echo_addr);
    let (relay_p, path_r) = start_relay(dir, echo_addr);

    let mut a = Client::connect(sock_a).unwrap();
    let mut b = Client::connect(sock_b).unwrap();
    let mut s = Client::connect(&sock_s).unwrap();
    let t = Instant::now();
    a.join(DOMAIN, true).unwrap();
    b.join(DOMAIN, true).unwrap();
    s.join(DOMAIN, true).unwrap();
    let members = b
        .domains()
        .unwrap()
        .into_iter()
        .find(|d| d.name == DOMAIN)
        .map(|d| d.members)
        .unwrap_or_default();
    assert_eq!(
        members,
        [NodeId(NODE_A), NodeId(NODE_B)],
        "both nodes in the domain"
    );
    println!(
        "two-node cluster on {IP_A}:{port} and {IP_B}:{port}; domain joined by both in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let mut raw_u = UnixStream::connect(&path_u).unwrap();
    let mut raw_t = TcpStream::connect(echo_addr).unwrap();
    raw_t.set_nodelay(true).unwrap();
    let mut raw_r = UnixStream::connect(&path_r).unwrap();

    let cached = names_on_b("cached", 1).remove(0);
    let handoff = names_on_b("handoff", 1).remove(0);
    // Check the master as lockd sees it, and take the node lock for the cached case.
    lock_pair(&mut a, &cached);
    let r = a
        .locks(Some(DOMAIN))
        .unwrap()
        .into_iter()
        .find(|r| r.name == cached)
        .expect("node 1 keeps the resource of its cached node lock");
    assert_eq!(r.master, NodeId(NODE_B), "master_of agrees with lockd");
    assert_eq!(
        r.node_lock.and_then(|n| n.0),
        Some(Mode::EX),
        "node lock cached in EX"
    );

    if let Some(i) = args.iter().position(|x| x == "--spin") {
        // For profiling: one figure's loop, unpinned, for a while.
        let what = args.get(i + 1).map_or("handoff", String::as_str);
        let secs: f64 = args.get(i + 2).and_then(|x| x.parse().ok()).unwrap_or(10.0);
        println!(
            "spinning '{what}' for {secs} s: lockd node 1 pid {}, node 2 pid {}, client pid {}, single pid {}",
            lockd_a,
            lockd_b,
            std::process::id(),
            single.pid()
        );
        let fresh = names_on_b(
            "spin",
            if what.starts_with("fresh") {
                500_000
            } else {
                0
            },
        );
        let mut split: [Vec<f64>; 3] = Default::default();
        let mut it = fresh.iter();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut pairs = 0u64;
        let t = Instant::now();
        while Instant::now() < end {
            match what {
                "cached" => lock_pair(&mut a, &cached),
                "fresh" => lock_pair(&mut a, it.next().expect("enough names")),
                "fresh-split" => {
                    // Lock request accepted, granted, unlocked: each phase timed.
                    let r = it.next().expect("enough names");
                    let t0 = Instant::now();
                    let id = a
                        .lock_async(DOMAIN, r, Mode::EX, &LockOptions::default())
                        .unwrap();
                    let t1 = Instant::now();
                    // (lockd says "waiting" first, in the same write as the acceptance.)
                    loop {
                        match a.next_event(None).unwrap() {
                            Some(o2tools::dlm::Event::Granted { lock, .. }) if lock == id => break,
                            Some(o2tools::dlm::Event::Waiting { lock, .. }) if lock == id => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    let t2 = Instant::now();
                    a.unlock(id).unwrap();
                    split[0].push((t1 - t0).as_nanos() as f64 / 1000.0);
                    split[1].push((t2 - t1).as_nanos() as f64 / 1000.0);
                    split[2].push(micros(t2));
                }
                "single" => lock_pair(&mut s, b"r"),
                "unix" => raw_unix(&mut raw_u),
                "tcp" => raw_tcp(&mut raw_t),
                "relay" => relay_pair(&mut raw_r, false),
                "relay1" => relay_pair(&mut raw_r, true),
                "relay-split" => {
                    let mut m = [b'L'; 64];
                    let mut back = [0u8; 64];
                    let t0 = Instant::now();
                    raw_r.write_all(&m).unwrap();
                    raw_r.read_exact(&mut back).unwrap();
                    let t1 = Instant::now();
                    raw_r.read_exact(&mut back).unwrap();
                    let t2 = Instant::now();
                    m[0] = b'U';
                    raw_r.write_all(&m).unwrap();
                    raw_r.read_exact(&mut back).unwrap();
                    split[0].push((t1 - t0).as_nanos() as f64 / 1000.0);
                    split[1].push((t2 - t1).as_nanos() as f64 / 1000.0);
                    split[2].push(micros(t2));
                }
                _ => {
                    lock_pair(&mut a, &handoff);
                    lock_pair(&mut b, &handoff);
                }
            }
            pairs += 1;
        }
        println!("{pairs} runs, {:.1} µs each", micros(t) / pairs as f64);
        if !split[0].is_empty() {
            let [x, y, z] = &mut split;
            println!(
                "medians: lock request to accepted {:.1} µs, accepted to granted {:.1} µs, unlock {:.1} µs",
                percentile(x, 0.5),
                percentile(y, 0.5),
                percentile(z, 0.5)
            );
        }
        return;
    }

    let placements: Vec<Placement> = if cpus >= 2 {
        vec![
            Placement {
                name: "node-per-cpu",
                near: Some(0),
                far: Some(1),
            },
            Placement {
                name: "one-cpu",
                near: Some(0),
                far: Some(0),
            },
            Placement {
                name: "unpinned",
                near: None,
                far: None,
            },
        ]
    } else {
        vec![Placement {
            name: "unpinned",
            near: None,
            far: None,
        }]
    };

    println!();
    println!(
        "U = raw 64-byte Unix round trip, T = raw 64-byte TCP round trip 127.0.0.1→127.0.0.2 (TCP_NODELAY),"
    );
    println!(
        "S = lock+unlock on a single-node lockd; all medians of this placement, same run, interleaved."
    );
    println!(
        "Pairs are lock EX + unlock by a client of node 1 (A) or node 2 (B); the resource's master is node 2."
    );
    println!("`net/pair`: node-level requests sent by either lockd per pair (lockd's counters).");

    // Node 2's client for the handoff, in its own thread so that it can sit
    // on node 2's CPU: it runs one timed pair per request.
    let (to_b, b_cmds) = std::sync::mpsc::channel::<BCmd>();
    let (b_done, from_b) = std::sync::mpsc::channel::<f64>();
    let b_thread = {
        let mut hb = Client::connect(sock_b).unwrap();
        let res = handoff.clone();
        std::thread::spawn(move || {
            while let Ok(cmd) = b_cmds.recv() {
                match cmd {
                    BCmd::Pin(cpu) => {
                        pin(None, cpu);
                        b_done.send(0.0).unwrap();
                    }
                    BCmd::Pair => {
                        let t = Instant::now();
                        lock_pair(&mut hb, &res);
                        b_done.send(micros(t)).unwrap();
                    }
                }
            }
        })
    };

    let mut summary = Vec::new();
    for pl in &placements {
        to_b.send(BCmd::Pin(pl.far)).unwrap();
        from_b.recv().unwrap();
        for p in [lockd_a, single.pid(), echo_u.pid(), relay_p.pid()] {
            pin(Some(p as u32), pl.near);
        }
        for p in [lockd_b, echo_t.pid()] {
            pin(Some(p as u32), pl.far);
        }
        pin(None, pl.near);

        let fresh = names_on_b(&format!("fresh-{}", pl.name), n + batches * warm);
        let mut fresh_it = fresh.iter();
        let mut ru = Row::new("raw Unix round trip (U)");
        let mut rt = Row::new("raw TCP round trip (T)");
        let mut rs = Row::new("single-node lockd lock+unlock (S)");
        let mut rr = Row::new("relay, same messages (R)");
        let mut rr1 = Row::new("relay, accepted with grant (R1)");
        let mut rc = Row::new("cached relock on node 1");
        let mut rf = Row::new("fresh resource, A (remote master)");
        let mut rha = Row::new("handoff, A (remote master)");
        let mut rhb = Row::new("handoff, B (master local, A holds)");
        let mut b_quiet = Some(0u64);
        for _ in 0..batches {
            ru.v.extend(samples(per, warm, || raw_unix(&mut raw_u)));
            rt.v.extend(samples(per, warm, || raw_tcp(&mut raw_t)));
            rs.v.extend(samples(per, warm, || lock_pair(&mut s, b"r")));
            rr.v.extend(samples(per, warm, || relay_pair(&mut raw_r, false)));
            rr1.v
                .extend(samples(per, warm, || relay_pair(&mut raw_r, true)));

            let before = (remote_requests(&mut a), remote_requests(&mut b));
            let sys_b = syscalls(lockd_b);
            rc.v.extend(samples(per, warm, || lock_pair(&mut a, &cached)));
            let sys_b2 = syscalls(lockd_b);
            b_quiet = match (b_quiet, sys_b, sys_b2) {
                // Minus the status request's own read and write on node 2.
                (Some(q), Some(x), Some(y)) => Some(q + (y - x).saturating_sub(2)),
                _ => None,
            };
            rc.remote += remote_requests(&mut a) + remote_requests(&mut b) - before.0 - before.1;

            let before = (remote_requests(&mut a), remote_requests(&mut b));
            rf.v.extend(samples(per, warm, || {
                lock_pair(&mut a, fresh_it.next().expect("enough names"))
            }));
            rf.remote += remote_requests(&mut a) + remote_requests(&mut b) - before.0 - before.1;

            let before = (remote_requests(&mut a), remote_requests(&mut b));
            for i in 0..per + warm {
                let t = Instant::now();
                lock_pair(&mut a, &handoff);
                let ta = micros(t);
                to_b.send(BCmd::Pair).unwrap();
                let tb = from_b.recv().unwrap();
                if i >= warm {
                    rha.v.push(ta);
                    rhb.v.push(tb);
                }
            }
            // Both pairs' requests, on A's row (printed as half each).
            rha.remote += remote_requests(&mut a) + remote_requests(&mut b) - before.0 - before.1;
        }
        // Warm-up runs do network too: count the requests per run, warm-ups included.
        let runs = (batches * (per + warm)) as f64;

        let (u, t, sn, rm) = (ru.med(), rt.med(), rs.med(), rr.med());
        let floor = 2.0 * u + t;
        println!();
        let where_ = match (pl.near, pl.far) {
            (Some(x), Some(y)) if x != y => format!(
                "node 1's client, node 1's lockd, Unix echo, relay, single lockd on CPU {x}; node 2's lockd and client, TCP echo on CPU {y}"
            ),
            (Some(x), _) => format!("everything on CPU {x}"),
            _ => "nothing pinned".to_string(),
        };
        println!("== {} ({where_})", pl.name);
        line(
            "what",
            "median µs",
            "p99 µs",
            "baseline µs",
            "ratio",
            "vs R",
            "target",
            "net/pair",
        );
        for r in [&mut ru, &mut rt, &mut rs] {
            let (m, p) = (r.med(), r.p99());
            line(r.name, &f1(m), &f1(p), "", "", "", "", "");
        }
        for r in [&mut rr, &mut rr1] {
            let (m, p) = (r.med(), r.p99());
            line(
                r.name,
                &f1(m),
                &f1(p),
                &format!("2U+T = {floor:.1}"),
                &format!("{:.2}", m / floor),
                &format!("{:.2}", m / rm),
                "",
                "",
            );
        }
        let (cm, cp) = (rc.med(), rc.p99());
        line(
            rc.name,
            &f1(cm),
            &f1(cp),
            &format!("S = {sn:.1}"),
            &format!("{:.2}", cm / sn),
            "",
            "≈ 1.0",
            &format!("{:.3}", rc.remote as f64 / runs),
        );
        let mut ratios = Vec::new();
        let fresh_net = rf.remote as f64 / runs;
        // Each handoff round (A's pair, then B's) moves the node lock twice.
        let handoff_net = rha.remote as f64 / runs / 2.0;
        for (r, net) in [
            (&mut rf, fresh_net),
            (&mut rha, handoff_net),
            (&mut rhb, handoff_net),
        ] {
            let (m, p) = (r.med(), r.p99());
            line(
                r.name,
                &f1(m),
                &f1(p),
                &format!("2U+T = {floor:.1}"),
                &format!("{:.2}", m / floor),
                &format!("{:.2}", m / rm),
                "≤ 1.5",
                &format!("{net:.3}"),
            );
            ratios.push(m / floor);
        }
        ratios.push(rm / floor);
        ratios.push(rr1.med() / floor);
        match b_quiet {
            Some(q) => println!(
                "node 2's lockd during the cached relocks: {q} reads+writes in {} pairs (keepalives only: expect ~0)",
                batches * (per + warm)
            ),
            None => println!("node 2's lockd system calls: /proc/PID/io unreadable"),
        }
        summary.push((pl.name, cm / sn, ratios));
        pin(None, None);
    }

    drop(to_b);
    b_thread.join().unwrap();

    println!();
    println!("== summary (ratios of medians; targets: cached ≈ 1.0, remote ≤ 1.5)");
    println!(
        "{:<14} {:>11} {:>13} {:>13} {:>13} {:>10} {:>10}",
        "placement",
        "cached / S",
        "fresh / 2U+T",
        "hand A / 2U+T",
        "hand B / 2U+T",
        "R / 2U+T",
        "R1 / 2U+T"
    );
    for (name, c, r) in summary {
        println!(
            "{:<14} {:>11.2} {:>13.2} {:>13.2} {:>13.2} {:>10.2} {:>10.2}",
            name, c, r[0], r[1], r[2], r[3], r[4]
        );
    }
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
