//! `o2cb`: edit and list the cluster configuration, a drop-in for ocfs2-tools'
//! `o2cb` 1.8.7.
//!
//! Same commands, listings, file bytes and exit statuses as the real tool;
//! the few deliberate differences are in `docs/COMPATIBILITY.md`. Argument
//! handling follows the real tool's getopt rules: global options only before
//! the command, `add-node` and the list commands take their options anywhere
//! (and unambiguous prefixes of them), every other command takes its words
//! verbatim and ignores extra ones.

use std::ffi::{CStr, CString, OsString};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory as _, Parser, Subcommand};
use serde::Serialize;

use crate::client::{Client, ConnectOptions};
use crate::config::file::StoreError;
use crate::config::{
    self, Cluster, ClusterConf, ConfigLock, DEFAULT_CONFIG_FILE, DEFAULT_PORT, HeartbeatMode,
    strip_blanks,
};
use crate::heartbeat::ocfs2;

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

fn unprotect(w: &Option<String>) -> Option<&str> {
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
struct Say {
    level: u8,
}

impl Say {
    fn error(&self, msg: impl std::fmt::Display) {
        eprintln!("o2cb: {msg}");
    }
    /// `-v`: what was done.
    fn app(&self, msg: impl std::fmt::Display) {
        if self.level >= 2 {
            eprintln!("{msg}");
        }
    }
    /// `-v -v -v`: debugging detail.
    fn debug(&self, msg: impl std::fmt::Display) {
        if self.level >= 4 {
            eprintln!("{msg}");
        }
    }
    fn usage(&self, word: &str) {
        if let Some(u) = command_usage(word) {
            self.error(format!("usage: {u}"));
        }
    }
}

const FAIL: u8 = 1;

/// What a command did.
enum Done {
    /// Exit with this status; the configuration is unchanged.
    Status(u8),
    /// The configuration changed and must be stored.
    Modified,
}

/// Runs o2cb with these arguments (argv\[0\] first); returns the exit status.
pub fn run(args: Vec<OsString>) -> u8 {
    let (args, word) = prepare(args);
    let parsed = match O2cbArgs::try_parse_from(&args) {
        Ok(p) => p,
        Err(e) => {
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = crate::cli::write_stdout(e.render().to_string().as_bytes());
                return 0;
            }
            let msg = e.render().to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_owned();
            match word {
                Some(w) if command_usage(&w).is_some() => {
                    eprintln!("o2cb: {first}");
                    Say { level: 1 }.usage(&w);
                }
                Some(w) => eprint!("o2cb: Unknown command '{w}'\n{}", usage_block()),
                None => eprint!("o2cb: {first}\n{}", usage_block()),
            }
            return FAIL;
        }
    };
    let Some(command) = parsed.command else {
        eprint!("{}", usage_block());
        return FAIL;
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
            Err(e) => {
                say.error(e);
                return FAIL;
            }
        }
    } else {
        None
    };

    let mut conf = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            say.error(e);
            return FAIL;
        }
    };

    match execute(&mut conf, &path, command, &say) {
        Done::Status(s) => s,
        Done::Modified => match config::store(&path, &conf) {
            Ok(()) => 0,
            Err(e) => {
                say.error(e);
                FAIL
            }
        },
    }
}

/// Entry point of the `o2cb` binary.
pub fn main() -> ExitCode {
    crate::cli::init_logging();
    ExitCode::from(run(std::env::args_os().collect()))
}

