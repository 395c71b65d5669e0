//! `grants` (the ledger of granted coupons) and `participations` (the per-user lock
//! rows that serialise decisions about one user).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::prepared::{in_list, pow2_chunks, Cached};
use super::schema::grants::dsl as g;
use super::schema::participations::dsl as p;
use super::schema::{grants, participations};
use super::{Backend, Conn, QueryResult};
use crate::domain::{GrantState, PastGrantTime, PastGrants};

/// A grant row: written by the grant step, read back by `explain` and `backtest`.
#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = grants, treat_none_as_default_value = false)]
pub struct NewGrant {
    /// The grant id: the id of the request that earned it.
    pub id: i64,
    /// The request.
    pub request_id: i64,
    /// The user.
    pub user_id: String,
    /// The event.
    pub event: String,
    /// The campaign.
    pub campaign_id: String,
    /// The coupon.
    pub coupon_id: String,
    /// Its face value in cents.
    pub face_value_cents: i64,
    /// The user type the rules decided.
    pub user_type: String,
    /// The rules version that decided.
    pub rules_version: String,
    /// When.
    pub granted_at: NaiveDateTime,
    /// The code the user redeems, when the coupon has codes.
    pub code: Option<String>,
    /// Valid from (the grant), when the coupon has a validity.
    pub valid_from: Option<NaiveDateTime>,
    /// Valid until, when the coupon has a validity.
    pub expires_at: Option<NaiveDateTime>,
}

#[derive(Insertable)]
#[diesel(table_name = participations, treat_none_as_default_value = false)]
struct Participant<'a> {
    user_id: &'a str,
    event: &'a str,
    requests: i64,
}

/// One row of [`Conn::history_for`]'s query: a (user, event, campaign, state) group.
type HistoryRow = (
    String,
    String,
    String,
    i64,
    Option<NaiveDateTime>,
    i64,
    Option<NaiveDateTime>,
);

/// The history's figures of one (user, event, campaign), counted in the database by
/// state: revoked grants gave back what they took and are left out; an unknown state
/// word (written by hand) counts, as a grant did before states existed. Conditional
/// aggregates rather than a `GROUP BY state`, so that the grouping follows
/// `ix_grants_history (user_id, event, campaign_id)` and needs no temporary table and
/// sort: grouped by state as well, this read took 26 ms a batch instead of 2 on
/// MariaDB (steady, 200 users a batch) and cost a fifth of the grant path.
const COUNTING: &str = "COUNT(CASE WHEN grants.state <> 'revoked' THEN 1 END)";
const LAST_COUNTING: &str = "MAX(CASE WHEN grants.state <> 'revoked' THEN grants.granted_at END)";
const REDEEMED: &str = "COUNT(CASE WHEN grants.state = 'redeemed' THEN 1 END)";
const LAST_REDEEMED: &str = "MAX(CASE WHEN grants.state = 'redeemed' THEN grants.redeemed_at END)";

/// The rows as [`PastGrants`]; a group whose grants were all revoked is left out.
fn past_grants(rows: Vec<HistoryRow>) -> Vec<PastGrants> {
    rows.into_iter()
        .filter(|row| row.3 > 0)
        .map(
            |(user_id, event, campaign_id, grants, last_grant_at, redeemed, last_redeemed_at)| {
                PastGrants {
                    user_id,
                    event,
                    campaign_id,
                    grants,
                    last_grant_at,
                    redeemed,
                    last_redeemed_at,
                }
            },
        )
        .collect()
}

