//! `dlmctl domains`, `locks` and `status`: tables for people, `--json` for
//! scripts (the keys are a contract: docs/JSON.md).
//!
//! May depend on: `client`, `dlm` (types), `cli`.

use serde::Serialize;

use super::lvb::hex;
use super::{DlmctlArgs, connect, connect_options, exit};
use crate::cli::{Outcome, print_json, print_table, table};
use crate::client::Client;
use crate::dlm::{Holder, Mode, ResourceInfo};

fn name(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn domains(args: &DlmctlArgs, json: bool) -> Outcome {
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

pub(super) fn locks(args: &DlmctlArgs, domain: Option<&str>, json: bool) -> Outcome {
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

pub(super) fn status(args: &DlmctlArgs, json: bool) -> Outcome {
    let opts = connect_options(args);
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
