//! `dlmfs`: the lock manager as a file system, in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::{Failure, Outcome};
use crate::dlmfs::{DlmfsError, DlmfsOptions, MountOptions};

/// Exit statuses of dlmfs: `OK` after an unmount or a signal, `ERROR`
/// when it cannot mount or the session failed, `USAGE` for an unknown
/// option, `UNREACHABLE` when lockd cannot be reached (or started).
pub mod exit {
    pub use crate::cli::exit::{ERROR, OK, UNREACHABLE, USAGE};
}

/// Locks as files: the o2tools lock manager as a FUSE file system.
///
/// dlmfs mounts a file system on MOUNTPOINT with the semantics of the
/// kernel's ocfs2_dlmfs, served by lockd, and runs in the foreground until
/// it is unmounted (fusermount3 -u MOUNTPOINT, or umount as root) or gets
/// SIGTERM, SIGINT or SIGHUP; either way every lock it holds is released.
///
/// mkdir DOMAIN (top level only; names under 64 bytes) joins a lock domain,
/// rmdir leaves it (ENOTEMPTY while it holds files); the node leaves the
/// domain once nothing else uses it. open(DOMAIN/LOCK, O_CREAT) creates a
/// lock resource (names under 32 bytes, not starting with $); without
/// O_CREAT a name never created is ENOENT. Opening takes the lock: O_RDONLY
/// a shared read (PR) lock, O_RDWR or O_WRONLY an exclusive (EX) one;
/// open waits for the grant, or with O_NONBLOCK fails with ETXTBSY when
/// the lock is busy. The last close of the file drops it. read(2) returns
/// the 64-byte lock value block, write(2) sets it (EX only; at most 64
/// bytes from the offset, ENOSPC at offset 64 or more); the file's size is
/// 64. poll(2) reports POLLIN while another node or process waits for the
/// lock. unlink removes a resource file (EBUSY while open). Modes and
/// owners set with mkdir, open, chmod and chown are enforced locally.
///
/// By default the mount holds one lockd lock per resource, at the highest
/// mode its open files need, and local processes share it (two O_RDWR
/// opens on one node both succeed: userspace programs do their own local
/// locking, as with the kernel's dlmfs). With -o exclusive each open takes
/// its own lock, so local processes exclude each other as with flock.
/// Either way a lock held through dlmfs excludes dlmctl and other nodes.
///
/// If lockd goes away, waiting opens and the reads and writes of open files
/// fail with EIO; the next open or mkdir reconnects when a lockd answers
/// again. Root mounts let every user in (allow_other), subject to the
/// file modes.
///
/// Environment: LOCKD_SOCKET (the socket when --socket is not given),
/// LOCKD_NO_AUTOSTART=1 (never start lockd), O2CB_CONFIG_FILE (the
/// cluster.conf whose cluster, if any, forbids autostart), RUST_LOG (log
/// level on stderr; default warn).
///
/// Exit status: 0 after unmount or a stop signal; 1 when it cannot mount;
/// 2 usage; 69 lockd unreachable.
#[derive(Parser, Debug)]
#[command(name = "dlmfs", version)]
pub struct DlmfsArgs {
    /// Where to mount (an existing directory)
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// lockd's socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)
    #[arg(long)]
    pub no_autostart: bool,
    /// Mount options, comma-separated: exclusive (one lock per open file),
    /// shared (the default), allow_other, allow_root, ro, rw, nosuid, suid,
    /// nodev, dev, noexec, exec, noatime, atime, fsname=NAME
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// Entry point of the `dlmfs` binary.
pub fn main() -> ExitCode {
    let args = DlmfsArgs::parse();
    // fuser warns about unmounting a file system already unmounted by
    // fusermount3; that is how dlmfs normally ends.
    super::init_logging("warn,fuser=error");
    super::finish("dlmfs", run(&args))
}

/// Runs dlmfs with parsed arguments until it is unmounted.
pub fn run(args: &DlmfsArgs) -> Outcome {
    let mut mount = MountOptions::default();
    for o in &args.options {
        mount.add(o).map_err(Failure::usage)?;
    }
    let connect = super::connect_options(args.socket.as_deref(), args.no_autostart);
    let opts = DlmfsOptions {
        mountpoint: args.mountpoint.clone(),
        connect,
        mount,
    };
    crate::dlmfs::run(&opts).map_err(|e| {
        let code = match e {
            DlmfsError::BadOption(_) => exit::USAGE,
            ref e if e.is_unreachable() => exit::UNREACHABLE,
            _ => exit::ERROR,
        };
        Failure::new(code, e)
    })?;
    Ok(exit::OK)
}
