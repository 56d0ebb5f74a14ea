//! The mesh's handshake, accepting side: the first frame of an accepted
//! connection must be a hello this node takes (right version, cluster,
//! node number, name and address, not an incarnation declared dead); it is
//! answered `Welcome`, or `Refused` with a [`Refusal`]'s text.
//!
//! May depend on: the parent module, `proto::peer`, std, nix.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::Instant;

use nix::sys::epoll::Epoll;
use tracing::{debug, info, warn};

use super::{Mesh, MeshEvent, read_all};
use crate::proto::peer::{self, PEER_VERSION, PeerFrame};

/// The refusal that tells a node it was declared dead (recognised by
/// [`MeshEvent::DeclaredDead`]).
pub(super) const DECLARED_DEAD: &str =
    "was declared dead and its locks recovered; its lockd must restart";

/// Why the accepting side refuses a connection. Its text is the reason
/// the `Refused` frame carries to the other node.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The first frame was something else.
    #[error("expected a hello")]
    NotHello,
    /// Another peer protocol version.
    #[error("peer protocol version {version} is not supported; this lockd speaks {PEER_VERSION}")]
    Version {
        /// The version spoken.
        version: u16,
    },
    /// Another cluster.
    #[error("cluster '{cluster}' does not match this node's cluster '{ours}'")]
    OtherCluster {
        /// The connecting node's cluster.
        cluster: String,
        /// This node's.
        ours: String,
    },
    /// Meant for another node.
    #[error("this is node {me}, not node {to}")]
    NotThisNode {
        /// This node.
        me: u8,
        /// The node asked for.
        to: u8,
    },
    /// A node number this cluster does not have (or this node's own).
    #[error("node {from} is not configured in cluster '{cluster}'")]
    NotConfigured {
        /// The connecting node's number.
        from: u8,
        /// The cluster.
        cluster: String,
    },
    /// The node's name is not the one configured for its number.
    #[error("node {from} is '{configured}' in this node's cluster.conf, not '{name}'")]
    WrongName {
        /// The connecting node's number.
        from: u8,
        /// The name configured for it.
        configured: String,
        /// The name it gave.
        name: String,
    },
    /// The lower number waits to be connected to.
    #[error("node {from} must wait for node {me} to connect (higher numbers connect to lower)")]
    MustWait {
        /// The connecting node's number.
        from: u8,
        /// This node.
        me: u8,
    },
    /// Not from the node's configured address.
    #[error("node {from} must connect from {expected}, not {}", .got.map_or_else(|| "?".into(), |i| i.to_string()))]
    WrongAddress {
        /// The connecting node's number.
        from: u8,
        /// Its configured address.
        expected: Ipv4Addr,
        /// Where it connected from, if IPv4.
        got: Option<Ipv4Addr>,
    },
    /// An incarnation this node declared dead.
    #[error("node {node} {DECLARED_DEAD}")]
    DeclaredDead {
        /// The node.
        node: u8,
    },
}

