//! o2cb's listings: the real tool's stanza and `--oneline` formats, and
//! our `--json` (keys in docs/JSON.md).
//!
//! May depend on: `config`, `cli`.

use std::io::Write as _;

use serde::Serialize;

use super::{Did, Done, FAIL, ListArgs, Say, usage};
use crate::config::{self, Cluster, ClusterConf};

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

fn print_json(v: &impl Serialize) -> Did {
    crate::cli::print_json(v);
    Ok(Done::Status(0))
}

pub(super) fn list_clusters(conf: &ClusterConf, json: bool) -> Did {
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
    Ok(Done::Status(0))
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Part {
    All,
    Nodes,
    Heartbeats,
}

pub(super) fn list(conf: &ClusterConf, a: ListArgs, part: Part, word: &str, say: &Say) -> Did {
    let Some(name) = a.clustername else {
        return Err(usage(word));
    };
    let Some(c) = conf.cluster(&name) else {
        say.error(config::EditError::UnknownCluster(name));
        // The real tool exits 0 here; for --json (ours) an unknown cluster is an error.
        return Ok(Done::Status(if a.json { FAIL } else { 0 }));
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
    Ok(Done::Status(0))
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
