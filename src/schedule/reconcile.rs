//! Reconciliation: checks that every coupon's stock, granted and remaining agree with
//! each other and with the grants ledger, and reports any drift as an alert.

use std::collections::HashMap;

use serde::Serialize;
use tracing::{error, info};

use super::Deps;
use crate::domain::chain::CouponStock;
use crate::pipeline::dispatch::events;
use crate::store::StoreError;

/// A coupon whose counters disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The coupon.
    pub coupon: String,
    /// Everything made available.
    pub stock: i64,
    /// Its granted counter.
    pub granted: i64,
    /// Its remaining counter.
    pub remaining: i64,
    /// Grants in the ledger.
    pub ledger_granted: i64,
}

/// Finds the coupons whose counters disagree.
pub fn find_drift(coupons: &[CouponStock], ledger: &HashMap<String, i64>) -> Vec<Drift> {
    coupons
        .iter()
        .filter_map(|c| {
            let ledger_granted = ledger.get(&c.id).copied().unwrap_or(0);
            let agrees = c.granted == ledger_granted && c.stock == c.granted + c.remaining;
            (!agrees).then(|| Drift {
                coupon: c.id.clone(),
                stock: c.stock,
                granted: c.granted,
                remaining: c.remaining,
                ledger_granted,
            })
        })
        .collect()
}

/// Runs the reconciliation and alerts on every drift found.
pub async fn run(deps: &Deps) -> Result<Vec<Drift>, StoreError> {
    let now = crate::store::now().and_utc();
    let (coupons, per_coupon) = {
        let conn = &mut deps.db.get().await?;
        (conn.coupon_stock().await?, conn.grants_per_coupon().await?)
    };
    let mut ledger: HashMap<String, i64> = HashMap::new();
    for (_, coupon, n) in per_coupon {
        *ledger.entry(coupon).or_default() += n;
    }
    let drift = find_drift(&coupons, &ledger);
    if drift.is_empty() {
        info!(
            coupons = coupons.len(),
            "reconciliation: stock agrees with the ledger"
        );
        return Ok(drift);
    }
    let alerts: Vec<_> = drift
        .iter()
        .inspect(|d| error!(?d, "reconciliation: stock disagrees with the ledger"))
        .filter_map(|d| events::alert(&deps.config, events::INVENTORY_DRIFT, d, now))
        .collect();
    deps.db.get().await?.record_deliveries(&alerts).await?;
    deps.outbox_ready.notify_one();
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_that_disagree_with_the_ledger_are_drift() {
        let coupon = |granted, remaining| CouponStock {
            id: "A".into(),
            campaign_id: "c".into(),
            position: 0,
            face_value_cents: 100,
            channel: "wallet".into(),
            stock: 10,
            granted,
            remaining,
            low_stock: 0,
            state: crate::domain::CouponState::Active,
        };
        let ledger = HashMap::from([("A".to_owned(), 4)]);
        assert!(find_drift(&[coupon(4, 6)], &ledger).is_empty());
        assert_eq!(find_drift(&[coupon(5, 5)], &ledger)[0].ledger_granted, 4);
        assert_eq!(find_drift(&[coupon(4, 5)], &ledger).len(), 1);
    }
}
