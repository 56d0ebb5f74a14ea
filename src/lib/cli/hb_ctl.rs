//! `hb_ctl`: disk heartbeat regions.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::cli::{Failure, Outcome, print_json, print_table, table};
use crate::client::{Client, ClientError};
use crate::heartbeat::device::RegionIo;
use crate::heartbeat::format;
use crate::heartbeat::region::{self, FormatOptions, Region};
use crate::proto::HbTarget;

/// Exit statuses of hb_ctl: `ERROR` also for usage errors of the
/// ocfs2_hb_ctl spellings (as the real tool), `USAGE` for those of the
/// hb_ctl commands.
pub mod exit {
    pub use crate::cli::exit::{ERROR, OK, UNREACHABLE, USAGE};
}

/// The service name of `hb_ctl start`/`stop` references.
pub const SERVICE: &str = "hb_ctl";

const LEGACY_USAGE: &str = "\
Usage: hb_ctl -S -d <device> <service>
       hb_ctl -S -u <uuid> <service>
       hb_ctl -K -d <device> <service>
       hb_ctl -K -u <uuid> <service>
       hb_ctl -I -d <device>
       hb_ctl -I -u <uuid>
       hb_ctl -P -d <device> [-n <io_priority>]
       hb_ctl -P -u <uuid> [-n <io_priority>]
       hb_ctl -h
";

/// Disk heartbeat: format, start, stop and inspect heartbeat regions.
///
/// Every node writes its slot of a shared heartbeat region every interval;
/// a node whose slot stops changing is dead. A region is the heartbeat area
/// of an OCFS2 volume (its name is the volume UUID) or a raw device or file
/// formatted with `hb_ctl format`. lockd does the heartbeating; `start` and
/// `stop` ask it (references are counted per service), `dump` and `info`
/// read the disk directly.
///
/// The ocfs2_hb_ctl spellings work too, for scripts: `-S -d DEVICE SERVICE`,
/// `-K -d DEVICE [SERVICE]`, `-I -d DEVICE` (prints `<UUID>: N refs`), with
/// `-u UUID` instead of `-d`.
///
/// Exit status: 0 ok, 1 error, 2 usage (1 for the ocfs2_hb_ctl spellings, as
/// the real tool), 69 lockd unreachable.
#[derive(Parser, Debug)]
#[command(
    name = "hb_ctl",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_flag = true
)]
pub struct HbCtlArgs {
    /// lockd's socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)
    #[arg(long, global = true)]
    pub no_autostart: bool,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    pub help: Option<bool>,
    /// The ocfs2_hb_ctl spellings
    #[command(flatten)]
    pub legacy: Legacy,
    /// What to do
    #[command(subcommand)]
    pub command: Option<HbCommand>,
}

/// The ocfs2_hb_ctl spellings.
#[derive(Args, Debug, Default)]
pub struct Legacy {
    /// Start heartbeating (one more reference for SERVICE)
    #[arg(short = 'S', overrides_with_all = ["kill", "info", "prio"])]
    pub start: bool,
    /// Stop heartbeating (one reference less for SERVICE)
    #[arg(short = 'K', overrides_with_all = ["start", "info", "prio"])]
    pub kill: bool,
    /// Print the region's references
    #[arg(short = 'I', overrides_with_all = ["start", "kill", "prio"])]
    pub info: bool,
    /// Set the heartbeat thread's I/O priority (not supported)
    #[arg(short = 'P', overrides_with_all = ["start", "kill", "info"])]
    pub prio: bool,
    /// The device
    #[arg(short = 'd', value_name = "device")]
    pub device: Option<PathBuf>,
    /// The region's UUID
    #[arg(short = 'u', value_name = "uuid")]
    pub uuid: Option<String>,
    /// I/O priority, 0-7
    #[arg(short = 'n', value_name = "io_priority")]
    pub io_priority: Option<String>,
    /// Print the ocfs2_hb_ctl usage
    #[arg(short = 'h')]
    pub usage: bool,
    /// The service taking or dropping the reference
    #[arg(value_name = "service")]
    pub service: Option<String>,
}

