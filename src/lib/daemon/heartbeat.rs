//! Disk heartbeat threads: one per active region.
//!
//! A region thread owns the region's I/O and its [`Liveness`] state. Every
//! interval it reads every slot in one read, applies the o2hb rules, writes
//! this node's slot (seq = wall-clock seconds, a random generation chosen at
//! start, the dead time from the settings), and reports to the event loop
//! through a channel and an eventfd. It writes only while the event loop is
//! turning: a lockd whose loop is stuck stops heartbeating and is seen as
//! dead, rather than as a live node that never answers. A clean stop writes a
//! block with generation 0, which peers take as an immediate death.
//!
//! Disk I/O stays off the event loop: a slow device delays heartbeats, never
//! lock requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::eventfd::EventFd;
use tracing::{info, warn};

use crate::heartbeat::device::RegionIo;
use crate::heartbeat::format::{self, HbBlock};
use crate::heartbeat::liveness::{self, Liveness, LivenessConfig, SlotRead};
use crate::heartbeat::region::Region;

/// What a region thread tells the event loop.
#[derive(Debug)]
pub(crate) enum Report {
    /// The region is open and heartbeating.
    Started {
        /// O_DIRECT I/O in use.
        direct: bool,
    },
    /// The region could not be opened; the thread has ended.
    Failed(String),
    /// One heartbeat iteration.
    Iteration {
        /// Membership events of this iteration.
        events: Vec<liveness::Event>,
        /// Nodes alive on this region, in order.
        live: Vec<u8>,
        /// Iterations without a membership change have reached the kernel's
        /// "steady" count (live threshold + 1).
        steady: bool,
        /// Iterations so far.
        iterations: u64,
        /// Trouble on this iteration.
        problem: Option<String>,
        /// Another node (or another incarnation of this one) writes this
        /// node's slot: a reason to fence.
        slot_taken: bool,
    },
    /// The thread wrote its clean-stop block and ended.
    Stopped,
}

/// Parameters of a region thread.
pub(crate) struct HbParams {
    pub device: PathBuf,
    pub region: Region,
    pub node: u8,
    pub interval_ms: u32,
    pub dead_threshold: u32,
    /// Set while this node is fenced: the thread writes the clean-stop block
    /// once, then only reads; cleared, it writes again under a new
    /// generation (a new incarnation for the other nodes).
    pub silent: Arc<AtomicBool>,
}

/// A running region thread.
pub(crate) struct RegionThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RegionThread {
    /// Asks the thread to stop (it writes the clean-stop block first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = &self.handle {
            h.thread().unpark();
        }
    }

    /// Stops and waits for the thread.
    pub fn join(mut self) {
        self.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A random non-zero generation, from the kernel's generator.
pub(super) fn random_generation() -> u64 {
    let mut b = [0u8; 8];
    loop {
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n == 8 {
            let g = u64::from_le_bytes(b);
            if g != 0 {
                return g;
            }
        }
    }
}

fn wall_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs())
        .max(1)
}

/// Starts a region thread. `alive_ms` is the event loop's last turn, in
/// milliseconds since `epoch`; `tx`/`wake` reach the loop.
pub(crate) fn spawn(
    key: u64,
    p: HbParams,
    alive_ms: Arc<AtomicU64>,
    epoch: Instant,
    tx: Sender<(u64, Report)>,
    wake: Arc<EventFd>,
) -> RegionThread {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::Builder::new()
        .name(format!("hb-{}", p.region.uuid_string()))
        .spawn(move || {
            let send = |r: Report| {
                let _ = tx.send((key, r));
                let _ = wake.write(1);
            };
            run(p, &stop2, &alive_ms, epoch, send);
        })
        .expect("spawning a heartbeat thread");
    RegionThread {
        stop,
        handle: Some(handle),
    }
}

fn read_all(io: &mut RegionIo, region: &Region) -> Result<Vec<(u8, SlotRead)>, String> {
    let bs = region.block_bytes as usize;
    let buf = io.read_slots(0, region.slots).map_err(|e| e.to_string())?;
    Ok(buf
        .chunks(bs)
        .take(256)
        .enumerate()
        .map(|(i, slot)| (i as u8, SlotRead::from(format::decode(slot))))
        .collect())
}

