//! The `cluster.conf` reader.
//!
//! Two layers, both pure. [`lex`] splits the bytes into stanzas of `key = value`
//! attributes following the rules of ocfs2-tools' `jconfig` scanner; [`parse`]
//! then builds the [`ClusterConf`] with the checks of its `o2cb_config` loader.
//! Every error carries the line it is about.
//!
//! Lexical rules (what makes the whole file unreadable):
//! - Tokens are identifiers (`[A-Za-z0-9_]+`) or single bytes; a NUL byte ends
//!   the input.
//! - A line is classified by its first byte: `\n` closes the current stanza;
//!   space or tab starts an attribute (or a blank line, which also closes the
//!   stanza); `#` is a comment (column 0 only; it does not close the stanza);
//!   an identifier starts a stanza header `name:` followed only by blanks;
//!   anything else is an error.
//! - An attribute is `key`, optional blanks, `=`, optional blanks, then the
//!   value: the rest of the line. A backslash before the newline continues the
//!   value on the next line with an embedded newline.

use std::fmt;
use std::net::Ipv4Addr;

use super::{Cluster, ClusterConf, Heartbeat, HeartbeatMode, Node, is_c_space};

/// A stanza as read, before any meaning is given to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub kind: String,
    pub line: usize,
    /// Attributes in file order; a repeated key appears twice and the last wins.
    pub attrs: Vec<Attr>,
}

/// One `key = value` line (or lines, with continuations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
    pub key: String,
    pub value: Vec<u8>,
    pub line: usize,
}

impl Stanza {
    /// The value of `key` as the real loader sees it: the last one given,
    /// with trailing white space removed.
    fn get(&self, key: &str) -> Option<(&[u8], usize)> {
        self.attrs.iter().rev().find(|a| a.key == key).map(|a| {
            let mut v = a.value.as_slice();
            while let [rest @ .., last] = v {
                if is_c_space(*last) {
                    v = rest;
                } else {
                    break;
                }
            }
            (v, a.line)
        })
    }
}

/// Why a `cluster.conf` cannot be loaded, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line number the problem was found on.
    pub line: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// The problems the reader reports. Each maps to the error code the real
