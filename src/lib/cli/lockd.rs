//! `lockd`: the lock daemon, in the foreground (systemd style).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::{Failure, Outcome};
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

/// Entry point of the `lockd` binary (and of a tool's executable started
/// as `lockd`: see [`super::dispatch`]).
pub fn main() -> ExitCode {
    let args = LockdArgs::parse();
    super::init_logging("info");
    super::finish("lockd", run(args))
}

/// Runs lockd until SIGTERM or SIGINT (exit 0); a failure to start is exit 1.
pub fn run(args: LockdArgs) -> Outcome {
    let settings = SettingsFiles::discover(args.settings.as_deref())
        .load()
        .map_err(Failure::error)?;
    let cluster = match &args.config {
        None => None,
        Some(conf) => Some(
            ClusterSetup::load(conf, args.cluster.as_deref(), args.node.as_deref())
                .map_err(Failure::error)?,
        ),
    };
    let opts = DaemonOptions {
        socket: SocketPath::resolve(args.socket.as_deref()),
        node: NodeId(args.node_number),
        autostarted: args.autostarted,
        settings,
        cluster,
    };
    Daemon::bind(opts)
        .map_err(Failure::error)?
        .run()
        .map_err(Failure::error)?;
    Ok(super::exit::OK)
}
