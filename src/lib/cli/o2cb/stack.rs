//! The kernel-facing o2cb commands (`register-cluster`,
//! `unregister-cluster`, `start-heartbeat`, `stop-heartbeat`,
//! `cluster-status`): lockd plays the kernel's part. With no lockd they fail
//! as the real tool does without the o2cb kernel modules; o2cb never starts
//! one.
//!
//! May depend on: `client`, `config`, `cli`.

use std::path::Path;

use super::{ClusterWord, Did, Done, FAIL, Say, unprotect, usage};
use crate::cli::Failure;
use crate::client::{Client, ConnectOptions};
use crate::config::{self, ClusterConf, HeartbeatMode};

const NO_STACK: &str = "Unable to access cluster service while initializing the cluster";

/// The kernel-facing commands, and what they ask of lockd (our cluster
/// stack, in place of the kernel's configfs).
#[derive(Clone, Copy)]
pub(super) enum Stack {
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
/// kernel modules.
fn stack_client() -> Result<Client, Failure> {
    let mut opts = ConnectOptions::from_env(None);
    opts.autostart = false;
    Client::connect_with(&opts).map_err(|e| {
        if e.is_unreachable() {
            Failure::error(NO_STACK)
        } else {
            Failure::error(e)
        }
    })
}

pub(super) fn stack(conf: &ClusterConf, path: &Path, a: ClusterWord, op: Stack, say: &Say) -> Did {
    let c = unprotect(&a.clustername).ok_or_else(|| usage(op.word()))?;
    // The real tool looks the cluster up in the file before touching the
    // kernel, except for stop-heartbeat and unregister-cluster.
    let known = conf.cluster(c);
    if matches!(op, Stack::Register | Stack::Heartbeat(true)) && known.is_none() {
        return Err(Failure::error(config::EditError::UnknownCluster(
            c.to_owned(),
        )));
    }
    let mut client = stack_client()?;
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
                return Ok(Done::Status(0));
            }
            client.cluster_heartbeat(c, start)
        }
    };
    result.map_err(Failure::error)?;
    say.app(match op {
        Stack::Register => format!("Registered cluster '{c}'"),
        Stack::Unregister => format!("Unregistered cluster '{c}'"),
        Stack::Heartbeat(true) => format!("Started global heartbeat for cluster '{c}'"),
        Stack::Heartbeat(false) => format!("Stopped global heartbeat for cluster '{c}'"),
    });
    Ok(Done::Status(0))
}

/// `cluster-status [NAME]`: `Cluster 'c' is online` (exit 0) when lockd
/// runs that cluster (or any, with no name); `offline` (exit 1) otherwise.
pub(super) fn cluster_status(a: ClusterWord) -> Did {
    let running = stack_client()
        .and_then(|mut client| client.status().map(|s| s.cluster).map_err(Failure::error));
    let running = match running {
        Ok(r) => r,
        Err(f) => {
            let _ = crate::cli::write_stdout(b"offline\n");
            return Err(f);
        }
    };
    let wanted = unprotect(&a.clustername);
    match running {
        Some(name) if wanted.is_none_or(|w| w == name) => {
            let _ = crate::cli::write_stdout(format!("Cluster '{name}' is online\n").as_bytes());
            Ok(Done::Status(0))
        }
        _ => {
            let _ = crate::cli::write_stdout(b"offline\n");
            Ok(Done::Status(FAIL))
        }
    }
}
