//! `campaign_days`: the daily budget's ledger, face value granted per campaign and day
//! (the day counted in the campaign's time zone). Taken like `budget`, with a guarded
//! update under the row lock, last in the grant transaction; given back by a
//! revocation.

use diesel::prelude::*;

use super::schema::campaign_days::dsl as d;
use super::schema::campaign_days::table;
use super::{Backend, Conn, QueryResult};

#[derive(Insertable)]
#[diesel(table_name = super::schema::campaign_days)]
struct NewDay<'a> {
    campaign_id: &'a str,
    day: &'a str,
    granted_cents: i64,
}

/// Operations on `campaign_days`.
impl Conn {
    /// Inside the caller's transaction: adds `cents` to what `campaign` granted on
    /// `day`, unless that would pass `limit_cents`; returns false (and changes nothing)
    /// then. The day's row is made on its first grant.
    pub async fn take_daily_budget(
        &mut self,
        (campaign, day): (&str, &str),
        cents: i64,
        limit_cents: i64,
    ) -> QueryResult<bool> {
        if self.add_to_day(campaign, day, cents, limit_cents).await? {
            return Ok(true);
        }
        let first = NewDay {
            campaign_id: campaign,
            day,
            granted_cents: 0,
        };
        let insert = diesel::insert_into(table)
            .values(&first)
            .on_conflict_do_nothing();
        if self.execute(insert).await? == 0 {
            // The row was there: the guard refused.
            return Ok(false);
        }
        self.add_to_day(campaign, day, cents, limit_cents).await
    }

    async fn add_to_day(
        &mut self,
        campaign: &str,
        day: &str,
        cents: i64,
        limit_cents: i64,
    ) -> QueryResult<bool> {
        let take = diesel::update(
            table
                .filter(d::campaign_id.eq(campaign))
                .filter(d::day.eq(day))
                .filter((d::granted_cents + cents).le(limit_cents)),
        )
        .set(d::granted_cents.eq(d::granted_cents + cents));
        Ok(self.execute(take).await? == 1)
    }

    /// Gives `cents` back to what `campaign` granted on `day` (a revocation); returns
    /// false (and changes nothing) when the day counts less than that: a grant made
    /// before the campaign had a daily budget was never counted there.
    pub async fn give_back_daily_budget(
        &mut self,
        (campaign, day): (&str, &str),
        cents: i64,
    ) -> QueryResult<bool> {
        let give = diesel::update(
            table
                .filter(d::campaign_id.eq(campaign))
                .filter(d::day.eq(day))
                .filter(d::granted_cents.ge(cents)),
        )
        .set(d::granted_cents.eq(d::granted_cents - cents));
        Ok(self.execute(give).await? == 1)
    }

    /// Inside the caller's transaction: locks the row of each `(campaign, day)` of
    /// `wanted`, made with nothing granted when it is missing, in sorted order (the one
    /// lock order). An upsert rather than `SELECT … FOR UPDATE`: a missing row has
    /// nothing to lock at READ COMMITTED, and two batches would both read it empty.
    /// (SQLite has one writer and needs no lock.)
    pub async fn lock_days(&mut self, wanted: &[(String, String)]) -> QueryResult<()> {
        if self.backend() == Backend::Sqlite {
            return Ok(());
        }
        let mut sorted: Vec<&(String, String)> = wanted.iter().collect();
        sorted.sort();
        sorted.dedup();
        for (campaign, day) in sorted {
            let row = NewDay {
                campaign_id: campaign,
                day,
                granted_cents: 0,
            };
            let upsert = diesel::insert_into(table)
                .values(&row)
                .on_conflict(diesel::dsl::DuplicatedKeys)
                .do_update()
                .set(d::granted_cents.eq(d::granted_cents));
            self.execute_on_mysql(upsert).await?;
        }
        Ok(())
    }

    /// What each `(campaign, day)` of `wanted` granted (the day in the campaign's time
    /// zone, so days differ between campaigns); pairs without a row have granted
    /// nothing and are left out.
    pub async fn granted_on_days(
        &mut self,
        wanted: &[(String, String)],
    ) -> QueryResult<Vec<(String, String, i64)>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let campaigns: Vec<&str> = wanted.iter().map(|(c, _)| c.as_str()).collect();
        let days: Vec<&str> = wanted.iter().map(|(_, day)| day.as_str()).collect();
        let query = table
            .filter(d::campaign_id.eq_any(campaigns))
            .filter(d::day.eq_any(days))
            .select((d::campaign_id, d::day, d::granted_cents));
        let rows: Vec<(String, String, i64)> = self.load(query).await?;
        Ok(rows
            .into_iter()
            .filter(|(c, day, _)| wanted.iter().any(|(wc, wd)| wc == c && wd == day))
            .collect())
    }
}
