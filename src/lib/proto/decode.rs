//! Decoding of the client protocol's frames (both directions) into
//! messages. Nothing a peer sends can make it panic or allocate beyond the
//! bytes actually received.
//!
//! May depend on: `wire`, the message types, `dlm` types.

use super::wire::{DecodeError, Reader, split_frame};
use super::{
    ClientMsg, ClientRequest, HbRegionInfo, HbTarget, MAGIC, MAX_FRAME, MAX_REPLY_FRAME,
    NodeStatus, QuorumState, ServerMsg, ServerReply, StatusInfo,
};
use crate::dlm::{
    Counters, DlmError, DomainInfo, Event, Failure, Holder, LockFlags, LockId, LockRequest,
    LostReason, Lvb, LvbInfo, NodeHolder, NodeId, Reply, Request, ResourceInfo, Stats,
};

/// The client protocol's fields above the primitives.
trait Get {
    /// A string; the error names what is being decoded.
    fn string(&mut self) -> Result<String, DecodeError>;
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError>;
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, DecodeError>;
    fn lvb(&mut self) -> Result<Lvb, DecodeError>;
    fn uuid(&mut self) -> Result<[u8; 16], DecodeError>;
    fn target(&mut self) -> Result<HbTarget, DecodeError>;
    fn lock(&mut self) -> Result<LockId, DecodeError>;
    fn holder(&mut self) -> Result<Holder, DecodeError>;
    fn holders(&mut self) -> Result<Vec<Holder>, DecodeError>;
}

impl Get for Reader<'_> {
    fn string(&mut self) -> Result<String, DecodeError> {
        let what = self.what();
        self.short_str(what)
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.short_bytes()?)
        } else {
            None
        })
    }
    fn lvb(&mut self) -> Result<Lvb, DecodeError> {
        self.array()
    }
    fn uuid(&mut self) -> Result<[u8; 16], DecodeError> {
        self.array()
    }
    fn target(&mut self) -> Result<HbTarget, DecodeError> {
        match self.u8()? {
            1 => Ok(HbTarget::Device(self.short_bytes()?)),
            2 => Ok(HbTarget::Uuid(self.uuid()?)),
            v => Err(DecodeError::Unknown {
                what: "heartbeat target",
                value: v,
            }),
        }
    }
    fn lock(&mut self) -> Result<LockId, DecodeError> {
        Ok(LockId(self.u64()?))
    }
    fn holder(&mut self) -> Result<Holder, DecodeError> {
        Ok(Holder {
            lock: self.lock()?,
            node: NodeId(self.u8()?),
            pid: self.u32()? as i32,
            uid: self.u32()?,
            granted: self.opt_mode()?,
            requested: self.opt_mode()?,
            persistent: self.bool()?,
        })
    }
    fn holders(&mut self) -> Result<Vec<Holder>, DecodeError> {
        let n = self.count(19)?;
        (0..n).map(|_| self.holder()).collect()
    }
}

fn get_request(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    Ok(match r.u8()? {
        1 => Request::Join {
            domain: r.short_bytes()?,
            pin: r.bool()?,
        },
        2 => Request::Leave {
            domain: r.short_bytes()?,
            force: r.bool()?,
        },
        3 => Request::Lock(LockRequest {
            domain: r.short_bytes()?,
            resource: r.short_bytes()?,
            mode: r.mode()?,
            flags: LockFlags {
                noqueue: r.bool()?,
                persistent: r.bool()?,
                bast_on_busy: r.bool()?,
            },
            timeout_ms: r.opt_u64()?,
        }),
        4 => Request::Convert {
            lock: r.lock()?,
            mode: r.mode()?,
            noqueue: r.bool()?,
            bast_on_busy: r.bool()?,
            timeout_ms: r.opt_u64()?,
        },
        5 => Request::Unlock { lock: r.lock()? },
        6 => Request::Cancel { lock: r.lock()? },
        7 => Request::LvbGet { lock: r.lock()? },
        8 => Request::LvbSet {
            lock: r.lock()?,
            value: r.lvb()?,
        },
        v => {
            return Err(DecodeError::Unknown {
                what: "request",
                value: v,
            });
        }
    })
}

