//! Reaching lockd: the options ([`ConnectOptions`]: which socket, whether
//! and what to start), and starting a single-node lockd when none answers
//! (never when `cluster.conf` names a cluster: a private lockd would hand
//! out locks the cluster does not see).
//!
//! May depend on: `config`, `client` (the connection itself), std, nix.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Client, ClientError, SocketPath};

/// The environment variable that turns autostart off when set to `1`.
pub const NO_AUTOSTART_ENV: &str = "LOCKD_NO_AUTOSTART";
/// How long a tool waits for an autostarted lockd to answer.
pub const AUTOSTART_WAIT: Duration = Duration::from_secs(5);

/// The program started as a single-node lockd when none answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockdProgram {
    /// The running executable, started with argv\[0\] `lockd`: every
    /// o2tools tool runs lockd when started so (`cli::dispatch`), so a lone
    /// `dlmctl` is enough. Only for executables that do that.
    ThisExecutable,
    /// A `lockd` beside the running executable (or one directory up, where
    /// cargo puts test binaries), else on `PATH`. The default.
    Installed,
    /// This lockd executable.
    Path(PathBuf),
}

/// How to reach lockd.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The socket.
    pub socket: SocketPath,
    /// Start a single-node lockd when none answers.
    pub autostart: bool,
    /// What to start.
    pub lockd: LockdProgram,
    /// How long to wait for a started lockd.
    pub wait: Duration,
}

impl ConnectOptions {
    /// The socket as every tool finds it (`--socket` given as `socket`), with
    /// autostart unless `$LOCKD_NO_AUTOSTART` is `1`.
    pub fn from_env(socket: Option<&Path>) -> Self {
        ConnectOptions {
            socket: SocketPath::resolve(socket),
            autostart: std::env::var(NO_AUTOSTART_ENV).as_deref() != Ok("1"),
            lockd: LockdProgram::Installed,
            wait: AUTOSTART_WAIT,
        }
    }
}

/// The cluster that `cluster.conf` (as `o2cb` would find it) names, if any.
pub fn configured_cluster() -> Option<(PathBuf, String)> {
    let path = crate::config::config_path(None);
    let conf = crate::config::load(&path).ok()?;
    let name = conf.clusters.first()?.name.clone();
    Some((path, name))
}

/// The installed lockd: beside the running executable (or one directory
/// up, where cargo puts test binaries), else on `PATH`.
fn installed_lockd() -> Result<PathBuf, ClientError> {
    let exe = std::env::current_exe()
        .map_err(|e| ClientError::Autostart(format!("cannot find our own executable: {e}")))?;
    find_lockd(&exe, std::env::var_os("PATH").as_deref()).ok_or_else(|| {
        ClientError::Autostart(format!("no lockd beside {} or on PATH", exe.display()))
    })
}

/// The first file named `lockd` beside `exe`, one directory up, or in a
/// directory of `path` (a `PATH` value).
fn find_lockd(exe: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let beside = [dir, dir.parent().unwrap_or(dir)].map(|d| d.join("lockd"));
    let on_path: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).map(|d| d.join("lockd")).collect())
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| p.is_file())
}

/// The running executable, as the kernel knows it (so it works even when
/// the file was replaced since it started).
fn this_executable() -> PathBuf {
    let proc_self = Path::new("/proc/self/exe");
    if proc_self.exists() {
        proc_self.to_owned()
    } else {
        std::env::current_exe().unwrap_or_else(|_| proc_self.to_owned())
    }
}

/// Starts a single-node lockd on `socket`, in its own session, with its output
/// in the log file beside the socket.
fn start_lockd(opts: &ConnectOptions) -> Result<(), ClientError> {
    let (lockd, argv0) = match &opts.lockd {
        LockdProgram::ThisExecutable => (this_executable(), Some("lockd")),
        LockdProgram::Installed => (installed_lockd()?, None),
        LockdProgram::Path(p) => (p.clone(), None),
    };
    opts.socket
        .ensure_dir()
        .map_err(|e| ClientError::Autostart(e.to_string()))?;
    let log_path = opts.socket.log_file();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| ClientError::Autostart(format!("{}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| ClientError::Autostart(e.to_string()))?;
    let mut cmd = Command::new(&lockd);
    if let Some(a0) = argv0 {
        cmd.arg0(a0);
    }
    // A daemon keeps no directory busy: it runs in /, told where its
    // socket is in full.
    let socket = std::path::absolute(&opts.socket.path)
        .map_err(|e| ClientError::Autostart(format!("{}: {e}", opts.socket.path.display())))?;
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--autostarted")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError::Autostart(format!("{}: {e}", lockd.display())))?;
    // Reap it in the background if it exits at once (it lost a race to
    // another lockd); otherwise it outlives us, reparented to init.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

impl Client {
    /// Connects to the lockd at `path` (no autostart).
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Unreachable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Client::handshake(stream)
    }

    /// Connects as the tools do: to the socket of `opts`, starting a
    /// single-node lockd when none answers (unless autostart is off or a
    /// cluster is configured).
    pub fn connect_with(opts: &ConnectOptions) -> Result<Client, ClientError> {
        let path = &opts.socket.path;
        let first = match Self::connect(path) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        if !opts.autostart {
            return Err(first);
        }
        if let Some((config, cluster)) = configured_cluster() {
            return Err(ClientError::ClusterConfigured {
                path: path.clone(),
                config,
                cluster,
            });
        }
        start_lockd(opts)?;
        let deadline = Instant::now() + opts.wait;
        let mut last = first;
        while Instant::now() < deadline {
            match Self::connect(path) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(ClientError::Autostart(format!(
            "it did not answer within {} s ({last}); see {}",
            opts.wait.as_secs(),
            opts.socket.log_file().display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_lockd_is_beside_the_executable_one_up_or_on_path() {
        let t = tempfile::tempdir().unwrap();
        let (bin, deps, sbin) = (
            t.path().join("bin"),
            t.path().join("bin/deps"),
            t.path().join("sbin"),
        );
        for d in [&deps, &sbin] {
            std::fs::create_dir_all(d).unwrap();
        }
        let exe = deps.join("tool");
        let path = std::env::join_paths([&sbin]).unwrap();
        assert_eq!(find_lockd(&exe, Some(&path)), None);
        std::fs::write(sbin.join("lockd"), b"").unwrap();
        assert_eq!(find_lockd(&exe, Some(&path)), Some(sbin.join("lockd")));
        assert_eq!(find_lockd(&exe, None), None);
        std::fs::write(bin.join("lockd"), b"").unwrap();
        assert_eq!(find_lockd(&exe, Some(&path)), Some(bin.join("lockd")));
        std::fs::write(deps.join("lockd"), b"").unwrap();
        assert_eq!(find_lockd(&exe, Some(&path)), Some(deps.join("lockd")));
    }
}
