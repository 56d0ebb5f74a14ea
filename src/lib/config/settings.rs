//! lockd's own settings: timing of heartbeat and of the peer network.
//!
//! Sources, later ones winning key by key:
//! 1. the o2cb defaults (2000 ms interval, threshold 31, idle 30000 ms,
//!    keepalive 2000 ms, reconnect 2000 ms);
//! 2. the `O2CB_*` values of `/etc/sysconfig/o2cb`, or else `/etc/default/o2cb`
//!    (the file the o2cb init script reads);
//! 3. a TOML file: `lockd --settings FILE`, else `$LOCKD_SETTINGS`, else
//!    `/etc/o2tools/lockd.toml` when it exists.
//!
//! ```toml
//! [heartbeat]
//! interval_ms = 2000        # o2hb region timeout
//! dead_threshold = 31       # O2CB_HEARTBEAT_THRESHOLD
//! [network]
//! idle_timeout_ms = 30000   # O2CB_IDLE_TIMEOUT_MS
//! keepalive_delay_ms = 2000 # O2CB_KEEPALIVE_DELAY_MS
//! reconnect_delay_ms = 2000 # O2CB_RECONNECT_DELAY_MS
//! fence_grace_ms = 10000    # a fencing node waits this long for clients
//! ```
//!
//! `fence_grace_ms` ties fencing to the clients: a node that lost quorum
//! waits up to this long for every client that held a lock to let go (`dlmctl
//! lock` sends SIGKILL to its command no later than one second before it
//! ends, whatever `--kill-after` says), then stops heartbeating. Without a
//! disk heartbeat the other nodes wait [`Settings::fence_margin_ms`] (this
//! grace plus the keepalive delay plus two seconds) on top of the idle
//! timeout before they declare an unreachable node dead.
//!
//! Unknown keys and out-of-range values are errors that name the key.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where lockd looks for its TOML settings when neither `--settings` nor
/// `$LOCKD_SETTINGS` says.
pub const DEFAULT_SETTINGS_FILE: &str = "/etc/o2tools/lockd.toml";
/// The environment variable naming the settings file.
pub const SETTINGS_ENV: &str = "LOCKD_SETTINGS";
/// The o2cb init script's configuration, in the order it looks for them.
pub const O2CB_SYSCONFIG_FILES: [&str; 2] = ["/etc/sysconfig/o2cb", "/etc/default/o2cb"];

/// Accepted heartbeat intervals. The on-disk sequence is in whole seconds, so a
/// shorter interval would make a live node look dead.
pub const INTERVAL_MS: RangeInclusive<u32> = 1000..=10_000;
/// Accepted dead thresholds (in heartbeat intervals).
pub const DEAD_THRESHOLD: RangeInclusive<u32> = 3..=1000;
/// Accepted network timings.
pub const NETWORK_MS: RangeInclusive<u32> = 100..=600_000;

/// lockd's settings, complete and validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Disk heartbeat timing.
    pub heartbeat: HeartbeatSettings,
    /// Peer network timing.
    pub network: NetworkSettings,
}

/// `[heartbeat]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeartbeatSettings {
    /// Milliseconds between two writes of this node's slot.
    pub interval_ms: u32,
    /// Unchanged samples after which a node is dead.
    pub dead_threshold: u32,
}

/// `[network]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkSettings {
    /// A connection with no traffic for this long is considered down.
    pub idle_timeout_ms: u32,
    /// Send a keepalive after this long without traffic.
    pub keepalive_delay_ms: u32,
    /// Wait this long before reconnecting.
    pub reconnect_delay_ms: u32,
    /// A node fencing itself waits this long for its clients to let go.
    pub fence_grace_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: HeartbeatSettings {
                interval_ms: 2000,
                dead_threshold: 31,
            },
            network: NetworkSettings {
                idle_timeout_ms: 30_000,
                keepalive_delay_ms: 2000,
                reconnect_delay_ms: 2000,
                fence_grace_ms: 10_000,
            },
        }
    }
}

impl Settings {
    /// Milliseconds without a heartbeat after which a node is dead.
    pub fn dead_ms(&self) -> u64 {
        u64::from(self.heartbeat.interval_ms) * u64::from(self.heartbeat.dead_threshold)
    }

