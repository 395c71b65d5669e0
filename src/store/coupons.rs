//! `coupons`: the rotation chains' stock. Stock is taken with one statement per coupon
//! per batch, under the row lock, and never below zero.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::prepared::{in_list, Cached};
use super::schema::coupons::dsl as c;
use super::schema::coupons::table;
use super::{columns, Conn, QueryResult};
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
impl Conn {
    /// Every coupon still in the config, by campaign and chain position (no locks).
    pub async fn coupon_stock(&mut self) -> QueryResult<Vec<CouponStock>> {
        let query = table
            .filter(c::state.ne(CouponState::Removed.as_str()))
            .order((c::campaign_id, c::position))
            .select(columns::<CouponRow>());
        self.load(query).await.map(stocks)
    }

    /// The coupons of `campaign_ids`, in id order. With `lock`, inside the caller's
    /// transaction, they are locked in that order (one order for every daemon, so two
    /// batches never deadlock on them); without, they are a snapshot (the grant step
    /// then takes stock with guarded updates).
    pub async fn chains(
        &mut self,
        campaign_ids: &[String],
        lock: bool,
    ) -> QueryResult<Vec<CouponStock>> {
        let query = table
            .filter(in_list(c::campaign_id, campaign_ids))
            .filter(c::state.ne(CouponState::Removed.as_str()))
            .order(c::id)
            .select(columns::<CouponRow>());
        let rows = match lock {
            true => self.load_either(query.clone().for_update(), query).await?,
            false => self.load(query).await?,
        };
        Ok(stocks(rows))
    }

    /// Takes `count` from a coupon's stock; returns false (and changes nothing) when
    /// fewer are left.
    pub async fn take_stock(&mut self, id: &str, count: i64) -> QueryResult<bool> {
        let take = diesel::update(table.filter(c::id.eq(id)).filter(c::remaining.ge(count))).set((
            c::remaining.eq(c::remaining - count),
            c::granted.eq(c::granted + count),
        ));
        Ok(self.execute(Cached(take)).await? == 1)
    }

    /// Gives `count` taken units back to a coupon (a revocation): `granted` down,
    /// `remaining` up by as much, so `stock = granted + remaining` still holds; returns
    /// false (and changes nothing) for an unknown coupon or one that has granted fewer.
    pub async fn give_back_stock(&mut self, id: &str, count: i64) -> QueryResult<bool> {
        let give = diesel::update(table.filter(c::id.eq(id)).filter(c::granted.ge(count))).set((
            c::remaining.eq(c::remaining + count),
            c::granted.eq(c::granted - count),
        ));
        Ok(self.execute(give).await? == 1)
    }

    /// Adds `count` to a coupon's stock and remaining; returns false for an unknown
    /// coupon.
    pub async fn add_stock(&mut self, id: &str, count: i64) -> QueryResult<bool> {
        let add = diesel::update(table.filter(c::id.eq(id))).set((
            c::remaining.eq(c::remaining + count),
            c::stock.eq(c::stock + count),
        ));
        Ok(self.execute(add).await? == 1)
    }

    /// Sets a coupon's state; returns false for an unknown coupon.
    pub async fn set_coupon_state(
        &mut self,
        id: &str,
        state: CouponState,
        now: NaiveDateTime,
    ) -> QueryResult<bool> {
        let set = diesel::update(table.filter(c::id.eq(id)))
            .set((c::state.eq(state.as_str()), c::updated_at.eq(now)));
        Ok(self.execute(set).await? == 1)
    }
}
