//! Cluster configuration: `cluster.conf` and lockd's own settings.
//!
//! Owns the typed model of OCFS2's `cluster.conf` (clusters, nodes, heartbeat
//! regions), its reader and writer, the edits `o2cb` performs, and the
//! `Settings` that lockd reads from TOML and from `/etc/default/o2cb`.
//!
//! The reader accepts and rejects exactly what ocfs2-tools 1.8.7 does and the
//! writer produces its bytes (see `docs/COMPATIBILITY.md`); both are pure
//! ([`parse`](fn@parse), [`ClusterConf::to_bytes`]). File access lives in [`file`](mod@file): atomic
//! replacement under an advisory lock.
//!
//! May depend on: std, `serde`/`toml` (settings), `thiserror`. Nothing else in
//! the crate.

pub mod file;
mod parse;
pub mod settings;
mod write;

use std::fmt;
use std::net::Ipv4Addr;

pub use file::{ConfigLock, load, store};
pub use parse::{ParseError, Problem, parse};
pub use settings::{Settings, SettingsError};

/// The default location of the cluster configuration.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ocfs2/cluster.conf";

/// The environment variable naming the configuration file (ours; the real
/// tools have none).
pub const CONFIG_ENV: &str = "O2CB_CONFIG_FILE";

/// The configuration file: `cli` (`--config-file`), else `$O2CB_CONFIG_FILE`,
/// else [`DEFAULT_CONFIG_FILE`].
pub fn config_path(cli: Option<&std::path::Path>) -> std::path::PathBuf {
    cli.map(std::path::Path::to_owned)
        .or_else(|| {
            std::env::var_os(CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_CONFIG_FILE))
}

/// Highest number of nodes in a cluster (O2NM_MAX_NODES); node numbers are
/// `0..MAX_NODES` when chosen by `o2cb add-node`.
pub const MAX_NODES: u32 = 255;

/// Longest cluster name `o2cb add-cluster` accepts (OCFS2_CLUSTER_NAME_LEN).
pub const MAX_CLUSTER_NAME_LEN: usize = 16;

/// The port `o2cb add-node` stores when none is given.
pub const DEFAULT_PORT: u32 = 7777;

/// The whole `cluster.conf`: clusters in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterConf {
    /// Clusters in the order they appear in the file (new ones appended).
    pub clusters: Vec<Cluster>,
}

/// One `cluster:` stanza with the nodes and heartbeat regions attached to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name, as stored (may be empty or contain spaces when the
    /// file was written by hand; `o2cb add-cluster` only makes 1–16 alphanumerics).
    pub name: String,
    /// Local (per-volume) or global (listed regions) heartbeat.
    pub heartbeat_mode: HeartbeatMode,
    /// The stored `node_count`. A counter, not recomputed: add-node adds one,
    /// remove-node subtracts one, and the file's value wins on load.
    pub node_count: u32,
    /// Nodes in file/insertion order.
    pub nodes: Vec<Node>,
    /// Heartbeat regions in file/insertion order.
    pub heartbeats: Vec<Heartbeat>,
}

/// A `node:` stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node name (matched against the host name by lockd).
    pub name: String,
    /// Node number: the heartbeat slot and the node's identity in the DLM.
    pub number: u32,
    /// Address the node's lockd listens on.
    pub ip_address: Ipv4Addr,
    /// Port the node's lockd listens on (stored unchecked, as the real tool does).
    pub ip_port: u32,
}

/// A `heartbeat:` stanza: a global heartbeat region, named by volume UUID
/// (or, in o2tools, by an absolute path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The region as stored: normally 32 upper-case hex digits.
    pub region: String,
}

/// The cluster's heartbeat mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// Heartbeat on every mounted volume (the default).
    #[default]
    Local,
    /// Heartbeat on the regions listed in the configuration.
    Global,
}

