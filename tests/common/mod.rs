//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cluster;

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// A file or directory under `tests/data` (captures of the real tools; see
/// `tests/data/README.md`).
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// Path of one of our binaries, built by cargo for the tests.
pub fn bin(name: &str) -> PathBuf {
    let p = match name {
        "o2cb" => env!("CARGO_BIN_EXE_o2cb"),
        "lockd" => env!("CARGO_BIN_EXE_lockd"),
        "dlmctl" => env!("CARGO_BIN_EXE_dlmctl"),
        "dlmfs" => env!("CARGO_BIN_EXE_dlmfs"),
        "hb_ctl" => env!("CARGO_BIN_EXE_hb_ctl"),
        other => panic!("unknown binary {other}"),
    };
    PathBuf::from(p)
}

/// Whether we run as root (CI does; loop devices and mount namespaces need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails the test, in one line, unless it runs as root; `why` names what
/// needs it ("loop devices").
#[track_caller]
pub fn require_root(why: &str) {
    assert!(
        is_root(),
        "needs root ({why}): run the tests as root, as .ci/run does"
    );
}

/// Runs a command and returns its output, panicking with context when it
/// cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The full path of `prog`, found on PATH or in /usr/sbin or /sbin (which
/// a user's PATH may lack); fails the test, in one line naming the package
/// to install, when it is not there.
#[track_caller]
pub fn require_program(prog: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("needs {prog}: apt-get install -y {package}, as .ci/run does"))
}

