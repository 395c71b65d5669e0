//! The helper functions rule scripts may call beyond Rhai's standard library. Each is
//! part of the public contract for ops (see the README), so their semantics are fixed
//! here and pinned by tests: change one and old rules change meaning.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, INT};
use sha2::{Digest, Sha256};

use super::Clock;

/// What `days_since(())` and `hours_since(())` return: "never" is longer ago than any
/// real timestamp, so `days_since(history.last_grant_at) > 30` holds for a user who
/// never had a grant. One billion rather than `i64::MAX` so that a rule can still add to
/// or multiply it without an arithmetic overflow error.
pub const NEVER: INT = 1_000_000_000;

type FnResult<T> = Result<T, Box<EvalAltResult>>;

/// Registers every helper on `engine`; the time helpers read `clock`.
pub(super) fn register(engine: &mut Engine, clock: Clock) {
    let now_clock = clock.clone();
    engine.register_fn("now", move || now(now_clock()));
    let days_clock = clock.clone();
    engine.register_fn("days_since", move |ts: &str| days_since(days_clock(), ts));
    engine.register_fn("days_since", |_: ()| NEVER);
    engine.register_fn("hours_since", move |ts: &str| hours_since(clock(), ts));
    engine.register_fn("hours_since", |_: ()| NEVER);
    engine.register_fn("bucket", |text: &str| bucket(text, None));
    engine.register_fn("bucket", |text: &str, salt: &str| bucket(text, Some(salt)));
    engine.register_fn("contains_any", contains_any);
}

/// `now()`: the current time as an RFC 3339 string in UTC with whole seconds,
/// e.g. `"2025-01-31T12:00:00Z"`.
pub fn now(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_timestamp(function: &str, ts: &str) -> FnResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .map(|ts| ts.with_timezone(&Utc))
        .map_err(|err| format!("{function}: {ts:?} is not an RFC 3339 timestamp: {err}").into())
}

/// `days_since(ts)`: whole days from the RFC 3339 timestamp `ts` to now, rounded toward
/// zero (23h59m ago is 0), negative for a time in the future. `days_since(())` is
/// [`NEVER`]. Any other text is a run-time error naming the bad value.
pub fn days_since(now: DateTime<Utc>, ts: &str) -> FnResult<INT> {
    Ok((now - parse_timestamp("days_since", ts)?).num_days())
}

/// `hours_since(ts)`: whole hours from the RFC 3339 timestamp `ts` to now, rounded
/// toward zero, negative for a time in the future. `hours_since(())` is [`NEVER`]. Any
/// other text is a run-time error naming the bad value.
pub fn hours_since(now: DateTime<Utc>, ts: &str) -> FnResult<INT> {
    Ok((now - parse_timestamp("hours_since", ts)?).num_hours())
}

/// `bucket(text)` and `bucket(text, salt)`: a stable number in `0..=99`, for splitting
/// users into groups (`bucket(request.user_id) < 10` is 10% of users).
///
/// It is the first 8 bytes of the SHA-256 of the UTF-8 `text` (with a salt: of
/// `salt + ":" + text`), read as a big-endian unsigned integer, modulo 100; the same
/// on every run, machine and version. A different salt per experiment gives
/// independent splits. Reproduce it with
/// `python3 -c 'import hashlib,sys; print(int.from_bytes(hashlib.sha256(sys.argv[1].encode()).digest()[:8], "big") % 100)' "$salt:$text"`.
pub fn bucket(text: &str, salt: Option<&str>) -> INT {
    let mut hasher = Sha256::new();
    if let Some(salt) = salt {
        hasher.update(salt.as_bytes());
        hasher.update(b":");
    }
    hasher.update(text.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below 100, so the conversion cannot fail.
    INT::try_from(u64::from_be_bytes(first) % 100).unwrap_or_default()
}

/// A value `contains_any` can compare; floats and containers are left out because
/// their equality is not what a rule author would expect from list membership.
#[derive(PartialEq, Eq, Hash)]
enum Member {
    Unit,
    Bool(bool),
    Int(INT),
    Char(char),
    Text(ImmutableString),
}

impl Member {
    fn of(value: &Dynamic) -> Option<Self> {
        if value.is_unit() {
            Some(Self::Unit)
        } else if let Ok(b) = value.as_bool() {
            Some(Self::Bool(b))
        } else if let Ok(i) = value.as_int() {
            Some(Self::Int(i))
        } else if let Ok(c) = value.as_char() {
            Some(Self::Char(c))
        } else {
            value.clone().into_immutable_string().ok().map(Self::Text)
        }
    }
}

/// `contains_any(list, wanted)`: true when at least one item of the array `wanted` is
/// in the array `list` (`contains_any(request.attributes.tags, ["vip", "staff"])`).
/// Items compare equal when they are the same string, integer, boolean, character or
/// `()`; floats, arrays and maps never match. It runs in time linear in both arrays,
/// so two large arrays cannot stall a worker past the operations limit.
pub fn contains_any(list: Array, wanted: Array) -> bool {
    let wanted: HashSet<Member> = wanted.iter().filter_map(Member::of).collect();
    !wanted.is_empty()
        && list
            .iter()
            .filter_map(Member::of)
            .any(|m| wanted.contains(&m))
}
