//! dlmfs mounted for real (FUSE; these tests run as root, as CI does) on its
//! own lockd, driven with shell commands, python3 and dlmctl: every line of
//! the dlmfs document's tables, sharing and exclusion, poll on a blocking
//! notification, unmount and lockd's death.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{Lockd, bin, eventually, output};

/// Tests whose outcome depends on timing run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn require_fuse() {
    common::require_root("FUSE mounts");
    common::require_program("fusermount3", "fuse3");
    common::require_program("python3", "python3");
}

/// Waits for a child with a bound; None if it is still running.
fn wait_for(child: &mut Child, secs: u64) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn is_mounted(mnt: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_str().unwrap();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want) && l.contains(" - fuse"))
}

/// A dlmfs mounted for one test on its own directory, with its output in a
/// log file. Dropping it stops dlmfs (SIGTERM, then SIGKILL) and makes sure
/// nothing stays mounted.
struct Mount {
    child: Child,
    mnt: PathBuf,
    dir: tempfile::TempDir,
}

impl Mount {
    fn start(l: &Lockd, opts: &[&str]) -> Mount {
        // Other users (the permission test) must reach the mount point.
        let dir = common::dir_for_others();
        let mnt = dir.path().canonicalize().unwrap().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let log = std::fs::File::create(dir.path().join("dlmfs.log")).unwrap();
        let mut cmd = Command::new(bin("dlmfs"));
        cmd.arg(&mnt)
            .arg("--socket")
            .arg(&l.socket)
            .args(opts)
            .env("LOCKD_NO_AUTOSTART", "1")
            .env("O2CB_CONFIG_FILE", "/nonexistent/cluster.conf")
            .env("RUST_LOG", "o2tools=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().unwrap();
        let mut m = Mount { child, mnt, dir };
        let up = eventually(20, || is_mounted(&m.mnt) || m.exited());
        assert!(up && !m.exited(), "dlmfs did not mount; log:\n{}", m.log());
        m
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    fn pid(&self) -> i64 {
        i64::from(self.child.id())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dlmfs.log")).unwrap_or_default()
    }

    /// Runs python statements (`M` is the mount point); prints `ok` or the
    /// errno's name.
    fn py(&self, stmts: &str) -> String {
        self.py_as(stmts, None)
    }

    fn py_as(&self, stmts: &str, user: Option<u32>) -> String {
        let become_user = match user {
            Some(u) => format!("os.setgroups([]); os.setgid({u}); os.setuid({u})\n"),
            None => String::new(),
        };
        let code = format!(
            "import os, sys, errno\nM = sys.argv[1]\n{become_user}try:\n    {stmts}\n    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        );
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(&code).arg(&self.mnt).stdin(Stdio::null());
        if user.is_some() {
            // Started as root, it becomes the user itself; its working
            // directory must be one the user can enter.
            cmd.current_dir("/");
        }
        let out = output(&mut cmd);
        assert!(
            out.status.success(),
            "python failed: {}\n{code}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn sh(&self, script: &str) -> (i32, String) {
        let out = output(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&self.mnt)
                .stdin(Stdio::null()),
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Makes a domain and resource files in it (open with O_CREAT, close).
    fn create(&self, domain: &str, resources: &[&str]) {
        std::fs::create_dir(self.path(domain)).unwrap();
        for r in resources {
            let p = format!("{domain}/{r}");
            assert_eq!(
                self.py(&format!(
                    "os.close(os.open(M + '/{p}', os.O_RDONLY | os.O_CREAT, 0o644))"
                )),
                "ok"
            );
        }
    }

    /// Opens `rel` with `flags` in a python process that holds it open.
    fn hold(&self, rel: &str, flags: i32) -> Holder {
        Holder::spawn(&self.path(rel), flags, None)
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> ExitStatus {
        kill(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        wait_for(&mut self.child, 20)
            .unwrap_or_else(|| panic!("dlmfs ignored SIGTERM; log:\n{}", self.log()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill(self.child.id(), nix::sys::signal::Signal::SIGTERM);
            if wait_for(&mut self.child, 15).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "-q", "--"])
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The holder script: opens argv[1] with the flags in argv[2], says
/// `open` (or `err ENAME`), then obeys commands on stdin.
const HOLDER: &str = r#"
import os, sys, errno, select
if len(sys.argv) > 3:
    u = int(sys.argv[3]); os.setgroups([]); os.setgid(u); os.setuid(u)
try:
    fd = os.open(sys.argv[1], int(sys.argv[2]), 0o644)
except OSError as e:
    print("err", errno.errorcode[e.errno], flush=True)
    sys.exit(0)
print("open", flush=True)
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "close":
            os.close(fd)
            print("closed", flush=True)
            break
        elif cmd[0] == "read":
            print("data", os.pread(fd, 100, 0).split(b"\0")[0].decode(), flush=True)
        elif cmd[0] == "write":
            print("wrote", os.pwrite(fd, cmd[1].encode(), 0), flush=True)
        elif cmd[0] == "poll":
            p = select.poll()
            p.register(fd, select.POLLIN)
            ev = p.poll(int(cmd[1]))
            print("poll", ev[0][1] if ev else 0, flush=True)
    except OSError as e:
        print("err", errno.errorcode[e.errno], flush=True)
"#;

/// A python process holding one open file. Its lines arrive on a channel so
/// that a test can tell a blocked open from a finished one.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Holder {
    fn spawn(path: &Path, flags: i32, user: Option<u32>) -> Holder {
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(HOLDER)
            .arg(path)
            .arg(flags.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(u) = user {
            cmd.arg(u.to_string()).current_dir("/");
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Holder {
            child,
            stdin,
            lines: rx,
        }
    }

    /// The next line, waiting at most `secs`.
    fn line(&self, secs: f64) -> Option<String> {
        self.lines.recv_timeout(Duration::from_secs_f64(secs)).ok()
    }

    fn expect(&self, want: &str, secs: f64) {
        let got = self.line(secs);
        assert_eq!(
            got.as_deref(),
            Some(want),
            "holder said {got:?}, expected {want}"
        );
    }

    fn opened(self) -> Self {
        self.expect("open", 20.0);
        self
    }

    fn send(&mut self, cmd: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        writeln!(s, "{cmd}").unwrap();
        s.flush().unwrap();
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line(30.0)
            .unwrap_or_else(|| panic!("no answer to {cmd}"))
    }

    fn close(mut self) {
        self.send("close");
        self.expect("closed", 20.0);
        assert!(wait_for(&mut self.child, 20).is_some());
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // A process blocked in open cannot die until dlmfs answers (the
        // Mount guard stops dlmfs after this); do not wait for it forever.
        let _ = wait_for(&mut self.child, 2);
    }
}

/// A background `dlmctl lock ... -- sleep 600` in its own process group,
/// killed with its group when dropped.
struct DlmctlHold(Child);

impl DlmctlHold {
    fn start(l: &Lockd, args: &[&str]) -> DlmctlHold {
        let mut c = l.dlmctl();
        c.arg("lock")
            .args(args)
            .args(["--", "sleep", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        DlmctlHold(c.spawn().unwrap())
    }

    fn pid(&self) -> i64 {
        i64::from(self.0.id())
    }
}

impl Drop for DlmctlHold {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// `(pid, mode)` of the granted locks on a resource, and the number waiting.
fn locks(l: &Lockd, domain: &str, res: &str) -> (Vec<(i64, String)>, usize) {
    let (code, out, err) = l.run(&["locks", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    let mut granted = Vec::new();
    let mut waiting = 0;
    for r in v["resources"].as_array().unwrap() {
        if r["domain"] != domain || r["name"] != res {
            continue;
        }
        for h in r["granted"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["converting"].as_array().unwrap())
        {
            granted.push((
                h["pid"].as_i64().unwrap(),
                h["granted"].as_str().unwrap().to_owned(),
            ));
        }
        waiting +=
            r["waiting"].as_array().unwrap().len() + r["converting"].as_array().unwrap().len();
    }
    granted.sort();
    (granted, waiting)
}

fn granted(l: &Lockd, domain: &str, res: &str) -> Vec<(i64, String)> {
    locks(l, domain, res).0
}

fn domain_users(l: &Lockd, domain: &str) -> Option<(u64, bool)> {
    let (code, out, err) = l.run(&["domains", "--json"]);
    assert_eq!(code, 0, "{err}");
    json(&out)["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == domain)
        .map(|d| (d["users"].as_u64().unwrap(), d["pinned"].as_bool().unwrap()))
}

fn ex(pid: i64) -> Vec<(i64, String)> {
    vec![(pid, "EX".to_owned())]
}

fn pr(pid: i64) -> Vec<(i64, String)> {
    vec![(pid, "PR".to_owned())]
}

const RO: i32 = libc::O_RDONLY;
const RW: i32 = libc::O_RDWR;
const WO: i32 = libc::O_WRONLY;
const NB: i32 = libc::O_NONBLOCK;

// ---------------------------------------------------------------- tables

#[test]
fn open_flags_choose_the_lock_mode_and_close_drops_it() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    for (flags, want) in [(RO, "PR"), (RW, "EX"), (WO, "EX")] {
        let h = m.hold("dom/res", flags).opened();
        assert_eq!(
            granted(&l, "dom", "res"),
            vec![(m.pid(), want.to_owned())],
            "open flags {flags:#o}"
        );
        h.close();
        assert!(
            eventually(10, || granted(&l, "dom", "res").is_empty()),
            "the lock stayed after close (flags {flags:#o})"
        );
    }
}

#[test]
fn trylock_fails_with_etxtbsy_while_dlmctl_holds_ex() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    let d = DlmctlHold::start(&l, &["dom", "res"]);
    assert!(eventually(10, || granted(&l, "dom", "res") == ex(d.pid())));
    for flags in ["O_RDONLY", "O_RDWR", "O_WRONLY"] {
        assert_eq!(
            m.py(&format!(
                "os.close(os.open(M + '/dom/res', os.{flags} | os.O_NONBLOCK))"
            )),
            "ETXTBSY",
            "{flags} | O_NONBLOCK"
        );
    }
    drop(d);
    assert!(eventually(10, || {
        m.py("os.close(os.open(M + '/dom/res', os.O_RDWR | os.O_NONBLOCK))") == "ok"
    }));
}

#[test]
fn open_needs_o_creat_for_a_name_never_created() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    std::fs::create_dir(m.path("dom")).unwrap();
    // lockd knows this resource (it has a value block), dlmfs does not.
    assert_eq!(l.run(&["lvb", "set", "dom", "known", "v"]).0, 0);
    for name in ["never", "known"] {
        assert_eq!(
            m.py(&format!("os.open(M + '/dom/{name}', os.O_RDWR)")),
            "ENOENT"
        );
    }
    assert_eq!(m.py("os.open(M + '/nodom/r', os.O_RDWR)"), "ENOENT");
    assert_eq!(
        m.py("os.open(M + '/nodom/r', os.O_RDWR | os.O_CREAT)"),
        "ENOENT"
    );
    assert_eq!(
        m.py("os.close(os.open(M + '/dom/known', os.O_RDWR | os.O_CREAT))"),
        "ok"
    );
    assert_eq!(m.py("os.close(os.open(M + '/dom/known', os.O_RDWR))"), "ok");
    assert_eq!(
        m.py("os.open(M + '/dom/known', os.O_RDWR | os.O_CREAT | os.O_EXCL)"),
        "EEXIST"
    );
    let (code, out) = m.sh("ls dom");
    assert_eq!((code, out.trim()), (0, "known"));
    let meta = std::fs::metadata(m.path("dom/known")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 64, "the size is the value block's");
}

#[test]
fn value_block_read_and_write_rules() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    // In EX: at most 64 bytes from the offset; ENOSPC from 64 on; reads
    // stop at 64.
    let r = m.py("fd = os.open(M + '/dom/res', os.O_RDWR)
    assert os.write(fd, b'x' * 100) == 64
    assert os.pwrite(fd, b'0123456789', 60) == 4
    assert len(os.pread(fd, 4096, 0)) == 64
    assert os.pread(fd, 10, 64) == b''
    assert os.pread(fd, 10, 60) == b'0123'
    assert os.fstat(fd).st_size == 64
    try:
        os.pwrite(fd, b'z', 64)
        raise SystemExit('wrote at 64')
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    assert os.pwrite(fd, b'hello\\0', 0) == 6
    assert os.pread(fd, 64, 0).split(b'\\0')[0] == b'hello'
    os.close(fd)");
    assert_eq!(r, "ok");
    // Visible to dlmctl and to the next opener, in PR.
    let (code, out, _) = l.run(&["lvb", "get", "dom", "res"]);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let mut h = m.hold("dom/res", RO).opened();
    assert_eq!(h.ask("read"), "data hello");
    // Writing needs EX: a file opened O_RDONLY is not writable (the
    // kernel answers EBADF before dlmfs is asked).
    assert_eq!(h.ask("write nope"), "err EBADF");
    h.close();
    // A value written elsewhere is read fresh (direct I/O, no page cache).
    assert_eq!(l.run(&["lvb", "set", "dom", "res", "from-dlmctl"]).0, 0);
    let mut h = m.hold("dom/res", RW).opened();
    assert_eq!(h.ask("read"), "data from-dlmctl");
    assert_eq!(h.ask("write again"), "wrote 5");
    assert_eq!(h.ask("read"), "data againdlmctl");
    h.close();
    let (_, out, _) = l.run(&["lvb", "get", "dom", "res"]);
    assert_eq!(out, "againdlmctl\n");
    // O_WRONLY takes EX and may write too.
    assert_eq!(
        m.py("fd = os.open(M + '/dom/res', os.O_WRONLY); os.write(fd, b'w\\0'); os.close(fd)"),
        "ok"
    );
    assert_eq!(l.run(&["lvb", "get", "dom", "res"]).1, "w\n");
}

#[test]
fn close_releases_the_lock_for_dlmctl() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    let h = m.hold("dom/res", RW).opened();
    let (code, _, err) = l.run(&["lock", "-n", "dom", "res", "--", "true"]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("held EX"), "{err}");
    h.close();
    // FUSE delivers the release just after close returns.
    assert!(eventually(10, || l
        .run(&["lock", "-n", "dom", "res", "--", "true"])
        .0
        == 0));
}

#[test]
fn mkdir_rmdir_and_unlink() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    let m2 = Mount::start(&l, &[]);
    // mkdir joins without pinning: the domain lives while a mount uses it.
    std::fs::create_dir(m.path("dom")).unwrap();
    assert_eq!(domain_users(&l, "dom"), Some((1, false)));
    std::fs::create_dir(m2.path("dom")).unwrap();
    assert_eq!(domain_users(&l, "dom"), Some((2, false)));
    assert_eq!(m.py("os.mkdir(M + '/dom')"), "EEXIST");
    // Names: domains under 64 bytes, locks under 32, as the kernel's dlmfs.
    assert_eq!(
        m.py(&format!("os.mkdir(M + '/{}')", "d".repeat(64))),
        "ENAMETOOLONG"
    );
    assert_eq!(m.py(&format!("os.mkdir(M + '/{}')", "d".repeat(63))), "ok");
    assert_eq!(
        m.py(&format!(
            "os.open(M + '/dom/{}', os.O_RDWR | os.O_CREAT)",
            "r".repeat(32)
        )),
        "ENAMETOOLONG"
    );
    assert_eq!(
        m.py(&format!(
            "os.close(os.open(M + '/dom/{}', os.O_RDWR | os.O_CREAT))",
            "r".repeat(31)
        )),
        "ok"
    );
    // Domains only at the top, files only in domains.
    assert_eq!(m.py("os.mkdir(M + '/dom/sub')"), "EPERM");
    assert_eq!(
        m.py("os.open(M + '/top', os.O_RDWR | os.O_CREAT)"),
        "EACCES"
    );
    // rmdir: ENOTEMPTY while it has files; unlink: EBUSY while open.
    m.create_file("dom/res");
    assert_eq!(m.py("os.rmdir(M + '/dom')"), "ENOTEMPTY");
    let h = m.hold("dom/res", RO).opened();
    assert_eq!(m.py("os.unlink(M + '/dom/res')"), "EBUSY");
    h.close();
    assert!(eventually(10, || m.py("os.unlink(M + '/dom/res')") == "ok"));
    assert_eq!(
        m.py(&format!("os.unlink(M + '/dom/{}')", "r".repeat(31))),
        "ok"
    );
    assert_eq!(m.py("os.open(M + '/dom/res', os.O_RDWR)"), "ENOENT");
    let (code, out) = m.sh("ls -A dom");
    assert_eq!((code, out.as_str()), (0, ""));
    // The node stays in the domain while the other mount uses it.
    assert_eq!(m.py("os.rmdir(M + '/dom')"), "ok");
    assert_eq!(domain_users(&l, "dom"), Some((1, false)));
    assert!(!m.path("dom").exists());
    assert_eq!(m2.py("os.rmdir(M + '/dom')"), "ok");
    assert_eq!(domain_users(&l, "dom"), None, "the domain goes when unused");
    // A domain can be joined again.
    std::fs::create_dir(m.path("dom")).unwrap();
    assert_eq!(domain_users(&l, "dom"), Some((1, false)));
    let (code, out) = m.sh("ls");
    assert_eq!(code, 0);
    assert_eq!(out, format!("{}\ndom\n", "d".repeat(63)));
}

impl Mount {
    fn create_file(&self, rel: &str) {
        assert_eq!(
            self.py(&format!(
                "os.close(os.open(M + '/{rel}', os.O_RDONLY | os.O_CREAT, 0o644))"
            )),
            "ok"
        );
    }
}

#[test]
fn modes_and_owners_are_enforced_locally() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    const NOBODY: u32 = 65534;
    // mkdir's mode (after the umask) and the creator are kept.
    assert_eq!(m.py("os.umask(0o022); os.mkdir(M + '/dom', 0o750)"), "ok");
    let meta = std::fs::metadata(m.path("dom")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o750, 0));
    assert_eq!(m.py_as("os.listdir(M + '/dom')", Some(NOBODY)), "EACCES");
    assert_eq!(m.py("os.chmod(M + '/dom', 0o755)"), "ok");
    assert_eq!(
        m.py_as(
            "os.open(M + '/dom/x', os.O_RDWR | os.O_CREAT)",
            Some(NOBODY)
        ),
        "EACCES",
        "nobody may not create in a root-owned 0755 directory"
    );
    // open's mode is kept too.
    assert_eq!(
        m.py("os.umask(0); os.close(os.open(M + '/dom/res', os.O_RDONLY | os.O_CREAT, 0o600))"),
        "ok"
    );
    assert_eq!(
        std::fs::metadata(m.path("dom/res")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        m.py_as("os.open(M + '/dom/res', os.O_RDONLY)", Some(NOBODY)),
        "EACCES"
    );
    // chown, then chmod, locally.
    assert_eq!(
        m.py(&format!("os.chown(M + '/dom/res', {NOBODY}, {NOBODY})")),
        "ok"
    );
    let meta = std::fs::metadata(m.path("dom/res")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
    assert_eq!(
        m.py_as("os.close(os.open(M + '/dom/res', os.O_RDWR))", Some(NOBODY)),
        "ok"
    );
    assert_eq!(
        m.py_as("os.chmod(M + '/dom/res', 0o400)", Some(NOBODY)),
        "ok"
    );
    assert_eq!(
        m.py_as("os.open(M + '/dom/res', os.O_RDWR)", Some(NOBODY)),
        "EACCES"
    );
    assert_eq!(
        m.py_as(
            "os.close(os.open(M + '/dom/res', os.O_RDONLY))",
            Some(NOBODY)
        ),
        "ok"
    );
    // Only root may give a file away.
    assert_eq!(
        m.py_as("os.chown(M + '/dom/res', 0, 0)", Some(NOBODY)),
        "EPERM"
    );
    // A lock taken by another user through dlmfs still excludes root.
    let h = Holder::spawn(&m.path("dom/res"), RO, Some(NOBODY)).opened();
    assert_eq!(granted(&l, "dom", "res"), pr(m.pid()));
    h.close();
}

// ---------------------------------------------------------------- caching

#[test]
fn local_opens_share_one_lock_by_default() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    // Two O_RDWR opens from two processes: both succeed, one EX lock.
    let a = m.hold("dom/res", RW).opened();
    let b = m.hold("dom/res", RW).opened();
    assert_eq!(granted(&l, "dom", "res"), ex(m.pid()));
    a.close();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(granted(&l, "dom", "res"), ex(m.pid()), "b still holds it");
    b.close();
    assert!(eventually(10, || granted(&l, "dom", "res").is_empty()));
    // PR, then EX converts the mount's lock up; closing the EX file
    // converts it down.
    let r = m.hold("dom/res", RO).opened();
    assert_eq!(granted(&l, "dom", "res"), pr(m.pid()));
    let w = m.hold("dom/res", RW).opened();
    assert_eq!(granted(&l, "dom", "res"), ex(m.pid()));
    w.close();
    assert!(eventually(10, || granted(&l, "dom", "res") == pr(m.pid())));
    // Now dlmctl can share it in PR but not take EX.
    assert_eq!(
        l.run(&["lock", "-n", "--pr", "dom", "res", "--", "true"]).0,
        0
    );
    assert_eq!(l.run(&["lock", "-n", "dom", "res", "--", "true"]).0, 75);
    r.close();
    assert!(eventually(10, || granted(&l, "dom", "res").is_empty()));
}

#[test]
fn exclusive_option_makes_local_opens_exclude_each_other() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &["-o", "exclusive"]);
    m.create("dom", &["res"]);
    let a = m.hold("dom/res", RW).opened();
    assert_eq!(
        m.hold("dom/res", RW | NB).line(20.0).as_deref(),
        Some("err ETXTBSY")
    );
    let b = m.hold("dom/res", RW);
    assert_eq!(b.line(1.5), None, "the second O_RDWR open waits");
    assert!(eventually(10, || locks(&l, "dom", "res") == (ex(m.pid()), 1)));
    a.close();
    let b = b.opened();
    b.close();
    // Shared opens still share the resource, each with its own lock.
    let r1 = m.hold("dom/res", RO).opened();
    let r2 = m.hold("dom/res", RO).opened();
    let mut both = pr(m.pid());
    both.extend(pr(m.pid()));
    assert_eq!(granted(&l, "dom", "res"), both);
    r1.close();
    r2.close();
    assert!(eventually(10, || granted(&l, "dom", "res").is_empty()));
}

#[test]
fn dlmfs_and_dlmctl_exclude_each_other() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    // A lock taken through dlmfs blocks dlmctl...
    let h = m.hold("dom/res", RW).opened();
    assert_eq!(l.run(&["lock", "-n", "dom", "res", "--", "true"]).0, 75);
    assert_eq!(
        l.run(&["lock", "-n", "--pr", "dom", "res", "--", "true"]).0,
        75
    );
    h.close();
    // ...and one taken by dlmctl blocks an open, which completes once
    // dlmctl lets go.
    let d = DlmctlHold::start(&l, &["dom", "res"]);
    assert!(eventually(10, || granted(&l, "dom", "res") == ex(d.pid())));
    let h = m.hold("dom/res", RO);
    assert_eq!(h.line(1.5), None, "the open waits for dlmctl's lock");
    assert_eq!(locks(&l, "dom", "res").1, 1, "queued in lockd");
    drop(d);
    let h = h.opened();
    assert_eq!(granted(&l, "dom", "res"), pr(m.pid()));
    h.close();
}

// ---------------------------------------------------------------- poll

#[test]
fn poll_reports_pollin_when_dlmctl_waits() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    let mut h = m.hold("dom/res", RW).opened();
    assert_eq!(h.ask("poll 300"), "poll 0", "nobody waits yet");
    let mut waiter = l.dlmctl();
    waiter
        .args(["lock", "dom", "res", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut waiter = waiter.spawn().unwrap();
    assert_eq!(h.ask("poll 30000"), format!("poll {}", libc::POLLIN));
    assert!(waiter.try_wait().unwrap().is_none(), "dlmctl still waits");
    h.close();
    let st = wait_for(&mut waiter, 20).expect("dlmctl got the lock after close");
    assert!(st.success());
}

#[test]
fn poll_in_exclusive_mode_reports_a_local_waiter() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    let m = Mount::start(&l, &["-o", "exclusive"]);
    m.create("dom", &["res"]);
    let mut a = m.hold("dom/res", RW).opened();
    let b = m.hold("dom/res", RO);
    assert_eq!(a.ask("poll 30000"), format!("poll {}", libc::POLLIN));
    assert_eq!(b.line(0.5), None);
    a.close();
    let b = b.opened();
    assert_eq!(granted(&l, "dom", "res"), pr(m.pid()));
    b.close();
}

// ---------------------------------------------------------------- endings

#[test]
fn sigterm_and_unmount_release_every_lock() {
    require_fuse();
    let _s = serial();
    let l = Lockd::start();
    // SIGTERM with a file open: the lock goes, the mount goes, exit 0.
    let mut m = Mount::start(&l, &[]);
    m.create("dom", &["res"]);
    let mut h = m.hold("dom/res", RW).opened();
    assert_eq!(granted(&l, "dom", "res"), ex(m.pid()));
    let st = m.terminate();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log());
    assert!(!is_mounted(&m.mnt));
    assert!(eventually(10, || domain_users(&l, "dom").is_none()));
    assert_eq!(l.run(&["lock", "-n", "dom", "res", "--", "true"]).0, 0);
    assert_eq!(h.ask("read"), "err ENOTCONN");
    drop(h);
    // A plain unmount: exit 0, domains left.
    let mut m = Mount::start(&l, &[]);
    m.create("dom2", &["res"]);
    let h = m.hold("dom2/res", RO).opened();
    h.close();
    assert_eq!(domain_users(&l, "dom2"), Some((1, false)));
    assert!(eventually(10, || {
        output(Command::new("fusermount3").arg("-u").arg(&m.mnt))
            .status
            .success()
    }));
    let st = wait_for(&mut m.child, 20).expect("dlmfs exits after unmount");
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log());
    assert_eq!(domain_users(&l, "dom2"), None);
    assert!(granted(&l, "dom2", "res").is_empty());
}

#[test]
fn lockd_going_away_fails_opens_with_eio() {
    require_fuse();
    let _s = serial();
    let mut l = Lockd::start();
    let m = Mount::start(&l, &[]);
    m.create("dom", &["res", "other"]);
    let mut held = m.hold("dom/other", RW).opened();
    let d = DlmctlHold::start(&l, &["dom", "res"]);
    assert!(eventually(10, || granted(&l, "dom", "res") == ex(d.pid())));
    let blocked = m.hold("dom/res", RW);
    assert_eq!(blocked.line(1.0), None);
    kill(l.child.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = l.child.wait();
    blocked.expect("err EIO", 20.0);
    assert_eq!(m.py("os.open(M + '/dom/res', os.O_RDWR)"), "EIO");
    assert_eq!(held.ask("read"), "err EIO", "the lock is gone");
    held.close();
    drop(d);
    // A new lockd on the socket: the next open connects again.
    l.child = Lockd::spawn(&l.socket, l.dir.path(), &[]);
    l.wait_ready();
    assert_eq!(
        m.py("os.close(os.open(M + '/dom/res', os.O_RDWR))"),
        "ok",
        "log:\n{}",
        m.log()
    );
    assert_eq!(domain_users(&l, "dom"), Some((1, false)));
}

// ---------------------------------------------------------------- CLI

#[test]
fn exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = output(
            Command::new(bin("dlmfs"))
                .args(args)
                .env("LOCKD_NO_AUTOSTART", "1")
                .env("O2CB_CONFIG_FILE", "/nonexistent/cluster.conf")
                .stdin(Stdio::null()),
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mnt = dir.path().to_str().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();
    let (code, err) = run(&[mnt, "--socket", sock, "-o", "bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(run(&[]).0, 2);
    let (code, err) = run(&[mnt, "--socket", sock]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("lockd is not running"), "{err}");
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    let (code, err) = run(&[file.to_str().unwrap(), "--socket", sock]);
    assert_eq!(code, 1, "{err}");
    let (code, help) = {
        let out = output(Command::new(bin("dlmfs")).arg("--help"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(
        help.contains("ETXTBSY") && help.contains("exclusive"),
        "{help}"
    );
}
