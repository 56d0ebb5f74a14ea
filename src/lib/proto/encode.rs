//! Encoding of the client protocol's messages (both directions) into
//! frames.
//!
//! May depend on: `wire`, the message types, `dlm` types.

use super::wire::{Writer, encode_frame};
use super::{ClientMsg, ClientRequest, HbTarget, MAGIC, QuorumState, ServerMsg, ServerReply};
use crate::dlm::{Counters, DlmError, Event, Failure, Holder, LostReason, Lvb, Reply, Request};

/// The client protocol's fields above the primitives.
trait Put {
    /// A string as its bytes, cut at 65535 bytes (not at a character
    /// boundary, unlike the peer protocol's).
    fn str(&mut self, s: &str);
    fn opt_u64(&mut self, v: Option<u64>);
    fn opt_bytes(&mut self, v: Option<&[u8]>);
    fn lvb(&mut self, v: &Lvb);
    fn holder(&mut self, h: &Holder);
    fn holders(&mut self, hs: &[Holder]);
}

impl Put for Writer<'_> {
    fn str(&mut self, s: &str) {
        self.short_bytes(s.as_bytes());
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(b) => {
                self.u8(1);
                self.short_bytes(b);
            }
            None => self.u8(0),
        }
    }
    fn lvb(&mut self, v: &Lvb) {
        self.raw(v);
    }
    fn holder(&mut self, h: &Holder) {
        self.u64(h.lock.0);
        self.u8(h.node.0);
        self.u32(h.pid as u32);
        self.u32(h.uid);
        self.opt_mode(h.granted);
        self.opt_mode(h.requested);
        self.bool(h.persistent);
    }
    fn holders(&mut self, hs: &[Holder]) {
        self.u32(hs.len() as u32);
        for h in hs {
            self.holder(h);
        }
    }
}

fn put_request(w: &mut Writer<'_>, r: &Request) {
    match r {
        Request::Join { domain, pin } => {
            w.u8(1);
            w.short_bytes(domain);
            w.bool(*pin);
        }
        Request::Leave { domain, force } => {
            w.u8(2);
            w.short_bytes(domain);
            w.bool(*force);
        }
        Request::Lock(l) => {
            w.u8(3);
            w.short_bytes(&l.domain);
            w.short_bytes(&l.resource);
            w.mode(l.mode);
            w.bool(l.flags.noqueue);
            w.bool(l.flags.persistent);
            w.bool(l.flags.bast_on_busy);
            w.opt_u64(l.timeout_ms);
        }
        Request::Convert {
            lock,
            mode,
            noqueue,
            bast_on_busy,
            timeout_ms,
        } => {
            w.u8(4);
            w.u64(lock.0);
            w.mode(*mode);
            w.bool(*noqueue);
            w.bool(*bast_on_busy);
            w.opt_u64(*timeout_ms);
        }
        Request::Unlock { lock } => {
            w.u8(5);
            w.u64(lock.0);
        }
        Request::Cancel { lock } => {
            w.u8(6);
            w.u64(lock.0);
        }
        Request::LvbGet { lock } => {
            w.u8(7);
            w.u64(lock.0);
        }
        Request::LvbSet { lock, value } => {
            w.u8(8);
            w.u64(lock.0);
            w.lvb(value);
        }
    }
}

/// Encodes a client message as one frame.
pub fn encode_client(m: &ClientMsg) -> Vec<u8> {
    encode_client_into(m, Vec::with_capacity(64))
}

/// Appends a client message as one frame to `buf` and returns it.
pub fn encode_client_into(m: &ClientMsg, mut buf: Vec<u8>) -> Vec<u8> {
    encode_frame(&mut buf, |w| match m {
        ClientMsg::Hello { version } => {
            w.raw(MAGIC);
            w.u16(*version);
        }
        ClientMsg::Request { tag, request } => {
            w.u8(1);
            w.u64(*tag);
            match request {
                ClientRequest::Dlm(r) => {
                    w.u8(1);
                    put_request(w, r);
                }
                ClientRequest::Status => w.u8(2),
                ClientRequest::Domains => w.u8(3),
                ClientRequest::Locks { domain } => {
                    w.u8(4);
                    w.opt_bytes(domain.as_deref());
                }
                ClientRequest::HbStart { target, service } => {
                    w.u8(5);
                    put_target(w, target);
                    w.str(service);
                }
                ClientRequest::HbStop { target, service } => {
                    w.u8(6);
                    put_target(w, target);
                    w.str(service);
                }
                ClientRequest::HbStatus => w.u8(7),
                ClientRequest::HbRefs { uuid } => {
                    w.u8(8);
                    w.raw(uuid);
                }
                ClientRequest::RegisterCluster {
                    conf,
                    cluster,
                    node,
                } => {
                    w.u8(9);
                    w.short_bytes(conf);
                    w.str(cluster);
                    w.str(node);
                }
                ClientRequest::UnregisterCluster { cluster } => {
                    w.u8(10);
                    w.str(cluster);
                }
                ClientRequest::ClusterHeartbeat { cluster, start } => {
                    w.u8(11);
                    w.str(cluster);
                    w.bool(*start);
                }
            }
        }
    });
    buf
}

