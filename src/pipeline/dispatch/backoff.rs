//! When to try a failed delivery again: exponential backoff with jitter, and the
//! partner's `Retry-After`.
//!
//! The delay doubles from `dispatch.retry_base` with each attempt and never exceeds
//! `dispatch.retry_max`. Jitter spreads the retries of a burst that failed together (a
//! partner outage fails thousands of deliveries in the same second) so they do not all
//! come back at once.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Doublings beyond this cannot matter: `2^31` times any base worth configuring is
/// already far beyond any sane `retry_max`, and it keeps the shift from overflowing.
const MAX_DOUBLINGS: u32 = 31;

/// The delay before the next attempt, after `attempt` attempts have failed (1 for the
/// first failure; 0 is taken as 1).
///
/// The backoff is `base * 2^(attempt-1)`, capped at `max`, with *equal jitter*: a
/// uniformly random delay between half of it and all of it. Equal rather than full
/// jitter so a retry never comes back almost at once, which a struggling partner would
/// feel as no backoff at all.
///
/// A partner's `Retry-After` (already parsed, see [`parse_retry_after`]) is a floor: the
/// partner said "not before", so the delay is at least that. It only ever lengthens the
/// delay, never shortens it below the jittered backoff, because a partner answering
/// `Retry-After: 0` on every attempt would otherwise burn all of a delivery's attempts
/// in a few seconds. Either way the result
/// is capped at `max` (`dispatch.retry_max`), so a partner cannot park a delivery for a
/// week.
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    retry_delay_with(&mut rand::rng(), attempt, base, max, retry_after)
}

fn retry_delay_with(
    rng: &mut impl Rng,
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
    let backoff = base.saturating_mul(1 << doublings).min(max);
    let jittered = equal_jitter(rng, backoff);
    jittered.max(retry_after.unwrap_or(Duration::ZERO)).min(max)
}

/// A uniformly random duration in `[delay / 2, delay]`, to the millisecond.
fn equal_jitter(rng: &mut impl Rng, delay: Duration) -> Duration {
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let half = millis / 2;
    Duration::from_millis(half + rng.random_range(0..=millis - half))
}

/// Parses a `Retry-After` header value: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), as a delay from `now`.
///
/// A date in the past means "now" (`Duration::ZERO`). Anything else (negative or
/// fractional seconds, a malformed date) is `None`: the header is ignored and the
/// ordinary backoff applies, since a partner's typo should not stop retries.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time"; the caller caps it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(3600);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Many draws of `retry_delay` for one attempt, from a seeded generator.
    fn draws(attempt: u32, retry_after: Option<Duration>) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(7);
        (0..500)
            .map(|_| retry_delay_with(&mut rng, attempt, BASE, MAX, retry_after))
            .collect()
    }

    #[test]
    fn delays_double_each_attempt_within_equal_jitter() {
        for (attempt, full) in [(1, 5), (2, 10), (3, 20), (4, 40), (6, 160)] {
            let delays = draws(attempt, None);
            let (lo, hi) = (secs(full) / 2, secs(full));
            assert!(
                delays.iter().all(|d| (lo..=hi).contains(d)),
                "attempt {attempt}: every delay within {lo:?}..={hi:?}"
            );
            let spread = delays
                .iter()
                .max()
                .unwrap()
                .saturating_sub(*delays.iter().min().unwrap());
            assert!(
                spread > (hi - lo) / 2,
                "attempt {attempt}: delays are jittered"
            );
        }
    }

    #[test]
    fn attempt_zero_is_treated_as_the_first() {
        assert!(draws(0, None).iter().all(|d| (secs(2)..=BASE).contains(d)));
    }

    #[test]
    fn delays_never_exceed_retry_max_even_after_many_attempts() {
        for attempt in [11, 12, 40, u32::MAX] {
            let delays = draws(attempt, None);
            assert!(
                delays.iter().all(|d| (MAX / 2..=MAX).contains(d)),
                "{attempt}"
            );
        }
        let huge = retry_delay(u32::MAX, Duration::MAX, MAX, None);
        assert!(huge <= MAX);
    }

    #[test]
    fn a_longer_retry_after_is_honoured() {
        assert!(draws(1, Some(secs(7))).iter().all(|d| *d == secs(7)));
    }

    #[test]
    fn a_shorter_retry_after_does_not_shorten_the_backoff() {
        assert!(draws(4, Some(Duration::ZERO))
            .iter()
            .all(|d| *d >= secs(20)));
    }

    #[test]
    fn retry_after_is_capped_at_retry_max() {
        assert_eq!(retry_delay(1, BASE, MAX, Some(secs(7 * 24 * 3600))), MAX);
    }

    #[test]
    fn retry_after_parses_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(secs(120)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_parses_an_http_date_relative_to_now() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    #[test]
    fn malformed_retry_after_is_ignored() {
        let now = SystemTime::now();
        for bad in ["", "  ", "-5", "1.5", "soon", "+7", "Wed, 21 Oct 2015"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
