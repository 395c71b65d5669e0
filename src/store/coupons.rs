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
use crate::domain::chain::CouponStock;
use crate::domain::CouponState;

/// A `coupons` row as stored; the stages get it as a [`CouponStock`].
#[derive(Queryable, Selectable)]
#[diesel(table_name = super::schema::coupons)]
struct CouponRow {
    id: String,
    campaign_id: String,
    position: i32,
    face_value_cents: i64,
    channel: String,
    stock: i64,
    granted: i64,
    remaining: i64,
    low_stock: i64,
    state: String,
}

impl CouponRow {
    /// The row as the stages see it. A state the daemon does not know (written by
    /// hand) reads as `removed`: such a coupon is never granted.
    fn stock(self) -> CouponStock {
        CouponStock {
            id: self.id,
            campaign_id: self.campaign_id,
            position: self.position,
            face_value_cents: self.face_value_cents,
            channel: self.channel,
            stock: self.stock,
            granted: self.granted,
            remaining: self.remaining,
            low_stock: self.low_stock,
            state: CouponState::parse(&self.state).unwrap_or(CouponState::Removed),
        }
    }
}

fn stocks(rows: Vec<CouponRow>) -> Vec<CouponStock> {
    rows.into_iter().map(CouponRow::stock).collect()
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
        state: CouponState,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
}

macro_rules! impl_coupons {
    ($conn:ty, $backend:ident) => {
        impl Coupons for $conn {
            async fn coupon_stock(&mut self) -> QueryResult<Vec<CouponStock>> {
                table
                    .filter(c::state.ne(CouponState::Removed.as_str()))
                    .order((c::campaign_id, c::position))
                    .select(CouponRow::as_select())
                    .load(self)
                    .await
                    .map(stocks)
            }

            async fn chains(&mut self, campaign_ids: &[String], lock: bool) -> QueryResult<Vec<CouponStock>> {
                let query = table
                    .filter(in_list(c::campaign_id, campaign_ids))
                    .filter(c::state.ne(CouponState::Removed.as_str()))
                    .order(c::id)
                    .select(CouponRow::as_select());
                if !lock {
                    return query.load(self).await.map(stocks);
                }
                backend!($backend,
                    mysql => { query.for_update().load(self).await.map(stocks) },
                    sqlite => { query.load(self).await.map(stocks) })
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

            async fn set_coupon_state(&mut self, id: &str, state: CouponState, now: NaiveDateTime) -> QueryResult<bool> {
                let changed = diesel::update(table.filter(c::id.eq(id)))
                    .set((c::state.eq(state.as_str()), c::updated_at.eq(now)))
                    .execute(self)
                    .await?;
                Ok(changed == 1)
            }
        }
    };
}

impl_coupons!(MysqlConn, mysql);
impl_coupons!(SqliteConn, sqlite);
