//! systemd integration (`Type=notify`, `WatchdogSec=`) through the `sd-notify` crate:
//! `READY=1` once start-up is done and the loops run, `STATUS=` lines with the queue
//! and the grant rate, `RELOADING=1`/`READY=1` around a reload, `STOPPING=1` on
//! shutdown, and `WATCHDOG=1` pings sent only while every worker loop still comes
//! round. Without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::{self, Heartbeat, Snapshot};
use crate::runtime::Daemon;
use crate::store::StoreError;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1`: start-up is done and the loops run.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with the monotonic time systemd ≥ 253 asks for.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// The status line: queue depth, the oldest request's age, the grant rate.
pub fn status_line(snapshot: &Snapshot, grants_per_sec: f64) -> String {
    if snapshot.refreshed && !snapshot.database_up {
        return format!("database unreachable; {grants_per_sec:.1} grants/s");
    }
    format!(
        "queue {} (oldest {:.0}s), {grants_per_sec:.1} grants/s, {} deliveries pending, {} dead",
        snapshot.queue_depth, snapshot.oldest_age, snapshot.pending, snapshot.dead
    )
}

/// Every [`metrics::REFRESH_INTERVAL`]: refreshes the database gauges and sends the
/// status line, until `shutdown`. The refresh runs in a task of its own: a stalled
/// database holds it back, never the status line, and no second refresh starts while
/// one hangs.
pub async fn report_status(ctx: Daemon, shutdown: CancellationToken) {
    let mut granted = ctx.metrics.granted();
    let mut since = Instant::now();
    let mut refreshing: Option<JoinHandle<Result<(), StoreError>>> = None;
    let bound = ctx.config.database.statement_timeout + ctx.config.database.connect_timeout;
    loop {
        if refreshing.as_ref().is_none_or(JoinHandle::is_finished) {
            let refresh = ctx.clone();
            refreshing = Some(tokio::spawn(async move {
                metrics::refresh(&refresh.db, &refresh.metrics, &refresh.config).await
            }));
        }
        if let Some(task) = refreshing.as_mut() {
            match tokio::time::timeout(bound, task).await {
                Ok(Ok(Err(e))) => warn!(error = %e, "cannot refresh the database gauges"),
                Ok(_) => {}
                Err(_) => debug!("the refresh of the database gauges waits for the database"),
            }
        }
        let now = Instant::now();
        let total = ctx.metrics.granted();
        let rate = (total - granted) as f64 / now.duration_since(since).as_secs_f64().max(0.001);
        (granted, since) = (total, now);
        let line = status_line(&ctx.metrics.snapshot(), rate);
        send(&[NotifyState::Status(&line)]);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(metrics::REFRESH_INTERVAL) => {}
        }
    }
}

/// Waits for `work`, one unit of a loop's database work (a grant batch, a dispatch
/// round, a scheduled job) running in a task of its own, and returns its output.
///
/// Why a task, and why wait for it to the end: a diesel-async transaction future is
/// not cancel-safe. Dropped half-way (`timeout`, `select!`), it could hand back to the
/// pool a connection with a transaction still open. The task owns its pooled
/// connection and is never dropped, so every transaction ends by COMMIT, ROLLBACK or
/// the connection's death.
///
/// Why that is bounded: taking a connection takes `database.connect_timeout` at most
/// (pool create, wait and recycle timeouts), and a database that runs a statement
/// stops it after `database.statement_timeout` (`max_statement_time`, SQLite's busy
/// timeout). Only a database that answers nothing at all (paused, cut off) leaves a
/// statement waiting, until it answers again or TCP keepalive breaks the connection.
///
/// What the loop does meanwhile: once the unit has taken longer than the two
/// timeouts together it says so in the log, once. While the probe finds the database
/// down ([`crate::store::health`]) it beats `heartbeat`: the loop is not stuck, it
/// waits for the database, and the systemd watchdog restarting couponsd would not
/// bring the database back. When the database answers and the unit still does not
/// end, the beats stop and the watchdog does restart it. When the database comes back
/// the unit finishes (commits, or fails and rolls back), and the loop goes on by
/// itself. A panic in the unit is resumed here, as if the loop had run it.
pub async fn wait_on_database<T>(
    ctx: &Daemon,
    heartbeat: Option<&Heartbeat>,
    what: &str,
    mut work: JoinHandle<T>,
) -> T {
    let stall_after = ctx.config.database.statement_timeout + ctx.config.database.connect_timeout;
    let started = Instant::now();
    let mut stalled = false;
    loop {
        match tokio::time::timeout(STALL_LOOK, &mut work).await {
            Ok(done) => {
                if stalled {
                    info!(waited = ?started.elapsed(), "{what}: the database answered; going on");
                }
                return done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            }
            Err(_) => {
                if !ctx.health.is_up() {
                    if let Some(heartbeat) = heartbeat {
                        heartbeat.beat();
                    }
                }
                if !stalled && started.elapsed() >= stall_after {
                    stalled = true;
                    warn!(waiting = ?started.elapsed(), database_up = ctx.health.is_up(), "{what}: waiting for a stalled database; it goes on when the database answers");
                }
            }
        }
    }
}

/// How often [`wait_on_database`] looks at a unit still running.
const STALL_LOOK: Duration = Duration::from_millis(500);

/// Pings the watchdog at a third of its interval while every loop is alive. A loop
/// is stale when it has not come round for longer than its work may legitimately
/// take: the watchdog interval, the claim lease, or the delivery lease, whichever is
/// longest. Returns at once when systemd set no watchdog.
pub async fn watchdog(ctx: Daemon, shutdown: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let lease = ctx
        .config
        .delivery_lease()
        .to_std()
        .unwrap_or(Duration::MAX);
    let stale_after = interval.max(ctx.config.worker.lease).max(lease);
    let mut complained = false;
    loop {
        let stale = ctx.liveness.stale(stale_after, ctx.grant_workers());
        if stale.is_empty() {
            send(&[NotifyState::Watchdog]);
            complained = false;
        } else if !complained {
            warn!(stale = ?stale, "a worker loop is not coming round: watchdog pings stop, systemd will restart couponsd");
            complained = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval / 3) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_alive_only_when_all_have_beaten_recently() {
        let liveness = crate::metrics::Liveness::default();
        assert!(
            !liveness.stale(Duration::from_secs(1), 2).is_empty(),
            "nothing started yet"
        );
        let a = liveness.grant_worker();
        let _b = liveness.grant_worker();
        liveness.dispatcher.beat();
        assert!(liveness.stale(Duration::from_secs(1), 2).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        let stale = liveness.stale(Duration::from_millis(20), 2);
        assert_eq!(
            stale,
            vec!["grant worker 1".to_owned(), "dispatcher".to_owned()]
        );
        liveness.dispatcher.stop();
        assert!(liveness
            .stale(Duration::from_secs(1), 2)
            .contains(&"dispatcher".to_owned()));
    }

    #[test]
    fn the_status_line_says_queue_rate_and_outbox() {
        let snapshot = Snapshot {
            refreshed: true,
            database_up: true,
            queue_depth: 12,
            oldest_age: 3.4,
            pending: 5,
            dead: 1,
        };
        assert_eq!(
            status_line(&snapshot, 41.25),
            "queue 12 (oldest 3s), 41.2 grants/s, 5 deliveries pending, 1 dead"
        );
        let down = Snapshot {
            database_up: false,
            ..snapshot
        };
        assert_eq!(
            status_line(&down, 0.0),
            "database unreachable; 0.0 grants/s"
        );
    }
}