/// Decodes one client frame from the front of `buf`.
pub fn decode_client(buf: &[u8]) -> Result<Option<(ClientMsg, usize)>, DecodeError> {
    let Some((payload, used)) = split_frame(buf, MAX_FRAME)? else {
        return Ok(None);
    };
    let mut r = Reader::new(payload, "client message");
    let msg = if payload.starts_with(MAGIC) {
        r.take(4)?;
        ClientMsg::Hello { version: r.u16()? }
    } else {
        match r.u8()? {
            1 => {
                let tag = r.u64()?;
                let request = match r.u8()? {
                    1 => ClientRequest::Dlm(get_request(&mut r)?),
                    2 => ClientRequest::Status,
                    3 => ClientRequest::Domains,
                    4 => ClientRequest::Locks {
                        domain: r.opt_bytes()?,
                    },
                    5 => ClientRequest::HbStart {
                        target: r.target()?,
                        service: r.string()?,
                    },
                    6 => ClientRequest::HbStop {
                        target: r.target()?,
                        service: r.string()?,
                    },
                    7 => ClientRequest::HbStatus,
                    8 => ClientRequest::HbRefs { uuid: r.uuid()? },
                    9 => ClientRequest::RegisterCluster {
                        conf: r.short_bytes()?,
                        cluster: r.string()?,
                        node: r.string()?,
                    },
                    10 => ClientRequest::UnregisterCluster {
                        cluster: r.string()?,
                    },
                    11 => ClientRequest::ClusterHeartbeat {
                        cluster: r.string()?,
                        start: r.bool()?,
                    },
                    v => {
                        return Err(DecodeError::Unknown {
                            what: "request kind",
                            value: v,
                        });
                    }
                };
                ClientMsg::Request { tag, request }
            }
            v => {
                return Err(DecodeError::Unknown {
                    what: "client message",
                    value: v,
                });
            }
        }
    };
    r.end()?;
    Ok(Some((msg, used)))
}

fn get_error(r: &mut Reader<'_>) -> Result<DlmError, DecodeError> {
    Ok(match r.u8()? {
        1 => DlmError::BadName {
            what: if r.bool()? { "domain" } else { "resource" },
            len: r.u32()? as usize,
        },
        2 => DlmError::NoSuchLock(r.lock()?),
        3 => DlmError::NoSuchDomain(r.string()?),
        4 => DlmError::Permission(r.string()?),
        5 => DlmError::Pending(r.lock()?),
        6 => DlmError::NotGranted(r.lock()?),
        7 => DlmError::NothingToCancel(r.lock()?),
        8 => DlmError::ModeTooLow {
            lock: r.lock()?,
            held: r.mode()?,
            need: r.mode()?,
        },
        9 => DlmError::UnknownClient,
        10 => DlmError::Fenced,
        v => {
            return Err(DecodeError::Unknown {
                what: "error",
                value: v,
            });
        }
    })
}

fn get_event(r: &mut Reader<'_>) -> Result<Event, DecodeError> {
    Ok(match r.u8()? {
        1 => Event::Granted {
            lock: r.lock()?,
            mode: r.mode()?,
        },
        2 => Event::Waiting {
            lock: r.lock()?,
            blockers: r.holders()?,
        },
        3 => {
            let lock = r.lock()?;
            let failure = match r.u8()? {
                1 => Failure::Busy {
                    blockers: r.holders()?,
                },
                2 => Failure::TimedOut {
                    blockers: r.holders()?,
                },
                3 => Failure::Deadlock {
                    blockers: r.holders()?,
                },
                4 => Failure::Cancelled,
                v => {
                    return Err(DecodeError::Unknown {
                        what: "failure",
                        value: v,
                    });
                }
            };
            Event::Failed { lock, failure }
        }
        4 => Event::Bast {
            lock: r.lock()?,
            mode: r.mode()?,
        },
        5 => Event::Lost {
            lock: r.lock()?,
            reason: match r.u8()? {
                1 => LostReason::DomainLeft,
                2 => LostReason::BrokenByRoot,
                3 => LostReason::Fenced,
                v => {
                    return Err(DecodeError::Unknown {
                        what: "lost reason",
                        value: v,
                    });
                }
            },
        },
        v => {
            return Err(DecodeError::Unknown {
                what: "event",
                value: v,
            });
        }
    })
}

fn get_counters(r: &mut Reader<'_>) -> Result<Counters, DecodeError> {
    Ok(Counters {
        lock_requests: r.u64()?,
        convert_requests: r.u64()?,
        grants: r.u64()?,
        unlocks: r.u64()?,
        busy: r.u64()?,
        timeouts: r.u64()?,
        deadlocks: r.u64()?,
        basts: r.u64()?,
        local_grants: r.u64()?,
        remote_requests: r.u64()?,
    })
}