fn execute(conf: &mut ClusterConf, path: &Path, command: O2cbCommand, say: &Say) -> Done {
    use O2cbCommand as C;
    let edit = |r: Result<(), config::EditError>, done: String| match r {
        Ok(()) => {
            say.app(done);
            Done::Modified
        }
        Err(e) => {
            say.error(e);
            Done::Status(FAIL)
        }
    };
    match command {
        C::AddCluster(a) => {
            let Some(name) = unprotect(&a.clustername) else {
                say.usage("add-cluster");
                return Done::Status(FAIL);
            };
            match conf.add_cluster(name) {
                Ok(()) => {
                    say.app(format!("Added cluster '{}'", strip_blanks(name)));
                    Done::Modified
                }
                // The real tool reports a duplicate but exits 0, unchanged.
                Err(e @ config::EditError::ClusterExists(_)) => {
                    say.error(e);
                    Done::Status(0)
                }
                Err(e) => {
                    say.error(e);
                    Done::Status(FAIL)
                }
            }
        }
        C::RemoveCluster(a) => {
            let name = unprotect(&a.clustername).map(strip_blanks).unwrap_or("");
            if name.is_empty() {
                say.usage("remove-cluster");
                return Done::Status(FAIL);
            }
            edit(
                conf.remove_cluster(name),
                format!("Removed cluster '{name}'"),
            )
        }
        C::AddNode(a) => add_node(conf, a, say),
        C::RemoveNode(a) => {
            let (Some(c), Some(n)) = (unprotect(&a.clustername), unprotect(&a.nodename)) else {
                say.usage("remove-node");
                return Done::Status(FAIL);
            };
            edit(
                conf.remove_node(c, n),
                format!("Removed node '{n}' from cluster '{c}'"),
            )
        }
        C::AddHeartbeat(a) => heartbeat(conf, a, true, say),
        C::RemoveHeartbeat(a) => heartbeat(conf, a, false, say),
        C::HeartbeatMode(a) => {
            let (Some(c), Some(m)) = (unprotect(&a.clustername), unprotect(&a.mode)) else {
                say.usage("heartbeat-mode");
                return Done::Status(FAIL);
            };
            let mode = match m {
                "global" => HeartbeatMode::Global,
                "local" => HeartbeatMode::Local,
                _ => {
                    say.usage("heartbeat-mode");
                    return Done::Status(FAIL);
                }
            };
            edit(
                conf.set_heartbeat_mode(c, mode),
                format!("Changed heartbeat mode in cluster '{c}' to '{m}'"),
            )
        }
        C::ListClusters(a) => list_clusters(conf, a.json),
        C::ListCluster(a) => list(conf, a, Part::All, "list-cluster", say),
        C::ListNodes(a) => list(conf, a, Part::Nodes, "list-nodes", say),
        C::ListHeartbeats(a) => list(conf, a, Part::Heartbeats, "list-heartbeats", say),
        C::RegisterCluster(a) => stack(conf, path, a, Stack::Register, say),
        C::UnregisterCluster(a) => stack(conf, path, a, Stack::Unregister, say),
        C::StartHeartbeat(a) => stack(conf, path, a, Stack::Heartbeat(true), say),
        C::StopHeartbeat(a) => stack(conf, path, a, Stack::Heartbeat(false), say),
        C::ClusterStatus(a) => cluster_status(a, say),
    }
}

const NO_STACK: &str = "Unable to access cluster service while initializing the cluster";

/// The kernel-facing commands, and what they ask of lockd (our cluster
/// stack, in place of the kernel's configfs).
#[derive(Clone, Copy)]
enum Stack {
    Register,
    Unregister,
    Heartbeat(bool),
}

impl Stack {
    fn word(self) -> &'static str {
        match self {
            Stack::Register => "register-cluster",
            Stack::Unregister => "unregister-cluster",
            Stack::Heartbeat(true) => "start-heartbeat",
            Stack::Heartbeat(false) => "stop-heartbeat",
        }
    }
}

/// Connects to lockd, never starting one: with no lockd there is no
/// cluster stack, and the commands fail as the real tool does without the
/// kernel modules. None (after reporting) when lockd cannot be reached.
fn stack_client(say: &Say) -> Option<Client> {
    let mut opts = ConnectOptions::from_env(None);
    opts.autostart = false;
    match Client::connect_with(&opts) {
        Ok(c) => Some(c),
        Err(e) => {
            if e.is_unreachable() {
                say.error(NO_STACK);
            } else {
                say.error(e);
            }
            None
        }
    }
}

fn stack(conf: &ClusterConf, path: &Path, a: ClusterWord, op: Stack, say: &Say) -> Done {
    let Some(c) = unprotect(&a.clustername) else {
        say.usage(op.word());
        return Done::Status(FAIL);
    };
    // The real tool looks the cluster up in the file before touching the
    // kernel, except for stop-heartbeat and unregister-cluster.
    let known = conf.cluster(c);
    if matches!(op, Stack::Register | Stack::Heartbeat(true)) && known.is_none() {
        say.error(config::EditError::UnknownCluster(c.to_owned()));
        return Done::Status(FAIL);
    }
    let Some(mut client) = stack_client(say) else {
        return Done::Status(FAIL);
    };
    let result = match op {
        Stack::Register => {
            // lockd reads the file itself, from its own working directory.
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            client.register_cluster(&abs, c, None)
        }
        Stack::Unregister => client.unregister_cluster(c),
        Stack::Heartbeat(start) => {
            // Global heartbeat only: in local mode there is nothing to do.
            if known.is_some_and(|k| k.heartbeat_mode != HeartbeatMode::Global) {
                return Done::Status(0);
            }
            client.cluster_heartbeat(c, start)
        }
    };
    match result {
        Ok(()) => {
            say.app(match op {
                Stack::Register => format!("Registered cluster '{c}'"),
                Stack::Unregister => format!("Unregistered cluster '{c}'"),
                Stack::Heartbeat(true) => format!("Started global heartbeat for cluster '{c}'"),
                Stack::Heartbeat(false) => format!("Stopped global heartbeat for cluster '{c}'"),
            });
            Done::Status(0)
        }
        Err(e) => {
            say.error(e);
            Done::Status(FAIL)
        }
    }
}

