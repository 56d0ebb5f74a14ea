//! `dlmctl lvb get` and `set`: through the caller's lock on the resource
//! (its persistent lock, or the lock of the `dlmctl lock` command it runs
//! under), else under a brief PR or EX lock of its own.
//!
//! May depend on: `client`, `dlm` (types), `cli`.

use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use super::lock::Waiting;
use super::{DlmctlArgs, LvbCommand, check_name, connect, exit, find_persistent, refused};
use crate::cli::{Failure, Outcome};
use crate::client::{Client, LockError, LockOptions};
use crate::dlm::{LVB_LEN, LockId, Lvb, Mode};

/// The lock an `lvb` command goes through, and whether it is ours to release.
fn lvb_lock(
    c: &mut Client,
    domain: &str,
    resource: &str,
    write: bool,
) -> Result<(LockId, bool), Failure> {
    // A command run by `dlmctl lock` names its lock in its environment.
    if let (Ok(d), Ok(r), Ok(id)) = (
        std::env::var("DLM_DOMAIN"),
        std::env::var("DLM_RESOURCE"),
        std::env::var("DLM_LOCK_ID"),
    ) {
        if d == domain && r == resource {
            if let Ok(id) = id.parse::<u64>() {
                return Ok((LockId(id), false));
            }
        }
    }
    let uid = nix::unistd::getuid().as_raw();
    let mine = find_persistent(c, domain, resource)?
        .into_iter()
        .find(|h| h.granted.is_some() && (h.uid == uid || uid == 0));
    if let Some(h) = mine {
        let held = h.granted.expect("filtered");
        if write && !held.can_write_lvb() {
            return Err(Failure::error(format!(
                "persistent lock {} on {domain}/{resource} is held in {held}; writing the value block needs PW or EX",
                h.lock
            )));
        }
        return Ok((h.lock, false));
    }
    let mode = if write { Mode::EX } else { Mode::PR };
    let mut spin = Waiting::new(format!("{mode} on {domain}/{resource}"));
    let id = c
        .lock_with_progress(
            domain.as_bytes(),
            resource.as_bytes(),
            mode,
            &LockOptions::default(),
            |b| spin.update(b),
        )
        .map_err(|e| match e {
            LockError::Client(e) => Failure::from(e),
            other => Failure::error(other.to_string()),
        })?;
    Ok((id, true))
}

pub(super) fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Result<Vec<u8>, Failure> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::usage(format!(
            "--hex needs an even number of hex digits, not '{s}'"
        )));
    }
    Ok((0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("checked"))
        .collect())
}

fn text_of(v: &Lvb) -> &[u8] {
    let end = v.iter().position(|&b| b == 0).unwrap_or(LVB_LEN);
    &v[..end]
}

pub(super) fn lvb(args: &DlmctlArgs, cmd: &LvbCommand) -> Outcome {
    match cmd {
        LvbCommand::Get {
            domain,
            resource,
            hex: as_hex,
            raw,
            json,
        } => {
            check_name("domain", domain)?;
            check_name("resource", resource)?;
            let mut c = connect(args)?;
            let (id, temporary) = lvb_lock(&mut c, domain, resource, false)?;
            let (value, valid) = c.lvb_get(id).map_err(refused)?;
            if temporary {
                c.unlock(id)?;
            }
            let mut out = Vec::new();
            if *json {
                #[derive(Serialize)]
                struct J<'a> {
                    domain: &'a str,
                    resource: &'a str,
                    text: String,
                    hex: String,
                    valid: bool,
                }
                let j = J {
                    domain,
                    resource,
                    text: String::from_utf8_lossy(text_of(&value)).into_owned(),
                    hex: hex(&value),
                    valid,
                };
                out = serde_json::to_vec_pretty(&j).expect("serializable");
                out.push(b'\n');
            } else if *raw {
                out.extend_from_slice(&value);
            } else if *as_hex {
                out = format!("{}\n", hex(&value)).into_bytes();
            } else {
                out.extend_from_slice(text_of(&value));
                out.push(b'\n');
            }
            let _ = std::io::stdout().lock().write_all(&out);
            if !valid {
                eprintln!(
                    "dlmctl: warning: the value block of {domain}/{resource} is invalid (the node that last wrote it died)"
                );
                return Ok(exit::LVB_INVALID);
            }
            Ok(exit::OK)
        }
        LvbCommand::Set {
            domain,
            resource,
            value,
            file,
            hex: hexval,
        } => {
            check_name("domain", domain)?;
            check_name("resource", resource)?;
            let bytes: Vec<u8> = match (value, file, hexval) {
                (Some(v), _, _) => std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
                (None, Some(f), _) => {
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, None, Some(h)) => parse_hex(h)?,
                (None, None, None) => unreachable!("clap requires one"),
            };
            if bytes.len() > LVB_LEN {
                return Err(Failure::error(format!(
                    "the value is {} bytes; a value block holds {LVB_LEN} (nothing was changed)",
                    bytes.len()
                )));
            }
            let mut c = connect(args)?;
            let (id, temporary) = lvb_lock(&mut c, domain, resource, true)?;
            c.lvb_set(id, &bytes).map_err(refused)?;
            if temporary {
                c.unlock(id)?;
            }
            Ok(exit::OK)
        }
    }
}
