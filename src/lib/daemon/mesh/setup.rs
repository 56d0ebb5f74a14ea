//! The cluster a lockd runs, read from cluster.conf: which cluster, which
//! node this is (found by name or host name, as o2cb finds it), and the
//! addresses of the others.
//!
//! May depend on: `config`, std, nix (the host name).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use crate::config::file::LoadError;
use crate::config::{self, HeartbeatMode};

/// A configured node, as the mesh needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its name in cluster.conf.
    pub name: String,
    /// Where its lockd listens.
    pub addr: SocketAddrV4,
}

/// The cluster a lockd runs, from cluster.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSetup {
    /// The file it came from.
    pub conf: PathBuf,
    /// The cluster's name.
    pub name: String,
    /// This node's number.
    pub node: u8,
    /// Every configured node, this one included.
    pub nodes: BTreeMap<u8, PeerAddr>,
    /// Global heartbeat regions (absolute paths or UUIDs), empty in local
    /// heartbeat mode.
    pub regions: Vec<String>,
}

/// Whether `node_name` names this host the way o2cb decides which node is
/// local: equal ignoring case to the host name, or to its part before the
/// first dot.
pub fn is_local_name(node_name: &str, hostname: &str) -> bool {
    let short = hostname.split('.').next().unwrap_or(hostname);
    node_name.eq_ignore_ascii_case(hostname) || node_name.eq_ignore_ascii_case(short)
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Why the cluster of a cluster.conf cannot be run. The text is what
/// lockd prints, or `o2cb register-cluster` reports.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The file cannot be read or parsed.
    #[error(transparent)]
    Load {
        /// Why.
        #[from]
        source: LoadError,
    },
    /// The named cluster is not in the file.
    #[error("cluster '{name}' is not in {} (clusters: {})", conf.display(), names(clusters))]
    NoSuchCluster {
        /// The cluster asked for.
        name: String,
        /// The file.
        conf: PathBuf,
        /// The clusters it defines.
        clusters: Vec<String>,
    },
    /// No cluster was named and the file defines none.
    #[error("{} defines no cluster", conf.display())]
    NoCluster {
        /// The file.
        conf: PathBuf,
    },
    /// No cluster was named and the file defines more than one.
    #[error("{} defines several clusters ({}); name one", conf.display(), names(clusters))]
    SeveralClusters {
        /// The file.
        conf: PathBuf,
        /// The clusters it defines.
        clusters: Vec<String>,
    },
    /// The node named is not in the cluster.
    #[error(
        "node '{node}' is not in cluster '{cluster}' of {} (configured nodes: {}); pass --node NAME",
        conf.display(),
        names(nodes)
    )]
    NoSuchNode {
        /// The node asked for.
        node: String,
        /// The cluster.
        cluster: String,
        /// The file.
        conf: PathBuf,
        /// The cluster's nodes.
        nodes: Vec<String>,
    },
    /// No node was named and none matches the host name.
    #[error(
        "node host name '{host}' is not in cluster '{cluster}' of {} (configured nodes: {}); pass --node NAME",
        conf.display(),
        names(nodes)
    )]
    HostNotInCluster {
        /// This machine's host name.
        host: String,
        /// The cluster.
        cluster: String,
        /// The file.
        conf: PathBuf,
        /// The cluster's nodes.
        nodes: Vec<String>,
    },
    /// A node number lockd cannot use.
    #[error("node '{name}' has number {number}, above 254")]
    BadNumber {
        /// The node.
        name: String,
        /// Its number.
        number: u32,
    },
    /// A port that is not one.
    #[error("node '{name}' has port {port}, not 1-65535")]
    BadPort {
        /// The node.
        name: String,
        /// Its port.
        port: u32,
    },
}

