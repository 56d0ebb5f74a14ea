//! The heartbeat regions lockd runs, as the loop sees them: `hb_ctl`'s
//! start and stop (references counted per service), the reports of the
//! region threads, and the membership they give the core and the quorum.
//!
//! May depend on: the parent module and its siblings, `dlm`, `proto`,
//! `heartbeat`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use tracing::{info, warn};

use super::heartbeat::{self, HbParams, Report};
use super::{Loop, RegionEntry};
use crate::dlm::{Input, NodeId};
use crate::heartbeat::{liveness, region};
use crate::proto::{HbTarget, ServerMsg, ServerReply};

impl RegionEntry {
    pub(super) fn total_refs(&self) -> u32 {
        self.refs.values().sum()
    }
}

/// Block devices from /proc/partitions, for finding a region by UUID.
fn find_by_uuid(uuid: &[u8; 16]) -> Option<(PathBuf, region::Region)> {
    let parts = std::fs::read_to_string("/proc/partitions").ok()?;
    parts
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|name| PathBuf::from("/dev").join(name))
        .filter(|p| p.exists())
        .find_map(|p| match region::locate(&p) {
            Ok(r) if &r.uuid == uuid => Some((p, r)),
            _ => None,
        })
}

impl Loop<'_> {
    /// The active region a target names, if any.
    pub(super) fn find_region(&self, target: &HbTarget) -> Option<u64> {
        let by_uuid = |u: &[u8; 16]| {
            self.regions
                .iter()
                .find(|(_, e)| &e.region.uuid == u && !e.stopping)
                .map(|(&k, _)| k)
        };
        match target {
            HbTarget::Uuid(u) => by_uuid(u),
            HbTarget::Device(p) => {
                let path = PathBuf::from(OsStr::from_bytes(p));
                self.regions
                    .iter()
                    .find(|(_, e)| e.device == path && !e.stopping)
                    .map(|(&k, _)| k)
                    .or_else(|| region::locate(&path).ok().and_then(|r| by_uuid(&r.uuid)))
            }
        }
    }

    pub(super) fn hb_start(&mut self, token: u64, tag: u64, target: HbTarget, service: String) {
        if let Some(key) = self.find_region(&target) {
            let e = self.regions.get_mut(&key).expect("found");
            *e.refs.entry(service).or_default() += 1;
            if e.steady {
                let reply = ServerReply::HbRefs {
                    uuid: e.region.uuid,
                    refs: e.total_refs(),
                };
                self.send(token, &ServerMsg::Reply { tag, reply });
            } else {
                e.start_waiters.push((token, tag));
            }
            return;
        }
        // Locating reads a few blocks; it is done here, on the loop, as the
        // kernel's configfs write is synchronous too.
        let found = match &target {
            HbTarget::Device(p) => {
                let path = PathBuf::from(OsStr::from_bytes(p));
                region::locate(&path)
                    .map(|r| (path, r))
                    .map_err(|e| e.to_string())
            }
            HbTarget::Uuid(u) => find_by_uuid(u).ok_or_else(|| {
                format!(
                    "no block device holds heartbeat region {}",
                    u.iter().map(|b| format!("{b:02X}")).collect::<String>()
                )
            }),
        };
        let (device, reg) = match found {
            Ok(f) => f,
            Err(m) => return self.reply_failed(token, tag, m),
        };
        if u32::from(self.node.0) >= reg.slots {
            return self.reply_failed(
                token,
                tag,
                format!(
                    "node {} has no slot in a region of {} slots",
                    self.node.0, reg.slots
                ),
            );
        }
        let key = self.next_region;
        self.next_region += 1;
        let hb = &self.opts.settings.heartbeat;
        let thread = heartbeat::spawn(
            key,
            HbParams {
                device: device.clone(),
                region: reg.clone(),
                node: self.node.0,
                interval_ms: hb.interval_ms,
                dead_threshold: hb.dead_threshold,
                silent: self.hb_silent.clone(),
            },
            self.alive_ms.clone(),
            self.start,
            self.hb_tx.clone(),
            self.wake.clone(),
        );
        self.regions.insert(
            key,
            RegionEntry {
                device,
                region: reg,
                thread: Some(thread),
                refs: BTreeMap::from([(service, 1)]),
                start_waiters: vec![(token, tag)],
                stop_waiters: Vec::new(),
                steady: false,
                direct: false,
                live: Vec::new(),
                iterations: 0,
                problem: None,
                stopping: false,
            },
        );
    }

    pub(super) fn hb_stop(&mut self, token: u64, tag: u64, target: HbTarget, service: String) {
        let Some(key) = self.find_region(&target) else {
            return self.reply_failed(
                token,
                tag,
                "lockd is not heartbeating on that region".into(),
            );
        };
        let e = self.regions.get_mut(&key).expect("found");
        let uuid = e.region.uuid;
        match e.refs.get_mut(&service) {
            None => {
                let held: Vec<String> = e.refs.iter().map(|(s, n)| format!("{s}: {n}")).collect();
                let message = format!(
                    "the region has no reference for service '{service}' (references: {})",
                    held.join(", ")
                );
                return self.reply_failed(token, tag, message);
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    e.refs.remove(&service);
                }
            }
        }
        let refs = e.total_refs();
        if refs > 0 {
            self.send(
                token,
                &ServerMsg::Reply {
                    tag,
                    reply: ServerReply::HbRefs { uuid, refs },
                },
            );
            return;
        }
        e.stopping = true;
        e.stop_waiters.push((token, tag));
        if let Some(t) = &e.thread {
            t.stop();
        }
    }

    /// What a region thread said.
    pub(super) fn region_report(&mut self, key: u64, report: Report) {
        let Some(e) = self.regions.get_mut(&key) else {
            return;
        };
        let uuid = e.region.uuid;
        match report {
            Report::Started { direct } => e.direct = direct,
            Report::Failed(message) => {
                warn!(device = %e.device.display(), error = %message, "heartbeat could not start");
                let e = self.regions.remove(&key).expect("exists");
                for (t, tag) in e.start_waiters.iter().chain(&e.stop_waiters) {
                    self.reply_failed(*t, *tag, message.clone());
                }
                self.update_membership();
            }
            Report::Iteration {
                events,
                live,
                steady,
                iterations,
                problem,
                slot_taken,
            } => {
                if slot_taken {
                    self.fence_reason = Some(format!(
                        "another node writes this node's heartbeat slot on {}",
                        e.device.display()
                    ));
                }
                for ev in &events {
                    match ev {
                        liveness::Event::NodeUp { .. } | liveness::Event::NodeDown { .. } => {
                            info!(device = %e.device.display(), "{ev}");
                        }
                        liveness::Event::ForeignWriter { .. } => {
                            warn!(device = %e.device.display(), "{ev}");
                        }
                        _ => {}
                    }
                    if let liveness::Event::NodeDown { node, reason } = ev {
                        self.hb_down.insert(*node);
                        if *reason == liveness::DownReason::GenerationChanged {
                            self.hb_restarted.insert(*node);
                        }
                    }
                }
                e.live = live;
                e.steady = e.steady || steady;
                e.iterations = iterations;
                e.problem = problem;
                // The kernel gives up on a region that does not settle within
                // three times the steady count.
                let give_up = !e.steady
                    && iterations >= 3 * (u64::from(liveness::LIVE_THRESHOLD) + 1)
                    && !e.stopping;
                let waiters = if e.steady || give_up {
                    std::mem::take(&mut e.start_waiters)
                } else {
                    Vec::new()
                };
                let refs = e.total_refs();
                if give_up {
                    e.stopping = true;
                    e.refs.clear();
                    if let Some(t) = &e.thread {
                        t.stop();
                    }
                }
                for (t, tag) in waiters {
                    if give_up {
                        self.reply_failed(t, tag, "unable to stabilize heartbeat".into());
                    } else {
                        self.send(
                            t,
                            &ServerMsg::Reply {
                                tag,
                                reply: ServerReply::HbRefs { uuid, refs },
                            },
                        );
                    }
                }
                self.update_membership();
            }
            Report::Stopped => {
                let e = self.regions.remove(&key).expect("exists");
                if let Some(t) = e.thread {
                    t.join();
                }
                for (t, tag) in e.stop_waiters {
                    self.send(
                        t,
                        &ServerMsg::Reply {
                            tag,
                            reply: ServerReply::HbRefs { uuid, refs: 0 },
                        },
                    );
                }
                self.update_membership();
            }
        }
    }

    /// A node is alive if it is alive on any region; tell the core of changes.
    fn update_membership(&mut self) {
        let source = self.quorum_source();
        let now: BTreeSet<u8> = self
            .regions
            .values()
            .filter(|e| !e.stopping)
            .flat_map(|e| e.live.iter().copied())
            .collect();
        for n in now.difference(&self.live_union) {
            self.dlm
                .handle(self.start_elapsed(), Input::NodeUp { node: NodeId(*n) });
        }
        let died = std::mem::take(&mut self.hb_down);
        // Only a death a region saw is a death: a node unseen because this
        // node stopped its own heartbeat may be alive and well.
        let dead: Vec<u8> = self
            .live_union
            .difference(&now)
            .filter(|n| died.contains(n))
            .copied()
            .collect();
        self.live_union = now;
        let t = self.now();
        if let Some(q) = self.quorum.as_mut() {
            q.set_source(source);
            q.heartbeating(t, &self.live_union);
            for n in &dead {
                q.dead(*n);
            }
        }
        let restarted = std::mem::take(&mut self.hb_restarted);
        for n in dead {
            // A restart the handshake already reported (the new incarnation
            // is connected, maybe a member again): nothing more to do.
            if restarted.contains(&n) && self.mesh.as_ref().is_some_and(|m| m.restart_reported(n)) {
                continue;
            }
            self.dlm
                .handle(self.start_elapsed(), Input::NodeDown { node: NodeId(n) });
            // A node that stopped heartbeating: its connection, if any, is
            // the dead incarnation's, and that incarnation may not come
            // back. One that restarted: the handshake tells the incarnations
            // apart, and the connection may already be the new one's.
            if !restarted.contains(&n) {
                if let Some(m) = self.mesh.as_mut() {
                    m.disconnect(n, &self.epoll, &mut self.mesh_out);
                }
            }
        }
        if self.mesh_out.is_empty() {
            self.route();
        } else {
            self.feed_mesh();
        }
    }
}