/// tool prints ("Unknown code ____ N"), see [`Problem::real_code`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A byte that cannot start a line.
    BadLineStart(u8),
    /// A stanza header without its `:`.
    MissingColon(String),
    /// Something other than blanks after `name:`.
    TrailingGarbage(String),
    /// An attribute line that is not `key = value`.
    MissingEquals(String),
    /// A byte that cannot start an attribute name.
    BadAttributeStart(u8),
    /// An attribute before any stanza header, or after a blank line.
    AttributeOutsideStanza(String),
    /// A value that is not UTF-8 (o2tools keeps names as text).
    NotUtf8(String),
    /// A `cluster:` stanza without `name` (the real tool crashes here).
    ClusterWithoutName,
    /// Two clusters with the same name.
    DuplicateCluster(String),
    /// A required key is missing or empty.
    MissingKey {
        /// Kind of stanza.
        stanza: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A value that is not what the key needs.
    BadValue {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A number too large for its key.
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// Two nodes of one cluster with the same name.
    DuplicateNode(String),
    /// The same heartbeat region twice in one cluster.
    DuplicateRegion(String),
}

impl Problem {
    /// The code ocfs2-tools prints for this problem (256 − errno): 251 EIO
    /// for syntax, 234 EINVAL, 244 ENOMEM for duplicates, 254 ENOENT, 222 ERANGE.
    /// A nameless cluster makes the real tool crash; we report it as EINVAL.
    pub fn real_code(&self) -> u8 {
        match self {
            Problem::BadLineStart(_)
            | Problem::MissingColon(_)
            | Problem::TrailingGarbage(_)
            | Problem::MissingEquals(_)
            | Problem::BadAttributeStart(_)
            | Problem::AttributeOutsideStanza(_) => 251,
            Problem::NotUtf8(_)
            | Problem::ClusterWithoutName
            | Problem::MissingKey { .. }
            | Problem::BadValue { .. } => 234,
            Problem::DuplicateCluster(_) => 254,
            Problem::OutOfRange { .. } => 222,
            Problem::DuplicateNode(_) | Problem::DuplicateRegion(_) => 244,
        }
    }
}

fn show_byte(b: u8) -> String {
    match b {
        b'\r' => "a carriage return (\\r)".to_owned(),
        0x20..=0x7e => format!("'{}'", b as char),
        _ => format!("byte 0x{b:02x}"),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BadLineStart(b) => write!(
                f,
                "a line must start with a stanza name, a tab or space, '#' or nothing, not {}",
                show_byte(*b)
            ),
            Problem::MissingColon(n) => write!(f, "stanza header '{n}' must be followed by ':'"),
            Problem::TrailingGarbage(n) => write!(
                f,
                "stanza header '{n}:' must end the line (found more than blanks after ':')"
            ),
            Problem::MissingEquals(k) => write!(f, "attribute '{k}' must be written 'key = value'"),
            Problem::BadAttributeStart(b) => write!(
                f,
                "an indented line must hold 'key = value', not start with {} (comments start in column 0)",
                show_byte(*b)
            ),
            Problem::AttributeOutsideStanza(k) => write!(
                f,
                "attribute '{k}' is outside a stanza (before the first header or after a blank line)"
            ),
            Problem::NotUtf8(k) => write!(f, "the value of '{k}' is not valid UTF-8"),
            Problem::ClusterWithoutName => f.write_str("cluster stanza has no 'name'"),
            Problem::DuplicateCluster(n) => write!(f, "cluster '{n}' is defined twice"),
            Problem::MissingKey { stanza, key } => {
                write!(f, "{stanza} stanza needs a non-empty '{key}'")
            }
            Problem::BadValue {
                key,
                value,
                expected,
            } => write!(f, "'{key}' is '{value}', expected {expected}"),
            Problem::OutOfRange { key, value } => write!(f, "'{key}' value '{value}' is too large"),
            Problem::DuplicateNode(n) => write!(f, "node '{n}' is defined twice in its cluster"),
            Problem::DuplicateRegion(r) => {
                write!(f, "heartbeat region '{r}' is listed twice in its cluster")
            }
        }
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

struct Lexer<'a> {
    input: &'a [u8],
    pos: usize,
    line: usize,
}

enum Tok<'a> {
    Eof,
    Ident(&'a [u8]),
    Char(u8),
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Tok<'a> {
        match self.input.get(self.pos) {
            None => Tok::Eof,
            Some(&b) if is_ident(b) => {
                let len = self.input[self.pos..]
                    .iter()
                    .take_while(|&&b| is_ident(b))
                    .count();
                Tok::Ident(&self.input[self.pos..self.pos + len])
            }
            Some(&b) => Tok::Char(b),
        }
    }

    fn next(&mut self) -> Tok<'a> {
        let t = self.peek();
        match t {
            Tok::Eof => {}
            Tok::Ident(s) => self.pos += s.len(),
            Tok::Char(c) => {
                self.pos += 1;
                if c == b'\n' {
                    self.line += 1;
                }
            }
        }
        t
    }

    fn err(&self, line: usize, problem: Problem) -> ParseError {
        ParseError { line, problem }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Splits `input` into stanzas, or reports the first lexical error.
pub(crate) fn lex(input: &[u8]) -> Result<Vec<Stanza>, ParseError> {
    // The real scanner treats a NUL byte as the end of its input.
    let input = match input.iter().position(|&b| b == 0) {
        Some(n) => &input[..n],
        None => input,
    };
    let mut lx = Lexer {
        input,
        pos: 0,
        line: 1,
    };
    let mut stanzas: Vec<Stanza> = Vec::new();
    let mut open = false;
    loop {
        let line = lx.line;
        match lx.next() {
            Tok::Eof => return Ok(stanzas),
            Tok::Char(b'\n') => open = false,
            Tok::Char(b'#') => while !matches!(lx.next(), Tok::Eof | Tok::Char(b'\n')) {},
            Tok::Char(b' ' | b'\t') => loop {
                match lx.peek() {
                    Tok::Eof => break,
                    Tok::Ident(key) => {
                        lx.next();
                        let key = text(key);
                        if !open {
                            return Err(lx.err(line, Problem::AttributeOutsideStanza(key)));
                        }
                        let value = lex_value(&mut lx, line, &key)?;
                        let stanza = stanzas.last_mut().expect("open stanza exists");
                        stanza.attrs.push(Attr { key, value, line });
                        break;
                    }
                    Tok::Char(b' ' | b'\t') => {
                        lx.next();
                    }
                    Tok::Char(b'\n') => {
                        lx.next();
                        open = false;
                        break;
                    }
                    Tok::Char(c) => return Err(lx.err(line, Problem::BadAttributeStart(c))),
                }
            },
            Tok::Char(c) => return Err(lx.err(line, Problem::BadLineStart(c))),
            Tok::Ident(name) => {
                let kind = text(name);
                match lx.next() {
                    Tok::Char(b':') => {}
                    Tok::Eof | Tok::Char(b'\n') => {
                        return Err(lx.err(line, Problem::MissingColon(kind)));
                    }
                    Tok::Char(_) | Tok::Ident(_) => {
                        return Err(lx.err(line, Problem::MissingColon(kind)));
                    }
                }
                loop {
                    match lx.next() {
                        Tok::Eof | Tok::Char(b'\n') => break,
                        Tok::Char(b' ' | b'\t') => {}
                        _ => return Err(lx.err(line, Problem::TrailingGarbage(kind))),
                    }
                }
                stanzas.push(Stanza {
                    kind,
                    line,
                    attrs: Vec::new(),
                });
                open = true;
            }
        }
    }
}

/// Reads ` = value` after an attribute's key, up to and including its newline.
fn lex_value(lx: &mut Lexer<'_>, line: usize, key: &str) -> Result<Vec<u8>, ParseError> {
    #[derive(PartialEq)]
    enum State {
        Key,
        Equal,
        Value,
    }
    let mut state = State::Key;
    let mut continued = false;
    let mut value = Vec::new();
    loop {
        match lx.next() {
            Tok::Eof => {
                if state == State::Key {
                    return Err(lx.err(line, Problem::MissingEquals(key.to_owned())));
                }
                // A backslash right before the end of input is dropped.
                return Ok(value);
            }
            Tok::Char(b'\n') => {
                if state == State::Key {
                    return Err(lx.err(line, Problem::MissingEquals(key.to_owned())));
                }
                if !continued {
                    return Ok(value);
                }
                value.push(b'\n');
                continued = false;
            }
            Tok::Char(c) if continued => {
                // A backslash not before a newline is an ordinary byte.
                value.push(b'\\');
                if c == b'\\' {
                    continued = true;
                } else {
                    value.push(c);
                    continued = false;
                }
            }
            Tok::Char(c) => match state {
                State::Key if c == b'=' => state = State::Equal,
                State::Key if c == b' ' || c == b'\t' => {}
                State::Key => return Err(lx.err(line, Problem::MissingEquals(key.to_owned()))),
                State::Equal if c == b' ' || c == b'\t' => {}
                State::Equal | State::Value => {
                    state = State::Value;
                    if c == b'\\' {
                        continued = true;
                    } else {
                        value.push(c);
                    }
                }
            },
            Tok::Ident(s) => {
                if state == State::Key {
                    return Err(lx.err(line, Problem::MissingEquals(key.to_owned())));
                }
                state = State::Value;
                if continued {
                    value.push(b'\\');
                    continued = false;
                }
                value.extend_from_slice(s);
            }
        }
    }
}

/// C `strtoul(s, &end, 10)`: the value (saturated at `u64::MAX` on overflow)
/// and whether the whole string was consumed.
pub(crate) fn strtoul10(s: &[u8]) -> (u64, bool) {
    let mut i = s.iter().take_while(|&&b| is_c_space(b)).count();
    let mut neg = false;
    if let Some(&sign @ (b'+' | b'-')) = s.get(i) {
        neg = sign == b'-';
        i += 1;
    }
    let digits = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        // No conversion: the end pointer is the start of the string.
        return (0, s.is_empty());
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    for &d in &s[i..i + digits] {
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
        {
            Some(n) => v = n,
            None => overflow = true,
        }
    }
    let v = if overflow {
        u64::MAX
    } else if neg {
        v.wrapping_neg()
    } else {
        v
    };
    (v, i + digits == s.len())
}

struct Loader<'a> {
    stanzas: &'a [Stanza],
}