impl HeartbeatMode {
    /// The spelling stored in the file and printed in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            HeartbeatMode::Local => "local",
            HeartbeatMode::Global => "global",
        }
    }

    /// Parses a stored mode: `local` or `global`, any case (as the loader does).
    pub fn from_stored(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("local") {
            Some(HeartbeatMode::Local)
        } else if s.eq_ignore_ascii_case("global") {
            Some(HeartbeatMode::Global)
        } else {
            None
        }
    }
}

impl fmt::Display for HeartbeatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an edit of the configuration was refused. The messages are the real
/// tool's wording, without its `o2cb: ` prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// `add-cluster` with a name that is empty after stripping blanks.
    #[error("Cluster name is invalid ; zero length")]
    ClusterNameEmpty,
    /// `add-cluster` with a name longer than 16 bytes.
    #[error("Cluster name is invalid ; max {MAX_CLUSTER_NAME_LEN} characters")]
    ClusterNameTooLong,
    /// `add-cluster` with a non-alphanumeric byte in the name.
    #[error("Cluster name is invalid ; only alpha-numeric characters allowed")]
    ClusterNameChars,
    /// The cluster exists already.
    #[error("Cluster '{0}' already exists")]
    ClusterExists(String),
    /// No cluster of that name.
    #[error("Unknown cluster '{0}'")]
    UnknownCluster(String),
    /// No node of that name in the cluster.
    #[error("Unknown node '{0}'")]
    UnknownNode(String),
    /// A node of that name exists already in the cluster.
    #[error("Node '{0}' already exists")]
    NodeExists(String),
    /// Node name empty after stripping blanks.
    #[error("Node name cannot be zero length")]
    NodeNameEmpty,
    /// The requested node number is taken.
    #[error("Choose another node number as '{0}' is in use")]
    NodeNumberInUse(u32),
    /// The requested node number is outside `0..255`.
    #[error("Nodenum should be >=0 and < {MAX_NODES} but is {0}")]
    NodeNumberRange(i64),
    /// All 255 node numbers are taken.
    #[error("Cluster is full - No more nodes can be added to it")]
    ClusterFull,
    /// The region is listed already in the cluster.
    #[error("Heartbeat region '{0}' already exists")]
    HeartbeatExists(String),
    /// The region is not listed in the cluster.
    #[error("Unknown heartbeat region '{0}'")]
    UnknownHeartbeat(String),
}

