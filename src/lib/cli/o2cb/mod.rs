//! `o2cb`: edit and list the cluster configuration, a drop-in for ocfs2-tools'
//! `o2cb` 1.8.7.
//!
//! Same commands, listings, file bytes and exit statuses as the real tool;
//! the few deliberate differences are in `docs/COMPATIBILITY.md`. Argument
//! handling follows the real tool's getopt rules: global options only before
//! the command, `add-node` and the list commands take their options anywhere
//! (and unambiguous prefixes of them), every other command takes its words
//! verbatim and ignores extra ones.
//!
//! This file holds the arguments, their getopt-style preparation and the
//! load-edit-store cycle; `edit.rs` the edits that need more than one call,
//! `list.rs` the listings, `stack.rs` the commands that talk to lockd.
//! Errors end as a [`Failure`] printed `o2cb: message`, as the real tool
//! prints them.
//!
//! May depend on: `config`, `heartbeat::ocfs2`, `client`, `cli`.

mod edit;
mod list;
mod stack;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory as _, Parser, Subcommand};

use super::{Failure, Outcome};
use crate::config::file::StoreError;
use crate::config::{
    self, ClusterConf, ConfigLock, DEFAULT_CONFIG_FILE, HeartbeatMode, strip_blanks,
};

pub use crate::config::CONFIG_ENV;

const USAGE: &str =
    "o2cb [--config-file=path] [-h|--help] [-v|--verbose] [-V|--version] COMMAND [ARGS]";

/// Manage the OCFS2 cluster configuration (cluster.conf).
///
/// o2cb adds, removes and lists clusters, nodes and heartbeat regions in
/// the cluster configuration file, byte for byte as ocfs2-tools' o2cb does.
/// The file is --config-file, else $O2CB_CONFIG_FILE, else
/// /etc/ocfs2/cluster.conf. Global options must come before the command.
///
/// Exit status: 0 on success, 1 on any error (as the real tool). A
/// duplicate add-cluster and a listing of an unknown cluster exit 0, as the
/// real tool does.
///
/// Environment: O2CB_CONFIG_FILE names the configuration file when
/// --config-file is not given.
///
/// See also: cluster.conf(5) for the file format.
#[derive(Parser, Debug)]
#[command(
    name = "o2cb",
    version,
    override_usage = USAGE,
    disable_help_subcommand = true,
    infer_long_args = true
)]
pub struct O2cbArgs {
    /// The cluster configuration file [default: $O2CB_CONFIG_FILE, else /etc/ocfs2/cluster.conf]
    #[arg(
        long = "config-file",
        value_name = "path",
        allow_hyphen_values = true,
        overrides_with = "config_file"
    )]
    pub config_file: Option<PathBuf>,
    /// Print what is done on stderr; repeat for debugging detail
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// The command
    #[command(subcommand)]
    pub command: Option<O2cbCommand>,
}

/// A cluster name taken verbatim.
#[derive(Args, Debug)]
pub struct ClusterWord {
    /// The cluster
    #[arg(value_name = "clustername", allow_hyphen_values = true)]
    pub clustername: Option<String>,
    /// Further words are ignored, as by the real tool
    #[arg(hide = true, allow_hyphen_values = true, trailing_var_arg = true)]
    pub extra: Vec<String>,
}

/// A cluster name and a second word, both verbatim.
#[derive(Args, Debug)]
pub struct ClusterAndNode {
    /// The cluster
    #[arg(value_name = "clustername", allow_hyphen_values = true)]
    pub clustername: Option<String>,
    /// The node
    #[arg(value_name = "nodename", allow_hyphen_values = true)]
    pub nodename: Option<String>,
    #[arg(hide = true, allow_hyphen_values = true, trailing_var_arg = true)]
    extra: Vec<String>,
}

/// A cluster name and a heartbeat region or device.
#[derive(Args, Debug)]
pub struct ClusterAndRegion {
    /// The cluster
    #[arg(value_name = "clustername", allow_hyphen_values = true)]
    pub clustername: Option<String>,
    /// The region's UUID, or a block device holding an OCFS2 volume (its UUID is used)
    #[arg(value_name = "uuid|device", allow_hyphen_values = true)]
    pub region: Option<String>,
    #[arg(hide = true, allow_hyphen_values = true, trailing_var_arg = true)]
    extra: Vec<String>,
}

