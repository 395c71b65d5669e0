//! What a revocation gives back, in the transaction that revokes: the coupon's stock,
//! the campaign's budget and the daily budget of the day the grant was made. The
//! user's count toward `per_user_limit` needs no write: a revoked grant stops counting
//! (`GrantState::counts`).
//!
//! A counted or generated coupon gets its unit back (`granted - 1, remaining + 1`), so
//! another user may be granted it. A pool coupon's code was seen by its user and is
//! never issued again: the code stays burned and the pool's stock stays taken, so that
//! a pool's `remaining` is still its unissued codes. A coupon the config in force no
//! longer names is treated like a pool (nothing comes back to a coupon no one grants).
//!
//! The rows are taken last and in the grant step's order (ARCHITECTURE.md, "The batch
//! transaction"): coupons in id order, then campaigns in id order, then the days, so a
//! revocation never waits in a cycle with a grant batch.

use std::collections::BTreeMap;

use tracing::warn;

use crate::config::Config;
use crate::domain::lifecycle::{day_in, GrantRecord};
use crate::store::{Conn, QueryResult};

/// What the revoked grants took, summed per row it is given back to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GiveBack {
    /// Units per counted or generated coupon.
    pub stock: BTreeMap<String, i64>,
    /// Face value per campaign (written only where the campaign has a budget).
    pub budget: BTreeMap<String, i64>,
    /// Face value per (campaign, day) with a daily budget.
    pub days: BTreeMap<(String, String), i64>,
}

impl GiveBack {
    /// What `revoked` took, as the catalog in force says it was taken.
    pub fn of(revoked: &[GrantRecord], config: &Config) -> Self {
        let mut back = GiveBack::default();
        for grant in revoked {
            let campaign = config
                .campaigns
                .iter()
                .find(|k| k.id.as_str() == grant.campaign_id);
            let coupon =
                campaign.and_then(|k| k.coupons.iter().find(|c| c.id.as_str() == grant.coupon_id));
            if coupon.is_some_and(|c| !c.is_pool()) {
                *back.stock.entry(grant.coupon_id.clone()).or_default() += 1;
            }
            *back.budget.entry(grant.campaign_id.clone()).or_default() += grant.face_value_cents;
            if let Some(k) = campaign.filter(|k| k.daily_budget.is_some()) {
                let day = day_in(k.timezone, grant.granted_at.and_utc());
                *back
                    .days
                    .entry((grant.campaign_id.clone(), day))
                    .or_default() += grant.face_value_cents;
            }
        }
        back
    }

    /// Writes it, inside the revoking transaction. A guard that refuses (a coupon that
    /// counts fewer grants than it gives back, changed by hand) is drift, not a reason
    /// to hold up the revocation: it is logged and reconciliation reports it.
    pub async fn write(&self, conn: &mut Conn) -> QueryResult<()> {
        for (coupon, units) in &self.stock {
            if !conn.give_back_stock(coupon, *units).await? {
                warn!(
                    coupon,
                    units, "a revocation could not give stock back: the coupon counts fewer grants"
                );
            }
        }
        for (campaign, cents) in &self.budget {
            // False for a campaign without a budget, which counts nothing.
            conn.give_back_granted_value(campaign, *cents).await?;
        }
        for ((campaign, day), cents) in &self.days {
            // False for a day that counted less (grants made before the daily budget).
            conn.give_back_daily_budget((campaign, day), *cents).await?;
        }
        Ok(())
    }
}
