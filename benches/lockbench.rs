//! lockd benchmark: every figure printed next to a baseline measured in the
//! same run on the same machine.
//!
//! Run: `cargo bench --bench lockbench` (add `-- --quick` for a short run).
//!
//! - Latency of an uncontended lock+unlock through the client library against
//!   a raw 64-byte Unix-socket round trip to a single-threaded epoll echo
//!   server, with client and server pinned to the same CPU, to different
//!   CPUs, and unpinned (this VM wakes an idle vCPU slowly, so placement
//!   matters more than anything else).
//! - Throughput with 1, 8 and 64 connections against raw round trips with as
//!   many connections.
//! - Redis SET NX PX + DEL (if `redis-server` is installed) from a minimal RESP
//!   client, 1 and 64 connections.
//! - `dlmctl lock --ex d r -- true` against `flock FILE true` (the dlmctl
//!   built with the bench, or `$LOCKBENCH_DLMCTL`).
//! - Memory of an idle resource (no locks, a value block set) in the core,
//!   measured with a counting allocator and as RSS over 1M resources.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;

use common::{num_cpus, percentile, pin, samples};
use o2tools::client::{Client, LockOptions};
use o2tools::dlm::{self, Dlm, Mode};

struct Counting;
static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// median and p99 in microseconds of `n` timed runs of `f` after `warm` untimed ones.
fn time_ops(n: usize, warm: usize, f: impl FnMut()) -> (f64, f64) {
    let mut v = samples(n, warm, f);
    (percentile(&mut v, 0.5), percentile(&mut v, 0.99))
}

