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
use crate::daemon::Context;
use crate::store::deliveries::{AttemptRecord, DEAD, DELIVERED, PENDING};
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
    in_flight: Mutex<HashMap<String, usize>>,
}

impl Lanes {
    fn in_flight(&self, channel: &str) -> usize {
        let lanes = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        lanes.get(channel).copied().unwrap_or(0)
    }

    fn add(&self, channel: &str, n: usize) {
        let mut lanes = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *lanes.entry(channel.to_owned()).or_default() += n;
    }

    fn done(&self, channel: &str) {
        let mut lanes = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = lanes.get_mut(channel) {
            *n = n.saturating_sub(1);
        }
    }

    /// Sends in flight, all channels.
    pub fn total(&self) -> usize {
        let lanes = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values().sum()
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
/// `dispatch.batch_size` results or [`RECORD_WITHIN`] have gathered. While it waits, new
/// work (a committed batch, the poll interval) and freed senders start more sends.
/// `Empty` when nothing was due and nothing is in flight.
#[instrument(skip_all)]
pub async fn dispatch_due(ctx: &Context) -> Result<DispatchOutcome, StoreError> {
    let gather = ctx.config.dispatch.batch_size.max(1);
    let mut finished: Vec<Sent> = Vec::new();
    let mut first_at: Option<Instant> = None;
    loop {
        start_sends(ctx).await?;
        if ctx.lanes.total() == 0 {
            if finished.is_empty() {
                return Ok(DispatchOutcome::Empty);
            }
            break;
        }
        let wait = match first_at {
            Some(at) => RECORD_WITHIN.saturating_sub(at.elapsed()),
            None => ctx.config.worker.poll_interval,
        };
        let mut sends = ctx.lanes.sends.lock().await;
        // `join_next` is cancel-safe: a wake-up for new work loses no finished send.
        let first = tokio::select! {
            sent = sends.join_next() => sent,
            _ = ctx.outbox_ready.notified() => None,
            _ = tokio::time::sleep(wait) => None,
        };
        let before = finished.len();
        finished.extend(first.into_iter().filter_map(joined));
        while let Some(sent) = sends.try_join_next() {
            finished.extend(joined(sent));
        }
        drop(sends);
        for sent in &finished[before..] {
            ctx.lanes.done(&sent.channel);
        }
        if !finished.is_empty() {
            let at = *first_at.get_or_insert_with(Instant::now);
            if finished.len() >= gather || at.elapsed() >= RECORD_WITHIN {
                break;
            }
        }
    }
    let summary = record(ctx, finished).await?;
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

/// Fills every enabled channel's lane: hand-offs first, then due outbox rows when the
/// outbox is due for it.
async fn start_sends(ctx: &Context) -> Result<(), StoreError> {
    let concurrency = ctx.config.dispatch.concurrency.max(1);
    let interval = ctx.config.worker.poll_interval;
    let lease = ctx.delivery_lease();
    let mut disabled = ctx.handoff.disabled();
    if ctx.handoff.disabled_due(interval) {
        let now_disabled = with_conn!(ctx.db, |conn| conn.disabled_channels().await?);
        ctx.handoff.read_disabled(now_disabled);
        disabled = ctx.handoff.disabled();
        for channel in &disabled {
            ctx.handoff.drop_channel(channel);
        }
    }
    for (name, channel) in &ctx.config.channels {
        let name = name.as_str();
        if disabled.contains(name) {
            continue;
        }
        let room = concurrency.saturating_sub(ctx.lanes.in_flight(name));
        // The outbox is polled when rows due at once may wait there, and at least once
        // per interval, for a quarter of the room at least: a steady stream of
        // hand-offs never starves retries, alerts and other daemons' expired holds.
        let mut due = Vec::new();
        // A claim is a transaction of its own: it waits for a quarter of the senders to
        // be free, unless nothing else is in flight on the channel.
        let worth_a_claim = room >= concurrency.div_ceil(4) || room == concurrency;
        if room > 0 && worth_a_claim && ctx.handoff.outbox_due(name, interval) {
            let share = if ctx.handoff.queued(name) == 0 {
                room
            } else {
                room.div_ceil(4)
            };
            let limit = share.min(ctx.config.dispatch.batch_size.max(1));
            let token = hold_token();
            let now = store::now();
            let held_until = Instant::now() + lease.to_std().unwrap_or_default();
            let claimed = with_conn!(ctx.db, |conn| {
                conn.claim_due(name, limit as i64, (now, now + lease), token)
                    .await?
            });
            ctx.handoff.polled(name, claimed.len() == limit);
            due.extend(
                claimed
                    .into_iter()
                    .map(|d| Outgoing::claimed(d, token, held_until)),
            );
        }
        // A whole attempt and a second to record it must fit in what is left of a hold.
        let whole_attempt = channel.timeout + Duration::from_secs(1);
        due.extend(ctx.handoff.take(name, room - due.len(), whole_attempt));
        ctx.lanes.add(name, due.len());
        if due.is_empty() {
            continue;
        }
        let mut sends = ctx.lanes.sends.lock().await;
        for delivery in due {
            let ctx = ctx.clone();
            sends.spawn(async move { attempt(&ctx, delivery).await });
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
async fn record(ctx: &Context, finished: Vec<Sent>) -> Result<DispatchSummary, StoreError> {
    let mut summary = DispatchSummary {
        attempted: finished.len(),
        ..DispatchSummary::default()
    };
    let mut gone: Vec<(String, String)> = Vec::new();
    let mut records = Vec::with_capacity(finished.len());
    for sent in finished {
        ctx.metrics
            .record_delivery(&sent.channel, sent.record.status);
        match sent.record.status {
            DELIVERED => summary.delivered += 1,
            PENDING => summary.retrying += 1,
            _ => summary.dead += 1,
        }
        if sent.gone && !gone.iter().any(|(c, _)| *c == sent.channel) {
            let reason = sent.record.error.clone().unwrap_or_default();
            gone.push((sent.channel.clone(), reason));
        }
        records.push(sent.record);
    }
    if records.is_empty() {
        return Ok(summary);
    }
    summary.refused = with_conn!(ctx.db, |conn| conn.record_attempts(&records).await?);
    if summary.refused > 0 {
        warn!(
            refused = summary.refused,
            "attempt results not recorded: another dispatcher holds those deliveries now"
        );
    }
    for (channel, reason) in gone {
        disable(ctx, &channel, &reason).await?;
    }
    Ok(summary)
}

/// Disables `channel` after a 410 Gone: its deliveries stay pending, held, and one
/// `channel.disabled` alert goes to ops (by the dispatcher that disabled it first).
async fn disable(ctx: &Context, channel: &str, reason: &str) -> Result<(), StoreError> {
    ctx.handoff.disable(channel);
    let dropped = ctx.handoff.drop_channel(channel);
    let now = chrono::Utc::now();
    let alert = (ctx.config.alerts.channel.as_ref()).filter(|c| c.as_str() != channel);
    let alert = alert.and_then(|_| {
        let data = serde_json::json!({ "channel": channel, "reason": reason });
        events::alert(&ctx.config, events::CHANNEL_DISABLED, data, now)
    });
    let first = with_conn!(ctx.db, |conn| {
        conn.disable_channel(channel, reason, store::now(), alert)
            .await?
    });
    if first {
        error!(channel = %channel, reason = %reason, held_in_memory = dropped, "partner answered 410 Gone: channel DISABLED; its deliveries are held (pending) until `couponsd channels enable {channel}`");
    }
    Ok(())
}

/// Sends one delivery and turns the answer into its record.
async fn attempt(ctx: &Context, delivery: Outgoing) -> Sent {
    let number = delivery.attempts + 1;
    let name = delivery.channel.clone();
    let Some(channel) = ctx.channel(&delivery.channel) else {
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
    } = ctx
        .sender
        .send(
            channel,
            &delivery.webhook_id,
            &delivery.payload,
            ctx.config.dispatch.retry_max,
        )
        .await;
    ctx.metrics.observe_attempt(&delivery.channel, duration);
    ctx.liveness.dispatcher.beat();
    let (record, gone) = match verdict {
        Verdict::Delivered => (delivered(&delivery, number, status_code, duration), false),
        Verdict::Retryable { after, reason } if (number as u32) < channel.max_attempts => {
            let delay = retry_delay(
                number as u32,
                ctx.config.dispatch.retry_base,
                ctx.config.dispatch.retry_max,
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
                PENDING,
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
    status: &'static str,
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
    base_record(d, attempt, DELIVERED, code, None, took)
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
        ..base_record(d, attempt, PENDING, code, Some(reason), took)
    }
}

fn dead(
    d: &Outgoing,
    attempt: i32,
    code: Option<u16>,
    reason: String,
    took: Duration,
) -> AttemptRecord {
    base_record(d, attempt, DEAD, code, Some(reason), took)
}

/// The channels whose deliveries a drain waits for: configured and not disabled.
pub fn live_channels(ctx: &Context) -> HashSet<String> {
    let disabled = ctx.handoff.disabled();
    ctx.config
        .channels
        .keys()
        .map(|c| c.to_string())
        .filter(|c| !disabled.contains(c))
        .collect()
}
