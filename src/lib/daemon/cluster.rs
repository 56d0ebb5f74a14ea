//! Running a cluster or a single node: entering the cluster lockd was
//! started with or `o2cb register-cluster` names (mesh, cluster core,
//! quorum, global heartbeat), going back to a single node, and starting or
//! stopping the cluster's heartbeat regions.
//!
//! May depend on: the parent module and its siblings, `dlm`, `proto`,
//! `quorum`, `heartbeat`.

use std::path::PathBuf;

use tracing::{info, warn};

use super::heartbeat;
use super::mesh::{ClusterSetup, Mesh, MeshError};
use super::{DaemonError, Loop, NO_CONN, PEER_LISTENER};
use crate::dlm::{ClientId, ClusterConfig, Cred, Dlm, Input, NodeId};
use crate::heartbeat::liveness;
use crate::proto::HbTarget;
use crate::quorum::Quorum;

/// The heartbeat service name of the cluster's global regions.
const CLUSTER_SERVICE: &str = "o2cb";

/// A heartbeat region as cluster.conf names it: an absolute path (a file or
/// device of ours) or a UUID (32 hex digits, found by scanning block devices).
fn parse_region(region: &str) -> Result<HbTarget, DaemonError> {
    if region.starts_with('/') {
        return Ok(HbTarget::Device(region.as_bytes().to_vec()));
    }
    let hex: String = region.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut uuid = [0u8; 16];
        for (i, b) in uuid.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
        }
        return Ok(HbTarget::Uuid(uuid));
    }
    Err(DaemonError::BadRegion {
        region: region.to_owned(),
    })
}

