//! Command-line front ends: the clap definitions and the `run` function of
//! every tool, plus man page and completion generation from those definitions.
//!
//! `src/bin/*.rs` only call [`dispatch`] with their tool's `main`. Keeping
//! the definitions in the library lets tests generate the man pages and
//! completions and compare them with the committed ones.
//!
//! This module is the tools' one edge to the user: the exit statuses they
//! share ([`exit`]), the error that ends a tool with a status and a message
//! ([`Failure`], which takes `anyhow` errors and their context as status 1),
//! printing it ([`finish`]), JSON and table output, and logging set-up.
//!
//! May depend on: every other module of the crate, `clap`, `anyhow`,
//! `serde_json`, `comfy-table`, `indicatif`, `tracing-subscriber`.

pub mod dlmctl;
pub mod dlmfs;
pub mod generate;
pub mod hb_ctl;
pub mod lockd;
pub mod o2cb;

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::client::{ClientError, ConnectOptions, LockdProgram};

/// Exit statuses the tools share (sysexits(3) where one fits). A tool's own
/// `exit` module re-exports these and adds its own.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An error.
    pub const ERROR: u8 = 1;
    /// Bad usage.
    pub const USAGE: u8 = 2;
    /// lockd could not be reached (or started): `EX_UNAVAILABLE`.
    pub const UNREACHABLE: u8 = 69;
    /// Busy or timed out: `EX_TEMPFAIL`.
    pub const BUSY: u8 = 75;
}

/// What ends a tool early: an exit status and, unless it was already
/// reported, the error to print as `tool: message`.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: Option<anyhow::Error>,
}

impl Failure {
    /// Exit with `code` after printing `message`.
    pub fn new(code: u8, message: impl fmt::Display) -> Self {
        Failure {
            code,
            error: Some(anyhow::anyhow!("{message}")),
        }
    }

    /// Exit with `code`; what went wrong has been printed already.
    pub fn silent(code: u8) -> Self {
        Failure { code, error: None }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl fmt::Display) -> Self {
        Failure::new(exit::USAGE, message)
    }

    /// Any other error (exit 1), printed as it displays itself (for
    /// `map_err`; the library's errors already name their cause).
    pub fn error(message: impl fmt::Display) -> Self {
        Failure::new(exit::ERROR, message)
    }

    /// The exit status.
    pub fn code(&self) -> u8 {
        self.code
    }
}

/// An error with the context added on the way up (`anyhow::Context` on an
/// `io::Error`, say): exit 1, printed as `context: cause`.
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: exit::ERROR,
            error: Some(e),
        }
    }
}

/// lockd unreachable (or gone): exit 69; anything else it says: exit 1.
impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = if e.is_unreachable() || matches!(e, ClientError::Closed) {
            exit::UNREACHABLE
        } else {
            exit::ERROR
        };
        Failure::new(code, e)
    }
}

/// What a tool's `run` returns: the exit status, or why it stopped.
pub type Outcome = Result<u8, Failure>;

/// Ends a tool: prints the failure (`tool: message`, with its context
/// chain) on stderr and turns the status into an exit code.
pub fn finish(tool: &str, outcome: Outcome) -> ExitCode {
    ExitCode::from(match outcome {
        Ok(code) => code,
        Err(f) => {
            if let Some(e) = &f.error {
                eprintln!("{tool}: {e:#}");
            }
            f.code
        }
    })
}

/// The name a tool's executable runs lockd under. The tools start a
/// single-node lockd on demand by running their own executable with this
/// as argv\[0\] (see [`dispatch`]), so one copied `dlmctl` is enough.
pub const LOCKD_ARGV0: &str = "lockd";

/// Runs `tool`, or lockd when this executable was started as `lockd`
/// (argv\[0\], as a tool starts it on demand, or a link named `lockd`).
pub fn dispatch(tool: fn() -> ExitCode) -> ExitCode {
    let invoked_as_lockd = std::env::args_os()
        .next()
        .is_some_and(|a0| Path::new(&a0).file_name() == Some(LOCKD_ARGV0.as_ref()));
    if invoked_as_lockd {
        // Named `lockd` for ps, top and pgrep too (the kernel took the
        // name from the file that was run, which may be `dlmctl` or `exe`).
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes from the pointer, which is a static C string.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"lockd".as_ptr()) };
        lockd::main()
    } else {
        tool()
    }
}

/// How a tool reaches lockd: `--socket` or as every tool finds it, starting
/// a single-node lockd from this very executable when none answers (unless
/// `--no-autostart`, `$LOCKD_NO_AUTOSTART=1`, or a configured cluster).
pub(crate) fn connect_options(socket: Option<&Path>, no_autostart: bool) -> ConnectOptions {
    let mut opts = ConnectOptions::from_env(socket);
    opts.autostart &= !no_autostart;
    opts.lockd = LockdProgram::ThisExecutable;
    opts
}

/// Writes `bytes` to stdout. A closed pipe (`o2cb list-clusters | head -1`)
/// is not an error.
pub(crate) fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Prints `v` as pretty JSON and a newline (the keys are a contract:
/// docs/JSON.md).
pub(crate) fn print_json(v: &impl Serialize) {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    let _ = write_stdout(s.as_bytes());
}

/// A table with a header row, no borders, no wrapping.
pub(crate) fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}

/// Prints a table without trailing blanks.
pub(crate) fn print_table(t: &comfy_table::Table) {
    let mut s = String::new();
    for line in t.to_string().lines() {
        s.push_str(line.trim_end());
        s.push('\n');
    }
    let _ = write_stdout(s.as_bytes());
}

/// Logs to stderr through `tracing`, at the level given by `RUST_LOG`, else
/// `default` (e.g. `warn`). User-facing messages do not go through here.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
}
