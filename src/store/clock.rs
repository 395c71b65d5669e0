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

/// The latest time [`now`] returned, in microseconds since the epoch.
static LATEST_MICROS: AtomicI64 = AtomicI64::new(i64::MIN);

/// The largest step back of the offset that [`now`] holds still through: more than a
/// reading's own error (at most half of [`MAX_ROUND_TRIP`]) is a real correction.
const HOLD_LIMIT_MICROS: i64 = 1_000_000;

/// What [`now`] returns after `latest` when the clock reads `micros`.
fn after(latest: i64, micros: i64) -> i64 {
    match micros < latest && latest - micros < HOLD_LIMIT_MICROS {
        true => latest,
        false => micros,
    }
}

/// The database's current time (UTC, no zone), as stored in the database. A new
/// reading of the offset a little smaller than the last (each carries up to half a
/// round trip of error, and a loaded machine makes round trips long) does not take it
/// backwards: it holds still until the host's clock catches up, so that a time written
/// after another is not earlier than it (a coupon's rotation after the grants that
/// emptied it). A step back of a second or more is a correction and is taken.
pub fn now() -> NaiveDateTime {
    let read = host_now() + offset();
    let micros = read.timestamp_micros();
    let update = |latest| Some(after(latest, micros));
    let before = LATEST_MICROS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, update)
        .unwrap_or_else(|same| same);
    let latest = after(before, micros);
    DateTime::from_timestamp_micros(latest)
        .unwrap_or(read)
        .naive_utc()
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
    fn now_holds_through_a_small_step_back_and_takes_a_correction() {
        let latest = 1_000_000_000;
        assert_eq!(after(latest, latest + 5), latest + 5, "forwards");
        assert_eq!(after(latest, latest - 300_000), latest, "300 ms back: held");
        assert_eq!(
            after(latest, latest - 60_000_000),
            latest - 60_000_000,
            "a correction"
        );
        assert_eq!(after(i64::MIN, latest), latest, "the first reading");
    }

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
