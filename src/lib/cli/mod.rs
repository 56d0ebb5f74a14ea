//! Command-line front ends: the clap definitions and the `run` function of
//! every tool, plus man page and completion generation from those definitions.
//!
//! `src/bin/*.rs` only call `cli::<tool>::main()`. Keeping the definitions in
//! the library lets tests generate the man pages and completions and compare
//! them with the committed ones.
//!
//! May depend on: every other module of the crate, `clap`, `anyhow`, `serde_json`.

pub mod dlmctl;
pub mod dlmfs;
pub mod generate;
pub mod hb_ctl;
pub mod lockd;
pub mod o2cb;

use std::io::{self, Write};

/// Writes `bytes` to stdout. A closed pipe (`o2cb list-clusters | head -1`)
/// is not an error.
pub(crate) fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Logs to stderr through `tracing`, at the level given by `RUST_LOG`
/// (default `warn`). User-facing messages do not go through here.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
}
