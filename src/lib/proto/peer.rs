//! The peer wire protocol: frames between the lockd daemons of different
//! nodes, carrying the core's [`PeerMsg`]s.
//!
//! This file owns the encoding of [`PeerFrame`] and of every [`PeerMsg`]
//! field; connecting, retrying and checking who is on the other end are
//! the daemon's.
//!
//! A connection is a stream of frames: a 4-byte little-endian payload
//! length, then the payload (at most [`MAX_PEER_FRAME`] bytes). The first
//! byte of the payload is the frame type:
//!
//! | type | frame | rest of the payload |
//! |---|---|---|
//! | `0x6f` (`o`) | [`PeerFrame::Hello`] | rest of [`PEER_MAGIC`] `2pr`, version u16, cluster str, from u8, from_name str, to u8, generation u64 |
//! | `0x01` | [`PeerFrame::Welcome`] | node u8, generation u64 |
//! | `0x02` | [`PeerFrame::Refused`] | reason str |
//! | `0x03` | [`PeerFrame::Msg`] | message kind u8, then its fields in declaration order |
//! | `0x04` | [`PeerFrame::Keepalive`] | nothing |
//!
//! The hello's type byte is the first byte of the magic, so its payload
//! starts with `o2pr`; anything else starting with `o` (a client's `o2tl`
//! hello on the wrong port, say) is [`DecodeError::BadMagic`].
//!
//! Message kinds: 1 Ask, 2 Answer, 3 Cancel, 4 Freeze, 5 Report, 6 Ready,
//! 7 Done, 8 Lock, 9 Unlock, 10 Grant, 11 Failed, 12 Bast, 13 ProbeBusy,
//! 14 LvbStored, 15 Sync.
//!
//! Fields: integers little-endian (`i32` as its `u32` bits); a str is a u16
//! length and UTF-8; a domain or resource name is a u16 length and at most
//! [`MAX_NAME_LEN`] bytes; a mode is its number, `Option<Mode>` 0xff for
//! `None`; a bool is 0 or 1; a node list is a u8 count and node numbers;
//! other vectors are a u32 count and the items; `Option<LvbCopy>` is a bool
//! then the copy (64-byte value, u64 seq, bool valid); a [`NodeFailure`] is
//! a kind (1 Busy, 2 Deadlock) and a vector of (node u8, mode, pid i32).
//!
//! The encoder never fails: what it cannot represent (a name over
//! [`MAX_NAME_LEN`], a payload over [`MAX_PEER_FRAME`]) is written as it is
//! and refused by the receiving decoder. Strings over 65535 bytes are cut
//! at a character boundary, node lists after 255 nodes.
//!
//! May depend on: `dlm` types, std, `thiserror`.

use super::wire::{DecodeError, Reader, Writer, encode_frame, split_frame};
use crate::dlm::{LvbCopy, MAX_NAME_LEN, NodeFailure, NodeId, PeerMsg, ReportEntry};

/// Version of the peer protocol; the handshake refuses any other.
pub const PEER_VERSION: u16 = 3;
/// Magic at the start of a handshake.
pub const PEER_MAGIC: &[u8; 4] = b"o2pr";
/// Largest frame payload accepted (a Report of many resources can be big).
pub const MAX_PEER_FRAME: usize = 16 << 20;

/// One frame between two lockd daemons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    /// First frame from the connecting node.
    Hello {
        /// Peer protocol version spoken.
        version: u16,
        /// The cluster the connecting node belongs to.
        cluster: String,
        /// The connecting node's number.
        from: u8,
        /// The connecting node's name.
        from_name: String,
        /// The node it means to reach.
        to: u8,
        /// The connecting lockd's incarnation (random per start): a new
        /// one means the node restarted, its old locks gone.
        generation: u64,
    },
    /// The accepting node's answer: the connection is up.
    Welcome {
        /// The accepting node's number.
        node: u8,
        /// The accepting lockd's incarnation.
        generation: u64,
    },
    /// The accepting node refuses (then closes): why.
    Refused {
        /// Why, for the log.
        reason: String,
    },
    /// A lock manager message.
    Msg(PeerMsg),
    /// Nothing to say; keeps the idle timer of the other side from expiring.
    Keepalive,
}

const HELLO: u8 = PEER_MAGIC[0];
const WELCOME: u8 = 1;
const REFUSED: u8 = 2;
const MSG: u8 = 3;
const KEEPALIVE: u8 = 4;

/// Smallest encoded [`ReportEntry`]: empty name, no LVBs.
const MIN_ENTRY_LEN: usize = 2 + 1 + 1 + 1 + 8 + 4 + 1 + 1 + 1;
/// Encoded size of a (node, mode, pid) of a [`NodeFailure`].
const BLOCKER_LEN: usize = 1 + 1 + 4;

// ---------------------------------------------------------------- writing

/// The peer protocol's fields above the primitives.
trait PutPeer {
    /// A domain or resource name.
    fn name(&mut self, b: &[u8]);
    /// A u8 count and the node numbers (at most 255 of them).
    fn nodes(&mut self, nodes: &[NodeId]);
    /// A vector's count.
    fn count(&mut self, n: usize);
    fn lvb(&mut self, l: &LvbCopy);
    fn opt_lvb(&mut self, l: Option<&LvbCopy>);
    fn entries(&mut self, entries: &[ReportEntry]);
    fn failure(&mut self, f: &NodeFailure);
    fn msg(&mut self, m: &PeerMsg);
}

