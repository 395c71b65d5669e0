//! The database's clock, as the daemon keeps it: the host clock plus the offset of the
//! database's clock from it, measured by [`super::health`] every second.
//!
//! Every time couponsd compares with a time another daemon wrote — a claim's
//! `claimed_at` against `worker.lease`, a delivery hold's `next_attempt_at`, a job
//! lease's `held_until`, the tick a scheduled job runs for — is read from [`now`], so
//! daemons on hosts whose clocks disagree still agree on who holds what: they all read
//! the one database's clock. The offset is process-wide: one process talks to one
//! database. Until a first reading (one-shot commands read it once at start-up) it is
//! zero, and [`now`] is the host's clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

/// In debug builds only (the tests), this environment variable shifts the host clock
/// as couponsd reads it by a number of seconds (`3600`, `-90`), standing in for a host
/// whose clock is wrong. Release builds never read it.
pub const SKEW_FOR_TESTS: &str = "COUPONSD_TEST_CLOCK_SKEW_SECS";

/// A reading whose round trip took longer than this is not used: half the round trip
/// is the error it could carry.
const MAX_ROUND_TRIP: TimeDelta = TimeDelta::seconds(1);

/// The database's clock minus the host's, in microseconds.
static OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// The host's clock (with [`SKEW_FOR_TESTS`] applied in debug builds).
pub fn host_now() -> DateTime<Utc> {
    Utc::now() + skew_for_tests()
}

fn skew_for_tests() -> TimeDelta {
    static SKEW: OnceLock<TimeDelta> = OnceLock::new();
    *SKEW.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return TimeDelta::zero();
        }
        std::env::var(SKEW_FOR_TESTS)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map_or(TimeDelta::zero(), TimeDelta::seconds)
    })
}

/// The database's current time (UTC, no zone), as stored in the database.
pub fn now() -> NaiveDateTime {
    (host_now() + offset()).naive_utc()
}

/// The database's clock minus the host's, as last measured.
pub fn offset() -> TimeDelta {
    TimeDelta::microseconds(OFFSET_MICROS.load(Ordering::Relaxed))
}

/// Records a reading of the database's clock: `database` was read by a statement sent
/// at `sent` and answered at `received` (host clock). Returns false, and keeps the last
/// offset, when the reading is not worth much (see [`offset_of`]).
pub fn observe(sent: DateTime<Utc>, database: NaiveDateTime, received: DateTime<Utc>) -> bool {
    match offset_of(sent, database, received).and_then(|o| o.num_microseconds()) {
        Some(micros) => {
            OFFSET_MICROS.store(micros, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// The database's clock minus the host's, from one reading: the database read its
/// clock about half-way through the round trip. `None` when the round trip took
/// longer than a second, since half of it is the error the reading could carry.
pub fn offset_of(
    sent: DateTime<Utc>,
    database: NaiveDateTime,
    received: DateTime<Utc>,
) -> Option<TimeDelta> {
    let round_trip = received - sent;
    if round_trip > MAX_ROUND_TRIP || round_trip < TimeDelta::zero() {
        return None;
    }
    Some(database.and_utc() - (sent + round_trip / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_half_way_through_the_round_trip() {
        let sent = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .to_utc();
        let received = sent + TimeDelta::milliseconds(200);
        let database = (sent + TimeDelta::seconds(3600) + TimeDelta::milliseconds(100)).naive_utc();
        assert_eq!(
            offset_of(sent, database, received),
            Some(TimeDelta::seconds(3600))
        );
        assert_eq!(
            offset_of(sent, database, sent + TimeDelta::seconds(5)),
            None,
            "a slow reading is not used"
        );
    }
}