impl Mesh {
    /// A connection accepted and not yet identified.
    pub(super) fn accepted_event(&mut self, token: u64, epoll: &Epoll, out: &mut Vec<MeshEvent>) {
        let c = self.accepted.get_mut(&token).expect("accepted");
        let eof = read_all(&mut c.stream, &mut c.rbuf, &mut self.scratch);
        let frame = match peer::decode_peer(&c.rbuf) {
            Ok(Some((f, used))) => {
                c.rbuf.drain(..used);
                f
            }
            Ok(None) => {
                if eof {
                    let c = self.accepted.remove(&token).expect("accepted");
                    let _ = epoll.delete(c.stream.as_fd());
                }
                return;
            }
            Err(e) => {
                let c = self.accepted.remove(&token).expect("accepted");
                warn!(peer = ?c.stream.peer_addr().ok(), error = %e, "malformed handshake; closing");
                let _ = epoll.delete(c.stream.as_fd());
                return;
            }
        };
        let mut c = self.accepted.remove(&token).expect("accepted");
        let peer_ip = c.stream.peer_addr().ok().and_then(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
            std::net::SocketAddr::V6(_) => None,
        });
        match self.check_hello(&frame, peer_ip) {
            Err(reason) => {
                warn!(peer = ?c.stream.peer_addr().ok(), %reason, "refusing a peer connection");
                let now = Instant::now();
                c.push(
                    &PeerFrame::Refused {
                        reason: reason.to_string(),
                    },
                    now,
                );
                // Best effort: the refusal is small; then close.
                let _ = c.stream.write(&c.wbuf);
                let _ = epoll.delete(c.stream.as_fd());
            }
            Ok(n) => {
                // A new connection from a node replaces its old one.
                if self.links.get(&n).is_some_and(|l| l.conn.is_some()) {
                    debug!(node = n, "replacing the connection to a peer");
                    self.drop_link(n, epoll, out);
                }
                let now = Instant::now();
                c.up = true;
                c.push(
                    &PeerFrame::Welcome {
                        node: self.setup.node,
                        generation: self.generation,
                    },
                    now,
                );
                self.tokens.insert(token, n);
                let generation = match frame {
                    PeerFrame::Hello { generation, .. } => generation,
                    _ => 0,
                };
                let link = self.links.get_mut(&n).expect("checked");
                link.conn = Some(c);
                link.last_error = None;
                info!(node = n, "peer connected");
                Self::new_generation(link, n, generation, out);
                out.push(MeshEvent::Up(n));
                // Frames that came right behind the hello.
                if self.process_link(n, epoll, out) {
                    let _ = self.flush_link(n, epoll);
                    if eof {
                        self.drop_link(n, epoll, out);
                    }
                }
            }
        }
    }

    /// The node a valid hello comes from.
    fn check_hello(&self, frame: &PeerFrame, peer_ip: Option<Ipv4Addr>) -> Result<u8, Refusal> {
        let PeerFrame::Hello {
            version,
            cluster,
            from,
            from_name,
            to,
            generation,
        } = frame
        else {
            return Err(Refusal::NotHello);
        };
        if *version != PEER_VERSION {
            return Err(Refusal::Version { version: *version });
        }
        if *cluster != self.setup.name {
            return Err(Refusal::OtherCluster {
                cluster: cluster.clone(),
                ours: self.setup.name.clone(),
            });
        }
        if *to != self.setup.node {
            return Err(Refusal::NotThisNode {
                me: self.setup.node,
                to: *to,
            });
        }
        let Some(p) = self
            .setup
            .nodes
            .get(from)
            .filter(|_| *from != self.setup.node)
        else {
            return Err(Refusal::NotConfigured {
                from: *from,
                cluster: cluster.clone(),
            });
        };
        if p.name != *from_name {
            return Err(Refusal::WrongName {
                from: *from,
                configured: p.name.clone(),
                name: from_name.clone(),
            });
        }
        if *from < self.setup.node {
            return Err(Refusal::MustWait {
                from: *from,
                me: self.setup.node,
            });
        }
        if peer_ip != Some(*p.addr.ip()) {
            return Err(Refusal::WrongAddress {
                from: *from,
                expected: *p.addr.ip(),
                got: peer_ip,
            });
        }
        if self.links[from].dead_generation == Some(*generation) {
            return Err(Refusal::DeclaredDead { node: *from });
        }
        Ok(*from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_the_other_node_gets_them() {
        let cases = [
            (Refusal::NotHello, "expected a hello"),
            (
                Refusal::Version { version: 9 },
                "peer protocol version 9 is not supported; this lockd speaks 3",
            ),
            (
                Refusal::OtherCluster {
                    cluster: "x".into(),
                    ours: "c1".into(),
                },
                "cluster 'x' does not match this node's cluster 'c1'",
            ),
            (
                Refusal::NotThisNode { me: 1, to: 2 },
                "this is node 1, not node 2",
            ),
            (
                Refusal::NotConfigured {
                    from: 9,
                    cluster: "c1".into(),
                },
                "node 9 is not configured in cluster 'c1'",
            ),
            (
                Refusal::WrongName {
                    from: 2,
                    configured: "beta".into(),
                    name: "b".into(),
                },
                "node 2 is 'beta' in this node's cluster.conf, not 'b'",
            ),
            (
                Refusal::MustWait { from: 1, me: 2 },
                "node 1 must wait for node 2 to connect (higher numbers connect to lower)",
            ),
            (
                Refusal::WrongAddress {
                    from: 2,
                    expected: Ipv4Addr::new(127, 0, 0, 2),
                    got: Some(Ipv4Addr::new(127, 0, 0, 3)),
                },
                "node 2 must connect from 127.0.0.2, not 127.0.0.3",
            ),
            (
                Refusal::WrongAddress {
                    from: 2,
                    expected: Ipv4Addr::new(127, 0, 0, 2),
                    got: None,
                },
                "node 2 must connect from 127.0.0.2, not ?",
            ),
            (
                Refusal::DeclaredDead { node: 3 },
                "node 3 was declared dead and its locks recovered; its lockd must restart",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
