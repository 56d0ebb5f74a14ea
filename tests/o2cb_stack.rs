//! o2cb's kernel-facing commands against a real lockd (our cluster stack):
//! register-cluster, unregister-cluster, start/stop-heartbeat, cluster-status.
//!
//! Each test starts its own lockd on a private socket and kills it by pid.
//! The cluster's nodes other than this host never come up, which is fine:
//! a domain's members are the nodes that are up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{Lockd, bin, eventually, output};

/// lockd binds cluster ports: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .into_string()
        .expect("UTF-8 host name")
}

/// A port unlikely to clash with other tests running at the same time.
fn port(offset: u16) -> u16 {
    20000 + (std::process::id() % 20000) as u16 + offset
}

struct Setup {
    lockd: Lockd,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(global: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("lockd.toml");
    std::fs::write(
        &settings,
        "[heartbeat]\ninterval_ms = 1000\ndead_threshold = 5\n[network]\nreconnect_delay_ms = 200\n",
    )
    .unwrap();
    let conf = dir.path().join("cluster.conf");
    let p = port(0).to_string();
    let me = hostname();
    let mut steps: Vec<Vec<&str>> = vec![
        vec!["add-cluster", "c1"],
        vec![
            "add-node",
            "--ip",
            "127.0.0.1",
            "--port",
            &p,
            "--number",
            "1",
            "c1",
            &me,
        ],
        vec![
            "add-node",
            "--ip",
            "127.0.0.2",
            "--port",
            &p,
            "--number",
            "2",
            "c1",
            "other",
        ],
        vec!["add-cluster", "c2"],
    ];
    let region = dir.path().join("hb.img");
    let region_s = region.to_str().unwrap().to_owned();
    if global {
        std::fs::write(&region, vec![0u8; 1 << 20]).unwrap();
        steps.push(vec!["add-heartbeat", "c1", &region_s]);
        steps.push(vec!["heartbeat-mode", "c1", "global"]);
    }
    for args in steps {
        let (rc, _, err) = o2cb_at(&conf, None, &args);
        assert_eq!(rc, 0, "o2cb {args:?}: {err}");
    }
    let lockd = Lockd::start_with(&["--settings", settings.to_str().unwrap()]);
    if global {
        let out = output(
            Command::new(bin("hb_ctl"))
                .args(["format", "--no-autostart", &region_s])
                .env("LOCKD_SOCKET", &lockd.socket),
        );
        assert!(out.status.success(), "hb_ctl format: {out:?}");
    }
    Setup {
        lockd,
        conf,
        _dir: dir,
    }
}

/// Runs o2cb with `--config-file=conf` against the lockd on `socket` (None:
/// a socket nobody listens on); returns (status, stdout, stderr).
fn o2cb_at(conf: &Path, socket: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let nowhere = conf.with_file_name("no-lockd.sock");
    let out = output(
        Command::new(bin("o2cb"))
            .arg(format!("--config-file={}", conf.display()))
            .args(args)
            .env("LOCKD_SOCKET", socket.unwrap_or(&nowhere))
            .env_remove("O2CB_CONFIG_FILE")
            .stdin(std::process::Stdio::null()),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Setup {
    fn o2cb(&self, args: &[&str]) -> (i32, String, String) {
        o2cb_at(&self.conf, Some(&self.lockd.socket), args)
    }

    fn status(&self) -> serde_json::Value {
        let (rc, out, err) = self.lockd.run(&["status", "--json"]);
        assert_eq!(rc, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

#[test]
fn register_status_and_unregister() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup(false);

    // No lockd: what the real tool says without the kernel stack.
    let (rc, out, err) = o2cb_at(&s.conf, None, &["cluster-status"]);
    assert_eq!((rc, out.as_str()), (1, "offline\n"));
    assert_eq!(
        err,
        "o2cb: Unable to access cluster service while initializing the cluster\n"
    );
    let (rc, _, err) = o2cb_at(&s.conf, None, &["register-cluster", "c1"]);
    assert_eq!(rc, 1);
    assert!(err.contains("Unable to access cluster service"), "{err}");

    // A single-node lockd runs no cluster.
    let (rc, out, _) = s.o2cb(&["cluster-status"]);
    assert_eq!((rc, out.as_str()), (1, "offline\n"));

    // Unknown clusters are named, as by the real tool.
    let (rc, _, err) = s.o2cb(&["register-cluster", "nope"]);
    assert_eq!((rc, err.as_str()), (1, "o2cb: Unknown cluster 'nope'\n"));

    // Refused while the single node holds a lock the cluster never saw.
    let (rc, id, err) = s.lockd.run(&["lock", "--ex", "d", "r"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = s.o2cb(&["register-cluster", "c1"]);
    assert_eq!(rc, 1);
    assert!(err.contains("lock"), "{err}");
    assert_eq!(s.lockd.run(&["unlock", "--id", id.trim(), "d", "r"]).0, 0);
    assert_eq!(s.lockd.run(&["leave", "d"]).0, 0);

    let (rc, _, err) = s.o2cb(&["register-cluster", "c1"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, _) = s.o2cb(&["cluster-status"]);
    assert_eq!((rc, out.as_str()), (0, "Cluster 'c1' is online\n"));
    let (rc, out, _) = s.o2cb(&["cluster-status", "c1"]);
    assert_eq!((rc, out.as_str()), (0, "Cluster 'c1' is online\n"));
    let (rc, out, _) = s.o2cb(&["cluster-status", "c2"]);
    assert_eq!((rc, out.as_str()), (1, "offline\n"));
    // Again: a no-op. Another cluster: refused, naming the running one.
    assert_eq!(s.o2cb(&["register-cluster", "c1"]).0, 0);
    let (rc, _, err) = s.o2cb(&["register-cluster", "c2"]);
    assert_eq!(rc, 1);
    assert!(err.contains("'c1'"), "{err}");
    // Local heartbeat mode: start/stop-heartbeat have nothing to do.
    assert_eq!(s.o2cb(&["start-heartbeat", "c1"]).0, 0);
    assert_eq!(s.o2cb(&["stop-heartbeat", "c1"]).0, 0);

    let st = s.status();
    assert_eq!(st["mode"], "cluster");
    assert_eq!(st["cluster"], "c1");
    assert_eq!(st["node"], 1);
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{st}");
    assert_eq!(nodes[0]["name"], hostname());
    assert_eq!(nodes[0]["local"], true);
    assert_eq!(nodes[1]["name"], "other");
    assert_eq!(nodes[1]["address"], format!("127.0.0.2:{}", port(0)));
    assert_eq!(nodes[1]["connected"], false);

    // Locks work with the other node down (it is not a member).
    let (rc, _, err) = s.lockd.run(&["lock", "-n", "d", "r", "--", "true"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = s.lockd.run(&["lvb", "set", "d", "r", "hello"]);
    assert_eq!(rc, 0, "{err}");

    // Refused while a domain is joined.
    assert_eq!(s.lockd.run(&["join", "d"]).0, 0);
    let (rc, _, err) = s.o2cb(&["unregister-cluster", "c1"]);
    assert_eq!(rc, 1);
    assert!(err.contains("domains are joined: d"), "{err}");
    assert_eq!(s.lockd.run(&["leave", "d"]).0, 0);
    assert!(eventually(30, || s.status()["domains"] == 0));
    let (rc, _, err) = s.o2cb(&["unregister-cluster", "c1"]);
    assert_eq!(rc, 0, "{err}");
    let st = s.status();
    assert_eq!(st["mode"], "single-node");
    assert_eq!(st["nodes"].as_array().unwrap().len(), 0);
    let (rc, out, _) = s.o2cb(&["cluster-status"]);
    assert_eq!((rc, out.as_str()), (1, "offline\n"));
    // Not running: unregister names what runs (nothing).
    assert_eq!(s.o2cb(&["unregister-cluster", "c1"]).0, 1);
}

#[test]
fn global_heartbeat_follows_start_and_stop() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup(true);
    let regions = || -> Vec<serde_json::Value> {
        let out = output(
            Command::new(bin("hb_ctl"))
                .args(["status", "--json", "--no-autostart"])
                .env("LOCKD_SOCKET", &s.lockd.socket),
        );
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["regions"].as_array().unwrap().clone()
    };
    assert!(regions().is_empty());
    let (rc, _, err) = s.o2cb(&["register-cluster", "c1"]);
    assert_eq!(rc, 0, "{err}");
    // Registering starts the cluster's regions, for the "o2cb" service.
    assert!(eventually(30, || regions().len() == 1), "{}", s.lockd.log());
    let r = &regions()[0];
    assert_eq!(r["node"], 1);
    assert_eq!(r["refs"]["o2cb"], 1, "{r}");

    // Refused while heartbeating.
    let (rc, _, err) = s.o2cb(&["unregister-cluster", "c1"]);
    assert_eq!(rc, 1);
    assert!(err.contains("heartbeat"), "{err}");
    // Stopping the heartbeat while a domain is joined would make the other
    // nodes take this one for dead while it holds locks: refused.
    assert_eq!(s.lockd.run(&["join", "d"]).0, 0);
    let (rc, _, err) = s.o2cb(&["stop-heartbeat", "c1"]);
    assert_eq!(rc, 1);
    assert!(err.contains("domains are joined: d"), "{err}");
    assert_eq!(regions().len(), 1);
    assert_eq!(s.lockd.run(&["leave", "d"]).0, 0);
    assert!(eventually(30, || s.status()["domains"] == 0));

    let (rc, _, err) = s.o2cb(&["stop-heartbeat", "c1"]);
    assert_eq!(rc, 0, "{err}");
    assert!(eventually(30, || regions().is_empty()));
    let (rc, _, err) = s.o2cb(&["start-heartbeat", "c1"]);
    assert_eq!(rc, 0, "{err}");
    assert!(eventually(30, || regions().len() == 1));
    // Starting twice keeps one reference.
    assert_eq!(s.o2cb(&["start-heartbeat", "c1"]).0, 0);
    assert_eq!(regions()[0]["refs"]["o2cb"], 1);
    assert_eq!(s.o2cb(&["stop-heartbeat", "c1"]).0, 0);
    assert!(eventually(30, || regions().is_empty()));
    let (rc, _, err) = s.o2cb(&["unregister-cluster", "c1"]);
    assert_eq!(rc, 0, "{err}");
}