    /// Without a disk heartbeat, how long past the idle timeout the nodes
    /// that keep quorum wait before declaring an unreachable node dead: more
    /// than fencing takes on the other side (the fence grace), plus the
    /// keepalive delay (the two sides may have heard from each other last
    /// that far apart), plus two seconds for scheduling and clock rates.
    pub fn fence_margin_ms(&self) -> u64 {
        u64::from(self.network.fence_grace_ms) + u64::from(self.network.keepalive_delay_ms) + 2000
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A settings file named on the command line or in the environment is missing
    /// or unreadable.
    #[error("cannot read settings file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key, or wrong type.
    #[error("{}: {message}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and the line).
        message: String,
    },
    /// A value outside its accepted range.
    #[error("{}: {key} = {value} is out of range ({}..={})", path.display(), range.start(), range.end())]
    Range {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `heartbeat.interval_ms` or `O2CB_IDLE_TIMEOUT_MS`.
        key: String,
        /// The value found.
        value: u64,
        /// What is accepted.
        range: RangeInclusive<u32>,
    },
    /// Values that are each in range but do not work together.
    #[error(
        "network.keepalive_delay_ms = {keepalive} must be less than network.idle_timeout_ms = {idle} (a quiet connection would time out before its keepalive)"
    )]
    KeepaliveNotBelowIdle {
        /// The keepalive delay.
        keepalive: u32,
        /// The idle timeout.
        idle: u32,
    },
    /// An `O2CB_*` value that is not a number.
    #[error("{}:{line}: {key} must be a number of {unit}, not '{value}'", path.display())]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// Its line.
        line: usize,
        /// The variable.
        key: String,
        /// The value found.
        value: String,
        /// What the number counts.
        unit: &'static str,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    heartbeat: RawHeartbeat,
    #[serde(default)]
    network: RawNetwork,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    interval_ms: Option<u64>,
    dead_threshold: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    idle_timeout_ms: Option<u64>,
    keepalive_delay_ms: Option<u64>,
    reconnect_delay_ms: Option<u64>,
    fence_grace_ms: Option<u64>,
}

/// Accepted fence grace: dlmctl kills its command one second before it ends.
pub const FENCE_GRACE_MS: RangeInclusive<u32> = 1000..=600_000;

fn check(
    path: &Path,
    key: &str,
    value: u64,
    range: RangeInclusive<u32>,
) -> Result<u32, SettingsError> {
    match u32::try_from(value) {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(SettingsError::Range {
            path: path.to_owned(),
            key: key.to_owned(),
            value,
            range,
        }),
    }
}

/// Where the settings come from. [`SettingsFiles::discover`] applies the
/// documented search; tests build one by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsFiles {
    /// The o2cb init script configuration, if one exists.
    pub o2cb: Option<PathBuf>,
    /// The TOML file, if any.
    pub toml: Option<PathBuf>,
}

impl SettingsFiles {
    /// `--settings` (given as `cli`), else `$LOCKD_SETTINGS`, else
    /// `/etc/o2tools/lockd.toml` if it exists; and the first existing o2cb
    /// sysconfig file.
    pub fn discover(cli: Option<&Path>) -> Self {
        let toml = cli
            .map(Path::to_owned)
            .or_else(|| {
                std::env::var_os(SETTINGS_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| {
                let p = PathBuf::from(DEFAULT_SETTINGS_FILE);
                p.exists().then_some(p)
            });
        let o2cb = O2CB_SYSCONFIG_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        SettingsFiles { o2cb, toml }
    }

    /// Reads and validates the settings from these files.
    pub fn load(&self) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        if let Some(path) = &self.o2cb {
            apply_o2cb_sysconfig(&mut s, path)?;
        }
        if let Some(path) = &self.toml {
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
                path: path.clone(),
                source,
            })?;
            apply_toml(&mut s, path, &text)?;
        }
        // As o2net requires.
        if s.network.keepalive_delay_ms >= s.network.idle_timeout_ms {
            return Err(SettingsError::KeepaliveNotBelowIdle {
                keepalive: s.network.keepalive_delay_ms,
                idle: s.network.idle_timeout_ms,
            });
        }
        Ok(s)
    }
}

