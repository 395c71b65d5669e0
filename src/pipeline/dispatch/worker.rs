//! The outbox worker: one lane per channel. Each lane keeps up to
//! `dispatch.concurrency` sends in flight, each its own task, fed from the hand-off of
//! this daemon's grants (see [`super::handoff`]) and from due outbox rows it claims only
//! when it has a sender free for each, so a claimed delivery is sent at once and its
//! hold never runs out while its sender is alive. A slow or failing partner fills its
//! own lane only; every other channel's deliveries go on at their own pace.
//!
//! Every attempt is recorded under the hold it was made with (the row's `hold_token`):
//! a result that comes back after its hold was taken over changes nothing. A delivery
//! moves `pending → delivered | pending (retry at a time) | dead`; a 410 Gone disables
//! the channel, and its deliveries stay `pending`, held, until `channels enable`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use tokio::task::JoinSet;
use tracing::{error, instrument, warn};

use super::backoff::retry_delay;
use super::events;
use super::handoff::Outgoing;
use super::send::{Attempt, Verdict};
use super::Deps;
use crate::domain::DeliveryStatus;
use crate::store::deliveries::AttemptRecord;
use crate::store::{self, StoreError};
use crate::with_conn;

/// What one call of [`dispatch_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// Sends are in flight or finished; these were recorded.
    Attempted(DispatchSummary),
    /// Nothing was due and nothing is in flight.
    Empty,
}

/// Counts of the attempts one call recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchSummary {
    /// Attempts recorded.
    pub attempted: usize,
    /// Delivered.
    pub delivered: usize,
    /// Scheduled for another attempt, or held by a channel a 410 disabled.
    pub retrying: usize,
    /// Given up.
    pub dead: usize,
    /// Results not recorded because their hold had been taken over.
    pub refused: usize,
}

/// The sends in flight, per channel.
#[derive(Debug, Default)]
pub struct Lanes {
    sends: tokio::sync::Mutex<JoinSet<Sent>>,
    lanes: Mutex<HashMap<String, Lane>>,
    /// Wakes the dispatcher when a send ends and its sender is free again.
    freed: tokio::sync::Notify,
    /// Results whose record failed (the database was unreachable, locked or slow):
    /// recorded with the next round's, while their holds last.
    unrecorded: Mutex<Vec<Sent>>,
}

/// A sender of a lane, freed when its send ends (even by a panic, which took no time
/// worth counting: `took` stays `None`).
struct Sender<'a> {
    lanes: &'a Lanes,
    channel: String,
    took: Option<Duration>,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        self.lanes.done(&self.channel, self.took);
        self.lanes.freed.notify_one();
    }
}

/// One channel's lane.
#[derive(Debug, Default)]
struct Lane {
    in_flight: usize,
    /// A moving average of its attempts' durations; `None` before the first.
    pace: Option<Duration>,
}

impl Lanes {
    fn in_flight(&self, channel: &str) -> usize {
        self.lanes().get(channel).map_or(0, |lane| lane.in_flight)
    }

    fn add(&self, channel: &str, n: usize) {
        self.lanes()
            .entry(channel.to_owned())
            .or_default()
            .in_flight += n;
    }

    fn done(&self, channel: &str, took: Option<Duration>) {
        let mut lanes = self.lanes();
        let lane = lanes.entry(channel.to_owned()).or_default();
        lane.in_flight = lane.in_flight.saturating_sub(1);
        // Each attempt weighs a fifth: a partner that slows down shows within a few.
        if let Some(took) = took {
            lane.pace = Some(lane.pace.map_or(took, |pace| (pace * 4 + took) / 5));
        }
    }

