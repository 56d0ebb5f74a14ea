//! How `o2cb` writes the file: concurrent edits never lose one another, a
//! writer killed at any moment leaves the old or the new file (never a torn
//! one), files are mode 0644 whatever the umask, and `$O2CB_CONFIG_FILE`
//! names the file.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, output};

fn o2cb(conf: &Path, args: &[&str]) -> std::process::Output {
    output(
        Command::new(bin("o2cb"))
            .arg(format!("--config-file={}", conf.display()))
            .args(args)
            .env_remove("O2CB_CONFIG_FILE")
            .stdin(Stdio::null()),
    )
}

fn ok(conf: &Path, args: &[&str]) -> String {
    let out = o2cb(conf, args);
    assert!(
        out.status.success(),
        "o2cb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn concurrent_add_node_loses_nothing() {
    for round in 0..5 {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("cluster.conf");
        ok(&conf, &["add-cluster", "c1"]);
        let children: Vec<_> = (0..8)
            .map(|i| {
                Command::new(bin("o2cb"))
                    .arg(format!("--config-file={}", conf.display()))
                    .args([
                        "add-node",
                        "c1",
                        &format!("n{i}"),
                        "--ip",
                        &format!("10.0.0.{}", i + 1),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let listing = ok(&conf, &["list-cluster", "--oneline", "c1"]);
        for i in 0..8 {
            assert!(
                listing.contains(&format!(" n{i} 10.0.0.{}:7777 c1\n", i + 1)),
                "round {round}: node n{i} lost:\n{listing}"
            );
        }
        assert!(
            listing.ends_with("cluster: 8 local c1\n"),
            "round {round}:\n{listing}"
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["cluster.conf"],
            "round {round}: temporary files left"
        );
    }
}

#[test]
fn killed_writer_leaves_old_or_new_file() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("cluster.conf");
    ok(&conf, &["add-cluster", "c1"]);
    // A large file makes the write window wide.
    let mut c = o2tools::config::load(&conf).unwrap();
    for i in 0..200u32 {
        c.add_node(
            "c1",
            &format!("node-with-a-long-name-{i:03}"),
            [10, 0, (i / 250) as u8, (i % 250) as u8].into(),
            7777,
            None,
        )
        .unwrap();
    }
    o2tools::config::store(&conf, &c).unwrap();

    let mut torn = 0;
    for i in 0..60u64 {
        let old = fs::read(&conf).unwrap();
        let args = [
            "heartbeat-mode",
            "c1",
            if i % 2 == 0 { "global" } else { "local" },
        ];
        // What a completed run produces, from a copy.
        let copy = d.path().join("copy.conf");
        fs::write(&copy, &old).unwrap();
        ok(&copy, &args);
        let new = fs::read(&copy).unwrap();
        fs::remove_file(&copy).unwrap();

        let mut child = Command::new(bin("o2cb"))
            .arg(format!("--config-file={}", conf.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros((i * 97) % 3000));
        let _ = child.kill();
        let _ = child.wait();
        let now = fs::read(&conf).unwrap();
        if now != old && now != new {
            torn += 1;
        }
        assert!(
            o2tools::config::parse(&now).is_ok(),
            "iteration {i}: unreadable file"
        );
    }
    assert_eq!(
        torn, 0,
        "a killed writer left a file that is neither old nor new"
    );
    // The next edit clears any temporary file a killed writer left.
    ok(&conf, &["heartbeat-mode", "c1", "local"]);
    let names: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cluster.conf"]);
}

#[test]
fn mode_is_0644_whatever_the_umask() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("cluster.conf");
    let out = output(
        Command::new("sh")
            .args([
                "-c",
                r#"umask 077; exec "$0" --config-file="$1" add-cluster c1"#,
            ])
            .arg(bin("o2cb"))
            .arg(&conf),
    );
    assert!(out.status.success());
    assert_eq!(
        fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn environment_names_the_file_and_option_wins() {
    let d = tempfile::tempdir().unwrap();
    let env_conf = d.path().join("env.conf");
    let opt_conf = d.path().join("opt.conf");
    let run = |args: &[&str]| {
        output(
            Command::new(bin("o2cb"))
                .args(args)
                .env("O2CB_CONFIG_FILE", &env_conf),
        )
    };
    assert!(run(&["add-cluster", "envc"]).status.success());
    assert!(
        fs::read_to_string(&env_conf)
            .unwrap()
            .contains("name = envc")
    );
    let opt = format!("--config-file={}", opt_conf.display());
    assert!(run(&[&opt, "add-cluster", "optc"]).status.success());
    assert!(
        fs::read_to_string(&opt_conf)
            .unwrap()
            .contains("name = optc")
    );
    assert!(!fs::read_to_string(&env_conf).unwrap().contains("optc"));
    let out = run(&["list-clusters"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "envc\n");
}

#[test]
fn malformed_file_error_names_file_line_and_problem_and_keeps_the_file() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("cluster.conf");
    let text = "cluster:\n\tname = c1\n\tnode_count = 0\n\nnode:\n\tcluster = c1\n\tname = n1\n\tnumber = 1\n\tip_address = 10.0.0.300\n\tip_port = 7777\n";
    fs::write(&conf, text).unwrap();
    let out = o2cb(&conf, &["add-cluster", "c2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("o2cb: {}:9: ", conf.display())) && err.contains("10.0.0.300"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&conf).unwrap(), text);
}

#[test]
fn json_listings() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("cluster.conf");
    ok(&conf, &["add-cluster", "c1"]);
    ok(
        &conf,
        &["add-node", "c1", "n1", "--ip", "10.0.0.1", "--number", "4"],
    );
    ok(
        &conf,
        &["add-heartbeat", "c1", "0C7010EBE28F45CF9B64CB60642047A8"],
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&conf, &["list-clusters", "--json"])).unwrap();
    assert_eq!(v["clusters"][0]["name"], "c1");
    assert_eq!(v["clusters"][0]["heartbeat_mode"], "local");
    assert_eq!(v["clusters"][0]["node_count"], 1);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&conf, &["list-cluster", "--json", "c1"])).unwrap();
    assert_eq!(v["cluster"]["name"], "c1");
    assert_eq!(v["nodes"][0]["number"], 4);
    assert_eq!(v["nodes"][0]["name"], "n1");
    assert_eq!(v["nodes"][0]["ip_address"], "10.0.0.1");
    assert_eq!(v["nodes"][0]["ip_port"], 7777);
    assert_eq!(
        v["heartbeats"][0]["region"],
        "0C7010EBE28F45CF9B64CB60642047A8"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&conf, &["list-nodes", "c1", "--json"])).unwrap();
    assert_eq!(v["cluster"], "c1");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&conf, &["list-heartbeats", "--json", "c1"])).unwrap();
    assert_eq!(v["heartbeats"].as_array().unwrap().len(), 1);
    // Unknown cluster: exit 0 in the real tool's plain listing, 1 with --json.
    assert_eq!(
        o2cb(&conf, &["list-cluster", "nosuch"]).status.code(),
        Some(0)
    );
    assert_eq!(
        o2cb(&conf, &["list-cluster", "--json", "nosuch"])
            .status
            .code(),
        Some(1)
    );
}
