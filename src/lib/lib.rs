//! o2tools: a userspace re-creation of the OCFS2 cluster stack.
//!
//! - [`config`]: `cluster.conf` (byte-compatible with ocfs2-tools) and lockd's settings.
//! - [`heartbeat`]: on-disk heartbeat regions: OCFS2 superblocks, the o2hb block, liveness rules.
//! - [`dlm`]: the lock manager core, a pure state machine (one node, or a
//!   node of a cluster: membership, mastery, node-level locks).
//! - [`proto`]: the wire protocols: client to lockd, and lockd to lockd ([`proto::peer`]).
//! - [`quorum`]: who keeps its locks when the cluster splits (o2quo rules, leases).
//! - [`daemon`]: lockd's event loop around the core, and its TCP mesh to the other nodes.
//! - [`client`]: the Rust API for talking to lockd.
//! - [`dlmfs`]: the userspace dlmfs (FUSE) over lockd.
//! - [`sim`]: a deterministic simulation of many nodes driving the real core.
//! - [`cli`]: the command-line front ends of the tools.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dlm;
pub mod dlmfs;
pub mod heartbeat;
pub mod proto;
pub mod quorum;
pub mod sim;
