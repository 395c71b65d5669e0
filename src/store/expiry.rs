//! The grants the scheduled lifecycle job (`schedule::lifecycle`) takes in hand: those
//! whose validity ended (to expire) and those due their `coupon.expiring` reminder.
//!
//! Both claims run inside the job's transaction and lock the grant rows they return
//! `FOR UPDATE SKIP LOCKED`: two daemons running the job at once each take grants the
//! other does not hold, and a grant a partner update or an operator holds is left for
//! the next batch instead of being waited for. They lock grant rows only, never a
//! coupon or a campaign, and the grant step never locks a grant row (it inserts them),
//! so the job never holds up a grant batch. Both are served by `ix_grants_expiry
//! (state, expires_at)`, which MariaDB is told to use: left alone on a small table it
//! may walk the primary key and lock its way past rows outside the batch.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};

use super::prepared::in_list;
use super::schema::grants;
use super::schema::grants::dsl as g;
use super::{Backend, Conn, QueryResult};
use crate::domain::GrantState;

/// One claimed grant's id.
#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The expiry claim: granted grants whose `expires_at` has passed, earliest first.
fn expired_sql(backend: Backend) -> String {
    let (index, lock) = match backend {
        Backend::Mysql => (" FORCE INDEX (ix_grants_expiry)", " FOR UPDATE SKIP LOCKED"),
        Backend::Sqlite => ("", ""),
    };
    format!(
        "SELECT id FROM grants{index} WHERE state = 'granted' AND expires_at <= ? \
         ORDER BY expires_at, id LIMIT ?{lock}"
    )
}

/// The reminder claim: one coupon's granted grants not yet reminded whose `expires_at`
/// lies in (now, until], earliest first.
fn reminders_sql(backend: Backend) -> String {
    let (index, lock) = match backend {
        Backend::Mysql => (" FORCE INDEX (ix_grants_expiry)", " FOR UPDATE SKIP LOCKED"),
        Backend::Sqlite => ("", ""),
    };
    format!(
        "SELECT id FROM grants{index} WHERE state = 'granted' AND expires_at > ? \
         AND expires_at <= ? AND coupon_id = ? AND reminded_at IS NULL \
         ORDER BY expires_at, id LIMIT ?{lock}"
    )
}

/// Operations of the expiry and reminder job.
impl Conn {
    /// Inside the caller's transaction: up to `limit` grants still `granted` whose
    /// `expires_at` is at or before `now`, locked until the commit; rows another
    /// transaction holds are passed over. (SQLite, with its one writer, has no row
    /// locks.) Ids in the order they expired.
    pub async fn claim_expired_grants(
        &mut self,
        now: NaiveDateTime,
        limit: i64,
    ) -> QueryResult<Vec<i64>> {
        let query = diesel::sql_query(expired_sql(self.backend()))
            .bind::<Timestamp, _>(now)
            .bind::<BigInt, _>(limit);
        let rows: Vec<Claimed> = self.load(query).await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Inside the caller's transaction: up to `limit` grants of `coupon_id` still
    /// `granted` and not yet reminded whose `expires_at` lies after `now` and at or
    /// before `until` (`now + remind_before`), locked until the commit like
    /// [`Conn::claim_expired_grants`].
    pub async fn claim_due_reminders(
        &mut self,
        coupon_id: &str,
        (now, until): (NaiveDateTime, NaiveDateTime),
        limit: i64,
    ) -> QueryResult<Vec<i64>> {
        let query = diesel::sql_query(reminders_sql(self.backend()))
            .bind::<Timestamp, _>(now)
            .bind::<Timestamp, _>(until)
            .bind::<Text, _>(coupon_id)
            .bind::<BigInt, _>(limit);
        let rows: Vec<Claimed> = self.load(query).await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Sets `reminded_at` on the grants of `ids` that are still `granted` and not yet
    /// reminded; returns how many it set.
    pub async fn mark_reminded(&mut self, ids: &[i64], at: NaiveDateTime) -> QueryResult<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let target = grants::table
            .filter(in_list(g::id, ids.iter().copied()))
            .filter(g::state.eq(GrantState::Granted.as_str()))
            .filter(g::reminded_at.is_null());
        self.execute(diesel::update(target).set(g::reminded_at.eq(at)))
            .await
    }
}
