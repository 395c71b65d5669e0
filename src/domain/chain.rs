//! A campaign's rotation chain and its allocation: the chain yields a coupon that has
//! stock — the one the rule chose, or the next one after it, or a retired coupon's
//! reserve as a last resort — so a user never receives a coupon that cannot be used.
//! The grant step allocates from it and the inventory check plans rotations over it,
//! with one rule of what "serves" means ([`CouponStock::serves`], [`ChainCoupon::serves`]).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::campaign::CampaignConfig;
use super::codes::{CodeSource, Unusable, Validity};
use super::status::CouponState;
use super::{ChannelName, CouponId, CouponView, Money};

/// One coupon with its stock, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponStock {
    /// Coupon id.
    pub id: String,
    /// Its campaign.
    pub campaign_id: String,
    /// Place in the chain.
    pub position: i32,
    /// Face value in cents.
    pub face_value_cents: i64,
    /// Delivery channel.
    pub channel: String,
    /// Everything ever made available.
    pub stock: i64,
    /// Granted so far.
    pub granted: i64,
    /// Left to grant.
    pub remaining: i64,
    /// Rotation watermark.
    pub low_stock: i64,
    /// Active, retired or removed.
    pub state: CouponState,
}

impl CouponStock {
    /// True when it serves its chain: active, with stock left.
    pub fn serves(&self) -> bool {
        serving(self.state != CouponState::Active, self.remaining)
    }
}

/// The one rule of a coupon that serves its chain: not rotated out, with stock it can
/// grant. Rotation hands over only to such a coupon; allocation prefers them.
fn serving(retired: bool, stock: i64) -> bool {
    !retired && stock > 0
}

/// One coupon of a chain during a batch, with the stock left in this batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainCoupon {
    /// Coupon id.
    pub id: CouponId,
    /// Face value.
    pub face_value: Money,
    /// Delivery channel.
    pub channel: ChannelName,
    /// Stock left.
    pub remaining: i64,
    /// Rotated out: hidden from the rule, granted only as a last resort.
    pub retired: bool,
    /// Its channel is disabled (the partner answered 410 Gone): nothing granted now
    /// could reach the user, so it counts as out of stock.
    pub channel_disabled: bool,
    /// Where its grants' codes come from (`codes:` in force).
    pub codes: Option<CodeSource>,
    /// Its validity (`valid_for`, `valid_until`, `min_validity` in force).
    pub validity: Validity,
    /// Set when its validity has ended or would be too short now: it counts as out of
    /// stock.
    pub unusable: Option<Unusable>,
}

impl ChainCoupon {
    /// Stock that can be granted now: none while its channel is disabled or its
    /// validity would not serve the user.
    pub fn usable(&self) -> i64 {
        if self.channel_disabled || self.unusable.is_some() {
            0
        } else {
            self.remaining
        }
    }

    /// True when it serves its chain now: active, with stock it can grant.
    pub fn serves(&self) -> bool {
        serving(self.retired, self.usable())
    }

    /// Why it cannot be granted now.
    fn why_not(&self) -> String {
        if let Some(unusable) = &self.unusable {
            format!("{} {}", self.id, unusable.describe())
        } else if self.channel_disabled {
            format!(
                "{} cannot reach the user (channel {} is disabled)",
                self.id, self.channel
            )
        } else {
            format!("{} is out of stock", self.id)
        }
    }
}

/// A campaign's rotation chain, in chain order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chain(pub Vec<ChainCoupon>);

/// Where a grant's coupon came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Index in the chain of the coupon granted.
    pub index: usize,
    /// Set when it is not the coupon the rule chose: says why.
    pub fallback: Option<String>,
}

impl Chain {
    /// Builds a chain from stored coupons of one campaign (any order).
    pub fn from_stock(mut rows: Vec<CouponStock>) -> Chain {
        rows.sort_by_key(|r| r.position);
        Chain(
            rows.into_iter()
                .filter_map(|r| {
                    Some(ChainCoupon {
                        id: CouponId::parse(&r.id).ok()?,
                        face_value: Money::from_cents(r.face_value_cents),
                        channel: ChannelName::parse(&r.channel).ok()?,
                        remaining: r.remaining,
                        retired: r.state == CouponState::Retired,
                        channel_disabled: false,
                        codes: None,
                        validity: Validity::default(),
                        unusable: None,
                    })
                })
                .collect(),
        )
    }

    /// Marks the coupons whose channel is in `disabled`: they count as out of stock.
    pub fn close_channels(&mut self, disabled: &HashSet<String>) {
        for c in &mut self.0 {
            c.channel_disabled = disabled.contains(c.channel.as_str());
        }
    }

    /// Gives each coupon its codes and validity from the catalog in force, and marks
    /// those whose validity would not serve a grant made at `now`: they count as out of
    /// stock.
    pub fn apply_catalog(&mut self, campaign: &CampaignConfig, now: DateTime<Utc>) {
        for c in &mut self.0 {
            if let Some(config) = campaign.coupons.iter().find(|k| k.id == c.id) {
                c.codes = config.codes.clone();
                c.validity = config.validity;
                c.unusable = config.validity.check(now).err();
            }
        }
    }

