//! The loops that run the stages: grant workers, the partner-update loop and the
//! dispatcher, until shutdown or, with `--drain`, until nothing is left to do.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::notify::wait_on_database;
use super::Daemon;
use crate::metrics::Heartbeat;
use crate::pipeline::dispatch::worker::{dispatch_due, live_channels, DispatchOutcome};
use crate::pipeline::grant::{process_batch, process_claimed_batch, BatchOutcome};
use crate::pipeline::lifecycle::{process_updates, UpdatesOutcome};
use crate::store::health::PROBE_INTERVAL;
use crate::store::StoreError;

/// How the loops end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until the shutdown token is cancelled.
    Serve,
    /// Until the queue is empty (the claims of this daemon's failed batches given back
    /// and granted) and every delivery is delivered or dead.
    Drain,
}

/// Runs the grant workers and the dispatcher until shutdown (or drained). At shutdown
/// the grant workers finish the batch in hand and stop claiming; then the dispatcher
/// sends what is due and stops. The caller bounds that with `worker.shutdown_grace`.
pub async fn run_loops(ctx: Daemon, mode: Mode, shutdown: CancellationToken) {
    let grants_done = CancellationToken::new();
    let mut workers = JoinSet::new();
    for worker in 0..ctx.grant_workers() {
        workers.spawn(grant_loop(ctx.clone(), mode, shutdown.clone(), worker));
    }
    for _ in 0..ctx.grant_workers() {
        workers.spawn(update_loop(ctx.clone(), mode, shutdown.clone()));
    }
    let dispatcher = tokio::spawn(dispatch_loop(ctx.clone(), mode, grants_done.clone()));
    while workers.join_next().await.is_some() {}
    grants_done.cancel();
    if let Err(e) = dispatcher.await {
        error!(error = %e, "dispatcher stopped unexpectedly");
    }
}

async fn grant_loop(ctx: Daemon, mode: Mode, shutdown: CancellationToken, worker: usize) {
    let heartbeat = ctx.liveness.grant_worker();
    let mut failures = 0u32;
    let mut idle_looks = IdleLooks::new(ctx.config.worker.poll_interval);
    while !shutdown.is_cancelled() {
        heartbeat.beat();
        if standing_by(&ctx, &heartbeat, &shutdown).await {
            continue;
        }
        // After a failure the next batch is claimed first, so that a request that fails
        // every batch it is in is counted by lease recovery instead of going back to
        // the head of the queue each time.
        let claim_first = failures > 0;
        let unit = ctx.grant();
        let batch = tokio::spawn(async move {
            if claim_first {
                process_claimed_batch(&unit).await
            } else {
                process_batch(&unit).await
            }
        });
        let outcome = wait_on_database(&ctx, Some(&heartbeat), "grant worker", batch).await;
        match outcome {
            Ok(BatchOutcome::Processed(summary)) => {
                failures = 0;
                ctx.liveness.batch_done();
                idle_looks.found_work();
                tracing::debug!(worker, ?summary, "batch done");
            }
            Ok(BatchOutcome::Empty) if mode == Mode::Drain => {
                // The claims of this daemon's failed batches wait for worker.lease, which
                // no job recovers during a drain: give them back and look again.
                match ctx.claims.tokens().is_empty() {
                    true => break,
                    false => drop(release_claims(&ctx).await),
                }
            }
            Ok(BatchOutcome::Empty) => {
                failures = 0;
                ctx.liveness.batch_done();
                idle(&shutdown, idle_looks.next_wait()).await;
            }
            Err(e) if claim_first => {
                failures += 1;
                ctx.liveness.batch_failed();
                error!(worker, error = %e, "claimed batch failed; its claims are recovered after worker.lease");
                back_off(backoff(failures), &heartbeat, &shutdown).await;
            }
            Err(e) => {
                failures += 1;
                ctx.liveness.batch_failed();
                error!(worker, error = %e, "batch failed and was rolled back; its requests are back in the queue");
                back_off(backoff(failures), &heartbeat, &shutdown).await;
            }
        }
    }
    heartbeat.stop();
}