/// `cluster-status [NAME]`: `Cluster 'c' is online` (exit 0) when lockd
/// runs that cluster (or any, with no name); `offline` (exit 1) otherwise.
fn cluster_status(a: ClusterWord, say: &Say) -> Done {
    let Some(mut client) = stack_client(say) else {
        let _ = crate::cli::write_stdout(b"offline\n");
        return Done::Status(FAIL);
    };
    let running = match client.status() {
        Ok(s) => s.cluster,
        Err(e) => {
            let _ = crate::cli::write_stdout(b"offline\n");
            say.error(e);
            return Done::Status(FAIL);
        }
    };
    let wanted = unprotect(&a.clustername);
    match running {
        Some(name) if wanted.is_none_or(|w| w == name) => {
            let _ = crate::cli::write_stdout(format!("Cluster '{name}' is online\n").as_bytes());
            Done::Status(0)
        }
        _ => {
            let _ = crate::cli::write_stdout(b"offline\n");
            Done::Status(FAIL)
        }
    }
}

/// C `strtol(s, &end, 0)` truncated to `int`, as the real tool reads
/// `--port` and `--number`: `0x10` is hex, `07` octal, an empty string 0.
/// None when characters are left over.
fn strtol_int(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    let mut i = b.iter().take_while(|&&c| config::is_c_space(c)).count();
    let mut neg = false;
    if let Some(&sign @ (b'+' | b'-')) = b.get(i) {
        neg = sign == b'-';
        i += 1;
    }
    let base: u32 = if b.get(i) == Some(&b'0')
        && matches!(b.get(i + 1), Some(b'x' | b'X'))
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
        16
    } else if b.get(i) == Some(&b'0') {
        8
    } else {
        10
    };
    let digits: Vec<u32> = b[i..]
        .iter()
        .map_while(|&c| (c as char).to_digit(base))
        .collect();
    if digits.is_empty() {
        // No conversion: the end pointer is the start of the string.
        return s.is_empty().then_some(0);
    }
    if i + digits.len() != b.len() {
        return None;
    }
    let mut v: i128 = 0;
    for d in digits {
        v = (v * i128::from(base) + i128::from(d)).min(i128::from(i64::MAX) + 1);
    }
    let v = if neg { -v } else { v };
    let long = v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    Some(long as i32)
}

/// The first IPv4 address of `name`, as `getaddrinfo(AF_INET)` gives it;
/// the error is `gai_strerror`'s text.
fn resolve_ipv4(name: &str) -> Result<Ipv4Addr, String> {
    let c_name = CString::new(name).map_err(|_| "Name or service not known".to_owned())?;
    // SAFETY: hints is a valid zeroed addrinfo with the fields getaddrinfo
    // reads set; the result list is freed exactly once below.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = libc::AF_INET;
        hints.ai_socktype = libc::SOCK_STREAM;
        hints.ai_protocol = libc::IPPROTO_TCP;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        let rc = libc::getaddrinfo(c_name.as_ptr(), std::ptr::null(), &hints, &mut res);
        if rc != 0 {
            return Err(CStr::from_ptr(libc::gai_strerror(rc))
                .to_string_lossy()
                .into_owned());
        }
        let sin = (*res).ai_addr as *const libc::sockaddr_in;
        let addr = Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr));
        libc::freeaddrinfo(res);
        Ok(addr)
    }
}

