//! What lockd tells about itself: `dlmctl status` (node, cluster, the
//! configured nodes and their connections, quorum, the core's counters)
//! and `hb_ctl status` (each heartbeat region).
//!
//! May depend on: the parent module and its siblings, `proto`.

use std::os::unix::ffi::OsStrExt as _;

use super::{Loop, RegionEntry};
use crate::proto::{HbRegionInfo, NodeStatus, StatusInfo};

impl Loop<'_> {
    /// lockd's status, for `dlmctl status`.
    pub(super) fn status(&self) -> StatusInfo {
        // A fencing node has no mesh for a while: its nodes are listed
        // unconnected.
        let links: Vec<(u8, String, String, bool)> = match &self.mesh {
            Some(m) => m
                .status()
                .into_iter()
                .map(|l| (l.node, l.name, l.addr.to_string(), l.connected))
                .collect(),
            None => self
                .fence
                .setup()
                .map(|s| {
                    s.nodes
                        .iter()
                        .map(|(&n, p)| (n, p.name.clone(), p.addr.to_string(), n == s.node))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let nodes = links
            .into_iter()
            .map(|(number, name, address, connected)| {
                let local = number == self.node.0;
                NodeStatus {
                    number,
                    name,
                    address,
                    local,
                    connected,
                    heartbeat: local || self.live_union.contains(&number),
                }
            })
            .collect();
        let cluster = self
            .mesh
            .as_ref()
            .map(|m| &m.setup)
            .or(self.fence.setup())
            .map(|s| s.name.clone());
        StatusInfo {
            node: self.node,
            cluster,
            pid: std::process::id(),
            uptime_ms: self.start.elapsed().as_millis() as u64,
            autostarted: self.opts.autostarted,
            stats: self.dlm.stats(),
            nodes,
            quorum: self.quorum.as_ref().map(|_| self.fence.state()),
        }
    }

    pub(super) fn region_info(&self, e: &RegionEntry) -> HbRegionInfo {
        let hb = &self.opts.settings.heartbeat;
        HbRegionInfo {
            device: e.device.as_os_str().as_bytes().to_vec(),
            uuid: e.region.uuid,
            kind: e.region.kind.to_string(),
            block_bytes: e.region.block_bytes,
            start_byte: e.region.start_byte,
            slots: e.region.slots,
            node: self.node.0,
            interval_ms: hb.interval_ms,
            dead_ms: hb.interval_ms.saturating_mul(hb.dead_threshold),
            steady: e.steady,
            direct_io: e.direct,
            live: e.live.clone(),
            iterations: e.iterations,
            problem: e.problem.clone(),
            refs: e.refs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}
