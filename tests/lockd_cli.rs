//! lockd and dlmctl as real processes: autostart, contention, exit codes,
//! persistent locks, value blocks, crash cleanup, bad clients.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Lockd, bin, eventually, output};

/// Tests whose outcome depends on timing run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A background `dlmctl lock` in its own process group; the whole group is
/// killed and reaped when dropped.
struct Held(std::process::Child);

impl Held {
    /// SIGKILL to dlmctl alone, not its command.
    fn kill_dlmctl(&mut self) {
        self.0.kill().unwrap();
        let _ = self.0.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// Starts `dlmctl lock ... -- COMMAND` in the background in its own process
/// group and waits until it holds the lock.
fn hold(l: &Lockd, args: &[&str], resource: &str) -> Held {
    let mut c = l.dlmctl();
    c.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = Held(c.spawn().unwrap());
    assert!(
        eventually(10, || held_count(l, resource) > 0),
        "the background lock was not taken; log:\n{}",
        l.log()
    );
    child
}

fn held_count(l: &Lockd, resource: &str) -> usize {
    let (_, out, _) = l.run(&["locks", "--json"]);
    json(&out)["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == resource)
        .map(|r| r["granted"].as_array().unwrap().len())
        .sum()
}

#[test]
fn autostart_on_a_fresh_socket_and_the_main_command() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/lockd.sock");
    let out = output(
        Command::new(bin("dlmctl"))
            .args([
                "lock",
                "--ex",
                "mydomain",
                "res1",
                "--",
                "sh",
                "-c",
                "echo $DLM_DOMAIN/$DLM_RESOURCE/$DLM_MODE",
            ])
            .env("LOCKD_SOCKET", &sock)
            .env_remove("LOCKD_NO_AUTOSTART")
            .env("O2CB_CONFIG_FILE", dir.path().join("no-cluster.conf")),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mydomain/res1/EX\n");
    // The autostarted lockd answers and says so; stop it by its pid.
    let st = output(
        Command::new(bin("dlmctl"))
            .args(["status", "--json"])
            .env("LOCKD_SOCKET", &sock)
            .env("LOCKD_NO_AUTOSTART", "1"),
    );
    let v = json(&String::from_utf8_lossy(&st.stdout));
    assert_eq!(v["autostarted"], true);
    assert_eq!(v["mode"], "single-node");
    let pid = v["pid"].as_i64().unwrap() as i32;
    // Its log is beside the socket; its directory is private.
    assert!(dir.path().join("run/lockd.log").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        eventually(10, || !sock.exists()),
        "SIGTERM should remove the socket"
    );
}

/// A dlmctl copied alone (no lockd beside it, none on PATH) starts lockd
/// from its own executable, named `lockd`, in `/`.
#[test]
fn a_lone_dlmctl_runs_lockd_from_its_own_executable() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("bin/dlmctl");
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::fs::copy(bin("dlmctl"), &lone).unwrap();
    let sock = dir.path().join("run/lockd.sock");
    let dlmctl = |args: &[&str]| {
        let mut c = Command::new(&lone);
        c.args(args)
            .env("LOCKD_SOCKET", &sock)
            .env("PATH", "/usr/bin:/bin")
            .env_remove("LOCKD_NO_AUTOSTART")
            .env("O2CB_CONFIG_FILE", dir.path().join("no-cluster.conf"));
        output(&mut c)
    };
    let out = dlmctl(&["lock", "--ex", "d", "r", "--", "sh", "-c", "echo $DLM_MODE"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "EX\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(
        &dlmctl(&["--no-autostart", "status", "--json"]).stdout,
    ));
    assert_eq!(v["autostarted"], true);
    let pid = v["pid"].as_i64().unwrap() as i32;
    let proc_ = std::path::PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc_.join("exe")).unwrap();
    let comm = std::fs::read_to_string(proc_.join("comm")).unwrap();
    let cmdline = std::fs::read(proc_.join("cmdline")).unwrap();
    let cwd = std::fs::read_link(proc_.join("cwd")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(exe, lone);
    assert_eq!(comm, "lockd\n");
    assert!(cmdline.starts_with(b"lockd\0--socket\0"), "{cmdline:?}");
    assert_eq!(cwd, std::path::Path::new("/"));
    assert!(
        eventually(10, || !sock.exists()),
        "SIGTERM should remove the socket"
    );
    // A relative --socket: lockd, which runs in /, is given it in full.
    let rel = |args: &[&str]| {
        let mut c = Command::new(&lone);
        c.args(["--socket", "rel/lockd.sock"])
            .args(args)
            .current_dir(dir.path())
            .env("PATH", "/usr/bin:/bin")
            .env_remove("LOCKD_SOCKET")
            .env_remove("LOCKD_NO_AUTOSTART")
            .env("O2CB_CONFIG_FILE", dir.path().join("no-cluster.conf"));
        output(&mut c)
    };
    let out = rel(&["lock", "d", "r", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(
        &rel(&["--no-autostart", "status", "--json"]).stdout,
    ));
    let pid = v["pid"].as_i64().unwrap() as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let full = dir.path().join("rel/lockd.sock");
    let mut want = b"lockd\0--socket\0".to_vec();
    want.extend_from_slice(full.as_os_str().as_encoded_bytes());
    assert!(cmdline.starts_with(&want), "{cmdline:?}");
    assert!(eventually(10, || !full.exists()));
}

#[test]
fn two_clients_racing_to_autostart_share_one_lockd() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lockd.sock");
    let run = || {
        Command::new(bin("dlmctl"))
            .args(["status", "--json"])
            .env("LOCKD_SOCKET", &sock)
            .env_remove("LOCKD_NO_AUTOSTART")
            .env("O2CB_CONFIG_FILE", dir.path().join("none.conf"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let kids: Vec<_> = (0..4).map(|_| run()).collect();
    let pids: Vec<i64> = kids
        .into_iter()
        .map(|k| {
            let out = k.wait_with_output().unwrap();
            assert!(out.status.success());
            json(&String::from_utf8_lossy(&out.stdout))["pid"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "different lockds: {pids:?}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

#[test]
fn no_autostart_when_disabled_or_a_cluster_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lockd.sock");
    let conf = dir.path().join("cluster.conf");
    std::fs::write(&conf, "cluster:\n\tname = prod\n\tnode_count = 0\n").unwrap();
    let out = output(
        Command::new(bin("dlmctl"))
            .args(["lock", "d", "r", "--", "true"])
            .env("LOCKD_SOCKET", &sock)
            .env_remove("LOCKD_NO_AUTOSTART")
            .env("O2CB_CONFIG_FILE", &conf),
    );
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not running") && err.contains("'prod'"),
        "{err}"
    );
    let out = output(
        Command::new(bin("dlmctl"))
            .args(["status"])
            .env("LOCKD_SOCKET", &sock)
            .env("LOCKD_NO_AUTOSTART", "1")
            .env("O2CB_CONFIG_FILE", dir.path().join("none")),
    );
    assert_eq!(out.status.code(), Some(69));
    let out = output(
        Command::new(bin("dlmctl"))
            .args(["--no-autostart", "status"])
            .env("LOCKD_SOCKET", &sock)
            .env_remove("LOCKD_NO_AUTOSTART")
            .env("O2CB_CONFIG_FILE", dir.path().join("none")),
    );
    assert_eq!(out.status.code(), Some(69));
    assert!(!sock.exists());
}

#[test]
fn contention_trylock_timeout_and_conflict_exit_code() {
    let _s = serial();
    let l = Lockd::start();
    let holder = hold(&l, &["lock", "d", "r", "--", "sleep", "30"], "r");
    let (code, _, err) = l.run(&["lock", "-n", "d", "r", "--", "true"]);
    assert_eq!(code, 75);
    assert!(
        err.starts_with("dlmctl: busy: d/r held EX by node 0 pid "),
        "{err}"
    );
    let (code, _, _) = l.run(&["lock", "--try", "-E", "9", "d", "r", "--", "true"]);
    assert_eq!(code, 9);
    let t = Instant::now();
    let (code, _, err) = l.run(&["lock", "-w", "0.3", "d", "r", "--", "true"]);
    assert_eq!(code, 75, "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    let (code, _, _) = l.run(&["lock", "--timeout", "0", "d", "r", "--", "true"]);
    assert_eq!(code, 75);
    // Shared readers coexist with each other, not with the writer.
    let (code, _, _) = l.run(&["lock", "-s", "-n", "d", "r", "--", "true"]);
    assert_eq!(code, 75);
    drop(holder);
    assert!(eventually(10, || l
        .run(&["lock", "-n", "d", "r", "--", "true"])
        .0
        == 0));
    let r1 = hold(&l, &["lock", "--pr", "d", "q", "--", "sleep", "30"], "q");
    assert_eq!(l.run(&["lock", "-s", "-n", "d", "q", "--", "true"]).0, 0);
    assert_eq!(
        l.run(&["lock", "--mode", "CR", "-n", "d", "q", "--", "true"])
            .0,
        0
    );
    assert_eq!(l.run(&["lock", "-x", "-n", "d", "q", "--", "true"]).0, 75);
    drop(r1);
}

#[test]
fn waiter_gets_the_lock_when_the_holder_exits() {
    let _s = serial();
    let l = Lockd::start();
    let holder = hold(&l, &["lock", "d", "r", "--", "sleep", "1"], "r");
    let t = Instant::now();
    let (code, out, _) = l.run(&["lock", "d", "r", "--", "echo", "got it"]);
    assert_eq!((code, out.as_str()), (0, "got it\n"));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "did not wait for the holder"
    );
    drop(holder);
}

#[test]
fn command_exit_statuses_pass_through() {
    let l = Lockd::start();
    assert_eq!(l.run(&["lock", "d", "r", "--", "sh", "-c", "exit 7"]).0, 7);
    assert_eq!(l.run(&["lock", "d", "r", "--", "/nonexistent/cmd"]).0, 127);
    let dir = tempfile::tempdir().unwrap();
    let noexec = dir.path().join("noexec");
    std::fs::write(&noexec, "#!/bin/sh\n").unwrap();
    assert_eq!(
        l.run(&["lock", "d", "r", "--", noexec.to_str().unwrap()]).0,
        126
    );
    assert_eq!(
        l.run(&["lock", "d", "r", "--", "sh", "-c", "kill -TERM $$"])
            .0,
        128 + 15
    );
    // After each of them, the lock is free again.
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 0);
}

#[test]
fn kill_9_of_the_holders_process_group_frees_the_lock() {
    let _s = serial();
    let l = Lockd::start();
    let holder = hold(&l, &["lock", "d", "r", "--", "sleep", "300"], "r");
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 75);
    drop(holder);
    assert!(eventually(10, || l
        .run(&["lock", "-n", "d", "r", "--", "true"])
        .0
        == 0));
}

#[test]
fn the_command_keeps_the_lock_if_dlmctl_dies_unless_close() {
    let _s = serial();
    let l = Lockd::start();
    // Without -o the command inherits the connection: killing dlmctl alone
    // leaves the lock held by the still-running command.
    let mut holder = hold(&l, &["lock", "d", "r", "--", "sleep", "300"], "r");
    holder.kill_dlmctl();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 75);
    drop(holder);
    assert!(eventually(10, || l
        .run(&["lock", "-n", "d", "r", "--", "true"])
        .0
        == 0));
    // With -o it does not: the lock goes with dlmctl.
    let mut holder = hold(&l, &["lock", "-o", "d", "q", "--", "sleep", "300"], "q");
    holder.kill_dlmctl();
    assert!(eventually(10, || l
        .run(&["lock", "-n", "d", "q", "--", "true"])
        .0
        == 0));
    drop(holder);
}

#[test]
fn lost_lock_stops_the_command_and_exits_4() {
    let _s = serial();
    // Root breaks the lock.
    common::require_root("breaking another process's lock");
    let l = Lockd::start();
    let mut c = l.dlmctl();
    c.args(["lock", "--kill-after", "1", "d", "r", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    assert!(eventually(10, || held_count(&l, "r") == 1));
    let (_, out, _) = l.run(&["locks", "--json"]);
    let id = json(&out)["resources"][0]["granted"][0]["id"]
        .as_u64()
        .unwrap();
    // Without --id, unlock means a persistent lock, and says how to break a
    // command's lock instead.
    let (code, _, err) = l.run(&["unlock", "d", "r"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("lock {id} is held by processes")) && err.contains("--id"),
        "{err}"
    );
    let (code, _, err) = l.run(&["unlock", "--id", &id.to_string(), "d", "r"]);
    assert_eq!(code, 0, "{err}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("root unlocked it"));
    // lockd going away is a lost lock too.
    let mut c = l.dlmctl();
    c.args(["lock", "--kill-after", "1", "d", "q", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    assert!(eventually(10, || held_count(&l, "q") == 1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(l.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn persistent_lock_outlives_its_dlmctl_and_is_released_by_unlock() {
    let l = Lockd::start();
    let (code, id, _) = l.run(&["lock", "d", "r"]);
    assert_eq!(code, 0);
    let id = id.trim().to_owned();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 75);
    // Two persistent locks on one node exclude each other.
    assert_eq!(l.run(&["lock", "-n", "d", "r"]).0, 75);
    // Converted by id, in place.
    let (code, out, err) = l.run(&["lock", "--pr", "--id", &id, "d", "r"]);
    assert_eq!((code, out.trim()), (0, id.as_str()), "{err}");
    assert_eq!(l.run(&["lock", "-s", "-n", "d", "r", "--", "true"]).0, 0);
    assert_eq!(l.run(&["lock", "--id", "999", "d", "r"]).0, 1);
    assert_eq!(l.run(&["unlock", "d", "r"]).0, 0);
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 0);
    let (code, _, err) = l.run(&["unlock", "d", "r"]);
    assert_eq!(code, 1);
    assert!(err.contains("no persistent lock"), "{err}");
    // Several: the id is needed.
    let (_, a, _) = l.run(&["lock", "--pr", "d", "s"]);
    let (_, b, _) = l.run(&["lock", "--pr", "d", "s"]);
    let (code, _, err) = l.run(&["unlock", "d", "s"]);
    assert_eq!(code, 1);
    assert!(err.contains("--id"), "{err}");
    let (code, _, err) = l.run(&["unlock", "--id", "999", "d", "s"]);
    assert_eq!(code, 1);
    assert!(err.contains("no lock 999 on d/s"), "{err}");
    assert_eq!(l.run(&["unlock", "--id", a.trim(), "d", "s"]).0, 0);
    assert_eq!(l.run(&["unlock", "--id", b.trim(), "d", "s"]).0, 0);
}

#[test]
fn persistent_lock_of_another_uid_needs_root() {
    common::require_root("acting as two users");
    // uid 65534 runs a copy of dlmctl, on a socket, that it can reach.
    let l = Lockd::start_for_others();
    let dlmctl = common::copy_for_others(&bin("dlmctl"));
    let (code, id, _) = l.run(&["lock", "d", "r"]);
    assert_eq!(code, 0);
    // uid 65534 may not release root's lock.
    let mut c = l.dlmctl_at(&dlmctl.path);
    common::as_user(c.args(["unlock", "d", "r"]), 65534);
    let out = output(&mut c);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // nobody's own persistent lock: root may release it.
    let mut c = l.dlmctl_at(&dlmctl.path);
    common::as_user(c.args(["lock", "--pr", "d", "q"]), 65534);
    let out = output(&mut c);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(l.run(&["unlock", "d", "q"]).0, 0);
    assert_eq!(l.run(&["unlock", "--id", id.trim(), "d", "r"]).0, 0);
}

#[test]
fn lvb_set_and_get_across_processes() {
    let l = Lockd::start();
    assert_eq!(l.run(&["lvb", "set", "d", "r", "hello world"]).0, 0);
    assert_eq!(l.run(&["lvb", "get", "d", "r"]).1, "hello world\n");
    let (_, hex, _) = l.run(&["lvb", "get", "--hex", "d", "r"]);
    assert_eq!(hex.trim().len(), 128);
    assert!(hex.starts_with("68656c6c6f20776f726c6400"));
    let raw = output(l.dlmctl().args(["lvb", "get", "--raw", "d", "r"]));
    assert_eq!(raw.stdout.len(), 64);
    let v = json(&l.run(&["lvb", "get", "--json", "d", "r"]).1);
    assert_eq!(v["text"], "hello world");
    assert_eq!(v["valid"], true);
    assert_eq!(l.run(&["lvb", "set", "d", "r", "--hex", "00ff41"]).0, 0);
    assert!(
        l.run(&["lvb", "get", "--hex", "d", "r"])
            .1
            .starts_with("00ff41000000")
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("v");
    std::fs::write(&f, b"from a file").unwrap();
    assert_eq!(
        l.run(&["lvb", "set", "--file", f.to_str().unwrap(), "d", "r"])
            .0,
        0
    );
    assert_eq!(l.run(&["lvb", "get", "d", "r"]).1, "from a file\n");
    // 65 bytes are refused and nothing changes; 64 are fine.
    let (code, _, err) = l.run(&["lvb", "set", "d", "r", &"x".repeat(65)]);
    assert_eq!(code, 1);
    assert!(err.contains("65 bytes"), "{err}");
    assert_eq!(l.run(&["lvb", "get", "d", "r"]).1, "from a file\n");
    assert_eq!(l.run(&["lvb", "set", "d", "r", &"y".repeat(64)]).0, 0);
    assert_eq!(
        l.run(&["lvb", "get", "d", "r"]).1,
        format!("{}\n", "y".repeat(64))
    );
    // Through a persistent lock: PR may read, not write.
    let (_, id, _) = l.run(&["lock", "--pr", "d", "p"]);
    assert_eq!(l.run(&["lvb", "get", "d", "p"]).1, "\n");
    let (code, _, err) = l.run(&["lvb", "set", "d", "p", "v"]);
    assert_eq!(code, 1);
    assert!(err.contains("needs PW or EX"), "{err}");
    assert_eq!(l.run(&["lock", "--id", id.trim(), "d", "p"]).0, 0);
    assert_eq!(l.run(&["lvb", "set", "d", "p", "v"]).0, 0);
    assert_eq!(l.run(&["lvb", "get", "d", "p"]).1, "v\n");
    // A command under `dlmctl lock` reads and writes through its own lock.
    let inner = format!(
        "{0} lvb set d c inner && {0} lvb get d c",
        bin("dlmctl").display()
    );
    let (code, out, err) = l.run(&["lock", "d", "c", "--", "sh", "-c", &inner]);
    assert_eq!((code, out.as_str()), (0, "inner\n"), "{err}");
    assert_eq!(l.run(&["lvb", "get", "d", "c"]).1, "inner\n");
}

#[test]
fn garbage_on_the_socket_does_not_disturb_other_clients() {
    let l = Lockd::start();
    let mut good = o2tools::client::Client::connect(&l.socket).unwrap();
    let lock = good
        .lock(b"d", b"r", o2tools::dlm::Mode::EX, &Default::default())
        .unwrap();
    for junk in [
        &b"\xff\xff\xff\xff garbage"[..],
        &b"\x05\x00\x00\x00hello"[..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut s = UnixStream::connect(&l.socket).unwrap();
        s.write_all(junk).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        // An error frame, then the connection is closed.
        match o2tools::proto::decode_server(&reply) {
            Ok(Some((o2tools::proto::ServerMsg::Error { .. }, _))) => {}
            other => panic!("expected an error frame, got {other:?} from {reply:?}"),
        }
    }
    // A request before the hello, and a valid hello then garbage.
    let mut s = UnixStream::connect(&l.socket).unwrap();
    s.write_all(&o2tools::proto::encode_client(
        &o2tools::proto::ClientMsg::Request {
            tag: 1,
            request: o2tools::proto::ClientRequest::Status,
        },
    ))
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(matches!(
        o2tools::proto::decode_server(&reply),
        Ok(Some((o2tools::proto::ServerMsg::Error { .. }, _)))
    ));
    // The first client still holds its lock and lockd still serves.
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 75);
    good.unlock(lock).unwrap();
    assert_eq!(l.run(&["lock", "-n", "d", "r", "--", "true"]).0, 0);
    // A wrong protocol version is refused with a clear message.
    let mut s = UnixStream::connect(&l.socket).unwrap();
    s.write_all(&o2tools::proto::encode_client(
        &o2tools::proto::ClientMsg::Hello { version: 99 },
    ))
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    match o2tools::proto::decode_server(&reply) {
        Ok(Some((o2tools::proto::ServerMsg::Error { message }, _))) => {
            assert!(message.contains("99"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn second_lockd_on_the_same_socket_refuses_and_stale_socket_is_replaced() {
    let l = Lockd::start();
    let out = output(
        Command::new(bin("lockd"))
            .arg("--socket")
            .arg(&l.socket)
            .stdin(Stdio::null()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains(&format!("pid {}", l.pid())),
        "{err}"
    );
    // The first one is unharmed.
    assert_eq!(l.run(&["status"]).0, 0);
    // A socket file nobody serves is replaced.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lockd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut child = Lockd::spawn(&sock, dir.path(), &[]);
    let ok = eventually(10, || o2tools::client::Client::connect(&sock).is_ok());
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "lockd did not replace the stale socket");
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut l = Lockd::start();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(l.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = l.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!l.socket.exists());
}

#[test]
fn bad_names_and_usage_exit_2() {
    let l = Lockd::start();
    assert_eq!(l.run(&["lock", "a/b", "r", "--", "true"]).0, 2);
    assert_eq!(l.run(&["lock", "d", "", "--", "true"]).0, 2);
    assert_eq!(l.run(&["lock", "d", &"r".repeat(65), "--", "true"]).0, 2);
    assert_eq!(l.run(&["lock", "d", &"r".repeat(64), "--", "true"]).0, 0);
    assert_eq!(
        l.run(&["lock", "--ex", "--pr", "d", "r", "--", "true"]).0,
        2
    );
    assert_eq!(
        l.run(&["lock", "--mode", "ZZ", "d", "r", "--", "true"]).0,
        2
    );
    assert_eq!(l.run(&["lock", "-w", "-1", "d", "r", "--", "true"]).0, 2);
    assert_eq!(l.run(&["frobnicate"]).0, 2);
    assert_eq!(l.run(&["lock", "--id", "1", "d", "r", "--", "true"]).0, 2);
}

#[test]
fn listings_and_json_keys() {
    let l = Lockd::start();
    let (_, id, _) = l.run(&["lock", "--pr", "d1", "r1"]);
    assert_eq!(l.run(&["join", "d2"]).0, 0);
    let v = json(&l.run(&["domains", "--json"]).1);
    let names: Vec<&str> = v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d1", "d2"]);
    assert_eq!(v["domains"][0]["locks"], 1);
    assert_eq!(v["domains"][0]["pinned"], true);
    let v = json(&l.run(&["locks", "--json", "d1"]).1);
    let lock = &v["resources"][0]["granted"][0];
    assert_eq!(v["resources"][0]["domain"], "d1");
    assert_eq!(v["resources"][0]["name"], "r1");
    assert_eq!(v["resources"][0]["master"], 0);
    assert_eq!(v["resources"][0]["lvb"]["valid"], true);
    assert_eq!(lock["id"].as_u64().unwrap().to_string(), id.trim());
    assert_eq!(lock["granted"], "PR");
    assert_eq!(lock["requested"], serde_json::Value::Null);
    assert_eq!(lock["persistent"], true);
    assert_eq!(lock["node"], 0);
    let v = json(&l.run(&["status", "--json"]).1);
    for key in [
        "node",
        "mode",
        "cluster",
        "pid",
        "uptime_ms",
        "socket",
        "autostarted",
        "domains",
        "resources",
        "locks",
        "clients",
        "counters",
    ] {
        assert!(v.get(key).is_some(), "status --json lacks {key}");
    }
    assert_eq!(v["pid"].as_i64().unwrap(), i64::from(l.pid()));
    assert_eq!(v["autostarted"], false);
    let (code, table, _) = l.run(&["locks"]);
    assert_eq!(code, 0);
    assert!(table.lines().next().unwrap().contains("RESOURCE"));
    assert!(table.contains("persistent"));
    assert_eq!(l.run(&["leave", "d1"]).0, 0);
    assert_eq!(l.run(&["leave", "d1"]).0, 1);
    assert_eq!(
        json(&l.run(&["locks", "--json"]).1)["resources"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// A listing far larger than a request frame (64 KiB) comes through whole.
#[test]
fn large_listings_are_not_cut_off() {
    let l = Lockd::start();
    let mut c = o2tools::client::Client::connect(&l.socket).unwrap();
    c.join(b"big", true).unwrap();
    let opts = o2tools::client::LockOptions::default();
    for i in 0..3000 {
        let name = format!("resource-{i:05}");
        let id = c
            .lock(b"big", name.as_bytes(), o2tools::dlm::Mode::EX, &opts)
            .unwrap();
        c.lvb_set(id, name.as_bytes()).unwrap();
        c.unlock(id).unwrap();
    }
    let (rc, out, err) = l.run(&["locks", "--json", "big"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.len() > 10 * 64 * 1024, "{} bytes", out.len());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rs = v["resources"].as_array().unwrap();
    assert_eq!(rs.len(), 3000);
    assert_eq!(rs[2999]["name"], "resource-02999");
    assert_eq!(rs[2999]["lvb"]["seq"], 1);
}