impl Loop<'_> {
    /// Becomes a node of `setup`'s cluster: listens for peers, connects,
    /// runs a cluster core, and starts the cluster's global heartbeat.
    pub(super) fn enter_cluster(&mut self, setup: ClusterSetup) -> Result<(), MeshError> {
        let node = NodeId(setup.node);
        let hb = &self.opts.settings.heartbeat;
        let net = &self.opts.settings.network;
        // Joins wait for the mesh to form (and heartbeat to see the other
        // nodes, when there is a region), unless every node connects first.
        let mut settle_ms = u64::from(net.reconnect_delay_ms) + 1000;
        if !setup.regions.is_empty() {
            settle_ms += u64::from(hb.interval_ms) * u64::from(liveness::LIVE_THRESHOLD + 2);
        }
        let config = ClusterConfig {
            nodes: setup.nodes.keys().map(|&n| NodeId(n)).collect(),
            settle_ms,
        };
        let regions = setup.regions.clone();
        let mesh = Mesh::start(setup, &self.opts.settings, &self.epoll, PEER_LISTENER)?;
        info!(
            socket = %self.opts.socket.path.display(),
            cluster = %mesh.setup.name,
            node = node.0,
            "lockd serving (cluster)"
        );
        self.mesh = Some(mesh);
        self.node = node;
        self.dlm = Dlm::new_cluster(node, config).with_hash_key(heartbeat::random_generation());
        self.quorum = Some(Quorum::new(
            node.0,
            u64::from(net.idle_timeout_ms),
            self.quorum_source(),
        ));
        // The settle wait counts from now, not from the first request.
        let now = self.now();
        self.dlm.handle(now, Input::Tick);
        self.reconnect_clients();
        for r in regions {
            if let Err(e) = self.cluster_region(&r, true) {
                warn!(region = %r, error = %e, "cannot start the cluster's heartbeat region");
            }
        }
        Ok(())
    }

    /// Tells a fresh core about the connected clients.
    fn reconnect_clients(&mut self) {
        let now = self.now();
        let clients: Vec<(u64, Cred)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.hello)
            .map(|(&t, c)| (t, c.cred))
            .collect();
        for (t, cred) in clients {
            self.dlm.handle(
                now,
                Input::Connected {
                    client: ClientId(t),
                    cred,
                },
            );
        }
    }

    /// Starts or stops (this service's reference on) one of the cluster's
    /// global regions, named by absolute path or UUID.
    fn cluster_region(&mut self, region: &str, start: bool) -> Result<(), DaemonError> {
        let target = parse_region(region)?;
        let found = self.find_region(&target);
        let has_ref = found.is_some_and(|k| self.regions[&k].refs.contains_key(CLUSTER_SERVICE));
        match (start, has_ref) {
            (true, false) => self.hb_start(NO_CONN, 0, target, CLUSTER_SERVICE.into()),
            (false, true) => self.hb_stop(NO_CONN, 0, target, CLUSTER_SERVICE.into()),
            _ => {}
        }
        Ok(())
    }

    /// Cluster registration is for root or lockd's own user.
    pub(super) fn allowed(&self, cred: Cred) -> Result<(), DaemonError> {
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid == 0 || cred.uid == me {
            Ok(())
        } else {
            Err(DaemonError::PermissionDenied { uid: me })
        }
    }

    fn running_cluster(&self, cluster: &str) -> Result<&Mesh, DaemonError> {
        match &self.mesh {
            None => Err(DaemonError::NoCluster),
            Some(m) if m.setup.name != cluster => Err(DaemonError::OtherCluster {
                running: m.setup.name.clone(),
                asked: cluster.to_owned(),
            }),
            Some(m) => Ok(m),
        }
    }

    pub(super) fn register_cluster(
        &mut self,
        conf: PathBuf,
        cluster: &str,
        node: &str,
    ) -> Result<(), DaemonError> {
        if let Some(m) = &self.mesh {
            return if m.setup.name == cluster {
                Ok(())
            } else {
                Err(DaemonError::ClusterRunning {
                    running: m.setup.name.clone(),
                })
            };
        }
        let st = self.dlm.stats();
        if st.locks > 0 || st.domains > 0 {
            return Err(DaemonError::SingleNodeLocks {
                locks: st.locks,
                domains: st.domains,
            });
        }
        if !self.regions.is_empty() {
            return Err(DaemonError::SingleNodeRegions);
        }
        let setup = ClusterSetup::load(&conf, Some(cluster), (!node.is_empty()).then_some(node))?;
        Ok(self.enter_cluster(setup)?)
    }

    /// The names of the domains joined.
    fn joined_domains(&self) -> Vec<String> {
        self.dlm
            .domains()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.name).into_owned())
            .collect()
    }

    pub(super) fn unregister_cluster(&mut self, cluster: &str) -> Result<(), DaemonError> {
        self.running_cluster(cluster)?;
        let domains = self.joined_domains();
        if !domains.is_empty() {
            return Err(DaemonError::DomainsJoined { domains });
        }
        if self.regions.values().any(|e| !e.stopping) {
            return Err(DaemonError::RegionsActive {
                cluster: cluster.to_owned(),
            });
        }
        let m = self.mesh.take().expect("running");
        m.shutdown(&self.epoll);
        self.quorum = None;
        self.node = self.opts.node;
        self.dlm = Dlm::new(self.node).with_hash_key(heartbeat::random_generation());
        self.reconnect_clients();
        info!(cluster, "cluster unregistered; lockd serves a single node");
        Ok(())
    }

    pub(super) fn cluster_heartbeat(
        &mut self,
        cluster: &str,
        start: bool,
    ) -> Result<(), DaemonError> {
        let regions = self.running_cluster(cluster)?.setup.regions.clone();
        if !start && !regions.is_empty() {
            // The others would see this node stop and recover its locks
            // while it still holds them.
            let domains = self.joined_domains();
            if !domains.is_empty() {
                return Err(DaemonError::HeartbeatNeeded { domains });
            }
        }
        let errors: Vec<DaemonError> = regions
            .iter()
            .filter_map(|r| self.cluster_region(r, start).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DaemonError::Regions { errors })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_paths_or_uuids() {
        assert_eq!(
            parse_region("/dev/sdb").unwrap(),
            HbTarget::Device(b"/dev/sdb".to_vec())
        );
        assert_eq!(
            parse_region("0123456789ABCDEF-0123456789abcdef").unwrap(),
            HbTarget::Uuid([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ])
        );
        assert!(matches!(
            parse_region("sdb"),
            Err(DaemonError::BadRegion { region }) if region == "sdb"
        ));
    }
}
