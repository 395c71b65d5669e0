//! `trigger_requests`: the intake queue. Claims, fencing, final statuses and lease
//! recovery.

use std::collections::HashMap;
use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::prepared::{in_list, Cached};
use super::schema::trigger_requests::dsl as tr;
use super::schema::trigger_requests::table;
use super::{backend, insert_all, MysqlConn, QueryResult, SqliteConn};

/// A claimed request as stored, before intake validates it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::trigger_requests)]
pub struct QueuedRequest {
    /// Row id.
    pub id: i64,
    /// The client's idempotency key.
    pub request_key: String,
    /// The user, as the client wrote it.
    pub user_id: String,
    /// The event, as the client wrote it.
    pub event: String,
    /// The attributes JSON text, as the client wrote it.
    pub attributes: Option<String>,
    /// When the client inserted it.
    pub created_at: NaiveDateTime,
}

/// A request to insert (the demo and benchmarks; clients use plain SQL).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::schema::trigger_requests, treat_none_as_default_value = false)]
pub struct NewRequest {
    /// Idempotency key.
    pub request_key: String,
    /// User.
    pub user_id: String,
    /// Event.
    pub event: String,
    /// Attributes JSON text.
    pub attributes: Option<String>,
}

/// The final state of one processed request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finished {
    /// Row id.
    pub id: i64,
    /// `done`, `rejected` or `failed`.
    pub status: &'static str,
    /// For `done`: the outcome.
    pub outcome: Option<&'static str>,
    /// For `rejected` and `failed`: why.
    pub error: Option<String>,
    /// For `done`: why this outcome (the rule or window that decided).
    pub detail: Option<String>,
    /// The user type the rules decided, when they got that far.
    pub user_type: Option<String>,
    /// The campaign, when one was chosen.
    pub campaign_id: Option<String>,
    /// The rules version that decided.
    pub rules_version: Option<String>,
}

/// How the requests a batch finishes were claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Claimed beforehand by [`Requests::claim_batch`] under this token: only the rows
    /// the token still holds change (a recovered claim is not finished twice).
    Token(i64),
    /// Taken by [`Requests::take_queued`] in the finishing transaction, which holds
    /// their row locks: they are finished with this token and claim time.
    Inline {
        /// Recorded as `claim_token`.
        token: i64,
        /// Recorded as `claimed_at`.
        at: NaiveDateTime,
    },
}

/// What lease recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Claims put back in the queue.
    pub requeued: usize,
    /// Requests that ran out of attempts and are now `failed`.
    pub failed: usize,
}

