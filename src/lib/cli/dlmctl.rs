//! `dlmctl`: locks from the shell.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::client::{Client, ClientError, ConnectOptions, LockError, LockOptions};
use crate::dlm::{
    DlmError, Holder, LVB_LEN, LockId, LostReason, Lvb, MAX_NAME_LEN, Mode, ResourceInfo,
};

/// Exit statuses of dlmctl.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An error: deadlock, permission refused, no such lock...
    pub const ERROR: u8 = 1;
    /// Bad usage.
    pub const USAGE: u8 = 2;
    /// `lvb get`: the value block is marked invalid.
    pub const LVB_INVALID: u8 = 3;
    /// The lock was lost while the command ran.
    pub const LOST: u8 = 4;
    /// lockd could not be reached (or started).
    pub const UNREACHABLE: u8 = 69;
    /// Busy (trylock) or timed out; `-E` changes it.
    pub const BUSY: u8 = 75;
}

/// Locks from the shell, on the o2tools lock daemon.
///
/// dlmctl takes, converts and releases locks held by lockd, reads and writes
/// their 64-byte lock value blocks, and lists what lockd holds. When no
/// lockd answers and no cluster is configured, it starts a single-node lockd
/// on demand.
///
/// Exit status: 0 ok; 1 error (deadlock, permission refused, no such lock);
/// 2 usage; 3 the value block is invalid (lvb get); 4 the lock was lost while
/// the command ran; 69 lockd unreachable; 75 busy or timed out (or -E N);
/// in command mode, the command's own status (127 not found, 126 not
/// executable, 128+N killed by signal N).
///
/// Environment: LOCKD_SOCKET (the socket when --socket is not given),
/// LOCKD_NO_AUTOSTART=1 (never start lockd), O2CB_CONFIG_FILE (the
/// cluster.conf whose cluster, if any, forbids autostart). A command run by
/// `dlmctl lock` gets DLM_DOMAIN, DLM_RESOURCE, DLM_MODE and DLM_LOCK_ID.
#[derive(Parser, Debug)]
#[command(name = "dlmctl", version)]
pub struct DlmctlArgs {
    /// lockd's socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)
    #[arg(long, global = true)]
    pub no_autostart: bool,
    /// What to do
    #[command(subcommand)]
    pub command: DlmctlCommand,
}