/// hb_ctl commands.
#[derive(Subcommand, Debug)]
pub enum HbCommand {
    /// Format a device or file as a raw heartbeat region and print its UUID
    ///
    /// The file or device must exist and be large enough (the error says the
    /// size needed). An OCFS2 volume or an existing region is not overwritten
    /// without --force.
    Format {
        /// The device or file
        device: PathBuf,
        /// The region's UUID (32 hex digits, dashes allowed) [default: random]
        #[arg(long)]
        uuid: Option<String>,
        /// Slot size in bytes: 512, 1024, 2048 or 4096
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Overwrite an OCFS2 volume or an existing region
        #[arg(long)]
        force: bool,
    },
    /// Start heartbeating on a region; returns once the region is steady
    Start(Target),
    /// Stop heartbeating on a region (a clean stop: peers see this node leave at once)
    Stop(Target),
    /// Show the regions lockd heartbeats on
    Status {
        /// JSON output (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
    /// Show the slots of a region, read straight from disk
    Dump {
        /// The device or file
        device: PathBuf,
        /// Also slots never written (seq 0)
        #[arg(long)]
        all: bool,
        /// JSON output (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
    /// Show where a region's slots are
    Info {
        /// The device or file
        device: PathBuf,
        /// JSON output (keys in docs/JSON.md)
        #[arg(long)]
        json: bool,
    },
}

/// A region, by device or UUID.
#[derive(Args, Debug)]
pub struct Target {
    /// The device or file
    #[arg(required_unless_present = "uuid", conflicts_with = "uuid")]
    pub device: Option<PathBuf>,
    /// The region's UUID (found by scanning block devices)
    #[arg(long)]
    pub uuid: Option<String>,
}

fn is_legacy(args: &[OsString]) -> bool {
    args.iter().skip(1).any(|a| {
        let b = a.as_bytes();
        b.len() >= 2 && b[0] == b'-' && b[1] != b'-' && b[1..].iter().any(|c| b"SKIPh".contains(c))
    })
}

/// Entry point of the `hb_ctl` binary.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let legacy = is_legacy(&args);
    let parsed = match HbCtlArgs::try_parse_from(&args) {
        Ok(p) => p,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if legacy => {
            let first = e.render().to_string();
            let first = first
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            eprint!("hb_ctl: {first}\n{LEGACY_USAGE}");
            return ExitCode::from(exit::ERROR);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        crate::cli::init_logging("warn");
    }
    crate::cli::finish("hb_ctl", run(parsed))
}

fn connect(args: &HbCtlArgs, autostart: bool) -> Result<Client, Failure> {
    let opts = crate::cli::connect_options(args.socket.as_deref(), !autostart || args.no_autostart);
    Ok(Client::connect_with(&opts)?)
}

fn uuid_arg(s: &str) -> Result<[u8; 16], Failure> {
    region::parse_uuid(s).map_err(Failure::error)
}

fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02X}")).collect()
}

fn target_of(device: &Option<PathBuf>, uuid: &Option<String>) -> Result<HbTarget, Failure> {
    match (device, uuid) {
        (Some(d), _) => {
            let d = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            Ok(HbTarget::Device(d.as_os_str().as_bytes().to_vec()))
        }
        (None, Some(u)) => Ok(HbTarget::Uuid(uuid_arg(u)?)),
        (None, None) => Err(Failure::usage("a device or --uuid is needed")),
    }
}

fn run(args: HbCtlArgs) -> Outcome {
    let Some(cmd) = &args.command else {
        return legacy(&args);
    };
    match cmd {
        HbCommand::Format {
            device,
            uuid,
            block_size,
            force,
        } => {
            let opts = FormatOptions {
                uuid: uuid.as_deref().map(uuid_arg).transpose()?,
                block_bytes: *block_size,
                ..FormatOptions::default()
            };
            let r = region::format_raw(device, &opts, *force).map_err(Failure::error)?;
            println!("{}", r.uuid_string());
            Ok(exit::OK)
        }
        HbCommand::Start(t) => {
            let target = target_of(&t.device, &t.uuid)?;
            let mut c = connect(&args, true)?;
            with_spinner("waiting for the heartbeat to settle", || {
                c.hb_start(target, SERVICE)
            })?;
            Ok(exit::OK)
        }
        HbCommand::Stop(t) => {
            let target = target_of(&t.device, &t.uuid)?;
            let mut c = connect(&args, false)?;
            c.hb_stop(target, SERVICE)?;
            Ok(exit::OK)
        }
        HbCommand::Status { json } => status(&args, *json),
        HbCommand::Dump { device, all, json } => dump(device, *all, *json),
        HbCommand::Info { device, json } => info(device, *json),
    }
}