fn put_target(w: &mut Writer<'_>, t: &HbTarget) {
    match t {
        HbTarget::Device(p) => {
            w.u8(1);
            w.short_bytes(p);
        }
        HbTarget::Uuid(u) => {
            w.u8(2);
            w.raw(u);
        }
    }
}

fn put_error(w: &mut Writer<'_>, e: &DlmError) {
    match e {
        DlmError::BadName { what, len } => {
            w.u8(1);
            w.bool(*what == "domain");
            w.u32(*len as u32);
        }
        DlmError::NoSuchLock(l) => {
            w.u8(2);
            w.u64(l.0);
        }
        DlmError::NoSuchDomain(d) => {
            w.u8(3);
            w.str(d);
        }
        DlmError::Permission(s) => {
            w.u8(4);
            w.str(s);
        }
        DlmError::Pending(l) => {
            w.u8(5);
            w.u64(l.0);
        }
        DlmError::NotGranted(l) => {
            w.u8(6);
            w.u64(l.0);
        }
        DlmError::NothingToCancel(l) => {
            w.u8(7);
            w.u64(l.0);
        }
        DlmError::ModeTooLow { lock, held, need } => {
            w.u8(8);
            w.u64(lock.0);
            w.mode(*held);
            w.mode(*need);
        }
        DlmError::UnknownClient => w.u8(9),
        DlmError::Fenced => w.u8(10),
    }
}

fn put_event(w: &mut Writer<'_>, e: &Event) {
    match e {
        Event::Granted { lock, mode } => {
            w.u8(1);
            w.u64(lock.0);
            w.mode(*mode);
        }
        Event::Waiting { lock, blockers } => {
            w.u8(2);
            w.u64(lock.0);
            w.holders(blockers);
        }
        Event::Failed { lock, failure } => {
            w.u8(3);
            w.u64(lock.0);
            match failure {
                Failure::Busy { blockers } => {
                    w.u8(1);
                    w.holders(blockers);
                }
                Failure::TimedOut { blockers } => {
                    w.u8(2);
                    w.holders(blockers);
                }
                Failure::Deadlock { blockers } => {
                    w.u8(3);
                    w.holders(blockers);
                }
                Failure::Cancelled => w.u8(4),
            }
        }
        Event::Bast { lock, mode } => {
            w.u8(4);
            w.u64(lock.0);
            w.mode(*mode);
        }
        Event::Lost { lock, reason } => {
            w.u8(5);
            w.u64(lock.0);
            w.u8(match reason {
                LostReason::DomainLeft => 1,
                LostReason::BrokenByRoot => 2,
                LostReason::Fenced => 3,
            });
        }
    }
}

fn put_counters(w: &mut Writer<'_>, c: &Counters) {
    for v in [
        c.lock_requests,
        c.convert_requests,
        c.grants,
        c.unlocks,
        c.busy,
        c.timeouts,
        c.deadlocks,
        c.basts,
        c.local_grants,
        c.remote_requests,
    ] {
        w.u64(v);
    }
}

/// Encodes a server message as one frame.
pub fn encode_server(m: &ServerMsg) -> Vec<u8> {
    encode_server_into(m, Vec::with_capacity(64))
}