impl ClusterSetup {
    /// Reads the cluster from `conf`: the one named `cluster` (or the only
    /// one), with this node found by `node` (a node name; default: the host
    /// name, as o2cb matches it).
    pub fn load(
        conf: &Path,
        cluster: Option<&str>,
        node: Option<&str>,
    ) -> Result<Self, SetupError> {
        let cc = config::file::load(conf)?;
        let cluster_names = || cc.clusters.iter().map(|c| c.name.clone()).collect();
        let c = match cluster {
            Some(name) => cc.cluster(name).ok_or_else(|| SetupError::NoSuchCluster {
                name: name.to_owned(),
                conf: conf.to_owned(),
                clusters: cluster_names(),
            })?,
            None => match cc.clusters.as_slice() {
                [one] => one,
                [] => {
                    return Err(SetupError::NoCluster {
                        conf: conf.to_owned(),
                    });
                }
                _ => {
                    return Err(SetupError::SeveralClusters {
                        conf: conf.to_owned(),
                        clusters: cluster_names(),
                    });
                }
            },
        };
        let host = hostname();
        let me = match node {
            Some(n) => c
                .nodes
                .iter()
                .find(|x| x.name == n)
                .or_else(|| c.nodes.iter().find(|x| x.name.eq_ignore_ascii_case(n))),
            None => c.nodes.iter().find(|x| is_local_name(&x.name, &host)),
        };
        let Some(me) = me else {
            let cluster = c.name.clone();
            let conf = conf.to_owned();
            let nodes = c.nodes.iter().map(|n| n.name.clone()).collect();
            return Err(match node {
                Some(n) => SetupError::NoSuchNode {
                    node: n.to_owned(),
                    cluster,
                    conf,
                    nodes,
                },
                None => SetupError::HostNotInCluster {
                    host,
                    cluster,
                    conf,
                    nodes,
                },
            });
        };
        let mut nodes = BTreeMap::new();
        for n in &c.nodes {
            let number = u8::try_from(n.number)
                .ok()
                .filter(|&x| x < 255)
                .ok_or_else(|| SetupError::BadNumber {
                    name: n.name.clone(),
                    number: n.number,
                })?;
            let port = u16::try_from(n.ip_port)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| SetupError::BadPort {
                    name: n.name.clone(),
                    port: n.ip_port,
                })?;
            nodes.insert(
                number,
                PeerAddr {
                    name: n.name.clone(),
                    addr: SocketAddrV4::new(n.ip_address, port),
                },
            );
        }
        let regions = if c.heartbeat_mode == HeartbeatMode::Global {
            c.heartbeats.iter().map(|h| h.region.clone()).collect()
        } else {
            Vec::new()
        };
        Ok(ClusterSetup {
            conf: conf.to_owned(),
            name: c.name.clone(),
            node: me.number as u8,
            nodes,
            regions,
        })
    }

    /// This node's listening address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.nodes[&self.node].addr
    }
}

/// Names for a message: "a, b", or "none".
fn names(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_node_names_follow_o2cb() {
        assert!(is_local_name("node1", "node1"));
        assert!(is_local_name("NODE1", "node1.example.com"));
        assert!(is_local_name("node1.example.com", "node1.example.com"));
        assert!(!is_local_name("node", "node1"));
        assert!(!is_local_name("node1.example", "node1.example.com"));
    }

    #[test]
    fn setup_names_the_missing_node_and_lists_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("cluster.conf");
        std::fs::write(
            &conf,
            "cluster:\n\tname = c1\n\theartbeat_mode = global\n\tnode_count = 2\n\n\
             node:\n\tcluster = c1\n\tnumber = 1\n\tip_port = 7001\n\tip_address = 127.0.0.1\n\tname = alpha\n\n\
             node:\n\tcluster = c1\n\tnumber = 2\n\tip_port = 7002\n\tip_address = 127.0.0.2\n\tname = beta\n\n\
             heartbeat:\n\tcluster = c1\n\tregion = /tmp/hb\n",
        )
        .unwrap();
        let s = ClusterSetup::load(&conf, None, Some("beta")).unwrap();
        assert_eq!(s.node, 2);
        assert_eq!(s.name, "c1");
        assert_eq!(s.addr(), "127.0.0.2:7002".parse().unwrap());
        assert_eq!(s.regions, vec!["/tmp/hb".to_string()]);
        let e = ClusterSetup::load(&conf, None, Some("gamma"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'gamma'") && e.contains("alpha, beta"), "{e}");
        let e = ClusterSetup::load(&conf, Some("c2"), Some("beta"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'c2'") && e.contains("c1"), "{e}");
    }

    #[test]
    fn setup_errors_read_as_lockd_prints_them() {
        let conf = PathBuf::from("/etc/ocfs2/cluster.conf");
        let cases = [
            (
                SetupError::NoSuchCluster {
                    name: "c2".into(),
                    conf: conf.clone(),
                    clusters: vec!["c1".into(), "c3".into()],
                },
                "cluster 'c2' is not in /etc/ocfs2/cluster.conf (clusters: c1, c3)",
            ),
            (
                SetupError::NoCluster { conf: conf.clone() },
                "/etc/ocfs2/cluster.conf defines no cluster",
            ),
            (
                SetupError::SeveralClusters {
                    conf: conf.clone(),
                    clusters: vec!["c1".into(), "c3".into()],
                },
                "/etc/ocfs2/cluster.conf defines several clusters (c1, c3); name one",
            ),
            (
                SetupError::NoSuchNode {
                    node: "gamma".into(),
                    cluster: "c1".into(),
                    conf: conf.clone(),
                    nodes: Vec::new(),
                },
                "node 'gamma' is not in cluster 'c1' of /etc/ocfs2/cluster.conf \
                 (configured nodes: none); pass --node NAME",
            ),
            (
                SetupError::HostNotInCluster {
                    host: "h".into(),
                    cluster: "c1".into(),
                    conf,
                    nodes: vec!["alpha".into(), "beta".into()],
                },
                "node host name 'h' is not in cluster 'c1' of /etc/ocfs2/cluster.conf \
                 (configured nodes: alpha, beta); pass --node NAME",
            ),
            (
                SetupError::BadNumber {
                    name: "n".into(),
                    number: 255,
                },
                "node 'n' has number 255, above 254",
            ),
            (
                SetupError::BadPort {
                    name: "n".into(),
                    port: 0,
                },
                "node 'n' has port 0, not 1-65535",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
