//! Disk heartbeat.
//!
//! Owns everything about heartbeat regions on disk. So far: recognising an
//! OCFS2 volume and reading its superblock ([`ocfs2`]), which `o2cb` needs to
//! turn a block device into the volume UUID that names its heartbeat region.
//! [`format`](mod@format) encodes and decodes the o2hb slot block and its checksum.
//! [`liveness`] applies the o2hb rules for nodes coming up and going down.
//! [`region`] says where a region's slots are (an OCFS2 volume's heartbeat
//! file, found by `ocfs2_walk`, or a raw region of ours) and formats raw
//! regions; [`device`] does the slot I/O.
//!
//! May depend on: std, `thiserror`. Pure decoding is kept apart from file access.

pub mod device;
pub mod format;
pub mod liveness;
pub mod ocfs2;
mod ocfs2_walk;
pub mod region;
