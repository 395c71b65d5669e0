//! The outbox worker: takes the deliveries handed off by this daemon's grants (see
//! [`super::handoff`]) and claims due ones from the outbox (skipping rows another daemon
//! holds), sends them concurrently, and records every attempt. A delivery moves
//! `pending → delivered | pending (retry at a time) | dead`, one function per
//! transition.

use std::collections::HashSet;
use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::StreamExt;
use tracing::{error, instrument, warn};

use super::backoff::retry_delay;
use super::handoff::Outgoing;
use super::send::{Attempt, Verdict};
use crate::daemon::Context;
use crate::store::deliveries::{AttemptRecord, DEAD, DELIVERED, PENDING};
use crate::store::prelude::*;
use crate::store::{self, StoreError};
use crate::with_conn;

/// What one call of [`dispatch_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// This many deliveries were attempted.
    Attempted(DispatchSummary),
    /// Nothing was due.
    Empty,
}

/// Counts of one dispatch round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchSummary {
    /// Attempts made.
    pub attempted: usize,
    /// Delivered.
    pub delivered: usize,
    /// Scheduled for another attempt.
    pub retrying: usize,
    /// Given up.
    pub dead: usize,
}

/// Takes the handed-off deliveries and claims the due ones, sends them, records the
/// results.
#[instrument(skip_all)]
pub async fn dispatch_due(ctx: &Context) -> Result<DispatchOutcome, StoreError> {
    let limit = ctx.config.dispatch.batch_size.max(1);
    let poll_outbox = ctx
        .handoff
        .outbox_due(ctx.handoff.is_empty(), ctx.config.worker.poll_interval);
    // A round that polls the outbox leaves it a quarter of the round at least, so that
    // a steady stream of hand-offs never starves retries, alerts and expired holds.
    let from_handoff = if poll_outbox {
        limit - limit.div_ceil(4)
    } else {
        limit
    };
    let mut due = ctx.handoff.take(from_handoff);
    let room = limit.saturating_sub(due.len());
    if poll_outbox && room > 0 {
        let now = store::now();
        let lease = ctx.delivery_lease();
        let (claimed, disabled) = with_conn!(ctx.db, |conn| {
            let claimed = conn.claim_due(room as i64, now, now + lease).await?;
            (claimed, conn.disabled_channels().await?)
        });
        ctx.handoff.polled(disabled);
        due.extend(claimed.into_iter().map(Outgoing::from));
    }
    if due.is_empty() {
        return Ok(DispatchOutcome::Empty);
    }
    let disabled = ctx.handoff.disabled();
    let results: Vec<(AttemptRecord, Option<String>)> = futures_util::stream::iter(due)
        .map(|delivery| async {
            let channel = delivery.channel.clone();
            let result = attempt(ctx, delivery, &disabled).await;
            ctx.metrics.record_delivery(&channel, result.0.status);
            ctx.liveness.dispatcher.beat();
            result
        })
        .buffer_unordered(ctx.config.dispatch.concurrency.max(1))
        .collect()
        .await;
    let mut summary = DispatchSummary {
        attempted: results.len(),
        ..DispatchSummary::default()
    };
    let (records, gone): (Vec<AttemptRecord>, Vec<Option<String>>) = results.into_iter().unzip();
    for r in &records {
        match r.status {
            DELIVERED => summary.delivered += 1,
            PENDING => summary.retrying += 1,
            _ => summary.dead += 1,
        }
    }
    let gone: Vec<(String, String)> = records
        .iter()
        .zip(gone)
        .filter_map(|(r, channel)| Some((channel?, r.error.clone()?)))
        .collect();
    for (channel, _) in &gone {
        ctx.handoff.disable(channel);
    }
    with_conn!(ctx.db, |conn| record(conn, &records, &gone).await?);
    Ok(DispatchOutcome::Attempted(summary))
}

async fn record<C: Store>(
    conn: &mut C,
    records: &[AttemptRecord],
    gone: &[(String, String)],
) -> Result<(), StoreError> {
    conn.record_attempts(records).await?;
    for (channel, reason) in gone {
        error!(channel = %channel, reason = %reason, "partner answered 410 Gone: channel DISABLED; its deliveries are kept as dead until replayed");
        conn.disable_channel(channel, reason, store::now()).await?;
    }
    Ok(())
}

/// Sends one delivery; returns the record and, for a 410, the channel to disable.
async fn attempt(
    ctx: &Context,
    delivery: Outgoing,
    disabled: &HashSet<String>,
) -> (AttemptRecord, Option<String>) {
    let number = delivery.attempts + 1;
    let Some(channel) = ctx.channel(&delivery.channel) else {
        let reason = format!("channel {} is not configured", delivery.channel);
        return (dead(&delivery, number, None, reason, Duration::ZERO), None);
    };
    if disabled.contains(&delivery.channel) {
        let reason = format!(
            "channel {} is disabled (its partner answered 410 Gone)",
            delivery.channel
        );
        return (dead(&delivery, number, None, reason, Duration::ZERO), None);
    }
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
    match verdict {
        Verdict::Delivered => (delivered(&delivery, number, status_code, duration), None),
        Verdict::Retryable { after, reason } if (number as u32) < channel.max_attempts => {
            let delay = retry_delay(
                number as u32,
                ctx.config.dispatch.retry_base,
                ctx.config.dispatch.retry_max,
                after,
            );
            (
                retry(&delivery, number, status_code, reason, duration, delay),
                None,
            )
        }
        Verdict::Retryable { reason, .. } => {
            warn!(webhook_id = %delivery.webhook_id, attempts = number, "delivery is dead: out of attempts");
            let reason = format!("{reason} (gave up after {number} attempts)");
            (dead(&delivery, number, status_code, reason, duration), None)
        }
        Verdict::Permanent { reason } => {
            (dead(&delivery, number, status_code, reason, duration), None)
        }
        Verdict::Gone { reason } => {
            let record = dead(&delivery, number, status_code, reason, duration);
            (record, Some(delivery.channel.clone()))
        }
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
