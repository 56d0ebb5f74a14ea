//! The byte level both wire protocols share: length-prefixed framing, the
//! primitive field encodings, and [`DecodeError`].
//!
//! A frame is a 4-byte little-endian payload length, then the payload; the
//! largest payload a reader accepts is its caller's to say. Fields are
//! little-endian integers, a bool as 0 or 1, a byte string as a u16 length
//! and the bytes, a lock mode as its number (0xff for no mode). What a
//! message is made of is each codec's own (`encode`/`decode` for the client
//! protocol, `peer` for the peer protocol).
//!
//! May depend on: `dlm::Mode`, std, `thiserror`.

use crate::dlm::Mode;

/// Why bytes could not be decoded. The connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length prefix exceeds its limit (the frame's, or a name's).
    #[error("a length of {0} bytes exceeds its limit")]
    TooLarge(usize),
    /// The payload ended early.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A tag byte with no meaning.
    #[error("unknown {what} {value}")]
    Unknown {
        /// What was being decoded.
        what: &'static str,
        /// The byte.
        value: u8,
    },
    /// Bytes left after a complete message.
    #[error("{0} trailing bytes in frame")]
    Trailing(usize),
    /// The hello does not start with the magic.
    #[error("not an o2tools client (bad magic)")]
    BadMagic,
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
}

/// The byte of an absent mode.
pub(super) const NO_MODE: u8 = 0xff;

// ---------------------------------------------------------------- framing

/// Appends one frame to `buf`: the length prefix, then the payload `body`
/// writes. A payload too long for the prefix gets `u32::MAX`, which every
/// reader refuses as too large.
pub(super) fn encode_frame(buf: &mut Vec<u8>, body: impl FnOnce(&mut Writer<'_>)) {
    let start = buf.len();
    // The length prefix, filled in below.
    buf.extend_from_slice(&[0; 4]);
    body(&mut Writer(buf));
    let len = u32::try_from(buf.len() - start - 4).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Splits off one frame of at most `max` payload bytes: `Ok(None)` if
/// incomplete, else the payload and the number of bytes it used.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > max {
        return Err(DecodeError::TooLarge(len));
    }
    let Some(payload) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((payload, 4 + len)))
}

// ---------------------------------------------------------------- writing

/// Writes fields at the end of a frame's payload (see [`encode_frame`]).
pub(super) struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Bytes as they are, with no length (a magic, a UUID, an LVB).
    pub(super) fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A u16 length and the bytes (at most 65535 of them).
    pub(super) fn short_bytes(&mut self, b: &[u8]) {
        let n = b.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        self.raw(&b[..n]);
    }
    /// A string as [`Writer::short_bytes`], cut at a character boundary to
    /// fit.
    pub(super) fn short_str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.short_bytes(&s.as_bytes()[..end]);
    }
    pub(super) fn mode(&mut self, m: Mode) {
        self.u8(m as u8);
    }
    pub(super) fn opt_mode(&mut self, m: Option<Mode>) {
        self.u8(m.map_or(NO_MODE, |m| m as u8));
    }
}

// ---------------------------------------------------------------- reading

/// Reads fields from the front of a frame's payload. Every read checks
/// that the bytes are there; nothing is allocated for bytes that are not.
pub(super) struct Reader<'a> {
    b: &'a [u8],
    /// What is being decoded, for errors.
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }
    /// What is being decoded, as errors name it.
    pub(super) fn what(&self) -> &'static str {
        self.what
    }
    pub(super) fn set_what(&mut self, what: &'static str) {
        self.what = what;
    }
    /// Whether the payload is all read.
    pub(super) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated(self.what));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    pub(super) fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_le_bytes)
    }
    pub(super) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::Unknown {
                what: "boolean",
                value,
            }),
        }
    }
    /// A u16 length and the bytes.
    pub(super) fn short_bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = usize::from(self.u16()?);
        Ok(self.take(n)?.to_vec())
    }
    /// A u16 length and UTF-8; `what` names the string in the error.
    pub(super) fn short_str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        String::from_utf8(self.short_bytes()?).map_err(|_| DecodeError::Utf8(what))
    }
    /// A u32 count of items, each at least `min` bytes: never more than
    /// the rest of the payload could hold.
    pub(super) fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.b.len() {
            return Err(DecodeError::Truncated(self.what));
        }
        Ok(n)
    }
    pub(super) fn mode(&mut self) -> Result<Mode, DecodeError> {
        let value = self.u8()?;
        Mode::from_u8(value).ok_or(DecodeError::Unknown {
            what: "mode",
            value,
        })
    }
    pub(super) fn opt_mode(&mut self) -> Result<Option<Mode>, DecodeError> {
        match self.u8()? {
            NO_MODE => Ok(None),
            value => Mode::from_u8(value).map(Some).ok_or(DecodeError::Unknown {
                what: "mode",
                value,
            }),
        }
    }
    /// The payload must be all read.
    pub(super) fn end(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.b.len()))
        }
    }
}