    /// How many deliveries `channel`'s lane of `concurrency` senders is expected to
    /// start within `window`, at half its pace so far (0 before its first attempt): what
    /// a claim may take beyond the free senders, so that no claimed delivery waits in
    /// memory until its hold is too short to send it.
    fn sendable_within(&self, channel: &str, concurrency: usize, window: Duration) -> usize {
        let pace = self.lanes().get(channel).and_then(|lane| lane.pace);
        let Some(pace) = pace else { return 0 };
        let per_sender = window.as_secs_f64() / pace.as_secs_f64().max(0.000_1);
        (per_sender * concurrency as f64 / 2.0).min(u32::MAX as f64) as usize
    }

    fn keep_unrecorded(&self, sent: Vec<Sent>) {
        let mut kept = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        kept.extend(sent);
    }

    fn take_unrecorded(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A finished send: its record and, for a 410, the channel to disable.
#[derive(Debug)]
struct Sent {
    record: AttemptRecord,
    channel: String,
    gone: bool,
}

/// Results wait at most this long to be recorded together: the partner has them
/// already, and one statement for many saves a commit (and its fsync) per send.
const RECORD_WITHIN: Duration = Duration::from_millis(50);

/// Starts what each channel's lane has room for, then waits until sends finish and
/// records what finished: as soon as nothing is in flight, else once
/// `dispatch.batch_size` results or [`RECORD_WITHIN`] have gathered. While it waits, and
/// while the results are recorded, new work (a committed batch, the poll interval) and
/// freed senders start more sends. `Empty` when nothing was due and nothing is in
/// flight.
#[instrument(skip_all)]
pub async fn dispatch_due(deps: &Deps) -> Result<DispatchOutcome, StoreError> {
    let gather = deps.config.dispatch.batch_size.max(1);
    // Results a failed record left go first: their holds are running out.
    let mut finished: Vec<Sent> = deps.lanes.take_unrecorded();
    let mut first_at: Option<Instant> = (!finished.is_empty()).then(Instant::now);
    loop {
        if let Err(e) = start_sends(deps).await {
            if finished.is_empty() {
                return Err(e);
            }
            // What finished is recorded all the same: dropped, those deliveries would
            // be sent again once their holds ran out.
            warn!(error = %e, "could not start more sends; recording what finished");
            break;
        }
        let mut sends = deps.lanes.sends.lock().await;
        if sends.is_empty() {
            if finished.is_empty() {
                return Ok(DispatchOutcome::Empty);
            }
            break;
        }
        let wait = match first_at {
            Some(at) => RECORD_WITHIN.saturating_sub(at.elapsed()),
            None => deps.config.worker.poll_interval,
        };
        // `join_next` is cancel-safe: a wake-up for new work loses no finished send.
        let first = tokio::select! {
            sent = sends.join_next() => sent,
            _ = deps.outbox_ready.notified() => None,
            _ = tokio::time::sleep(wait) => None,
        };
        finished.extend(first.into_iter().filter_map(joined));
        while let Some(sent) = sends.try_join_next() {
            finished.extend(joined(sent));
        }
        drop(sends);
        if !finished.is_empty() {
            let at = *first_at.get_or_insert_with(Instant::now);
            if finished.len() >= gather || at.elapsed() >= RECORD_WITHIN {
                break;
            }
        }
    }
    // The record runs as a task of its own (a transaction is never dropped half-way),
    // while the lanes go on: a fast partner's senders do not idle for the commit.
    let unit = deps.clone();
    let mut recording = tokio::spawn(async move { record(&unit, finished).await });
    let recorded = loop {
        tokio::select! {
            recorded = &mut recording => break recorded,
            _ = deps.lanes.freed.notified() => {}
            _ = deps.outbox_ready.notified() => {}
        }
        if let Err(e) = start_sends(deps).await {
            // The record goes on by itself; the next round gathers what it started.
            warn!(error = %e, "could not start more sends while recording");
        }
    };
    let summary = match recorded {
        Ok(summary) => summary?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    Ok(DispatchOutcome::Attempted(summary))
}

fn joined(sent: Result<Sent, tokio::task::JoinError>) -> Option<Sent> {
    match sent {
        Ok(sent) => Some(sent),
        // A send that panicked holds its delivery until the hold runs out; then it is
        // claimed again.
        Err(e) => {
            error!(error = %e, "a delivery's send stopped unexpectedly");
            None
        }
    }
}

/// Fills every enabled channel's lane from its queue in memory (hand-offs and claimed
/// rows), claiming due outbox rows into that queue first when the outbox is due for it.
async fn start_sends(deps: &Deps) -> Result<(), StoreError> {
    let concurrency = deps.config.dispatch.concurrency.max(1);
    let batch = deps.config.dispatch.batch_size.max(1);
    let interval = deps.config.worker.poll_interval;
    let lease = deps.config.delivery_lease();
    let hold = lease.to_std().unwrap_or_default();
    let mut disabled = deps.handoff.disabled();
    if deps.handoff.disabled_due(interval) {
        let now_disabled = with_conn!(deps.db, |conn| conn.disabled_channels().await?);
        deps.handoff.read_disabled(now_disabled);
        disabled = deps.handoff.disabled();
        for channel in &disabled {
            deps.handoff.drop_channel(channel);
        }
    }
    for (name, channel) in &deps.config.channels {
        let name = name.as_str();
        if disabled.contains(name) {
            continue;
        }
        let room = concurrency.saturating_sub(deps.lanes.in_flight(name));
        // A whole attempt and a second to record it must fit in what is left of a hold.
        let whole_attempt = channel.timeout + Duration::from_secs(1);
        // The outbox is polled when rows due at once may wait there, and at least once
        // per interval. A claim takes what the lane will send while the holds last, up
        // to `dispatch.batch_size`, and only when that is at least half of it: a claim
        // is a transaction of its own, worth making for many rows. Once per interval it
        // takes a quarter of the free senders at least, however much waits in memory:
        // a steady stream of hand-offs never starves retries, alerts and other daemons'
        // expired holds.
        let window = hold.saturating_sub(whole_attempt);
        let sendable = room + deps.lanes.sendable_within(name, concurrency, window);
        let limit = deps.handoff.claim_limit(name, sendable, batch);
        let limit = if limit > 0 && 2 * limit >= sendable.min(batch) {
            if deps.handoff.outbox_due(name, interval) {
                limit
            } else {
                0
            }
        } else if deps.handoff.poll_overdue(name, interval) {
            limit.max(room.div_ceil(4)).min(batch)
        } else {
            0
        };
        if room > 0 && limit > 0 {
            let token = hold_token();
            let now = store::now();
            let held_until = Instant::now() + hold;
            let claimed = with_conn!(deps.db, |conn| {
                conn.claim_due(name, limit as i64, (now, now + lease), token)
                    .await?
            });
            deps.handoff.polled(name, claimed.len() == limit);
            deps.handoff.push_front(
                claimed
                    .into_iter()
                    .map(|d| Outgoing::claimed(d, token, held_until)),
            );
        }
        let due = deps.handoff.take(name, room, whole_attempt);
        if due.is_empty() {
            continue;
        }
        deps.lanes.add(name, due.len());
        let mut sends = deps.lanes.sends.lock().await;
        for delivery in due {
            let deps = deps.clone();
            sends.spawn(async move {
                let mut sender = Sender {
                    lanes: &deps.lanes,
                    channel: delivery.channel.clone(),
                    took: None,
                };
                let sent = attempt(&deps, delivery).await;
                sender.took = Some(Duration::from_millis(sent.record.duration_ms.max(0) as u64));
                sent
            });
        }
    }
    Ok(())
}

/// A fresh hold token for a claim.
pub fn hold_token() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

/// Records what finished, fenced by each hold; disables the channels that answered 410
/// Gone, with one `channel.disabled` alert each.
async fn record(deps: &Deps, finished: Vec<Sent>) -> Result<DispatchSummary, StoreError> {
    let mut summary = DispatchSummary {
        attempted: finished.len(),
        ..DispatchSummary::default()
    };
    if finished.is_empty() {
        return Ok(summary);
    }
    let records: Vec<AttemptRecord> = finished.iter().map(|sent| sent.record.clone()).collect();
    let recorded: Result<usize, StoreError> = async {
        Ok(with_conn!(deps.db, |conn| conn
            .record_attempts(&records)
            .await?))
    }
    .await;
    summary.refused = match recorded {
        Ok(refused) => refused,
        Err(e) => {
            // Kept for the next round: dropped, these deliveries would be sent again
            // once their holds ran out. The fence refuses any the holds no longer cover.
            deps.lanes.keep_unrecorded(finished);
            return Err(e);
        }
    };
    if summary.refused > 0 {
        warn!(
            refused = summary.refused,
            "attempt results not recorded: another dispatcher holds those deliveries now"
        );
    }
    let mut gone: Vec<(String, String)> = Vec::new();
    for sent in finished {
        deps.metrics
            .record_delivery(&sent.channel, sent.record.status);
        match sent.record.status {
            DeliveryStatus::Delivered => summary.delivered += 1,
            DeliveryStatus::Pending => summary.retrying += 1,
            DeliveryStatus::Dead => summary.dead += 1,
        }
        if sent.gone && !gone.iter().any(|(c, _)| *c == sent.channel) {
            let reason = sent.record.error.unwrap_or_default();
            gone.push((sent.channel, reason));
        }
    }
    for (channel, reason) in gone {
        disable(deps, &channel, &reason).await?;
    }
    Ok(summary)
}

/// Disables `channel` after a 410 Gone: its deliveries stay pending, held, and one
/// `channel.disabled` alert goes to ops (by the dispatcher that disabled it first).
async fn disable(deps: &Deps, channel: &str, reason: &str) -> Result<(), StoreError> {
    deps.handoff.disable(channel);
    let dropped = deps.handoff.drop_channel(channel);
    let now = chrono::Utc::now();
    let alert = (deps.config.alerts.channel.as_ref()).filter(|c| c.as_str() != channel);
    let alert = alert.and_then(|_| {
        let data = serde_json::json!({ "channel": channel, "reason": reason });
        events::alert(&deps.config, events::CHANNEL_DISABLED, data, now)
    });
    let first = with_conn!(deps.db, |conn| {
        conn.disable_channel(channel, reason, store::now(), alert)
            .await?
    });
    if first {
        error!(channel = %channel, reason = %reason, held_in_memory = dropped, "partner answered 410 Gone: channel DISABLED; its deliveries are held (pending) until `couponsd channels enable {channel}`");
    }
    Ok(())
}

/// Sends one delivery and turns the answer into its record.
async fn attempt(deps: &Deps, delivery: Outgoing) -> Sent {
    let number = delivery.attempts + 1;
    let name = delivery.channel.clone();
    let Some(channel) = deps.config.channel_named(&delivery.channel) else {
        // Lanes exist for configured channels only.
        let reason = format!("channel {} is not configured", delivery.channel);
        let record = dead(&delivery, number, None, reason, Duration::ZERO);
        return Sent {
            record,
            channel: name,
            gone: false,
        };
    };
    let Attempt {
        status_code,
        duration,
        verdict,
    } = deps
        .sender
        .send(
            channel,
            &delivery.webhook_id,
            &delivery.payload,
            deps.config.dispatch.retry_max,
        )
        .await;
    deps.metrics.observe_attempt(&delivery.channel, duration);
    deps.heartbeat.beat();
    let (record, gone) = match verdict {
        Verdict::Delivered => (delivered(&delivery, number, status_code, duration), false),
        Verdict::Retryable { after, reason } if (number as u32) < channel.max_attempts => {
            let delay = retry_delay(
                number as u32,
                deps.config.dispatch.retry_base,
                deps.config.dispatch.retry_max,
                after,
            );
            let record = retry(&delivery, number, status_code, reason, duration, delay);
            (record, false)
        }
        Verdict::Retryable { reason, .. } => {
            warn!(webhook_id = %delivery.webhook_id, attempts = number, "delivery is dead: out of attempts");
            let reason = format!("{reason} (gave up after {number} attempts)");
            (
                dead(&delivery, number, status_code, reason, duration),
                false,
            )
        }
        Verdict::Permanent { reason } => (
            dead(&delivery, number, status_code, reason, duration),
            false,
        ),
        // Held, not dead: the delivery waits for `channels enable`.
        Verdict::Gone { reason } => (
            base_record(
                &delivery,
                number,
                DeliveryStatus::Pending,
                status_code,
                Some(reason),
                duration,
            ),
            true,
        ),
    };
    Sent {
        record,
        channel: name,
        gone,
    }
}

fn base_record(
    delivery: &Outgoing,
    attempt: i32,
    status: DeliveryStatus,
    status_code: Option<u16>,
    error: Option<String>,
    duration: Duration,
) -> AttemptRecord {
    AttemptRecord {
        delivery_id: delivery.id,
        webhook_id: delivery.webhook_id.clone(),
        hold_token: delivery.hold_token,
        attempt,
        status,
        next_attempt_at: None,
        status_code: status_code.map(i32::from),
        error,
        attempted_at: store::now(),
        duration_ms: duration.as_millis() as i64,
    }
}

fn delivered(d: &Outgoing, attempt: i32, code: Option<u16>, took: Duration) -> AttemptRecord {
    base_record(d, attempt, DeliveryStatus::Delivered, code, None, took)
}

fn retry(
    d: &Outgoing,
    attempt: i32,
    code: Option<u16>,
    reason: String,
    took: Duration,
    delay: Duration,
) -> AttemptRecord {
    let at: NaiveDateTime = store::now() + delay;
    AttemptRecord {
        next_attempt_at: Some(at),
        ..base_record(
            d,
            attempt,
            DeliveryStatus::Pending,
            code,
            Some(reason),
            took,
        )
    }
}

fn dead(
    d: &Outgoing,
    attempt: i32,
    code: Option<u16>,
    reason: String,
    took: Duration,
) -> AttemptRecord {
    base_record(d, attempt, DeliveryStatus::Dead, code, Some(reason), took)
}

/// The channels whose deliveries a drain waits for: configured and not disabled.
pub fn live_channels(deps: &Deps) -> HashSet<String> {
    let disabled = deps.handoff.disabled();
    deps.config
        .channels
        .keys()
        .map(|c| c.to_string())
        .filter(|c| !disabled.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_expects_to_send_at_half_its_pace_within_a_window() {
        let lanes = Lanes::default();
        let window = Duration::from_secs(1);
        assert_eq!(lanes.sendable_within("wallet", 2, window), 0, "no pace yet");
        lanes.add("wallet", 2);
        lanes.done("wallet", Some(Duration::from_millis(900)));
        assert_eq!(lanes.in_flight("wallet"), 1);
        // Two senders, 0.9 s a send: 2.2 in a second, half of it expected.
        assert_eq!(lanes.sendable_within("wallet", 2, window), 1);
        lanes.done("wallet", Some(Duration::from_millis(10)));
        // The average moves a fifth of the way: (4 × 900 + 10) / 5 = 722 ms.
        assert_eq!(lanes.sendable_within("wallet", 64, window), 44);
        assert_eq!(lanes.in_flight("wallet"), 0);
        lanes.done("wallet", None);
        assert_eq!(lanes.in_flight("wallet"), 0, "never below zero");
        assert_eq!(
            lanes.sendable_within("wallet", 64, window),
            44,
            "a send that panicked does not count"
        );
    }
}
