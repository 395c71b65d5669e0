//! The inventory check: finds every active coupon whose stock is at or below its
//! `low_stock` watermark, exhausted, or predicted to run out before the next check
//! (from its recent grant rate), retires it from selection and lets the next coupon of
//! its chain serve. What is left of a retired coupon stays a last-resort reserve. Each
//! rotation is audited in `coupon_rotations` and announced as `coupon.rotated`; a chain
//! with nothing left announces `campaign.exhausted` once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::daemon::Context;
use crate::dispatch::events;
use crate::store::coupons::{CouponStock, ACTIVE, RETIRED};
use crate::store::prelude::*;
use crate::store::schedule::{AlertMark, Rotation};
use crate::store::StoreError;
use crate::with_conn;

/// How far back the grant rate is measured.
pub const RATE_WINDOW: TimeDelta = TimeDelta::minutes(2);

/// Why a coupon is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Remaining stock is at or below `low_stock`.
    LowStock,
    /// Nothing left.
    Exhausted,
    /// At its grant rate it runs out before the next check.
    Predicted,
}

impl Reason {
    /// The value stored in `coupon_rotations.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LowStock => "low_stock",
            Reason::Exhausted => "exhausted",
            Reason::Predicted => "predicted",
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
    /// Campaigns announced exhausted (first time only).
    pub exhausted: Vec<String>,
}

/// Grants per second by coupon over [`RATE_WINDOW`].
pub type Rates = HashMap<String, f64>;

fn needs_rotation(coupon: &CouponStock, rates: &Rates, horizon: Duration) -> Option<Reason> {
    if coupon.remaining == 0 {
        return Some(Reason::Exhausted);
    }
    if coupon.remaining <= coupon.low_stock {
        return Some(Reason::LowStock);
    }
    let rate = rates.get(&coupon.id).copied().unwrap_or(0.0);
    (rate > 0.0 && (coupon.remaining as f64) <= rate * horizon.as_secs_f64())
        .then_some(Reason::Predicted)
}

/// Decides the rotations of one chain (in chain order). A coupon is rotated only when
/// a later active coupon with stock can take over — preferably one that does not need
/// rotating itself; otherwise it keeps serving and the grant step's fallback covers it.
pub fn plan_rotations(chain: &[CouponStock], rates: &Rates, horizon: Duration) -> Vec<Planned> {
    let reasons: Vec<Option<Reason>> = chain
        .iter()
        .map(|c| {
            (c.state == ACTIVE)
                .then(|| needs_rotation(c, rates, horizon))
                .flatten()
        })
        .collect();
    let usable = |j: usize| chain[j].state == ACTIVE && chain[j].remaining > 0;
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

/// Runs the check over every campaign.
pub async fn check(ctx: &Context) -> Result<InventoryReport, StoreError> {
    let now = Utc::now();
    let horizon = super::tick_interval(&ctx.config.schedule.inventory_check);
    let rates = grant_rates(ctx, now).await?;
    let mut report = InventoryReport::default();
    // The campaigns of the last reload, like the grant step.
    let catalog = ctx.catalog.current();
    for campaign in &catalog.campaigns {
        let (config, rates, id) = (catalog.clone(), rates.clone(), campaign.id.to_string());
        let (rotations, exhausted) = with_conn!(ctx.db, |conn| {
            check_campaign(conn, config, id, rates, horizon, now).await?
        });
        for r in &rotations {
            info!(campaign = %r.campaign_id, from = %r.from_coupon, to = ?r.to_coupon, reason = %r.reason, remaining = r.remaining, "coupon rotated");
        }
        if exhausted {
            warn!(campaign = %campaign.id, "campaign exhausted: no coupon of its chain has stock left");
            report.exhausted.push(campaign.id.to_string());
        }
        report.rotations.extend(rotations);
    }
    if !report.rotations.is_empty() || !report.exhausted.is_empty() {
        ctx.outbox_ready.notify_one();
    }
    Ok(report)
}

async fn grant_rates(ctx: &Context, now: DateTime<Utc>) -> Result<Rates, StoreError> {
    let since = (now - RATE_WINDOW).naive_utc();
    let rows = with_conn!(ctx.db, |conn| conn.grants_since(since).await?);
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
struct RotatedEvent<'a> {
    campaign: &'a str,
    from: &'a str,
    to: Option<&'a str>,
    reason: &'a str,
    remaining: i64,
}

#[derive(Serialize)]
struct ExhaustedEvent<'a> {
    campaign: &'a str,
}