fn with_spinner<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(what.to_owned());
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    let r = f();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r
}

/// The ocfs2_hb_ctl spellings, with its usage rules (usage errors exit 1).
fn legacy(args: &HbCtlArgs) -> Outcome {
    let l = &args.legacy;
    let usage = || {
        eprint!("{LEGACY_USAGE}");
        Err(Failure::silent(exit::ERROR))
    };
    if l.usage {
        print!("{LEGACY_USAGE}");
        return Ok(exit::OK);
    }
    let op_count = [l.start, l.kill, l.info, l.prio]
        .iter()
        .filter(|b| **b)
        .count();
    // Exactly one of -d and -u, and an operation.
    if op_count == 0 || l.device.is_some() == l.uuid.is_some() {
        return usage();
    }
    if l.start && l.service.is_none() {
        return usage();
    }
    if l.kill && l.device.is_some() && l.service.is_none() {
        return usage();
    }
    if l.prio {
        if let Some(p) = &l.io_priority {
            if !matches!(p.parse::<u8>(), Ok(0..=7)) {
                return usage();
            }
        }
        return Err(Failure::error(
            "setting the heartbeat I/O priority is not supported",
        ));
    }
    let target = target_of(&l.device, &l.uuid)?;
    if l.info {
        let uuid = match (&l.device, &l.uuid) {
            (Some(d), _) => region::locate(d).map_err(Failure::error)?.uuid,
            (None, Some(u)) => uuid_arg(u)?,
            _ => unreachable!("checked above"),
        };
        // No lockd: nothing heartbeats, so no references.
        let refs = match connect(args, false) {
            Ok(mut c) => c.hb_refs(uuid)?,
            Err(e) if e.code() == exit::UNREACHABLE => 0,
            Err(e) => return Err(e),
        };
        println!("{}: {refs} refs", uuid_hex(&uuid));
        return Ok(exit::OK);
    }
    let service = l.service.clone().unwrap_or_else(|| "ocfs2".into());
    if l.start {
        let mut c = connect(args, true)?;
        with_spinner("waiting for the heartbeat to settle", || {
            c.hb_start(target, &service)
        })?;
    } else {
        let mut c = connect(args, false)?;
        c.hb_stop(target, &service)?;
    }
    Ok(exit::OK)
}

