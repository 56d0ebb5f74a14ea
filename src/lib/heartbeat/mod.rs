//! Disk heartbeat.
//!
//! Owns everything about heartbeat regions on disk. So far: recognising an
//! OCFS2 volume and reading its superblock ([`ocfs2`]), which `o2cb` needs to
//! turn a block device into the volume UUID that names its heartbeat region.
//!
//! May depend on: std, `thiserror`. Pure decoding is kept apart from file access.

pub mod ocfs2;