/// `heartbeat-mode` arguments.
#[derive(Args, Debug)]
pub struct ModeArgs {
    /// The cluster
    #[arg(value_name = "clustername", allow_hyphen_values = true)]
    pub clustername: Option<String>,
    /// `global` or `local`
    #[arg(value_name = "global|local", allow_hyphen_values = true)]
    pub mode: Option<String>,
    #[arg(hide = true, allow_hyphen_values = true, trailing_var_arg = true)]
    extra: Vec<String>,
}

/// `add-node` arguments.
#[derive(Args, Debug)]
pub struct AddNodeArgs {
    /// IPv4 address [default: the first IPv4 address the node name resolves to]
    #[arg(
        long,
        value_name = "ip",
        allow_hyphen_values = true,
        overrides_with = "ip"
    )]
    pub ip: Option<String>,
    /// Port [default: 7777]
    #[arg(
        long,
        value_name = "port",
        allow_hyphen_values = true,
        overrides_with = "port"
    )]
    pub port: Option<String>,
    /// Node number, 0-254 [default: the lowest free number]
    #[arg(
        long,
        value_name = "num",
        allow_hyphen_values = true,
        overrides_with = "number"
    )]
    pub number: Option<String>,
    /// The cluster
    #[arg(value_name = "clustername")]
    pub clustername: Option<String>,
    /// The new node's name (usually its host name)
    #[arg(value_name = "nodename")]
    pub nodename: Option<String>,
    #[arg(hide = true)]
    extra: Vec<String>,
}

/// Arguments of `list-cluster`, `list-nodes` and `list-heartbeats`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// One line per object
    #[arg(long, overrides_with = "oneline")]
    pub oneline: bool,
    /// JSON (ours; keys in docs/JSON.md)
    #[arg(long, overrides_with = "json")]
    pub json: bool,
    /// The cluster
    #[arg(value_name = "clustername")]
    pub clustername: Option<String>,
    #[arg(hide = true)]
    extra: Vec<String>,
}

/// `list-clusters` arguments.
#[derive(Args, Debug)]
pub struct ListClustersArgs {
    /// JSON (ours; keys in docs/JSON.md)
    #[arg(long, overrides_with = "json")]
    pub json: bool,
    #[arg(hide = true, allow_hyphen_values = true, trailing_var_arg = true)]
    extra: Vec<String>,
}

/// The o2cb commands, in the real tool's order.
#[derive(Subcommand, Debug)]
pub enum O2cbCommand {
    /// Add cluster to the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb add-cluster <clustername>"
    )]
    AddCluster(ClusterWord),
    /// Removes cluster from the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb remove-cluster <clustername>"
    )]
    RemoveCluster(ClusterWord),
    /// Adds a node to the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb add-node [--ip <ip>] [--port <port>] [--number <num>] <clustername> <nodename>",
        infer_long_args = true
    )]
    AddNode(AddNodeArgs),
    /// Removes a node from the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb remove-node <clustername> <nodename>"
    )]
    RemoveNode(ClusterAndNode),
    /// Adds a heartbeat region to the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb add-heartbeat <clustername> [<uuid>|<device>]"
    )]
    AddHeartbeat(ClusterAndRegion),
    /// Removes a heartbeat region from the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb remove-heartbeat <clustername> [<uuid>|<device>]"
    )]
    RemoveHeartbeat(ClusterAndRegion),
    /// Toggles the heartbeat mode between global and local.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb heartbeat-mode <clustername> {global|local}"
    )]
    HeartbeatMode(ModeArgs),
    /// Lists all the cluster names in the config file.
    #[command(verbatim_doc_comment, override_usage = "o2cb list-clusters [--json]")]
    ListClusters(ListClustersArgs),
    /// Lists all the nodes and heartbeat regions associated with the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb list-cluster [--oneline] [--json] <clustername>",
        infer_long_args = true
    )]
    ListCluster(ListArgs),
    /// Lists all the nodes associated with the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb list-nodes [--oneline] [--json] <clustername>",
        infer_long_args = true
    )]
    ListNodes(ListArgs),
    /// Lists all the heartbeat regions associated with the cluster in the config file.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb list-heartbeats [--oneline] [--json] <clustername>",
        infer_long_args = true
    )]
    ListHeartbeats(ListArgs),
    /// Registers the cluster with the cluster stack (lockd).
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb register-cluster <clustername>"
    )]
    RegisterCluster(ClusterWord),
    /// Unregisters the cluster from the cluster stack (lockd).
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb unregister-cluster <clustername>"
    )]
    UnregisterCluster(ClusterWord),
    /// Starts global heartbeat.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb start-heartbeat <clustername>"
    )]
    StartHeartbeat(ClusterWord),
    /// Stops global heartbeat.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb stop-heartbeat <clustername>"
    )]
    StopHeartbeat(ClusterWord),
    /// Returns 0 if cluster online, 1 otherwise.
    #[command(
        verbatim_doc_comment,
        override_usage = "o2cb cluster-status [<clustername>]"
    )]
    ClusterStatus(ClusterWord),
}