fn apply_toml(s: &mut Settings, path: &Path, text: &str) -> Result<(), SettingsError> {
    let raw: RawSettings = toml::from_str(text).map_err(|e| SettingsError::Toml {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let set = |slot: &mut u32, v: Option<u64>, key: &str, range| -> Result<(), SettingsError> {
        if let Some(v) = v {
            *slot = check(path, key, v, range)?;
        }
        Ok(())
    };
    set(
        &mut s.heartbeat.interval_ms,
        raw.heartbeat.interval_ms,
        "heartbeat.interval_ms",
        INTERVAL_MS,
    )?;
    set(
        &mut s.heartbeat.dead_threshold,
        raw.heartbeat.dead_threshold,
        "heartbeat.dead_threshold",
        DEAD_THRESHOLD,
    )?;
    set(
        &mut s.network.idle_timeout_ms,
        raw.network.idle_timeout_ms,
        "network.idle_timeout_ms",
        NETWORK_MS,
    )?;
    set(
        &mut s.network.keepalive_delay_ms,
        raw.network.keepalive_delay_ms,
        "network.keepalive_delay_ms",
        NETWORK_MS,
    )?;
    set(
        &mut s.network.reconnect_delay_ms,
        raw.network.reconnect_delay_ms,
        "network.reconnect_delay_ms",
        NETWORK_MS,
    )?;
    set(
        &mut s.network.fence_grace_ms,
        raw.network.fence_grace_ms,
        "network.fence_grace_ms",
        FENCE_GRACE_MS,
    )
}

/// Applies the `O2CB_*` timing variables of a shell-style `KEY=value` file.
/// Other variables are ignored; an empty value means the default, as in the
/// init script.
fn apply_o2cb_sysconfig(s: &mut Settings, path: &Path) -> Result<(), SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // It was found by probing; if it vanished or is unreadable, say so.
        Err(source) => {
            return Err(SettingsError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.split(" #").next().unwrap_or("").trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        let (slot, range, unit) = match key.trim() {
            "O2CB_HEARTBEAT_THRESHOLD" => (
                &mut s.heartbeat.dead_threshold,
                DEAD_THRESHOLD,
                "heartbeat intervals",
            ),
            "O2CB_IDLE_TIMEOUT_MS" => (&mut s.network.idle_timeout_ms, NETWORK_MS, "milliseconds"),
            "O2CB_KEEPALIVE_DELAY_MS" => (
                &mut s.network.keepalive_delay_ms,
                NETWORK_MS,
                "milliseconds",
            ),
            "O2CB_RECONNECT_DELAY_MS" => (
                &mut s.network.reconnect_delay_ms,
                NETWORK_MS,
                "milliseconds",
            ),
            _ => continue,
        };
        if value.is_empty() {
            continue;
        }
        let n: u64 = value.parse().map_err(|_| SettingsError::NotANumber {
            path: path.to_owned(),
            line: i + 1,
            key: key.trim().to_owned(),
            value: value.to_owned(),
            unit,
        })?;
        *slot = check(path, key.trim(), n, range)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(o2cb: Option<&str>, toml: Option<&str>) -> (tempfile::TempDir, SettingsFiles) {
        let d = tempfile::tempdir().unwrap();
        let mut f = SettingsFiles::default();
        if let Some(t) = o2cb {
            let p = d.path().join("o2cb");
            std::fs::write(&p, t).unwrap();
            f.o2cb = Some(p);
        }
        if let Some(t) = toml {
            let p = d.path().join("lockd.toml");
            std::fs::write(&p, t).unwrap();
            f.toml = Some(p);
        }
        (d, f)
    }

    #[test]
    fn defaults_are_o2cbs() {
        let s = SettingsFiles::default().load().unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.heartbeat.interval_ms, 2000);
        assert_eq!(s.heartbeat.dead_threshold, 31);
        assert_eq!(s.dead_ms(), 62_000);
        assert_eq!(s.network.idle_timeout_ms, 30_000);
        assert_eq!(s.network.keepalive_delay_ms, 2000);
        assert_eq!(s.network.reconnect_delay_ms, 2000);
    }

    #[test]
    fn keepalive_must_be_below_idle_timeout() {
        let (_d, f) = files(
            None,
            Some("[network]\nidle_timeout_ms = 2000\nkeepalive_delay_ms = 2000\n"),
        );
        let e = f.load().unwrap_err().to_string();
        assert!(
            e.contains(
                "keepalive_delay_ms = 2000 must be less than network.idle_timeout_ms = 2000"
            ),
            "{e}"
        );
        let (_d, f) = files(
            None,
            Some("[network]\nidle_timeout_ms = 2001\nkeepalive_delay_ms = 2000\n"),
        );
        assert!(f.load().is_ok());
    }

    #[test]
    fn toml_keys() {
        let (_d, f) = files(
            None,
            Some(
                "[heartbeat]\ninterval_ms = 1000\ndead_threshold = 5\n[network]\nidle_timeout_ms = 4000\nkeepalive_delay_ms = 500\nreconnect_delay_ms = 700\nfence_grace_ms = 3000\n",
            ),
        );
        let s = f.load().unwrap();
        assert_eq!(s.network.fence_grace_ms, 3000);
        assert_eq!(s.fence_margin_ms(), 3000 + 500 + 2000);
        assert_eq!(s.heartbeat.interval_ms, 1000);
        assert_eq!(s.heartbeat.dead_threshold, 5);
        assert_eq!(s.network.idle_timeout_ms, 4000);
        assert_eq!(s.network.keepalive_delay_ms, 500);
        assert_eq!(s.network.reconnect_delay_ms, 700);
    }

    #[test]
    fn unknown_keys_and_ranges_name_the_key() {
        let (_d, f) = files(None, Some("[heartbeat]\ninterval = 1000\n"));
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("interval"), "{e}");
        let (_d, f) = files(None, Some("[hb]\n"));
        assert!(f.load().unwrap_err().to_string().contains("hb"));
        let (_d, f) = files(None, Some("[heartbeat]\ninterval_ms = 999\n"));
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("heartbeat.interval_ms = 999"), "{e}");
        let (_d, f) = files(None, Some("[heartbeat]\ndead_threshold = 2\n"));
        assert!(f.load().unwrap_err().to_string().contains("dead_threshold"));
        let (_d, f) = files(None, Some("[network]\nidle_timeout_ms = 600001\n"));
        assert!(
            f.load()
                .unwrap_err()
                .to_string()
                .contains("idle_timeout_ms")
        );
        let (_d, f) = files(None, Some("[network]\nfence_grace_ms = 999\n"));
        let e = f.load().unwrap_err().to_string();
        assert!(
            e.contains("network.fence_grace_ms = 999 is out of range (1000..=600000)"),
            "{e}"
        );
        let (_d, f) = files(None, Some("[network]\nreconnect_delay_ms = -1\n"));
        assert!(
            f.load()
                .unwrap_err()
                .to_string()
                .contains("reconnect_delay_ms")
        );
        let (_d, f) = files(None, Some("[heartbeat]\ninterval_ms = 10001\n"));
        assert!(f.load().is_err());
        let (_d, f) = files(
            None,
            Some("[heartbeat]\ninterval_ms = 10000\ndead_threshold = 1000\n"),
        );
        assert!(f.load().is_ok());
    }

    #[test]
    fn o2cb_sysconfig_applies_and_toml_wins() {
        let sys = "# O2CB_ENABLED: start on boot\nO2CB_ENABLED=true\nO2CB_BOOTCLUSTER=ocfs2\nO2CB_HEARTBEAT_THRESHOLD=61\nO2CB_IDLE_TIMEOUT_MS=\"60000\"\nexport O2CB_KEEPALIVE_DELAY_MS=3000\nO2CB_RECONNECT_DELAY_MS=\n";
        let (_d, f) = files(Some(sys), None);
        let s = f.load().unwrap();
        assert_eq!(s.heartbeat.dead_threshold, 61);
        assert_eq!(s.network.idle_timeout_ms, 60_000);
        assert_eq!(s.network.keepalive_delay_ms, 3000);
        assert_eq!(s.network.reconnect_delay_ms, 2000);
        let (_d, f) = files(Some(sys), Some("[heartbeat]\ndead_threshold = 7\n"));
        let s = f.load().unwrap();
        assert_eq!(s.heartbeat.dead_threshold, 7);
        assert_eq!(s.network.idle_timeout_ms, 60_000);
    }

    #[test]
    fn o2cb_sysconfig_errors_name_the_variable() {
        let (_d, f) = files(Some("O2CB_HEARTBEAT_THRESHOLD=abc\n"), None);
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains(":1: O2CB_HEARTBEAT_THRESHOLD"), "{e}");
        let (_d, f) = files(Some("O2CB_IDLE_TIMEOUT_MS=50\n"), None);
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("O2CB_IDLE_TIMEOUT_MS = 50"), "{e}");
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let f = SettingsFiles {
            o2cb: None,
            toml: Some(PathBuf::from("/nonexistent/lockd.toml")),
        };
        assert!(matches!(f.load(), Err(SettingsError::Io { .. })));
    }
}