/// dlmctl's commands.
#[derive(Subcommand, Debug)]
pub enum DlmctlCommand {
    /// Take a lock: run COMMAND under it, or keep it as a persistent lock and print its id
    ///
    /// With COMMAND: wait for the lock, run COMMAND with DLM_DOMAIN,
    /// DLM_RESOURCE, DLM_MODE (e.g. EX) and DLM_LOCK_ID in its environment,
    /// release the lock when it exits, and exit with its status (127 not
    /// found, 126 not executable, 128+N killed by signal N). Like flock(1),
    /// COMMAND inherits the lock's connection (unless -o), so the lock lasts
    /// while COMMAND lives even if dlmctl is killed. If the lock is lost while
    /// COMMAND runs (lockd died, root broke it, the node left the domain),
    /// COMMAND gets SIGTERM, then SIGKILL after --kill-after seconds, and
    /// dlmctl exits 4. `dlmctl lvb` inside COMMAND goes through this lock.
    ///
    /// Without COMMAND: take a persistent lock, held by lockd for this node
    /// until `dlmctl unlock` (by the same user or root), and print its id.
    /// With --id N: convert persistent lock N to the mode instead.
    ///
    /// Busy with --try, or timed out: exit 75 (or -E N) with one line per
    /// holder on stderr, `dlmctl: busy: DOMAIN/RESOURCE held MODE by node N
    /// pid P`. While waiting on a terminal, a spinner says who holds it.
    Lock(LockArgs),
    /// Release a persistent lock
    ///
    /// The id may be left out when this node holds exactly one persistent
    /// lock on the resource. Only the user who took it, or root, may release it.
    Unlock(UnlockArgs),
    /// Join a domain (the node stays in it until `dlmctl leave`)
    Join {
        /// The domain
        domain: String,
    },
    /// Leave a domain, releasing every lock and value block in it
    Leave {
        /// The domain
        domain: String,
    },
    /// Read or write a lock value block
    ///
    /// Each resource has a 64-byte value block. When this node holds a
    /// persistent lock of yours on the resource (or dlmctl runs under
    /// `dlmctl lock` on it), get and set go through that lock (set needs PW or
    /// EX); otherwise get takes PR briefly and set takes EX briefly. The value
    /// stays while the domain exists, with no lock held.
    #[command(subcommand)]
    Lvb(LvbCommand),
    /// List the domains this node is in
    Domains {
        /// JSON output (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
    /// List resources and their locks
    Locks {
        /// Only this domain
        domain: Option<String>,
        /// JSON output (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
    /// Show lockd's status
    Status {
        /// JSON output (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
}

/// `dlmctl lock` arguments.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// Exclusive mode (the default)
    #[arg(short = 'x', long = "ex", conflicts_with_all = ["pr", "mode"])]
    pub ex: bool,
    /// Protected read (shared) mode
    #[arg(short = 's', long = "pr", conflicts_with = "mode")]
    pub pr: bool,
    /// Any mode: NL, CR, CW, PR, PW or EX
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Fail at once (exit 75) instead of waiting
    #[arg(short = 'n', long = "try")]
    pub try_lock: bool,
    /// Give up after SECS seconds (fractions allowed; 0 means --try)
    #[arg(short = 'w', long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Exit status when busy or timed out
    #[arg(short = 'E', long, value_name = "N", default_value_t = exit::BUSY)]
    pub conflict_exit_code: u8,
    /// Do not let COMMAND inherit the lock's connection
    #[arg(short = 'o', long)]
    pub close: bool,
    /// If the lock is lost, SIGKILL COMMAND this long after SIGTERM (at
    /// most lockd's fence grace less one second when the node fenced itself)
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub kill_after: f64,
    /// Convert persistent lock N to the mode instead of taking a new lock
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    /// The domain
    pub domain: String,
    /// The resource
    pub resource: String,
    /// Command to run while holding the lock
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// `dlmctl unlock` arguments.
#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// The persistent lock (needed when the resource has several)
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    /// The domain
    pub domain: String,
    /// The resource
    pub resource: String,
}

/// `dlmctl lvb` commands.
#[derive(Subcommand, Debug)]
pub enum LvbCommand {
    /// Print a value block (bytes up to the first NUL, then a newline)
    ///
    /// A value block marked invalid (the node that last wrote it died) is
    /// printed as stored with a warning on stderr, and the exit status is 3;
    /// --json shows "valid": false.
    Get {
        /// The domain
        domain: String,
        /// The resource
        resource: String,
        /// 128 lower-case hex digits
        #[arg(long, conflicts_with_all = ["raw", "json"])]
        hex: bool,
        /// All 64 bytes, as they are
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// JSON (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
    /// Write a value block (zero-padded to 64 bytes)
    ///
    /// A value longer than 64 bytes is refused (exit 1) and nothing changes.
    Set {
        /// The domain
        domain: String,
        /// The resource
        resource: String,
        /// The value
        #[arg(required_unless_present_any = ["file", "hex"], conflicts_with_all = ["file", "hex"])]
        value: Option<OsString>,
        /// Take the value from a file
        #[arg(long, value_name = "FILE", conflicts_with = "hex")]
        file: Option<PathBuf>,
        /// Take the value as hex digits
        #[arg(long, value_name = "HEX")]
        hex: Option<String>,
    },
}

/// An error with the exit status it means.
struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        let code = if e.is_unreachable() || matches!(e, ClientError::Closed) {
            exit::UNREACHABLE
        } else {
            exit::ERROR
        };
        Fail(code, e.to_string())
    }
}

type Res = Result<u8, Fail>;

/// Entry point of the `dlmctl` binary.
pub fn main() -> ExitCode {
    let args = DlmctlArgs::parse();
    // dlmctl itself logs nothing; only set up logging when asked to, since
    // it is started once per lock and every microsecond of start-up counts.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::cli::init_logging();
    }
    ExitCode::from(match run(args) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("dlmctl: {msg}");
            }
            code
        }
    })
}

fn check_name(what: &str, name: &str) -> Result<(), Fail> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return Err(Fail(
            exit::USAGE,
            format!(
                "{what} name must be 1 to {MAX_NAME_LEN} bytes, not {}",
                b.len()
            ),
        ));
    }
    if b.contains(&b'/') || b.contains(&0) {
        return Err(Fail(
            exit::USAGE,
            format!("{what} name '{name}' must not contain '/' (names are also dlmfs file names)"),
        ));
    }
    Ok(())
}

fn connect(args: &DlmctlArgs) -> Result<Client, Fail> {
    let mut opts = ConnectOptions::from_env(args.socket.as_deref());
    if args.no_autostart {
        opts.autostart = false;
    }
    Ok(Client::connect_with(&opts)?)
}

