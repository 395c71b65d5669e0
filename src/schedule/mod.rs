//! Schedule: the cron jobs (tokio-cron-scheduler) that keep inventory ahead of demand —
//! rotate low or exhausted coupons, recover expired claims, reconcile stock and grant
//! states with the ledger — expire grants and remind of their expiry, and sample the
//! stock for the console's burn-down plots.
//!
//! tokio-cron-scheduler fires on every daemon. Each job therefore takes a lease row in
//! `job_leases` for the tick first: one daemon runs it per tick, a daemon that dies
//! gives it up when the lease runs out, and a tick that comes while the job still runs
//! is skipped. The tick is named by the job's cron schedule (see [`tick_of`]), never by
//! the firing time, which is late by as much as the scheduler's half-second poll.
//!
//! Ticks and leases are read from the database's clock ([`store::now`]), so daemons
//! whose host clocks disagree name the same tick and see the same leases expire.
//! tokio-cron-scheduler still fires on the host's clock: on a host ahead of the
//! database, a firing may come before its scheduled time on the database's clock and
//! run the tick before it (late), never a tick twice or one ahead.

pub mod inventory;
pub mod lifecycle;
pub mod reconcile;
pub mod samples;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::in_force::InForce;
use crate::store::{self, Db, StoreError};

/// The scheduled jobs, as named in `job_leases`.
pub const INVENTORY_CHECK: &str = "inventory_check";
/// See [`INVENTORY_CHECK`].
pub const RECLAIM_LEASES: &str = "reclaim_leases";
/// See [`INVENTORY_CHECK`].
pub const RECONCILE: &str = "reconcile";
/// See [`INVENTORY_CHECK`]: expiry and reminders ([`lifecycle`]); also the `job` of
/// the transitions it writes.
pub const EXPIRE_GRANTS: &str = "expire_grants";
/// See [`INVENTORY_CHECK`]: every coupon's remaining stock for the console
/// ([`samples`]).
pub const SAMPLE_STOCK: &str = "sample_stock";

/// What the scheduled jobs use, built by the runtime.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Db,
    /// The start-up config (`worker.*`, `schedule.*`, channels).
    pub config: Arc<Config>,
    /// The config whose campaigns are in force.
    pub catalog: InForce<Config>,
    /// This daemon's name in `job_leases`.
    pub instance: Arc<String>,
    /// Signalled when a job wrote outbox rows (alerts).
    pub outbox_ready: Arc<Notify>,
}

/// Parses a `schedule.*` cron expression (six fields, seconds first) exactly as
/// tokio-cron-scheduler does; `None` when it is not one.
pub fn parse_cron(cron: &str) -> Option<Cron> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(cron)
        .ok()
}

/// How early a firing may come and still name the scheduled time just after it.
/// tokio-cron-scheduler fires a job once its scheduled time has passed on this
/// daemon's clock (it looks every 500 ms), so firings are late, not early; the
/// allowance only absorbs a clock stepped back between the scheduler's look and ours.
/// It is small on purpose: on a schedule whose ticks are `d` apart, a firing later
/// than `d - EARLY_FIRING` is taken for an early firing of the next tick.
pub const EARLY_FIRING: TimeDelta = TimeDelta::milliseconds(100);

/// The scheduled time a firing at `fired_at` belongs to: the latest time of `schedule`
/// at or before `fired_at + EARLY_FIRING`. Every daemon that fires for one scheduled
/// time — however late — names the same tick, so the job runs once per scheduled time.
/// Without an earlier time (a schedule that has not started), the firing's second.
pub fn tick_of(schedule: &Cron, fired_at: DateTime<Utc>) -> DateTime<Utc> {
    // Cron times are whole seconds; croner keeps the fraction of a matching time.
    let second = |t: DateTime<Utc>| t.duration_trunc(TimeDelta::seconds(1)).unwrap_or(t);
    schedule
        .find_previous_occurrence(&second(fired_at + EARLY_FIRING), true)
        .unwrap_or_else(|_| second(fired_at))
}

