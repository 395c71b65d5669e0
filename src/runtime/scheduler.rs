//! Runs the scheduled jobs ([`crate::schedule`]) on their cron expressions, each
//! firing in a task of its own that the database cannot stall unseen.

use std::future::Future;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::notify::wait_on_database;
use super::Daemon;
use crate::schedule::{
    inventory, lifecycle, parse_cron, reclaim, reconcile, run_once_per_tick, samples, Deps,
    EXPIRE_GRANTS, INVENTORY_CHECK, RECLAIM_LEASES, RECONCILE, SAMPLE_STOCK,
};
use crate::store::{self, StoreError};

/// Starts the scheduler with the five jobs; stop it with `shutdown`.
pub async fn start(daemon: Daemon) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let schedule = daemon.config.schedule.clone();
    let metrics = daemon.metrics.clone();
    let check = move |deps: Deps| {
        let metrics = metrics.clone();
        async move {
            let rotated = inventory::check(&deps).await.map(|r| r.rotations.len());
            if let Ok(n) = rotated {
                metrics.record_rotations(n);
            }
            rotated
        }
    };
    add(
        &scheduler,
        &daemon,
        INVENTORY_CHECK,
        &schedule.inventory_check,
        check,
    )
    .await?;
    let recover = |deps: Deps| async move { reclaim(&deps).await };
    add(
        &scheduler,
        &daemon,
        RECLAIM_LEASES,
        &schedule.reclaim_leases,
        recover,
    )
    .await?;
    let drift = |deps: Deps| async move {
        let stock = reconcile::run(&deps).await?.len();
        Ok(stock + reconcile::transitions(&deps).await?.len())
    };
    add(&scheduler, &daemon, RECONCILE, &schedule.reconcile, drift).await?;
    let expire = |deps: Deps| async move {
        lifecycle::run(&deps)
            .await
            .map(|tick| tick.expired + tick.reminded)
    };
    add(
        &scheduler,
        &daemon,
        EXPIRE_GRANTS,
        &schedule.expire_grants,
        expire,
    )
    .await?;
    let sample = |deps: Deps| async move { samples::run(&deps).await.map(|s| s.recorded) };
    add(
        &scheduler,
        &daemon,
        SAMPLE_STOCK,
        &schedule.sample_stock,
        sample,
    )
    .await?;
    scheduler.start().await?;
    Ok(scheduler)
}

async fn add<F, Fut>(
    scheduler: &JobScheduler,
    daemon: &Daemon,
    name: &'static str,
    cron: &str,
    job: F,
) -> Result<(), JobSchedulerError>
where
    F: Fn(Deps) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<usize, StoreError>> + Send + 'static,
{
    let daemon = daemon.clone();
    let schedule = parse_cron(cron).ok_or(JobSchedulerError::ParseSchedule)?;
    scheduler
        .add(Job::new_async(cron, move |_, _| {
            let (daemon, job, schedule) = (daemon.clone(), job.clone(), schedule.clone());
            Box::pin(async move {
                // A daemon standing by (its Galera node is not the writer node) runs
                // no job: the daemons on the writer node do.
                if daemon.health.writes().standby().is_some() {
                    return;
                }
                // In a task of its own, waited for to the end (see `wait_on_database`).
                let deps = daemon.schedule();
                let run = tokio::spawn(async move {
                    let fired_at = store::now().and_utc();
                    run_once_per_tick(&deps, name, &schedule, fired_at, || job(deps.clone())).await
                });
                wait_on_database(&daemon, None, name, run).await;
            })
        })?)
        .await?;
    Ok(())
}
