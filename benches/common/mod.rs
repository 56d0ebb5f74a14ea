//! Measurement helpers shared by the benchmarks (included with `mod common;`).
#![allow(dead_code)]

use std::time::Instant;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Pins a process (every thread of it), or this one when `pid` is None, to
/// one CPU, or unpins it when `cpu` is None.
pub fn pin(pid: Option<u32>, cpu: Option<usize>) {
    let mut set = CpuSet::new();
    match cpu {
        Some(c) => set.set(c).unwrap(),
        None => {
            for c in 0..num_cpus() {
                set.set(c).unwrap();
            }
        }
    }
    let tasks = match pid {
        Some(p) => std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|t| t.file_name().to_string_lossy().parse::<i32>().ok())
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![0],
    };
    for t in tasks {
        let _ = sched_setaffinity(Pid::from_raw(t), &set);
    }
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Microseconds of each of `n` timed runs of `f`, after `warm` untimed ones.
pub fn samples(n: usize, warm: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warm {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / 1000.0
        })
        .collect()
}
