//! One attempt: send a delivery and turn the partner's answer into its record —
//! delivered, a retry at a time, dead, or held by a channel that answered 410 Gone.

use std::time::Duration;

use chrono::NaiveDateTime;
use tracing::warn;

use super::backoff::retry_delay;
use super::handoff::Outgoing;
use super::lanes::Sent;
use super::send::{Answer, Attempt};
use super::Deps;
use crate::config::DispatchConfig;
use crate::domain::DeliveryStatus;
use crate::store;
use crate::store::deliveries::AttemptRecord;

/// Sends one delivery and turns the answer into its record.
pub(super) async fn attempt(deps: &Deps, delivery: Outgoing) -> Sent {
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
        answer,
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
    let answered = Answered {
        delivery: &delivery,
        number,
        status_code,
        duration,
    };
    let (record, gone) = answered.record(answer, channel.max_attempts, &deps.config.dispatch);
    Sent {
        record,
        channel: name,
        gone,
    }
}

/// A delivery the partner answered, as the attempt `number`.
struct Answered<'a> {
    delivery: &'a Outgoing,
    number: i32,
    status_code: Option<u16>,
    duration: Duration,
}

impl Answered<'_> {
    /// The attempt's record, and whether the channel answered 410 Gone.
    fn record(
        &self,
        answer: Answer,
        max_attempts: u32,
        dispatch: &DispatchConfig,
    ) -> (AttemptRecord, bool) {
        let Answered {
            delivery,
            number,
            status_code,
            duration,
        } = *self;
        match answer {
            Answer::Delivered => (delivered(delivery, number, status_code, duration), false),
            Answer::Retryable { after, reason } if (number as u32) < max_attempts => {
                let delay = retry_delay(
                    number as u32,
                    dispatch.retry_base,
                    dispatch.retry_max,
                    after,
                );
                let record = retry(delivery, number, status_code, reason, duration, delay);
                (record, false)
            }
            Answer::Retryable { reason, .. } => {
                warn!(webhook_id = %delivery.webhook_id, attempts = number, "delivery is dead: out of attempts");
                let reason = format!("{reason} (gave up after {number} attempts)");
                (dead(delivery, number, status_code, reason, duration), false)
            }
            Answer::Permanent { reason } => {
                (dead(delivery, number, status_code, reason, duration), false)
            }
            // Held, not dead: the delivery waits for `channels enable`.
            Answer::Gone { reason } => (
                base_record(
                    delivery,
                    number,
                    DeliveryStatus::Pending,
                    status_code,
                    Some(reason),
                    duration,
                ),
                true,
            ),
        }
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

pub(super) fn dead(
    d: &Outgoing,
    attempt: i32,
    code: Option<u16>,
    reason: String,
    took: Duration,
) -> AttemptRecord {
    base_record(d, attempt, DeliveryStatus::Dead, code, Some(reason), took)
}