/// One campaign's check in one transaction: lock the chain, rotate, audit, announce.
fn check_campaign<C: Store>(
    conn: &mut C,
    config: Arc<Config>,
    campaign_id: String,
    rates: Rates,
    horizon: Duration,
    now: DateTime<Utc>,
) -> BoxFuture<'_, Result<(Vec<Rotation>, bool), StoreError>> {
    conn.transaction(async move |conn| {
        let mut chain = conn
            .chains(std::slice::from_ref(&campaign_id), true)
            .await?;
        chain.sort_by_key(|c| c.position);
        let at = now.naive_utc();
        let mut rotations = Vec::new();
        let mut alerts = Vec::new();
        for planned in plan_rotations(&chain, &rates, horizon) {
            conn.set_coupon_state(&planned.from, RETIRED, at).await?;
            let rotation = Rotation {
                campaign_id: campaign_id.clone(),
                from_coupon: planned.from.clone(),
                to_coupon: Some(planned.to.clone()),
                reason: planned.reason.as_str().to_owned(),
                remaining: planned.remaining,
                rotated_at: at,
            };
            conn.record_rotation(&rotation).await?;
            let event = RotatedEvent {
                campaign: &campaign_id,
                from: &planned.from,
                to: Some(&planned.to),
                reason: planned.reason.as_str(),
                remaining: planned.remaining,
            };
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
            alerts.extend(events::alert(
                &config,
                events::CAMPAIGN_EXHAUSTED,
                event,
                now,
            ));
        }
        conn.record_deliveries(&alerts).await?;
        Ok((rotations, exhausted))
    })
    .boxed()
}

/// Used by `stock show`: the predicted run-out of a coupon at its current rate.
pub fn predicted_run_out(
    remaining: i64,
    rate_per_sec: f64,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    (rate_per_sec > 0.0 && remaining > 0)
        .then(|| now + TimeDelta::milliseconds((remaining as f64 / rate_per_sec * 1000.0) as i64))
}

/// The current grant rates (per second), for `stock show`.
pub async fn current_rates(ctx: &Context) -> Result<Rates, StoreError> {
    grant_rates(ctx, Utc::now()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(id: &str, remaining: i64, low: i64, state: &str) -> CouponStock {
        CouponStock {
            id: id.into(),
            campaign_id: "c".into(),
            position: 0,
            face_value_cents: 100,
            channel: "wallet".into(),
            stock: 1000,
            granted: 1000 - remaining,
            remaining,
            low_stock: low,
            state: state.into(),
        }
    }

    #[test]
    fn a_coupon_at_its_watermark_rotates_to_the_next() {
        let chain = [coupon("A", 100, 100, ACTIVE), coupon("B", 500, 10, ACTIVE)];
        let plan = plan_rotations(&chain, &Rates::new(), Duration::from_secs(10));
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (plan[0].from.as_str(), plan[0].to.as_str(), plan[0].reason),
            ("A", "B", Reason::LowStock)
        );
    }

    #[test]
    fn a_high_grant_rate_predicts_a_run_out() {
        let chain = [coupon("A", 500, 10, ACTIVE), coupon("B", 5000, 10, ACTIVE)];
        let rates = Rates::from([("A".to_owned(), 60.0)]);
        let plan = plan_rotations(&chain, &rates, Duration::from_secs(10));
        assert_eq!(plan[0].reason, Reason::Predicted);
        let slow = Rates::from([("A".to_owned(), 1.0)]);
        assert!(plan_rotations(&chain, &slow, Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn the_last_coupon_is_never_rotated_and_retired_ones_are_left_alone() {
        let chain = [coupon("A", 0, 10, RETIRED), coupon("B", 5, 10, ACTIVE)];
        assert!(plan_rotations(&chain, &Rates::new(), Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn a_run_out_is_predicted_from_the_rate() {
        let now = Utc::now();
        assert_eq!(
            predicted_run_out(100, 10.0, now),
            Some(now + TimeDelta::seconds(10))
        );
        assert_eq!(predicted_run_out(100, 0.0, now), None);
    }
}
