//! The inventory check's decisions, as pure functions of a chain's stock: which coupons
//! to rotate and to which, and which run out soon at their grant rate. The check
//! (`inventory.rs`) reads the chain under its locks and acts on them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::campaign::CampaignConfig;
use crate::domain::chain::CouponStock;
use crate::domain::CouponState;

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
    /// Its validity has ended, or a grant made now would have less than its
    /// `min_validity` left: it can never be granted again.
    Expired,
}

impl Reason {
    /// The value stored in `coupon_rotations.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LowStock => "low_stock",
            Reason::Exhausted => "exhausted",
            Reason::Expired => "expired",
        }
    }
}

/// A rotation the check decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The coupon to retire.
    pub from: String,
    /// The coupon that serves next; `None` only for an expired coupon that nothing
    /// later in its chain can replace.
    pub to: Option<String>,
    /// Why.
    pub reason: Reason,
    /// What is left of `from`.
    pub remaining: i64,
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

/// The coupons of `campaign` (the catalog in force) whose validity would not serve a
/// grant made at `now`: the grant step counts them as out of stock
/// ([`Chain::apply_catalog`](crate::domain::chain::Chain::apply_catalog)), and the
/// check retires them.
pub fn unusable_now(campaign: &CampaignConfig, now: DateTime<Utc>) -> HashSet<String> {
    campaign
        .coupons
        .iter()
        .filter(|c| c.validity.check(now).is_err())
        .map(|c| c.id.to_string())
        .collect()
}

fn needs_rotation(coupon: &CouponStock, expired: bool) -> Option<Reason> {
    if expired {
        return Some(Reason::Expired);
    }
    if coupon.remaining == 0 {
        return Some(Reason::Exhausted);
    }
    (coupon.remaining <= coupon.low_stock).then_some(Reason::LowStock)
}

/// Decides the rotations of one chain (in chain order); `unusable` are the coupons
/// whose validity would not serve now ([`unusable_now`]). A coupon is rotated at its
/// watermark or exhausted, never earlier, and only when a later active coupon with
/// stock, itself usable, can take over — preferably one that does not need rotating
/// itself; otherwise it keeps serving and the grant step's fallback covers it. An
/// unusable coupon is rotated (`expired`) whether or not one can take over: it can
/// never serve again, its stock least of all.
pub fn plan_rotations(chain: &[CouponStock], unusable: &HashSet<String>) -> Vec<Planned> {
    let reasons: Vec<Option<Reason>> = chain
        .iter()
        .map(|c| {
            (c.state == CouponState::Active)
                .then(|| needs_rotation(c, unusable.contains(&c.id)))
                .flatten()
        })
        .collect();
    let usable = |j: usize| chain[j].serves() && !unusable.contains(&chain[j].id);
    chain
        .iter()
        .enumerate()
        .filter_map(|(i, coupon)| {
            let reason = reasons[i]?;
            let later = (i + 1)..chain.len();
            let to = later
                .clone()
                .find(|&j| usable(j) && reasons[j].is_none())
                .or_else(|| later.clone().find(|&j| usable(j)));
            if to.is_none() && reason != Reason::Expired {
                return None;
            }
            Some(Planned {
                from: coupon.id.clone(),
                to: to.map(|j| chain[j].id.clone()),
                reason,
                remaining: coupon.remaining,
            })
        })
        .collect()
}

/// True when no coupon of the chain can be granted: each is out of stock or unusable
/// (a retired coupon's usable reserve still serves as the last resort).
pub fn nothing_serves(chain: &[CouponStock], unusable: &HashSet<String>) -> bool {
    !chain.is_empty()
        && chain
            .iter()
            .all(|c| c.remaining == 0 || unusable.contains(&c.id))
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