/// Commands whose words the real tool takes verbatim (no option parsing):
/// a literal `--` among them is a word, not the end of options.
const VERBATIM: &[&str] = &[
    "add-cluster",
    "remove-cluster",
    "remove-node",
    "add-heartbeat",
    "remove-heartbeat",
    "heartbeat-mode",
    "list-clusters",
    "register-cluster",
    "unregister-cluster",
    "start-heartbeat",
    "stop-heartbeat",
    "cluster-status",
];

/// Stands for a verbatim `--` while clap parses (argv cannot hold a NUL).
const DASHDASH: &str = "\0--";

/// Index of the command word: the first argument that getopt with the real
/// tool's global options (`+hvV`, `--config-file=ARG`) would not consume.
fn command_index(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_bytes();
        if a == b"--" {
            return (i + 1 < args.len()).then_some(i + 1);
        }
        if let Some(long) = a.strip_prefix(b"--") {
            let takes_value =
                !long.contains(&b'=') && !long.is_empty() && b"config-file".starts_with(long);
            i += if takes_value { 2 } else { 1 };
        } else if a.len() > 1 && a[0] == b'-' {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// Prepares argv for clap: drops a `--` that ends the global options and
/// protects `--` words of verbatim commands. Returns the command word too.
fn prepare(mut args: Vec<OsString>) -> (Vec<OsString>, Option<String>) {
    let Some(mut idx) = command_index(&args) else {
        return (args, None);
    };
    if args[idx - 1] == "--" {
        args.remove(idx - 1);
        idx -= 1;
    }
    let word = args[idx].to_string_lossy().into_owned();
    if VERBATIM.contains(&word.as_str()) {
        for a in &mut args[idx + 1..] {
            if a == "--" {
                *a = DASHDASH.into();
            }
        }
    }
    (args, Some(word))
}

pub(super) fn unprotect(w: &Option<String>) -> Option<&str> {
    w.as_deref().map(|s| if s == DASHDASH { "--" } else { s })
}

/// The usage block the real tool prints on stderr.
fn usage_block() -> String {
    let mut s = format!("usage: {USAGE}\n\nThe commands are:\n");
    for sc in O2cbArgs::command().get_subcommands() {
        let about = sc.get_about().map(|a| a.to_string()).unwrap_or_default();
        s.push_str(&format!("  {:<18}  {about}\n", sc.get_name()));
    }
    s.push('\n');
    s
}

fn command_usage(word: &str) -> Option<String> {
    let cmd = O2cbArgs::command();
    let sc = cmd.find_subcommand(word)?;
    let usage = sc.clone().render_usage().to_string();
    let usage = usage
        .trim_start_matches("Usage: ")
        .trim_start_matches("o2cb ");
    Some(usage.trim().to_owned())
}

/// Messages on stderr at the real tool's verbosity levels.
pub(super) struct Say {
    level: u8,
}

impl Say {
    pub(super) fn error(&self, msg: impl std::fmt::Display) {
        eprintln!("o2cb: {msg}");
    }
    /// `-v`: what was done.
    pub(super) fn app(&self, msg: impl std::fmt::Display) {
        if self.level >= 2 {
            eprintln!("{msg}");
        }
    }
    /// `-v -v -v`: debugging detail.
    pub(super) fn debug(&self, msg: impl std::fmt::Display) {
        if self.level >= 4 {
            eprintln!("{msg}");
        }
    }
}

/// What the real tool prints for bad arguments to a command: `usage: ...`
/// (nothing for an unknown command).
fn usage(word: &str) -> Failure {
    match command_usage(word) {
        Some(u) => Failure::error(format!("usage: {u}")),
        None => Failure::silent(FAIL),
    }
}

/// The real tool exits 1 on every error.
const FAIL: u8 = super::exit::ERROR;

/// What a command did.
enum Done {
    /// Exit with this status; the configuration is unchanged.
    Status(u8),
    /// The configuration changed and must be stored.
    Modified,
}

/// What a command returns: what it did, or why it failed (exit 1).
type Did = Result<Done, Failure>;

/// Runs o2cb with these arguments (argv\[0\] first).
pub fn run(args: Vec<OsString>) -> Outcome {
    let (args, word) = prepare(args);
    let parsed = match O2cbArgs::try_parse_from(&args) {
        Ok(p) => p,
        Err(e) => {
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = crate::cli::write_stdout(e.render().to_string().as_bytes());
                return Ok(0);
            }
            let msg = e.render().to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_owned();
            return Err(match word {
                Some(w) if command_usage(&w).is_some() => {
                    eprintln!("o2cb: {first}");
                    usage(&w)
                }
                Some(w) => {
                    eprint!("o2cb: Unknown command '{w}'\n{}", usage_block());
                    Failure::silent(FAIL)
                }
                None => {
                    eprint!("o2cb: {first}\n{}", usage_block());
                    Failure::silent(FAIL)
                }
            });
        }
    };
    let Some(command) = parsed.command else {
        eprint!("{}", usage_block());
        return Err(Failure::silent(FAIL));
    };
    let say = Say {
        level: 1 + parsed.verbose,
    };
    let path = config::config_path(parsed.config_file.as_deref());
    say.app(format!("Using config file '{}'", path.display()));

    let edits = matches!(
        command,
        O2cbCommand::AddCluster(_)
            | O2cbCommand::RemoveCluster(_)
            | O2cbCommand::AddNode(_)
            | O2cbCommand::RemoveNode(_)
            | O2cbCommand::AddHeartbeat(_)
            | O2cbCommand::RemoveHeartbeat(_)
            | O2cbCommand::HeartbeatMode(_)
    );
    // Held from before the load to after the store, so that concurrent
    // edits serialize. With no directory there is no file to protect: the
    // store will report it.
    let _lock = if edits {
        if path == Path::new(DEFAULT_CONFIG_FILE) {
            // The real tool creates /etc/ocfs2 before storing; only for the default path.
            let _ = std::fs::DirBuilder::new().mode(0o755).create(
                Path::new(DEFAULT_CONFIG_FILE)
                    .parent()
                    .expect("has a parent"),
            );
        }
        match ConfigLock::acquire(&path) {
            Ok(l) => Some(l),
            Err(StoreError::NoDirectory { .. }) => None,
            Err(e) => return Err(Failure::error(e)),
        }
    } else {
        None
    };

    let mut conf = config::load(&path).map_err(Failure::error)?;
    match execute(&mut conf, &path, command, &say)? {
        Done::Status(s) => Ok(s),
        Done::Modified => match config::store(&path, &conf) {
            Ok(()) => Ok(0),
            Err(e) => Err(Failure::error(e)),
        },
    }
}

/// Entry point of the `o2cb` binary.
pub fn main() -> ExitCode {
    crate::cli::init_logging("warn");
    crate::cli::finish("o2cb", run(std::env::args_os().collect()))
}

fn execute(conf: &mut ClusterConf, path: &Path, command: O2cbCommand, say: &Say) -> Did {
    use O2cbCommand as C;
    let edit = |r: Result<(), config::EditError>, done: String| {
        r.map_err(Failure::error)?;
        say.app(done);
        Ok(Done::Modified)
    };
    match command {
        C::AddCluster(a) => {
            let name = unprotect(&a.clustername).ok_or_else(|| usage("add-cluster"))?;
            match conf.add_cluster(name) {
                Ok(()) => {
                    say.app(format!("Added cluster '{}'", strip_blanks(name)));
                    Ok(Done::Modified)
                }
                // The real tool reports a duplicate but exits 0, unchanged.
                Err(e @ config::EditError::ClusterExists(_)) => {
                    say.error(e);
                    Ok(Done::Status(0))
                }
                Err(e) => Err(Failure::error(e)),
            }
        }
        C::RemoveCluster(a) => {
            let name = unprotect(&a.clustername).map(strip_blanks).unwrap_or("");
            if name.is_empty() {
                return Err(usage("remove-cluster"));
            }
            edit(
                conf.remove_cluster(name),
                format!("Removed cluster '{name}'"),
            )
        }
        C::AddNode(a) => edit::add_node(conf, a, say),
        C::RemoveNode(a) => {
            let (Some(c), Some(n)) = (unprotect(&a.clustername), unprotect(&a.nodename)) else {
                return Err(usage("remove-node"));
            };
            edit(
                conf.remove_node(c, n),
                format!("Removed node '{n}' from cluster '{c}'"),
            )
        }
        C::AddHeartbeat(a) => edit::heartbeat(conf, a, true, say),
        C::RemoveHeartbeat(a) => edit::heartbeat(conf, a, false, say),
        C::HeartbeatMode(a) => {
            let (Some(c), Some(m)) = (unprotect(&a.clustername), unprotect(&a.mode)) else {
                return Err(usage("heartbeat-mode"));
            };
            let mode = match m {
                "global" => HeartbeatMode::Global,
                "local" => HeartbeatMode::Local,
                _ => return Err(usage("heartbeat-mode")),
            };
            edit(
                conf.set_heartbeat_mode(c, mode),
                format!("Changed heartbeat mode in cluster '{c}' to '{m}'"),
            )
        }
        C::ListClusters(a) => list::list_clusters(conf, a.json),
        C::ListCluster(a) => list::list(conf, a, list::Part::All, "list-cluster", say),
        C::ListNodes(a) => list::list(conf, a, list::Part::Nodes, "list-nodes", say),
        C::ListHeartbeats(a) => list::list(conf, a, list::Part::Heartbeats, "list-heartbeats", say),
        C::RegisterCluster(a) => stack::stack(conf, path, a, stack::Stack::Register, say),
        C::UnregisterCluster(a) => stack::stack(conf, path, a, stack::Stack::Unregister, say),
        C::StartHeartbeat(a) => stack::stack(conf, path, a, stack::Stack::Heartbeat(true), say),
        C::StopHeartbeat(a) => stack::stack(conf, path, a, stack::Stack::Heartbeat(false), say),
        C::ClusterStatus(a) => stack::cluster_status(a),
    }
}

#[cfg(test)]
mod tests {
    use super::edit::strtol_int;
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn strtol_matches_c() {
        assert_eq!(strtol_int("10"), Some(10));
        assert_eq!(strtol_int("0x10"), Some(16));
        assert_eq!(strtol_int("07"), Some(7));
        assert_eq!(strtol_int("08"), None);
        assert_eq!(strtol_int("0x"), None);
        assert_eq!(strtol_int(""), Some(0));
        assert_eq!(strtol_int(" "), None);
        assert_eq!(strtol_int(" 12"), Some(12));
        assert_eq!(strtol_int("-5"), Some(-5));
        assert_eq!(strtol_int("+5"), Some(5));
        assert_eq!(strtol_int("77x"), None);
        assert_eq!(strtol_int("4294967296"), Some(0));
        assert_eq!(strtol_int("4294967295"), Some(-1));
        assert_eq!(strtol_int("99999999999"), Some(1215752191));
        // Overflow saturates at LONG_MAX, which truncates to -1.
        assert_eq!(strtol_int("99999999999999999999999"), Some(-1));
        assert_eq!(strtol_int("-99999999999999999999999"), Some(0));
    }

    #[test]
    fn command_word_follows_getopt() {
        assert_eq!(command_index(&os(&["o2cb", "list-clusters"])), Some(1));
        assert_eq!(
            command_index(&os(&["o2cb", "--config-file", "x", "-vv", "add-node"])),
            Some(4)
        );
        assert_eq!(command_index(&os(&["o2cb", "--conf", "x", "ls"])), Some(3));
        assert_eq!(
            command_index(&os(&["o2cb", "--config-file=x", "ls"])),
            Some(2)
        );
        assert_eq!(command_index(&os(&["o2cb", "--", "ls"])), Some(2));
        assert_eq!(command_index(&os(&["o2cb", "-v"])), None);
    }

    #[test]
    fn verbatim_commands_keep_double_dash() {
        let (args, word) = prepare(os(&["o2cb", "--", "add-heartbeat", "c1", "--"]));
        assert_eq!(word.as_deref(), Some("add-heartbeat"));
        assert_eq!(args, os(&["o2cb", "add-heartbeat", "c1", DASHDASH]));
        let (args, _) = prepare(os(&["o2cb", "add-node", "--", "c1", "n1"]));
        assert_eq!(args, os(&["o2cb", "add-node", "--", "c1", "n1"]));
    }

    #[test]
    fn usage_lists_every_command() {
        let u = usage_block();
        assert!(u.starts_with("usage: o2cb [--config-file=path]"));
        assert!(u.contains("\n  add-cluster         Add cluster to the config file.\n"));
        assert!(u.contains("\n  cluster-status      Returns 0 if cluster online, 1 otherwise.\n"));
        assert_eq!(
            command_usage("add-node").unwrap(),
            "add-node [--ip <ip>] [--port <port>] [--number <num>] <clustername> <nodename>"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        O2cbArgs::command().debug_assert();
    }
}
