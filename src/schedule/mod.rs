//! Schedule: the cron jobs (tokio-cron-scheduler) that keep inventory ahead of demand —
//! rotate low or exhausted coupons, recover expired claims, reconcile stock with the
//! ledger.
//!
//! tokio-cron-scheduler fires on every daemon. Each job therefore takes a lease row in
//! `job_leases` for the tick first: one daemon runs it per tick, a daemon that dies
//! gives it up when the lease runs out, and a tick that comes while the job still runs
//! is skipped.

pub mod inventory;
pub mod reconcile;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use croner::parser::{CronParser, Seconds};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::{debug, error, info, warn};

use crate::daemon::Context;
use crate::store::{self, StoreError};
use crate::with_conn;

/// The scheduled jobs, as named in `job_leases`.
pub const INVENTORY_CHECK: &str = "inventory_check";
/// See [`INVENTORY_CHECK`].
pub const RECLAIM_LEASES: &str = "reclaim_leases";
/// See [`INVENTORY_CHECK`].
pub const RECONCILE: &str = "reconcile";

/// Starts the scheduler with the three jobs; stop it with `shutdown`.
pub async fn start(ctx: Context) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let schedule = ctx.config.schedule.clone();
    add(
        &scheduler,
        &ctx,
        INVENTORY_CHECK,
        &schedule.inventory_check,
        |ctx| async move {
            let rotated = inventory::check(&ctx).await.map(|r| r.rotations.len());
            if let Ok(n) = rotated {
                ctx.metrics.record_rotations(n);
            }
            rotated
        },
    )
    .await?;
    add(
        &scheduler,
        &ctx,
        RECLAIM_LEASES,
        &schedule.reclaim_leases,
        |ctx| async move { reclaim(&ctx).await },
    )
    .await?;
    add(
        &scheduler,
        &ctx,
        RECONCILE,
        &schedule.reconcile,
        |ctx| async move { reconcile::run(&ctx).await.map(|drift| drift.len()) },
    )
    .await?;
    scheduler.start().await?;
    Ok(scheduler)
}

async fn add<F, Fut>(
    scheduler: &JobScheduler,
    ctx: &Context,
    name: &'static str,
    cron: &str,
    job: F,
) -> Result<(), JobSchedulerError>
where
    F: Fn(Context) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<usize, StoreError>> + Send + 'static,
{
    let ctx = ctx.clone();
    scheduler
        .add(Job::new_async(cron, move |_, _| {
            let (ctx, job) = (ctx.clone(), job.clone());
            Box::pin(async move {
                run_once_per_tick(&ctx, name, Utc::now(), || job(ctx.clone())).await;
            })
        })?)
        .await?;
    Ok(())
}

/// Runs `job` if this daemon wins the tick's lease; returns whether it ran.
pub async fn run_once_per_tick<F, Fut>(
    ctx: &Context,
    name: &str,
    fired_at: DateTime<Utc>,
    job: F,
) -> bool
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    // Daemons fire within milliseconds of each other: the nearest whole second names
    // the tick they all share.
    let tick = fired_at
        .duration_round(TimeDelta::seconds(1))
        .unwrap_or(fired_at)
        .naive_utc();
    let now = store::now();
    let held_until = now + TimeDelta::from_std(ctx.config.worker.lease).unwrap_or(TimeDelta::MAX);
    let holder = ctx.instance.as_str();
    let won = async {
        Ok::<_, StoreError>(with_conn!(ctx.db, |conn| {
            conn.acquire_job(name, holder, tick, now, held_until)
                .await?
        }))
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
        with_conn!(ctx.db, |conn| {
            conn.release_job(name, holder, store::now()).await?;
        });
        Ok::<_, StoreError>(())
    };
    if let Err(e) = released.await {
        error!(job = name, error = %e, "cannot release the job lease; it expires by itself");
    }
    true
}

/// Recovers claims older than `worker.lease`.
pub async fn reclaim(ctx: &Context) -> Result<usize, StoreError> {
    let lease = TimeDelta::from_std(ctx.config.worker.lease).unwrap_or(TimeDelta::MAX);
    let before = store::now() - lease;
    let max = ctx.config.worker.max_attempts as i32;
    let reclaimed = with_conn!(ctx.db, |conn| conn.reclaim_expired(before, max).await?);
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

/// The time between two ticks of a cron expression (the inventory check's horizon
/// for predicting a run-out); 10 s when it cannot be computed.
pub fn tick_interval(cron: &str) -> Duration {
    let fallback = Duration::from_secs(10);
    let Ok(parsed) = CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(cron)
    else {
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
}