/// Runs dlmctl with parsed arguments; returns the exit status.
fn run(args: DlmctlArgs) -> Res {
    match &args.command {
        DlmctlCommand::Lock(l) => lock(&args, l),
        DlmctlCommand::Unlock(u) => unlock(&args, u),
        DlmctlCommand::Join { domain } => {
            check_name("domain", domain)?;
            connect(&args)?.join(domain.as_bytes(), true)?;
            Ok(exit::OK)
        }
        DlmctlCommand::Leave { domain } => {
            check_name("domain", domain)?;
            connect(&args)?.leave(domain.as_bytes(), true)?;
            Ok(exit::OK)
        }
        DlmctlCommand::Lvb(cmd) => lvb(&args, cmd),
        DlmctlCommand::Domains { json } => domains(&args, *json),
        DlmctlCommand::Locks { domain, json } => locks(&args, domain.as_deref(), *json),
        DlmctlCommand::Status { json } => status(&args, *json),
    }
}

fn busy_lines(domain: &str, resource: &str, blockers: &[Holder]) -> String {
    let mut s = String::new();
    for h in blockers {
        let line = match (h.granted, h.requested) {
            (Some(g), _) => format!(
                "{domain}/{resource} held {g} by node {} pid {}",
                h.node.0, h.pid
            ),
            (None, Some(r)) => format!(
                "{domain}/{resource} queued {r} by node {} pid {}",
                h.node.0, h.pid
            ),
            (None, None) => continue,
        };
        s.push_str("dlmctl: busy: ");
        s.push_str(&line);
        s.push('\n');
    }
    if s.is_empty() {
        s = format!("dlmctl: busy: {domain}/{resource}\n");
    }
    s
}

/// A spinner on stderr while waiting, only on a terminal.
struct Waiting {
    bar: Option<indicatif::ProgressBar>,
    what: String,
}