fn add_node(conf: &mut ClusterConf, a: AddNodeArgs, say: &Say) -> Done {
    let usage = || {
        say.usage("add-node");
        Done::Status(FAIL)
    };
    let port = match a.port.as_deref().map(strtol_int) {
        None => -1,
        Some(Some(p)) => p,
        Some(None) => {
            say.error("Invalid port number");
            return usage();
        }
    };
    let number = match a.number.as_deref().map(strtol_int) {
        None => -1,
        Some(Some(n)) => n,
        Some(None) => {
            say.error("Invalid node number");
            return usage();
        }
    };
    let (Some(cluster), Some(nodename)) = (a.clustername, a.nodename) else {
        return usage();
    };
    let nodename = strip_blanks(&nodename);
    if nodename.is_empty() {
        say.error(config::EditError::NodeNameEmpty);
        return usage();
    }
    say.debug(format!(
        "Add node '{nodename}' in cluster '{cluster}' having ip '{}', port '{port}' and number '{number}'",
        a.ip.as_deref().unwrap_or("auto")
    ));
    if conf.cluster(&cluster).is_none() {
        say.error(config::EditError::UnknownCluster(cluster));
        return Done::Status(FAIL);
    }
    let ip = match &a.ip {
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(v) => v,
            Err(_) => {
                say.error(format!("Bad IP Address '{ip}'"));
                return Done::Status(FAIL);
            }
        },
        None => match resolve_ipv4(nodename) {
            Ok(v) => v,
            Err(e) => {
                say.error(format!(
                    "{e}, while looking up the IP address for '{nodename}'"
                ));
                return Done::Status(FAIL);
            }
        },
    };
    say.debug(format!("Validated IP address '{ip}'"));
    let port = if port == -1 {
        DEFAULT_PORT
    } else {
        port as u32
    };
    let requested = (number != -1).then_some(i64::from(number));
    match conf
        .cluster(&cluster)
        .expect("checked")
        .choose_number(requested)
    {
        Ok(n) => say.debug(format!("Validated node number '{n}'")),
        Err(e) => {
            say.error(e);
            return Done::Status(FAIL);
        }
    }
    match conf.add_node(&cluster, nodename, ip, port, requested) {
        Ok(n) => {
            say.app(format!(
                "Added node '{nodename}' in cluster '{cluster}' having ip '{ip}', port '{}' and number '{n}'",
                port as i32
            ));
            Done::Modified
        }
        Err(e) => {
            say.error(e);
            Done::Status(FAIL)
        }
    }
}

/// A region argument: a block device stands for its OCFS2 volume's UUID;
/// anything else is the region itself.
fn region_of(arg: &str, say: &Say) -> Result<String, String> {
    let is_block = std::fs::metadata(arg)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if !is_block {
        say.debug(format!("'{arg}' is not a block device; assuming region"));
        return Ok(arg.to_owned());
    }
    say.debug(format!("Reading region of block device '{arg}'"));
    ocfs2::read_superblock(Path::new(arg))
        .map(|sb| sb.uuid_string())
        .map_err(|e| format!("cannot read the heartbeat region of device '{arg}': {e}"))
}

fn heartbeat(conf: &mut ClusterConf, a: ClusterAndRegion, adding: bool, say: &Say) -> Done {
    let word = if adding {
        "add-heartbeat"
    } else {
        "remove-heartbeat"
    };
    let (Some(cluster), Some(arg)) = (unprotect(&a.clustername), unprotect(&a.region)) else {
        say.usage(word);
        return Done::Status(FAIL);
    };
    // The real tool strips blanks from the region it adds, not from the one it removes.
    let arg = if adding { strip_blanks(arg) } else { arg };
    let region = match region_of(arg, say) {
        Ok(r) => r,
        Err(e) => {
            say.error(e);
            return Done::Status(FAIL);
        }
    };
    say.debug(format!("Heartbeat region '{region}'"));
    let (result, done) = if adding {
        (
            conf.add_heartbeat(cluster, &region),
            format!("Added heartbeat region '{region}' to cluster '{cluster}'"),
        )
    } else {
        (
            conf.remove_heartbeat(cluster, &region),
            format!("Removed heartbeat region '{region}' from cluster '{cluster}'"),
        )
    };
    match result {
        Ok(()) => {
            if region.is_empty() {
                say.error(
                    "warning: stored an empty heartbeat region, as ocfs2-tools does; \
                     no o2cb will load this file until the empty 'region =' stanza is edited out",
                );
            }
            say.app(done);
            Done::Modified
        }
        Err(e) => {
            say.error(e);
            Done::Status(FAIL)
        }
    }
}

#[derive(Serialize)]
struct JsonCluster<'a> {
    name: &'a str,
    heartbeat_mode: &'static str,
    node_count: u32,
}

#[derive(Serialize)]
struct JsonNode<'a> {
    number: u32,
    name: &'a str,
    ip_address: String,
    ip_port: u32,
}

#[derive(Serialize)]
struct JsonHeartbeat<'a> {
    region: &'a str,
}

