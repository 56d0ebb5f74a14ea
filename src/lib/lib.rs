//! o2tools: a userspace re-creation of the OCFS2 cluster stack.
//!
//! - [`config`]: `cluster.conf` (byte-compatible with ocfs2-tools) and lockd's settings.
//! - [`heartbeat`]: on-disk heartbeat regions.
//! - [`cli`]: the command-line front ends of the tools.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dlm;
pub mod heartbeat;
pub mod proto;
