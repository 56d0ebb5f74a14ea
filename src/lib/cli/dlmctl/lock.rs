//! `dlmctl lock`: take a lock (waiting with a spinner on a terminal), keep
//! it as a persistent lock, or run a command under it and watch the lock
//! while the command runs.
//!
//! May depend on: `client`, `dlm` (types), `cli`.

use std::io::IsTerminal as _;
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{DlmctlArgs, LockArgs, check_name, connect, exit};
use crate::cli::{Failure, Outcome};
use crate::client::{Client, LockError, LockOptions};
use crate::dlm::{Holder, LockId, LostReason, Mode};

fn busy_lines(domain: &str, resource: &str, blockers: &[Holder]) -> String {
    let mut s = String::new();
    for h in blockers {
        let line = match (h.granted, h.requested) {
            (Some(g), _) => format!(
                "{domain}/{resource} held {g} by node {} pid {}",
                h.node.0, h.pid
            ),
            (None, Some(r)) => format!(
                "{domain}/{resource} queued {r} by node {} pid {}",
                h.node.0, h.pid
            ),
            (None, None) => continue,
        };
        s.push_str("dlmctl: busy: ");
        s.push_str(&line);
        s.push('\n');
    }
    if s.is_empty() {
        s = format!("dlmctl: busy: {domain}/{resource}\n");
    }
    s
}

/// A spinner on stderr while waiting, only on a terminal.
pub(super) struct Waiting {
    bar: Option<indicatif::ProgressBar>,
    what: String,
}

