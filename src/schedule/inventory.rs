//! The inventory check: finds every active coupon whose stock is at or below its
//! `low_stock` watermark or exhausted, retires it from selection and lets the next
//! coupon of its chain serve. What is left of a retired coupon stays a last-resort
//! reserve. Each rotation is audited in `coupon_rotations` and announced as
//! `coupon.rotated`; a chain with nothing left announces `campaign.exhausted` once.
//!
//! A coupon is never retired earlier than its watermark: its recent grant rate only
//! feeds a forecast, announced as `coupon.running_low` once per coupon until it is
//! restocked. A burst's rate, extrapolated, used to retire coupons with half their
//! stock left, stranding it as a reserve nobody got; ops who want early rotation set
//! `low_stock`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Serialize;
use tracing::{info, warn};

use super::Deps;
use crate::config::Config;
use crate::domain::chain::CouponStock;
use crate::domain::CouponState;
use crate::pipeline::dispatch::events;
use crate::store::jobs::{AlertMark, Rotation};
use crate::store::{Conn, Db, StoreError};

/// How far back the grant rate is measured.
pub const RATE_WINDOW: TimeDelta = TimeDelta::minutes(2);

/// How far ahead the run-out forecast looks, for a check every `check_interval`: as far
/// as the rate looked back ([`RATE_WINDOW`]), and at least to the next check (it could
/// not warn any later).
pub fn forecast_horizon(check_interval: Duration) -> Duration {
    check_interval.max(RATE_WINDOW.to_std().unwrap_or_default())
}

/// Why a coupon is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Remaining stock is at or below `low_stock`.
    LowStock,
    /// Nothing left.
    Exhausted,
}

impl Reason {
    /// The value stored in `coupon_rotations.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LowStock => "low_stock",
            Reason::Exhausted => "exhausted",
        }
    }
}

/// A rotation the check decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The coupon to retire.
    pub from: String,
    /// The coupon that serves next.
    pub to: String,
    /// Why.
    pub reason: Reason,
    /// What is left of `from`.
    pub remaining: i64,
}

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InventoryReport {
    /// Rotations made.
    pub rotations: Vec<Rotation>,
    /// Coupons announced running low (once per coupon until restocked).
    pub running_low: Vec<String>,
    /// Campaigns announced exhausted (first time only).
    pub exhausted: Vec<String>,
}

/// Grants per second by coupon over [`RATE_WINDOW`].
pub type Rates = HashMap<String, f64>;

/// A coupon that, at its grant rate, runs out within the forecast's horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningLow {
    /// The coupon.
    pub coupon: String,
    /// What is left of it.
    pub remaining: i64,
    /// Its grant rate over [`RATE_WINDOW`], per second.
    pub rate_per_sec: f64,
    /// When it runs out at that rate.
    pub run_out_at: DateTime<Utc>,
}

fn needs_rotation(coupon: &CouponStock) -> Option<Reason> {
    if coupon.remaining == 0 {
        return Some(Reason::Exhausted);
    }
    (coupon.remaining <= coupon.low_stock).then_some(Reason::LowStock)
}

/// Decides the rotations of one chain (in chain order): at the watermark or exhausted,
/// never earlier. A coupon is rotated only when a later active coupon with stock can
/// take over — preferably one that does not need rotating itself; otherwise it keeps
/// serving and the grant step's fallback covers it.
pub fn plan_rotations(chain: &[CouponStock]) -> Vec<Planned> {
    let reasons: Vec<Option<Reason>> = chain
        .iter()
        .map(|c| {
            (c.state == CouponState::Active)
                .then(|| needs_rotation(c))
                .flatten()
        })
        .collect();
    let usable = |j: usize| chain[j].serves();
    chain
        .iter()
        .enumerate()
        .filter_map(|(i, coupon)| {
            let reason = reasons[i]?;
            let later = (i + 1)..chain.len();
            let to = later
                .clone()
                .find(|&j| usable(j) && reasons[j].is_none())
                .or_else(|| later.clone().find(|&j| usable(j)))?;
            Some(Planned {
                from: coupon.id.clone(),
                to: chain[to].id.clone(),
                reason,
                remaining: coupon.remaining,
            })
        })
        .collect()
}

