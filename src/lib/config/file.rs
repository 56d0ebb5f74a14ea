//! Reading and replacing `cluster.conf` on disk.
//!
//! A store never leaves a half-written file: the new bytes go to a temporary
//! file in the same directory, which is flushed to disk, given mode 0644 and
//! renamed over the target; then the directory is flushed. Writers serialize
//! on an advisory lock on the directory ([`ConfigLock`]), held from before
//! the load to after the store, so two concurrent edits never lose one
//! another. The lock is on the directory, not on the file that gets renamed
//! over (a lock on a replaced inode protects nothing).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::{ClusterConf, ParseError, parse};

/// Why `cluster.conf` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is malformed.
    #[error("{}:{}: {}", path.display(), source.line, source.problem)]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and on which line.
        source: ParseError,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
}

/// Why `cluster.conf` could not be written. The old file is untouched.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should hold the file does not exist.
    #[error("cannot write {}: directory {} does not exist", path.display(), dir.display())]
    NoDirectory {
        /// The file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Any other system error, with the step that failed.
    #[error("cannot write {}: {step}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The system error.
        source: io::Error,
    },
}

/// Loads `path`. A missing file is an empty configuration, as for the real tool.
pub fn load(path: &Path) -> Result<ClusterConf, LoadError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ClusterConf::default()),
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&bytes).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// An exclusive advisory lock serializing edits of one configuration file.
/// Released when dropped.
#[derive(Debug)]
pub struct ConfigLock {
    _lock: Flock<File>,
}

impl ConfigLock {
    /// Blocks until this process holds the edit lock for `path` (a `flock`
    /// on the file's directory).
    pub fn acquire(path: &Path) -> Result<Self, StoreError> {
        let dir = dir_of(path);
        let file = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoDirectory {
                    path: path.to_owned(),
                    dir,
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    step: "opening its directory to lock it",
                    source,
                });
            }
        };
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StoreError::Io {
                path: path.to_owned(),
                step: "locking its directory",
                source: errno.into(),
            })?;
        Ok(ConfigLock { _lock: lock })
    }
}

/// Steps of a store, for tests that inject a failure between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    TempCreated,
    Written,
    Synced,
}

/// Writes `conf` to `path` atomically. The caller should hold [`ConfigLock`].
pub fn store(path: &Path, conf: &ClusterConf) -> Result<(), StoreError> {
    write_atomic(path, &conf.to_bytes(), &mut |_| Ok(()))
}

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp.")
}

/// Removes temporary files that a killed writer left behind. Only called
/// under the lock, so none of them belongs to a live writer.
fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    if let Ok(entries) = fs::read_dir(dir_of(path)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    hook: &mut dyn FnMut(Stage) -> io::Result<()>,
) -> Result<(), StoreError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = dir_of(path);
    if !dir.is_dir() {
        return Err(StoreError::NoDirectory {
            path: path.to_owned(),
            dir,
        });
    }
    remove_stale_temps(path);
    let tmp = dir.join(format!(
        "{}{}.{}",
        temp_prefix(path),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let err = |step: &'static str| {
        let path = path.to_owned();
        move |source: io::Error| StoreError::Io { path, step, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err("creating a temporary file"))?;
    let result = (|| {
        hook(Stage::TempCreated).map_err(err("creating a temporary file"))?;
        file.write_all(bytes).map_err(err("writing"))?;
        hook(Stage::Written).map_err(err("writing"))?;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(err("setting mode 0644"))?;
        file.sync_all().map_err(err("flushing to disk"))?;
        hook(Stage::Synced).map_err(err("flushing to disk"))?;
        fs::rename(&tmp, path).map_err(err("renaming the temporary file over it"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err("flushing its directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn missing_file_is_empty_config() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            load(&d.path().join("nope")).unwrap(),
            ClusterConf::default()
        );
    }

    #[test]
    fn parse_error_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.conf");
        fs::write(&p, "cluster:\n\tname = c1\n\tnode_count\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3: ", p.display())), "{e}");
    }

    #[test]
    fn store_replaces_with_mode_0644_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.conf");
        let mut c = ClusterConf::default();
        c.add_cluster("c1").unwrap();
        store(&p, &c).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        assert_eq!(load(&p).unwrap(), c);
        assert_eq!(listing(d.path()), ["cluster.conf"]);
    }

    #[test]
    fn failure_at_any_step_leaves_the_old_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.conf");
        fs::write(&p, b"old bytes").unwrap();
        for stage in [Stage::TempCreated, Stage::Written, Stage::Synced] {
            let r = write_atomic(&p, b"new bytes", &mut |s| {
                if s == stage {
                    Err(io::Error::other("injected"))
                } else {
                    Ok(())
                }
            });
            assert!(r.is_err());
            assert_eq!(fs::read(&p).unwrap(), b"old bytes", "{stage:?}");
            assert_eq!(listing(d.path()), ["cluster.conf"], "{stage:?}");
        }
    }

    #[test]
    fn temp_left_by_a_killed_writer_is_removed_and_never_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.conf");
        fs::write(&p, b"cluster:\n\tname = c1\n\tnode_count = 0\n").unwrap();
        // What a writer killed mid-write leaves behind: a torn temp file.
        fs::write(d.path().join(".cluster.conf.tmp.999.0"), b"cluster:\n\tna").unwrap();
        assert_eq!(load(&p).unwrap().clusters.len(), 1);
        let mut c = load(&p).unwrap();
        c.add_cluster("c2").unwrap();
        store(&p, &c).unwrap();
        assert_eq!(listing(d.path()), ["cluster.conf"]);
        assert_eq!(load(&p).unwrap().clusters.len(), 2);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = store(
            Path::new("/nonexistent-dir-o2tools/cluster.conf"),
            &ClusterConf::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::NoDirectory { .. }), "{e}");
        let e =
            ConfigLock::acquire(Path::new("/nonexistent-dir-o2tools/cluster.conf")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn lock_excludes_other_holders() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.conf");
        let held = ConfigLock::acquire(&p).unwrap();
        let dir = File::open(d.path()).unwrap();
        // A second open file description cannot take it while held.
        let r = Flock::lock(dir, FlockArg::LockExclusiveNonblock);
        assert!(r.is_err());
        drop(held);
        let dir = File::open(d.path()).unwrap();
        assert!(Flock::lock(dir, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
