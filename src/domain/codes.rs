//! What makes a granted coupon redeemable: its code (generated from a pattern, or
//! drawn from a pool the partner imported) and its validity. A coupon whose validity
//! has ended, or would leave less than its `min_validity`, is as unusable as one out of
//! stock.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

/// The unambiguous alphabet of generated codes: A–Z and 2–9 without O, I, L, 0 and 1.
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// The longest code the store keeps (bytes).
pub const MAX_CODE_LEN: usize = 64;

/// Where a coupon's codes come from (`codes:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSource {
    /// `codes.generate`: a fresh code per grant from the pattern.
    Generate(CodePattern),
    /// `codes.pool: true`: a code imported by `codes import`; the stock is the pool.
    Pool,
}

/// `codes.generate`: literal characters, and `X` for one character of
/// [`CODE_ALPHABET`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePattern(String);

impl CodePattern {
    /// Parses a pattern: printable ASCII, at most [`MAX_CODE_LEN`] bytes, at least one `X`.
    pub fn parse(text: &str) -> Result<CodePattern, String> {
        if text.len() > MAX_CODE_LEN {
            return Err(format!("{text:?} is longer than {MAX_CODE_LEN} bytes"));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "{text:?} has {c:?}: a pattern is printable ASCII without spaces"
            ));
        }
        if !text.contains('X') {
            return Err(format!(
                "{text:?} has no X: each X stands for one random character"
            ));
        }
        Ok(CodePattern(text.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many distinct codes the pattern can make (saturating).
    pub fn capacity(&self) -> u128 {
        let places = self.0.bytes().filter(|&b| b == b'X').count() as u32;
        (CODE_ALPHABET.len() as u128).saturating_pow(places)
    }

    /// A fresh code from a cryptographically secure generator.
    pub fn generate(&self) -> String {
        let mut rng = rand::rng();
        self.0
            .bytes()
            .map(|b| match b {
                b'X' => CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char,
                other => other as char,
            })
            .collect()
    }
}

/// A coupon's validity (`valid_for`, `valid_until`, `min_validity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Validity {
    /// `valid_for`: counted from the grant.
    pub valid_for: Option<Duration>,
    /// `valid_until`: a fixed end.
    pub valid_until: Option<DateTime<Utc>>,
    /// `min_validity` [0]: never grant with less validity left.
    pub min_validity: Duration,
}

/// Why a coupon cannot be granted now for its validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// `valid_until` has passed.
    Expired(DateTime<Utc>),
    /// It would leave less than `min_validity`.
    TooShort {
        /// When a grant made now would end.
        ends: DateTime<Utc>,
        /// `min_validity`.
        min: Duration,
    },
}

impl Validity {
    /// True when any validity is set: grants then carry `valid_from` and `expires_at`.
    pub fn is_set(&self) -> bool {
        self.valid_for.is_some() || self.valid_until.is_some()
    }

    /// When a coupon granted at `now` stops being valid: the earlier of `now +
    /// valid_for` and `valid_until`; `None` when neither is set.
    pub fn expires_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let relative = self.valid_for.and_then(|d| now.checked_add_signed(d));
        match (relative, self.valid_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a grant made at `now` would be usable long enough.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), Unusable> {
        let Some(ends) = self.expires_at(now) else {
            return Ok(());
        };
        if ends <= now {
            return Err(Unusable::Expired(ends));
        }
        if ends - now < self.min_validity {
            return Err(Unusable::TooShort {
                ends,
                min: self.min_validity,
            });
        }
        Ok(())
    }
}

impl Unusable {
    /// The reason, after the coupon's id: "NEW10 {reason}".
    pub fn describe(&self) -> String {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self {
            Unusable::Expired(at) => format!("has expired (valid until {})", time(at)),
            Unusable::TooShort { ends, min } => format!(
                "would leave less than its min_validity {} (valid until {})",
                humantime::format_duration(min.to_std().unwrap_or_default()),
                time(ends)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_pattern_fills_each_x_from_the_unambiguous_alphabet() {
        let pattern = CodePattern::parse("NEW10-XXXX-XXXX").unwrap();
        assert_eq!(pattern.capacity(), 31u128.pow(8));
        for _ in 0..200 {
            let code = pattern.generate();
            assert_eq!(code.len(), 15);
            assert!(code.starts_with("NEW10-") && code.as_bytes()[10] == b'-');
            assert!(code[6..]
                .bytes()
                .filter(|&b| b != b'-')
                .all(|b| CODE_ALPHABET.contains(&b)));
        }
        assert_eq!(CODE_ALPHABET.len(), 31);
        for ambiguous in b"OIL01" {
            assert!(!CODE_ALPHABET.contains(ambiguous));
        }
        assert!(CodePattern::parse("NEW10").unwrap_err().contains("no X"));
        assert!(CodePattern::parse("A X").is_err());
        assert!(CodePattern::parse(&"X".repeat(65)).is_err());
    }

    #[test]
    fn validity_ends_at_the_earlier_end_and_min_validity_refuses_a_short_one() {
        let now = at("2026-12-30T00:00:00Z");
        let validity = Validity {
            valid_for: Some(Duration::days(7)),
            valid_until: Some(at("2026-12-31T23:59:59+08:00")),
            min_validity: Duration::hours(24),
        };
        assert_eq!(validity.expires_at(now), Some(at("2026-12-31T15:59:59Z")));
        assert_eq!(validity.check(now), Ok(()));
        let late = at("2026-12-31T00:00:00Z");
        assert!(matches!(
            validity.check(late),
            Err(Unusable::TooShort { .. })
        ));
        assert!(matches!(
            validity.check(at("2027-01-01T00:00:00Z")),
            Err(Unusable::Expired(_))
        ));
        assert_eq!(
            Validity {
                valid_for: Some(Duration::days(7)),
                ..Validity::default()
            }
            .expires_at(now),
            Some(at("2027-01-06T00:00:00Z"))
        );
        assert_eq!(Validity::default().expires_at(now), None);
        assert_eq!(Validity::default().check(now), Ok(()));
    }
}