fn status(args: &HbCtlArgs, json: bool) -> Outcome {
    let mut c = connect(args, false)?;
    let regions = c.hb_status()?;
    if json {
        #[derive(Serialize)]
        struct R {
            device: String,
            uuid: String,
            kind: String,
            node: u8,
            interval_ms: u32,
            dead_ms: u32,
            steady: bool,
            direct_io: bool,
            live: Vec<u8>,
            iterations: u64,
            problem: Option<String>,
            refs: std::collections::BTreeMap<String, u32>,
        }
        #[derive(Serialize)]
        struct Out {
            regions: Vec<R>,
        }
        print_json(&Out {
            regions: regions
                .iter()
                .map(|r| R {
                    device: String::from_utf8_lossy(&r.device).into_owned(),
                    uuid: uuid_hex(&r.uuid),
                    kind: r.kind.clone(),
                    node: r.node,
                    interval_ms: r.interval_ms,
                    dead_ms: r.dead_ms,
                    steady: r.steady,
                    direct_io: r.direct_io,
                    live: r.live.clone(),
                    iterations: r.iterations,
                    problem: r.problem.clone(),
                    refs: r.refs.iter().cloned().collect(),
                })
                .collect(),
        });
        return Ok(exit::OK);
    }
    let mut t = table(&[
        "DEVICE",
        "UUID",
        "KIND",
        "NODE",
        "INTERVAL",
        "LIVE NODES",
        "STATE",
        "REFS",
    ]);
    for r in &regions {
        let live = if r.live.is_empty() {
            "-".to_string()
        } else {
            r.live
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let state = match (&r.problem, r.steady) {
            (Some(p), _) => format!("PROBLEM: {p}"),
            (None, true) => "steady".into(),
            (None, false) => "starting".into(),
        };
        let refs = r
            .refs
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        t.add_row(vec![
            String::from_utf8_lossy(&r.device).into_owned(),
            uuid_hex(&r.uuid),
            r.kind.clone(),
            r.node.to_string(),
            format!("{} ms", r.interval_ms),
            live,
            state,
            refs,
        ]);
    }
    print_table(&t);
    Ok(exit::OK)
}

fn locate(device: &Path) -> Result<Region, Failure> {
    region::locate(device).map_err(Failure::error)
}

fn dump(device: &Path, all: bool, json: bool) -> Outcome {
    let reg = locate(device)?;
    let mut io = RegionIo::open(device, &reg, false).map_err(Failure::error)?;
    let buf = io
        .read_slots(0, reg.slots)
        .map_err(Failure::error)?
        .to_vec();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    #[derive(Serialize)]
    struct Slot {
        slot: u32,
        node: u8,
        seq: u64,
        generation: String,
        checksum: String,
        checksum_ok: bool,
        dead_ms: u32,
        age_s: Option<u64>,
    }
    let mut slots = Vec::new();
    for (i, chunk) in buf.chunks(reg.block_bytes as usize).enumerate() {
        let Ok(d) = format::decode(chunk) else {
            continue;
        };
        if d.block.seq == 0 && !all {
            continue;
        }
        slots.push(Slot {
            slot: i as u32,
            node: d.block.node,
            seq: d.block.seq,
            generation: format!("{:016x}", d.block.generation),
            checksum: format!("{:08x}", d.stored_checksum),
            checksum_ok: d.checksum_ok,
            dead_ms: d.block.dead_ms,
            age_s: (d.block.seq != 0 && d.block.seq <= now).then(|| now - d.block.seq),
        });
    }
    if json {
        #[derive(Serialize)]
        struct Out {
            device: String,
            uuid: String,
            kind: String,
            slots: Vec<Slot>,
        }
        print_json(&Out {
            device: device.display().to_string(),
            uuid: reg.uuid_string(),
            kind: reg.kind.to_string(),
            slots,
        });
        return Ok(exit::OK);
    }
    let mut t = table(&[
        "SLOT",
        "NODE",
        "SEQ",
        "GENERATION",
        "CHECKSUM",
        "DEAD_MS",
        "AGE",
    ]);
    for s in &slots {
        t.add_row(vec![
            s.slot.to_string(),
            s.node.to_string(),
            format!("{:016x}", s.seq),
            s.generation.clone(),
            format!(
                "{} {}",
                s.checksum,
                if s.checksum_ok { "ok" } else { "BAD" }
            ),
            s.dead_ms.to_string(),
            s.age_s.map_or("-".into(), |a| format!("{a}s")),
        ]);
    }
    print_table(&t);
    Ok(exit::OK)
}

fn info(device: &Path, json: bool) -> Outcome {
    let r = locate(device)?;
    if json {
        #[derive(Serialize)]
        struct Out {
            device: String,
            kind: String,
            uuid: String,
            start_sector: u64,
            start_byte: u64,
            block_bytes: u32,
            slots: u32,
        }
        print_json(&Out {
            device: device.display().to_string(),
            kind: r.kind.to_string(),
            uuid: r.uuid_string(),
            start_sector: r.start_sector(),
            start_byte: r.start_byte,
            block_bytes: r.block_bytes,
            slots: r.slots,
        });
        return Ok(exit::OK);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    for (k, v) in [
        ("device", device.display().to_string()),
        ("kind", r.kind.to_string()),
        ("uuid", r.uuid_string()),
        ("start_sector", r.start_sector().to_string()),
        ("start_byte", r.start_byte.to_string()),
        ("slot size", r.block_bytes.to_string()),
        ("slots", r.slots.to_string()),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    print_table(&t);
    Ok(exit::OK)
}