/// As many per daemon as grant workers (`worker.concurrency`): applies queued partner
/// updates (`grant_updates`) batch after batch, with the grant workers' idle back-off.
/// The loops, and other daemons', share the queue (`SKIP LOCKED`); with one loop a
/// batch's round trips ran one after another and updates went at 0.73 of the grant
/// path's rate per row (BENCHMARKS.md, lifecycle).
async fn update_loop(ctx: Daemon, mode: Mode, shutdown: CancellationToken) {
    let heartbeat = ctx.liveness.update_loop();
    let mut failures = 0u32;
    let mut idle_looks = IdleLooks::new(ctx.config.worker.poll_interval);
    while !shutdown.is_cancelled() {
        heartbeat.beat();
        if standing_by(&ctx, &heartbeat, &shutdown).await {
            continue;
        }
        let unit = ctx.lifecycle();
        let batch = tokio::spawn(async move { process_updates(&unit).await });
        match wait_on_database(&ctx, Some(&heartbeat), "update loop", batch).await {
            Ok(UpdatesOutcome::Processed(summary)) => {
                failures = 0;
                idle_looks.found_work();
                tracing::debug!(?summary, "update batch done");
            }
            Ok(UpdatesOutcome::Empty) if mode == Mode::Drain => break,
            Ok(UpdatesOutcome::Empty) => {
                failures = 0;
                idle(&shutdown, idle_looks.next_wait()).await;
            }
            Err(e) => {
                failures += 1;
                error!(error = %e, "update batch failed and was rolled back; its updates are back in the queue");
                back_off(backoff(failures), &heartbeat, &shutdown).await;
            }
        }
    }
    heartbeat.stop();
}

async fn dispatch_loop(ctx: Daemon, mode: Mode, grants_done: CancellationToken) {
    let mut failures = 0u32;
    loop {
        ctx.liveness.dispatcher.beat();
        // Once the grant workers stopped: serving, send what is due now and stop;
        // draining, go on until nothing is pending.
        let finishing = grants_done.is_cancelled();
        if finishing && mode == Mode::Serve && ctx.health.writes().standby().is_some() {
            break;
        }
        if standing_by(&ctx, &ctx.liveness.dispatcher, &CancellationToken::new()).await {
            continue;
        }
        let unit = ctx.dispatch();
        let round = tokio::spawn(async move { dispatch_due(&unit).await });
        match wait_on_database(&ctx, Some(&ctx.liveness.dispatcher), "dispatcher", round).await {
            Ok(DispatchOutcome::Attempted(summary)) => {
                failures = 0;
                tracing::debug!(?summary, "deliveries attempted");
            }
            Ok(DispatchOutcome::Empty) => {
                if finishing && (mode == Mode::Serve || !pending_deliveries(&ctx).await) {
                    break;
                }
                tokio::select! {
                    _ = ctx.outbox_ready.notified() => {}
                    _ = tokio::time::sleep(ctx.config.worker.poll_interval) => {}
                    _ = grants_done.cancelled(), if !finishing => {}
                }
            }
            Err(e) => {
                failures += 1;
                error!(error = %e, "dispatch round failed");
                if finishing && mode == Mode::Serve {
                    break;
                }
                back_off(
                    backoff(failures),
                    &ctx.liveness.dispatcher,
                    &CancellationToken::new(),
                )
                .await;
            }
        }
    }
    ctx.liveness.dispatcher.stop();
}

/// Puts back in the queue the requests of every batch this daemon claimed and did not
/// finish (a batch that failed, or one cut short at shutdown). A batch still inside
/// its transaction is safe: its fence finds the requests no longer held by its token.
pub async fn release_claims(ctx: &Daemon) -> Result<usize, StoreError> {
    let mut released = 0;
    for token in ctx.claims.tokens() {
        released += ctx.db.get().await?.release_claims(token).await?;
        ctx.claims.finished(token);
    }
    Ok(released)
}

