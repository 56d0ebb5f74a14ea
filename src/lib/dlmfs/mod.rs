//! dlmfs: the lock manager as a FUSE file system, with the semantics of the
//! kernel's `ocfs2_dlmfs` (see `dlmfs(8)`).
//!
//! | operation | effect |
//! |---|---|
//! | `mkdir DOMAIN` (top level only, name < 64 bytes) | joins the domain (`Join { pin: false }`) |
//! | `rmdir DOMAIN` | stops this mount's use of it (`Leave { force: false }`); `ENOTEMPTY` while it has files |
//! | `open(DOMAIN/LOCK, O_CREAT)` (name < 32 bytes) | creates the resource file; without `O_CREAT` a name never created is `ENOENT` |
//! | `open(O_RDONLY)` / `open(O_RDWR or O_WRONLY)` | takes PR / EX, waiting for the grant |
//! | `O_NONBLOCK` | trylock: `ETXTBSY` when busy |
//! | `close` (the last one of an open file) | drops the hold on the lock |
//! | `read` / `write` | the 64-byte value block (write needs EX; `ENOSPC` at offset 64 or more) |
//! | `poll` | `POLLIN` while another lock waits for ours |
//! | `unlink` | destroys the resource file; `EBUSY` while open or being opened |
//! | modes, `chown` | kept per inode and enforced by the kernel (`default_permissions`) |
//!
//! # Design
//!
//! Three threads, one owner of the state:
//!
//! - The **FUSE thread** (fuser's session loop) reads the kernel's requests
//!   one at a time. It decides nothing: each request, with its fuser reply
//!   object, goes down a channel to the engine (`fs.rs`). So it never waits
//!   for a lock, and the `release` that frees a lock can always come through
//!   while an `open` waits for it.
//! - The **engine thread** (`engine.rs`) owns the [`state::Core`], a pure
//!   state machine (inodes, open files, lockd locks, tags of requests in
//!   flight). It feeds it the file system requests and lockd's messages, and
//!   carries out its outputs: requests written to lockd, replies sent to the
//!   kernel (maybe long after the request: a waiting `open`), poll
//!   notifications.
//! - The **lockd reader thread** (`link.rs`) decodes what lockd sends on the
//!   mount's one connection (`crate::proto`) and passes it to the engine.
//!   Replies carry the tag of their request, events the lock id; the core
//!   maps both back to what waits for them.
//!
//! One lockd connection serves the whole mount, so lockd sees one client:
//! its locks show dlmfs's pid, and they all go when the connection does
//! (dlmfs killed, or lockd gone). A signal thread turns SIGTERM, SIGINT and
//! SIGHUP into a clean stop.
//!
//! # Lock caching
//!
//! By default (as the kernel's dlmfs: "userspace programs are assumed to
//! handle their own local locking") a resource has one lockd lock for the
//! mount, held at the highest mode its open files need, and local opens
//! share it: two `O_RDWR` opens on one node both succeed. An open that needs
//! more than the cached mode converts it up (waiting like any request); when
//! the last EX file closes while PR files remain, the lock is converted down
//! to PR; when the last file closes, it is released. While another lock
//! waits for ours (a blocking notification arrived), new local opens that
//! conflict with it wait until the lock has been given back and then queue
//! behind it, so the local node cannot starve the others; trylocks fail
//! with `ETXTBSY` instead.
//!
//! With `-o exclusive` every open has its own lockd lock, so local processes
//! exclude each other as they would with `flock`.
//!
//! The value block is read into the lock's slot when a new lock is granted
//! (no other lock can write it while ours is held in PR or EX), reads are
//! served from there, and writes go to lockd before `write` returns.
//!
//! # Differences from the kernel's dlmfs
//!
//! - FUSE sends `release` asynchronously: `close` returns a moment before
//!   the lock is dropped.
//! - A blocked `open` cannot be interrupted (fuser does not handle FUSE
//!   interrupts); it ends with the grant, an error (EIO when lockd goes), or
//!   the end of the mount. The kernel's dlmfs waits uninterruptibly too.
//! - `unlink` forgets the resource file; a value block already written stays
//!   in lockd while the domain exists (the protocol has no request to drop a
//!   resource).
//! - Writes with `O_APPEND` start at offset 0 (the kernel's dlmfs ignores
//!   `O_APPEND`; FUSE would otherwise write at 64).
//! - A lock lost while a file is open (lockd gone, root made the node leave
//!   the domain or broke the lock) makes that file's reads and writes fail
//!   with EIO and `poll` report `POLLERR`; new opens take a new lock. After
//!   lockd went away, the next `open` or `mkdir` connects again if a lockd
//!   answers (none is started then) and joins the domains again.
//!
//! May depend on: `client`, `proto`, `dlm` types, `fuser`, std, nix, libc.

