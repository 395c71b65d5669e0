//! `couponsd explain REQUEST_KEY`: what happened to one request, from the database's
//! record: its status and outcome and why, the user type and campaign, the grant (with
//! its code and validity, when the coupon has them) and the rules version that decided
//! it, and the coupon's delivery with every attempt.

use std::fmt::Write as _;

use serde::Serialize;

use super::{rfc3339, to_json_line, AuthoringError};
use crate::store::records::{DeliveryRecord, GrantRecord, InspectedRequest, PastAttempt};
use crate::store::requests::parse_time;
use crate::store::{Db, StoreError};

/// `couponsd explain` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The request's `request_key`.
    pub request_key: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything recorded about one request.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The request.
    pub request: RequestView,
    /// Its grant, if it earned one.
    pub grant: Option<GrantView>,
    /// The grant's deliveries (one `coupon.granted` per grant).
    pub deliveries: Vec<DeliveryView>,
}

/// A request as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    /// Row id.
    pub id: i64,
    /// The client's idempotency key.
    pub request_key: String,
    /// The user.
    pub user_id: String,
    /// The event.
    pub event: String,
    /// The attributes JSON text.
    pub attributes: Option<String>,
    /// `queued`, `claimed`, `done`, `rejected` or `failed`.
    pub status: String,
    /// For `done`: the outcome.
    pub outcome: Option<String>,
    /// For `done`: what decided the outcome.
    pub detail: Option<String>,
    /// For `rejected` and `failed`: why.
    pub error: Option<String>,
    /// The user type the rules decided.
    pub user_type: Option<String>,
    /// The campaign.
    pub campaign: Option<String>,
    /// The rules version that decided.
    pub rules_version: Option<String>,
    /// Claims whose lease expired and were recovered.
    pub attempts: i32,
    /// When the client inserted it.
    pub created_at: String,
    /// When it was finished.
    pub processed_at: Option<String>,
}

/// A grant as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    /// Grant id.
    pub id: i64,
    /// The campaign.
    pub campaign: String,
    /// The coupon.
    pub coupon: String,
    /// Face value in cents.
    pub face_value_cents: i64,
    /// The user type.
    pub user_type: String,
    /// The rules version that decided.
    pub rules_version: String,
    /// When.
    pub granted_at: String,
    /// The code the user redeems, when the coupon has codes.
    pub code: Option<String>,
    /// When the coupon became valid (the grant), when it has a validity.
    pub valid_from: Option<String>,
    /// When it stops being valid, when it has a validity.
    pub expires_at: Option<String>,
}

/// A delivery and its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The channel.
    pub channel: String,
    /// The event type.
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// While pending: when the next attempt is due.
    pub next_attempt_at: Option<String>,
    /// When a partner accepted it.
    pub delivered_at: Option<String>,
    /// Every attempt, in order.
    pub attempt_log: Vec<AttemptView>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    /// 1 for the first.
    pub attempt: i32,
    /// When.
    pub at: String,
    /// The partner's HTTP status, if it answered.
    pub http_status: Option<i32>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// `couponsd explain`, on `db` (opened read-only by the caller).
pub async fn run(db: &Db, args: &ExplainArgs) -> Result<String, AuthoringError> {
    let explanation = explain(db, &args.request_key).await?;
    if args.json {
        return to_json_line(&explanation);
    }
    Ok(render(&explanation))
}

/// Reads everything recorded about the request with `key`; an unknown key is an error
/// naming it.
pub async fn explain(db: &Db, key: &str) -> Result<Explanation, AuthoringError> {
    let found = {
        let conn = &mut db.get().await?;
        let Some(request) = conn.request_by_key(key).await.map_err(StoreError::from)? else {
            return Err(AuthoringError::Refused(format!(
                "request_key {key:?}: no such request in trigger_requests"
            )));
        };
        let grant = conn
            .grant_of_request(request.id)
            .await
            .map_err(StoreError::from)?;
        let deliveries = match &grant {
            Some(g) => conn
                .deliveries_of_grant(g.id)
                .await
                .map_err(StoreError::from)?,
            None => Vec::new(),
        };
        let ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
        let attempts = conn
            .attempts_of_deliveries(&ids)
            .await
            .map_err(StoreError::from)?;
        (request, grant, deliveries, attempts)
    };
    let (request, grant, deliveries, attempts) = found;
    Ok(Explanation {
        request: request_view(request),
        grant: grant.map(grant_view),
        deliveries: deliveries
            .into_iter()
            .map(|d| delivery_view(d, &attempts))
            .collect(),
    })
}

