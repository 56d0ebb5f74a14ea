//! The six VMS lock modes and their compatibility.

use std::fmt;
use std::str::FromStr;

/// A lock mode, ordered NL < CR < CW < PR < PW < EX (CW and PR are not
/// comparable in strength; the order is only the numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Mode {
    /// Null: no access; keeps the resource and its LVB alive.
    NL = 0,
    /// Concurrent read.
    CR = 1,
    /// Concurrent write.
    CW = 2,
    /// Protected read (shared).
    PR = 3,
    /// Protected write (update).
    PW = 4,
    /// Exclusive.
    EX = 5,
}

/// The standard compatibility matrix, indexed `[a][b]`.
const COMPAT: [[bool; 6]; 6] = [
    // NL    CR     CW     PR     PW     EX
    [true, true, true, true, true, true],      // NL
    [true, true, true, true, true, false],     // CR
    [true, true, true, false, false, false],   // CW
    [true, true, false, true, false, false],   // PR
    [true, true, false, false, false, false],  // PW
    [true, false, false, false, false, false], // EX
];

impl Mode {
    /// All modes, weakest first.
    pub const ALL: [Mode; 6] = [Mode::NL, Mode::CR, Mode::CW, Mode::PR, Mode::PW, Mode::EX];

    /// Whether a lock granted in `self` may coexist with one granted in `other`.
    pub fn compatible(self, other: Mode) -> bool {
        COMPAT[self as usize][other as usize]
    }

    /// Whether a holder in this mode may write the lock value block.
    pub fn can_write_lvb(self) -> bool {
        matches!(self, Mode::PW | Mode::EX)
    }

    /// Whether a holder in this mode may read the lock value block.
    pub fn can_read_lvb(self) -> bool {
        self != Mode::NL
    }

    /// The two-letter name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::NL => "NL",
            Mode::CR => "CR",
            Mode::CW => "CW",
            Mode::PR => "PR",
            Mode::PW => "PW",
            Mode::EX => "EX",
        }
    }

    /// The mode with this number (0–5).
    pub fn from_u8(n: u8) -> Option<Mode> {
        Mode::ALL.get(n as usize).copied()
    }

    /// Bit of this mode in a set of modes.
    pub(crate) fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of NL, CR, CW, PR, PW, EX.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lock mode '{0}' (expected NL, CR, CW, PR, PW or EX)")]
pub struct BadMode(pub String);

impl FromStr for Mode {
    type Err = BadMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| BadMode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matrix written out as in the reference, row by row.
    const EXPECTED: &str = "\
        NL YYYYYY
        CR YYYYYn
        CW YYYnnn
        PR YYnYnn
        PW YYnnnn
        EX Ynnnnn";

    #[test]
    fn matrix_is_the_standard_one_and_symmetric() {
        for (row, line) in EXPECTED.lines().enumerate() {
            let line = line.trim();
            let a = Mode::from_u8(row as u8).unwrap();
            assert!(line.starts_with(a.as_str()));
            for (col, c) in line[3..].chars().enumerate() {
                let b = Mode::from_u8(col as u8).unwrap();
                assert_eq!(a.compatible(b), c == 'Y', "{a} vs {b}");
                assert_eq!(a.compatible(b), b.compatible(a), "symmetry {a} {b}");
            }
        }
    }

    #[test]
    fn names_parse_any_case() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
            assert_eq!(m.as_str().to_lowercase().parse::<Mode>().unwrap(), m);
        }
        assert!("XX".parse::<Mode>().is_err());
    }
}
