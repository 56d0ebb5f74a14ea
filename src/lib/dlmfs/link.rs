//! The mount's connection to lockd: connecting (with autostart), the hello,
//! writing tagged requests, and the reader thread that hands every message
//! on.
//!
//! May depend on: `client`, `proto`, std. It knows nothing of the engine:
//! the reader hands what it reads to the function it is given, and the
//! engine (which owns the [`Link`]) decides where that goes.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::client::{Client, ClientError, ConnectOptions};
use crate::proto::{self, ClientMsg, ClientRequest, PROTOCOL_VERSION, ServerMsg};

/// How long lockd may take to answer the hello, or to take a write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The writing half of a connection to lockd.
#[derive(Debug)]
pub(crate) struct Link {
    stream: UnixStream,
    wbuf: Vec<u8>,
}

/// A new connection: the writer, and the reader for [`spawn_reader`] with
/// the bytes already read past the welcome.
pub(crate) struct Connected {
    pub(crate) link: Link,
    pub(crate) reader: UnixStream,
    pub(crate) leftover: Vec<u8>,
}

fn unreachable(opts: &ConnectOptions, e: &io::Error) -> ClientError {
    ClientError::Unreachable {
        path: opts.socket.path.clone(),
        reason: e.to_string(),
    }
}

/// Connects to lockd and reads its welcome. With `autostart` (and
/// `opts.autostart`), a lockd is started as the other tools do when none
/// answers.
pub(crate) fn connect(opts: &ConnectOptions, autostart: bool) -> Result<Connected, ClientError> {
    let path = &opts.socket.path;
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if !(autostart && opts.autostart) => return Err(unreachable(opts, &e)),
        Err(_) => {
            // The client library knows how to start one (and when not to).
            drop(Client::connect_with(opts)?);
            UnixStream::connect(path).map_err(|e| unreachable(opts, &e))?
        }
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut link = Link {
        stream,
        wbuf: Vec::with_capacity(256),
    };
    link.write(&ClientMsg::Hello {
        version: PROTOCOL_VERSION,
    })?;
    let mut rbuf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match proto::decode_server(&rbuf) {
            Ok(Some((m, used))) => {
                rbuf.drain(..used);
                match m {
                    ServerMsg::Welcome { version, .. } if version == PROTOCOL_VERSION => break,
                    ServerMsg::Welcome { version, .. } => {
                        return Err(ClientError::Protocol(format!(
                            "lockd speaks protocol {version}, we speak {PROTOCOL_VERSION}"
                        )));
                    }
                    ServerMsg::Error { message } => return Err(ClientError::Protocol(message)),
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "expected a welcome, got {other:?}"
                        )));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        let n = match link.stream.read(&mut chunk) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        rbuf.extend_from_slice(&chunk[..n]);
    }
    // Grants may take forever; only writes keep a timeout, so that a
    // wedged lockd cannot wedge the mount.
    link.stream.set_read_timeout(None)?;
    let reader = link.stream.try_clone()?;
    Ok(Connected {
        link,
        reader,
        leftover: rbuf,
    })
}

impl Link {
    fn write(&mut self, m: &ClientMsg) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let buf = proto::encode_client_into(m, buf);
        let r = self.stream.write_all(&buf);
        self.wbuf = buf;
        r
    }

    /// Sends one tagged request.
    pub(crate) fn send(&mut self, tag: u64, request: ClientRequest) -> io::Result<()> {
        self.write(&ClientMsg::Request { tag, request })
    }

    /// Says we have nothing more to send: lockd answers what it has and
    /// closes, which the reader sees as the end.
    pub(crate) fn close_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Drops the connection at once (lockd releases what it held for us).
    pub(crate) fn abort(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// What the reader thread hands on.
#[derive(Debug)]
pub(crate) enum FromLockd {
    /// A message from lockd.
    Msg(ServerMsg),
    /// The connection ended (the last thing handed on), and why.
    Gone(String),
}

/// Reads lockd's messages until the connection ends and hands each one,
/// then the end, to `deliver`; stops early once `deliver` returns false
/// (nobody listens any more).
pub(crate) fn spawn_reader(
    mut stream: UnixStream,
    mut buf: Vec<u8>,
    mut deliver: impl FnMut(FromLockd) -> bool + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("dlmfs-lockd".into())
        .spawn(move || {
            let mut chunk = vec![0u8; 16 * 1024];
            let why = loop {
                loop {
                    match proto::decode_server(&buf) {
                        Ok(Some((msg, used))) => {
                            buf.drain(..used);
                            if !deliver(FromLockd::Msg(msg)) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            deliver(FromLockd::Gone(format!("protocol error: {e}")));
                            return;
                        }
                    }
                }
                match stream.read(&mut chunk) {
                    Ok(0) => break "lockd closed the connection".to_owned(),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break format!("reading from lockd: {e}"),
                }
            };
            deliver(FromLockd::Gone(why));
        })?;
    Ok(())
}