impl Loader<'_> {
    fn string(value: &[u8], key: &str, line: usize) -> Result<String, ParseError> {
        String::from_utf8(value.to_vec()).map_err(|_| ParseError {
            line,
            problem: Problem::NotUtf8(key.to_owned()),
        })
    }

    fn required<'s>(
        st: &'s Stanza,
        stanza: &'static str,
        key: &'static str,
    ) -> Result<(&'s [u8], usize), ParseError> {
        match st.get(key) {
            Some((v, line)) if !v.is_empty() => Ok((v, line)),
            Some((_, line)) => Err(ParseError {
                line,
                problem: Problem::MissingKey { stanza, key },
            }),
            None => Err(ParseError {
                line: st.line,
                problem: Problem::MissingKey { stanza, key },
            }),
        }
    }

    fn number(
        st: &Stanza,
        stanza: &'static str,
        key: &'static str,
        max: u64,
    ) -> Result<u32, ParseError> {
        let (v, line) = Self::required(st, stanza, key)?;
        let (n, whole) = strtoul10(v);
        if !whole {
            return Err(ParseError {
                line,
                problem: Problem::BadValue {
                    key,
                    value: text(v),
                    expected: "a decimal number",
                },
            });
        }
        if n == u64::MAX || n > max {
            return Err(ParseError {
                line,
                problem: Problem::OutOfRange {
                    key,
                    value: text(v),
                },
            });
        }
        Ok(n as u32)
    }

    /// The stanzas of `kind` whose `cluster` attribute names `cluster`.
    fn members<'s>(&'s self, kind: &'s str, cluster: &'s [u8]) -> impl Iterator<Item = &'s Stanza> {
        self.stanzas
            .iter()
            .filter(move |s| s.kind == kind && s.get("cluster").is_some_and(|(v, _)| v == cluster))
    }

    fn cluster(&self, st: &Stanza, seen: &[Cluster]) -> Result<Cluster, ParseError> {
        let (name_bytes, name_line) = st.get("name").ok_or(ParseError {
            line: st.line,
            problem: Problem::ClusterWithoutName,
        })?;
        let name = Self::string(name_bytes, "name", name_line)?;
        if seen.iter().any(|c| c.name == name) {
            return Err(ParseError {
                line: st.line,
                problem: Problem::DuplicateCluster(name),
            });
        }
        let mut cluster = Cluster::new(&name);
        if let Some((mode, line)) = st.get("heartbeat_mode") {
            cluster.heartbeat_mode = std::str::from_utf8(mode)
                .ok()
                .and_then(HeartbeatMode::from_stored)
                .ok_or_else(|| ParseError {
                    line,
                    problem: Problem::BadValue {
                        key: "heartbeat_mode",
                        value: text(mode),
                        expected: "'local' or 'global'",
                    },
                })?;
        }
        for n in self.members("node", name_bytes) {
            let node = Self::node(n)?;
            if cluster.node(&node.name).is_some() {
                return Err(ParseError {
                    line: n.line,
                    problem: Problem::DuplicateNode(node.name),
                });
            }
            cluster.nodes.push(node);
        }
        for h in self.members("heartbeat", name_bytes) {
            let (region, line) = Self::required(h, "heartbeat", "region")?;
            let region = Self::string(region, "region", line)?;
            if cluster.heartbeats.iter().any(|x| x.region == region) {
                return Err(ParseError {
                    line: h.line,
                    problem: Problem::DuplicateRegion(region),
                });
            }
            cluster.heartbeats.push(Heartbeat { region });
        }
        cluster.node_count = Self::number(st, "cluster", "node_count", u64::from(u32::MAX))?;
        Ok(cluster)
    }

    fn node(st: &Stanza) -> Result<Node, ParseError> {
        let (name, line) = Self::required(st, "node", "name")?;
        let name = Self::string(name, "name", line)?;
        // Node numbers below INT_MAX load; the 0..254 range is not checked here.
        let number = Self::number(st, "node", "number", i32::MAX as u64 - 1)?;
        let (ip, line) = Self::required(st, "node", "ip_address")?;
        let ip_address = std::str::from_utf8(ip)
            .ok()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| ParseError {
                line,
                problem: Problem::BadValue {
                    key: "ip_address",
                    value: text(ip),
                    expected: "an IPv4 address like 10.0.0.1",
                },
            })?;
        let ip_port = Self::number(st, "node", "ip_port", u64::from(u32::MAX))?;
        Ok(Node {
            name,
            number,
            ip_address,
            ip_port,
        })
    }
}

