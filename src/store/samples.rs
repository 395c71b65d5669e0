//! `stock_samples`: each coupon's remaining stock over time, written once per tick of
//! `schedule.sample_stock` (`schedule::samples`) and read by the ops console's
//! burn-down plots. A sample is one row per coupon; the table is pruned by time
//! (`ix_stock_samples_time`), and read by time for every coupon at once.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::Timestamp;

use super::schema::coupons::dsl as c;
use super::schema::stock_samples::dsl as s;
use super::schema::{coupons, stock_samples};
use super::{Conn, QueryResult};
use crate::domain::CouponState;

/// One coupon's remaining stock at one time.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct StockSample {
    /// The coupon.
    pub coupon_id: String,
    /// When it was read (the database's clock).
    pub sampled_at: NaiveDateTime,
    /// Its `remaining` then.
    pub remaining: i64,
}

/// Operations on `stock_samples`.
impl Conn {
    /// Records every coupon still in the config at `at` with its `remaining` now, in
    /// one `INSERT … SELECT`; a coupon already sampled at `at` keeps its first row.
    /// Returns the rows written.
    pub async fn record_stock_samples(&mut self, at: NaiveDateTime) -> QueryResult<usize> {
        let sampled = coupons::table
            .filter(c::state.ne(CouponState::Removed.as_str()))
            .select((c::id, at.into_sql::<Timestamp>(), c::remaining));
        let insert = diesel::insert_or_ignore_into(stock_samples::table)
            .values(sampled)
            .into_columns((s::coupon_id, s::sampled_at, s::remaining));
        self.execute(insert).await
    }

    /// Deletes the samples taken before `before`; returns how many.
    pub async fn prune_stock_samples(&mut self, before: NaiveDateTime) -> QueryResult<usize> {
        self.execute(diesel::delete(
            stock_samples::table.filter(s::sampled_at.lt(before)),
        ))
        .await
    }

    /// Every coupon's samples taken at or after `since`, by coupon, oldest first.
    pub async fn stock_samples_since(
        &mut self,
        since: NaiveDateTime,
    ) -> QueryResult<Vec<StockSample>> {
        let query = stock_samples::table
            .filter(s::sampled_at.ge(since))
            .order((s::coupon_id, s::sampled_at))
            .select((s::coupon_id, s::sampled_at, s::remaining));
        self.load(query).await
    }

    /// The distinct times samples were taken at or after `since`, oldest first: a walk
    /// of the time index alone.
    pub async fn stock_sample_times_since(
        &mut self,
        since: NaiveDateTime,
    ) -> QueryResult<Vec<NaiveDateTime>> {
        let query = stock_samples::table
            .filter(s::sampled_at.ge(since))
            .select(s::sampled_at)
            .distinct()
            .order(s::sampled_at);
        self.load(query).await
    }

    /// Every coupon's samples taken at one of `times`, in no order.
    pub async fn stock_samples_at(
        &mut self,
        times: &[NaiveDateTime],
    ) -> QueryResult<Vec<StockSample>> {
        if times.is_empty() {
            return Ok(Vec::new());
        }
        let query = stock_samples::table
            .filter(s::sampled_at.eq_any(times))
            .select((s::coupon_id, s::sampled_at, s::remaining));
        self.load(query).await
    }

    /// How many samples the table holds (for tests and the console's footer).
    pub async fn count_stock_samples(&mut self) -> QueryResult<i64> {
        self.get_result(stock_samples::table.count()).await
    }
}