fn run(
    p: HbParams,
    stop: &AtomicBool,
    alive_ms: &AtomicU64,
    epoch: Instant,
    send: impl Fn(Report),
) {
    let mut io = match RegionIo::open(&p.device, &p.region, true) {
        Ok(io) => io,
        Err(e) => {
            send(Report::Failed(e.to_string()));
            return;
        }
    };
    send(Report::Started {
        direct: io.is_direct(),
    });
    let interval = Duration::from_millis(u64::from(p.interval_ms));
    let dead_ms = p.interval_ms.saturating_mul(p.dead_threshold);
    let mut cfg = LivenessConfig::new(p.node);
    cfg.dead_threshold = p.dead_threshold;
    cfg.dead_ms = dead_ms;
    let mut lv = Liveness::new(cfg);
    let mut generation = random_generation();
    let mut silenced = false;
    info!(
        device = %p.device.display(),
        uuid = %p.region.uuid_string(),
        node = p.node,
        generation = format_args!("{generation:#x}"),
        "heartbeat started"
    );
    match read_all(&mut io, &p.region) {
        Ok(initial) => {
            let initial: Vec<(u8, Option<format::Decoded>)> = initial
                .into_iter()
                .map(|(n, r)| match r {
                    SlotRead::Block(d) => (n, Some(d)),
                    SlotRead::Unreadable => (n, None),
                })
                .collect();
            lv.start(&initial);
        }
        Err(e) => warn!(device = %p.device.display(), error = %e, "first heartbeat read failed"),
    }
    let mut iterations: u64 = 0;
    let mut last_change: u64 = 0;
    let mut stalled_logged = false;
    loop {
        let t0 = Instant::now();
        if stop.load(Ordering::SeqCst) {
            let block = HbBlock {
                seq: wall_seconds(),
                node: p.node,
                generation: 0,
                dead_ms,
            };
            if let Err(e) = io.write_slot(u32::from(p.node), &block) {
                warn!(device = %p.device.display(), error = %e, "clean-stop write failed");
            }
            info!(device = %p.device.display(), "heartbeat stopped");
            send(Report::Stopped);
            return;
        }
        let now_ms = epoch.elapsed().as_millis() as u64;
        let mut problem = None;
        let mut events = Vec::new();
        match read_all(&mut io, &p.region) {
            Ok(slots) => events = lv.sample(now_ms, &slots),
            Err(e) => problem = Some(format!("read failed: {e}")),
        }
        for e in &events {
            if let liveness::Event::OwnSlotMismatch { .. } = e {
                warn!(device = %p.device.display(), "{e}");
                problem = Some(e.to_string());
            }
        }
        // A fenced node has let go of its locks: it says so (the clean-stop
        // block, a death the others see at once) and stays silent until it
        // is back, as a new incarnation.
        let fenced = p.silent.load(Ordering::SeqCst);
        if fenced && !silenced {
            let block = HbBlock {
                seq: wall_seconds(),
                node: p.node,
                generation: 0,
                dead_ms,
            };
            match io.write_slot(u32::from(p.node), &block) {
                Ok(()) => lv.wrote(&block),
                Err(e) => problem = Some(format!("write failed: {e}")),
            }
            info!(device = %p.device.display(), "heartbeat silenced: this node fenced itself");
            silenced = true;
        } else if !fenced && silenced {
            generation = random_generation();
            silenced = false;
            info!(
                device = %p.device.display(),
                generation = format_args!("{generation:#x}"),
                "heartbeat resumes as a new incarnation"
            );
        }
        // Only a turning event loop may vouch for this node.
        let loop_age = now_ms.saturating_sub(alive_ms.load(Ordering::SeqCst));
        if silenced {
            // Reading only: the others' liveness still counts for quorum.
        } else if loop_age <= 3 * u64::from(p.interval_ms) {
            stalled_logged = false;
            let block = HbBlock {
                seq: wall_seconds(),
                node: p.node,
                generation,
                dead_ms,
            };
            match io.write_slot(u32::from(p.node), &block) {
                Ok(()) => lv.wrote(&block),
                Err(e) => problem = Some(format!("write failed: {e}")),
            }
        } else {
            if !stalled_logged {
                warn!(device = %p.device.display(), "event loop stalled for {loop_age} ms; not heartbeating");
                stalled_logged = true;
            }
            problem = Some(format!(
                "event loop stalled for {loop_age} ms; not heartbeating"
            ));
        }
        if events.iter().any(|e| {
            matches!(
                e,
                liveness::Event::NodeUp { .. } | liveness::Event::NodeDown { .. }
            )
        }) {
            last_change = iterations;
        }
        iterations += 1;
        let steady = iterations - last_change > u64::from(liveness::LIVE_THRESHOLD);
        send(Report::Iteration {
            slot_taken: events.iter().any(|e| {
                matches!(
                    e,
                    liveness::Event::OwnSlotMismatch {
                        kind: liveness::MismatchKind::OtherNode
                            | liveness::MismatchKind::Generation,
                        ..
                    }
                )
            }),
            events,
            live: lv.live_nodes(),
            steady,
            iterations,
            problem,
        });
        // Sleep out the interval; `stop` unparks us early.
        let deadline = t0 + interval;
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}