/// The coupons of one chain that still serve after `rotated` and, at their grant rate,
/// run out within `horizon` of `now` (`remaining <= rate × horizon`).
pub fn forecast_running_low(
    chain: &[CouponStock],
    rotated: &[Planned],
    rates: &Rates,
    horizon: Duration,
    now: DateTime<Utc>,
) -> Vec<RunningLow> {
    let until = TimeDelta::from_std(horizon)
        .ok()
        .and_then(|h| now.checked_add_signed(h))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    chain
        .iter()
        .filter(|c| c.state == CouponState::Active && !rotated.iter().any(|p| p.from == c.id))
        .filter_map(|c| {
            let rate_per_sec = rates.get(&c.id).copied().unwrap_or(0.0);
            let run_out_at = predicted_run_out(c.remaining, rate_per_sec, now)?;
            (run_out_at <= until).then(|| RunningLow {
                coupon: c.id.clone(),
                remaining: c.remaining,
                rate_per_sec,
                run_out_at,
            })
        })
        .collect()
}

/// Runs the check over every campaign.
pub async fn check(deps: &Deps) -> Result<InventoryReport, StoreError> {
    let now = crate::store::now().and_utc();
    let horizon = forecast_horizon(super::tick_interval(&deps.config.schedule.inventory_check));
    let rates = grant_rates(&deps.db, now).await?;
    let mut report = InventoryReport::default();
    // The campaigns of the last reload, like the grant step.
    let catalog = deps.catalog.current();
    for campaign in &catalog.campaigns {
        let (config, rates, id) = (catalog.clone(), rates.clone(), campaign.id.to_string());
        let checked = {
            let conn = &mut deps.db.get().await?;
            check_campaign(conn, config, id, rates, horizon, now).await?
        };
        for low in &checked.running_low {
            warn!(campaign = %campaign.id, coupon = %low.coupon, remaining = low.remaining, run_out_at = %low.run_out_at, "coupon running low at its grant rate");
        }
        for r in &checked.rotations {
            info!(campaign = %r.campaign_id, from = %r.from_coupon, to = ?r.to_coupon, reason = %r.reason, remaining = r.remaining, "coupon rotated");
        }
        if checked.exhausted {
            warn!(campaign = %campaign.id, "campaign exhausted: no coupon of its chain has stock left");
            report.exhausted.push(campaign.id.to_string());
        }
        report.rotations.extend(checked.rotations);
        report
            .running_low
            .extend(checked.running_low.into_iter().map(|l| l.coupon));
    }
    if !report.rotations.is_empty()
        || !report.running_low.is_empty()
        || !report.exhausted.is_empty()
    {
        deps.outbox_ready.notify_one();
    }
    Ok(report)
}

async fn grant_rates(db: &Db, now: DateTime<Utc>) -> Result<Rates, StoreError> {
    let since = (now - RATE_WINDOW).naive_utc();
    let rows = db.get().await?.grants_since(since).await?;
    Ok(rows
        .into_iter()
        .map(|(coupon, count, first)| {
            // Measured from the first grant in the window, so that a burst that began
            // seconds ago is not diluted over the whole window.
            let span = first
                .map(|f| (now.naive_utc() - f).as_seconds_f64())
                .unwrap_or(RATE_WINDOW.as_seconds_f64())
                .max(1.0);
            (coupon, count as f64 / span)
        })
        .collect())
}

#[derive(Serialize)]
struct RotatedEvent {
    campaign: String,
    from: String,
    to: Option<String>,
    reason: &'static str,
    remaining: i64,
}

#[derive(Serialize)]
struct RunningLowEvent<'a> {
    campaign: &'a str,
    coupon: &'a str,
    remaining: i64,
    rate_per_min: f64,
    run_out_at: String,
}