impl Waiting {
    fn new(what: String) -> Self {
        Waiting { bar: None, what }
    }
    fn update(&mut self, blockers: &[Holder]) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let who: Vec<String> = blockers
            .iter()
            .map(|h| match h.granted {
                Some(g) => format!("held {g} by node {} pid {}", h.node.0, h.pid),
                None => format!(
                    "queued {} by node {} pid {}",
                    h.requested.map(|m| m.as_str()).unwrap_or("?"),
                    h.node.0,
                    h.pid
                ),
            })
            .collect();
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        bar.set_message(format!("waiting for {} ({})", self.what, who.join(", ")));
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn lock_options(l: &LockArgs, persistent: bool) -> Result<LockOptions, Fail> {
    let timeout = match l.timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => {
            return Err(Fail(
                exit::USAGE,
                format!("--timeout must be a number of seconds >= 0, not {t}"),
            ));
        }
        Some(0.0) => None,
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    Ok(LockOptions {
        noqueue: l.try_lock || l.timeout == Some(0.0),
        persistent,
        bast_on_busy: false,
        timeout,
    })
}

fn lock_failure(e: LockError, l: &LockArgs) -> Fail {
    match e {
        LockError::Busy(b) | LockError::TimedOut(b) => {
            eprint!("{}", busy_lines(&l.domain, &l.resource, &b));
            Fail(l.conflict_exit_code, String::new())
        }
        LockError::Deadlock(b) => Fail(
            exit::ERROR,
            format!(
                "conversion deadlock on {}/{} with {}",
                l.domain,
                l.resource,
                b.iter()
                    .map(|h| format!("lock {} (pid {})", h.lock, h.pid))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        LockError::Cancelled => Fail(
            exit::ERROR,
            format!("the request for {}/{} was cancelled", l.domain, l.resource),
        ),
        LockError::Client(e) => e.into(),
    }
}

fn lock(args: &DlmctlArgs, l: &LockArgs) -> Res {
    check_name("domain", &l.domain)?;
    check_name("resource", &l.resource)?;
    let mode = if l.pr {
        Mode::PR
    } else {
        l.mode.unwrap_or(Mode::EX)
    };
    if !(l.kill_after.is_finite() && l.kill_after >= 0.0) {
        return Err(Fail(
            exit::USAGE,
            "--kill-after must be a number of seconds >= 0".into(),
        ));
    }
    let (domain, resource) = (l.domain.as_bytes(), l.resource.as_bytes());
    if let Some(id) = l.id {
        if !l.command.is_empty() {
            return Err(Fail(
                exit::USAGE,
                "--id converts a persistent lock and takes no command".into(),
            ));
        }
        let mut c = connect(args)?;
        let id = LockId(id);
        let on_resource = c
            .locks(Some(domain))?
            .iter()
            .filter(|r| r.name == resource)
            .flat_map(|r| r.granted.iter().chain(&r.converting).chain(&r.waiting))
            .any(|h| h.lock == id);
        if !on_resource {
            return Err(Fail(
                exit::ERROR,
                format!("no lock {id} on {}/{}", l.domain, l.resource),
            ));
        }
        let mut spin = Waiting::new(format!("{mode} on {}/{}", l.domain, l.resource));
        c.convert_with_progress(id, mode, &lock_options(l, false)?, |b| spin.update(b))
            .map_err(|e| lock_failure(e, l))?;
        drop(spin);
        println!("{id}");
        return Ok(exit::OK);
    }
    let persistent = l.command.is_empty();
    let opts = lock_options(l, persistent)?;
    let mut c = connect(args)?;
    let mut spin = Waiting::new(format!("{mode} on {}/{}", l.domain, l.resource));
    let id = c
        .lock_with_progress(domain, resource, mode, &opts, |b| spin.update(b))
        .map_err(|e| lock_failure(e, l))?;
    drop(spin);
    if persistent {
        println!("{id}");
        return Ok(exit::OK);
    }
    run_command(c, id, mode, l)
}

fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

fn lost_text(reason: Option<LostReason>) -> &'static str {
    match reason {
        Some(LostReason::DomainLeft) => "the node left the domain",
        Some(LostReason::BrokenByRoot) => "root unlocked it",
        Some(LostReason::Fenced) => "this node lost quorum and fenced itself",
        None => "lockd went away",
    }
}

/// Runs the command under the lock and watches the lock while it runs.
fn run_command(mut c: Client, id: LockId, mode: Mode, l: &LockArgs) -> Res {
    let mut cmd = Command::new(&l.command[0]);
    cmd.args(&l.command[1..])
        .env("DLM_DOMAIN", &l.domain)
        .env("DLM_RESOURCE", &l.resource)
        .env("DLM_MODE", mode.as_str())
        .env("DLM_LOCK_ID", id.to_string());
    // Like flock(1): the command inherits the connection, so the lock lasts
    // while the command lives, even if dlmctl is killed. A duplicate without
    // close-on-exec is passed down (and closed here after the spawn), which
    // keeps the spawn on the fast posix_spawn path.
    let inherited = if l.close {
        None
    } else {
        let fd = nix::unistd::dup(c.as_raw_fd()).map_err(|e| Fail(exit::ERROR, e.to_string()))?;
        // SAFETY: dup just returned this fd; we own it until the spawn is done.
        Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let spawned = cmd.spawn();
    drop(inherited);
    let mut child = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            let prog = l.command[0].to_string_lossy();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(Fail(code, format!("cannot run {prog}: {e}")));
        }
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let pidfd = pidfd_open(child.id());
    let mut kill_after = Duration::from_secs_f64(l.kill_after);
    // A node fencing itself waits this long for the command to stop before
    // the other nodes may take the lock; SIGKILL comes a second before.
    let fence_kill = c
        .fence_grace()
        .map_err(|e| Fail(exit::ERROR, e.to_string()))?
        .saturating_sub(Duration::from_secs(1));
    let mut lost: Option<Instant> = None;
    let mut lockd_gone = false;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Fail(exit::ERROR, e.to_string()))?
        {
            if lost.is_some() {
                return Ok(exit::LOST);
            }
            return Ok(match (status.code(), status.signal()) {
                (Some(code), _) => code as u8,
                (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
                _ => exit::ERROR,
            });
        }
        let timeout_ms: i32 = match (lost, &pidfd) {
            (Some(t), _) => kill_after
                .saturating_sub(t.elapsed())
                .as_millis()
                .clamp(1, 100) as i32,
            (None, None) => 100,
            (None, Some(_)) => -1,
        };
        let mut fds = vec![libc::pollfd {
            fd: if lockd_gone { -1 } else { c.as_raw_fd() },
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(p) = &pidfd {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            continue;
        }
        let mut reason = None;
        let mut now_lost = false;
        if !lockd_gone && fds[0].revents != 0 {
            match c.read_ready_events() {
                Ok(events) => {
                    for e in events {
                        if let Some(r) = Client::is_lost(&e, id) {
                            reason = Some(r);
                            now_lost = true;
                        }
                    }
                }
                Err(_) => {
                    lockd_gone = true;
                    now_lost = true;
                }
            }
        }
        if now_lost && lost.is_none() {
            eprintln!(
                "dlmctl: lost the lock on {}/{} ({}); stopping the command",
                l.domain,
                l.resource,
                lost_text(reason)
            );
            if reason == Some(LostReason::Fenced) {
                kill_after = kill_after.min(fence_kill);
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            lost = Some(Instant::now());
        }
        if let Some(t) = lost {
            if t.elapsed() >= kill_after {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The persistent lock `unlock` means.
fn find_persistent(c: &mut Client, domain: &str, resource: &str) -> Result<Vec<Holder>, Fail> {
    Ok(c.locks(Some(domain.as_bytes()))?
        .into_iter()
        .filter(|r| r.name == resource.as_bytes())
        .flat_map(|r| r.granted.into_iter().chain(r.converting).chain(r.waiting))
        .filter(|h| h.persistent)
        .collect())
}

fn refused(e: ClientError) -> Fail {
    match e {
        ClientError::Refused(DlmError::Permission(m)) => {
            Fail(exit::ERROR, format!("permission denied: {m}"))
        }
        other => other.into(),
    }
}

fn unlock(args: &DlmctlArgs, u: &UnlockArgs) -> Res {
    check_name("domain", &u.domain)?;
    check_name("resource", &u.resource)?;
    let mut c = connect(args)?;
    let ids: Vec<LockId> = find_persistent(&mut c, &u.domain, &u.resource)?
        .iter()
        .map(|h| h.lock)
        .collect();
    let id = match u.id.map(LockId) {
        Some(id) if ids.contains(&id) => id,
        Some(id) => {
            return Err(Fail(
                exit::ERROR,
                format!("no persistent lock {id} on {}/{}", u.domain, u.resource),
            ));
        }
        None => match ids.as_slice() {
            [one] => *one,
            [] => {
                return Err(Fail(
                    exit::ERROR,
                    format!("no persistent lock on {}/{}", u.domain, u.resource),
                ));
            }
            many => {
                return Err(Fail(
                    exit::ERROR,
                    format!(
                        "{}/{} has {} persistent locks ({}); say which with --id",
                        u.domain,
                        u.resource,
                        many.len(),
                        many.iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        },
    };
    c.unlock(id).map_err(refused)?;
    Ok(exit::OK)
}

/// The lock an `lvb` command goes through, and whether it is ours to release.
fn lvb_lock(
    c: &mut Client,
    domain: &str,
    resource: &str,
    write: bool,
) -> Result<(LockId, bool), Fail> {
    // A command run by `dlmctl lock` names its lock in its environment.
    if let (Ok(d), Ok(r), Ok(id)) = (
        std::env::var("DLM_DOMAIN"),
        std::env::var("DLM_RESOURCE"),
        std::env::var("DLM_LOCK_ID"),
    ) {
        if d == domain && r == resource {
            if let Ok(id) = id.parse::<u64>() {
                return Ok((LockId(id), false));
            }
        }
    }
    let uid = nix::unistd::getuid().as_raw();
    let mine = find_persistent(c, domain, resource)?
        .into_iter()
        .find(|h| h.granted.is_some() && (h.uid == uid || uid == 0));
    if let Some(h) = mine {
        let held = h.granted.expect("filtered");
        if write && !held.can_write_lvb() {
            return Err(Fail(
                exit::ERROR,
                format!(
                    "persistent lock {} on {domain}/{resource} is held in {held}; writing the value block needs PW or EX",
                    h.lock
                ),
            ));
        }
        return Ok((h.lock, false));
    }
    let mode = if write { Mode::EX } else { Mode::PR };
    let mut spin = Waiting::new(format!("{mode} on {domain}/{resource}"));
    let id = c
        .lock_with_progress(
            domain.as_bytes(),
            resource.as_bytes(),
            mode,
            &LockOptions::default(),
            |b| spin.update(b),
        )
        .map_err(|e| match e {
            LockError::Client(e) => Fail::from(e),
            other => Fail(exit::ERROR, other.to_string()),
        })?;
    Ok((id, true))
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Result<Vec<u8>, Fail> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Fail(
            exit::USAGE,
            format!("--hex needs an even number of hex digits, not '{s}'"),
        ));
    }
    Ok((0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("checked"))
        .collect())
}

fn text_of(v: &Lvb) -> &[u8] {
    let end = v.iter().position(|&b| b == 0).unwrap_or(LVB_LEN);
    &v[..end]
}

fn lvb(args: &DlmctlArgs, cmd: &LvbCommand) -> Res {
    match cmd {
        LvbCommand::Get {
            domain,
            resource,
            hex: as_hex,
            raw,
            json,
        } => {
            check_name("domain", domain)?;
            check_name("resource", resource)?;
            let mut c = connect(args)?;
            let (id, temporary) = lvb_lock(&mut c, domain, resource, false)?;
            let (value, valid) = c.lvb_get(id).map_err(refused)?;
            if temporary {
                c.unlock(id)?;
            }
            let mut out = Vec::new();
            if *json {
                #[derive(Serialize)]
                struct J<'a> {
                    domain: &'a str,
                    resource: &'a str,
                    text: String,
                    hex: String,
                    valid: bool,
                }
                let j = J {
                    domain,
                    resource,
                    text: String::from_utf8_lossy(text_of(&value)).into_owned(),
                    hex: hex(&value),
                    valid,
                };
                out = serde_json::to_vec_pretty(&j).expect("serializable");
                out.push(b'\n');
            } else if *raw {
                out.extend_from_slice(&value);
            } else if *as_hex {
                out = format!("{}\n", hex(&value)).into_bytes();
            } else {
                out.extend_from_slice(text_of(&value));
                out.push(b'\n');
            }
            let _ = std::io::stdout().lock().write_all(&out);
            if !valid {
                eprintln!(
                    "dlmctl: warning: the value block of {domain}/{resource} is invalid (the node that last wrote it died)"
                );
                return Ok(exit::LVB_INVALID);
            }
            Ok(exit::OK)
        }
        LvbCommand::Set {
            domain,
            resource,
            value,
            file,
            hex: hexval,
        } => {
            check_name("domain", domain)?;
            check_name("resource", resource)?;
            let bytes: Vec<u8> = match (value, file, hexval) {
                (Some(v), _, _) => std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
                (None, Some(f), _) => std::fs::read(f)
                    .map_err(|e| Fail(exit::ERROR, format!("cannot read {}: {e}", f.display())))?,
                (None, None, Some(h)) => parse_hex(h)?,
                (None, None, None) => unreachable!("clap requires one"),
            };
            if bytes.len() > LVB_LEN {
                return Err(Fail(
                    exit::ERROR,
                    format!(
                        "the value is {} bytes; a value block holds {LVB_LEN} (nothing was changed)",
                        bytes.len()
                    ),
                ));
            }
            let mut c = connect(args)?;
            let (id, temporary) = lvb_lock(&mut c, domain, resource, true)?;
            c.lvb_set(id, &bytes).map_err(refused)?;
            if temporary {
                c.unlock(id)?;
            }
            Ok(exit::OK)
        }
    }
}

fn name(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn print_json(v: &impl Serialize) {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    let _ = crate::cli::write_stdout(s.as_bytes());
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}

fn print_table(t: &comfy_table::Table) {
    let mut s = String::new();
    for line in t.to_string().lines() {
        s.push_str(line.trim_end());
        s.push('\n');
    }
    let _ = crate::cli::write_stdout(s.as_bytes());
}

fn domains(args: &DlmctlArgs, json: bool) -> Res {
    let ds = connect(args)?.domains()?;
    if json {
        #[derive(Serialize)]
        struct D {
            name: String,
            resources: usize,
            locks: usize,
            pinned: bool,
            users: usize,
        }
        #[derive(Serialize)]
        struct Out {
            domains: Vec<D>,
        }
        print_json(&Out {
            domains: ds
                .iter()
                .map(|d| D {
                    name: name(&d.name),
                    resources: d.resources,
                    locks: d.locks,
                    pinned: d.pinned,
                    users: d.users,
                })
                .collect(),
        });
        return Ok(exit::OK);
    }
    let mut t = table(&["DOMAIN", "RESOURCES", "LOCKS", "PINNED", "USERS"]);
    for d in &ds {
        t.add_row(vec![
            name(&d.name),
            d.resources.to_string(),
            d.locks.to_string(),
            if d.pinned { "yes" } else { "no" }.into(),
            d.users.to_string(),
        ]);
    }
    print_table(&t);
    Ok(exit::OK)
}

#[derive(Serialize)]
struct JLock {
    id: u64,
    node: u8,
    pid: i32,
    uid: u32,
    granted: Option<&'static str>,
    requested: Option<&'static str>,
    persistent: bool,
}

impl JLock {
    fn of(h: &Holder) -> Self {
        JLock {
            id: h.lock.0,
            node: h.node.0,
            pid: h.pid,
            uid: h.uid,
            granted: h.granted.map(Mode::as_str),
            requested: h.requested.map(Mode::as_str),
            persistent: h.persistent,
        }
    }
}

fn lvb_state(r: &ResourceInfo) -> String {
    match (r.lvb.seq, r.lvb.valid) {
        (_, false) => "INVALID".into(),
        (0, true) => "-".into(),
        (n, true) => format!("set ({n})"),
    }
}

fn locks(args: &DlmctlArgs, domain: Option<&str>, json: bool) -> Res {
    let mut client = connect(args)?;
    let rs = client.locks(domain.map(str::as_bytes))?;
    if json {
        #[derive(Serialize)]
        struct JLvb {
            seq: u64,
            valid: bool,
            hex: String,
        }
        #[derive(Serialize)]
        struct JRes {
            domain: String,
            name: String,
            master: u8,
            lvb: JLvb,
            granted: Vec<JLock>,
            converting: Vec<JLock>,
            waiting: Vec<JLock>,
            node_lock: Option<JNodeLock>,
            nodes: Vec<JNodeHolder>,
        }
        #[derive(Serialize)]
        struct JNodeLock {
            granted: Option<&'static str>,
            requested: Option<&'static str>,
        }
        #[derive(Serialize)]
        struct JNodeHolder {
            node: u8,
            granted: Option<&'static str>,
            requested: Option<&'static str>,
            pid: i32,
        }
        #[derive(Serialize)]
        struct Out {
            resources: Vec<JRes>,
        }
        print_json(&Out {
            resources: rs
                .iter()
                .map(|r| JRes {
                    domain: name(&r.domain),
                    name: name(&r.name),
                    master: r.master.0,
                    lvb: JLvb {
                        seq: r.lvb.seq,
                        valid: r.lvb.valid,
                        hex: hex(&r.lvb.value),
                    },
                    granted: r.granted.iter().map(JLock::of).collect(),
                    converting: r.converting.iter().map(JLock::of).collect(),
                    waiting: r.waiting.iter().map(JLock::of).collect(),
                    node_lock: r.node_lock.map(|(g, q)| JNodeLock {
                        granted: g.map(Mode::as_str),
                        requested: q.map(Mode::as_str),
                    }),
                    nodes: r
                        .nodes
                        .iter()
                        .map(|n| JNodeHolder {
                            node: n.node.0,
                            granted: n.granted.map(Mode::as_str),
                            requested: n.requested.map(Mode::as_str),
                            pid: n.pid,
                        })
                        .collect(),
                })
                .collect(),
        });
        return Ok(exit::OK);
    }
    let mut t = table(&[
        "DOMAIN", "RESOURCE", "MASTER", "LOCK", "STATE", "MODE", "WANTS", "NODE", "PID", "UID",
        "KIND", "LVB",
    ]);
    for r in &rs {
        let lvb = lvb_state(r);
        let rows: Vec<(&str, &Holder)> = r
            .granted
            .iter()
            .map(|h| ("granted", h))
            .chain(r.converting.iter().map(|h| ("converting", h)))
            .chain(r.waiting.iter().map(|h| ("waiting", h)))
            .collect();
        if rows.is_empty() {
            t.add_row(vec![
                name(&r.domain),
                name(&r.name),
                r.master.0.to_string(),
                "-".into(),
                "idle".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                lvb.clone(),
            ]);
        }
        for (state, h) in rows {
            t.add_row(vec![
                name(&r.domain),
                name(&r.name),
                r.master.0.to_string(),
                h.lock.to_string(),
                state.into(),
                h.granted.map_or("-", Mode::as_str).into(),
                h.requested.map_or("-", Mode::as_str).into(),
                h.node.0.to_string(),
                h.pid.to_string(),
                h.uid.to_string(),
                if h.persistent {
                    "persistent"
                } else {
                    "process"
                }
                .into(),
                lvb.clone(),
            ]);
        }
    }
    print_table(&t);
    // In a cluster: the node-level locks this node knows of (its own, and
    // every node's on the resources it masters).
    if rs
        .iter()
        .any(|r| r.node_lock.is_some() || !r.nodes.is_empty())
    {
        let me = client.node()?;
        let mut n = table(&[
            "DOMAIN", "RESOURCE", "MASTER", "NODE", "HELD", "WANTS", "PID",
        ]);
        for r in &rs {
            let mut rows: Vec<(u8, Option<Mode>, Option<Mode>, String)> = r
                .nodes
                .iter()
                .map(|h| (h.node.0, h.granted, h.requested, h.pid.to_string()))
                .collect();
            if let Some((g, q)) = r.node_lock {
                if !rows.iter().any(|row| row.0 == me.0) && (g.is_some() || q.is_some()) {
                    rows.push((me.0, g, q, "-".into()));
                    rows.sort_by_key(|row| row.0);
                }
            }
            for (node, g, q, pid) in rows {
                n.add_row(vec![
                    name(&r.domain),
                    name(&r.name),
                    r.master.0.to_string(),
                    node.to_string(),
                    g.map_or("-", Mode::as_str).into(),
                    q.map_or("-", Mode::as_str).into(),
                    pid,
                ]);
            }
        }
        let _ = crate::cli::write_stdout(b"\nnode locks:\n");
        print_table(&n);
    }
    Ok(exit::OK)
}

fn status(args: &DlmctlArgs, json: bool) -> Res {
    let opts = {
        let mut o = ConnectOptions::from_env(args.socket.as_deref());
        o.autostart &= !args.no_autostart;
        o
    };
    let mut c = Client::connect_with(&opts)?;
    let s = c.status()?;
    let mode = if s.cluster.is_some() {
        "cluster"
    } else {
        "single-node"
    };
    let k = s.stats.counters;
    if json {
        #[derive(Serialize)]
        struct Counters {
            lock_requests: u64,
            convert_requests: u64,
            grants: u64,
            unlocks: u64,
            busy: u64,
            timeouts: u64,
            deadlocks: u64,
            basts: u64,
            local_grants: u64,
            remote_requests: u64,
        }
        #[derive(Serialize)]
        struct JNode {
            number: u8,
            name: String,
            address: String,
            local: bool,
            connected: bool,
            heartbeat: bool,
        }
        #[derive(Serialize)]
        struct Out {
            node: u8,
            mode: &'static str,
            cluster: Option<String>,
            pid: u32,
            uptime_ms: u64,
            socket: String,
            autostarted: bool,
            domains: usize,
            resources: usize,
            locks: usize,
            clients: usize,
            counters: Counters,
            nodes: Vec<JNode>,
            quorum: Option<&'static str>,
        }
        print_json(&Out {
            node: s.node.0,
            mode,
            cluster: s.cluster.clone(),
            pid: s.pid,
            uptime_ms: s.uptime_ms,
            socket: opts.socket.path.display().to_string(),
            autostarted: s.autostarted,
            domains: s.stats.domains,
            resources: s.stats.resources,
            locks: s.stats.locks,
            // Not counting this connection.
            clients: s.stats.clients.saturating_sub(1),
            counters: Counters {
                lock_requests: k.lock_requests,
                convert_requests: k.convert_requests,
                grants: k.grants,
                unlocks: k.unlocks,
                busy: k.busy,
                timeouts: k.timeouts,
                deadlocks: k.deadlocks,
                basts: k.basts,
                local_grants: k.local_grants,
                remote_requests: k.remote_requests,
            },
            nodes: s
                .nodes
                .iter()
                .map(|n| JNode {
                    number: n.number,
                    name: n.name.clone(),
                    address: n.address.clone(),
                    local: n.local,
                    connected: n.connected,
                    heartbeat: n.heartbeat,
                })
                .collect(),
            quorum: s.quorum.map(|q| q.as_str()),
        });
        return Ok(exit::OK);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    let up = s.uptime_ms / 1000;
    for (key, value) in [
        ("node", s.node.0.to_string()),
        ("mode", mode.to_string()),
        ("cluster", s.cluster.clone().unwrap_or_else(|| "-".into())),
        ("lockd pid", s.pid.to_string()),
        (
            "uptime",
            format!(
                "{}d {:02}:{:02}:{:02}",
                up / 86400,
                up / 3600 % 24,
                up / 60 % 60,
                up % 60
            ),
        ),
        ("socket", opts.socket.path.display().to_string()),
        (
            "autostarted",
            if s.autostarted { "yes" } else { "no" }.to_string(),
        ),
        ("domains", s.stats.domains.to_string()),
        ("resources", s.stats.resources.to_string()),
        ("locks", s.stats.locks.to_string()),
        ("clients", s.stats.clients.saturating_sub(1).to_string()),
        ("grants", k.grants.to_string()),
        ("basts", k.basts.to_string()),
    ] {
        t.add_row(vec![key.to_string(), value]);
    }
    if let Some(q) = s.quorum {
        t.add_row(vec!["quorum".to_string(), q.as_str().to_string()]);
    }
    if s.cluster.is_some() {
        t.add_row(vec!["local grants".to_string(), k.local_grants.to_string()]);
        t.add_row(vec![
            "remote requests".to_string(),
            k.remote_requests.to_string(),
        ]);
    }
    print_table(&t);
    if !s.nodes.is_empty() {
        let mut n = table(&["NODE", "NAME", "ADDRESS", "CONNECTION", "HEARTBEAT"]);
        for node in &s.nodes {
            let (conn, hb) = if node.local {
                ("local", "local")
            } else {
                (
                    if node.connected { "up" } else { "down" },
                    if node.heartbeat { "live" } else { "-" },
                )
            };
            n.add_row(vec![
                node.number.to_string(),
                node.name.clone(),
                node.address.clone(),
                conn.to_string(),
                hb.to_string(),
            ]);
        }
        let _ = crate::cli::write_stdout(b"\n");
        print_table(&n);
    }
    Ok(exit::OK)
}
