//! o2cb's edits that take more than one call: `add-node` (its numbers read
//! as C's `strtol`, its address looked up as the real tool does) and
//! `add-heartbeat`/`remove-heartbeat` (a block device stands for its OCFS2
//! volume's UUID).
//!
//! May depend on: `config`, `heartbeat::ocfs2`, `cli`.

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use super::{AddNodeArgs, ClusterAndRegion, Did, Done, Say, unprotect, usage};
use crate::cli::Failure;
use crate::config::{self, ClusterConf, DEFAULT_PORT, strip_blanks};
use crate::heartbeat::ocfs2;

/// C `strtol(s, &end, 0)` truncated to `int`, as the real tool reads
/// `--port` and `--number`: `0x10` is hex, `07` octal, an empty string 0.
/// None when characters are left over.
pub(super) fn strtol_int(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    let mut i = b.iter().take_while(|&&c| config::is_c_space(c)).count();
    let mut neg = false;
    if let Some(&sign @ (b'+' | b'-')) = b.get(i) {
        neg = sign == b'-';
        i += 1;
    }
    let base: u32 = if b.get(i) == Some(&b'0')
        && matches!(b.get(i + 1), Some(b'x' | b'X'))
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
        16
    } else if b.get(i) == Some(&b'0') {
        8
    } else {
        10
    };
    let digits: Vec<u32> = b[i..]
        .iter()
        .map_while(|&c| (c as char).to_digit(base))
        .collect();
    if digits.is_empty() {
        // No conversion: the end pointer is the start of the string.
        return s.is_empty().then_some(0);
    }
    if i + digits.len() != b.len() {
        return None;
    }
    let mut v: i128 = 0;
    for d in digits {
        v = (v * i128::from(base) + i128::from(d)).min(i128::from(i64::MAX) + 1);
    }
    let v = if neg { -v } else { v };
    let long = v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    Some(long as i32)
}

/// The first IPv4 address of `name`, as `getaddrinfo(AF_INET)` gives it;
/// the error is `gai_strerror`'s text.
fn resolve_ipv4(name: &str) -> Result<Ipv4Addr, String> {
    let c_name = CString::new(name).map_err(|_| "Name or service not known".to_owned())?;
    // SAFETY: hints is a valid zeroed addrinfo with the fields getaddrinfo
    // reads set; the result list is freed exactly once below.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = libc::AF_INET;
        hints.ai_socktype = libc::SOCK_STREAM;
        hints.ai_protocol = libc::IPPROTO_TCP;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        let rc = libc::getaddrinfo(c_name.as_ptr(), std::ptr::null(), &hints, &mut res);
        if rc != 0 {
            return Err(CStr::from_ptr(libc::gai_strerror(rc))
                .to_string_lossy()
                .into_owned());
        }
        let sin = (*res).ai_addr as *const libc::sockaddr_in;
        let addr = Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr));
        libc::freeaddrinfo(res);
        Ok(addr)
    }
}

pub(super) fn add_node(conf: &mut ClusterConf, a: AddNodeArgs, say: &Say) -> Did {
    let port = match a.port.as_deref().map(strtol_int) {
        None => -1,
        Some(Some(p)) => p,
        Some(None) => {
            say.error("Invalid port number");
            return Err(usage("add-node"));
        }
    };
    let number = match a.number.as_deref().map(strtol_int) {
        None => -1,
        Some(Some(n)) => n,
        Some(None) => {
            say.error("Invalid node number");
            return Err(usage("add-node"));
        }
    };
    let (Some(cluster), Some(nodename)) = (a.clustername, a.nodename) else {
        return Err(usage("add-node"));
    };
    let nodename = strip_blanks(&nodename);
    if nodename.is_empty() {
        say.error(config::EditError::NodeNameEmpty);
        return Err(usage("add-node"));
    }
    say.debug(format!(
        "Add node '{nodename}' in cluster '{cluster}' having ip '{}', port '{port}' and number '{number}'",
        a.ip.as_deref().unwrap_or("auto")
    ));
    if conf.cluster(&cluster).is_none() {
        return Err(Failure::error(config::EditError::UnknownCluster(cluster)));
    }
    let ip = match &a.ip {
        Some(ip) => ip
            .parse::<Ipv4Addr>()
            .map_err(|_| Failure::error(format!("Bad IP Address '{ip}'")))?,
        None => resolve_ipv4(nodename).map_err(|e| {
            Failure::error(format!(
                "{e}, while looking up the IP address for '{nodename}'"
            ))
        })?,
    };
    say.debug(format!("Validated IP address '{ip}'"));
    let port = if port == -1 {
        DEFAULT_PORT
    } else {
        port as u32
    };
    let requested = (number != -1).then_some(i64::from(number));
    let n = conf
        .cluster(&cluster)
        .expect("checked")
        .choose_number(requested)
        .map_err(Failure::error)?;
    say.debug(format!("Validated node number '{n}'"));
    let n = conf
        .add_node(&cluster, nodename, ip, port, requested)
        .map_err(Failure::error)?;
    say.app(format!(
        "Added node '{nodename}' in cluster '{cluster}' having ip '{ip}', port '{}' and number '{n}'",
        port as i32
    ));
    Ok(Done::Modified)
}

/// A region argument: a block device stands for its OCFS2 volume's UUID;
/// anything else is the region itself.
fn region_of(arg: &str, say: &Say) -> Result<String, Failure> {
    let is_block = std::fs::metadata(arg)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if !is_block {
        say.debug(format!("'{arg}' is not a block device; assuming region"));
        return Ok(arg.to_owned());
    }
    say.debug(format!("Reading region of block device '{arg}'"));
    ocfs2::read_superblock(Path::new(arg))
        .map(|sb| sb.uuid_string())
        .map_err(|e| {
            Failure::error(format!(
                "cannot read the heartbeat region of device '{arg}': {e}"
            ))
        })
}

pub(super) fn heartbeat(
    conf: &mut ClusterConf,
    a: ClusterAndRegion,
    adding: bool,
    say: &Say,
) -> Did {
    let word = if adding {
        "add-heartbeat"
    } else {
        "remove-heartbeat"
    };
    let (Some(cluster), Some(arg)) = (unprotect(&a.clustername), unprotect(&a.region)) else {
        return Err(usage(word));
    };
    // The real tool strips blanks from the region it adds, not from the one it removes.
    let arg = if adding { strip_blanks(arg) } else { arg };
    let region = region_of(arg, say)?;
    say.debug(format!("Heartbeat region '{region}'"));
    let (result, done) = if adding {
        (
            conf.add_heartbeat(cluster, &region),
            format!("Added heartbeat region '{region}' to cluster '{cluster}'"),
        )
    } else {
        (
            conf.remove_heartbeat(cluster, &region),
            format!("Removed heartbeat region '{region}' from cluster '{cluster}'"),
        )
    };
    result.map_err(Failure::error)?;
    if region.is_empty() {
        say.error(
            "warning: stored an empty heartbeat region, as ocfs2-tools does; \
             no o2cb will load this file until the empty 'region =' stanza is edited out",
        );
    }
    say.app(done);
    Ok(Done::Modified)
}
