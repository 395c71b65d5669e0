//! What `simulate` reads from the database: the user's history (with grant times for
//! the campaigns with a rolling limit), the chains, budgets and today's daily budgets,
//! as the grant step would see them now.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};

use super::RECENT_GRANTS;
use crate::authoring::AuthoringError;
use crate::config::CampaignConfig;
use crate::domain::chain::{Chain, CouponStock};
use crate::domain::lifecycle::day_in;
use crate::domain::{Budget, PastGrantTime, PastGrants};
use crate::store::records::GrantRecord;
use crate::store::{Db, StoreError};

/// The live state a decision reads.
pub(super) struct Live {
    pub(super) history: Vec<PastGrants>,
    pub(super) times: Vec<PastGrantTime>,
    pub(super) days: HashMap<(String, String), i64>,
    pub(super) recent: Vec<GrantRecord>,
    pub(super) chains: HashMap<String, Chain>,
    pub(super) budgets: HashMap<String, Budget>,
}

pub(super) async fn read_live(
    db: &Db,
    campaigns: &[CampaignConfig],
    (user, event): (&str, &str),
    now: DateTime<Utc>,
) -> Result<Live, AuthoringError> {
    let users = [user.to_owned()];
    let (periodic, since) = periodic(campaigns, now);
    let days = todays(campaigns, now);
    let ((history, recent, stock, budgets, disabled), (times, days)) = {
        let conn = &mut db.get().await?;
        let times = conn.grant_times(&users, &periodic, since).await;
        let days = conn.granted_on_days(&days).await;
        let ledgers = (
            times.map_err(StoreError::from)?,
            days.map_err(StoreError::from)?,
        );
        let history = conn.history_for(&users).await;
        let recent = conn.recent_grants_of(user, event, RECENT_GRANTS).await;
        let stock = conn.coupon_stock().await;
        let budgets = conn.campaign_budgets().await;
        let disabled = conn.disabled_channels().await;
        (
            (
                history.map_err(StoreError::from)?,
                recent.map_err(StoreError::from)?,
                stock.map_err(StoreError::from)?,
                budgets.map_err(StoreError::from)?,
                disabled.map_err(StoreError::from)?,
            ),
            ledgers,
        )
    };
    // As the grant step sees them: a coupon whose channel is disabled, or whose
    // validity would not serve a grant made now, has no stock.
    let disabled: HashSet<String> = disabled.into_iter().collect();
    let mut by_campaign: HashMap<String, Vec<CouponStock>> = HashMap::new();
    for row in stock {
        by_campaign
            .entry(row.campaign_id.clone())
            .or_default()
            .push(row);
    }
    Ok(Live {
        history,
        times,
        days: days
            .into_iter()
            .map(|(campaign, day, cents)| ((campaign, day), cents))
            .collect(),
        recent,
        chains: by_campaign
            .into_iter()
            .map(|(campaign, rows)| {
                let mut chain = Chain::from_stock(rows);
                chain.close_channels(&disabled);
                if let Some(config) = campaigns.iter().find(|c| c.id.as_str() == campaign) {
                    chain.apply_catalog(config, now);
                }
                (campaign, chain)
            })
            .collect(),
        budgets: budgets
            .into_iter()
            .map(|b| (b.campaign_id.clone(), b))
            .collect(),
    })
}

/// The campaigns with a rolling `per_user_limit_period`, and the start of the longest.
fn periodic(campaigns: &[CampaignConfig], now: DateTime<Utc>) -> (Vec<String>, NaiveDateTime) {
    let periodic = campaigns
        .iter()
        .filter(|c| c.per_user_limit_period.is_some());
    let longest = periodic
        .clone()
        .filter_map(|c| c.per_user_limit_period)
        .max()
        .unwrap_or_default();
    let ids = periodic.map(|c| c.id.to_string()).collect();
    (ids, (now - longest).naive_utc())
}

/// The (campaign, day) of each campaign with a daily budget, on the day `now` falls on.
fn todays(campaigns: &[CampaignConfig], now: DateTime<Utc>) -> Vec<(String, String)> {
    campaigns
        .iter()
        .filter(|c| c.daily_budget.is_some())
        .map(|c| (c.id.to_string(), day_in(c.timezone, now)))
        .collect()
}
