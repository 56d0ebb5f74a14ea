//! The client wire protocol between lockd and its clients (see `docs/PROTOCOL.md`).
//!
//! A connection is a stream of frames: a 4-byte little-endian payload length,
//! then the payload (at most [`MAX_FRAME`] bytes from a client,
//! [`MAX_REPLY_FRAME`] from lockd). The first frame from the
//! client is [`ClientMsg::Hello`] with the protocol version; lockd answers
//! [`ServerMsg::Welcome`] or [`ServerMsg::Error`] and closes. After that the
//! client sends requests, each with a tag; lockd answers each with a
//! [`ServerMsg::Reply`] carrying the tag, and pushes [`ServerMsg::Event`]s
//! (grants, failures, blocking notifications, lost locks) whenever they happen.
//! Many requests may be in flight on one connection.
//!
//! Encoding and decoding are pure functions over bytes: [`decode_client`] and
//! [`decode_server`] return `Ok(None)` when more bytes are needed.
//!
//! The message types are in `messages`, their encoding in `encode` and
//! `decode`; the framing and the primitive fields, shared with [`peer`], in
//! `wire`.
//!
//! May depend on: `dlm` types, std, `thiserror`.

mod decode;
mod encode;
mod messages;
pub mod peer;
mod wire;

pub use decode::{decode_client, decode_server};
pub use encode::{encode_client, encode_client_into, encode_server, encode_server_into};
pub use messages::{
    ClientMsg, ClientRequest, HbRegionInfo, HbTarget, NodeStatus, QuorumState, ServerMsg,
    ServerReply, StatusInfo,
};
pub use wire::{DecodeError, split_frame};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;
/// Magic at the start of the hello.
pub const MAGIC: &[u8; 4] = b"o2tl";
/// Largest payload accepted from a client (requests are small).
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest payload accepted from lockd (a listing of many resources is
/// large; lockd refuses a listing that would not fit).
pub const MAX_REPLY_FRAME: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlm::{
        Counters, DlmError, DomainInfo, Event, Failure, Holder, LVB_LEN, LockFlags, LockId,
        LockRequest, LostReason, LvbInfo, Mode, NodeHolder, NodeId, Reply, Request, ResourceInfo,
        Stats,
    };

    fn holder(n: u64) -> Holder {
        Holder {
            lock: LockId(n),
            node: NodeId(2),
            pid: -1,
            uid: 1000,
            granted: Some(Mode::PR),
            requested: None,
            persistent: true,
        }
    }

    fn client_msgs() -> Vec<ClientMsg> {
        let reqs = vec![
            Request::Join {
                domain: b"d".to_vec(),
                pin: true,
            },
            Request::Leave {
                domain: b"d".to_vec(),
                force: false,
            },
            Request::Lock(LockRequest {
                domain: b"dom".to_vec(),
                resource: vec![0, 1, 255],
                mode: Mode::CW,
                flags: LockFlags {
                    noqueue: true,
                    persistent: false,
                    bast_on_busy: true,
                },
                timeout_ms: Some(1500),
            }),
            Request::Convert {
                lock: LockId(7),
                mode: Mode::NL,
                noqueue: false,
                bast_on_busy: false,
                timeout_ms: None,
            },
            Request::Unlock {
                lock: LockId(u64::MAX),
            },
            Request::Cancel { lock: LockId(3) },
            Request::LvbGet { lock: LockId(3) },
            Request::LvbSet {
                lock: LockId(3),
                value: [7; LVB_LEN],
            },
        ];
        let mut v: Vec<ClientMsg> = reqs
            .into_iter()
            .enumerate()
            .map(|(i, r)| ClientMsg::Request {
                tag: i as u64,
                request: ClientRequest::Dlm(r),
            })
            .collect();
        v.push(ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        });
        v.push(ClientMsg::Request {
            tag: 99,
            request: ClientRequest::Status,
        });
        v.push(ClientMsg::Request {
            tag: 99,
            request: ClientRequest::Domains,
        });
        v.push(ClientMsg::Request {
            tag: 99,
            request: ClientRequest::Locks { domain: None },
        });
        v.push(ClientMsg::Request {
            tag: 99,
            request: ClientRequest::Locks {
                domain: Some(b"x".to_vec()),
            },
        });
        v.push(ClientMsg::Request {
            tag: 7,
            request: ClientRequest::HbStart {
                target: HbTarget::Device(b"/dev/sdb".to_vec()),
                service: "ocfs2".into(),
            },
        });
        v.push(ClientMsg::Request {
            tag: 7,
            request: ClientRequest::HbStop {
                target: HbTarget::Uuid([7; 16]),
                service: "hb_ctl".into(),
            },
        });
        v.push(ClientMsg::Request {
            tag: 7,
            request: ClientRequest::HbStatus,
        });
        v.push(ClientMsg::Request {
            tag: 7,
            request: ClientRequest::HbRefs { uuid: [1; 16] },
        });
        v.push(ClientMsg::Request {
            tag: 8,
            request: ClientRequest::RegisterCluster {
                conf: b"/etc/ocfs2/cluster.conf".to_vec(),
                cluster: "c1".into(),
                node: "alpha".into(),
            },
        });
        v.push(ClientMsg::Request {
            tag: 9,
            request: ClientRequest::UnregisterCluster {
                cluster: "c1".into(),
            },
        });
        v.push(ClientMsg::Request {
            tag: 10,
            request: ClientRequest::ClusterHeartbeat {
                cluster: "c1".into(),
                start: true,
            },
        });
        v
    }

    fn server_msgs() -> Vec<ServerMsg> {
        let mut v = vec![
            ServerMsg::Welcome {
                version: 1,
                node: NodeId(4),
                pid: 1234,
                fence_grace_ms: 10_000,
            },
            ServerMsg::Error {
                message: "bad frame".into(),
            },
        ];
        let replies = vec![
            ServerReply::Dlm(Reply::Ok),
            ServerReply::Dlm(Reply::LockAccepted {
                lock: LockId(1 << 56 | 5),
            }),
            ServerReply::Dlm(Reply::Lvb {
                value: [9; LVB_LEN],
                valid: false,
            }),
            ServerReply::Dlm(Reply::Err(DlmError::BadName {
                what: "domain",
                len: 65,
            })),
            ServerReply::Dlm(Reply::Err(DlmError::BadName {
                what: "resource",
                len: 0,
            })),
            ServerReply::Dlm(Reply::Err(DlmError::NoSuchLock(LockId(2)))),
            ServerReply::Dlm(Reply::Err(DlmError::NoSuchDomain("d".into()))),
            ServerReply::Dlm(Reply::Err(DlmError::Permission("no".into()))),
            ServerReply::Dlm(Reply::Err(DlmError::Pending(LockId(2)))),
            ServerReply::Dlm(Reply::Err(DlmError::NotGranted(LockId(2)))),
            ServerReply::Dlm(Reply::Err(DlmError::NothingToCancel(LockId(2)))),
            ServerReply::Dlm(Reply::Err(DlmError::ModeTooLow {
                lock: LockId(2),
                held: Mode::NL,
                need: Mode::CR,
            })),
            ServerReply::Dlm(Reply::Err(DlmError::UnknownClient)),
            ServerReply::Dlm(Reply::Err(DlmError::Fenced)),
            ServerReply::Status(StatusInfo {
                node: NodeId(0),
                cluster: Some("c1".into()),
                pid: 42,
                uptime_ms: 99,
                autostarted: true,
                stats: Stats {
                    domains: 1,
                    resources: 2,
                    locks: 3,
                    clients: 4,
                    counters: Counters {
                        grants: 5,
                        basts: 6,
                        local_grants: 7,
                        remote_requests: 8,
                        ..Default::default()
                    },
                },
                nodes: vec![NodeStatus {
                    number: 2,
                    name: "n2".into(),
                    address: "127.0.0.2:7777".into(),
                    local: false,
                    connected: true,
                    heartbeat: false,
                }],
                quorum: Some(QuorumState::Fencing),
            }),
            ServerReply::Domains(vec![DomainInfo {
                name: b"d".to_vec(),
                pinned: true,
                users: 2,
                resources: 3,
                locks: 4,
                epoch: 5,
                members: vec![NodeId(1), NodeId(3)],
            }]),
            ServerReply::Locks(vec![ResourceInfo {
                domain: b"d".to_vec(),
                name: b"r".to_vec(),
                master: NodeId(1),
                lvb: LvbInfo {
                    value: [1; LVB_LEN],
                    seq: 3,
                    valid: true,
                },
                granted: vec![holder(1)],
                converting: vec![],
                waiting: vec![holder(2), holder(3)],
                node_lock: Some((Some(Mode::PR), None)),
                nodes: vec![NodeHolder {
                    node: NodeId(2),
                    granted: None,
                    requested: Some(Mode::EX),
                    pid: 9,
                }],
            }]),
        ];
        v.extend(
            replies
                .into_iter()
                .map(|reply| ServerMsg::Reply { tag: 77, reply }),
        );
        let events = vec![
            Event::Granted {
                lock: LockId(1),
                mode: Mode::EX,
            },
            Event::Waiting {
                lock: LockId(1),
                blockers: vec![holder(2)],
            },
            Event::Failed {
                lock: LockId(1),
                failure: Failure::Busy {
                    blockers: vec![holder(2)],
                },
            },
            Event::Failed {
                lock: LockId(1),
                failure: Failure::TimedOut { blockers: vec![] },
            },
            Event::Failed {
                lock: LockId(1),
                failure: Failure::Deadlock {
                    blockers: vec![holder(3)],
                },
            },
            Event::Failed {
                lock: LockId(1),
                failure: Failure::Cancelled,
            },
            Event::Bast {
                lock: LockId(1),
                mode: Mode::PW,
            },
            Event::Lost {
                lock: LockId(1),
                reason: LostReason::DomainLeft,
            },
            Event::Lost {
                lock: LockId(1),
                reason: LostReason::BrokenByRoot,
            },
            Event::Lost {
                lock: LockId(1),
                reason: LostReason::Fenced,
            },
        ];
        v.extend(events.into_iter().map(ServerMsg::Event));
        v.push(ServerMsg::Reply {
            tag: 1,
            reply: ServerReply::HbRefs {
                uuid: [3; 16],
                refs: 2,
            },
        });
        v.push(ServerMsg::Reply {
            tag: 1,
            reply: ServerReply::Failed {
                message: "no such device".into(),
            },
        });
        v.push(ServerMsg::Reply {
            tag: 2,
            reply: ServerReply::Done,
        });
        v.push(ServerMsg::Reply {
            tag: 1,
            reply: ServerReply::HbRegions(vec![HbRegionInfo {
                device: b"/tmp/r".to_vec(),
                uuid: [9; 16],
                kind: "raw".into(),
                block_bytes: 512,
                start_byte: 512,
                slots: 255,
                node: 1,
                interval_ms: 1000,
                dead_ms: 5000,
                steady: true,
                direct_io: false,
                live: vec![2, 3],
                iterations: 42,
                problem: Some("another writer".into()),
                refs: vec![("hb_ctl".into(), 1), ("ocfs2".into(), 2)],
            }]),
        });
        v
    }

    #[test]
    fn every_message_round_trips() {
        for m in client_msgs() {
            let b = encode_client(&m);
            assert_eq!(
                decode_client(&b).unwrap(),
                Some((m.clone(), b.len())),
                "{m:?}"
            );
        }
        for m in server_msgs() {
            let b = encode_server(&m);
            assert_eq!(
                decode_server(&b).unwrap(),
                Some((m.clone(), b.len())),
                "{m:?}"
            );
        }
    }

    #[test]
    fn partial_frames_need_more_and_never_fail() {
        for m in client_msgs() {
            let b = encode_client(&m);
            for n in 0..b.len() {
                assert_eq!(decode_client(&b[..n]).unwrap(), None);
            }
        }
    }

    #[test]
    fn appending_frames_to_a_buffer() {
        let mut buf = encode_server(&server_msgs()[0]);
        let first = buf.len();
        buf = encode_server_into(&server_msgs()[2], buf);
        let (m, used) = decode_server(&buf).unwrap().unwrap();
        assert_eq!((m, used), (server_msgs()[0].clone(), first));
        assert_eq!(
            decode_server(&buf[first..]).unwrap().unwrap().0,
            server_msgs()[2]
        );
        let buf = encode_client_into(&client_msgs()[1], vec![9, 9]);
        assert_eq!(
            decode_client(&buf[2..]).unwrap().unwrap().0,
            client_msgs()[1]
        );
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut b = encode_client(&client_msgs()[0]);
        let first = b.len();
        b.extend(encode_client(&client_msgs()[1]));
        let (_, used) = decode_client(&b).unwrap().unwrap();
        assert_eq!(used, first);
        assert!(decode_client(&b[used..]).unwrap().is_some());
    }

    #[test]
    fn replies_may_be_larger_than_requests() {
        let many: Vec<ResourceInfo> = (0..2000u32)
            .map(|i| ResourceInfo {
                domain: b"d".to_vec(),
                name: format!("resource-{i}").into_bytes(),
                master: NodeId(1),
                lvb: LvbInfo {
                    value: [7; LVB_LEN],
                    seq: u64::from(i),
                    valid: true,
                },
                granted: Vec::new(),
                converting: Vec::new(),
                waiting: Vec::new(),
                node_lock: None,
                nodes: Vec::new(),
            })
            .collect();
        let msg = ServerMsg::Reply {
            tag: 9,
            reply: ServerReply::Locks(many),
        };
        let frame = encode_server(&msg);
        assert!(frame.len() > MAX_FRAME);
        let (back, used) = decode_server(&frame).unwrap().unwrap();
        assert_eq!((back, used), (msg, frame.len()));
        let big = ((MAX_REPLY_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            decode_server(&big),
            Err(DecodeError::TooLarge(MAX_REPLY_FRAME + 1))
        );
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let big = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            decode_client(&big),
            Err(DecodeError::TooLarge(MAX_FRAME + 1))
        );
        let mut junk = vec![3, 0, 0, 0];
        junk.extend([0xde, 0xad, 0xbe]);
        assert!(decode_client(&junk).is_err());
        // Trailing bytes inside a frame.
        let mut b = encode_client(&ClientMsg::Request {
            tag: 1,
            request: ClientRequest::Status,
        });
        b.push(0);
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(decode_client(&b), Err(DecodeError::Trailing(1)));
        // A huge element count cannot make us allocate.
        let mut b = Vec::new();
        wire::encode_frame(&mut b, |w| {
            w.u8(3);
            w.u8(2);
            w.u64(1);
            w.u32(u32::MAX);
        });
        assert!(decode_server(&b).is_err());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The exact bytes of a few messages, recorded from the encoder (spaces
    /// only separate fields): a change to the encoding fails here even when
    /// encoder and decoder change together.
    #[test]
    fn golden_bytes() {
        let client = [
            (ClientMsg::Hello { version: 4 }, "06000000 6f32746c 0400"),
            (
                ClientMsg::Request {
                    tag: 0x0102_0304_0506_0708,
                    request: ClientRequest::Dlm(Request::Lock(LockRequest {
                        domain: b"dom".to_vec(),
                        resource: vec![0, 1, 255],
                        mode: Mode::CW,
                        flags: LockFlags {
                            noqueue: true,
                            persistent: false,
                            bast_on_busy: true,
                        },
                        timeout_ms: Some(1500),
                    })),
                },
                "22000000 01 0807060504030201 01 03 0300 646f6d 0300 0001ff 02 01 00 01 \
                 01 dc05000000000000",
            ),
            (
                ClientMsg::Request {
                    tag: 8,
                    request: ClientRequest::RegisterCluster {
                        conf: b"/etc/ocfs2/cluster.conf".to_vec(),
                        cluster: "c1".into(),
                        node: "alpha".into(),
                    },
                },
                "2e000000 01 0800000000000000 09 \
                 1700 2f6574632f6f636673322f636c75737465722e636f6e66 0200 6331 0500 616c706861",
            ),
            (
                ClientMsg::Request {
                    tag: 7,
                    request: ClientRequest::HbStop {
                        target: HbTarget::Uuid([7; 16]),
                        service: "hb_ctl".into(),
                    },
                },
                "23000000 01 0700000000000000 06 02 07070707070707070707070707070707 \
                 0600 68625f63746c",
            ),
        ];
        for (m, want) in client {
            let b = encode_client(&m);
            assert_eq!(hex(&b), want.replace(' ', ""), "{m:?}");
            assert_eq!(decode_client(&b), Ok(Some((m, b.len()))));
        }
        let server = [
            (
                ServerMsg::Welcome {
                    version: 4,
                    node: NodeId(4),
                    pid: 1234,
                    fence_grace_ms: 10_000,
                },
                "0c000000 01 0400 04 d2040000 10270000",
            ),
            (
                ServerMsg::Reply {
                    tag: 77,
                    reply: ServerReply::Status(StatusInfo {
                        node: NodeId(1),
                        cluster: Some("c1".into()),
                        pid: 42,
                        uptime_ms: 99,
                        autostarted: true,
                        stats: Stats {
                            domains: 1,
                            resources: 2,
                            locks: 3,
                            clients: 4,
                            counters: Counters {
                                lock_requests: 9,
                                grants: 5,
                                basts: 6,
                                local_grants: 7,
                                remote_requests: 8,
                                ..Default::default()
                            },
                        },
                        nodes: vec![NodeStatus {
                            number: 2,
                            name: "n2".into(),
                            address: "127.0.0.2:7777".into(),
                            local: false,
                            connected: true,
                            heartbeat: false,
                        }],
                        quorum: Some(QuorumState::Fencing),
                    }),
                },
                "aa000000 02 4d00000000000000 05 01 01 0200 6331 2a000000 6300000000000000 01 \
                 0100000000000000 0200000000000000 0300000000000000 0400000000000000 \
                 0900000000000000 0000000000000000 0500000000000000 0000000000000000 \
                 0000000000000000 0000000000000000 0000000000000000 0600000000000000 \
                 0700000000000000 0800000000000000 \
                 01000000 02 0200 6e32 0e00 3132372e302e302e323a37373737 00 01 00 \
                 02",
            ),
            (
                ServerMsg::Event(Event::Failed {
                    lock: LockId(1),
                    failure: Failure::Busy {
                        blockers: vec![holder(2)],
                    },
                }),
                "23000000 03 03 0100000000000000 01 \
                 01000000 0200000000000000 02 ffffffff e8030000 03 ff 01",
            ),
            (
                ServerMsg::Reply {
                    tag: 1,
                    reply: ServerReply::Failed {
                        message: "no such device".into(),
                    },
                },
                "1a000000 02 0100000000000000 0a 0e00 6e6f207375636820646576696365",
            ),
            (
                ServerMsg::Reply {
                    tag: 3,
                    reply: ServerReply::Dlm(Reply::Err(DlmError::ModeTooLow {
                        lock: LockId(2),
                        held: Mode::NL,
                        need: Mode::CR,
                    })),
                },
                "15000000 02 0300000000000000 04 08 0200000000000000 00 01",
            ),
        ];
        for (m, want) in server {
            let b = encode_server(&m);
            assert_eq!(hex(&b), want.replace(' ', ""), "{m:?}");
            assert_eq!(decode_server(&b), Ok(Some((m, b.len()))));
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_client(&b);
            let _ = decode_server(&b);
        }

        #[test]
        fn mutated_messages_never_panic(i in 0usize..40, pos in 0usize..300, byte in proptest::prelude::any::<u8>()) {
            let msgs = server_msgs();
            let mut b = encode_server(&msgs[i % msgs.len()]);
            let p = 4 + pos % (b.len() - 4);
            b[p] = byte;
            let _ = decode_server(&b);
            let cm = client_msgs();
            let mut b = encode_client(&cm[i % cm.len()]);
            let p = 4 + pos % (b.len() - 4);
            b[p] = byte;
            let _ = decode_client(&b);
        }
    }
}