fn request_view(r: InspectedRequest) -> RequestView {
    // A time the database renders as text that is no valid time is shown as written.
    let time = |text: Option<String>| {
        text.map(|t| match parse_time(t.as_bytes()) {
            Some(at) => rfc3339(at),
            None => format!("{t:?} (not a valid time)"),
        })
    };
    RequestView {
        id: r.id,
        request_key: r.request_key.unwrap_or_default(),
        user_id: r.user_id.unwrap_or_default(),
        event: r.event.unwrap_or_default(),
        attributes: r.attributes,
        status: r.status.unwrap_or_default(),
        outcome: r.outcome,
        detail: r.detail,
        error: r.error,
        user_type: r.user_type,
        campaign: r.campaign_id,
        rules_version: r.rules_version,
        attempts: r.attempts,
        created_at: time(r.created_at).unwrap_or_else(|| "NULL".into()),
        processed_at: time(r.processed_at),
    }
}

fn grant_view(g: GrantRecord) -> GrantView {
    GrantView {
        id: g.id,
        campaign: g.campaign_id,
        coupon: g.coupon_id,
        face_value_cents: g.face_value_cents,
        user_type: g.user_type,
        rules_version: g.rules_version,
        granted_at: rfc3339(g.granted_at),
        code: g.code,
        valid_from: g.valid_from.map(rfc3339),
        expires_at: g.expires_at.map(rfc3339),
    }
}

fn delivery_view(d: DeliveryRecord, attempts: &[PastAttempt]) -> DeliveryView {
    DeliveryView {
        next_attempt_at: (d.status == "pending").then(|| rfc3339(d.next_attempt_at)),
        delivered_at: d.delivered_at.map(rfc3339),
        attempt_log: attempts
            .iter()
            .filter(|a| a.delivery_id == d.id)
            .map(|a| AttemptView {
                attempt: a.attempt,
                at: rfc3339(a.attempted_at),
                http_status: a.status_code,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
        webhook_id: d.webhook_id,
        channel: d.channel,
        event_type: d.event_type,
        status: d.status,
        attempts: d.attempts,
    }
}

/// `value` with control characters escaped (`\n`, `\u{1b}`): what a client wrote
/// reaches the operator's terminal as text, never as terminal commands.
fn printable(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let r = &e.request;
    let none = || "-".to_owned();
    let line = |out: &mut String, label: &str, value: Option<&str>| {
        let _ = writeln!(out, "{label:<14}{}", value.map_or_else(none, printable));
    };
    let request = format!("{} (id {})", r.request_key, r.id);
    line(&mut out, "request", Some(&request));
    line(&mut out, "user", Some(&r.user_id));
    line(&mut out, "event", Some(&r.event));
    line(&mut out, "attributes", r.attributes.as_deref());
    line(&mut out, "created", Some(&r.created_at));
    line(&mut out, "processed", r.processed_at.as_deref());
    let status = match r.attempts {
        0 => r.status.clone(),
        n => format!("{} (its lease was recovered {n} time(s))", r.status),
    };
    line(&mut out, "status", Some(&status));
    line(&mut out, "outcome", r.outcome.as_deref());
    line(&mut out, "detail", r.detail.as_deref());
    line(&mut out, "error", r.error.as_deref());
    line(&mut out, "user type", r.user_type.as_deref());
    line(&mut out, "campaign", r.campaign.as_deref());
    line(&mut out, "rules version", r.rules_version.as_deref());
    match &e.grant {
        Some(g) => {
            let grant = format!(
                "{}: coupon {} ({}.{:02}) at {}",
                g.id,
                g.coupon,
                g.face_value_cents / 100,
                g.face_value_cents % 100,
                g.granted_at
            );
            line(&mut out, "grant", Some(&grant));
            if let Some(code) = &g.code {
                line(&mut out, "code", Some(code));
            }
            if g.valid_from.is_some() || g.expires_at.is_some() {
                line(&mut out, "valid from", g.valid_from.as_deref());
                line(&mut out, "expires at", g.expires_at.as_deref());
            }
        }
        None => line(&mut out, "grant", Some("none")),
    }
    for d in &e.deliveries {
        let _ = writeln!(
            out,
            "delivery      {} webhook-id {} channel {}: {} after {} attempt(s){}",
            d.event_type,
            d.webhook_id,
            d.channel,
            d.status,
            d.attempts,
            d.next_attempt_at
                .as_ref()
                .map(|t| format!(", next at {t}"))
                .unwrap_or_default()
        );
        for a in &d.attempt_log {
            let status = a
                .http_status
                .map_or("no answer".to_owned(), |s| format!("HTTP {s}"));
            let error = a
                .error
                .as_ref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  attempt {:<4}{}  {status}  {}ms{error}",
                a.attempt, a.at, a.duration_ms
            );
        }
    }
    out
}
