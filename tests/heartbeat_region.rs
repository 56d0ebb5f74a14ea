//! Heartbeat regions against the real ocfs2-tools: volumes made by
//! mkfs.ocfs2 are located where debugfs.ocfs2 says the heartbeat file is, and
//! slots written with `RegionIo` are listed by `debugfs.ocfs2 -R hb` with the
//! checksums we computed. Also a raw region, formatted and used end to end.
//!
//! Needs mkfs.ocfs2 and debugfs.ocfs2 (`apt-get install -y ocfs2-tools`);
//! fails, rather than skips, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use o2tools::heartbeat::device::RegionIo;
use o2tools::heartbeat::format::{self, HbBlock};
use o2tools::heartbeat::region::{self, FormatOptions, Region, RegionError, RegionKind};

const UUID: &str = "0C7010EBE28F45CF9B64CB60642047A8";

/// Full path of an ocfs2-tools program.
fn tool(name: &str) -> PathBuf {
    common::require_program(name, "ocfs2-tools")
}

/// Makes a sparse image of `size` bytes with mkfs.ocfs2 and `args`.
fn mkfs(dir: &Path, size: u64, args: &[&str]) -> PathBuf {
    let img = dir.join("vol.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let out = Command::new(tool("mkfs.ocfs2"))
        .args(args)
        .args(["--cluster-stack=o2cb", "--cluster-name=c1"])
        .arg(&img)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ocfs2 {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// The captured test volume: 256 MiB, 4 slots, 4K blocks and clusters.
fn test_volume(dir: &Path) -> PathBuf {
    mkfs(
        dir,
        256 << 20,
        &[
            "-N",
            "4",
            "-b",
            "4K",
            "-C",
            "4K",
            "-L",
            "test",
            "-U",
            "0C7010EB-E28F-45CF-9B64-CB60642047A8",
        ],
    )
}

/// stdout of `debugfs.ocfs2 -R <request> <img>`.
fn debugfs(img: &Path, request: &str) -> String {
    let out = Command::new(tool("debugfs.ocfs2"))
        .arg("-R")
        .arg(request)
        .arg(img)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs.ocfs2 -R {request:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The number after `label` on the line that has it.
fn field(text: &str, label: &str) -> u64 {
    let rest = text
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
        .1;
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in:\n{text}"))
}

/// Where debugfs says the heartbeat file's data starts, in bytes: the block
/// number of its one extent times the block size.
fn debugfs_heartbeat_byte(img: &Path) -> u64 {
    let stats = debugfs(img, "stats");
    let block_bits = field(&stats, "Block Size Bits:");
    let stat = debugfs(img, "stat //heartbeat");
    assert!(stat.contains("Flags: Valid System Heartbeat"), "{stat}");
    assert_eq!(field(&stat, "Tree Depth:"), 0, "{stat}");
    assert_eq!(field(&stat, "Next Free Rec:"), 1, "{stat}");
    let mut lines = stat.lines().skip_while(|l| !l.contains("## Offset"));
    lines.next();
    let ext: Vec<&str> = lines
        .next()
        .unwrap_or_else(|| panic!("no extent line in:\n{stat}"))
        .split_whitespace()
        .collect();
    // "0  0  256  273  0x0": index, offset, clusters, block, flags.
    assert_eq!(ext.len(), 5, "{stat}");
    let blkno: u64 = ext[3].parse().unwrap();
    blkno << block_bits
}

/// The row `debugfs.ocfs2 -R hb` prints for a slot holding `b`.
fn hb_row(slot: u32, b: &HbBlock) -> String {
    let crc = format::decode(&format::encode_vec(b, 512).unwrap())
        .unwrap()
        .stored_checksum;
    format!(
        "\t{slot:>4}: {:>4} {:016x} {:016x} {crc:08x} {:>6}",
        b.node, b.seq, b.generation, b.dead_ms
    )
}

const HB_HEADER: &str = "\tnode: node              seq       generation checksum deadms";

#[test]
fn test_volume_is_located_where_libocfs2_puts_it() {
    let d = tempfile::tempdir().unwrap();
    let img = test_volume(d.path());
    let r = region::locate(&img).unwrap();
    assert_eq!(r.kind, RegionKind::Ocfs2);
    assert_eq!(r.uuid_string(), UUID);
    assert_eq!(r.start_byte, 1_118_208);
    assert_eq!(r.start_sector(), 2184);
    assert_eq!(r.block_bytes, 512);
    assert_eq!(r.slots, 255);
    assert_eq!(r.len_bytes(), 255 * 512);
    assert_eq!(r.slot_offset(1), 1_118_208 + 512);
    assert_eq!(r.start_byte, debugfs_heartbeat_byte(&img));
    // The system directory of this volume is stored inline.
    let sysdir = debugfs(&img, "stat //");
    assert!(
        sysdir.contains("Dynamic Features: (0x1) InlineData"),
        "{sysdir}"
    );
    // And the UUID is the volume's.
    assert!(debugfs(&img, "stats").contains(&format!("UUID: {UUID}")));
}

#[test]
fn slots_written_are_listed_by_debugfs() {
    let d = tempfile::tempdir().unwrap();
    let img = test_volume(d.path());
    assert_eq!(debugfs(&img, "hb"), format!("{HB_HEADER}\n"));
    let r = region::locate(&img).unwrap();
    let writes = [
        (
            1,
            HbBlock {
                seq: 0x6543_210f,
                node: 1,
                generation: 0x1122_3344_5566_7788,
                dead_ms: 62000,
            },
        ),
        (
            2,
            HbBlock {
                seq: 0x6543_2112,
                node: 5,
                generation: 0x0a0b_0c0d_0e0f_1011,
                dead_ms: 122_000,
            },
        ),
        (
            4,
            HbBlock {
                seq: 0,
                node: 4,
                generation: 0x99,
                dead_ms: 62000,
            },
        ),
        (
            5,
            HbBlock {
                seq: 0x6543_2113,
                node: 5,
                generation: 0x0a0b_0c0d_0e0f_1011,
                dead_ms: 62000,
            },
        ),
        (
            254,
            HbBlock {
                seq: u64::MAX,
                node: 254,
                generation: 1,
                dead_ms: 0,
            },
        ),
    ];
    let mut io = RegionIo::open(&img, &r, true).unwrap();
    for (slot, b) in &writes {
        io.write_slot(*slot, b).unwrap();
    }
    // Read back through the same path.
    let all = io.read_slots(0, 255).unwrap().to_vec();
    drop(io);
    for (slot, b) in &writes {
        let at = *slot as usize * 512;
        let dec = format::decode(&all[at..at + 512]).unwrap();
        assert!(dec.checksum_ok, "slot {slot}");
        assert_eq!(dec.block, *b, "slot {slot}");
    }
    // The captured checksum for node 1 (libocfs2 agrees with it).
    assert!(hb_row(1, &writes[0].1).contains(" b8d650d2 "));

    // debugfs lists every slot with a non-zero seq (not slot 4).
    let mut want = format!("{HB_HEADER}\n");
    for (slot, b) in writes.iter().filter(|(_, b)| b.seq != 0) {
        want.push_str(&hb_row(*slot, b));
        want.push('\n');
    }
    assert_eq!(debugfs(&img, "hb"), want);
    assert!(want.contains("\t   1:    1 000000006543210f 1122334455667788 b8d650d2  62000\n"));
    assert!(want.contains("\t 254:  254 ffffffffffffffff 0000000000000001 47ca8f4e      0\n"));
}

/// Volumes whose system directory is extent-mapped rather than inline: one
/// block, one block at 512-byte blocks, and two blocks with directory
/// trailers (indexed-dirs) when there are many slots.
#[test]
fn extent_mapped_system_directories() {
    // (image size, mkfs arguments, system directory bytes)
    let cases: [(u64, &[&str], u64); 3] = [
        (
            256 << 20,
            &[
                "-N",
                "4",
                "-b",
                "4K",
                "-C",
                "4K",
                "--fs-features=noinline-data",
            ],
            4096,
        ),
        (
            256 << 20,
            &[
                "-N",
                "4",
                "-b",
                "512",
                "-C",
                "4K",
                "--fs-features=noinline-data",
            ],
            1024,
        ),
        (
            2 << 30,
            &["-N", "32", "-b", "4K", "-C", "4K", "-J", "size=4M"],
            8192,
        ),
    ];
    for (size, args, dir_bytes) in cases {
        let d = tempfile::tempdir().unwrap();
        let img = mkfs(d.path(), size, args);
        let sysdir = debugfs(&img, "stat //");
        assert!(
            sysdir.contains("Dynamic Features: (0x0)"),
            "{args:?}:\n{sysdir}"
        );
        assert_eq!(field(&sysdir, "Size:"), dir_bytes, "{args:?}:\n{sysdir}");
        let r = region::locate(&img).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(r.kind, RegionKind::Ocfs2, "{args:?}");
        assert_eq!(r.block_bytes, 512, "{args:?}");
        assert_eq!(r.slots, 255, "{args:?}");
        assert_eq!(r.start_byte, debugfs_heartbeat_byte(&img), "{args:?}");
        assert!(
            debugfs(&img, "stats").contains(&format!("UUID: {}", r.uuid_string())),
            "{args:?}"
        );

        let b = HbBlock {
            seq: 0x6543_2111,
            node: 3,
            generation: 0x0102_0304_0506_0708,
            dead_ms: 62000,
        };
        RegionIo::open(&img, &r, true)
            .unwrap()
            .write_slot(3, &b)
            .unwrap();
        assert_eq!(
            debugfs(&img, "hb"),
            format!("{HB_HEADER}\n{}\n", hb_row(3, &b)),
            "{args:?}"
        );
    }
}

#[test]
fn raw_region_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("raw");
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    let opts = FormatOptions {
        uuid: Some(region::parse_uuid("0c7010eb-e28f-45cf-9b64-cb60642047a8").unwrap()),
        ..FormatOptions::default()
    };
    let r = region::format_raw(&p, &opts, false).unwrap();
    let want = Region {
        kind: RegionKind::Raw,
        uuid: region::parse_uuid(UUID).unwrap(),
        block_bytes: 512,
        start_byte: 512,
        slots: 255,
    };
    assert_eq!(r, want);
    assert_eq!(region::locate(&p).unwrap(), want);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);

    let b = HbBlock {
        seq: 1_700_000_000,
        node: 7,
        generation: 0xfeed_f00d,
        dead_ms: 62000,
    };
    let mut io = RegionIo::open(&p, &r, true).unwrap();
    io.write_slot(7, &b).unwrap();
    let got = format::decode(io.read_slots(7, 1).unwrap()).unwrap();
    assert!(got.checksum_ok);
    assert_eq!(got.block, b);
    drop(io);
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(
        &bytes[8 * 512..9 * 512],
        &format::encode_vec(&b, 512).unwrap()[..]
    );

    // Formatting again needs force; debugfs does not take it for OCFS2.
    let e = region::format_raw(&p, &FormatOptions::default(), false).unwrap_err();
    assert!(matches!(e, RegionError::Refused { .. }), "{e}");
    assert!(e.to_string().contains(UUID), "{e}");
    let out = Command::new(tool("debugfs.ocfs2"))
        .args(["-R", "stats"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("UUID"));
}

#[test]
fn format_refuses_a_real_volume_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    let img = test_volume(d.path());
    let head = |p: &Path| {
        let mut v = std::fs::read(p).unwrap();
        v.truncate(2 << 20);
        v
    };
    let before = head(&img);
    let e = region::format_raw(&img, &FormatOptions::default(), false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("an OCFS2 volume (uuid {UUID})")),
        "{msg}"
    );
    assert!(msg.contains("use force"), "{msg}");
    assert_eq!(head(&img), before, "refused format must not write");
    assert_eq!(region::locate(&img).unwrap().kind, RegionKind::Ocfs2);

    let r = region::format_raw(&img, &FormatOptions::default(), true).unwrap();
    assert_eq!(r.kind, RegionKind::Raw);
    assert_eq!(region::locate(&img).unwrap(), r);
    // The OCFS2 superblock is gone: the real tools no longer see a volume.
    let out = Command::new(tool("debugfs.ocfs2"))
        .args(["-R", "stats"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("UUID"));
}

/// A loop device attached read-only to an image, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Path, sector: u32) -> Loop {
        common::require_root("loop devices");
        let out = Command::new(common::require_program("losetup", "mount"))
            .args(["-f", "--show", "-r", "-b", &sector.to_string()])
            .arg(img)
            .output()
            .unwrap_or_else(|e| panic!("cannot run losetup: {e}"));
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// On a block device the slot size is its logical sector size (BLKSSZGET),
/// at the same byte offset; the slots read back with direct I/O.
#[test]
fn block_devices_use_their_sector_size() {
    let d = tempfile::tempdir().unwrap();
    let img = test_volume(d.path());
    {
        let b = HbBlock {
            seq: 0x6543_210f,
            node: 1,
            generation: 0x1122_3344_5566_7788,
            dead_ms: 62000,
        };
        let r = region::locate(&img).unwrap();
        RegionIo::open(&img, &r, true)
            .unwrap()
            .write_slot(1, &b)
            .unwrap();
    }
    for sector in [512u32, 4096] {
        let dev = Loop::attach(&img, sector);
        let path = Path::new(&dev.0);
        let f = std::fs::File::open(path).unwrap();
        assert_eq!(region::logical_block_size(&f).unwrap(), sector);
        let r = region::locate(path).unwrap();
        assert_eq!(r.kind, RegionKind::Ocfs2);
        assert_eq!(r.uuid_string(), UUID);
        assert_eq!(r.block_bytes, sector);
        assert_eq!(r.start_byte, 1_118_208);
        assert_eq!(r.slots, 255);
        let mut io = RegionIo::open(path, &r, false).unwrap();
        assert!(io.is_direct());
        let all = io.read_slots(0, 255).unwrap();
        assert_eq!(all.len(), 255 * sector as usize);
        // Node 1's 512-byte block is at byte 512 from the start.
        let slot1 = &all[512..1024];
        if sector == 512 {
            let got = format::decode(slot1).unwrap();
            assert!(got.checksum_ok);
            assert_eq!(got.block.node, 1);
        } else {
            assert_eq!(&slot1[12..16], &0xb8d6_50d2u32.to_le_bytes());
        }
    }
}
