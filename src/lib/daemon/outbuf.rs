//! Buffered output of a non-blocking stream watched by epoll, shared by the
//! client connections and the peer links: write what the socket takes now,
//! and ask epoll for writability exactly while output is left.
//!
//! May depend on: std, nix.

use std::io::{self, Write};
use std::os::fd::BorrowedFd;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

/// Writes from the front of `buf` until the stream would block, and drops
/// what was written. Err when the stream is broken (a write of nothing
/// included).
pub(super) fn write_pending(stream: &mut impl Write, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    let result = loop {
        if written == buf.len() {
            break Ok(());
        }
        match stream.write(&buf[written..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.drain(..written);
    result
}

/// Watches `fd` (registered under `token`) for writability as well as
/// readability exactly while `pending`; `writing` is what epoll was last
/// told.
pub(super) fn watch_writable(
    epoll: &Epoll,
    fd: BorrowedFd<'_>,
    token: u64,
    writing: &mut bool,
    pending: bool,
) {
    if pending != *writing {
        *writing = pending;
        let flags = if pending {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        let mut ev = EpollEvent::new(flags, token);
        let _ = epoll.modify(fd, &mut ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that takes `room` bytes, then would block (or fails).
    struct Pipe {
        got: Vec<u8>,
        room: usize,
        broken: bool,
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.broken {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = b.len().min(self.room).min(3);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_what_the_stream_takes_and_keeps_the_rest() {
        let mut p = Pipe {
            got: Vec::new(),
            room: 7,
            broken: false,
        };
        let mut buf = b"0123456789".to_vec();
        write_pending(&mut p, &mut buf).unwrap();
        assert_eq!(
            (p.got.as_slice(), buf.as_slice()),
            (&b"0123456"[..], &b"789"[..])
        );
        p.room = 100;
        write_pending(&mut p, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(p.got, b"0123456789");
        p.broken = true;
        let mut buf = b"x".to_vec();
        assert!(write_pending(&mut p, &mut buf).is_err());
    }
}