/// A new directory under /tmp that every user can reach (mode 0755), for
/// what a test runs as another user: the checkout, or `$TMPDIR`, may sit in
/// a directory only its owner can enter (as /root is, mode 0700).
pub fn dir_for_others() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("o2tools-test.")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A copy of a program that every user can run (see [`dir_for_others`]);
/// the directory goes when this is dropped.
pub struct Reachable {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Copies `program` (one of ours, from the build directory) to a new
/// directory every user can reach, mode 0755.
pub fn copy_for_others(program: &Path) -> Reachable {
    let dir = dir_for_others();
    let path = dir.path().join(program.file_name().unwrap());
    std::fs::copy(program, &path)
        .unwrap_or_else(|e| panic!("cannot copy {} for another user: {e}", program.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Reachable { path, _dir: dir }
}

/// Makes `cmd` run as user and group `id` (no supplementary groups), in
/// `/`: a directory it can enter whatever the test's own is. Root only.
#[track_caller]
pub fn as_user(cmd: &mut Command, id: u32) -> &mut Command {
    require_root("acting as another user");
    cmd.uid(id).gid(id).current_dir("/")
}

/// An OCFS2 volume image made by the real mkfs.ocfs2, with the UUID of the
/// captured test volume, attached read-only to a loop device while alive.
pub struct LoopVolume {
    pub dev: String,
    _dir: tempfile::TempDir,
}

/// UUID given to test volumes (the one in the captures).
pub const VOLUME_UUID: &str = "0C7010EBE28F45CF9B64CB60642047A8";

/// Makes a 256 MiB sparse image with mkfs.ocfs2 as the captures did.
pub fn mkfs_image(dir: &Path) -> PathBuf {
    let mkfs = require_program("mkfs.ocfs2", "ocfs2-tools");
    let img = dir.join("vol.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(256 << 20).unwrap();
    let out = output(
        Command::new(mkfs)
            .args([
                "-q",
                "-N",
                "4",
                "-b",
                "4K",
                "-C",
                "4K",
                "-L",
                "test",
                "-U",
                "0C7010EB-E28F-45CF-9B64-CB60642047A8",
                "--cluster-stack=o2cb",
                "--cluster-name=c1",
            ])
            .arg(&img),
    );
    assert!(
        out.status.success(),
        "mkfs.ocfs2 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

impl LoopVolume {
    pub fn new() -> Self {
        require_root("loop devices");
        let losetup = require_program("losetup", "mount");
        let dir = tempfile::tempdir().unwrap();
        let img = mkfs_image(dir.path());
        let out = output(Command::new(losetup).args(["-f", "--show", "-r"]).arg(&img));
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        LoopVolume { dev, _dir: dir }
    }
}

impl Drop for LoopVolume {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A lockd started for one test, on its own socket, killed by pid when dropped.
/// Its output goes to a log file, never to the test's pipes.
pub struct Lockd {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Lockd {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// A lockd whose socket other users can reach (see [`dir_for_others`]).
    pub fn start_for_others() -> Self {
        Self::start_in(dir_for_others(), &[])
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let socket = dir.path().join("lockd.sock");
        let child = Self::spawn(&socket, dir.path(), extra);
        let l = Lockd { child, socket, dir };
        l.wait_ready();
        l
    }

    pub fn spawn(socket: &Path, dir: &Path, extra: &[&str]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("lockd.log"))
            .unwrap();
        Command::new(bin("lockd"))
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .env_remove("LOCKD_SETTINGS")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("lockd did not come up; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lockd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// dlmctl against this lockd (no autostart, no cluster.conf).
    pub fn dlmctl(&self) -> Command {
        self.dlmctl_at(&bin("dlmctl"))
    }

    /// As [`Lockd::dlmctl`], running the dlmctl at `program` (a copy).
    pub fn dlmctl_at(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("LOCKD_SOCKET", &self.socket)
            .env("LOCKD_NO_AUTOSTART", "1")
            .env("O2CB_CONFIG_FILE", "/nonexistent/cluster.conf")
            .env_remove("DLM_DOMAIN")
            .env_remove("DLM_RESOURCE")
            .env_remove("DLM_LOCK_ID")
            .stdin(std::process::Stdio::null());
        c
    }

    /// Runs dlmctl with `args`; returns (status, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = output(self.dlmctl().args(args));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Lockd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}

/// Polls `f` every 50 ms until it is true; panics naming `what` after `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses dlmctl's JSON output, or panics showing it.
pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Every process started by [`run_bounded`] and the cluster harness and
/// not reaped yet, by pid (a process group when true).
static LIVE: Mutex<Vec<(i32, bool)>> = Mutex::new(Vec::new());

pub(crate) fn track(pid: i32, group: bool) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((pid, group));
}

pub(crate) fn untrack(pid: i32) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&(p, _)| p != pid);
}

/// SIGKILL to every tracked process (or group): for a panic hook where a
/// panic aborts (a bench built with `panic = "abort"` runs no destructor).
pub fn kill_tracked() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for (pid, group) in live {
        let _ = if group {
            killpg(Pid::from_raw(pid), Signal::SIGKILL)
        } else {
            nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL)
        };
    }
}

/// Runs `cmd` in its own process group with the output captured; kills the
/// group and panics if it does not finish within `secs`.
pub fn run_bounded(cmd: &mut Command, secs: u64) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as i32;
    track(pid, true);
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
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
        if let Some(st) = child.try_wait().unwrap() {
            untrack(pid);
            break st;
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait();
            untrack(pid);
            let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
            panic!("{cmd:?} did not finish within {secs} s; stderr so far:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = String::from_utf8_lossy(&to.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    (code_of(status), out, err)
}

/// The exit status as a shell shows it (128 + N when killed by signal N).
pub fn code_of(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Writes `dir/cluster.conf` with our o2cb: cluster `cluster`, nodes
/// `node1`..`nodeN` numbered from 1 at `addrs` (one per node) on `port`,
/// and, with `global_heartbeat`, a heartbeat file `dir/heartbeat.img`
/// formatted by hb_ctl as the cluster's global region. Returns the path.
pub fn write_cluster_conf(
    dir: &Path,
    cluster: &str,
    addrs: &[String],
    port: u16,
    global_heartbeat: bool,
) -> PathBuf {
    let conf = dir.join("cluster.conf");
    let o2cb = |args: &[&str]| {
        let out = output(
            Command::new(bin("o2cb"))
                .args(args)
                .env("O2CB_CONFIG_FILE", &conf),
        );
        assert!(
            out.status.success(),
            "o2cb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    o2cb(&["add-cluster", cluster]);
    for (i, addr) in addrs.iter().enumerate() {
        let k = (i + 1).to_string();
        o2cb(&[
            "add-node",
            cluster,
            &format!("node{k}"),
            "--ip",
            addr,
            "--port",
            &port.to_string(),
            "--number",
            &k,
        ]);
    }
    if global_heartbeat {
        let region = dir.join("heartbeat.img");
        std::fs::File::create(&region)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let out = output(
            Command::new(bin("hb_ctl"))
                .args(["format", "--no-autostart"])
                .arg(&region),
        );
        assert!(
            out.status.success(),
            "hb_ctl format: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        o2cb(&["add-heartbeat", cluster, region.to_str().unwrap()]);
        o2cb(&["heartbeat-mode", cluster, "global"]);
    }
    conf
}