/// Operations on `grants` and `participations`.
impl Conn {
    /// Inside the caller's transaction: takes the lock row of each (user, event), in
    /// sorted order so that two daemons never deadlock on them. Until the transaction
    /// ends, no other daemon can decide about these users. (SQLite has one writer and
    /// needs no lock rows.)
    pub async fn lock_participants(
        &mut self,
        participants: &[(String, String)],
    ) -> QueryResult<()> {
        if self.backend() == Backend::Sqlite {
            return Ok(());
        }
        let mut sorted: Vec<&(String, String)> = participants.iter().collect();
        sorted.sort();
        sorted.dedup();
        let rows: Vec<Participant> = sorted
            .iter()
            .map(|(user_id, event)| Participant {
                user_id,
                event,
                requests: 1,
            })
            .collect();
        // Chunks in sorted order keep the one global lock order.
        for chunk in pow2_chunks(&rows) {
            let upsert = diesel::insert_into(participations::table)
                .values(chunk)
                .on_conflict(diesel::dsl::DuplicatedKeys)
                .do_update()
                .set(p::requests.eq(p::requests + 1));
            self.execute_on_mysql(Cached(upsert)).await?;
        }
        Ok(())
    }

    /// The grants of `users` that count, by user, event and campaign, with how many
    /// of them were redeemed: one grouped read (see [`COUNTING`]).
    pub async fn history_for(&mut self, users: &[String]) -> QueryResult<Vec<PastGrants>> {
        use diesel::dsl::sql;
        use diesel::sql_types::{BigInt, Nullable, Timestamp};
        let query = grants::table
            .filter(in_list(g::user_id, users))
            .group_by((g::user_id, g::event, g::campaign_id))
            .select((
                g::user_id,
                g::event,
                g::campaign_id,
                sql::<BigInt>(COUNTING),
                sql::<Nullable<Timestamp>>(LAST_COUNTING),
                sql::<BigInt>(REDEEMED),
                sql::<Nullable<Timestamp>>(LAST_REDEEMED),
            ));
        let rows: Vec<HistoryRow> = self.load(query).await?;
        Ok(past_grants(rows))
    }

    /// When `users` got the grants that count in `campaigns` after `since`: what a
    /// rolling `per_user_limit_period` counts. Read only for campaigns that have one.
    pub async fn grant_times(
        &mut self,
        users: &[String],
        campaigns: &[String],
        since: NaiveDateTime,
    ) -> QueryResult<Vec<PastGrantTime>> {
        if users.is_empty() || campaigns.is_empty() {
            return Ok(Vec::new());
        }
        let query = grants::table
            .filter(in_list(g::user_id, users))
            .filter(g::campaign_id.eq_any(campaigns))
            .filter(g::granted_at.gt(since))
            .filter(g::state.ne(GrantState::Revoked.as_str()))
            .select((g::user_id, g::event, g::campaign_id, g::granted_at));
        let rows: Vec<(String, String, String, NaiveDateTime)> = self.load(query).await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, event, campaign_id, granted_at)| PastGrantTime {
                user_id,
                event,
                campaign_id,
                granted_at,
            })
            .collect())
    }

    /// Inserts grants in one statement.
    pub async fn record_grants(&mut self, rows: &[NewGrant]) -> QueryResult<usize> {
        self.insert_all::<_, NewGrant>(grants::table, rows).await
    }

    /// Grants counted by campaign and coupon.
    pub async fn grants_per_coupon(&mut self) -> QueryResult<Vec<(String, String, i64)>> {
        let query = grants::table
            .group_by((g::campaign_id, g::coupon_id))
            .select((g::campaign_id, g::coupon_id, diesel::dsl::count_star()))
            .order((g::campaign_id, g::coupon_id));
        self.load(query).await
    }

    /// Grants that carry a code, by coupon (coupons without any are left out).
    pub async fn coded_grants_per_coupon(&mut self) -> QueryResult<Vec<(String, i64)>> {
        let query = grants::table
            .filter(g::code.is_not_null())
            .group_by(g::coupon_id)
            .select((g::coupon_id, diesel::dsl::count_star()))
            .order(g::coupon_id);
        self.load(query).await
    }

    /// Grants since `since` by coupon, with the first of them (the grant rate).
    pub async fn grants_since(
        &mut self,
        since: NaiveDateTime,
    ) -> QueryResult<Vec<(String, i64, Option<NaiveDateTime>)>> {
        let query = grants::table
            .filter(g::granted_at.ge(since))
            .group_by(g::coupon_id)
            .select((
                g::coupon_id,
                diesel::dsl::count_star(),
                diesel::dsl::min(g::granted_at),
            ));
        self.load(query).await
    }
}