/// Strips leading and trailing C `isspace` bytes, as ocfs2-tools' `tools_strstrip`.
pub fn strip_blanks(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

/// C `isspace` in the C locale.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl ClusterConf {
    /// The cluster named exactly `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The cluster named exactly `name`, mutable.
    pub fn cluster_mut(&mut self, name: &str) -> Option<&mut Cluster> {
        self.clusters.iter_mut().find(|c| c.name == name)
    }

    fn cluster_or_err(&mut self, name: &str) -> Result<&mut Cluster, EditError> {
        self.cluster_mut(name)
            .ok_or_else(|| EditError::UnknownCluster(name.to_owned()))
    }

    /// Checks a name for `add-cluster` and returns it stripped of blanks.
    pub fn validate_cluster_name(name: &str) -> Result<&str, EditError> {
        let name = strip_blanks(name);
        if name.is_empty() {
            return Err(EditError::ClusterNameEmpty);
        }
        if name.len() > MAX_CLUSTER_NAME_LEN {
            return Err(EditError::ClusterNameTooLong);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(EditError::ClusterNameChars);
        }
        Ok(name)
    }

    /// `o2cb add-cluster`: appends a cluster in local mode with no nodes.
    pub fn add_cluster(&mut self, name: &str) -> Result<(), EditError> {
        let name = Self::validate_cluster_name(name)?;
        if self.cluster(name).is_some() {
            return Err(EditError::ClusterExists(name.to_owned()));
        }
        self.clusters.push(Cluster::new(name));
        Ok(())
    }

    /// `o2cb remove-cluster`: drops the cluster with its nodes and regions.
    pub fn remove_cluster(&mut self, name: &str) -> Result<(), EditError> {
        let before = self.clusters.len();
        self.clusters.retain(|c| c.name != name);
        if self.clusters.len() == before {
            return Err(EditError::UnknownCluster(name.to_owned()));
        }
        Ok(())
    }

    /// `o2cb add-node` once its arguments are parsed: `number` None picks the
    /// lowest free number. Checks in the real tool's order: number, then name.
    pub fn add_node(
        &mut self,
        cluster: &str,
        name: &str,
        ip_address: Ipv4Addr,
        ip_port: u32,
        number: Option<i64>,
    ) -> Result<u32, EditError> {
        let c = self.cluster_or_err(cluster)?;
        let number = c.choose_number(number)?;
        if name.is_empty() {
            return Err(EditError::NodeNameEmpty);
        }
        if c.node(name).is_some() {
            return Err(EditError::NodeExists(name.to_owned()));
        }
        c.nodes.push(Node {
            name: name.to_owned(),
            number,
            ip_address,
            ip_port,
        });
        c.node_count = c.node_count.wrapping_add(1);
        Ok(number)
    }

    /// `o2cb remove-node`.
    pub fn remove_node(&mut self, cluster: &str, name: &str) -> Result<(), EditError> {
        let c = self.cluster_or_err(cluster)?;
        let pos = c
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| EditError::UnknownNode(name.to_owned()))?;
        c.nodes.remove(pos);
        c.node_count = c.node_count.wrapping_sub(1);
        Ok(())
    }

    /// `o2cb add-heartbeat` once a device has been resolved to its UUID.
    pub fn add_heartbeat(&mut self, cluster: &str, region: &str) -> Result<(), EditError> {
        let c = self.cluster_or_err(cluster)?;
        if c.heartbeats.iter().any(|h| h.region == region) {
            return Err(EditError::HeartbeatExists(region.to_owned()));
        }
        c.heartbeats.push(Heartbeat {
            region: region.to_owned(),
        });
        Ok(())
    }

    /// `o2cb remove-heartbeat`.
    pub fn remove_heartbeat(&mut self, cluster: &str, region: &str) -> Result<(), EditError> {
        let c = self.cluster_or_err(cluster)?;
        let pos = c
            .heartbeats
            .iter()
            .position(|h| h.region == region)
            .ok_or_else(|| EditError::UnknownHeartbeat(region.to_owned()))?;
        c.heartbeats.remove(pos);
        Ok(())
    }

    /// `o2cb heartbeat-mode`.
    pub fn set_heartbeat_mode(
        &mut self,
        cluster: &str,
        mode: HeartbeatMode,
    ) -> Result<(), EditError> {
        self.cluster_or_err(cluster)?.heartbeat_mode = mode;
        Ok(())
    }
}

impl Cluster {
    /// A new, empty cluster in local heartbeat mode.
    pub fn new(name: &str) -> Self {
        Cluster {
            name: name.to_owned(),
            heartbeat_mode: HeartbeatMode::Local,
            node_count: 0,
            nodes: Vec::new(),
            heartbeats: Vec::new(),
        }
    }