impl PutPeer for Writer<'_> {
    fn name(&mut self, b: &[u8]) {
        self.short_bytes(b);
    }
    fn nodes(&mut self, nodes: &[NodeId]) {
        let n = nodes.len().min(usize::from(u8::MAX));
        self.u8(n as u8);
        for node in &nodes[..n] {
            self.u8(node.0);
        }
    }
    fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn lvb(&mut self, l: &LvbCopy) {
        self.raw(&l.value);
        self.u64(l.seq);
        self.bool(l.valid);
    }
    fn opt_lvb(&mut self, l: Option<&LvbCopy>) {
        self.bool(l.is_some());
        if let Some(l) = l {
            self.lvb(l);
        }
    }
    fn entries(&mut self, entries: &[ReportEntry]) {
        self.count(entries.len());
        for e in entries {
            self.name(&e.resource);
            self.opt_mode(e.granted);
            self.opt_mode(e.want);
            self.bool(e.noqueue);
            self.u64(e.seq);
            self.i32(e.pid);
            self.opt_lvb(e.lvb.as_ref());
            self.opt_lvb(e.master_lvb.as_ref());
            self.bool(e.lost_writer);
        }
    }
    fn failure(&mut self, f: &NodeFailure) {
        let (kind, blockers) = match f {
            NodeFailure::Busy(b) => (1, b),
            NodeFailure::Deadlock(b) => (2, b),
        };
        self.u8(kind);
        self.count(blockers.len());
        for &(node, mode, pid) in blockers {
            self.u8(node.0);
            self.mode(mode);
            self.i32(pid);
        }
    }
    fn msg(&mut self, m: &PeerMsg) {
        match m {
            PeerMsg::Ask { domain, req } => {
                self.u8(1);
                self.name(domain);
                self.u64(*req);
            }
            PeerMsg::Answer {
                domain,
                req,
                ok,
                epoch,
                members,
                frozen,
            } => {
                self.u8(2);
                self.name(domain);
                self.u64(*req);
                self.bool(*ok);
                self.u64(*epoch);
                self.nodes(members);
                self.u64(*frozen);
            }
            PeerMsg::Cancel { domain, req } => {
                self.u8(3);
                self.name(domain);
                self.u64(*req);
            }
            PeerMsg::Freeze {
                domain,
                epoch,
                old,
                new,
                initiator,
                lost,
            } => {
                self.u8(4);
                self.name(domain);
                self.u64(*epoch);
                self.nodes(old);
                self.nodes(new);
                self.u8(initiator.0);
                self.nodes(lost);
            }
            PeerMsg::Report {
                domain,
                epoch,
                entries,
            } => {
                self.u8(5);
                self.name(domain);
                self.u64(*epoch);
                self.entries(entries);
            }
            PeerMsg::Ready { domain, epoch } => {
                self.u8(6);
                self.name(domain);
                self.u64(*epoch);
            }
            PeerMsg::Done { domain, epoch, req } => {
                self.u8(7);
                self.name(domain);
                self.u64(*epoch);
                self.u64(*req);
            }
            PeerMsg::Lock {
                domain,
                epoch,
                resource,
                want,
                noqueue,
                seq,
                pid,
                lvb,
            } => {
                self.u8(8);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.mode(*want);
                self.bool(*noqueue);
                self.u64(*seq);
                self.i32(*pid);
                self.opt_lvb(lvb.as_ref());
            }
            PeerMsg::Unlock {
                domain,
                epoch,
                resource,
                lvb,
            } => {
                self.u8(9);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.opt_lvb(lvb.as_ref());
            }
            PeerMsg::Grant {
                domain,
                epoch,
                resource,
                mode,
                seq,
                lvb,
            } => {
                self.u8(10);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.mode(*mode);
                self.u64(*seq);
                self.lvb(lvb);
            }
            PeerMsg::Failed {
                domain,
                epoch,
                resource,
                want,
                seq,
                failure,
            } => {
                self.u8(11);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.mode(*want);
                self.u64(*seq);
                self.failure(failure);
            }
            PeerMsg::Bast {
                domain,
                epoch,
                resource,
                mode,
                probe,
            } => {
                self.u8(12);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.mode(*mode);
                self.bool(*probe);
            }
            PeerMsg::ProbeBusy {
                domain,
                epoch,
                resource,
                pid,
            } => {
                self.u8(13);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.i32(*pid);
            }
            PeerMsg::LvbStored {
                domain,
                epoch,
                resource,
                seq,
            } => {
                self.u8(14);
                self.name(domain);
                self.u64(*epoch);
                self.name(resource);
                self.u64(*seq);
            }
            PeerMsg::Sync {
                domain,
                epoch,
                entries,
            } => {
                self.u8(15);
                self.name(domain);
                self.u64(*epoch);
                self.entries(entries);
            }
        }
    }
}

/// Appends one frame (4-byte little-endian payload length, then payload) to `buf`.
pub fn encode_peer_into(frame: &PeerFrame, buf: &mut Vec<u8>) {
    // Too long to say: the length is u32::MAX, refused as too large.
    encode_frame(buf, |w| match frame {
        PeerFrame::Hello {
            version,
            cluster,
            from,
            from_name,
            to,
            generation,
        } => {
            w.raw(PEER_MAGIC);
            w.u16(*version);
            w.short_str(cluster);
            w.u8(*from);
            w.short_str(from_name);
            w.u8(*to);
            w.u64(*generation);
        }
        PeerFrame::Welcome { node, generation } => {
            w.u8(WELCOME);
            w.u8(*node);
            w.u64(*generation);
        }
        PeerFrame::Refused { reason } => {
            w.u8(REFUSED);
            w.short_str(reason);
        }
        PeerFrame::Msg(m) => {
            w.u8(MSG);
            w.msg(m);
        }
        PeerFrame::Keepalive => w.u8(KEEPALIVE),
    });
}

// ---------------------------------------------------------------- reading

