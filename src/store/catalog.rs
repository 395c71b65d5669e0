//! `campaigns` (and the catalog side of `coupons`): applying the config's campaigns
//! and rotation chains to the database, and the campaign budgets.

use std::collections::HashMap;
use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::prepared::in_list;
use super::schema::campaigns::dsl as k;
use super::schema::coupons::dsl as c;
use super::schema::{campaigns, coupons};
use super::{backend, write_transaction, MysqlConn, QueryResult, SqliteConn};
use crate::domain::campaign::CampaignConfig;
use crate::domain::{Budget, CouponState};

const RECOUNT_GRANTED_VALUE: &str = "UPDATE campaigns SET granted_cents = \
     (SELECT COALESCE(SUM(face_value_cents), 0) FROM grants WHERE campaign_id = ?) WHERE id = ?";

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

/// Operations on `campaigns` and the catalog.
pub trait Catalog {
    /// Applies the config's campaigns and chains in one transaction: new campaigns and
    /// coupons are inserted; a changed config `stock` moves stock and remaining by the
    /// difference (remaining never below zero); what was granted is never touched.
    fn apply_catalog(
        &mut self,
        campaigns: &[CampaignConfig],
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<CatalogChanges>> + Send;

    /// The budgets of those `campaign_ids` that have one, in id order; with `lock`,
    /// locked in that order inside the caller's transaction.
    fn budgets(
        &mut self,
        campaign_ids: &[String],
        lock: bool,
    ) -> impl Future<Output = QueryResult<Vec<Budget>>> + Send;

    /// Adds granted face value to a campaign unless that passes its budget; returns
    /// false (and changes nothing) when it would.
    fn add_granted_value(
        &mut self,
        campaign_id: &str,
        cents: i64,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
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

macro_rules! impl_catalog {
    ($conn:ty, $backend:ident) => {
        impl Catalog for $conn {
            async fn apply_catalog(
                &mut self,
                wanted: &[CampaignConfig],
                now: NaiveDateTime,
            ) -> QueryResult<CatalogChanges> {
                write_transaction!($backend, self, async |conn| {
                        // Coupons first, then campaigns: the order the grant step
                        // takes them in, so a start during traffic cannot deadlock.
                        let query = coupons::table.select((c::id, c::config_stock, c::remaining, c::state));
                        let existing: Vec<(String, i64, i64, String)> = backend!($backend,
                            mysql => { query.for_update().load(conn).await? },
                            sqlite => { query.load(conn).await? });
                        let mut changes = CatalogChanges::default();
                        let known: Vec<String> = campaigns::table.select(k::id).load(conn).await?;
                        for (position, campaign) in wanted.iter().enumerate() {
                            let row = campaign_row(campaign, position, now);
                            if known.iter().any(|id| id == campaign.id.as_str()) {
                                diesel::update(campaigns::table.find(row.id))
                                    .set(&row)
                                    .execute(conn)
                                    .await?;
                            } else {
                                diesel::insert_into(campaigns::table).values(&row).execute(conn).await?;
                                changes.campaigns_added.push(row.id.to_owned());
                            }
                            // Only budgeted campaigns count granted value as they grant:
                            // recount it from the ledger, so a budget set later starts right.
                            if campaign.budget.is_some() {
                                diesel::sql_query(RECOUNT_GRANTED_VALUE)
                                    .bind::<diesel::sql_types::Text, _>(campaign.id.as_str())
                                    .bind::<diesel::sql_types::Text, _>(campaign.id.as_str())
                                    .execute(conn)
                                    .await?;
                            }
                        }
                        let existing: HashMap<String, (i64, i64, String)> = existing
                            .into_iter()
                            .map(|(id, config_stock, remaining, state)| (id, (config_stock, remaining, state)))
                            .collect();
                        for campaign in wanted {
                            for (position, coupon) in campaign.coupons.iter().enumerate() {
                                let id = coupon.id.as_str();
                                let Some((config_stock, remaining, state)) = existing.get(id) else {
                                    diesel::insert_into(coupons::table)
                                        .values(NewCoupon {
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
                                        })
                                        .execute(conn)
                                        .await?;
                                    changes.coupons_added.push(id.to_owned());
                                    continue;
                                };
                                let change = coupon.stock - config_stock;
                                let new_remaining = (remaining + change).max(0);
                                // A coupon that comes back into the config is active again;
                                // a retired one stays retired until ops bring it back.
                                let state = if state == CouponState::Removed.as_str() { CouponState::Active.as_str() } else { state.as_str() };
                                diesel::update(coupons::table.find(id))
                                    .set((
                                        c::campaign_id.eq(campaign.id.as_str()),
                                        c::position.eq(position as i32),
                                        c::face_value_cents.eq(coupon.face_value.cents()),
                                        c::channel.eq(coupon.channel.as_str()),
                                        c::config_stock.eq(coupon.stock),
                                        c::stock.eq(c::stock + (new_remaining - remaining)),
                                        c::remaining.eq(new_remaining),
                                        c::low_stock.eq(coupon.low_stock),
                                        c::state.eq(state),
                                        c::updated_at.eq(now),
                                    ))
                                    .execute(conn)
                                    .await?;
                                if change != 0 {
                                    changes.restocked.push((id.to_owned(), change));
                                }
                            }
                        }
                        let configured: Vec<&str> = wanted
                            .iter()
                            .flat_map(|k| k.coupons.iter().map(|c| c.id.as_str()))
                            .collect();
                        for id in existing.keys() {
                            if !configured.contains(&id.as_str()) && existing[id].2 != CouponState::Removed.as_str() {
                                diesel::update(coupons::table.find(id))
                                    .set((c::state.eq(CouponState::Removed.as_str()), c::updated_at.eq(now)))
                                    .execute(conn)
                                    .await?;
                                changes.removed.push(id.clone());
                            }
                        }
                        Ok(changes)
                })
            }

            async fn budgets(&mut self, campaign_ids: &[String], lock: bool) -> QueryResult<Vec<Budget>> {
                let query = campaigns::table
                    .filter(in_list(k::id, campaign_ids))
                    .filter(k::budget_cents.is_not_null())
                    .order(k::id)
                    .select((k::id, k::budget_cents, k::granted_cents));
                let rows: Vec<(String, Option<i64>, i64)> = if !lock {
                    query.load(self).await?
                } else {
                    backend!($backend,
                        mysql => { query.for_update().load(self).await? },
                        sqlite => { query.load(self).await? })
                };
                Ok(rows.into_iter().map(budget).collect())
            }

            async fn add_granted_value(&mut self, campaign_id: &str, cents: i64) -> QueryResult<bool> {
                let within = k::budget_cents.is_null().or(k::granted_cents.le(k::budget_cents.assume_not_null() - cents));
                let changed = diesel::update(campaigns::table.find(campaign_id).filter(within))
                    .set(k::granted_cents.eq(k::granted_cents + cents))
                    .execute(self)
                    .await?;
                Ok(changed == 1)
            }
        }
    };
}

impl_catalog!(MysqlConn, mysql);
impl_catalog!(SqliteConn, sqlite);