/// Decodes one server frame from the front of `buf`.
pub fn decode_server(buf: &[u8]) -> Result<Option<(ServerMsg, usize)>, DecodeError> {
    let Some((payload, used)) = split_frame(buf, MAX_REPLY_FRAME)? else {
        return Ok(None);
    };
    let mut r = Reader::new(payload, "server message");
    let msg = match r.u8()? {
        1 => ServerMsg::Welcome {
            version: r.u16()?,
            node: NodeId(r.u8()?),
            pid: r.u32()?,
            // Absent before version 4: the version check names the mismatch.
            fence_grace_ms: if r.is_empty() { 0 } else { r.u32()? },
        },
        2 => {
            let tag = r.u64()?;
            let reply = match r.u8()? {
                1 => ServerReply::Dlm(Reply::Ok),
                2 => ServerReply::Dlm(Reply::LockAccepted { lock: r.lock()? }),
                3 => ServerReply::Dlm(Reply::Lvb {
                    value: r.lvb()?,
                    valid: r.bool()?,
                }),
                4 => ServerReply::Dlm(Reply::Err(get_error(&mut r)?)),
                5 => ServerReply::Status(StatusInfo {
                    node: NodeId(r.u8()?),
                    cluster: r
                        .opt_bytes()?
                        .map(|b| String::from_utf8(b).map_err(|_| DecodeError::Utf8("cluster")))
                        .transpose()?,
                    pid: r.u32()?,
                    uptime_ms: r.u64()?,
                    autostarted: r.bool()?,
                    stats: Stats {
                        domains: r.u64()? as usize,
                        resources: r.u64()? as usize,
                        locks: r.u64()? as usize,
                        clients: r.u64()? as usize,
                        counters: get_counters(&mut r)?,
                    },
                    nodes: {
                        // Smallest node: number, two empty strings, three flags.
                        let n = r.count(8)?;
                        (0..n)
                            .map(|_| {
                                Ok(NodeStatus {
                                    number: r.u8()?,
                                    name: r.string()?,
                                    address: r.string()?,
                                    local: r.bool()?,
                                    connected: r.bool()?,
                                    heartbeat: r.bool()?,
                                })
                            })
                            .collect::<Result<_, DecodeError>>()?
                    },
                    quorum: match r.u8()? {
                        0 => None,
                        1 => Some(QuorumState::Quorate),
                        2 => Some(QuorumState::Fencing),
                        3 => Some(QuorumState::Fenced),
                        v => {
                            return Err(DecodeError::Unknown {
                                what: "quorum state",
                                value: v,
                            });
                        }
                    },
                }),
                6 => {
                    let n = r.count(33)?;
                    ServerReply::Domains(
                        (0..n)
                            .map(|_| {
                                Ok(DomainInfo {
                                    name: r.short_bytes()?,
                                    pinned: r.bool()?,
                                    users: r.u32()? as usize,
                                    resources: r.u64()? as usize,
                                    locks: r.u64()? as usize,
                                    epoch: r.u64()?,
                                    members: r.short_bytes()?.into_iter().map(NodeId).collect(),
                                })
                            })
                            .collect::<Result<_, DecodeError>>()?,
                    )
                }
                7 => {
                    let n = r.count(95)?;
                    ServerReply::Locks(
                        (0..n)
                            .map(|_| {
                                Ok(ResourceInfo {
                                    domain: r.short_bytes()?,
                                    name: r.short_bytes()?,
                                    master: NodeId(r.u8()?),
                                    lvb: LvbInfo {
                                        value: r.lvb()?,
                                        seq: r.u64()?,
                                        valid: r.bool()?,
                                    },
                                    granted: r.holders()?,
                                    converting: r.holders()?,
                                    waiting: r.holders()?,
                                    node_lock: if r.bool()? {
                                        Some((r.opt_mode()?, r.opt_mode()?))
                                    } else {
                                        None
                                    },
                                    nodes: {
                                        let n = r.count(7)?;
                                        (0..n)
                                            .map(|_| {
                                                Ok(NodeHolder {
                                                    node: NodeId(r.u8()?),
                                                    granted: r.opt_mode()?,
                                                    requested: r.opt_mode()?,
                                                    pid: r.u32()? as i32,
                                                })
                                            })
                                            .collect::<Result<_, DecodeError>>()?
                                    },
                                })
                            })
                            .collect::<Result<_, DecodeError>>()?,
                    )
                }
                8 => ServerReply::HbRefs {
                    uuid: r.uuid()?,
                    refs: r.u32()?,
                },
                9 => {
                    let n = r.count(60)?;
                    let mut out = Vec::with_capacity(n);
                    for _ in 0..n {
                        let mut info = HbRegionInfo {
                            device: r.short_bytes()?,
                            uuid: r.uuid()?,
                            kind: r.string()?,
                            block_bytes: r.u32()?,
                            start_byte: r.u64()?,
                            slots: r.u32()?,
                            node: r.u8()?,
                            interval_ms: r.u32()?,
                            dead_ms: r.u32()?,
                            steady: r.bool()?,
                            direct_io: r.bool()?,
                            live: r.short_bytes()?,
                            iterations: r.u64()?,
                            problem: r
                                .opt_bytes()?
                                .map(|b| {
                                    String::from_utf8(b).map_err(|_| DecodeError::Utf8("problem"))
                                })
                                .transpose()?,
                            refs: Vec::new(),
                        };
                        let k = r.count(6)?;
                        for _ in 0..k {
                            info.refs.push((r.string()?, r.u32()?));
                        }
                        out.push(info);
                    }
                    ServerReply::HbRegions(out)
                }
                10 => ServerReply::Failed {
                    message: r.string()?,
                },
                11 => ServerReply::Done,
                v => {
                    return Err(DecodeError::Unknown {
                        what: "reply",
                        value: v,
                    });
                }
            };
            ServerMsg::Reply { tag, reply }
        }
        3 => ServerMsg::Event(get_event(&mut r)?),
        4 => ServerMsg::Error {
            message: r.string()?,
        },
        v => {
            return Err(DecodeError::Unknown {
                what: "server message",
                value: v,
            });
        }
    };
    r.end()?;
    Ok(Some((msg, used)))
}
