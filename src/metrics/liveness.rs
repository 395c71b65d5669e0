//! The loops' heartbeats: each grant worker and the dispatcher beat theirs when they
//! come round; the systemd watchdog and `/readyz` read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A heartbeat that has not been started, or was stopped on purpose.
const IDLE: u64 = u64::MAX;

/// When one loop last came round.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch` at the last beat, or [`IDLE`].
    last: AtomicU64,
}

impl Heartbeat {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last: AtomicU64::new(IDLE),
        }
    }

    /// The loop made progress.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last.store(ms.min(IDLE - 1), Ordering::Relaxed);
    }

    /// The loop ended on purpose (shutdown or drain): it no longer counts.
    pub fn stop(&self) {
        self.last.store(IDLE, Ordering::Relaxed);
    }

    /// How long ago the last beat was; `None` for a loop not running.
    fn age(&self, now: Instant) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            IDLE => None,
            // A beat may land after `now` was read: saturate rather than underflow.
            ms => Some(
                now.saturating_duration_since(self.epoch)
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// The heartbeats of the grant workers and the dispatcher, read by the watchdog.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    /// The dispatcher's heartbeat; the outbox worker beats it after every attempt, so
    /// that a long round of slow partners does not look like a stuck loop.
    pub dispatcher: Arc<Heartbeat>,
    grant_workers: Mutex<Vec<Arc<Heartbeat>>>,
    /// The partner-update loops' heartbeats (stale only while they run).
    update_loops: Mutex<Vec<Arc<Heartbeat>>>,
    /// Grant batches failed in a row, across this daemon's workers (any success resets
    /// it): a queue that does not move is seen by `/readyz`, not only in the log.
    failed_batches: std::sync::atomic::AtomicU32,
}

impl Default for Liveness {
    fn default() -> Self {
        let epoch = Instant::now();
        Self {
            epoch,
            dispatcher: Arc::new(Heartbeat::new(epoch)),
            grant_workers: Mutex::new(Vec::new()),
            update_loops: Mutex::new(Vec::new()),
            failed_batches: Default::default(),
        }
    }
}

impl Liveness {
    /// A grant batch failed (and was rolled back or left to lease recovery).
    pub fn batch_failed(&self) {
        self.failed_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A grant batch committed, or found the queue empty: the queue moves.
    pub fn batch_done(&self) {
        self.failed_batches
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Grant batches failed in a row since the last one that committed.
    pub fn failed_batches(&self) -> u32 {
        self.failed_batches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new grant worker's heartbeat, beaten once.
    pub fn grant_worker(&self) -> Arc<Heartbeat> {
        self.new_heartbeat(&self.grant_workers)
    }

    /// A new partner-update loop's heartbeat, beaten once.
    pub fn update_loop(&self) -> Arc<Heartbeat> {
        self.new_heartbeat(&self.update_loops)
    }

    fn new_heartbeat(&self, loops: &Mutex<Vec<Arc<Heartbeat>>>) -> Arc<Heartbeat> {
        let heartbeat = Arc::new(Heartbeat::new(self.epoch));
        heartbeat.beat();
        loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(heartbeat.clone());
        heartbeat
    }

    /// The loops that have not come round within `stale_after`, by name; empty when
    /// all are alive. Before the loops start, or with no grant worker, nothing is alive.
    pub fn stale(&self, stale_after: Duration, grant_workers: usize) -> Vec<String> {
        let now = Instant::now();
        let workers = self.grant_workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut stale = Vec::new();
        if workers.len() < grant_workers {
            stale.push(format!(
                "grant workers: {} of {grant_workers} started",
                workers.len()
            ));
        }
        for (i, worker) in workers.iter().enumerate() {
            if worker.age(now).is_some_and(|age| age > stale_after) {
                stale.push(format!("grant worker {i}"));
            }
        }
        let update_loops = self.update_loops.lock().unwrap_or_else(|p| p.into_inner());
        for (i, update_loop) in update_loops.iter().enumerate() {
            if update_loop.age(now).is_some_and(|age| age > stale_after) {
                stale.push(format!("update loop {i}"));
            }
        }
        match self.dispatcher.age(now) {
            Some(age) if age <= stale_after => {}
            _ => stale.push("dispatcher".to_owned()),
        }
        stale
    }
}
