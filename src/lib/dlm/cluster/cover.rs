//! How a node lock covers local locks: which local modes a node lock's
//! mode lets the node grant with no message, the weakest node-lock mode
//! for a set of local modes, and where a node lock can come down to when
//! other nodes wait. Pure functions of modes.
//!
//! May depend on: the modes.

use crate::dlm::Mode;

/// Whether a node lock in `held` lets the node grant a local lock in `want`:
/// every mode compatible with `held` (what other nodes may hold) must be
/// compatible with `want`.
pub fn covers(held: Mode, want: Mode) -> bool {
    Mode::ALL
        .iter()
        .all(|&x| !held.compatible(x) || want.compatible(x))
}

/// The weakest mode that covers every mode in `modes`.
pub fn cover_all(modes: impl IntoIterator<Item = Mode>) -> Option<Mode> {
    let modes: Vec<Mode> = modes.into_iter().collect();
    if modes.is_empty() {
        return None;
    }
    Mode::ALL
        .into_iter()
        .filter(|&m| modes.iter().all(|&w| covers(m, w)))
        .max_by_key(|m| Mode::ALL.iter().filter(|&&x| m.compatible(x)).count())
}

/// Where a node lock held in `held` can come down to so that every mode in
/// `blocked` can be granted elsewhere, while still covering the local
/// holders' modes `local`: the strongest such mode below `held` (a
/// down-conversion the master grants at once). `Ok(None)`: no local holder,
/// the node lock can go. `Err(())`: the local holders must release first.
pub fn down_to(blocked: u8, local: &[Mode], held: Mode) -> Result<Option<Mode>, ()> {
    if local.is_empty() {
        return Ok(None);
    }
    Mode::ALL
        .into_iter()
        .filter(|m| {
            Mode::ALL
                .iter()
                .all(|&b| blocked & b.bit() == 0 || m.compatible(b))
        })
        .filter(|&m| covers(held, m))
        .filter(|&m| local.iter().all(|&w| covers(m, w)))
        // The strongest: compatible with the fewest modes.
        .min_by_key(|m| Mode::ALL.iter().filter(|&&x| m.compatible(x)).count())
        .map(Some)
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_relation() {
        assert!(covers(Mode::EX, Mode::EX));
        for m in Mode::ALL {
            assert!(covers(Mode::EX, m));
            assert!(covers(m, Mode::NL));
            assert!(covers(m, m));
        }
        assert!(covers(Mode::PR, Mode::CR));
        assert!(!covers(Mode::PR, Mode::CW));
        assert!(!covers(Mode::CW, Mode::PR));
        assert!(covers(Mode::PW, Mode::PR));
        assert!(covers(Mode::PW, Mode::CW));
        assert!(!covers(Mode::PW, Mode::EX));
        assert_eq!(cover_all([Mode::PR, Mode::CR]), Some(Mode::PR));
        assert_eq!(cover_all([Mode::PR, Mode::CW]), Some(Mode::PW));
        assert_eq!(cover_all([Mode::NL]), Some(Mode::NL));
        assert_eq!(cover_all([]), None);
    }

    #[test]
    fn down_conversion_targets() {
        // EX wanted elsewhere: only NL remains, or nothing.
        assert_eq!(down_to(Mode::EX.bit(), &[], Mode::EX), Ok(None));
        assert_eq!(
            down_to(Mode::EX.bit(), &[Mode::NL], Mode::EX),
            Ok(Some(Mode::NL))
        );
        assert_eq!(down_to(Mode::EX.bit(), &[Mode::PR], Mode::EX), Err(()));
        // PR wanted elsewhere, local PR holders: keep PR.
        assert_eq!(
            down_to(Mode::PR.bit(), &[Mode::PR], Mode::EX),
            Ok(Some(Mode::PR))
        );
        assert_eq!(
            down_to(Mode::PR.bit(), &[Mode::CR], Mode::PW),
            Ok(Some(Mode::PR))
        );
        // Never sideways: from PR, with CW wanted elsewhere and a local CR
        // holder, CR (not CW, which other PR holders would block).
        assert_eq!(
            down_to(Mode::CW.bit(), &[Mode::CR], Mode::PR),
            Ok(Some(Mode::CR))
        );
        // Every answer is covered by the held mode and covers the holders.
        for held in Mode::ALL {
            for b in Mode::ALL {
                for l in Mode::ALL {
                    if let Ok(Some(t)) = down_to(b.bit(), &[l], held) {
                        assert!(covers(held, t) && covers(t, l) && t.compatible(b));
                    }
                }
            }
        }
    }
}