mod engine;
mod fs;
mod link;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use fuser::{Config, MountOption, Session, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use crate::client::{ClientError, ConnectOptions};

/// Why dlmfs could not run.
#[derive(Debug, thiserror::Error)]
pub enum DlmfsError {
    /// lockd could not be reached (or started).
    #[error(transparent)]
    Lockd(#[from] ClientError),
    /// An unknown or malformed `-o` option.
    #[error(
        "unknown mount option '{0}' (known: exclusive, shared, allow_other, allow_root, default_permissions, ro, rw, nosuid, suid, nodev, dev, noexec, exec, noatime, atime, fsname=NAME)"
    )]
    BadOption(String),
    /// The mount point is not a directory.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Mounting failed.
    #[error("cannot mount on {}: {source}", path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The FUSE session failed.
    #[error("FUSE session: {0}")]
    Session(std::io::Error),
    /// A thread could not be started, or signals not set up.
    #[error("cannot start: {0}")]
    Setup(String),
}

impl DlmfsError {
    /// Whether lockd could not be reached (the tools exit 69).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DlmfsError::Lockd(e) if e.is_unreachable() || matches!(e, ClientError::Closed))
    }
}

/// The `-o` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// One lockd lock per open file: local opens exclude each other.
    pub exclusive: bool,
    /// Let every user in (subject to the file modes); the default for root.
    pub allow_other: bool,
    /// Let the mounting user and root in.
    pub allow_root: bool,
    /// Read-only mount.
    pub read_only: bool,
    /// Kernel mount flags (`nosuid`, `noexec`, ...), as given.
    pub flags: Vec<String>,
    /// The source name shown in the mount table (default `dlmfs`).
    pub fsname: Option<String>,
}

impl MountOptions {
    /// Parses comma-separated options; later ones win.
    pub fn parse(list: &str) -> Result<Self, DlmfsError> {
        let mut o = MountOptions::default();
        o.add(list)?;
        Ok(o)
    }

    /// Adds comma-separated options.
    pub fn add(&mut self, list: &str) -> Result<(), DlmfsError> {
        for opt in list.split(',').filter(|s| !s.is_empty()) {
            match opt {
                "exclusive" => self.exclusive = true,
                "shared" => self.exclusive = false,
                "allow_other" => self.allow_other = true,
                "allow_root" => self.allow_root = true,
                // Always on: the modes and owners are enforced by the kernel.
                "default_permissions" => {}
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "nosuid" | "suid" | "nodev" | "dev" | "noexec" | "exec" | "noatime" | "atime" => {
                    self.flags.push(opt.to_owned());
                }
                o if o.starts_with("fsname=") && o.len() > "fsname=".len() => {
                    self.fsname = Some(o["fsname=".len()..].to_owned());
                }
                other => return Err(DlmfsError::BadOption(other.to_owned())),
            }
        }
        Ok(())
    }