impl<'a> JsonCluster<'a> {
    fn of(c: &'a Cluster) -> Self {
        JsonCluster {
            name: &c.name,
            heartbeat_mode: c.heartbeat_mode.as_str(),
            node_count: c.node_count,
        }
    }
}

fn json_nodes(c: &Cluster) -> Vec<JsonNode<'_>> {
    c.nodes
        .iter()
        .map(|n| JsonNode {
            number: n.number,
            name: &n.name,
            ip_address: n.ip_address.to_string(),
            ip_port: n.ip_port,
        })
        .collect()
}

fn json_heartbeats(c: &Cluster) -> Vec<JsonHeartbeat<'_>> {
    c.heartbeats
        .iter()
        .map(|h| JsonHeartbeat { region: &h.region })
        .collect()
}

fn print_json(v: &impl Serialize) -> Done {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    let _ = crate::cli::write_stdout(s.as_bytes());
    Done::Status(0)
}

fn list_clusters(conf: &ClusterConf, json: bool) -> Done {
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            clusters: Vec<JsonCluster<'a>>,
        }
        return print_json(&Out {
            clusters: conf.clusters.iter().map(JsonCluster::of).collect(),
        });
    }
    let mut out = Vec::new();
    for c in &conf.clusters {
        let _ = writeln!(out, "{}", c.name);
    }
    let _ = crate::cli::write_stdout(&out);
    Done::Status(0)
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    All,
    Nodes,
    Heartbeats,
}

fn list(conf: &ClusterConf, a: ListArgs, part: Part, word: &str, say: &Say) -> Done {
    let Some(name) = a.clustername else {
        say.usage(word);
        return Done::Status(FAIL);
    };
    let Some(c) = conf.cluster(&name) else {
        say.error(config::EditError::UnknownCluster(name));
        // The real tool exits 0 here; for --json (ours) an unknown cluster is an error.
        return Done::Status(if a.json { FAIL } else { 0 });
    };
    if a.json {
        #[derive(Serialize)]
        struct All<'a> {
            cluster: JsonCluster<'a>,
            heartbeats: Vec<JsonHeartbeat<'a>>,
            nodes: Vec<JsonNode<'a>>,
        }
        #[derive(Serialize)]
        struct Nodes<'a> {
            cluster: &'a str,
            nodes: Vec<JsonNode<'a>>,
        }
        #[derive(Serialize)]
        struct Heartbeats<'a> {
            cluster: &'a str,
            heartbeats: Vec<JsonHeartbeat<'a>>,
        }
        return match part {
            Part::All => print_json(&All {
                cluster: JsonCluster::of(c),
                heartbeats: json_heartbeats(c),
                nodes: json_nodes(c),
            }),
            Part::Nodes => print_json(&Nodes {
                cluster: &c.name,
                nodes: json_nodes(c),
            }),
            Part::Heartbeats => print_json(&Heartbeats {
                cluster: &c.name,
                heartbeats: json_heartbeats(c),
            }),
        };
    }
    let _ = crate::cli::write_stdout(&listing(c, part, a.oneline));
    Done::Status(0)
}

/// The real tool's listing; numbers are printed as C `int`s (`%d`).
fn listing(c: &Cluster, part: Part, oneline: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let name = &c.name;
    if part != Part::Nodes {
        for h in &c.heartbeats {
            let r = &h.region;
            let _ = if oneline {
                writeln!(out, "heartbeat: {r} {name}")
            } else {
                write!(out, "heartbeat:\n\tregion = {r}\n\tcluster = {name}\n\n")
            };
        }
    }
    if part != Part::Heartbeats {
        for n in &c.nodes {
            let (num, port) = (n.number as i32, n.ip_port as i32);
            let (nn, ip) = (&n.name, n.ip_address);
            let _ = if oneline {
                writeln!(out, "node: {num} {nn} {ip}:{port} {name}")
            } else {
                write!(
                    out,
                    "node:\n\tnumber = {num}\n\tname = {nn}\n\tip_address = {ip}\n\tip_port = {port}\n\tcluster = {name}\n\n"
                )
            };
        }
    }
    if part == Part::All {
        let (count, mode) = (c.node_count as i32, c.heartbeat_mode);
        let _ = if oneline {
            writeln!(out, "cluster: {count} {mode} {name}")
        } else {
            write!(
                out,
                "cluster:\n\tnode_count = {count}\n\theartbeat_mode = {mode}\n\tname = {name}\n\n"
            )
        };
    }
    out
}

#[cfg(test)]
mod tests {
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
