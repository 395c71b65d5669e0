//! The webhook bodies couponsd sends. This is a pinned contract: partners parse it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::domain::chain::ChainCoupon;
use crate::domain::lifecycle::GrantRecord;
use crate::domain::{GrantState, Money, TriggerRequest};
use crate::store::deliveries::NewDelivery;
use crate::store::grants::NewGrant;

/// `coupon.granted`, to the coupon's channel.
pub const COUPON_GRANTED: &str = "coupon.granted";
/// `coupon.redeemed`, to the coupon's channel: a partner reported the redemption.
pub const COUPON_REDEEMED: &str = "coupon.redeemed";
/// `coupon.revoked`, to the coupon's channel: the grant was taken back.
pub const COUPON_REVOKED: &str = "coupon.revoked";
/// `coupon.expired`, to the coupon's channel: its validity ended unused.
pub const COUPON_EXPIRED: &str = "coupon.expired";
/// `coupon.expiring`, to the coupon's channel, once, `remind_before` ahead of
/// `expires_at`.
pub const COUPON_EXPIRING: &str = "coupon.expiring";
/// `coupon.rotated`, to the alerts channel.
pub const COUPON_ROTATED: &str = "coupon.rotated";
/// `coupon.running_low`, to the alerts channel: at its grant rate the coupon runs out
/// soon (once per coupon until it is restocked). Only an alert: rotation waits for
/// `low_stock`.
pub const COUPON_RUNNING_LOW: &str = "coupon.running_low";
/// `campaign.exhausted`, to the alerts channel, once per exhaustion.
pub const CAMPAIGN_EXHAUSTED: &str = "campaign.exhausted";
/// `campaign.budget_reached`, to the alerts channel, once.
pub const CAMPAIGN_BUDGET_REACHED: &str = "campaign.budget_reached";
/// `inventory.drift`, to the alerts channel, when reconciliation finds a difference.
pub const INVENTORY_DRIFT: &str = "inventory.drift";
/// `channel.disabled`, to the alerts channel, once when a partner's 410 Gone disables
/// a channel: its deliveries are held until `channels enable`.
pub const CHANNEL_DISABLED: &str = "channel.disabled";

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: T,
}

#[derive(Serialize)]
struct Granted<'a> {
    grant_id: i64,
    request_key: &'a str,
    user_id: &'a str,
    campaign: &'a str,
    coupon: &'a str,
    face_value: String,
    user_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

/// The body of `coupon.redeemed`, `coupon.revoked`, `coupon.expired` and
/// `coupon.expiring`: the grant as `coupon.granted` named it, and its new state.
#[derive(Serialize)]
struct Lifecycle<'a> {
    grant_id: i64,
    user_id: &'a str,
    campaign: &'a str,
    coupon: &'a str,
    face_value: String,
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The outbox row of a lifecycle event (`kind`: [`COUPON_REDEEMED`],
/// [`COUPON_REVOKED`], [`COUPON_EXPIRED`], [`COUPON_EXPIRING`]) for `grant`, now in
/// `state`, to its coupon's channel.
pub fn coupon_lifecycle(
    kind: &str,
    grant: &GrantRecord,
    (state, reason): (GrantState, Option<&str>),
    at: DateTime<Utc>,
) -> NewDelivery {
    let data = Lifecycle {
        grant_id: grant.id,
        user_id: &grant.user_id,
        campaign: &grant.campaign_id,
        coupon: &grant.coupon_id,
        face_value: Money::from_cents(grant.face_value_cents).to_string(),
        state: state.as_str(),
        code: grant.code.as_deref(),
        expires_at: grant.expires_at.map(rfc3339),
        reason,
    };
    outbox_row(
        &grant.channel,
        kind,
        Some(grant.id),
        body(kind, at, data),
        at,
    )
}

/// A stored time as the webhook bodies write it: RFC 3339 in UTC, to the second.
pub fn rfc3339(at: chrono::NaiveDateTime) -> String {
    at.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Serialises an event body: `{"type":…,"timestamp":…,"data":…}`.
pub fn body<T: Serialize>(kind: &str, at: DateTime<Utc>, data: T) -> String {
    let envelope = Envelope {
        kind,
        timestamp: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        data,
    };
    serde_json::to_string(&envelope).expect("event bodies always serialise")
}

/// The outbox row for a grant.
pub fn coupon_granted(
    grant: &NewGrant,
    request: &TriggerRequest,
    coupon: &ChainCoupon,
    at: DateTime<Utc>,
) -> NewDelivery {
    let data = Granted {
        grant_id: grant.id,
        request_key: request.key.as_str(),
        user_id: &grant.user_id,
        campaign: &grant.campaign_id,
        coupon: &grant.coupon_id,
        face_value: coupon.face_value.to_string(),
        user_type: &grant.user_type,
        code: grant.code.as_deref(),
        valid_from: grant.valid_from.map(rfc3339),
        expires_at: grant.expires_at.map(rfc3339),
    };
    outbox_row(
        coupon.channel.as_str(),
        COUPON_GRANTED,
        Some(grant.id),
        body(COUPON_GRANTED, at, data),
        at,
    )
}

/// An outbox row for any event, due now.
pub fn outbox_row(
    channel: &str,
    kind: &str,
    grant_id: Option<i64>,
    payload: String,
    at: DateTime<Utc>,
) -> NewDelivery {
    NewDelivery {
        webhook_id: super::signing::new_webhook_id(),
        channel: channel.to_owned(),
        event_type: kind.to_owned(),
        grant_id,
        payload,
        next_attempt_at: at.naive_utc(),
        created_at: at.naive_utc(),
        hold_token: None,
    }
}

/// An ops event for the alerts channel, or `None` when `alerts.channel` is not set (the
/// event is then only logged by the caller).
pub fn alert<T: Serialize>(
    config: &crate::config::Config,
    kind: &str,
    data: T,
    at: DateTime<Utc>,
) -> Option<NewDelivery> {
    let channel = config.alerts.channel.as_ref()?;
    Some(outbox_row(
        channel.as_str(),
        kind,
        None,
        body(kind, at, data),
        at,
    ))
}