/// Operations on `trigger_requests`.
pub trait Requests {
    /// Claims up to `limit` queued requests, oldest first, in a transaction of its own;
    /// rows another daemon holds are skipped, never waited for.
    fn claim_batch(
        &mut self,
        limit: i64,
        token: i64,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<Vec<QueuedRequest>>> + Send;

    /// Inside the caller's transaction: locks up to `limit` queued requests, oldest
    /// first, skipping rows another transaction holds. They stay `queued` until the
    /// caller finishes them in the same transaction ([`Claim::Inline`]), so a rollback or
    /// a crash puts them back in the queue at once.
    fn take_queued(
        &mut self,
        limit: i64,
    ) -> impl Future<Output = QueryResult<Vec<QueuedRequest>>> + Send;

    /// Inside the caller's transaction: locks the requests of `ids` that this claim
    /// (`token`) still holds and returns their ids. A request whose lease was recovered
    /// meanwhile is not returned: this is the fence against double processing.
    fn lock_claimed(
        &mut self,
        ids: &[i64],
        token: i64,
    ) -> impl Future<Output = QueryResult<Vec<i64>>> + Send;

    /// Writes final statuses, one statement per distinct result; see [`Claim`] for which
    /// rows change. Returns the number of rows changed.
    fn finish_requests(
        &mut self,
        finished: &[Finished],
        claim: Claim,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Puts every request still held by `token` back in the queue (used at shutdown).
    fn release_claims(&mut self, token: i64) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Recovers claims taken before `claimed_before`: back to the queue with their
    /// attempt count raised, or `failed` once they reach `max_attempts`.
    fn reclaim_expired(
        &mut self,
        claimed_before: NaiveDateTime,
        max_attempts: i32,
    ) -> impl Future<Output = QueryResult<Reclaimed>> + Send;

    /// Inserts requests (the demo and benchmarks).
    fn enqueue(&mut self, rows: &[NewRequest]) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Queued requests and the creation time of the oldest one.
    fn queue_depth(
        &mut self,
    ) -> impl Future<Output = QueryResult<(i64, Option<NaiveDateTime>)>> + Send;

    /// Requests counted by status and outcome.
    fn count_by_outcome(
        &mut self,
    ) -> impl Future<Output = QueryResult<Vec<(String, Option<String>, i64)>>> + Send;
}

/// Groups finished requests by identical result, so that each group is one UPDATE.
fn group_finished(finished: &[Finished]) -> HashMap<Finished, Vec<i64>> {
    let mut groups: HashMap<Finished, Vec<i64>> = HashMap::new();
    for f in finished {
        groups
            .entry(Finished { id: 0, ..f.clone() })
            .or_default()
            .push(f.id);
    }
    groups
}

macro_rules! impl_requests {
    ($conn:ty, $backend:ident) => {
        impl Requests for $conn {
            async fn claim_batch(
                &mut self,
                limit: i64,
                token: i64,
                now: NaiveDateTime,
            ) -> QueryResult<Vec<QueuedRequest>> {
                self.transaction(async |conn| {
                        let rows = conn.take_queued(limit).await?;
                        if rows.is_empty() {
                            return Ok(rows);
                        }
                        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                        let claim = diesel::update(table.filter(in_list(tr::id, ids))).set((
                            tr::status.eq("claimed"),
                            tr::claim_token.eq(token),
                            tr::claimed_at.eq(now),
                        ));
                        Cached(claim).execute(conn).await?;
                        Ok(rows)
                })
                .await
            }

            async fn take_queued(&mut self, limit: i64) -> QueryResult<Vec<QueuedRequest>> {
                let query = table
                    .filter(tr::status.eq("queued"))
                    .order(tr::id.asc())
                    .limit(limit)
                    .select(QueuedRequest::as_select());
                backend!($backend,
                    mysql => { query.for_update().skip_locked().load(self).await },
                    sqlite => { query.load(self).await })
            }

            async fn lock_claimed(&mut self, ids: &[i64], token: i64) -> QueryResult<Vec<i64>> {
                let query = table
                    .filter(in_list(tr::id, ids.iter().copied()))
                    .filter(tr::claim_token.eq(token))
                    .filter(tr::status.eq("claimed"))
                    .order(tr::id.asc())
                    .select(tr::id);
                backend!($backend,
                    mysql => { query.for_update().load(self).await },
                    sqlite => { query.load(self).await })
            }

            async fn finish_requests(
                &mut self,
                finished: &[Finished],
                claim: Claim,
                now: NaiveDateTime,
            ) -> QueryResult<usize> {
                let mut changed = 0;
                for (result, ids) in &group_finished(finished) {
                    let rows = table.filter(in_list(tr::id, ids.iter().copied()));
                    let outcome = (
                        tr::status.eq(result.status),
                        tr::outcome.eq(result.outcome),
                        tr::error.eq(result.error.as_deref()),
                        tr::detail.eq(result.detail.as_deref()),
                        tr::user_type.eq(result.user_type.as_deref()),
                        tr::campaign_id.eq(result.campaign_id.as_deref()),
                        tr::rules_version.eq(result.rules_version.as_deref()),
                        tr::processed_at.eq(now),
                    );
                    changed += match claim {
                        Claim::Token(token) => {
                            let rows = rows.filter(tr::claim_token.eq(token));
                            Cached(diesel::update(rows).set(outcome)).execute(self).await?
                        }
                        Claim::Inline { token, at } => {
                            let claimed = (tr::claim_token.eq(token), tr::claimed_at.eq(at));
                            Cached(diesel::update(rows).set((outcome, claimed)))
                                .execute(self)
                                .await?
                        }
                    };
                }
                Ok(changed)
            }

            async fn release_claims(&mut self, token: i64) -> QueryResult<usize> {
                diesel::update(
                    table
                        .filter(tr::claim_token.eq(token))
                        .filter(tr::status.eq("claimed")),
                )
                .set((
                    tr::status.eq("queued"),
                    tr::claim_token.eq(None::<i64>),
                    tr::claimed_at.eq(None::<NaiveDateTime>),
                ))
                .execute(self)
                .await
            }

            async fn reclaim_expired(
                &mut self,
                claimed_before: NaiveDateTime,
                max_attempts: i32,
            ) -> QueryResult<Reclaimed> {
                self.transaction(async |conn| {
                        let query = table
                            .filter(tr::status.eq("claimed"))
                            .filter(tr::claimed_at.lt(claimed_before))
                            // Served by (status, id): only claims in flight are 'claimed'.
                            .order(tr::id.asc())
                            .limit(1000)
                            .select((tr::id, tr::attempts));
                        // SKIP LOCKED: a claim whose daemon is inside its grant
                        // transaction right now is not expired, whatever its age.
                        let rows: Vec<(i64, i32)> = backend!($backend,
                            mysql => { query.for_update().skip_locked().load(conn).await? },
                            sqlite => { query.load(conn).await? });
                        let (spent, retry): (Vec<_>, Vec<_>) =
                            rows.into_iter().partition(|(_, attempts)| attempts + 1 >= max_attempts);
                        let spent: Vec<i64> = spent.into_iter().map(|(id, _)| id).collect();
                        let retry: Vec<i64> = retry.into_iter().map(|(id, _)| id).collect();
                        let requeued = diesel::update(table.filter(tr::id.eq_any(&retry)))
                            .set((
                                tr::status.eq("queued"),
                                tr::attempts.eq(tr::attempts + 1),
                                tr::claim_token.eq(None::<i64>),
                                tr::claimed_at.eq(None::<NaiveDateTime>),
                            ))
                            .execute(conn)
                            .await?;
                        let reason = format!(
                            "lease expired {max_attempts} times: the request was claimed and never finished"
                        );
                        let failed = diesel::update(table.filter(tr::id.eq_any(&spent)))
                            .set((
                                tr::status.eq("failed"),
                                tr::attempts.eq(tr::attempts + 1),
                                tr::error.eq(reason),
                                tr::claim_token.eq(None::<i64>),
                                tr::processed_at.eq(super::now()),
                            ))
                            .execute(conn)
                            .await?;
                        Ok(Reclaimed { requeued, failed })
                })
                .await
            }

            async fn enqueue(&mut self, rows: &[NewRequest]) -> QueryResult<usize> {
                insert_all!($backend, self, table, rows)
            }

            async fn queue_depth(&mut self) -> QueryResult<(i64, Option<NaiveDateTime>)> {
                table
                    .filter(tr::status.eq("queued"))
                    .select((diesel::dsl::count_star(), diesel::dsl::min(tr::created_at)))
                    .first(self)
                    .await
            }

            async fn count_by_outcome(&mut self) -> QueryResult<Vec<(String, Option<String>, i64)>> {
                table
                    .group_by((tr::status, tr::outcome))
                    .select((tr::status, tr::outcome, diesel::dsl::count_star()))
                    .order((tr::status, tr::outcome))
                    .load(self)
                    .await
            }
        }
    };
}

impl_requests!(MysqlConn, mysql);
impl_requests!(SqliteConn, sqlite);
