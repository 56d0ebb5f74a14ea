//! `lockd`: the lock daemon, in the foreground (systemd style).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::client::SocketPath;
use crate::config::settings::SettingsFiles;
use crate::daemon::mesh::ClusterSetup;
use crate::daemon::{Daemon, DaemonOptions};
use crate::dlm::NodeId;

/// The o2tools lock daemon.
///
/// Serves the distributed lock manager to the tools (dlmctl, dlmfs, hb_ctl,
/// o2cb) over a Unix socket. Runs in the foreground and logs to stderr
/// (RUST_LOG sets the level; default info). With no cluster configured it
/// is a single-node lock manager; the tools start one on demand.
///
/// Socket: --socket, else $LOCKD_SOCKET, else /run/o2tools/lockd.sock when it
/// exists or the caller is root, else $XDG_RUNTIME_DIR/o2tools/lockd.sock or
/// /tmp/o2tools-$UID/lockd.sock.
///
/// Settings: --settings, else $LOCKD_SETTINGS, else /etc/o2tools/lockd.toml
/// when it exists, over the O2CB_* values of /etc/sysconfig/o2cb or
/// /etc/default/o2cb.
///
/// Cluster: with --config, lockd runs a node of the cluster that file
/// describes (in the cluster.conf format o2cb writes): it listens on its
/// node's ip_address:ip_port, connects to the other nodes, and heartbeats on
/// the cluster's global heartbeat regions. Without it, `o2cb register-cluster`
/// makes a running lockd load a cluster later.
///
/// Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start (another
/// lockd on the socket, bad settings, this node not in the cluster), 2 on
/// usage errors.
#[derive(Parser, Debug)]
#[command(name = "lockd", version)]
pub struct LockdArgs {
    /// The Unix socket to serve
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// lockd's TOML settings file
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// This node's number (0-254) when running without a cluster
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=254))]
    pub node_number: u8,
    /// Run a node of the cluster in this cluster.conf
    #[arg(long, visible_alias = "config-file", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which cluster of the file (needed when it has several)
    #[arg(long, value_name = "NAME", requires = "config")]
    pub cluster: Option<String>,
    /// This node's name in the file (default: the host name, matched as o2cb does)
    #[arg(long, value_name = "NAME", requires = "config")]
    pub node: Option<String>,
    /// Started on demand by a tool (shown in dlmctl status)
    #[arg(long, hide = true)]
    pub autostarted: bool,
}

/// Entry point of the `lockd` binary.
pub fn main() -> ExitCode {
    let args = LockdArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let settings = match SettingsFiles::discover(args.settings.as_deref()).load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lockd: {e}");
            return ExitCode::from(1);
        }
    };
    let cluster = match &args.config {
        None => None,
        Some(conf) => match ClusterSetup::load(conf, args.cluster.as_deref(), args.node.as_deref())
        {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("lockd: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let opts = DaemonOptions {
        socket: SocketPath::resolve(args.socket.as_deref()),
        node: NodeId(args.node_number),
        autostarted: args.autostarted,
        settings,
        cluster,
    };
    let daemon = match Daemon::bind(opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("lockd: {e}");
            return ExitCode::from(1);
        }
    };
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd: {e}");
            ExitCode::from(1)
        }
    }
}
