//! `job_leases` (one scheduled job runs once per tick across all daemons),
//! `coupon_rotations` (the audit trail of rotations) and the "alerted once" marks of
//! campaigns and coupons.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::campaigns::dsl as k;
use super::schema::coupon_rotations::dsl as r;
use super::schema::coupons::dsl as c;
use super::schema::job_leases::dsl as j;
use super::schema::{campaigns, coupon_rotations, coupons, job_leases};
use super::{columns, Conn, QueryResult};

/// One rotation, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = coupon_rotations, treat_none_as_default_value = false)]
pub struct Rotation {
    /// The campaign.
    pub campaign_id: String,
    /// The coupon retired from selection.
    pub from_coupon: String,
    /// The coupon that serves next, if any (none only for an expired coupon nothing
    /// later in its chain could replace).
    pub to_coupon: Option<String>,
    /// `low_stock`, `exhausted` or `expired` (rows written before the run-out forecast
    /// became an alert may say `predicted`).
    pub reason: String,
    /// What was left of `from_coupon`.
    pub remaining: i64,
    /// When.
    pub rotated_at: NaiveDateTime,
}

/// A campaign's "alerted once" marks.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct CampaignMarks {
    /// The campaign.
    pub campaign_id: String,
    /// When `campaign.exhausted` was sent, until a restock clears it.
    pub exhausted_at: Option<NaiveDateTime>,
    /// When `campaign.budget_reached` was sent.
    pub budget_reached_at: Option<NaiveDateTime>,
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
impl Conn {
    /// Takes the lease of `job` for the tick at `tick`, if no daemon holds it now and
    /// none has run this tick. True when this daemon is to run the job.
    pub async fn acquire_job(
        &mut self,
        job: &str,
        holder: &str,
        tick: NaiveDateTime,
        now: NaiveDateTime,
        held_until: NaiveDateTime,
    ) -> QueryResult<bool> {
        self.execute(diesel::insert_or_ignore_into(job_leases::table).values(j::job.eq(job)))
            .await?;
        let free = j::held_until.is_null().or(j::held_until.lt(now));
        let new_tick = j::last_tick.is_null().or(j::last_tick.lt(tick));
        let take = diesel::update(job_leases::table.find(job).filter(free).filter(new_tick)).set((
            j::holder.eq(holder),
            j::held_until.eq(held_until),
            j::last_tick.eq(tick),
        ));
        Ok(self.execute(take).await? == 1)
    }

    /// Gives up the lease after the job finished.
    pub async fn release_job(
        &mut self,
        job: &str,
        holder: &str,
        now: NaiveDateTime,
    ) -> QueryResult<()> {
        let release =
            diesel::update(job_leases::table.find(job).filter(j::holder.eq(holder))).set((
                j::held_until.eq(None::<NaiveDateTime>),
                j::last_finished_at.eq(now),
            ));
        self.execute(release).await?;
        Ok(())
    }

    /// Appends a rotation to the audit trail.
    pub async fn record_rotation(&mut self, rotation: &Rotation) -> QueryResult<()> {
        self.execute(diesel::insert_into(coupon_rotations::table).values(rotation))
            .await?;
        Ok(())
    }

    /// The rotations, oldest first.
    pub async fn rotations(&mut self) -> QueryResult<Vec<Rotation>> {
        let query = coupon_rotations::table
            .order(r::id)
            .select(columns::<Rotation>());
        self.load(query).await
    }

    /// The rotations made at or after `since`, newest first, at most `limit`.
    pub async fn rotations_since(
        &mut self,
        since: NaiveDateTime,
        limit: i64,
    ) -> QueryResult<Vec<Rotation>> {
        let query = coupon_rotations::table
            .filter(r::rotated_at.ge(since))
            .order((r::rotated_at.desc(), r::id.desc()))
            .limit(limit)
            .select(columns::<Rotation>());
        self.load(query).await
    }

    /// The campaigns' "alerted once" marks that are set: `(campaign, exhausted at,
    /// budget reached at)`, by campaign.
    pub async fn alert_marks(&mut self) -> QueryResult<Vec<CampaignMarks>> {
        let query = campaigns::table
            .filter(
                k::exhausted_alerted_at
                    .is_not_null()
                    .or(k::budget_alerted_at.is_not_null()),
            )
            .order(k::id)
            .select((k::id, k::exhausted_alerted_at, k::budget_alerted_at));
        self.load(query).await
    }

    /// The coupons announced `coupon.running_low` and not restocked since (their mark
    /// still holds: see [`Conn::mark_running_low`]), by id.
    pub async fn running_low_coupons(&mut self) -> QueryResult<Vec<String>> {
        let query = coupons::table
            .filter(c::running_low_alerted_stock.ge(c::stock.nullable()))
            .order(c::id)
            .select(c::id);
        self.load(query).await
    }

    /// Sets a campaign's mark; true only for the call that set it (alert once).
    pub async fn mark_alerted(
        &mut self,
        campaign_id: &str,
        mark: AlertMark,
        now: NaiveDateTime,
    ) -> QueryResult<bool> {
        let target = campaigns::table.find(campaign_id);
        let changed = match mark {
            AlertMark::Exhausted => {
                let unset = target.filter(k::exhausted_alerted_at.is_null());
                self.execute(diesel::update(unset).set(k::exhausted_alerted_at.eq(now)))
                    .await?
            }
            AlertMark::BudgetReached => {
                let unset = target.filter(k::budget_alerted_at.is_null());
                self.execute(diesel::update(unset).set(k::budget_alerted_at.eq(now)))
                    .await?
            }
        };
        Ok(changed == 1)
    }

    /// Marks a coupon as announced `coupon.running_low` at its current `stock`; true
    /// only for the call that set it. Once per coupon until it is restocked: the mark
    /// holds until the coupon's `stock` grows past the stock it recorded, so neither
    /// `stock add` nor a raised config stock has to clear it.
    pub async fn mark_running_low(&mut self, coupon_id: &str) -> QueryResult<bool> {
        let armed = c::running_low_alerted_stock
            .is_null()
            .or(c::running_low_alerted_stock.lt(c::stock.nullable()));
        let mark = diesel::update(coupons::table.find(coupon_id).filter(armed))
            .set(c::running_low_alerted_stock.eq(c::stock.nullable()));
        Ok(self.execute(mark).await? == 1)
    }

    /// Clears a campaign's mark (after a restock), so that the next time alerts again.
    pub async fn clear_alerted(&mut self, campaign_id: &str, mark: AlertMark) -> QueryResult<()> {
        let target = campaigns::table.find(campaign_id);
        match mark {
            AlertMark::Exhausted => {
                let clear = k::exhausted_alerted_at.eq(None::<NaiveDateTime>);
                self.execute(diesel::update(target).set(clear)).await?
            }
            AlertMark::BudgetReached => {
                let clear = k::budget_alerted_at.eq(None::<NaiveDateTime>);
                self.execute(diesel::update(target).set(clear)).await?
            }
        };
        Ok(())
    }
}