/// A single-threaded epoll echo server for 64-byte messages, in this process
/// re-executed (`--echo-server PATH`), so it is a separate process like lockd.
fn echo_server(path: &Path) -> ! {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use std::os::fd::AsFd;
    let l = UnixListener::bind(path).unwrap();
    l.set_nonblocking(true).unwrap();
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    ep.add(&l, EpollEvent::new(EpollFlags::EPOLLIN, 0)).unwrap();
    let mut conns: Vec<Option<UnixStream>> = vec![None];
    let mut evs = vec![EpollEvent::empty(); 64];
    let mut buf = [0u8; 65536];
    loop {
        let n = ep.wait(&mut evs, EpollTimeout::NONE).unwrap_or(0);
        for ev in &evs[..n] {
            let t = ev.data() as usize;
            if t == 0 {
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true).unwrap();
                    ep.add(
                        s.as_fd(),
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
                        let _ = ep.delete(s.as_fd());
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

struct Server {
    child: Child,
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_socket(p: &Path) {
    for _ in 0..500 {
        if UnixStream::connect(p).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never answered", p.display());
}

fn start_echo(dir: &Path) -> Server {
    let path = dir.join("echo.sock");
    let child = Command::new(std::env::current_exe().unwrap())
        .arg("--echo-server")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_socket(&path);
    Server { child, path }
}

fn start_lockd(dir: &Path) -> Server {
    let path = dir.join("lockd.sock");
    let log = std::fs::File::create(dir.join("lockd.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lockd"))
        .arg("--socket")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_socket(&path);
    Server { child, path }
}

fn raw_rtt(s: &mut UnixStream) {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    s.write_all(&msg).unwrap();
    s.read_exact(&mut back).unwrap();
}

fn lock_pair(c: &mut Client, res: &[u8]) {
    let id = c
        .lock(b"bench", res, Mode::EX, &LockOptions::default())
        .unwrap();
    c.unlock(id).unwrap();
}

/// Runs `threads` workers for `dur`, each with its own connection made by
/// `make`, doing `op`; returns operations per second.
fn throughput<C: Send + 'static>(
    threads: usize,
    dur: Duration,
    make: impl Fn(usize) -> C + Send + Sync + 'static,
    op: fn(&mut C, usize),
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let make = Arc::new(make);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, count, barrier, make) =
                (stop.clone(), count.clone(), barrier.clone(), make.clone());
            std::thread::spawn(move || {
                let mut c = make(i);
                barrier.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(&mut c, i);
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// A minimal Redis client: SET key v NX PX 30000, then DEL key.
fn redis_pair(s: &mut TcpStream, key: &str) {
    let set = format!(
        "*6\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n30000\r\n",
        key.len()
    );
    s.write_all(set.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"+OK"),
        "SET NX failed: {:?}",
        &buf[..n]
    );
    let del = format!("*2\r\n$3\r\nDEL\r\n${}\r\n{key}\r\n", key.len());
    s.write_all(del.as_bytes()).unwrap();
    let _ = s.read(&mut buf).unwrap();
}

fn start_redis(dir: &Path, port: u16) -> Option<Server> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Server {
                child,
                path: PathBuf::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn idle_resource_memory(n: usize) -> (f64, f64) {
    let mut d = Dlm::new(dlm::NodeId(0));
    let c = dlm::ClientId(1);
    d.handle(
        dlm::Millis(0),
        dlm::Input::Connected {
            client: c,
            cred: dlm::Cred::default(),
        },
    );
    let before_alloc = ALLOCATED.load(Ordering::Relaxed);
    let before_rss = rss_bytes();
    for i in 0..n {
        // 16-byte names, a typical size.
        let name = format!("res-{i:012}").into_bytes();
        d.handle(
            dlm::Millis(0),
            dlm::Input::Request {
                client: c,
                tag: 1,
                request: dlm::Request::Lock(dlm::LockRequest {
                    domain: b"mem".to_vec(),
                    resource: name.to_vec(),
                    mode: Mode::EX,
                    flags: Default::default(),
                    timeout_ms: None,
                }),
            },
        );
        let mut lock = None;
        while let Some(a) = d.poll_action() {
            if let dlm::Action::Reply {
                reply: dlm::Reply::LockAccepted { lock: l },
                ..
            } = a
            {
                lock = Some(l);
            }
        }
        let lock = lock.unwrap();
        for r in [
            dlm::Request::LvbSet {
                lock,
                value: [1; 64],
            },
            dlm::Request::Unlock { lock },
        ] {
            d.handle(
                dlm::Millis(0),
                dlm::Input::Request {
                    client: c,
                    tag: 2,
                    request: r,
                },
            );
            while d.poll_action().is_some() {}
        }
    }
    assert_eq!(d.stats().resources, n);
    assert_eq!(d.stats().locks, 0);
    let alloc = (ALLOCATED.load(Ordering::Relaxed) - before_alloc) as f64 / n as f64;
    let rss = (rss_bytes().saturating_sub(before_rss)) as f64 / n as f64;
    drop(d);
    (alloc, rss)
}

/// The core alone: one lock+unlock pair through `Dlm::handle`, no I/O.
fn core_pair_ns(n: usize) -> f64 {
    let mut d = Dlm::new(dlm::NodeId(0));
    let c = dlm::ClientId(1);
    d.handle(
        dlm::Millis(0),
        dlm::Input::Connected {
            client: c,
            cred: dlm::Cred::default(),
        },
    );
    let t = Instant::now();
    for _ in 0..n {
        d.handle(
            dlm::Millis(0),
            dlm::Input::Request {
                client: c,
                tag: 1,
                request: dlm::Request::Lock(dlm::LockRequest {
                    domain: b"bench".to_vec(),
                    resource: b"r".to_vec(),
                    mode: Mode::EX,
                    flags: Default::default(),
                    timeout_ms: None,
                }),
            },
        );
        let mut lock = None;
        while let Some(a) = d.poll_action() {
            if let dlm::Action::Reply {
                reply: dlm::Reply::LockAccepted { lock: l },
                ..
            } = a
            {
                lock = Some(l);
            }
        }
        d.handle(
            dlm::Millis(0),
            dlm::Input::Request {
                client: c,
                tag: 2,
                request: dlm::Request::Unlock {
                    lock: lock.unwrap(),
                },
            },
        );
        while d.poll_action().is_some() {}
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo-server") {
        echo_server(Path::new(&args[i + 1]));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let n_lat = if quick { 3000 } else { 30_000 };
    let dur = Duration::from_millis(if quick { 400 } else { 2000 });
    let dir = tempfile::tempdir().unwrap();
    let cpus = num_cpus();

    println!(
        "lockbench ({} CPUs{})",
        cpus,
        if quick { ", quick" } else { "" }
    );
    println!();
    println!(
        "== the core alone: lock+unlock pair through Dlm::handle, no I/O: {:.2} µs",
        core_pair_ns(200_000) / 1000.0
    );
    println!();
    println!(
        "== latency: uncontended lock+unlock (2 round trips) vs raw 64-byte Unix-socket round trip"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>12} {:>22}",
        "placement", "raw rtt µs", "raw p99", "lock+unlock µs", "p99", "pair / (2 × raw rtt)"
    );
    let placements: Vec<(&str, Option<usize>, Option<usize>)> = if cpus >= 2 {
        vec![
            ("same-cpu", Some(0), Some(0)),
            ("cross-cpu", Some(0), Some(1)),
            ("unpinned", None, None),
        ]
    } else {
        vec![("unpinned", None, None)]
    };
    for (name, ccpu, scpu) in &placements {
        let pdir = dir.path().join(name).tap_mkdir();
        let echo = start_echo(&pdir);
        let lockd = start_lockd(&pdir);
        pin(Some(echo.child.id()), *scpu);
        pin(Some(lockd.child.id()), *scpu);
        pin(None, *ccpu);
        let mut raw = UnixStream::connect(&echo.path).unwrap();
        let mut c = Client::connect(&lockd.path).unwrap();
        // Interleaved in batches, so both see the same machine conditions.
        let (mut rv, mut lv) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let (r, l) = (&mut raw, &mut c);
            rv.extend(samples(n_lat / 20, n_lat / 200, || raw_rtt(r)));
            lv.extend(samples(n_lat / 20, n_lat / 200, || lock_pair(l, b"r")));
        }
        let (raw_med, raw_p99) = (percentile(&mut rv, 0.5), percentile(&mut rv, 0.99));
        let (lk_med, lk_p99) = (percentile(&mut lv, 0.5), percentile(&mut lv, 0.99));
        println!(
            "{:<10} {:>12.2} {:>12.2} {:>14.2} {:>12.2} {:>22.2}",
            name,
            raw_med,
            raw_p99,
            lk_med,
            lk_p99,
            lk_med / (2.0 * raw_med)
        );
        pin(None, None);
    }

    println!();
    println!(
        "== throughput: lock+unlock pairs/s with N connections vs raw round trips/s with N connections (unpinned)"
    );
    println!(
        "{:<6} {:>14} {:>16} {:>24}",
        "conns", "raw rtt/s", "lock pairs/s", "pair cost in raw rtts"
    );
    let echo = start_echo(dir.path().join("t").tap_mkdir().as_path());
    let lockd = start_lockd(dir.path().join("t").as_path());
    let mut pairs_by_conns = Vec::new();
    for n in [1usize, 8, 64] {
        let ep = echo.path.clone();
        let raw = throughput(
            n,
            dur,
            move |_| UnixStream::connect(&ep).unwrap(),
            |s, _| raw_rtt(s),
        );
        let lp = lockd.path.clone();
        let pairs = throughput(
            n,
            dur,
            move |_| Client::connect(&lp).unwrap(),
            |c, i| lock_pair(c, format!("r{i}").as_bytes()),
        );
        pairs_by_conns.push((n, pairs));
        println!(
            "{:<6} {:>14.0} {:>16.0} {:>24.2}",
            n,
            raw,
            pairs,
            raw / pairs
        );
    }

    println!();
    println!("== Redis SET NX PX + DEL pairs (same machine, same run)");
    match start_redis(dir.path(), 6391) {
        None => {
            println!("skipped: redis-server is not installed (apt-get install -y redis-server)")
        }
        Some(_redis) => {
            let mut s = TcpStream::connect(("127.0.0.1", 6391)).unwrap();
            s.set_nodelay(true).unwrap();
            let (r_med, r_p99) = time_ops(n_lat / 2, n_lat / 20, || redis_pair(&mut s, "k"));
            let mut c = Client::connect(&lockd.path).unwrap();
            let (l_med, l_p99) = time_ops(n_lat / 2, n_lat / 20, || lock_pair(&mut c, b"r"));
            println!(
                "1 conn latency: redis {r_med:.1} µs (p99 {r_p99:.1}), lockd {l_med:.1} µs (p99 {l_p99:.1}): lockd is {:.2}× faster",
                r_med / l_med
            );
            for n in [1usize, 64] {
                let rp = throughput(
                    n,
                    dur,
                    |_| {
                        let s = TcpStream::connect(("127.0.0.1", 6391)).unwrap();
                        s.set_nodelay(true).unwrap();
                        s
                    },
                    |s, i| redis_pair(s, &format!("k{i}")),
                );
                let lp = lockd.path.clone();
                let lk = throughput(
                    n,
                    dur,
                    move |_| Client::connect(&lp).unwrap(),
                    |c, i| lock_pair(c, format!("r{i}").as_bytes()),
                );
                println!(
                    "{n} conns: redis {rp:.0} pairs/s, lockd {lk:.0} pairs/s: lockd is {:.2}× faster",
                    lk / rp
                );
            }
        }
    }

    println!();
    println!(
        "== CLI: `dlmctl lock --ex d r -- true` vs `flock FILE true` (wall time per run, interleaved)"
    );
    // The dlmctl cargo built with this bench carries the features that the
    // dev-dependencies turn on (regex-syntax's Unicode tables), which make
    // it larger and slower to start than the one `cargo build --release`
    // or `cargo install` makes: `$LOCKBENCH_DLMCTL` times that one instead.
    let dlmctl = std::env::var_os("LOCKBENCH_DLMCTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dlmctl")));
    println!("dlmctl: {}", dlmctl.display());
    let runs = if quick { 60 } else { 300 };
    let lockfile = dir.path().join("flockfile");
    std::fs::write(&lockfile, b"").unwrap();
    let mut dl = Vec::new();
    let mut fl = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new(&dlmctl)
            .args(["lock", "--ex", "d", "r", "--", "true"])
            .env("LOCKD_SOCKET", &lockd.path)
            .env("LOCKD_NO_AUTOSTART", "1")
            .status()
            .unwrap();
        dl.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(st.success());
        let t = Instant::now();
        let st = Command::new("flock")
            .arg(&lockfile)
            .arg("true")
            .status()
            .unwrap();
        fl.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(st.success());
    }
    let (dm, fm) = (percentile(&mut dl, 0.5), percentile(&mut fl, 0.5));
    println!(
        "dlmctl lock -- true: median {dm:.0} µs (p99 {:.0}); flock FILE true: median {fm:.0} µs (p99 {:.0}); ratio {:.2}",
        percentile(&mut dl, 0.99),
        percentile(&mut fl, 0.99),
        dm / fm
    );

    println!();
    println!("== memory: idle resource (no locks, value block set) in the core");
    let n = if quick { 100_000 } else { 1_000_000 };
    let (alloc, rss) = idle_resource_memory(n);
    println!("{n} resources: {alloc:.0} bytes allocated each, {rss:.0} bytes of RSS each");
    let _ = pairs_by_conns;
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
