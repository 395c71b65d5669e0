//! `campaigns` (and the catalog side of `coupons`): applying the config's campaigns
//! and rotation chains to the database, and the campaign budgets.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::prepared::in_list;
use super::schema::campaigns::dsl as k;
use super::schema::coupons::dsl as c;
use super::schema::{campaigns, coupons};
use super::{Conn, QueryResult};
use crate::domain::campaign::CampaignConfig;
use crate::domain::{Budget, CouponState};

/// A budget's granted value, recounted from the grants that count: a revoked grant
/// gave its value back (`campaigns.granted_cents` was lowered by it).
const RECOUNT_GRANTED_VALUE: &str = "UPDATE campaigns SET granted_cents = \
     (SELECT COALESCE(SUM(face_value_cents), 0) FROM grants \
      WHERE campaign_id = ? AND state <> 'revoked') WHERE id = ?";

/// What applying the catalog changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogChanges {
    /// Campaigns inserted.
    pub campaigns_added: Vec<String>,
    /// Coupons inserted.
    pub coupons_added: Vec<String>,
    /// Coupons whose config stock changed, with the change.
    pub restocked: Vec<(String, i64)>,
    /// Coupons no longer in the config.
    pub removed: Vec<String>,
}

#[derive(Insertable, AsChangeset)]
#[diesel(table_name = campaigns, treat_none_as_null = true, treat_none_as_default_value = false)]
struct CampaignRow<'a> {
    id: &'a str,
    event: &'a str,
    audience: &'a str,
    per_user_limit: i64,
    position: i32,
    starts_at: Option<NaiveDateTime>,
    ends_at: Option<NaiveDateTime>,
    budget_cents: Option<i64>,
    updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = coupons, treat_none_as_default_value = false)]
struct NewCoupon<'a> {
    id: &'a str,
    campaign_id: &'a str,
    position: i32,
    face_value_cents: i64,
    channel: &'a str,
    config_stock: i64,
    stock: i64,
    remaining: i64,
    low_stock: i64,
    state: &'a str,
    updated_at: NaiveDateTime,
}

/// Each stored coupon's config stock, remaining stock and state, by id.
type Existing = HashMap<String, (i64, i64, String)>;

/// One write of the catalog to `coupons`.
enum CouponWrite<'a> {
    /// A coupon new to the database.
    Insert(NewCoupon<'a>),
    /// A known coupon, brought to the config; its stock moves by `stock_delta`.
    Update {
        id: &'a str,
        row: CouponUpdate<'a>,
        stock_delta: i64,
    },
    /// A coupon no longer in the config.
    Remove(&'a str),
}

/// A known coupon's new values (its stock moves with its remaining stock).
#[derive(AsChangeset)]
#[diesel(table_name = coupons)]
struct CouponUpdate<'a> {
    campaign_id: &'a str,
    position: i32,
    face_value_cents: i64,
    channel: &'a str,
    config_stock: i64,
    remaining: i64,
    low_stock: i64,
    state: &'a str,
    updated_at: NaiveDateTime,
}

