//! Taking lockd's socket: the lock file that makes one lockd per socket,
//! a stale socket file replaced, the socket bound and opened to every
//! local user.
//!
//! May depend on: the parent module, `client` (asking a running lockd its
//! pid), std, nix (flock).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use tracing::info;

use super::{Daemon, DaemonOptions};

/// Why lockd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another lockd serves this socket.
    #[error("another lockd is already running on {}{}", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
        /// Its pid, if it answered.
        pid: Option<u32>,
    },
    /// A system call failed while setting up.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The pid of the lockd answering on `path`, if one answers within 2 s.
fn running_pid(path: &std::path::Path) -> Option<u32> {
    let mut c = crate::client::Client::connect(path).ok()?;
    c.set_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    c.lockd_pid().ok()
}

impl Daemon {
    /// Takes the socket: refuses if another lockd holds it, replaces a stale
    /// socket file, binds, and makes the socket usable by every local user
    /// (access is decided per request by uid).
    pub fn bind(opts: DaemonOptions) -> Result<Daemon, StartError> {
        let sock = &opts.socket;
        let io_err =
            |what: &'static str, path: PathBuf| move |source| StartError::Io { what, path, source };
        sock.ensure_dir()
            .map_err(io_err("cannot create the directory of", sock.dir()))?;
        let lock_path = sock.lock_file();
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("cannot open", lock_path.clone()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            StartError::AlreadyRunning {
                path: sock.path.clone(),
                pid: running_pid(&sock.path),
            }
        })?;
        if sock.path.exists() {
            if let Some(pid) = running_pid(&sock.path) {
                return Err(StartError::AlreadyRunning {
                    path: sock.path.clone(),
                    pid: Some(pid),
                });
            }
            info!(socket = %sock.path.display(), "replacing a stale socket file");
            std::fs::remove_file(&sock.path)
                .map_err(io_err("cannot remove the stale socket", sock.path.clone()))?;
        }
        let listener = UnixListener::bind(&sock.path)
            .map_err(io_err("cannot listen on", sock.path.clone()))?;
        std::fs::set_permissions(&sock.path, std::fs::Permissions::from_mode(0o666))
            .map_err(io_err("cannot set the mode of", sock.path.clone()))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot configure", sock.path.clone()))?;
        Ok(Daemon {
            opts,
            listener,
            _lock: lock,
        })
    }
}