/// Runs `job` if this daemon wins the lease of the tick of `schedule` that a firing at
/// `fired_at` (the database's clock) belongs to ([`tick_of`]); returns whether it ran.
pub async fn run_once_per_tick<F, Fut>(
    deps: &Deps,
    name: &str,
    schedule: &Cron,
    fired_at: DateTime<Utc>,
    job: F,
) -> bool
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let tick = tick_of(schedule, fired_at).naive_utc();
    let now = store::now();
    let held_until = now + TimeDelta::from_std(deps.config.worker.lease).unwrap_or(TimeDelta::MAX);
    let holder = deps.instance.as_str();
    let won = async {
        let mut conn = deps.db.get().await?;
        let won = conn
            .acquire_job(name, holder, tick, now, held_until)
            .await?;
        Ok::<_, StoreError>(won)
    };
    match won.await {
        Ok(true) => {}
        Ok(false) => {
            debug!(
                job = name,
                "another daemon runs this tick, or the last run is still going"
            );
            return false;
        }
        Err(e) => {
            error!(job = name, error = %e, "cannot take the job lease");
            return false;
        }
    }
    match job().await {
        Ok(n) => debug!(job = name, changed = n, "scheduled job done"),
        Err(e) => error!(job = name, error = %e, "scheduled job failed"),
    }
    let released = async {
        let mut conn = deps.db.get().await?;
        conn.release_job(name, holder, store::now()).await?;
        Ok::<_, StoreError>(())
    };
    if let Err(e) = released.await {
        error!(job = name, error = %e, "cannot release the job lease; it expires by itself");
    }
    true
}

/// Recovers claims older than `worker.lease`.
pub async fn reclaim(deps: &Deps) -> Result<usize, StoreError> {
    let lease = TimeDelta::from_std(deps.config.worker.lease).unwrap_or(TimeDelta::MAX);
    let before = store::now() - lease;
    let max = deps.config.worker.max_attempts as i32;
    let reclaimed = deps.db.get().await?.reclaim_expired(before, max).await?;
    if reclaimed.requeued + reclaimed.failed > 0 {
        info!(
            requeued = reclaimed.requeued,
            failed = reclaimed.failed,
            "expired claims recovered"
        );
    }
    if reclaimed.rejected > 0 {
        warn!(
            rejected = reclaimed.rejected,
            "requests with a status no stage takes up were rejected"
        );
    }
    Ok(reclaimed.requeued + reclaimed.failed + reclaimed.rejected)
}

/// The time between two ticks of a cron expression (the inventory check's run-out
/// forecast looks at least this far ahead); 10 s when it cannot be computed.
pub fn tick_interval(cron: &str) -> Duration {
    let fallback = Duration::from_secs(10);
    let Some(parsed) = parse_cron(cron) else {
        return fallback;
    };
    let mut next = parsed.iter_after(Utc::now());
    match (next.next(), next.next()) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or(fallback),
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_interval_reads_the_cron_expression() {
        assert_eq!(tick_interval("*/10 * * * * *"), Duration::from_secs(10));
        assert_eq!(tick_interval("0 * * * * *"), Duration::from_secs(60));
        assert_eq!(tick_interval("not cron"), Duration::from_secs(10));
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn a_late_firing_names_the_scheduled_time_it_was_late_for() {
        let every_10s = parse_cron("*/10 * * * * *").unwrap();
        let tick = at("2026-11-27T12:00:10Z");
        for fired in [
            "2026-11-27T12:00:10Z",
            "2026-11-27T12:00:10.100Z",
            "2026-11-27T12:00:10.600Z",
            "2026-11-27T12:00:11.400Z",
            "2026-11-27T12:00:19.800Z",
        ] {
            assert_eq!(tick_of(&every_10s, at(fired)), tick, "fired at {fired}");
        }
    }

    #[test]
    fn an_early_firing_names_the_scheduled_time_just_after_it() {
        let every_10s = parse_cron("*/10 * * * * *").unwrap();
        let tick = at("2026-11-27T12:00:10Z");
        assert_eq!(tick_of(&every_10s, at("2026-11-27T12:00:09.950Z")), tick);
        assert_eq!(
            tick_of(&every_10s, at("2026-11-27T12:00:09.500Z")),
            at("2026-11-27T12:00:00Z"),
            "half a second early is a late firing of the tick before"
        );
        let hourly = parse_cron("0 0 * * * *").unwrap();
        assert_eq!(
            tick_of(&hourly, at("2026-11-27T12:00:01.400Z")),
            at("2026-11-27T12:00:00Z")
        );
        assert_eq!(
            tick_of(&hourly, at("2026-11-27T12:59:59.950Z")),
            at("2026-11-27T13:00:00Z")
        );
    }
}
