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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::{error, instrument, warn};

use super::attempt::attempt;
use super::events;
use super::handoff::Outgoing;
use super::lanes::{Sender, Sent};
use super::Deps;
use crate::domain::DeliveryStatus;
use crate::store::deliveries::AttemptRecord;
use crate::store::{self, StoreError};

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
    record_while_sending(deps, finished).await
}

/// Records `finished` in a task of its own (a transaction is never dropped half-way)
/// while the lanes go on: a fast partner's senders do not idle for the commit.
async fn record_while_sending(
    deps: &Deps,
    finished: Vec<Sent>,
) -> Result<DispatchOutcome, StoreError> {
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
        let now_disabled = deps.db.get().await?.disabled_channels().await?;
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
        let limit = claim_size(deps, name, (room, sendable), batch);
        if room > 0 && limit > 0 {
            claim(deps, name, limit, lease).await?;
        }
        let due = deps.handoff.take(name, room, whole_attempt);
        if !due.is_empty() {
            spawn_sends(deps, name, due).await;
        }
    }
    Ok(())
}

/// How many due rows `channel`'s lane claims now, with `room` free senders and
/// `sendable` deliveries it can start while a hold lasts.
fn claim_size(deps: &Deps, channel: &str, (room, sendable): (usize, usize), batch: usize) -> usize {
    let interval = deps.config.worker.poll_interval;
    let limit = deps.handoff.claim_limit(channel, sendable, batch);
    if limit > 0 && 2 * limit >= sendable.min(batch) {
        if deps.handoff.outbox_due(channel, interval) {
            limit
        } else {
            0
        }
    } else if deps.handoff.poll_overdue(channel, interval) {
        limit.max(room.div_ceil(4)).min(batch)
    } else {
        0
    }
}

/// Claims up to `limit` due rows of `channel` into its queue in memory, ahead of
/// hand-offs.
async fn claim(
    deps: &Deps,
    channel: &str,
    limit: usize,
    lease: chrono::TimeDelta,
) -> Result<(), StoreError> {
    let token = hold_token();
    let now = store::now();
    let held_until = Instant::now() + lease.to_std().unwrap_or_default();
    let claimed = deps
        .db
        .get()
        .await?
        .claim_due(channel, limit as i64, (now, now + lease), token)
        .await?;
    deps.handoff.polled(channel, claimed.len() == limit);
    deps.handoff.push_front(
        claimed
            .into_iter()
            .map(|d| Outgoing::claimed(d, token, held_until)),
    );
    Ok(())
}

/// Starts one send per delivery in `channel`'s lane, each a task of its own.
async fn spawn_sends(deps: &Deps, channel: &str, due: Vec<Outgoing>) {
    deps.lanes.add(channel, due.len());
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
    let recorded: Result<usize, StoreError> =
        async { Ok(deps.db.get().await?.record_attempts(&records).await?) }.await;
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
    let first = deps
        .db
        .get()
        .await?
        .disable_channel(channel, reason, store::now(), alert)
        .await?;
    if first {
        error!(channel = %channel, reason = %reason, held_in_memory = dropped, "partner answered 410 Gone: channel DISABLED; its deliveries are held (pending) until `couponsd channels enable {channel}`");
    }
    Ok(())
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
