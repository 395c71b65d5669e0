//! `job_leases` (one scheduled job runs once per tick across all daemons),
//! `coupon_rotations` (the audit trail of rotations) and the "alerted once" marks of
//! campaigns and coupons.

use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::campaigns::dsl as k;
use super::schema::coupon_rotations::dsl as r;
use super::schema::coupons::dsl as c;
use super::schema::job_leases::dsl as j;
use super::schema::{campaigns, coupon_rotations, coupons, job_leases};
use super::{MysqlConn, QueryResult, SqliteConn};

/// One rotation, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = coupon_rotations, treat_none_as_default_value = false)]
pub struct Rotation {
    /// The campaign.
    pub campaign_id: String,
    /// The coupon retired from selection.
    pub from_coupon: String,
    /// The coupon that serves next, if any.
    pub to_coupon: Option<String>,
    /// `low_stock` or `exhausted` (rows written before the run-out forecast became an
    /// alert may say `predicted`).
    pub reason: String,
    /// What was left of `from_coupon`.
    pub remaining: i64,
    /// When.
    pub rotated_at: NaiveDateTime,
}

/// Which "alerted once" mark of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertMark {
    /// `campaign.exhausted` was sent.
    Exhausted,
    /// `campaign.budget_reached` was sent.
    BudgetReached,
}

/// Operations for the scheduler.
pub trait Jobs {
    /// Takes the lease of `job` for the tick at `tick`, if no daemon holds it now and
    /// none has run this tick. True when this daemon is to run the job.
    fn acquire_job(
        &mut self,
        job: &str,
        holder: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
        held_until: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Gives up the lease after the job finished.
    fn release_job(
        &mut self,
        job: &str,
        holder: &str,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<()>> + Send;

    /// Appends a rotation to the audit trail.
    fn record_rotation(
        &mut self,
        rotation: &Rotation,
    ) -> impl Future<Output = QueryResult<()>> + Send;

    /// The rotations, oldest first.
    fn rotations(&mut self) -> impl Future<Output = QueryResult<Vec<Rotation>>> + Send;

    /// Sets a campaign's mark; true only for the call that set it (alert once).
    fn mark_alerted(
        &mut self,
        campaign_id: &str,
        mark: AlertMark,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Marks a coupon as announced `coupon.running_low` at its current `stock`; true
    /// only for the call that set it. Once per coupon until it is restocked: the mark
    /// holds until the coupon's `stock` grows past the stock it recorded, so neither
    /// `stock add` nor a raised config stock has to clear it.
    fn mark_running_low(
        &mut self,
        coupon_id: &str,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Clears a campaign's mark (after a restock), so that the next time alerts again.
    fn clear_alerted(
        &mut self,
        campaign_id: &str,
        mark: AlertMark,
    ) -> impl Future<Output = QueryResult<()>> + Send;
}

macro_rules! impl_jobs {
    ($conn:ty) => {
        impl Jobs for $conn {
            async fn acquire_job(
                &mut self,
                job: &str,
                holder: &str,
                tick: NaiveDateTime,
                now: NaiveDateTime,
                held_until: NaiveDateTime,
            ) -> QueryResult<bool> {
                diesel::insert_or_ignore_into(job_leases::table)
                    .values(j::job.eq(job))
                    .execute(self)
                    .await?;
                let free = j::held_until.is_null().or(j::held_until.lt(now));
                let new_tick = j::last_tick.is_null().or(j::last_tick.lt(tick));
                let taken =
                    diesel::update(job_leases::table.find(job).filter(free).filter(new_tick))
                        .set((
                            j::holder.eq(holder),
                            j::held_until.eq(held_until),
                            j::last_tick.eq(tick),
                        ))
                        .execute(self)
                        .await?;
                Ok(taken == 1)
            }

            async fn release_job(
                &mut self,
                job: &str,
                holder: &str,
                now: NaiveDateTime,
            ) -> QueryResult<()> {
                diesel::update(job_leases::table.find(job).filter(j::holder.eq(holder)))
                    .set((
                        j::held_until.eq(None::<NaiveDateTime>),
                        j::last_finished_at.eq(now),
                    ))
                    .execute(self)
                    .await?;
                Ok(())
            }

            async fn record_rotation(&mut self, rotation: &Rotation) -> QueryResult<()> {
                diesel::insert_into(coupon_rotations::table)
                    .values(rotation)
                    .execute(self)
                    .await?;
                Ok(())
            }

            async fn rotations(&mut self) -> QueryResult<Vec<Rotation>> {
                coupon_rotations::table
                    .order(r::id)
                    .select(Rotation::as_select())
                    .load(self)
                    .await
            }

            async fn mark_alerted(
                &mut self,
                campaign_id: &str,
                mark: AlertMark,
                now: NaiveDateTime,
            ) -> QueryResult<bool> {
                let target = campaigns::table.find(campaign_id);
                let changed = match mark {
                    AlertMark::Exhausted => {
                        diesel::update(target.filter(k::exhausted_alerted_at.is_null()))
                            .set(k::exhausted_alerted_at.eq(now))
                            .execute(self)
                            .await?
                    }
                    AlertMark::BudgetReached => {
                        diesel::update(target.filter(k::budget_alerted_at.is_null()))
                            .set(k::budget_alerted_at.eq(now))
                            .execute(self)
                            .await?
                    }
                };
                Ok(changed == 1)
            }

            async fn mark_running_low(&mut self, coupon_id: &str) -> QueryResult<bool> {
                let armed = c::running_low_alerted_stock
                    .is_null()
                    .or(c::running_low_alerted_stock.lt(c::stock.nullable()));
                let changed = diesel::update(coupons::table.find(coupon_id).filter(armed))
                    .set(c::running_low_alerted_stock.eq(c::stock.nullable()))
                    .execute(self)
                    .await?;
                Ok(changed == 1)
            }

            async fn clear_alerted(
                &mut self,
                campaign_id: &str,
                mark: AlertMark,
            ) -> QueryResult<()> {
                let target = campaigns::table.find(campaign_id);
                match mark {
                    AlertMark::Exhausted => {
                        diesel::update(target)
                            .set(k::exhausted_alerted_at.eq(None::<NaiveDateTime>))
                            .execute(self)
                            .await?
                    }
                    AlertMark::BudgetReached => {
                        diesel::update(target)
                            .set(k::budget_alerted_at.eq(None::<NaiveDateTime>))
                            .execute(self)
                            .await?
                    }
                };
                Ok(())
            }
        }
    };
}

impl_jobs!(MysqlConn);
impl_jobs!(SqliteConn);
