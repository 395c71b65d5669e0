//! `coupons`: the rotation chains' stock. Stock is taken with one statement per coupon
//! per batch, under the row lock, and never below zero.

use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::prepared::{in_list, Cached};
use super::schema::coupons::dsl as c;
use super::schema::coupons::table;
use super::{backend, MysqlConn, QueryResult, SqliteConn};

/// A coupon's state: selectable, rotated out (its remaining stock is a last-resort
/// reserve), or no longer in the config.
pub const ACTIVE: &str = "active";
/// Rotated out by the inventory check; still grantable as a last resort.
pub const RETIRED: &str = "retired";
/// Removed from the config; never granted.
pub const REMOVED: &str = "removed";

/// One coupon with its stock, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = super::schema::coupons)]
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
    /// `active`, `retired` or `removed`.
    pub state: String,
}

/// Operations on `coupons`.
pub trait Coupons {
    /// Every coupon still in the config, by campaign and chain position (no locks).
    fn coupon_stock(&mut self) -> impl Future<Output = QueryResult<Vec<CouponStock>>> + Send;

    /// The coupons of `campaign_ids`, in id order. With `lock`, inside the caller's
    /// transaction, they are locked in that order (one order for every daemon, so two
    /// batches never deadlock on them); without, they are a snapshot (the grant step
    /// then takes stock with guarded updates).
    fn chains(
        &mut self,
        campaign_ids: &[String],
        lock: bool,
    ) -> impl Future<Output = QueryResult<Vec<CouponStock>>> + Send;

    /// Takes `count` from a coupon's stock; returns false (and changes nothing) when
    /// fewer are left.
    fn take_stock(
        &mut self,
        id: &str,
        count: i64,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Adds `count` to a coupon's stock and remaining; returns false for an unknown
    /// coupon.
    fn add_stock(&mut self, id: &str, count: i64)
        -> impl Future<Output = QueryResult<bool>> + Send;

    /// Sets a coupon's state; returns false for an unknown coupon.
    fn set_coupon_state(
        &mut self,
        id: &str,
        state: &str,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
}

macro_rules! impl_coupons {
    ($conn:ty, $backend:ident) => {
        impl Coupons for $conn {
            async fn coupon_stock(&mut self) -> QueryResult<Vec<CouponStock>> {
                table
                    .filter(c::state.ne(REMOVED))
                    .order((c::campaign_id, c::position))
                    .select(CouponStock::as_select())
                    .load(self)
                    .await
            }

            async fn chains(&mut self, campaign_ids: &[String], lock: bool) -> QueryResult<Vec<CouponStock>> {
                let query = table
                    .filter(in_list(c::campaign_id, campaign_ids))
                    .filter(c::state.ne(REMOVED))
                    .order(c::id)
                    .select(CouponStock::as_select());
                if !lock {
                    return query.load(self).await;
                }
                backend!($backend,
                    mysql => { query.for_update().load(self).await },
                    sqlite => { query.load(self).await })
            }

            async fn take_stock(&mut self, id: &str, count: i64) -> QueryResult<bool> {
                let take = diesel::update(table.filter(c::id.eq(id)).filter(c::remaining.ge(count)))
                    .set((c::remaining.eq(c::remaining - count), c::granted.eq(c::granted + count)));
                let changed = Cached(take).execute(self).await?;
                Ok(changed == 1)
            }

            async fn add_stock(&mut self, id: &str, count: i64) -> QueryResult<bool> {
                let changed = diesel::update(table.filter(c::id.eq(id)))
                    .set((c::remaining.eq(c::remaining + count), c::stock.eq(c::stock + count)))
                    .execute(self)
                    .await?;
                Ok(changed == 1)
            }

            async fn set_coupon_state(&mut self, id: &str, state: &str, now: NaiveDateTime) -> QueryResult<bool> {
                let changed = diesel::update(table.filter(c::id.eq(id)))
                    .set((c::state.eq(state), c::updated_at.eq(now)))
                    .execute(self)
                    .await?;
                Ok(changed == 1)
            }
        }
    };
}

impl_coupons!(MysqlConn, mysql);
impl_coupons!(SqliteConn, sqlite);
