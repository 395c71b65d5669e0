//! The catalog: campaigns and their rotation chains as configured (`campaigns:`),
//! validated by `config`, applied to the database by the store, read by every stage.

use chrono::{DateTime, Utc};

use super::codes::{CodeSource, Validity};
use super::{CampaignId, ChannelName, CouponId, Event, Money, UserType};

/// `campaigns[i]`
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// `id`
    pub id: CampaignId,
    /// `event`
    pub event: Event,
    /// `audience`
    pub audience: UserType,
    /// `per_user_limit` [1]
    pub per_user_limit: i64,
    /// `per_user_limit_period` (rolling); `None`: the whole campaign.
    pub per_user_limit_period: Option<chrono::Duration>,
    /// `daily_budget` (optional cap on face value granted per day in `timezone`).
    pub daily_budget: Option<Money>,
    /// `timezone` [UTC]: the IANA zone whose days `daily_budget` counts.
    pub timezone: chrono_tz::Tz,
    /// `starts_at` (optional window start)
    pub starts_at: Option<DateTime<Utc>>,
    /// `ends_at` (optional window end)
    pub ends_at: Option<DateTime<Utc>>,
    /// `budget` (optional cap on face value granted)
    pub budget: Option<Money>,
    /// `coupons`: the rotation chain, in order; never empty.
    pub coupons: Vec<CouponConfig>,
}

/// `campaigns[i].coupons[j]`
#[derive(Debug, Clone)]
pub struct CouponConfig {
    /// `id`, unique across all campaigns.
    pub id: CouponId,
    /// `face_value`
    pub face_value: Money,
    /// `stock`; 0 for a pool coupon, whose stock is its imported codes.
    pub stock: i64,
    /// `low_stock` [0]: the watermark at which the inventory check rotates it.
    pub low_stock: i64,
    /// `channel`: a key of `channels:`.
    pub channel: ChannelName,
    /// `codes`: where each grant's code comes from; `None`: grants carry no code.
    pub codes: Option<CodeSource>,
    /// `valid_for`, `valid_until`, `min_validity`.
    pub validity: Validity,
    /// `remind_before`: `coupon.expiring` goes out this long before a grant expires.
    pub remind_before: Option<chrono::Duration>,
}

impl CouponConfig {
    /// True for `codes.pool`: the stock is the pool of imported codes.
    pub fn is_pool(&self) -> bool {
        self.codes == Some(CodeSource::Pool)
    }
}
