//! The inventory check: finds every active coupon whose stock is at or below its
//! `low_stock` watermark or exhausted, or whose validity would no longer serve a grant
//! (`expired`), retires it from selection and lets the next coupon of its chain serve.
//! A pool coupon is checked like any other: its stock is its unissued codes. What is
//! left of a retired coupon stays a last-resort reserve (never an expired coupon's: the
//! grant step counts it as out of stock). Each rotation is audited in
//! `coupon_rotations` and announced as `coupon.rotated`; a chain with nothing left to
//! grant announces `campaign.exhausted` once.
//!
//! A coupon is never retired earlier than its watermark: its recent grant rate only
//! feeds a forecast, announced as `coupon.running_low` once per coupon until it is
//! restocked. A burst's rate, extrapolated, used to retire coupons with half their
//! stock left, stranding it as a reserve nobody got; ops who want early rotation set
//! `low_stock`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Serialize;
use tracing::{info, warn};

use super::Deps;
use crate::config::Config;
use crate::domain::CouponState;
use crate::pipeline::dispatch::events;
use crate::store::jobs::{AlertMark, Rotation};
use crate::store::{Conn, Db, StoreError};

mod plan;

pub use plan::{
    forecast_horizon, forecast_running_low, nothing_serves, plan_rotations, predicted_run_out,
    unusable_now, Planned, Rates, Reason, RunningLow, RATE_WINDOW,
};

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
        let unusable = unusable_now(campaign, now);
        let checked = {
            let conn = &mut deps.db.get().await?;
            check_campaign(conn, config, id, unusable, rates, horizon, now).await?
        };
        for low in &checked.running_low {
            warn!(campaign = %campaign.id, coupon = %low.coupon, remaining = low.remaining, run_out_at = %low.run_out_at, "coupon running low at its grant rate");
        }
        for r in &checked.rotations {
            info!(campaign = %r.campaign_id, from = %r.from_coupon, to = ?r.to_coupon, reason = %r.reason, remaining = r.remaining, "coupon rotated");
        }
        if checked.exhausted {
            warn!(campaign = %campaign.id, "campaign exhausted: no coupon of its chain can be granted");
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
/// `unusable` are its coupons whose validity would not serve now ([`unusable_now`]).
fn check_campaign<'c>(
    conn: &'c mut Conn,
    config: Arc<Config>,
    campaign_id: String,
    unusable: HashSet<String>,
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
        let planned = plan_rotations(&chain, &unusable);
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
        let exhausted = nothing_serves(&chain, &unusable)
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
        to_coupon: planned.to.clone(),
        reason: planned.reason.as_str().to_owned(),
        remaining: planned.remaining,
        rotated_at: at,
    };
    conn.record_rotation(&rotation).await?;
    let event = RotatedEvent {
        campaign: campaign_id.to_owned(),
        from: planned.from,
        to: planned.to,
        reason: planned.reason.as_str(),
        remaining: planned.remaining,
    };
    Ok((rotation, event))
}

/// The current grant rates (per second), for `stock show`.
pub async fn current_rates(db: &Db) -> Result<Rates, StoreError> {
    grant_rates(db, crate::store::now().and_utc()).await
}

#[cfg(test)]
mod tests;
