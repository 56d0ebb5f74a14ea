//! lockd's clients: accepting on the Unix socket (with the peer's
//! credentials), reading and decoding their frames, answering each request
//! (the lock manager's go to the core), and the write buffers flushed once
//! per turn.
//!
//! May depend on: the parent module and its siblings, `dlm`, `proto`, nix.

use std::ffi::OsStr;
use std::io::{self, Read as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, warn};

use super::{Conn, DaemonError, Loop, RegionEntry};
use crate::dlm::{ClientId, Cred, Input};
use crate::proto::{self, ClientMsg, ClientRequest, PROTOCOL_VERSION, ServerMsg, ServerReply};

/// Buffered output larger than this means the client is not reading: it is
/// disconnected rather than allowed to grow lockd's memory.
const MAX_PENDING_OUTPUT: usize = proto::MAX_REPLY_FRAME + (8 << 20);

impl Loop<'_> {
    pub(super) fn accept(&mut self, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    return;
                }
            };
            let cred = match getsockopt(&stream, PeerCredentials) {
                Ok(c) => Cred {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    warn!(error = %e, "no peer credentials; closing");
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_client;
            self.next_client += 1;
            if let Err(e) = self
                .epoll
                .add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                warn!(error = %e, "cannot watch a client");
                continue;
            }
            debug!(client = token, uid = cred.uid, pid = cred.pid, "connected");
            self.conns.insert(
                token,
                Conn {
                    stream,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    cred,
                    hello: false,
                    writing: false,
                    closing: false,
                },
            );
        }
    }

    pub(super) fn conn_event(&mut self, token: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(token);
        }
        if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            let eof = self.read(token);
            self.process(token);
            if eof {
                self.close(token);
            }
        }
    }

    /// Reads what is available; true at end of stream or on error. A short
    /// read means the socket is drained for now (the poll is level-triggered,
    /// so anything arriving later is reported again), which saves the read
    /// that would only say EAGAIN.
    fn read(&mut self, token: u64) -> bool {
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        let buf = &mut self.scratch[..];
        loop {
            match c.stream.read(buf) {
                Ok(0) => return true,
                Ok(n) => {
                    c.rbuf.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Decodes and handles every complete frame of a connection.
    fn process(&mut self, token: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            if c.closing {
                return;
            }
            let msg = match proto::decode_client(&c.rbuf) {
                Ok(Some((m, used))) => {
                    c.rbuf.drain(..used);
                    m
                }
                Ok(None) => return,
                Err(e) => {
                    debug!(client = token, error = %e, "bad frame; closing");
                    self.fail(token, format!("bad frame: {e}"));
                    return;
                }
            };
            self.handle(token, msg);
        }
    }

    /// Sends a protocol error and closes once it is written.
    fn fail(&mut self, token: u64, message: String) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.wbuf
                .extend_from_slice(&proto::encode_server(&ServerMsg::Error { message }));
            c.closing = true;
            c.rbuf.clear();
        }
    }

    pub(super) fn send(&mut self, token: u64, msg: &ServerMsg) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.wbuf = proto::encode_server_into(msg, std::mem::take(&mut c.wbuf));
        }
    }

    fn handle(&mut self, token: u64, msg: ClientMsg) {
        let c = &self.conns[&token];
        let client = ClientId(token);
        match msg {
            ClientMsg::Hello { version } if !c.hello => {
                if version != PROTOCOL_VERSION {
                    self.fail(
                        token,
                        format!("protocol version {version} is not supported; this lockd speaks {PROTOCOL_VERSION}"),
                    );
                    return;
                }
                let cred = c.cred;
                self.conns.get_mut(&token).expect("exists").hello = true;
                self.dlm
                    .handle(self.now(), Input::Connected { client, cred });
                self.send(
                    token,
                    &ServerMsg::Welcome {
                        version: PROTOCOL_VERSION,
                        node: self.node,
                        pid: std::process::id(),
                        fence_grace_ms: self.opts.settings.network.fence_grace_ms,
                    },
                );
            }
            ClientMsg::Hello { .. } => self.fail(token, "second hello".into()),
            ClientMsg::Request { .. } if !c.hello => {
                self.fail(token, "hello expected first".into())
            }
            ClientMsg::Request { tag, request } => match request {
                ClientRequest::Dlm(request) => {
                    self.dlm.handle(
                        self.now(),
                        Input::Request {
                            client,
                            tag,
                            request,
                        },
                    );
                    self.route();
                }
                ClientRequest::Status => {
                    let reply = ServerReply::Status(self.status());
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::RegisterCluster {
                    conf,
                    cluster,
                    node,
                } => {
                    let cred = self.conns[&token].cred;
                    let r = self.allowed(cred).and_then(|()| {
                        self.register_cluster(
                            PathBuf::from(OsStr::from_bytes(&conf)),
                            &cluster,
                            &node,
                        )
                    });
                    self.answer(token, tag, r);
                }
                ClientRequest::UnregisterCluster { cluster } => {
                    let cred = self.conns[&token].cred;
                    let r = self
                        .allowed(cred)
                        .and_then(|()| self.unregister_cluster(&cluster));
                    self.answer(token, tag, r);
                }
                ClientRequest::ClusterHeartbeat { cluster, start } => {
                    let cred = self.conns[&token].cred;
                    let r = self
                        .allowed(cred)
                        .and_then(|()| self.cluster_heartbeat(&cluster, start));
                    self.answer(token, tag, r);
                }
                ClientRequest::Domains => {
                    let reply = ServerReply::Domains(self.dlm.domains());
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::Locks { domain } => {
                    let resources = self.dlm.resources(domain.as_deref());
                    let count = resources.len();
                    let msg = ServerMsg::Reply {
                        tag,
                        reply: ServerReply::Locks(resources),
                    };
                    let frame = proto::encode_server(&msg);
                    if frame.len() - 4 > proto::MAX_REPLY_FRAME {
                        let message = format!(
                            "the listing of {count} resources is too large ({} bytes, at most {}); list one domain",
                            frame.len() - 4,
                            proto::MAX_REPLY_FRAME
                        );
                        self.reply_failed(token, tag, message);
                    } else if let Some(c) = self.conns.get_mut(&token) {
                        c.wbuf.extend_from_slice(&frame);
                    }
                }
                ClientRequest::HbStart { target, service } => {
                    self.hb_start(token, tag, target, service)
                }
                ClientRequest::HbStop { target, service } => {
                    self.hb_stop(token, tag, target, service)
                }
                ClientRequest::HbStatus => {
                    let reply = ServerReply::HbRegions(
                        self.regions.values().map(|e| self.region_info(e)).collect(),
                    );
                    self.send(token, &ServerMsg::Reply { tag, reply });
                }
                ClientRequest::HbRefs { uuid } => {
                    let refs = self
                        .regions
                        .values()
                        .filter(|e| e.region.uuid == uuid && !e.stopping)
                        .map(RegionEntry::total_refs)
                        .sum();
                    self.send(
                        token,
                        &ServerMsg::Reply {
                            tag,
                            reply: ServerReply::HbRefs { uuid, refs },
                        },
                    );
                }
            },
        }
    }

    fn answer(&mut self, token: u64, tag: u64, r: Result<(), DaemonError>) {
        let reply = match r {
            Ok(()) => ServerReply::Done,
            Err(e) => ServerReply::Failed {
                message: e.to_string(),
            },
        };
        self.send(token, &ServerMsg::Reply { tag, reply });
    }

    pub(super) fn reply_failed(&mut self, token: u64, tag: u64, message: String) {
        self.send(
            token,
            &ServerMsg::Reply {
                tag,
                reply: ServerReply::Failed { message },
            },
        );
    }

    pub(super) fn flush_all(&mut self) {
        if let Some(m) = self.mesh.as_mut() {
            m.flush_all(&self.epoll, &mut self.mesh_out);
            if !self.mesh_out.is_empty() {
                self.feed_mesh();
            }
        }
        let dirty: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.wbuf.is_empty() || c.closing)
            .map(|(&t, _)| t)
            .collect();
        for t in dirty {
            self.flush(t);
        }
    }

    fn flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let broken = super::outbuf::write_pending(&mut c.stream, &mut c.wbuf).is_err();
        if broken || (c.closing && c.wbuf.is_empty()) {
            self.close(token);
            return;
        }
        if c.wbuf.len() > MAX_PENDING_OUTPUT {
            warn!(client = token, "client does not read its replies; closing");
            self.close(token);
            return;
        }
        let pending = !c.wbuf.is_empty();
        super::outbuf::watch_writable(
            &self.epoll,
            c.stream.as_fd(),
            token,
            &mut c.writing,
            pending,
        );
    }

    fn close(&mut self, token: u64) {
        let Some(c) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.epoll.delete(c.stream.as_fd());
        debug!(client = token, "disconnected");
        if c.hello {
            self.dlm.handle(
                self.now(),
                Input::Disconnected {
                    client: ClientId(token),
                },
            );
            self.route();
        }
    }
}