impl Waiting {
    pub(super) fn new(what: String) -> Self {
        Waiting { bar: None, what }
    }
    pub(super) fn update(&mut self, blockers: &[Holder]) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let who: Vec<String> = blockers
            .iter()
            .map(|h| match h.granted {
                Some(g) => format!("held {g} by node {} pid {}", h.node.0, h.pid),
                None => format!(
                    "queued {} by node {} pid {}",
                    h.requested.map(|m| m.as_str()).unwrap_or("?"),
                    h.node.0,
                    h.pid
                ),
            })
            .collect();
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        bar.set_message(format!("waiting for {} ({})", self.what, who.join(", ")));
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn lock_options(l: &LockArgs, persistent: bool) -> Result<LockOptions, Failure> {
    let timeout = match l.timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => {
            return Err(Failure::usage(format!(
                "--timeout must be a number of seconds >= 0, not {t}"
            )));
        }
        Some(0.0) => None,
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    Ok(LockOptions {
        noqueue: l.try_lock || l.timeout == Some(0.0),
        persistent,
        bast_on_busy: false,
        timeout,
    })
}

fn lock_failure(e: LockError, l: &LockArgs) -> Failure {
    match e {
        LockError::Busy(b) | LockError::TimedOut(b) => {
            eprint!("{}", busy_lines(&l.domain, &l.resource, &b));
            Failure::silent(l.conflict_exit_code)
        }
        LockError::Deadlock(b) => Failure::error(format!(
            "conversion deadlock on {}/{} with {}",
            l.domain,
            l.resource,
            b.iter()
                .map(|h| format!("lock {} (pid {})", h.lock, h.pid))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        LockError::Cancelled => Failure::error(format!(
            "the request for {}/{} was cancelled",
            l.domain, l.resource
        )),
        LockError::Client(e) => e.into(),
    }
}

pub(super) fn lock(args: &DlmctlArgs, l: &LockArgs) -> Outcome {
    check_name("domain", &l.domain)?;
    check_name("resource", &l.resource)?;
    let mode = if l.pr {
        Mode::PR
    } else {
        l.mode.unwrap_or(Mode::EX)
    };
    if !(l.kill_after.is_finite() && l.kill_after >= 0.0) {
        return Err(Failure::usage(
            "--kill-after must be a number of seconds >= 0",
        ));
    }
    let (domain, resource) = (l.domain.as_bytes(), l.resource.as_bytes());
    if let Some(id) = l.id {
        if !l.command.is_empty() {
            return Err(Failure::usage(
                "--id converts a persistent lock and takes no command",
            ));
        }
        let mut c = connect(args)?;
        let id = LockId(id);
        let on_resource = c
            .locks(Some(domain))?
            .iter()
            .filter(|r| r.name == resource)
            .flat_map(|r| r.granted.iter().chain(&r.converting).chain(&r.waiting))
            .any(|h| h.lock == id);
        if !on_resource {
            return Err(Failure::error(format!(
                "no lock {id} on {}/{}",
                l.domain, l.resource
            )));
        }
        let mut spin = Waiting::new(format!("{mode} on {}/{}", l.domain, l.resource));
        c.convert_with_progress(id, mode, &lock_options(l, false)?, |b| spin.update(b))
            .map_err(|e| lock_failure(e, l))?;
        drop(spin);
        println!("{id}");
        return Ok(exit::OK);
    }
    let persistent = l.command.is_empty();
    let opts = lock_options(l, persistent)?;
    let mut c = connect(args)?;
    let mut spin = Waiting::new(format!("{mode} on {}/{}", l.domain, l.resource));
    let id = c
        .lock_with_progress(domain, resource, mode, &opts, |b| spin.update(b))
        .map_err(|e| lock_failure(e, l))?;
    drop(spin);
    if persistent {
        println!("{id}");
        return Ok(exit::OK);
    }
    run_command(c, id, mode, l)
}

fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

fn lost_text(reason: Option<LostReason>) -> &'static str {
    match reason {
        Some(LostReason::DomainLeft) => "the node left the domain",
        Some(LostReason::BrokenByRoot) => "root unlocked it",
        Some(LostReason::Fenced) => "this node lost quorum and fenced itself",
        None => "lockd went away",
    }
}

/// Runs the command under the lock and watches the lock while it runs.
fn run_command(mut c: Client, id: LockId, mode: Mode, l: &LockArgs) -> Outcome {
    let mut cmd = Command::new(&l.command[0]);
    cmd.args(&l.command[1..])
        .env("DLM_DOMAIN", &l.domain)
        .env("DLM_RESOURCE", &l.resource)
        .env("DLM_MODE", mode.as_str())
        .env("DLM_LOCK_ID", id.to_string());
    // Like flock(1): the command inherits the connection, so the lock lasts
    // while the command lives, even if dlmctl is killed. A duplicate without
    // close-on-exec is passed down (and closed here after the spawn), which
    // keeps the spawn on the fast posix_spawn path.
    let inherited = if l.close {
        None
    } else {
        let fd = nix::unistd::dup(c.as_raw_fd()).map_err(|e| Failure::error(e.to_string()))?;
        // SAFETY: dup just returned this fd; we own it until the spawn is done.
        Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let spawned = cmd.spawn();
    drop(inherited);
    let mut child = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            let prog = l.command[0].to_string_lossy();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(Failure::new(code, format!("cannot run {prog}: {e}")));
        }
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let pidfd = pidfd_open(child.id());
    let mut kill_after = Duration::from_secs_f64(l.kill_after);
    // A node fencing itself waits this long for the command to stop before
    // the other nodes may take the lock; SIGKILL comes a second before.
    let fence_kill = c
        .fence_grace()
        .map_err(|e| Failure::error(e.to_string()))?
        .saturating_sub(Duration::from_secs(1));
    let mut lost: Option<Instant> = None;
    let mut lockd_gone = false;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Failure::error(e.to_string()))?
        {
            if lost.is_some() {
                return Ok(exit::LOST);
            }
            return Ok(match (status.code(), status.signal()) {
                (Some(code), _) => code as u8,
                (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
                _ => exit::ERROR,
            });
        }
        let timeout_ms: i32 = match (lost, &pidfd) {
            (Some(t), _) => kill_after
                .saturating_sub(t.elapsed())
                .as_millis()
                .clamp(1, 100) as i32,
            (None, None) => 100,
            (None, Some(_)) => -1,
        };
        let mut fds = vec![libc::pollfd {
            fd: if lockd_gone { -1 } else { c.as_raw_fd() },
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(p) = &pidfd {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            continue;
        }
        let mut reason = None;
        let mut now_lost = false;
        if !lockd_gone && fds[0].revents != 0 {
            match c.read_ready_events() {
                Ok(events) => {
                    for e in events {
                        if let Some(r) = Client::is_lost(&e, id) {
                            reason = Some(r);
                            now_lost = true;
                        }
                    }
                }
                Err(_) => {
                    lockd_gone = true;
                    now_lost = true;
                }
            }
        }
        if now_lost && lost.is_none() {
            eprintln!(
                "dlmctl: lost the lock on {}/{} ({}); stopping the command",
                l.domain,
                l.resource,
                lost_text(reason)
            );
            if reason == Some(LostReason::Fenced) {
                kill_after = kill_after.min(fence_kill);
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            lost = Some(Instant::now());
        }
        if let Some(t) = lost {
            if t.elapsed() >= kill_after {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}