impl<'a> RunningLowEvent<'a> {
    fn of(campaign: &'a str, low: &'a RunningLow) -> Self {
        RunningLowEvent {
            campaign,
            coupon: &low.coupon,
            remaining: low.remaining,
            // Per minute with one decimal, as `stock show` prints it.
            rate_per_min: (low.rate_per_sec * 600.0).round() / 10.0,
            run_out_at: low.run_out_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }
}

#[derive(Serialize)]
struct ExhaustedEvent<'a> {
    campaign: &'a str,
}

/// What one campaign's check did.
struct CampaignCheck {
    rotations: Vec<Rotation>,
    running_low: Vec<RunningLow>,
    exhausted: bool,
}

/// One campaign's check in one transaction: lock the chain, rotate, audit, announce
/// the rotations, the coupons running low (once each) and an exhausted chain (once).
fn check_campaign<'c>(
    conn: &'c mut Conn,
    config: Arc<Config>,
    campaign_id: String,
    rates: Rates,
    horizon: Duration,
    now: DateTime<Utc>,
) -> BoxFuture<'c, Result<CampaignCheck, StoreError>> {
    conn.transaction(async move |conn| {
        let mut chain = conn
            .chains(std::slice::from_ref(&campaign_id), true)
            .await?;
        chain.sort_by_key(|c| c.position);
        let at = now.naive_utc();
        let mut alerts = Vec::new();
        let planned = plan_rotations(&chain);
        let mut running_low = Vec::new();
        for low in forecast_running_low(&chain, &planned, &rates, horizon, now) {
            if conn.mark_running_low(&low.coupon).await? {
                let event = RunningLowEvent::of(&campaign_id, &low);
                let kind = events::COUPON_RUNNING_LOW;
                alerts.extend(events::alert(&config, kind, event, now));
                running_low.push(low);
            }
        }
        let mut rotations = Vec::new();
        for planned in planned {
            let (rotation, event) = rotate(conn, &campaign_id, planned, at).await?;
            alerts.extend(events::alert(&config, events::COUPON_ROTATED, event, now));
            rotations.push(rotation);
        }
        let empty = !chain.is_empty() && chain.iter().all(|c| c.remaining == 0);
        let exhausted = empty
            && conn
                .mark_alerted(&campaign_id, AlertMark::Exhausted, at)
                .await?;
        if exhausted {
            let event = ExhaustedEvent {
                campaign: &campaign_id,
            };
            let kind = events::CAMPAIGN_EXHAUSTED;
            alerts.extend(events::alert(&config, kind, event, now));
        }
        conn.record_deliveries(&alerts).await?;
        Ok(CampaignCheck {
            rotations,
            running_low,
            exhausted,
        })
    })
    .boxed()
}

/// Retires `planned.from` and audits it; returns the audit row and its event.
async fn rotate(
    conn: &mut Conn,
    campaign_id: &str,
    planned: Planned,
    at: NaiveDateTime,
) -> Result<(Rotation, RotatedEvent), StoreError> {
    conn.set_coupon_state(&planned.from, CouponState::Retired, at)
        .await?;
    let rotation = Rotation {
        campaign_id: campaign_id.to_owned(),
        from_coupon: planned.from.clone(),
        to_coupon: Some(planned.to.clone()),
        reason: planned.reason.as_str().to_owned(),
        remaining: planned.remaining,
        rotated_at: at,
    };
    conn.record_rotation(&rotation).await?;
    let event = RotatedEvent {
        campaign: campaign_id.to_owned(),
        from: planned.from,
        to: Some(planned.to),
        reason: planned.reason.as_str(),
        remaining: planned.remaining,
    };
    Ok((rotation, event))
}

/// Used by `stock show`: the predicted run-out of a coupon at its current rate.
pub fn predicted_run_out(
    remaining: i64,
    rate_per_sec: f64,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if rate_per_sec <= 0.0 || remaining <= 0 {
        return None;
    }
    let ms = remaining as f64 / rate_per_sec * 1000.0;
    TimeDelta::try_milliseconds(ms as i64).and_then(|d| now.checked_add_signed(d))
}

/// The current grant rates (per second), for `stock show`.
pub async fn current_rates(db: &Db) -> Result<Rates, StoreError> {
    grant_rates(db, crate::store::now().and_utc()).await
}

#[cfg(test)]
mod tests;
