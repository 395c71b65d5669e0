//! `grants` (the ledger of granted coupons) and `participations` (the per-user lock
//! rows that serialise decisions about one user).

use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::prepared::{in_list, pow2_chunks, Cached};
use super::schema::grants::dsl as g;
use super::schema::participations::dsl as p;
use super::schema::{grants, participations};
use super::{backend, insert_all, MysqlConn, QueryResult, SqliteConn};
use crate::domain::PastGrants;

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
}

#[derive(Insertable)]
#[diesel(table_name = participations, treat_none_as_default_value = false)]
struct Participant<'a> {
    user_id: &'a str,
    event: &'a str,
    requests: i64,
}

/// Operations on `grants` and `participations`.
pub trait Grants {
    /// Inside the caller's transaction: takes the lock row of each (user, event), in
    /// sorted order so that two daemons never deadlock on them. Until the transaction
    /// ends, no other daemon can decide about these users. (SQLite has one writer and
    /// needs no lock rows.)
    fn lock_participants(
        &mut self,
        participants: &[(String, String)],
    ) -> impl Future<Output = QueryResult<()>> + Send;

    /// The grants of `users`, by user, event and campaign.
    fn history_for(
        &mut self,
        users: &[String],
    ) -> impl Future<Output = QueryResult<Vec<PastGrants>>> + Send;

    /// Inserts grants in one statement.
    fn record_grants(
        &mut self,
        rows: &[NewGrant],
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Grants counted by campaign and coupon.
    fn grants_per_coupon(
        &mut self,
    ) -> impl Future<Output = QueryResult<Vec<(String, String, i64)>>> + Send;

    /// Grants since `since` by coupon, with the first of them (the grant rate).
    fn grants_since(
        &mut self,
        since: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<Vec<(String, i64, Option<NaiveDateTime>)>>> + Send;
}

fn past_grants(
    (user_id, event, campaign_id, grants, last_grant_at): (
        String,
        String,
        String,
        i64,
        Option<NaiveDateTime>,
    ),
) -> PastGrants {
    PastGrants {
        user_id,
        event,
        campaign_id,
        grants,
        last_grant_at,
    }
}

macro_rules! impl_grants {
    ($conn:ty, $backend:ident) => {
        impl Grants for $conn {
            async fn lock_participants(&mut self, participants: &[(String, String)]) -> QueryResult<()> {
                backend!($backend,
                    mysql => {
                        let mut sorted: Vec<&(String, String)> = participants.iter().collect();
                        sorted.sort();
                        sorted.dedup();
                        let rows: Vec<Participant> = sorted
                            .iter()
                            .map(|(user_id, event)| Participant { user_id, event, requests: 1 })
                            .collect();
                        // Chunks in sorted order keep the one global lock order.
                        for chunk in pow2_chunks(&rows) {
                            let upsert = diesel::insert_into(participations::table)
                                .values(chunk)
                                .on_conflict(diesel::dsl::DuplicatedKeys)
                                .do_update()
                                .set(p::requests.eq(p::requests + 1));
                            Cached(upsert).execute(&mut *self).await?;
                        }
                        Ok(())
                    },
                    sqlite => {
                        let _ = participants;
                        Ok(())
                    })
            }

            async fn history_for(&mut self, users: &[String]) -> QueryResult<Vec<PastGrants>> {
                grants::table
                    .filter(in_list(g::user_id, users))
                    .group_by((g::user_id, g::event, g::campaign_id))
                    .select((
                        g::user_id,
                        g::event,
                        g::campaign_id,
                        diesel::dsl::count_star(),
                        diesel::dsl::max(g::granted_at),
                    ))
                    .load::<(String, String, String, i64, Option<NaiveDateTime>)>(self)
                    .await
                    .map(|rows| rows.into_iter().map(past_grants).collect())
            }

            async fn record_grants(&mut self, rows: &[NewGrant]) -> QueryResult<usize> {
                if rows.is_empty() {
                    return Ok(0);
                }
                insert_all!($backend, self, grants::table, rows)
            }

            async fn grants_per_coupon(&mut self) -> QueryResult<Vec<(String, String, i64)>> {
                grants::table
                    .group_by((g::campaign_id, g::coupon_id))
                    .select((g::campaign_id, g::coupon_id, diesel::dsl::count_star()))
                    .order((g::campaign_id, g::coupon_id))
                    .load(self)
                    .await
            }

            async fn grants_since(
                &mut self,
                since: NaiveDateTime,
            ) -> QueryResult<Vec<(String, i64, Option<NaiveDateTime>)>> {
                grants::table
                    .filter(g::granted_at.ge(since))
                    .group_by(g::coupon_id)
                    .select((g::coupon_id, diesel::dsl::count_star(), diesel::dsl::min(g::granted_at)))
                    .load(self)
                    .await
            }
        }
    };
}

impl_grants!(MysqlConn, mysql);
impl_grants!(SqliteConn, sqlite);
