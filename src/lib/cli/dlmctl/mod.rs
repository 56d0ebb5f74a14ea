//! `dlmctl`: locks from the shell. This file holds the arguments, the
//! small commands and `unlock`; `lock.rs` takes a lock and runs a command
//! under it, `lvb.rs` reads and writes value blocks, `listings.rs` prints
//! what lockd holds.
//!
//! May depend on: `client`, `dlm` (types), `cli`.

mod listings;
mod lock;
mod lvb;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use super::{Failure, Outcome};
use crate::client::{Client, ClientError, ConnectOptions};
use crate::dlm::{DlmError, Holder, LockId, MAX_NAME_LEN, Mode};

/// Exit statuses of dlmctl.
pub mod exit {
    pub use crate::cli::exit::{BUSY, ERROR, OK, UNREACHABLE, USAGE};
    /// `lvb get`: the value block is marked invalid.
    pub const LVB_INVALID: u8 = 3;
    /// The lock was lost while the command ran.
    pub const LOST: u8 = 4;
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
    /// COMMAND runs (lockd died, root broke it with `dlmctl unlock --id`, the
    /// node left the domain or fenced itself), COMMAND gets SIGTERM, then
    /// SIGKILL after --kill-after seconds, and dlmctl exits 4. `dlmctl lvb` inside COMMAND goes through this lock.
    ///
    /// Without COMMAND: take a persistent lock, held by lockd for this node
    /// until `dlmctl unlock` (by the same user or root), and print its id.
    /// With --id N: convert persistent lock N to the mode instead.
    ///
    /// Busy with --try, or timed out: exit 75 (or -E N) with one line per
    /// holder on stderr, `dlmctl: busy: DOMAIN/RESOURCE held MODE by node N
    /// pid P`. While waiting on a terminal, a spinner says who holds it.
    Lock(LockArgs),
    /// Release a persistent lock, or break a command's lock (root)
    ///
    /// The id may be left out when this node holds exactly one persistent
    /// lock on the resource. Only the user who took it, or root, may release
    /// it. With --id, root may also break the lock of a running `dlmctl lock`
    /// command (its id is in `dlmctl locks`): the command is told it lost the
    /// lock, gets SIGTERM, and its dlmctl exits 4.
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
    /// The lock: a persistent lock (needed when the resource has several),
    /// or the lock of a running `dlmctl lock` command (root only)
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

/// Entry point of the `dlmctl` binary.
pub fn main() -> ExitCode {
    let args = DlmctlArgs::parse();
    // dlmctl itself logs nothing; only set up logging when asked to, since
    // it is started once per lock and every microsecond of start-up counts.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::cli::init_logging("warn");
    }
    super::finish("dlmctl", run(args))
}

pub(super) fn check_name(what: &str, name: &str) -> Result<(), Failure> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return Err(Failure::usage(format!(
            "{what} name must be 1 to {MAX_NAME_LEN} bytes, not {}",
            b.len()
        )));
    }
    if b.contains(&b'/') || b.contains(&0) {
        return Err(Failure::usage(format!(
            "{what} name '{name}' must not contain '/' (names are also dlmfs file names)"
        )));
    }
    Ok(())
}

pub(super) fn connect(args: &DlmctlArgs) -> Result<Client, Failure> {
    Ok(Client::connect_with(&connect_options(args))?)
}

pub(super) fn connect_options(args: &DlmctlArgs) -> ConnectOptions {
    crate::cli::connect_options(args.socket.as_deref(), args.no_autostart)
}

/// Runs dlmctl with parsed arguments; returns the exit status.
fn run(args: DlmctlArgs) -> Outcome {
    match &args.command {
        DlmctlCommand::Lock(l) => lock::lock(&args, l),
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
        DlmctlCommand::Lvb(cmd) => lvb::lvb(&args, cmd),
        DlmctlCommand::Domains { json } => listings::domains(&args, *json),
        DlmctlCommand::Locks { domain, json } => listings::locks(&args, domain.as_deref(), *json),
        DlmctlCommand::Status { json } => listings::status(&args, *json),
    }
}

/// This node's locks on a resource, in queue order.
fn locks_on(c: &mut Client, domain: &str, resource: &str) -> Result<Vec<Holder>, Failure> {
    let me = c.node()?;
    Ok(c.locks(Some(domain.as_bytes()))?
        .into_iter()
        .filter(|r| r.name == resource.as_bytes())
        .flat_map(|r| r.granted.into_iter().chain(r.converting).chain(r.waiting))
        .filter(|h| h.node == me)
        .collect())
}

/// The persistent locks `unlock` (without `--id`) and `lvb` may mean.
pub(super) fn find_persistent(
    c: &mut Client,
    domain: &str,
    resource: &str,
) -> Result<Vec<Holder>, Failure> {
    let mut v = locks_on(c, domain, resource)?;
    v.retain(|h| h.persistent);
    Ok(v)
}

pub(super) fn refused(e: ClientError) -> Failure {
    match e {
        ClientError::Refused(DlmError::Permission(m)) => {
            Failure::error(format!("permission denied: {m}"))
        }
        other => other.into(),
    }
}

fn ids(hs: &[&Holder]) -> String {
    hs.iter()
        .map(|h| h.lock.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `dlmctl unlock`: a persistent lock, or with `--id` any lock of this node
/// on the resource (a command's lock is broken: only root may, and the
/// command is told it lost it).
fn unlock(args: &DlmctlArgs, u: &UnlockArgs) -> Outcome {
    check_name("domain", &u.domain)?;
    check_name("resource", &u.resource)?;
    let mut c = connect(args)?;
    let on = locks_on(&mut c, &u.domain, &u.resource)?;
    let (d, r) = (&u.domain, &u.resource);
    let id = match u.id.map(LockId) {
        Some(id) if on.iter().any(|h| h.lock == id) => id,
        Some(id) => return Err(Failure::error(format!("no lock {id} on {d}/{r}"))),
        None => {
            let persistent: Vec<&Holder> = on.iter().filter(|h| h.persistent).collect();
            match persistent.as_slice() {
                [one] => one.lock,
                [] if on.is_empty() => {
                    return Err(Failure::error(format!("no persistent lock on {d}/{r}")));
                }
                [] => {
                    let held: Vec<&Holder> = on.iter().collect();
                    return Err(Failure::error(format!(
                        "no persistent lock on {d}/{r}; lock {} {} held by processes (root may break one with --id)",
                        ids(&held),
                        if held.len() == 1 { "is" } else { "are" },
                    )));
                }
                many => {
                    return Err(Failure::error(format!(
                        "{d}/{r} has {} persistent locks ({}); say which with --id",
                        many.len(),
                        ids(many)
                    )));
                }
            }
        }
    };
    c.unlock(id).map_err(refused)?;
    Ok(exit::OK)
}