/// Parses a whole `cluster.conf`. Stanzas of unknown kinds, unknown keys, and
/// nodes or regions that name no known cluster are accepted and dropped, as the
/// real tool does.
pub fn parse(input: &[u8]) -> Result<ClusterConf, ParseError> {
    let stanzas = lex(input)?;
    let loader = Loader { stanzas: &stanzas };
    let mut clusters: Vec<Cluster> = Vec::new();
    for st in stanzas.iter().filter(|s| s.kind == "cluster") {
        let c = loader.cluster(st, &clusters)?;
        clusters.push(c);
    }
    Ok(ClusterConf { clusters })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<ClusterConf, ParseError> {
        parse(s.as_bytes())
    }

    fn line_of(s: &str) -> (usize, u8) {
        let e = p(s).unwrap_err();
        (e.line, e.problem.real_code())
    }

    const C1: &str = "cluster:\n\tname = c1\n\tnode_count = 0\n";

    #[test]
    fn minimal_cluster() {
        let c = p(C1).unwrap();
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].name, "c1");
        assert_eq!(c.clusters[0].heartbeat_mode, HeartbeatMode::Local);
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(p("").unwrap(), ClusterConf::default());
        assert_eq!(p("# hi\n\n\n").unwrap(), ClusterConf::default());
    }

    #[test]
    fn lexical_errors_name_their_line() {
        assert_eq!(line_of("\tname = c0\ncluster:\n"), (1, 251));
        assert_eq!(
            line_of("cluster:\n\tnode_count = 0\n\n\tname = c1\n"),
            (4, 251)
        );
        assert_eq!(line_of("cluster:\n\tname = c1\n\t# x\n"), (3, 251));
        assert_eq!(line_of(" cluster:\n"), (1, 251));
        assert_eq!(line_of("cluster\n"), (1, 251));
        assert_eq!(line_of("cluster :\n"), (1, 251));
        assert_eq!(line_of("cluster: x\n"), (1, 251));
        assert_eq!(line_of("cluster:\n\tname\n"), (2, 251));
        assert_eq!(line_of("cluster:\n\tname c1\n"), (2, 251));
        assert_eq!(line_of("cluster:\r\n"), (1, 251));
        assert_eq!(line_of("cluster"), (1, 251));
        assert_eq!(line_of("-x:\n"), (1, 251));
        assert_eq!(
            line_of("cluster:\n\tname = c1\n\t  \n\tnode_count = 0\n"),
            (4, 251)
        );
        assert_eq!(line_of("cluster:\n\tname-x = 1\n"), (2, 251));
    }

    #[test]
    fn values() {
        let st =
            lex(b"x:\n\ta=b\n\tc =  d e # f  \n\tg = h\\\n i\n\tj =\n\tk = l\\m\\\\n\n\tz = q\\")
                .unwrap();
        let vals: Vec<(&str, &[u8])> = st[0]
            .attrs
            .iter()
            .map(|a| (a.key.as_str(), a.value.as_slice()))
            .collect();
        assert_eq!(
            vals,
            vec![
                ("a", &b"b"[..]),
                ("c", b"d e # f  "),
                ("g", b"h\n i"),
                ("j", b""),
                ("k", b"l\\m\\\\n"),
                ("z", b"q"),
            ]
        );
        assert_eq!(st[0].get("c").unwrap().0, b"d e # f");
    }

    #[test]
    fn nul_ends_the_input() {
        let c = p("cluster:\n\tname = c1\n\tnode_count = 0\n\0garbage:::\n").unwrap();
        assert_eq!(c.clusters.len(), 1);
    }

    #[test]
    fn comments_do_not_close_stanzas_and_headers_need_no_blank_line() {
        let c = p("cluster:\n\tnode_count = 1\n# c\n\tname = c1\nnode:\n\tcluster = c1\n\tname = n1\n\tnumber = 4\n\tip_address = 10.0.0.1\n\tip_port = 7777\n").unwrap();
        assert_eq!(c.clusters[0].nodes[0].number, 4);
    }

    #[test]
    fn semantic_rules() {
        let node = |extra: &str| {
            format!(
                "cluster:\n\tname = c1\n\tnode_count = 1\n\nnode:\n\tcluster = c1\n\tname = n1\n{extra}"
            )
        };
        let ok = "\tnumber = 1\n\tip_address = 10.0.0.1\n\tip_port = 7777\n";
        assert!(p(&node(ok)).is_ok());
        assert_eq!(
            line_of(&node("\tip_address = 10.0.0.1\n\tip_port = 7777\n")),
            (5, 234)
        );
        assert_eq!(
            line_of(&node(
                "\tnumber = one\n\tip_address = 10.0.0.1\n\tip_port = 7777\n"
            )),
            (8, 234)
        );
        assert_eq!(
            line_of(&node(
                "\tnumber = -1\n\tip_address = 10.0.0.1\n\tip_port = 7777\n"
            )),
            (8, 222)
        );
        assert_eq!(
            line_of(&node(
                "\tnumber = 2147483647\n\tip_address = 10.0.0.1\n\tip_port = 1\n"
            )),
            (8, 222)
        );
        let c = p(&node(
            "\tnumber = 2147483646\n\tip_address = 10.0.0.1\n\tip_port = 4294967295\n",
        ))
        .unwrap();
        assert_eq!(c.clusters[0].nodes[0].ip_port, u32::MAX);
        assert_eq!(
            line_of(&node(
                "\tnumber = 1\n\tip_address = 10.0.0.1\n\tip_port = 4294967296\n"
            )),
            (10, 222)
        );
        assert_eq!(
            line_of(&node(
                "\tnumber = 1\n\tip_address = 010.0.0.1\n\tip_port = 1\n"
            )),
            (9, 234)
        );
        assert_eq!(
            line_of(&node(
                "\tnumber = 0x1\n\tip_address = 10.0.0.1\n\tip_port = 1\n"
            )),
            (8, 234)
        );
        let c = p(&node(
            "\tnumber = +5\n\tip_address = 10.0.0.1\n\tip_port = -0\n",
        ))
        .unwrap();
        assert_eq!(c.clusters[0].nodes[0].number, 5);
        // Nodes of unknown clusters and without a cluster key are ignored.
        assert!(p(&format!("{C1}\nnode:\n\tcluster = c9\n\tname = x\n")).is_ok());
        assert!(p(&format!("{C1}\nnode:\n\tname = x\n")).is_ok());
        assert_eq!(line_of(&format!("{C1}\n{C1}")), (5, 254));
        assert_eq!(line_of("cluster:\n\tnode_count = 0\n"), (1, 234));
        assert_eq!(line_of("cluster:\n\tname = c1\n"), (1, 234));
        assert_eq!(
            line_of("cluster:\n\tname = c1\n\tnode_count = 4294967296\n"),
            (3, 222)
        );
        assert_eq!(
            line_of("cluster:\n\tname = c1\n\tnode_count = 0\n\theartbeat_mode =\n"),
            (4, 234)
        );
        let c = p("cluster:\n\tname = c1\n\tnode_count = 0\n\theartbeat_mode = GLOBAL \n").unwrap();
        assert_eq!(c.clusters[0].heartbeat_mode, HeartbeatMode::Global);
        let hb = |r: &str| format!("{C1}\nheartbeat:\n\tcluster = c1\n\tregion = {r}\n");
        assert_eq!(line_of(&hb("   ")), (7, 234));
        assert_eq!(
            line_of(&format!(
                "{}\nheartbeat:\n\tcluster = c1\n\tregion = R \n",
                hb("R")
            )),
            (9, 244)
        );
    }

    #[test]
    fn strtoul_matches_c() {
        assert_eq!(strtoul10(b"12"), (12, true));
        assert_eq!(strtoul10(b" +12"), (12, true));
        assert_eq!(strtoul10(b"-1"), (u64::MAX, true));
        assert_eq!(strtoul10(b"-0"), (0, true));
        assert_eq!(strtoul10(b"12x"), (12, false));
        assert_eq!(strtoul10(b"x"), (0, false));
        assert_eq!(strtoul10(b"99999999999999999999999"), (u64::MAX, true));
    }

    #[test]
    fn ipv4_is_strict_like_inet_pton() {
        for bad in [
            "010.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.256",
            " 1.2.3.4",
            "::1",
            "1.2.3.04",
        ] {
            assert!(bad.parse::<Ipv4Addr>().is_err(), "{bad}");
        }
        for good in ["0.0.0.0", "10.0.0.1", "255.255.255.255", "192.168.0.10"] {
            assert_eq!(good.parse::<Ipv4Addr>().unwrap().to_string(), good);
        }
    }
}