/// The peer protocol's fields above the primitives.
trait GetPeer {
    fn node(&mut self) -> Result<NodeId, DecodeError>;
    /// A domain or resource name: at most [`MAX_NAME_LEN`] bytes.
    fn name(&mut self) -> Result<Vec<u8>, DecodeError>;
    fn nodes(&mut self) -> Result<Vec<NodeId>, DecodeError>;
    fn lvb(&mut self) -> Result<LvbCopy, DecodeError>;
    fn opt_lvb(&mut self) -> Result<Option<LvbCopy>, DecodeError>;
    fn entries(&mut self) -> Result<Vec<ReportEntry>, DecodeError>;
    fn failure(&mut self) -> Result<NodeFailure, DecodeError>;
    fn msg(&mut self) -> Result<PeerMsg, DecodeError>;
}

impl GetPeer for Reader<'_> {
    fn node(&mut self) -> Result<NodeId, DecodeError> {
        self.u8().map(NodeId)
    }
    fn name(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > MAX_NAME_LEN {
            return Err(DecodeError::TooLarge(n));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn nodes(&mut self) -> Result<Vec<NodeId>, DecodeError> {
        let n = usize::from(self.u8()?);
        Ok(self.take(n)?.iter().copied().map(NodeId).collect())
    }
    fn lvb(&mut self) -> Result<LvbCopy, DecodeError> {
        Ok(LvbCopy {
            value: self.array()?,
            seq: self.u64()?,
            valid: self.bool()?,
        })
    }
    fn opt_lvb(&mut self) -> Result<Option<LvbCopy>, DecodeError> {
        if self.bool()? {
            self.lvb().map(Some)
        } else {
            Ok(None)
        }
    }
    fn entries(&mut self) -> Result<Vec<ReportEntry>, DecodeError> {
        let n = self.count(MIN_ENTRY_LEN)?;
        (0..n)
            .map(|_| {
                Ok(ReportEntry {
                    resource: self.name()?,
                    granted: self.opt_mode()?,
                    want: self.opt_mode()?,
                    noqueue: self.bool()?,
                    seq: self.u64()?,
                    pid: self.i32()?,
                    lvb: self.opt_lvb()?,
                    master_lvb: self.opt_lvb()?,
                    lost_writer: self.bool()?,
                })
            })
            .collect()
    }
    fn failure(&mut self) -> Result<NodeFailure, DecodeError> {
        let kind = self.u8()?;
        if !matches!(kind, 1 | 2) {
            return Err(DecodeError::Unknown {
                what: "node failure",
                value: kind,
            });
        }
        let n = self.count(BLOCKER_LEN)?;
        let blockers = (0..n)
            .map(|_| Ok((self.node()?, self.mode()?, self.i32()?)))
            .collect::<Result<_, DecodeError>>()?;
        Ok(if kind == 1 {
            NodeFailure::Busy(blockers)
        } else {
            NodeFailure::Deadlock(blockers)
        })
    }
    fn msg(&mut self) -> Result<PeerMsg, DecodeError> {
        Ok(match self.u8()? {
            1 => PeerMsg::Ask {
                domain: self.name()?,
                req: self.u64()?,
            },
            2 => PeerMsg::Answer {
                domain: self.name()?,
                req: self.u64()?,
                ok: self.bool()?,
                epoch: self.u64()?,
                members: self.nodes()?,
                frozen: self.u64()?,
            },
            3 => PeerMsg::Cancel {
                domain: self.name()?,
                req: self.u64()?,
            },
            4 => PeerMsg::Freeze {
                domain: self.name()?,
                epoch: self.u64()?,
                old: self.nodes()?,
                new: self.nodes()?,
                initiator: self.node()?,
                lost: self.nodes()?,
            },
            5 => PeerMsg::Report {
                domain: self.name()?,
                epoch: self.u64()?,
                entries: self.entries()?,
            },
            6 => PeerMsg::Ready {
                domain: self.name()?,
                epoch: self.u64()?,
            },
            7 => PeerMsg::Done {
                domain: self.name()?,
                epoch: self.u64()?,
                req: self.u64()?,
            },
            8 => PeerMsg::Lock {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                want: self.mode()?,
                noqueue: self.bool()?,
                seq: self.u64()?,
                pid: self.i32()?,
                lvb: self.opt_lvb()?,
            },
            9 => PeerMsg::Unlock {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                lvb: self.opt_lvb()?,
            },
            10 => PeerMsg::Grant {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                mode: self.mode()?,
                seq: self.u64()?,
                lvb: self.lvb()?,
            },
            11 => PeerMsg::Failed {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                want: self.mode()?,
                seq: self.u64()?,
                failure: self.failure()?,
            },
            12 => PeerMsg::Bast {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                mode: self.mode()?,
                probe: self.bool()?,
            },
            13 => PeerMsg::ProbeBusy {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                pid: self.i32()?,
            },
            14 => PeerMsg::LvbStored {
                domain: self.name()?,
                epoch: self.u64()?,
                resource: self.name()?,
                seq: self.u64()?,
            },
            15 => PeerMsg::Sync {
                domain: self.name()?,
                epoch: self.u64()?,
                entries: self.entries()?,
            },
            value => {
                return Err(DecodeError::Unknown {
                    what: "peer message kind",
                    value,
                });
            }
        })
    }
}

/// Decodes one frame from the front of `buf`: Ok(None) when more bytes are
/// needed, Ok(Some((frame, bytes_used))) otherwise. Any malformed input is
/// an Err (never a panic, never an allocation driven by an untrusted length
/// beyond the bytes actually present).
pub fn decode_peer(buf: &[u8]) -> Result<Option<(PeerFrame, usize)>, DecodeError> {
    let Some((payload, used)) = split_frame(buf, MAX_PEER_FRAME)? else {
        return Ok(None);
    };
    let mut r = Reader::new(payload, "peer frame");
    let frame = match r.u8()? {
        HELLO => {
            if !payload.starts_with(PEER_MAGIC) {
                return Err(DecodeError::BadMagic);
            }
            r.take(PEER_MAGIC.len() - 1)?;
            r.set_what("hello");
            PeerFrame::Hello {
                version: r.u16()?,
                cluster: r.short_str("cluster name")?,
                from: r.u8()?,
                from_name: r.short_str("node name")?,
                to: r.u8()?,
                // Version 1 and 2 hellos end here: read as generation 0,
                // so that the version check refuses them by name.
                generation: if r.is_empty() { 0 } else { r.u64()? },
            }
        }
        WELCOME => {
            r.set_what("welcome");
            PeerFrame::Welcome {
                node: r.u8()?,
                generation: r.u64()?,
            }
        }
        REFUSED => {
            r.set_what("refusal");
            PeerFrame::Refused {
                reason: r.short_str("refusal reason")?,
            }
        }
        MSG => {
            r.set_what("peer message");
            PeerFrame::Msg(r.msg()?)
        }
        KEEPALIVE => PeerFrame::Keepalive,
        value => {
            return Err(DecodeError::Unknown {
                what: "peer frame type",
                value,
            });
        }
    };
    r.end()?;
    Ok(Some((frame, used)))
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::dlm::{LVB_LEN, Mode};
    use crate::proto::wire::NO_MODE;

    fn lvb(fill: u8, seq: u64, valid: bool) -> LvbCopy {
        let mut value = [0; LVB_LEN];
        for (i, b) in value.iter_mut().enumerate() {
            *b = fill.wrapping_add(i as u8);
        }
        LvbCopy { value, seq, valid }
    }

    fn entry(resource: &[u8], granted: Option<Mode>, want: Option<Mode>) -> ReportEntry {
        ReportEntry {
            resource: resource.to_vec(),
            granted,
            want,
            noqueue: true,
            seq: 0x0102_0304_0506_0708,
            pid: -4242,
            lvb: Some(lvb(7, 99, false)),
            master_lvb: None,
            lost_writer: false,
        }
    }

    /// Every message kind, with every mode, option and vector shape somewhere.
    fn msgs() -> Vec<PeerMsg> {
        let dom = b"webfarm".to_vec();
        let res = vec![0xff; MAX_NAME_LEN];
        vec![
            PeerMsg::Ask {
                domain: dom.clone(),
                req: u64::MAX,
            },
            PeerMsg::Answer {
                domain: dom.clone(),
                req: 17,
                ok: true,
                epoch: 9,
                members: vec![NodeId(0), NodeId(3), NodeId(254)],
                frozen: 10,
            },
            PeerMsg::Answer {
                domain: Vec::new(),
                req: 0,
                ok: false,
                epoch: 0,
                members: Vec::new(),
                frozen: 0,
            },
            PeerMsg::Cancel {
                domain: dom.clone(),
                req: 5,
            },
            PeerMsg::Freeze {
                domain: dom.clone(),
                epoch: 10,
                old: vec![NodeId(1), NodeId(2)],
                new: vec![NodeId(1), NodeId(2), NodeId(7)],
                initiator: NodeId(7),
                lost: vec![NodeId(3)],
            },
            PeerMsg::Report {
                domain: dom.clone(),
                epoch: 10,
                entries: vec![
                    entry(b"r1", Some(Mode::NL), Some(Mode::CR)),
                    ReportEntry {
                        resource: res.clone(),
                        granted: None,
                        want: None,
                        noqueue: false,
                        seq: 1,
                        pid: i32::MAX,
                        lvb: None,
                        master_lvb: Some(lvb(200, u64::MAX, true)),
                        lost_writer: true,
                    },
                ],
            },
            PeerMsg::Report {
                domain: dom.clone(),
                epoch: 11,
                entries: Vec::new(),
            },
            PeerMsg::Ready {
                domain: dom.clone(),
                epoch: 12,
            },
            PeerMsg::Done {
                domain: dom.clone(),
                epoch: 13,
                req: 14,
            },
            PeerMsg::Lock {
                domain: dom.clone(),
                epoch: 15,
                resource: b"res".to_vec(),
                want: Mode::CW,
                noqueue: true,
                seq: 16,
                pid: -1,
                lvb: Some(lvb(1, 2, true)),
            },
            PeerMsg::Lock {
                domain: dom.clone(),
                epoch: 15,
                resource: b"res".to_vec(),
                want: Mode::PR,
                noqueue: false,
                seq: 17,
                pid: 0,
                lvb: None,
            },
            PeerMsg::Unlock {
                domain: dom.clone(),
                epoch: 18,
                resource: res.clone(),
                lvb: Some(lvb(3, 4, false)),
            },
            PeerMsg::Unlock {
                domain: dom.clone(),
                epoch: 18,
                resource: Vec::new(),
                lvb: None,
            },
            PeerMsg::Grant {
                domain: dom.clone(),
                epoch: 19,
                resource: b"res".to_vec(),
                mode: Mode::PW,
                seq: 20,
                lvb: LvbCopy::ZERO,
            },
            PeerMsg::Failed {
                domain: dom.clone(),
                epoch: 21,
                resource: b"res".to_vec(),
                want: Mode::EX,
                seq: 22,
                failure: NodeFailure::Busy(vec![
                    (NodeId(2), Mode::PR, 1234),
                    (NodeId(3), Mode::CR, -5),
                ]),
            },
            PeerMsg::Failed {
                domain: dom.clone(),
                epoch: 23,
                resource: b"res".to_vec(),
                want: Mode::EX,
                seq: 24,
                failure: NodeFailure::Deadlock(vec![(NodeId(4), Mode::PW, 77)]),
            },
            PeerMsg::Failed {
                domain: dom.clone(),
                epoch: 23,
                resource: b"res".to_vec(),
                want: Mode::NL,
                seq: 25,
                failure: NodeFailure::Busy(Vec::new()),
            },
            PeerMsg::Bast {
                domain: dom.clone(),
                epoch: 26,
                resource: b"res".to_vec(),
                mode: Mode::EX,
                probe: true,
            },
            PeerMsg::ProbeBusy {
                domain: dom.clone(),
                epoch: 27,
                resource: b"res".to_vec(),
                pid: 4242,
            },
            PeerMsg::LvbStored {
                domain: dom.clone(),
                epoch: 28,
                resource: b"res".to_vec(),
                seq: 29,
            },
            PeerMsg::Sync {
                domain: dom,
                epoch: 30,
                entries: vec![
                    entry(b"a", Some(Mode::EX), None),
                    entry(&res, None, Some(Mode::PW)),
                ],
            },
        ]
    }

    fn frames() -> Vec<PeerFrame> {
        let mut f = vec![
            PeerFrame::Hello {
                version: PEER_VERSION,
                cluster: "ocfs2".into(),
                from: 3,
                from_name: "nöde-three".into(),
                to: 200,
                generation: 0x0123_4567_89ab_cdef,
            },
            PeerFrame::Hello {
                version: 0xbeef,
                cluster: String::new(),
                from: 0,
                from_name: String::new(),
                to: 0,
                generation: 0,
            },
            PeerFrame::Welcome {
                node: 200,
                generation: u64::MAX,
            },
            PeerFrame::Refused {
                reason: "wrong cluster \"x\"".into(),
            },
            PeerFrame::Refused {
                reason: String::new(),
            },
            PeerFrame::Keepalive,
        ];
        f.extend(msgs().into_iter().map(PeerFrame::Msg));
        f
    }

    fn encode(f: &PeerFrame) -> Vec<u8> {
        let mut b = Vec::new();
        encode_peer_into(f, &mut b);
        b
    }

    /// A frame around a payload written by `body`.
    fn frame_of(body: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
        let mut b = Vec::new();
        encode_frame(&mut b, body);
        b
    }

    /// The start of a Bast message, up to its mode.
    fn bast_head(w: &mut Writer<'_>) {
        w.u8(MSG);
        w.u8(12);
        w.name(b"d");
        w.u64(1);
        w.name(b"r");
    }

    #[test]
    fn every_frame_round_trips() {
        for f in frames() {
            let b = encode(&f);
            assert_eq!(decode_peer(&b), Ok(Some((f.clone(), b.len()))), "{f:?}");
        }
    }

    /// The modes a message carries, `None` for an absent optional one.
    fn modes_in(m: &PeerMsg) -> Vec<Option<Mode>> {
        let of_entries = |es: &[ReportEntry]| -> Vec<Option<Mode>> {
            es.iter().flat_map(|e| [e.granted, e.want]).collect()
        };
        match m {
            PeerMsg::Report { entries, .. } | PeerMsg::Sync { entries, .. } => of_entries(entries),
            PeerMsg::Lock { want, .. } => vec![Some(*want)],
            PeerMsg::Grant { mode, .. } | PeerMsg::Bast { mode, .. } => vec![Some(*mode)],
            PeerMsg::Failed { want, failure, .. } => {
                let (NodeFailure::Busy(b) | NodeFailure::Deadlock(b)) = failure;
                let mut v = vec![Some(*want)];
                v.extend(b.iter().map(|&(_, m, _)| Some(m)));
                v
            }
            _ => Vec::new(),
        }
    }

    #[test]
    fn samples_cover_every_mode_and_failure() {
        let all: Vec<Option<Mode>> = msgs().iter().flat_map(modes_in).collect();
        for m in Mode::ALL {
            assert!(all.contains(&Some(m)), "{m:?}");
        }
        assert!(all.contains(&None));
        let ms = msgs();
        assert!(ms.iter().any(|m| matches!(
            m,
            PeerMsg::Failed {
                failure: NodeFailure::Busy(_),
                ..
            }
        )));
        assert!(ms.iter().any(|m| matches!(
            m,
            PeerMsg::Failed {
                failure: NodeFailure::Deadlock(_),
                ..
            }
        )));
    }

    #[test]
    fn every_prefix_needs_more() {
        for f in frames() {
            let b = encode(&f);
            for n in 0..b.len() {
                assert_eq!(decode_peer(&b[..n]), Ok(None), "{f:?} cut at {n}");
            }
            assert_eq!(decode_peer(&b), Ok(Some((f, b.len()))));
        }
    }

    #[test]
    fn frames_back_to_back() {
        let fs = frames();
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for f in &fs {
            encode_peer_into(f, &mut buf);
            ends.push(buf.len());
        }
        let mut at = 0;
        for (f, end) in fs.iter().zip(ends) {
            let (got, used) = decode_peer(&buf[at..]).unwrap().unwrap();
            assert_eq!(&got, f);
            assert_eq!(at + used, end);
            at = end;
        }
        assert_eq!(decode_peer(&buf[at..]), Ok(None));
    }

    #[test]
    fn bad_magic() {
        let b = frame_of(|w| w.raw(b"o2tl\x03\x00"));
        assert_eq!(decode_peer(&b), Err(DecodeError::BadMagic));
        let b = frame_of(|w| w.raw(b"o2p"));
        assert_eq!(decode_peer(&b), Err(DecodeError::BadMagic));
    }

    #[test]
    fn unknown_type_bytes() {
        for t in [0, 5, 0x6e, 0xff] {
            let b = frame_of(|w| w.u8(t));
            assert_eq!(
                decode_peer(&b),
                Err(DecodeError::Unknown {
                    what: "peer frame type",
                    value: t
                })
            );
        }
        for k in [0, 16, 0xff] {
            let b = frame_of(|w| {
                w.u8(MSG);
                w.u8(k);
            });
            assert_eq!(
                decode_peer(&b),
                Err(DecodeError::Unknown {
                    what: "peer message kind",
                    value: k
                })
            );
        }
        let b = frame_of(|w| {
            w.u8(MSG);
            w.u8(11);
            w.name(b"d");
            w.u64(1);
            w.name(b"r");
            w.mode(Mode::EX);
            w.u64(2);
            w.u8(3);
            w.u32(0);
        });
        assert_eq!(
            decode_peer(&b),
            Err(DecodeError::Unknown {
                what: "node failure",
                value: 3
            })
        );
    }

    #[test]
    fn unknown_mode() {
        for v in [6, 0xfe, NO_MODE] {
            let b = frame_of(|w| {
                bast_head(w);
                w.u8(v);
                w.bool(false);
            });
            assert_eq!(
                decode_peer(&b),
                Err(DecodeError::Unknown {
                    what: "mode",
                    value: v
                })
            );
        }
        // In an Option<Mode>, 0xff is None but 6 is still wrong.
        let b = frame_of(|w| {
            w.u8(MSG);
            w.u8(5);
            w.name(b"d");
            w.u64(1);
            w.count(1);
            w.name(b"r");
            w.u8(6);
            w.raw(&[0; MIN_ENTRY_LEN]);
        });
        assert_eq!(
            decode_peer(&b),
            Err(DecodeError::Unknown {
                what: "mode",
                value: 6
            })
        );
    }

    #[test]
    fn bad_bool() {
        let b = frame_of(|w| {
            bast_head(w);
            w.mode(Mode::PR);
            w.u8(2);
        });
        assert_eq!(
            decode_peer(&b),
            Err(DecodeError::Unknown {
                what: "boolean",
                value: 2
            })
        );
    }

    #[test]
    fn name_of_65_bytes() {
        let long = vec![b'x'; MAX_NAME_LEN + 1];
        let b = encode(&PeerFrame::Msg(PeerMsg::Ready {
            domain: long.clone(),
            epoch: 1,
        }));
        assert_eq!(
            decode_peer(&b),
            Err(DecodeError::TooLarge(MAX_NAME_LEN + 1))
        );
        let b = encode(&PeerFrame::Msg(PeerMsg::ProbeBusy {
            domain: b"d".to_vec(),
            epoch: 1,
            resource: long,
            pid: 1,
        }));
        assert_eq!(
            decode_peer(&b),
            Err(DecodeError::TooLarge(MAX_NAME_LEN + 1))
        );
    }

    #[test]
    fn huge_vector_count() {
        for count in [u32::MAX, 1 << 20, 2] {
            let b = frame_of(|w| {
                w.u8(MSG);
                w.u8(15);
                w.name(b"d");
                w.u64(1);
                w.count(count as usize);
                // Room for one small entry, not two.
                w.raw(&[0; MIN_ENTRY_LEN + 1]);
            });
            assert_eq!(decode_peer(&b), Err(DecodeError::Truncated("peer message")));
        }
        let b = frame_of(|w| {
            w.u8(MSG);
            w.u8(11);
            w.name(b"d");
            w.u64(1);
            w.name(b"r");
            w.mode(Mode::EX);
            w.u64(2);
            w.u8(1);
            w.count(u32::MAX as usize);
        });
        assert_eq!(decode_peer(&b), Err(DecodeError::Truncated("peer message")));
    }

    #[test]
    fn truncated_payload() {
        // A complete frame whose payload stops inside a message.
        for f in frames().into_iter().filter(|f| *f != PeerFrame::Keepalive) {
            let mut b = encode(&f);
            b.pop();
            let len = (b.len() - 4) as u32;
            b[..4].copy_from_slice(&len.to_le_bytes());
            assert!(
                matches!(decode_peer(&b), Err(DecodeError::Truncated(_))),
                "{f:?}: {:?}",
                decode_peer(&b)
            );
        }
        // A name longer than what follows it.
        let b = frame_of(|w| {
            w.u8(MSG);
            w.u8(6);
            w.u16(40);
            w.raw(b"short");
        });
        assert_eq!(decode_peer(&b), Err(DecodeError::Truncated("peer message")));
        // An empty payload.
        assert_eq!(
            decode_peer(&[0, 0, 0, 0]),
            Err(DecodeError::Truncated("peer frame"))
        );
        // A hello cut after its magic.
        let b = frame_of(|w| w.raw(PEER_MAGIC));
        assert_eq!(decode_peer(&b), Err(DecodeError::Truncated("hello")));
    }

    #[test]
    fn trailing_byte() {
        for f in frames() {
            let mut b = encode(&f);
            b.push(0);
            let len = (b.len() - 4) as u32;
            b[..4].copy_from_slice(&len.to_le_bytes());
            assert_eq!(decode_peer(&b), Err(DecodeError::Trailing(1)), "{f:?}");
        }
    }

    #[test]
    fn oversized_length_prefix() {
        let b = ((MAX_PEER_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            decode_peer(&b),
            Err(DecodeError::TooLarge(MAX_PEER_FRAME + 1))
        );
        assert_eq!(
            decode_peer(&[0xff; 4]),
            Err(DecodeError::TooLarge(u32::MAX as usize))
        );
        // The limit itself is only waited for.
        let b = (MAX_PEER_FRAME as u32).to_le_bytes();
        assert_eq!(decode_peer(&b), Ok(None));
    }

    #[test]
    fn bad_utf8() {
        let b = frame_of(|w| {
            w.u8(REFUSED);
            w.u16(2);
            w.raw(&[0xc3, 0x28]);
        });
        assert_eq!(decode_peer(&b), Err(DecodeError::Utf8("refusal reason")));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The exact bytes of a few frames, recorded from the encoder (spaces
    /// only separate fields): a change to the encoding fails here even when
    /// encoder and decoder change together.
    #[test]
    fn golden_bytes() {
        let dom = || b"webfarm".to_vec();
        let cases = [
            (
                PeerFrame::Hello {
                    version: 3,
                    cluster: "ocfs2".into(),
                    from: 3,
                    from_name: "nöde-three".into(),
                    to: 200,
                    generation: 0x0123_4567_89ab_cdef,
                },
                "24000000 6f327072 0300 0500 6f63667332 03 0b00 6ec3b664652d7468726565 c8 \
                 efcdab8967452301",
            ),
            (
                PeerFrame::Welcome {
                    node: 200,
                    generation: u64::MAX,
                },
                "0a000000 01 c8 ffffffffffffffff",
            ),
            (
                PeerFrame::Refused {
                    reason: "wrong cluster".into(),
                },
                "10000000 02 0d00 77726f6e6720636c7573746572",
            ),
            (PeerFrame::Keepalive, "01000000 04"),
            (
                PeerFrame::Msg(PeerMsg::Lock {
                    domain: dom(),
                    epoch: 15,
                    resource: b"res".to_vec(),
                    want: Mode::CW,
                    noqueue: true,
                    seq: 16,
                    pid: -1,
                    lvb: Some(lvb(1, 2, true)),
                }),
                "70000000 03 08 0700 7765626661726d 0f00000000000000 0300 726573 02 01 \
                 1000000000000000 ffffffff \
                 01 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\
                 2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40 \
                 0200000000000000 01",
            ),
            (
                PeerFrame::Msg(PeerMsg::Failed {
                    domain: dom(),
                    epoch: 21,
                    resource: b"res".to_vec(),
                    want: Mode::EX,
                    seq: 22,
                    failure: NodeFailure::Busy(vec![
                        (NodeId(2), Mode::PR, 1234),
                        (NodeId(3), Mode::CR, -5),
                    ]),
                }),
                "32000000 03 0b 0700 7765626661726d 1500000000000000 0300 726573 05 \
                 1600000000000000 01 02000000 02 03 d2040000 03 01 fbffffff",
            ),
            (
                PeerFrame::Msg(PeerMsg::Freeze {
                    domain: dom(),
                    epoch: 10,
                    old: vec![NodeId(1), NodeId(2)],
                    new: vec![NodeId(1), NodeId(2), NodeId(7)],
                    initiator: NodeId(7),
                    lost: vec![NodeId(3)],
                }),
                "1d000000 03 04 0700 7765626661726d 0a00000000000000 02 0102 03 010207 07 01 03",
            ),
            (
                PeerFrame::Msg(PeerMsg::Report {
                    domain: b"d".to_vec(),
                    epoch: 10,
                    entries: vec![ReportEntry {
                        resource: b"r1".to_vec(),
                        granted: Some(Mode::NL),
                        want: None,
                        noqueue: false,
                        seq: 1,
                        pid: 7,
                        lvb: None,
                        master_lvb: None,
                        lost_writer: true,
                    }],
                }),
                "27000000 03 05 0100 64 0a00000000000000 01000000 \
                 0200 7231 00 ff 00 0100000000000000 07000000 00 00 01",
            ),
        ];
        for (f, want) in cases {
            let b = encode(&f);
            assert_eq!(hex(&b), want.replace(' ', ""), "{f:?}");
            assert_eq!(decode_peer(&b), Ok(Some((f, b.len()))));
        }
    }

    // ------------------------------------------------------------ properties

    fn name() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..=MAX_NAME_LEN)
    }

    fn mode() -> impl Strategy<Value = Mode> {
        proptest::sample::select(Mode::ALL.to_vec())
    }

    fn nodes() -> impl Strategy<Value = Vec<NodeId>> {
        vec(any::<u8>().prop_map(NodeId), 0..8)
    }

    fn lvb_copy() -> impl Strategy<Value = LvbCopy> {
        (vec(any::<u8>(), LVB_LEN), any::<u64>(), any::<bool>()).prop_map(|(v, seq, valid)| {
            LvbCopy {
                value: v.try_into().expect("LVB_LEN bytes"),
                seq,
                valid,
            }
        })
    }

    fn entries() -> impl Strategy<Value = Vec<ReportEntry>> {
        let entry = (
            name(),
            proptest::option::of(mode()),
            proptest::option::of(mode()),
            any::<bool>(),
            any::<u64>(),
            any::<i32>(),
            proptest::option::of(lvb_copy()),
            (proptest::option::of(lvb_copy()), any::<bool>()),
        )
            .prop_map(
                |(resource, granted, want, noqueue, seq, pid, lvb, (master_lvb, lost_writer))| {
                    ReportEntry {
                        resource,
                        granted,
                        want,
                        noqueue,
                        seq,
                        pid,
                        lvb,
                        master_lvb,
                        lost_writer,
                    }
                },
            );
        vec(entry, 0..4)
    }

    fn failure() -> impl Strategy<Value = NodeFailure> {
        let blockers = vec((any::<u8>().prop_map(NodeId), mode(), any::<i32>()), 0..4);
        (any::<bool>(), blockers).prop_map(|(busy, b)| {
            if busy {
                NodeFailure::Busy(b)
            } else {
                NodeFailure::Deadlock(b)
            }
        })
    }

    fn peer_msg() -> impl Strategy<Value = PeerMsg> {
        let u = any::<u64>;
        prop_oneof![
            (name(), u()).prop_map(|(domain, req)| PeerMsg::Ask { domain, req }),
            (name(), u(), any::<bool>(), u(), nodes()).prop_map(
                |(domain, req, ok, epoch, members)| PeerMsg::Answer {
                    frozen: epoch.wrapping_add(1),
                    domain,
                    req,
                    ok,
                    epoch,
                    members,
                }
            ),
            (name(), u()).prop_map(|(domain, req)| PeerMsg::Cancel { domain, req }),
            (name(), u(), nodes(), nodes(), any::<u8>(), nodes()).prop_map(
                |(domain, epoch, old, new, i, lost)| PeerMsg::Freeze {
                    domain,
                    epoch,
                    old,
                    new,
                    initiator: NodeId(i),
                    lost,
                }
            ),
            (name(), u(), entries()).prop_map(|(domain, epoch, entries)| PeerMsg::Report {
                domain,
                epoch,
                entries
            }),
            (name(), u()).prop_map(|(domain, epoch)| PeerMsg::Ready { domain, epoch }),
            (name(), u(), u()).prop_map(|(domain, epoch, req)| PeerMsg::Done {
                domain,
                epoch,
                req
            }),
            (
                (name(), u(), name()),
                (mode(), any::<bool>(), u(), any::<i32>()),
                proptest::option::of(lvb_copy())
            )
                .prop_map(
                    |((domain, epoch, resource), (want, noqueue, seq, pid), lvb)| {
                        PeerMsg::Lock {
                            domain,
                            epoch,
                            resource,
                            want,
                            noqueue,
                            seq,
                            pid,
                            lvb,
                        }
                    }
                ),
            (name(), u(), name(), proptest::option::of(lvb_copy())).prop_map(
                |(domain, epoch, resource, lvb)| PeerMsg::Unlock {
                    domain,
                    epoch,
                    resource,
                    lvb
                }
            ),
            (name(), u(), name(), mode(), u(), lvb_copy()).prop_map(
                |(domain, epoch, resource, mode, seq, lvb)| PeerMsg::Grant {
                    domain,
                    epoch,
                    resource,
                    mode,
                    seq,
                    lvb
                }
            ),
            (name(), u(), name(), mode(), u(), failure()).prop_map(
                |(domain, epoch, resource, want, seq, failure)| PeerMsg::Failed {
                    domain,
                    epoch,
                    resource,
                    want,
                    seq,
                    failure
                }
            ),
            (name(), u(), name(), mode(), any::<bool>()).prop_map(
                |(domain, epoch, resource, mode, probe)| PeerMsg::Bast {
                    domain,
                    epoch,
                    resource,
                    mode,
                    probe
                }
            ),
            (name(), u(), name(), any::<i32>()).prop_map(|(domain, epoch, resource, pid)| {
                PeerMsg::ProbeBusy {
                    domain,
                    epoch,
                    resource,
                    pid,
                }
            }),
            (name(), u(), name(), u()).prop_map(|(domain, epoch, resource, seq)| {
                PeerMsg::LvbStored {
                    domain,
                    epoch,
                    resource,
                    seq,
                }
            }),
            (name(), u(), entries()).prop_map(|(domain, epoch, entries)| PeerMsg::Sync {
                domain,
                epoch,
                entries
            }),
        ]
    }

    fn peer_frame() -> impl Strategy<Value = PeerFrame> {
        prop_oneof![
            (any::<u16>(), ".{0,20}", any::<u8>(), ".{0,20}", any::<u8>()).prop_map(
                |(version, cluster, from, from_name, to)| PeerFrame::Hello {
                    generation: u64::from(to) << 8 | u64::from(from),
                    version,
                    cluster,
                    from,
                    from_name,
                    to,
                }
            ),
            (any::<u8>(), any::<u64>())
                .prop_map(|(node, generation)| PeerFrame::Welcome { node, generation }),
            ".{0,40}".prop_map(|reason| PeerFrame::Refused { reason }),
            peer_msg().prop_map(PeerFrame::Msg),
            Just(PeerFrame::Keepalive),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in vec(any::<u8>(), 0..300)) {
            let _ = decode_peer(&b);
            // Also as the payload of a complete frame, to reach the fields.
            let mut framed = (b.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&b);
            match decode_peer(&framed) {
                Ok(Some((_, used))) => prop_assert_eq!(used, framed.len()),
                Ok(None) => prop_assert!(false, "a complete frame needs no more bytes"),
                Err(_) => {}
            }
        }

        #[test]
        fn mutated_frames_never_panic(i in any::<usize>(), pos in any::<usize>(), byte in any::<u8>()) {
            let fs = frames();
            let mut b = encode(&fs[i % fs.len()]);
            let p = 4 + pos % (b.len() - 4);
            b[p] = byte;
            let _ = decode_peer(&b);
        }

        #[test]
        fn random_msgs_round_trip(m in peer_msg()) {
            let f = PeerFrame::Msg(m);
            let b = encode(&f);
            prop_assert_eq!(decode_peer(&b), Ok(Some((f, b.len()))));
        }

        #[test]
        fn random_frames_round_trip(f in peer_frame(), junk in vec(any::<u8>(), 0..8)) {
            let mut b = junk.clone();
            encode_peer_into(&f, &mut b);
            prop_assert_eq!(&b[..junk.len()], &junk[..]);
            prop_assert_eq!(decode_peer(&b[junk.len()..]), Ok(Some((f, b.len() - junk.len()))));
        }
    }
}