/// What applying `wanted` writes to `coupons`, given what is stored; records the
/// coupons added, restocked and removed in `changes`. A config stock that changed moves
/// the remaining stock by as much (never below zero); a coupon back in the config is
/// active again, a retired one stays retired until ops bring it back.
fn plan_coupons<'a>(
    wanted: &'a [CampaignConfig],
    existing: &'a Existing,
    now: NaiveDateTime,
    changes: &mut CatalogChanges,
) -> Vec<CouponWrite<'a>> {
    let mut writes = Vec::new();
    for campaign in wanted {
        for (position, coupon) in campaign.coupons.iter().enumerate() {
            let id = coupon.id.as_str();
            let Some((config_stock, remaining, state)) = existing.get(id) else {
                writes.push(CouponWrite::Insert(NewCoupon {
                    id,
                    campaign_id: campaign.id.as_str(),
                    position: position as i32,
                    face_value_cents: coupon.face_value.cents(),
                    channel: coupon.channel.as_str(),
                    config_stock: coupon.stock,
                    stock: coupon.stock,
                    remaining: coupon.stock,
                    low_stock: coupon.low_stock,
                    state: CouponState::Active.as_str(),
                    updated_at: now,
                }));
                changes.coupons_added.push(id.to_owned());
                continue;
            };
            let change = coupon.stock - config_stock;
            let new_remaining = (remaining + change).max(0);
            let removed = state == CouponState::Removed.as_str();
            let row = CouponUpdate {
                campaign_id: campaign.id.as_str(),
                position: position as i32,
                face_value_cents: coupon.face_value.cents(),
                channel: coupon.channel.as_str(),
                config_stock: coupon.stock,
                remaining: new_remaining,
                low_stock: coupon.low_stock,
                state: if removed {
                    CouponState::Active.as_str()
                } else {
                    state.as_str()
                },
                updated_at: now,
            };
            let stock_delta = new_remaining - remaining;
            writes.push(CouponWrite::Update {
                id,
                row,
                stock_delta,
            });
            if change != 0 {
                changes.restocked.push((id.to_owned(), change));
            }
        }
    }
    writes.extend(removals(wanted, existing, changes));
    writes
}

/// The stored coupons no longer in the config (and not already marked removed).
fn removals<'a>(
    wanted: &[CampaignConfig],
    existing: &'a Existing,
    changes: &mut CatalogChanges,
) -> Vec<CouponWrite<'a>> {
    let configured: Vec<&str> = wanted
        .iter()
        .flat_map(|k| k.coupons.iter().map(|c| c.id.as_str()))
        .collect();
    let mut writes = Vec::new();
    for (id, (_, _, state)) in existing {
        if !configured.contains(&id.as_str()) && state != CouponState::Removed.as_str() {
            writes.push(CouponWrite::Remove(id));
            changes.removed.push(id.clone());
        }
    }
    writes
}

fn campaign_row(campaign: &CampaignConfig, position: usize, now: NaiveDateTime) -> CampaignRow<'_> {
    CampaignRow {
        id: campaign.id.as_str(),
        event: campaign.event.as_str(),
        audience: campaign.audience.as_str(),
        per_user_limit: campaign.per_user_limit,
        position: position as i32,
        starts_at: campaign.starts_at.map(|t| t.naive_utc()),
        ends_at: campaign.ends_at.map(|t| t.naive_utc()),
        budget_cents: campaign.budget.map(|b| b.cents()),
        updated_at: now,
    }
}

/// A budget row as the grant step reads it.
pub(crate) fn budget(
    (campaign_id, budget_cents, granted_cents): (String, Option<i64>, i64),
) -> Budget {
    Budget {
        campaign_id,
        budget_cents,
        granted_cents,
    }
}

/// Operations on `campaigns` and the catalog.
impl Conn {
    /// Applies the config's campaigns and chains in one transaction: new campaigns and
    /// coupons are inserted; a changed config `stock` moves stock and remaining by the
    /// difference (remaining never below zero); what was granted is never touched.
    pub async fn apply_catalog(
        &mut self,
        wanted: &[CampaignConfig],
        now: NaiveDateTime,
    ) -> QueryResult<CatalogChanges> {
        self.write_transaction(async |conn| {
            // Coupons first, then campaigns: the order the grant step
            // takes them in, so a start during traffic cannot deadlock.
            let query = coupons::table.select((c::id, c::config_stock, c::remaining, c::state));
            let existing: Vec<(String, i64, i64, String)> =
                conn.load_either(query.for_update(), query).await?;
            let mut changes = CatalogChanges::default();
            conn.apply_campaigns(wanted, now, &mut changes).await?;
            let existing: Existing = existing
                .into_iter()
                .map(|(id, config_stock, remaining, state)| (id, (config_stock, remaining, state)))
                .collect();
            for write in plan_coupons(wanted, &existing, now, &mut changes) {
                conn.write_coupon(write, now).await?;
            }
            Ok(changes)
        })
        .await
    }