    /// The node named exactly `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The first node with number `number` (numbers loaded from a hand-written
    /// file may repeat; the real tool accepts that too).
    pub fn node_by_number(&self, number: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.number == number)
    }

    /// The number `add-node` would use: the requested one if free and in
    /// range, or the lowest free one when `requested` is None.
    pub fn choose_number(&self, requested: Option<i64>) -> Result<u32, EditError> {
        match requested {
            None => (0..MAX_NODES)
                .find(|&i| self.node_by_number(i).is_none())
                .ok_or(EditError::ClusterFull),
            Some(n) if !(0..i64::from(MAX_NODES)).contains(&n) => {
                Err(EditError::NodeNumberRange(n))
            }
            Some(n) => {
                let n = n as u32;
                if self.node_by_number(n).is_some() {
                    Err(EditError::NodeNumberInUse(n))
                } else {
                    Ok(n)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ClusterConf {
        let mut c = ClusterConf::default();
        c.add_cluster("c1").unwrap();
        c
    }

    #[test]
    fn cluster_names_are_checked_after_stripping() {
        let mut c = ClusterConf::default();
        assert_eq!(c.add_cluster(" \tcx\n"), Ok(()));
        assert_eq!(c.clusters[0].name, "cx");
        assert_eq!(c.add_cluster("   "), Err(EditError::ClusterNameEmpty));
        assert_eq!(
            c.add_cluster("abcdefghijklmnopq"),
            Err(EditError::ClusterNameTooLong)
        );
        assert_eq!(c.add_cluster("abcdefghijklmnop"), Ok(()));
        assert_eq!(c.add_cluster("bad-name"), Err(EditError::ClusterNameChars));
        assert_eq!(c.add_cluster("nö"), Err(EditError::ClusterNameChars));
        assert_eq!(
            c.add_cluster("cx"),
            Err(EditError::ClusterExists("cx".into()))
        );
    }

    #[test]
    fn node_numbers_lowest_free_and_range() {
        let mut c = conf();
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(c.add_node("c1", "a", ip, 7777, Some(1)), Ok(1));
        assert_eq!(c.add_node("c1", "b", ip, 7777, None), Ok(0));
        assert_eq!(c.add_node("c1", "c", ip, 7777, None), Ok(2));
        assert_eq!(
            c.add_node("c1", "d", ip, 7777, Some(2)),
            Err(EditError::NodeNumberInUse(2))
        );
        assert_eq!(
            c.add_node("c1", "d", ip, 7777, Some(255)),
            Err(EditError::NodeNumberRange(255))
        );
        assert_eq!(
            c.add_node("c1", "d", ip, 7777, Some(-2)),
            Err(EditError::NodeNumberRange(-2))
        );
        // The number is checked before the name, as the real tool does.
        assert_eq!(
            c.add_node("c1", "a", ip, 7777, Some(1)),
            Err(EditError::NodeNumberInUse(1))
        );
        assert_eq!(
            c.add_node("c1", "a", ip, 7777, None),
            Err(EditError::NodeExists("a".into()))
        );
        assert_eq!(c.cluster("c1").unwrap().node_count, 3);
        c.remove_node("c1", "b").unwrap();
        assert_eq!(c.add_node("c1", "e", ip, 7777, None), Ok(0));
        assert_eq!(
            c.remove_node("c1", "zz"),
            Err(EditError::UnknownNode("zz".into()))
        );
        assert_eq!(
            c.remove_node("c9", "a"),
            Err(EditError::UnknownCluster("c9".into()))
        );
    }

    #[test]
    fn full_cluster_is_refused() {
        let mut c = conf();
        let ip = Ipv4Addr::LOCALHOST;
        for i in 0..MAX_NODES {
            c.add_node("c1", &format!("n{i}"), ip, 1, None).unwrap();
        }
        assert_eq!(
            c.add_node("c1", "x", ip, 1, None),
            Err(EditError::ClusterFull)
        );
    }

    #[test]
    fn heartbeats_and_mode() {
        let mut c = conf();
        c.add_heartbeat("c1", "AA").unwrap();
        assert_eq!(
            c.add_heartbeat("c1", "AA"),
            Err(EditError::HeartbeatExists("AA".into()))
        );
        c.add_heartbeat("c1", "BB").unwrap();
        c.remove_heartbeat("c1", "AA").unwrap();
        assert_eq!(c.cluster("c1").unwrap().heartbeats[0].region, "BB");
        assert_eq!(
            c.remove_heartbeat("c1", "AA"),
            Err(EditError::UnknownHeartbeat("AA".into()))
        );
        c.set_heartbeat_mode("c1", HeartbeatMode::Global).unwrap();
        assert_eq!(
            c.cluster("c1").unwrap().heartbeat_mode,
            HeartbeatMode::Global
        );
        c.remove_cluster("c1").unwrap();
        assert!(c.clusters.is_empty());
    }
}
