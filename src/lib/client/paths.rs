//! Where lockd's socket is, for lockd and every tool alike.
//!
//! `--socket`, else `$LOCKD_SOCKET`, else `/run/o2tools/lockd.sock` when it
//! exists or the caller is root (so root and ordinary users share one lockd
//! and exclude each other), else a private socket in
//! `$XDG_RUNTIME_DIR/o2tools/` or `/tmp/o2tools-$UID/`.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The environment variable naming the socket.
pub const SOCKET_ENV: &str = "LOCKD_SOCKET";
/// The socket shared by all users of a machine.
pub const SHARED_SOCKET: &str = "/run/o2tools/lockd.sock";

/// A resolved socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketPath {
    /// The socket.
    pub path: PathBuf,
    /// Whether it is the machine-wide socket (directory 0755) rather than a
    /// private one (directory 0700).
    pub shared: bool,
}

impl SocketPath {
    /// Applies the documented search. `cli` is `--socket`.
    pub fn resolve(cli: Option<&Path>) -> SocketPath {
        let uid = nix::unistd::geteuid();
        let env = std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty());
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty());
        Self::resolve_with(
            cli,
            env.as_deref().map(Path::new),
            xdg.as_deref().map(Path::new),
            uid.as_raw(),
        )
    }

    /// The search with its inputs given (for tests).
    pub fn resolve_with(
        cli: Option<&Path>,
        env: Option<&Path>,
        xdg_runtime_dir: Option<&Path>,
        uid: u32,
    ) -> SocketPath {
        let shared = Path::new(SHARED_SOCKET);
        if let Some(p) = cli.or(env) {
            return SocketPath {
                path: p.to_owned(),
                shared: p == shared,
            };
        }
        if uid == 0 || shared.exists() {
            return SocketPath {
                path: shared.to_owned(),
                shared: true,
            };
        }
        let dir = match xdg_runtime_dir {
            Some(x) => x.join("o2tools"),
            None => PathBuf::from(format!("/tmp/o2tools-{uid}")),
        };
        SocketPath {
            path: dir.join("lockd.sock"),
            shared: false,
        }
    }

    /// The directory holding the socket (and lockd's lock and log files).
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// lockd's log file when it was started on demand.
    pub fn log_file(&self) -> PathBuf {
        self.dir().join("lockd.log")
    }

    /// The lock file that makes a second lockd on this socket refuse to start.
    pub fn lock_file(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        self.dir().join(name)
    }

    /// Creates the socket's directory if needed: 0755 for the shared socket,
    /// 0700 otherwise. An existing private directory must belong to us and
    /// not be a symbolic link (a squatted `/tmp` name is refused).
    pub fn ensure_dir(&self) -> io::Result<()> {
        let dir = self.dir();
        let mode = if self.shared { 0o755 } else { 0o700 };
        match fs::symlink_metadata(&dir) {
            Ok(m) => {
                if !m.is_dir() {
                    return Err(io::Error::other(format!(
                        "{} exists and is not a directory",
                        dir.display()
                    )));
                }
                let me = nix::unistd::geteuid().as_raw();
                if !self.shared && m.uid() != me && m.uid() != 0 {
                    return Err(io::Error::other(format!(
                        "{} belongs to uid {}, not to us (uid {me})",
                        dir.display(),
                        m.uid()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(&dir)?;
                // The umask may have narrowed the mode; set it exactly.
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order() {
        let cli = Path::new("/x/cli.sock");
        let env = Path::new("/x/env.sock");
        let xdg = Path::new("/run/user/1000");
        assert_eq!(
            SocketPath::resolve_with(Some(cli), Some(env), Some(xdg), 1000).path,
            cli
        );
        assert_eq!(
            SocketPath::resolve_with(None, Some(env), Some(xdg), 1000).path,
            env
        );
        let root = SocketPath::resolve_with(None, None, Some(xdg), 0);
        assert_eq!(root.path, Path::new(SHARED_SOCKET));
        assert!(root.shared);
        if !Path::new(SHARED_SOCKET).exists() {
            let user = SocketPath::resolve_with(None, None, Some(xdg), 1000);
            assert_eq!(user.path, Path::new("/run/user/1000/o2tools/lockd.sock"));
            assert!(!user.shared);
            let tmp = SocketPath::resolve_with(None, None, None, 1000);
            assert_eq!(tmp.path, Path::new("/tmp/o2tools-1000/lockd.sock"));
        }
        assert!(SocketPath::resolve_with(Some(Path::new(SHARED_SOCKET)), None, None, 5).shared);
    }

    #[test]
    fn private_directory_is_0700() {
        let d = tempfile::tempdir().unwrap();
        let s = SocketPath {
            path: d.path().join("sub/lockd.sock"),
            shared: false,
        };
        s.ensure_dir().unwrap();
        let m = fs::metadata(d.path().join("sub")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        assert_eq!(s.lock_file(), d.path().join("sub/lockd.sock.lock"));
        assert_eq!(s.log_file(), d.path().join("sub/lockd.log"));
        // A file where the directory should be is refused.
        let f = SocketPath {
            path: d.path().join("file/lockd.sock"),
            shared: false,
        };
        fs::write(d.path().join("file"), b"").unwrap();
        assert!(f.ensure_dir().is_err());
    }
}