    fn fuser_config(&self, root: bool) -> Config {
        let mut opts = vec![
            MountOption::FSName(self.fsname.clone().unwrap_or_else(|| "dlmfs".into())),
            MountOption::DefaultPermissions,
        ];
        // mount(2) takes the subtype as a kernel option; fusermount3 as its own.
        opts.push(if root {
            MountOption::CUSTOM("subtype=dlmfs".into())
        } else {
            MountOption::Subtype("dlmfs".into())
        });
        opts.push(if self.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        for f in &self.flags {
            opts.push(match f.as_str() {
                "nosuid" => MountOption::NoSuid,
                "suid" => MountOption::Suid,
                "nodev" => MountOption::NoDev,
                "dev" => MountOption::Dev,
                "noexec" => MountOption::NoExec,
                "exec" => MountOption::Exec,
                "noatime" => MountOption::NoAtime,
                _ => MountOption::Atime,
            });
        }
        let mut cfg = Config::default();
        cfg.mount_options = opts;
        cfg.acl = if self.allow_other || (root && !self.allow_root) {
            SessionACL::All
        } else if self.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        cfg
    }
}

/// What to mount where.
#[derive(Clone, Debug)]
pub struct DlmfsOptions {
    /// The mount point (an existing directory).
    pub mountpoint: PathBuf,
    /// How to reach lockd.
    pub connect: ConnectOptions,
    /// The `-o` options.
    pub mount: MountOptions,
}

/// Mounts dlmfs and serves it until it is unmounted or a signal (SIGTERM,
/// SIGINT, SIGHUP) stops it; every lock is given back and every domain left
/// before returning.
pub fn run(opts: &DlmfsOptions) -> Result<(), DlmfsError> {
    if !opts.mountpoint.is_dir() {
        return Err(DlmfsError::NotADirectory(opts.mountpoint.clone()));
    }
    // Block the stop signals before any thread starts, so that only the
    // signal thread sees them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| DlmfsError::Setup(format!("blocking signals: {e}")))?;

    let conn = link::connect(&opts.connect, true)?;
    let (tx, rx) = mpsc::channel();
    link::spawn_reader(
        conn.reader,
        conn.leftover,
        engine::from_lockd(tx.clone(), 1),
    )
    .map_err(|e| DlmfsError::Setup(e.to_string()))?;
    let euid = nix::unistd::geteuid();
    let core = state::Core::new(state::CoreConfig {
        exclusive: opts.mount.exclusive,
        uid: euid.as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        now: SystemTime::now(),
    });
    let engine = engine::Engine::new(core, conn.link, opts.connect.clone(), tx.clone());
    let engine_thread = std::thread::Builder::new()
        .name("dlmfs-engine".into())
        .spawn(move || engine.run(rx))
        .map_err(|e| DlmfsError::Setup(e.to_string()))?;

    let config = opts.mount.fuser_config(euid.is_root());
    let session = match Session::new(fs::DlmFs::new(tx.clone()), &opts.mountpoint, &config) {
        Ok(s) => s,
        Err(source) => {
            stop_engine(&tx);
            let _ = engine_thread.join();
            return Err(DlmfsError::Mount {
                path: opts.mountpoint.clone(),
                source,
            });
        }
    };
    tracing::info!(
        mountpoint = %opts.mountpoint.display(),
        exclusive = opts.mount.exclusive,
        "mounted"
    );
    let mut session = session;
    let unmounter = session.unmount_callable();
    let mountpoint = opts.mountpoint.clone();
    let sig_tx = tx.clone();
    std::thread::Builder::new()
        .name("dlmfs-signals".into())
        .spawn(move || on_signal(signals, sig_tx, unmounter, &mountpoint))
        .map_err(|e| DlmfsError::Setup(e.to_string()))?;

    let r = session.run();
    tracing::info!("unmounted");
    stop_engine(&tx);
    let _ = engine_thread.join();
    r.map_err(DlmfsError::Session)
}

/// Asks the engine to give everything back and waits (a bounded time).
fn stop_engine(tx: &mpsc::Sender<engine::Input>) {
    let (done_tx, done_rx) = mpsc::channel();
    if tx.send(engine::Input::Shutdown(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
    }
}

/// Waits for a stop signal, then gives every lock back (answering waiting
/// opens with EIO), unmounts, and exits if the mount cannot go at once
/// (files still open: it is detached, and they see the file system gone).
fn on_signal(
    signals: SigSet,
    tx: mpsc::Sender<engine::Input>,
    mut unmounter: fuser::SessionUnmounter,
    mountpoint: &Path,
) {
    let sig = match signals.wait() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("waiting for signals: {e}");
            return;
        }
    };
    tracing::info!("{sig}: unmounting");
    stop_engine(&tx);
    if let Err(e) = unmounter.unmount() {
        tracing::info!("unmount: {e}; detaching");
        detach(mountpoint);
    }
    // A clean unmount ends the session and `run` returns; a detached mount
    // lives while files are open, so stop serving it.
    std::thread::sleep(Duration::from_secs(2));
    std::process::exit(0);
}

/// Lazy unmount: directly as root, else through fusermount3.
fn detach(mountpoint: &Path) {
    if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid NUL-terminated path; umount2 only reads it.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return;
        }
    }
    for prog in ["fusermount3", "fusermount"] {
        let ok = std::process::Command::new(prog)
            .args(["-u", "-z", "-q", "--"])
            .arg(mountpoint)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
    }
    tracing::error!("cannot unmount {}", mountpoint.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let o = MountOptions::parse("exclusive,allow_other,nosuid,fsname=x").unwrap();
        assert!(o.exclusive && o.allow_other);
        assert_eq!(o.flags, ["nosuid"]);
        assert_eq!(o.fsname.as_deref(), Some("x"));
        let mut o = MountOptions::parse("exclusive").unwrap();
        o.add("shared,,default_permissions").unwrap();
        assert!(!o.exclusive);
        assert!(matches!(
            MountOptions::parse("exclusive,bogus"),
            Err(DlmfsError::BadOption(b)) if b == "bogus"
        ));
        assert!(MountOptions::parse("fsname=").is_err());
    }

    #[test]
    fn root_mounts_let_every_user_in() {
        assert_eq!(
            MountOptions::default().fuser_config(true).acl,
            SessionACL::All
        );
        assert_eq!(
            MountOptions::default().fuser_config(false).acl,
            SessionACL::Owner
        );
        let o = MountOptions::parse("allow_root").unwrap();
        assert_eq!(o.fuser_config(false).acl, SessionACL::RootAndOwner);
    }
}
