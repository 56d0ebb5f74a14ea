//! Runs every captured ocfs2-tools `o2cb` case against our `o2cb` and compares
//! stdout, exit status and the resulting `cluster.conf` byte for byte.
//!
//! Cases live in `tests/data/o2cb/{main,errors,extra,parse}`: each
//! directory with a `cmd` file is run in a scratch directory seeded with its
//! `cluster.conf.before`. Block-device cases get a real OCFS2 image on a loop
//! device; cases that use the default `/etc/ocfs2/cluster.conf` run in a
//! private mount namespace with an empty directory bound over `/etc/ocfs2`,
//! as on the capture machine. Stderr wording is ours, but where the real tool
//! printed an `o2cb: ` message we must print one too.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{LoopVolume, bin, data, output, require_root};

/// Cases where we deliberately differ (docs/COMPATIBILITY.md), with what we
/// do instead, checked below.
const DIVERGENCES: &[(&str, &str)] = &[
    (
        "errors/help-long",
        "help on stdout, exit 0 (clap's convention)",
    ),
    (
        "errors/version-short",
        "version on stdout, exit 0 (clap's convention)",
    ),
    (
        "parse/bad-cluster-missing-name/list-clusters",
        "a clean error and exit 1 instead of a crash (SIGSEGV, 139)",
    ),
    (
        "parse/bad-cluster-missing-name/list-cluster",
        "a clean error and exit 1 instead of a crash (SIGSEGV, 139)",
    ),
    (
        "parse/bad-cluster-missing-name/rewrite",
        "a clean error and exit 1 instead of a crash (SIGSEGV, 139)",
    ),
];

fn case_dirs(root: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for d in entries {
        if d.join("cmd").is_file() {
            out.push(d);
        } else {
            case_dirs(&d, out);
        }
    }
}

struct Run {
    stdout: Vec<u8>,
    stderr: String,
    rc: i32,
    after: Option<Vec<u8>>,
}

fn run_case(case: &Path, cmd: &str, bindir: &Path) -> Run {
    let scratch = tempfile::tempdir().unwrap();
    let conf = scratch.path().join("cluster.conf");
    if let Ok(before) = fs::read(case.join("cluster.conf.before")) {
        fs::write(&conf, before).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let uses_default_file = !cmd.starts_with("o2cb --config-file");
    let etc = tempfile::tempdir().unwrap();
    let mut c = if uses_default_file {
        require_root("a private mount namespace for the cases that read /etc/ocfs2/cluster.conf");
        fs::create_dir_all("/etc/ocfs2").unwrap();
        let mut c = Command::new(common::require_program("unshare", "util-linux"));
        c.args([
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$O2T_ETC" /etc/ocfs2 && eval "$O2T_CMD""#,
        ]);
        c.env("O2T_ETC", etc.path()).env("O2T_CMD", cmd);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    };
    let out = output(
        c.current_dir(scratch.path())
            .env("PATH", path)
            .env_remove("O2CB_CONFIG_FILE")
            // The captures were made with no cluster stack: no lockd answers.
            .env("LOCKD_SOCKET", scratch.path().join("no-lockd.sock"))
            .stdin(Stdio::null()),
    );
    Run {
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        rc: out.status.code().unwrap_or(-1),
        after: fs::read(&conf).ok(),
    }
}

#[test]
fn every_captured_o2cb_case() {
    let root = data("o2cb");
    let mut cases = Vec::new();
    for part in ["main", "errors", "extra", "parse"] {
        case_dirs(&root.join(part), &mut cases);
    }
    assert!(cases.len() > 200, "found only {} cases", cases.len());

    let bindir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin("o2cb"), bindir.path().join("o2cb")).unwrap();
    let mut loopdev: Option<LoopVolume> = None;
    let mut failures = Vec::new();
    let mut divergent_seen = 0;

    for case in &cases {
        let name = case
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut cmd = fs::read_to_string(case.join("cmd")).unwrap();
        if cmd.contains("/dev/loopN") {
            let dev = &loopdev.get_or_insert_with(LoopVolume::new).dev;
            cmd = cmd.replace("/dev/loopN", dev);
        }
        let cmd = cmd.strip_suffix('\n').unwrap_or(&cmd).to_owned();
        let run = run_case(case, &cmd, bindir.path());
        let want_stdout = fs::read(case.join("stdout")).unwrap();
        let want_stderr = fs::read_to_string(case.join("stderr")).unwrap();
        let want_rc: i32 = fs::read_to_string(case.join("rc"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let before = fs::read(case.join("cluster.conf.before")).ok();
        let want_after = fs::read(case.join("cluster.conf.after")).ok();
        let mut problems = Vec::new();

        if let Some((_, what)) = DIVERGENCES.iter().find(|(n, _)| *n == name) {
            divergent_seen += 1;
            let stdout = String::from_utf8_lossy(&run.stdout);
            match name.as_str() {
                "errors/help-long" => {
                    if run.rc != 0 || !stdout.contains("Usage: o2cb") {
                        problems.push(format!("expected {what}"));
                    }
                }
                "errors/version-short" => {
                    if run.rc != 0 || !stdout.starts_with("o2cb ") {
                        problems.push(format!("expected {what}"));
                    }
                }
                _ => {
                    if run.rc != 1
                        || !run.stdout.is_empty()
                        || !run.stderr.starts_with("o2cb: ")
                        || !run.stderr.contains("no 'name'")
                    {
                        problems.push(format!(
                            "expected {what}, got rc {} stderr {:?}",
                            run.rc, run.stderr
                        ));
                    }
                }
            }
            if run.after != before {
                problems.push("the file changed".into());
            }
        } else {
            if run.stdout != want_stdout {
                problems.push(format!(
                    "stdout differs:\n--- want\n{}\n--- got\n{}",
                    String::from_utf8_lossy(&want_stdout),
                    String::from_utf8_lossy(&run.stdout)
                ));
            }
            if run.rc != want_rc {
                problems.push(format!("exit status {} instead of {want_rc}", run.rc));
            }
            if run.after != want_after {
                problems.push(format!(
                    "cluster.conf differs:\n--- want\n{}\n--- got\n{}",
                    want_after
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or("(no file)".into()),
                    run.after
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or("(no file)".into())
                ));
            }
            if want_stderr.starts_with("o2cb: ") && !run.stderr.starts_with("o2cb: ") {
                problems.push(format!(
                    "stderr should start with 'o2cb: ', got {:?}",
                    run.stderr
                ));
            }
            if !want_stderr.is_empty() && run.stderr.is_empty() {
                problems.push("the real tool says something on stderr; we say nothing".into());
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {cmd}\n  {}", problems.join("\n  ")));
        }
    }
    assert_eq!(
        divergent_seen,
        DIVERGENCES.len(),
        "a divergence case is missing"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
