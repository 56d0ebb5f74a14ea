//! Disk heartbeat with real lockd processes: two nodes on one region see each
//! other, a killed node dies after the dead time, a cleanly stopped one at
//! once, a stranger in a live node's slot is noticed; and interop with a real
//! OCFS2 volume read by debugfs.ocfs2.
//!
//! Interval 1000 ms, small thresholds; every bound is the dead time plus two
//! intervals plus 3 s of slack (shared machines are slow to wake). The tests
//! in this file run one at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Lockd, bin, output};
use o2tools::heartbeat::device::RegionIo;
use o2tools::heartbeat::format::{self, HbBlock};
use o2tools::heartbeat::region;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const INTERVAL_MS: u64 = 1000;

fn settings(dir: &Path, dead_threshold: u32) -> PathBuf {
    let p = dir.join(format!("lockd-{dead_threshold}.toml"));
    std::fs::write(
        &p,
        format!("[heartbeat]\ninterval_ms = {INTERVAL_MS}\ndead_threshold = {dead_threshold}\n"),
    )
    .unwrap();
    p
}

fn hb_ctl(l: &Lockd, args: &[&str]) -> (i32, String, String) {
    let out = output(
        Command::new(bin("hb_ctl"))
            .args(args)
            .env("LOCKD_SOCKET", &l.socket)
            .env("LOCKD_NO_AUTOSTART", "1")
            .env("O2CB_CONFIG_FILE", "/nonexistent/cluster.conf")
            .stdin(Stdio::null()),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(l: &Lockd) -> serde_json::Value {
    let (code, out, err) = hb_ctl(l, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn live_of(l: &Lockd) -> Vec<u64> {
    status(l)["regions"][0]["live"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn wait_for(what: &str, secs: f64, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs_f64(secs) {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {secs} s");
}

fn node(dir: &Path, n: u8, settings: &Path) -> Lockd {
    let _ = dir;
    Lockd::start_with(&[
        "--node-number",
        &n.to_string(),
        "--settings",
        settings.to_str().unwrap(),
    ])
}

fn format_region(dir: &Path) -> PathBuf {
    let f = dir.join("region");
    std::fs::File::create(&f).unwrap().set_len(1 << 20).unwrap();
    let out = output(Command::new(bin("hb_ctl")).args(["format"]).arg(&f));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(uuid.len(), 32, "{uuid}");
    f
}

#[test]
fn two_nodes_see_each_other_and_death_is_detected() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let region = format_region(dir.path());
    let set = settings(dir.path(), 3);
    let dead_s = 3.0 * INTERVAL_MS as f64 / 1000.0;
    let bound = dead_s + 2.0 * INTERVAL_MS as f64 / 1000.0 + 3.0;

    let a = node(dir.path(), 1, &set);
    let mut b = node(dir.path(), 2, &set);
    for l in [&a, &b] {
        let (code, _, err) = hb_ctl(l, &["start", region.to_str().unwrap()]);
        assert_eq!(code, 0, "start: {err}\n{}", l.log());
    }
    wait_for("node 1 sees node 2", bound, || live_of(&a) == [2]);
    wait_for("node 2 sees node 1", bound, || live_of(&b) == [1]);
    let st = status(&a);
    assert_eq!(st["regions"][0]["node"], 1);
    assert_eq!(st["regions"][0]["steady"], true);
    assert_eq!(st["regions"][0]["refs"]["hb_ctl"], 1);

    // SIGKILL: no clean stop; node 1 waits out the dead time.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = b.child.wait();
    let took = wait_for("node 1 declares node 2 dead", bound, || {
        live_of(&a).is_empty()
    });
    assert!(
        took.as_secs_f64() >= dead_s - 2.0 * INTERVAL_MS as f64 / 1000.0,
        "declared dead too early ({took:?}) for a dead time of {dead_s} s"
    );
    assert!(
        a.log().contains("node 2"),
        "the death is logged:\n{}",
        a.log()
    );
    drop(b);
}

#[test]
fn clean_stop_is_death_at_once() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let region = format_region(dir.path());
    // A long dead time, so "at once" is clearly not the timeout.
    let set = settings(dir.path(), 20);
    let a = node(dir.path(), 1, &set);
    let b = node(dir.path(), 2, &set);
    for l in [&a, &b] {
        assert_eq!(hb_ctl(l, &["start", region.to_str().unwrap()]).0, 0);
    }
    wait_for("node 1 sees node 2", 10.0, || live_of(&a) == [2]);
    let (code, _, err) = hb_ctl(&b, &["stop", region.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let took = wait_for(
        "node 1 sees node 2 leave",
        2.0 * INTERVAL_MS as f64 / 1000.0 + 3.0,
        || live_of(&a).is_empty(),
    );
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: not a clean stop"
    );
    // Its slot says generation 0.
    let r = region::locate(&region).unwrap();
    let mut io = RegionIo::open(&region, &r, false).unwrap();
    let slot = io.read_slots(2, 1).unwrap().to_vec();
    let d = format::decode(&slot).unwrap();
    assert_eq!((d.block.node, d.block.generation), (2, 0));
    // SIGTERM of lockd is a clean stop too.
    assert_eq!(hb_ctl(&b, &["start", region.to_str().unwrap()]).0, 0);
    wait_for("node 2 is back", 10.0, || live_of(&a) == [2]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(
        "node 1 sees node 2 go on SIGTERM",
        2.0 * INTERVAL_MS as f64 / 1000.0 + 3.0,
        || live_of(&a).is_empty(),
    );
}

#[test]
fn another_writer_in_a_live_nodes_slot_is_detected() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let region = format_region(dir.path());
    let set = settings(dir.path(), 5);
    let a = node(dir.path(), 1, &set);
    assert_eq!(hb_ctl(&a, &["start", region.to_str().unwrap()]).0, 0);
    assert!(status(&a)["regions"][0]["problem"].is_null());
    // A third process writes node 7's blocks into node 1's slot.
    let r = region::locate(&region).unwrap();
    let mut io = RegionIo::open(&region, &r, true).unwrap();
    let t = Instant::now();
    let mut seen = None;
    while t.elapsed() < Duration::from_secs_f64(2.0 * INTERVAL_MS as f64 / 1000.0 + 3.0) {
        let block = HbBlock {
            seq: 12345 + t.elapsed().as_millis() as u64,
            node: 7,
            generation: 0xdead_beef,
            dead_ms: 5000,
        };
        io.write_slot(1, &block).unwrap();
        let st = status(&a);
        if let Some(p) = st["regions"][0]["problem"].as_str() {
            seen = Some(p.to_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = seen.expect("the other writer was not reported");
    assert!(
        p.contains('7') || p.to_lowercase().contains("another"),
        "{p}"
    );
    assert!(
        a.log().to_lowercase().contains("slot") || a.log().contains("another"),
        "{}",
        a.log()
    );
    let (_, table, _) = hb_ctl(&a, &["status"]);
    assert!(table.contains("PROBLEM"), "{table}");
}

#[test]
fn references_are_counted_per_service_with_the_ocfs2_hb_ctl_spellings() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let region = format_region(dir.path());
    let set = settings(dir.path(), 3);
    let a = node(dir.path(), 1, &set);
    let dev = region.to_str().unwrap();
    let uuid = region::locate(&region).unwrap().uuid_string();
    assert_eq!(
        hb_ctl(&a, &["-I", "-d", dev]).1,
        format!("{uuid}: 0 refs\n")
    );
    assert_eq!(hb_ctl(&a, &["-S", "-d", dev, "ocfs2"]).0, 0);
    assert_eq!(hb_ctl(&a, &["-S", "-d", dev, "ocfs2"]).0, 0);
    assert_eq!(hb_ctl(&a, &["-S", "-d", dev, "other"]).0, 0);
    assert_eq!(
        hb_ctl(&a, &["-I", "-u", &uuid]).1,
        format!("{uuid}: 3 refs\n")
    );
    // -K -u without a service drops an "ocfs2" reference.
    assert_eq!(hb_ctl(&a, &["-K", "-d", dev, "ocfs2"]).0, 0);
    assert_eq!(hb_ctl(&a, &["-K", "-u", &uuid]).0, 0);
    assert_eq!(
        hb_ctl(&a, &["-I", "-d", dev]).1,
        format!("{uuid}: 1 refs\n")
    );
    let (code, _, err) = hb_ctl(&a, &["-K", "-d", dev, "ocfs2"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(hb_ctl(&a, &["-K", "-d", dev, "other"]).0, 0);
    assert_eq!(
        hb_ctl(&a, &["-I", "-d", dev]).1,
        format!("{uuid}: 0 refs\n")
    );
    // Usage errors exit 1 with the usage on stderr, as the real tool.
    for bad in [
        &["-S", "-d", dev][..],
        &["-K", "-d", dev],
        &["-I"],
        &["-S", "-u", &uuid, "-d", dev, "x"],
        &[],
    ] {
        let (code, out, err) = hb_ctl(&a, bad);
        assert_eq!(code, 1, "{bad:?}");
        assert!(
            out.is_empty() && err.contains("-S -d <device> <service>"),
            "{bad:?}: {err}"
        );
    }
    let (code, out, _) = hb_ctl(&a, &["-h"]);
    assert_eq!(code, 0);
    assert!(out.contains("-I -d <device>"));
}

#[test]
fn format_refuses_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let out = output(Command::new(bin("hb_ctl")).arg("format").arg(&small));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bytes"), "{err}");
    assert_eq!(
        std::fs::read(&small).unwrap(),
        vec![0u8; 4096],
        "nothing written"
    );
    let missing = dir.path().join("missing");
    assert_eq!(
        output(Command::new(bin("hb_ctl")).arg("format").arg(&missing))
            .status
            .code(),
        Some(1)
    );
    assert!(!missing.exists());
    let region = format_region(dir.path());
    let again = output(Command::new(bin("hb_ctl")).arg("format").arg(&region));
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing region needs --force"
    );
    let forced = output(
        Command::new(bin("hb_ctl"))
            .args([
                "format",
                "--force",
                "--uuid",
                "0C7010EB-E28F-45CF-9B64-CB60642047A8",
            ])
            .arg(&region),
    );
    assert!(forced.status.success());
    assert_eq!(
        String::from_utf8_lossy(&forced.stdout).trim(),
        "0C7010EBE28F45CF9B64CB60642047A8"
    );
    let info: serde_json::Value = serde_json::from_slice(
        &output(
            Command::new(bin("hb_ctl"))
                .args(["info", "--json"])
                .arg(&region),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(info["kind"], "raw");
    assert_eq!(info["slots"], 255);
    assert_eq!(info["block_bytes"], 512);
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let out = output(Command::new(bin("hb_ctl")).arg("info").arg(&junk));
    assert_eq!(out.status.code(), Some(1));
}

/// debugfs.ocfs2 -R hb: rows `\t   1:    1 000000006543210f 1122334455667788 b8d650d2  62000`.
fn debugfs_hb(img: &Path) -> Vec<(u32, u8, u64, u64, u32, u32)> {
    let debugfs = common::require_program("debugfs.ocfs2", "ocfs2-tools");
    let out = output(Command::new(debugfs).args(["-R", "hb"]).arg(img));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 6 || !f[0].ends_with(':') {
                return None;
            }
            Some((
                f[0].trim_end_matches(':').parse().ok()?,
                f[1].parse().ok()?,
                u64::from_str_radix(f[2], 16).ok()?,
                u64::from_str_radix(f[3], 16).ok()?,
                u32::from_str_radix(f[4], 16).ok()?,
                f[5].parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn interop_with_a_real_ocfs2_volume() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let img = common::mkfs_image(dir.path());
    // hb_ctl info agrees with debugfs.ocfs2 -R "stat //heartbeat".
    let info: serde_json::Value = serde_json::from_slice(
        &output(
            Command::new(bin("hb_ctl"))
                .args(["info", "--json"])
                .arg(&img),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(info["kind"], "ocfs2");
    assert_eq!(info["uuid"], common::VOLUME_UUID);
    let stat = output(
        Command::new(common::require_program("debugfs.ocfs2", "ocfs2-tools"))
            .args(["-R", "stat //heartbeat"])
            .arg(&img),
    );
    let stat = String::from_utf8_lossy(&stat.stdout);
    // The extent line: "0  0  256  273  0x0" (offset, clusters, block number, flags).
    let blkno: u64 = stat
        .lines()
        .skip_while(|l| !l.contains("Block#"))
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no extent line in:\n{stat}"));
    assert_eq!(info["start_byte"].as_u64().unwrap(), blkno * 4096);
    assert_eq!(info["start_sector"].as_u64().unwrap(), blkno * 4096 / 512);
    assert_eq!(info["block_bytes"], 512);
    assert_eq!(info["slots"], 255);

    // lockd heartbeats on it as node 3.
    let set = settings(dir.path(), 5);
    let l = node(dir.path(), 3, &set);
    let (code, _, err) = hb_ctl(&l, &["start", img.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{}", l.log());
    let first = debugfs_hb(&img);
    let row = |rows: &[(u32, u8, u64, u64, u32, u32)]| rows.iter().find(|r| r.0 == 3).copied();
    let a = row(&first).expect("debugfs shows node 3");
    assert_eq!(a.1, 3);
    assert_eq!(a.5, 5 * 1000, "dead_ms = threshold × interval");
    // Its checksum is the one our encoder computes for the same fields.
    let mut slot = vec![0u8; 512];
    format::encode(
        &HbBlock {
            seq: a.2,
            node: 3,
            generation: a.3,
            dead_ms: a.5,
        },
        &mut slot,
    )
    .unwrap();
    assert_eq!(u32::from_le_bytes(slot[12..16].try_into().unwrap()), a.4);
    wait_for("the seq changes", 5.0, || {
        row(&debugfs_hb(&img)).is_some_and(|b| b.2 != a.2)
    });

    // hb_ctl dump agrees with debugfs on every slot.
    let dump: serde_json::Value = serde_json::from_slice(
        &output(
            Command::new(bin("hb_ctl"))
                .args(["dump", "--json"])
                .arg(&img),
        )
        .stdout,
    )
    .unwrap();
    let rows = debugfs_hb(&img);
    let ours: Vec<(u32, u8, u64, u64, u32, u32)> = dump["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slot"].as_u64().unwrap() as u32,
                s["node"].as_u64().unwrap() as u8,
                s["seq"].as_u64().unwrap(),
                u64::from_str_radix(s["generation"].as_str().unwrap(), 16).unwrap(),
                u32::from_str_radix(s["checksum"].as_str().unwrap(), 16).unwrap(),
                s["dead_ms"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    // The seq may have moved between the two reads; compare the rest exactly.
    assert_eq!(ours.len(), rows.len(), "ours {ours:?} debugfs {rows:?}");
    for (o, d) in ours.iter().zip(&rows) {
        assert_eq!((o.0, o.1, o.3, o.5), (d.0, d.1, d.3, d.5));
        assert!(o.2.abs_diff(d.2) <= 2, "seq {} vs {}", o.2, d.2);
    }
    assert_eq!(hb_ctl(&l, &["stop", img.to_str().unwrap()]).0, 0);
}

#[test]
fn start_and_stop_by_uuid_find_the_block_device() {
    let _s = serial();
    common::require_root("loop devices");
    let dir = tempfile::tempdir().unwrap();
    let img = common::mkfs_image(dir.path());
    let losetup = common::require_program("losetup", "mount");
    let out = output(Command::new(losetup).args(["-f", "--show"]).arg(&img));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let set = settings(dir.path(), 3);
    let l = node(dir.path(), 2, &set);
    let (code, _, err) = hb_ctl(
        &l,
        &["start", "--uuid", "0c7010eb-e28f-45cf-9b64-cb60642047a8"],
    );
    assert_eq!(code, 0, "{err}\n{}", l.log());
    let st = status(&l);
    assert_eq!(st["regions"][0]["device"], dev.as_str());
    assert_eq!(st["regions"][0]["kind"], "ocfs2");
    assert_eq!(
        hb_ctl(&l, &["-I", "-u", common::VOLUME_UUID]).1,
        format!("{}: 1 refs\n", common::VOLUME_UUID)
    );
    let (code, _, err) = hb_ctl(&l, &["stop", "--uuid", common::VOLUME_UUID]);
    assert_eq!(code, 0, "{err}");
    assert!(status(&l)["regions"].as_array().unwrap().is_empty());
    // An unknown UUID is a clear error.
    let (code, _, err) = hb_ctl(&l, &["start", "--uuid", "77D95EF51C0149D2823674FCC162CF8B"]);
    assert_eq!(code, 1);
    assert!(err.contains("77D95EF51C0149D2823674FCC162CF8B"), "{err}");
}