/// True while a delivery of a configured channel that is not disabled is pending: a
/// disabled channel's deliveries are held until it is enabled, and a channel this
/// daemon does not know is left to a daemon that does.
async fn pending_deliveries(ctx: &Daemon) -> bool {
    let live = live_channels(&ctx.dispatch());
    let counts = async { Ok::<_, StoreError>(ctx.db.get().await?.pending_by_channel().await?) };
    match counts.await {
        Ok(counts) => counts
            .iter()
            .any(|(channel, n)| live.contains(channel) && *n > 0),
        Err(_) => true,
    }
}

/// How long a grant worker waits after finding the queue empty: soon after it last
/// found work it looks again quickly (a sixteenth of `worker.poll_interval`, then
/// doubling), and once the queue has stayed empty it looks once per interval. Triggers
/// that trickle in are then picked up within milliseconds, not up to a whole interval
/// after a worker emptied the queue (at 1,000/s that wait was most of a request's
/// latency, BENCHMARKS.md), while an idle daemon still polls once per interval per
/// worker.
#[derive(Debug)]
struct IdleLooks {
    interval: Duration,
    empty_looks: u32,
}

impl IdleLooks {
    /// Looks after an empty queue double up to this many times before settling.
    const QUICK_LOOKS: u32 = 4;

    fn new(interval: Duration) -> Self {
        Self {
            interval,
            empty_looks: Self::QUICK_LOOKS,
        }
    }

    fn found_work(&mut self) {
        self.empty_looks = 0;
    }

    fn next_wait(&mut self) -> Duration {
        let shift = Self::QUICK_LOOKS - self.empty_looks.min(Self::QUICK_LOOKS);
        self.empty_looks = self.empty_looks.saturating_add(1);
        self.interval / (1 << shift)
    }
}

/// While this daemon stands by (its Galera node is not the cluster's writer node,
/// [`crate::store::cluster::Writes`]), waits a probe interval or until it may write,
/// beating `heartbeat`, and says true: the loop claims nothing meanwhile.
async fn standing_by(ctx: &Daemon, heartbeat: &Heartbeat, shutdown: &CancellationToken) -> bool {
    let writes = ctx.health.writes();
    let opened = writes.opened();
    if writes.standby().is_none() {
        return false;
    }
    heartbeat.beat();
    tokio::select! {
        _ = opened => {}
        _ = idle(shutdown, PROBE_INTERVAL) => {}
    }
    true
}

async fn idle(shutdown: &CancellationToken, wait: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

/// Sleeps `wait` after a failure (until `shutdown`), beating `heartbeat` every second:
/// a loop backing off from a failing database waits on purpose, it is not stuck.
async fn back_off(wait: Duration, heartbeat: &Heartbeat, shutdown: &CancellationToken) {
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until && !shutdown.is_cancelled() {
        heartbeat.beat();
        let step = until
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(1));
        idle(shutdown, step).await;
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200 * 2u64.saturating_pow(failures.min(6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_worker_looks_again_quickly_after_work_then_once_per_interval() {
        let mut looks = IdleLooks::new(Duration::from_millis(160));
        let waits = |looks: &mut IdleLooks, n: usize| -> Vec<u64> {
            (0..n)
                .map(|_| looks.next_wait().as_millis() as u64)
                .collect()
        };
        assert_eq!(
            waits(&mut looks, 2),
            [160, 160],
            "a new worker has found nothing yet"
        );
        looks.found_work();
        assert_eq!(waits(&mut looks, 7), [10, 20, 40, 80, 160, 160, 160]);
        looks.found_work();
        assert_eq!(waits(&mut looks, 1), [10], "work found again starts over");
    }
}