    /// The active coupons as the selection rule sees them (a coupon whose channel is
    /// disabled, or whose validity would not serve, shows no stock).
    pub fn views(&self) -> Vec<CouponView> {
        self.0
            .iter()
            .filter(|c| !c.retired)
            .map(|c| CouponView {
                id: c.id.clone(),
                face_value: c.face_value,
                remaining: c.usable(),
                channel: c.channel.clone(),
                valid_until: c.validity.valid_until,
            })
            .collect()
    }

    /// True when an active (not retired) coupon has stock.
    pub fn has_active_stock(&self) -> bool {
        self.0.iter().any(ChainCoupon::serves)
    }

    /// Why no coupon of the chain can be granted: out of stock, or some only because
    /// their channel is disabled or their validity would not serve.
    pub fn why_none(&self) -> Option<String> {
        let mut closed: Vec<&str> = self
            .0
            .iter()
            .filter(|c| c.channel_disabled && c.remaining > 0)
            .map(|c| c.channel.as_str())
            .collect();
        closed.dedup();
        let mut why: Vec<String> = self
            .0
            .iter()
            .filter(|c| c.remaining > 0 && !c.channel_disabled)
            .filter_map(|c| Some(format!("{} {}", c.id, c.unusable?.describe())))
            .collect();
        if !closed.is_empty() {
            why.insert(0, format!("channel {} is disabled", closed.join(", ")));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Finds a coupon with stock for the rule's choice: the chosen one, else the next
    /// active coupon after it, else any retired coupon's reserve. Takes one from it.
    pub fn allocate(&mut self, chosen: &CouponId) -> Option<Allocation> {
        let start = self.0.iter().position(|c| &c.id == chosen)?;
        let next_active = (start..self.0.len())
            .find(|&i| self.0[i].usable() > 0 && (i == start || !self.0[i].retired));
        let index = next_active
            .or_else(|| (0..self.0.len()).find(|&i| self.0[i].retired && self.0[i].usable() > 0))?;
        self.0[index].remaining -= 1;
        // The rule sees no stock on a coupon whose channel is disabled and may pass it
        // by itself: the detail still says why the chain's earlier coupon was not given.
        let passed = (index != start).then_some(start).or_else(|| {
            self.0[..index].iter().position(|c| {
                (c.channel_disabled || c.unusable.is_some()) && !c.retired && c.remaining > 0
            })
        });
        let fallback = passed.map(|i| {
            format!(
                "{}; granted {} instead",
                self.0[i].why_not(),
                self.0[index].id
            )
        });
        Some(Allocation { index, fallback })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(id: &str, remaining: i64, retired: bool) -> ChainCoupon {
        ChainCoupon {
            id: CouponId::parse(id).unwrap(),
            face_value: Money::from_cents(1000),
            channel: ChannelName::parse("wallet").unwrap(),
            remaining,
            retired,
            channel_disabled: false,
            codes: None,
            validity: Validity::default(),
            unusable: None,
        }
    }

    #[test]
    fn the_chosen_coupon_is_granted_while_it_has_stock() {
        let mut chain = Chain(vec![coupon("A", 2, false), coupon("B", 5, false)]);
        let a = CouponId::parse("A").unwrap();
        assert_eq!(chain.allocate(&a).unwrap().index, 0);
        assert_eq!(chain.allocate(&a).unwrap().index, 0);
        let fallback = chain.allocate(&a).unwrap();
        assert_eq!(fallback.index, 1);
        assert_eq!(
            fallback.fallback.as_deref(),
            Some("A is out of stock; granted B instead")
        );
        assert_eq!(chain.0[1].remaining, 4);
    }

    #[test]
    fn a_coupon_whose_channel_is_disabled_counts_as_out_of_stock() {
        let mut chain = Chain(vec![coupon("A", 5, false), coupon("B", 5, false)]);
        chain.0[1].channel = ChannelName::parse("sms").unwrap();
        chain.close_channels(&["wallet".to_owned()].into_iter().collect());
        assert_eq!(chain.views()[0].remaining, 0, "the rule sees no stock on A");
        let a = CouponId::parse("A").unwrap();
        let allocation = chain.allocate(&a).unwrap();
        assert_eq!(allocation.index, 1);
        assert_eq!(
            allocation.fallback.as_deref(),
            Some("A cannot reach the user (channel wallet is disabled); granted B instead")
        );
        assert_eq!(chain.0[0].remaining, 5, "A's stock is untouched");
        chain.0[1].remaining = 0;
        assert_eq!(chain.allocate(&a), None);
        assert_eq!(
            chain.why_none().as_deref(),
            Some("channel wallet is disabled")
        );
    }

    #[test]
    fn a_retired_reserve_is_the_last_resort_and_an_empty_chain_yields_nothing() {
        let mut chain = Chain(vec![coupon("OLD", 1, true), coupon("NEW", 1, false)]);
        let new = CouponId::parse("NEW").unwrap();
        assert_eq!(chain.allocate(&new).unwrap().index, 1);
        assert_eq!(chain.allocate(&new).unwrap().index, 0);
        assert_eq!(chain.allocate(&new), None);
        assert_eq!(
            chain.views().len(),
            1,
            "retired coupons are hidden from the rule"
        );
    }
}