    /// The budgets of those `campaign_ids` that have one, in id order; with `lock`,
    /// locked in that order inside the caller's transaction.
    pub async fn budgets(
        &mut self,
        campaign_ids: &[String],
        lock: bool,
    ) -> QueryResult<Vec<Budget>> {
        let query = campaigns::table
            .filter(in_list(k::id, campaign_ids))
            .filter(k::budget_cents.is_not_null())
            .order(k::id)
            .select((k::id, k::budget_cents, k::granted_cents));
        let rows: Vec<(String, Option<i64>, i64)> = if !lock {
            self.load(query).await?
        } else {
            self.load_either(query.clone().for_update(), query).await?
        };
        Ok(rows.into_iter().map(budget).collect())
    }

    /// Adds granted face value to a campaign unless that passes its budget; returns
    /// false (and changes nothing) when it would.
    pub async fn add_granted_value(&mut self, campaign_id: &str, cents: i64) -> QueryResult<bool> {
        let within = k::budget_cents
            .is_null()
            .or(k::granted_cents.le(k::budget_cents.assume_not_null() - cents));
        let add = diesel::update(campaigns::table.find(campaign_id).filter(within))
            .set(k::granted_cents.eq(k::granted_cents + cents));
        let changed = self.execute(add).await?;
        Ok(changed == 1)
    }

    /// Gives `cents` of granted face value back to a budgeted campaign (a revocation);
    /// returns false (and changes nothing) for a campaign without a budget, an unknown
    /// one, or one that counts less granted.
    pub async fn give_back_granted_value(
        &mut self,
        campaign_id: &str,
        cents: i64,
    ) -> QueryResult<bool> {
        let give = diesel::update(
            campaigns::table
                .find(campaign_id)
                .filter(k::budget_cents.is_not_null())
                .filter(k::granted_cents.ge(cents)),
        )
        .set(k::granted_cents.eq(k::granted_cents - cents));
        Ok(self.execute(give).await? == 1)
    }

    /// Inside `apply_catalog`'s transaction: inserts the campaigns new to the database,
    /// brings the known ones to the config, and recounts the granted value of the
    /// budgeted ones; records the campaigns added in `changes`.
    async fn apply_campaigns(
        &mut self,
        wanted: &[CampaignConfig],
        now: NaiveDateTime,
        changes: &mut CatalogChanges,
    ) -> QueryResult<()> {
        let known: Vec<String> = self.load(campaigns::table.select(k::id)).await?;
        for (position, campaign) in wanted.iter().enumerate() {
            let row = campaign_row(campaign, position, now);
            if known.iter().any(|id| id == campaign.id.as_str()) {
                self.execute(diesel::update(campaigns::table.find(row.id)).set(&row))
                    .await?;
            } else {
                self.execute(diesel::insert_into(campaigns::table).values(&row))
                    .await?;
                changes.campaigns_added.push(row.id.to_owned());
            }
            // Only budgeted campaigns count granted value as they grant:
            // recount it from the ledger, so a budget set later starts right.
            if campaign.budget.is_some() {
                let recount = diesel::sql_query(RECOUNT_GRANTED_VALUE)
                    .bind::<diesel::sql_types::Text, _>(campaign.id.as_str())
                    .bind::<diesel::sql_types::Text, _>(campaign.id.as_str());
                self.execute(recount).await?;
            }
        }
        Ok(())
    }

    /// Inside `apply_catalog`'s transaction: one planned write to `coupons`.
    async fn write_coupon(
        &mut self,
        write: CouponWrite<'_>,
        now: NaiveDateTime,
    ) -> QueryResult<()> {
        match write {
            CouponWrite::Insert(row) => {
                self.execute(diesel::insert_into(coupons::table).values(row))
                    .await?;
            }
            CouponWrite::Update {
                id,
                row,
                stock_delta,
            } => {
                let stock = c::stock.eq(c::stock + stock_delta);
                self.execute(diesel::update(coupons::table.find(id)).set((row, stock)))
                    .await?;
            }
            CouponWrite::Remove(id) => {
                let remove = diesel::update(coupons::table.find(id)).set((
                    c::state.eq(CouponState::Removed.as_str()),
                    c::updated_at.eq(now),
                ));
                self.execute(remove).await?;
            }
        }
        Ok(())
    }
}