/// Appends a server message as one frame to `buf` and returns it.
pub fn encode_server_into(m: &ServerMsg, mut buf: Vec<u8>) -> Vec<u8> {
    encode_frame(&mut buf, |w| match m {
        ServerMsg::Welcome {
            version,
            node,
            pid,
            fence_grace_ms,
        } => {
            w.u8(1);
            w.u16(*version);
            w.u8(node.0);
            w.u32(*pid);
            w.u32(*fence_grace_ms);
        }
        ServerMsg::Reply { tag, reply } => {
            w.u8(2);
            w.u64(*tag);
            match reply {
                ServerReply::Dlm(r) => match r {
                    Reply::Ok => w.u8(1),
                    Reply::LockAccepted { lock } => {
                        w.u8(2);
                        w.u64(lock.0);
                    }
                    Reply::Lvb { value, valid } => {
                        w.u8(3);
                        w.lvb(value);
                        w.bool(*valid);
                    }
                    Reply::Err(e) => {
                        w.u8(4);
                        put_error(w, e);
                    }
                },
                ServerReply::Status(s) => {
                    w.u8(5);
                    w.u8(s.node.0);
                    w.opt_bytes(s.cluster.as_deref().map(str::as_bytes));
                    w.u32(s.pid);
                    w.u64(s.uptime_ms);
                    w.bool(s.autostarted);
                    w.u64(s.stats.domains as u64);
                    w.u64(s.stats.resources as u64);
                    w.u64(s.stats.locks as u64);
                    w.u64(s.stats.clients as u64);
                    put_counters(w, &s.stats.counters);
                    w.u32(s.nodes.len() as u32);
                    for n in &s.nodes {
                        w.u8(n.number);
                        w.str(&n.name);
                        w.str(&n.address);
                        w.bool(n.local);
                        w.bool(n.connected);
                        w.bool(n.heartbeat);
                    }
                    w.u8(match s.quorum {
                        None => 0,
                        Some(QuorumState::Quorate) => 1,
                        Some(QuorumState::Fencing) => 2,
                        Some(QuorumState::Fenced) => 3,
                    });
                }
                ServerReply::Domains(ds) => {
                    w.u8(6);
                    w.u32(ds.len() as u32);
                    for d in ds {
                        w.short_bytes(&d.name);
                        w.bool(d.pinned);
                        w.u32(d.users as u32);
                        w.u64(d.resources as u64);
                        w.u64(d.locks as u64);
                        w.u64(d.epoch);
                        w.short_bytes(&d.members.iter().map(|n| n.0).collect::<Vec<u8>>());
                    }
                }
                ServerReply::HbRefs { uuid, refs } => {
                    w.u8(8);
                    w.raw(uuid);
                    w.u32(*refs);
                }
                ServerReply::HbRegions(rs) => {
                    w.u8(9);
                    w.u32(rs.len() as u32);
                    for r in rs {
                        w.short_bytes(&r.device);
                        w.raw(&r.uuid);
                        w.str(&r.kind);
                        w.u32(r.block_bytes);
                        w.u64(r.start_byte);
                        w.u32(r.slots);
                        w.u8(r.node);
                        w.u32(r.interval_ms);
                        w.u32(r.dead_ms);
                        w.bool(r.steady);
                        w.bool(r.direct_io);
                        w.short_bytes(&r.live);
                        w.u64(r.iterations);
                        w.opt_bytes(r.problem.as_deref().map(str::as_bytes));
                        w.u32(r.refs.len() as u32);
                        for (svc, n) in &r.refs {
                            w.str(svc);
                            w.u32(*n);
                        }
                    }
                }
                ServerReply::Failed { message } => {
                    w.u8(10);
                    w.str(message);
                }
                ServerReply::Done => w.u8(11),
                ServerReply::Locks(rs) => {
                    w.u8(7);
                    w.u32(rs.len() as u32);
                    for r in rs {
                        w.short_bytes(&r.domain);
                        w.short_bytes(&r.name);
                        w.u8(r.master.0);
                        w.lvb(&r.lvb.value);
                        w.u64(r.lvb.seq);
                        w.bool(r.lvb.valid);
                        w.holders(&r.granted);
                        w.holders(&r.converting);
                        w.holders(&r.waiting);
                        match r.node_lock {
                            None => w.bool(false),
                            Some((held, want)) => {
                                w.bool(true);
                                w.opt_mode(held);
                                w.opt_mode(want);
                            }
                        }
                        w.u32(r.nodes.len() as u32);
                        for n in &r.nodes {
                            w.u8(n.node.0);
                            w.opt_mode(n.granted);
                            w.opt_mode(n.requested);
                            w.u32(n.pid as u32);
                        }
                    }
                }
            }
        }
        ServerMsg::Event(e) => {
            w.u8(3);
            put_event(w, e);
        }
        ServerMsg::Error { message } => {
            w.u8(4);
            w.str(message);
        }
    });
    buf
}
