//! `trigger_requests`: the intake queue. Claims, fencing, final statuses and lease
//! recovery.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use diesel::dsl::sql;
use diesel::sql_types::{Binary, Bool, Nullable};

use super::prepared::{in_list, Cached};
use super::schema::trigger_requests::dsl as tr;
use super::schema::trigger_requests::table;
use super::{Backend, Conn, QueryResult};
use crate::domain::{Outcome, RequestStatus};

mod posted;
mod queued;

pub use queued::{parse_time, QueuedRequest, KEY_PREFIX};
use queued::{queued_columns, Bytes, QueuedSql};

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
    /// `Done`, `Rejected` or `Failed`.
    pub status: RequestStatus,
    /// For `Done`: the outcome.
    pub outcome: Option<Outcome>,
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
    /// Claimed beforehand by [`Conn::claim_batch`] under this token: only the rows
    /// the token still holds change (a recovered claim is not finished twice).
    Token(i64),
    /// Taken by [`Conn::take_queued`] in the finishing transaction, which holds
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
    /// Requests a client gave a status the daemon does not know, now `rejected`.
    pub rejected: usize,
}

/// Every status the daemon reads or writes; a client inserts `queued` (the default).
const STATUSES: [&str; 5] = [
    RequestStatus::Queued.as_str(),
    RequestStatus::Claimed.as_str(),
    RequestStatus::Done.as_str(),
    RequestStatus::Rejected.as_str(),
    RequestStatus::Failed.as_str(),
];
const QUEUED: &str = RequestStatus::Queued.as_str();
const CLAIMED: &str = RequestStatus::Claimed.as_str();

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

/// Operations on `trigger_requests`.
impl Conn {
    /// Claims up to `limit` queued requests, oldest first, in a transaction of its own;
    /// rows another daemon holds are skipped, never waited for.
    pub async fn claim_batch(
        &mut self,
        limit: i64,
        token: i64,
        now: NaiveDateTime,
    ) -> QueryResult<Vec<QueuedRequest>> {
        self.write_transaction(async |conn| {
            let rows = conn.take_queued(limit).await?;
            if rows.is_empty() {
                return Ok(rows);
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let claim = diesel::update(table.filter(in_list(tr::id, ids))).set((
                tr::status.eq(CLAIMED),
                tr::claim_token.eq(token),
                tr::claimed_at.eq(now),
            ));
            conn.execute(Cached(claim)).await?;
            Ok(rows)
        })
        .await
    }

    /// Inside the caller's transaction: locks up to `limit` queued requests, oldest
    /// first, skipping rows another transaction holds. They stay `queued` until the
    /// caller finishes them in the same transaction ([`Claim::Inline`]), so a rollback or
    /// a crash puts them back in the queue at once.
    pub async fn take_queued(&mut self, limit: i64) -> QueryResult<Vec<QueuedRequest>> {
        let query = table
            .filter(tr::status.eq(QUEUED))
            .order(tr::id.asc())
            .limit(limit)
            .select(sql::<QueuedSql>(queued_columns(self.backend())));
        self.load_either(
            Cached(query.clone().for_update().skip_locked()),
            Cached(query),
        )
        .await
    }

    /// Inside the caller's transaction: locks the requests of `ids` that this claim
    /// (`token`) still holds and returns their ids. A request whose lease was recovered
    /// meanwhile is not returned: this is the fence against double processing.
    pub async fn lock_claimed(&mut self, ids: &[i64], token: i64) -> QueryResult<Vec<i64>> {
        let query = table
            .filter(in_list(tr::id, ids.iter().copied()))
            .filter(tr::claim_token.eq(token))
            .filter(tr::status.eq(CLAIMED))
            .order(tr::id.asc())
            .select(tr::id);
        self.load_either(query.clone().for_update(), query).await
    }

    /// Writes final statuses, one statement per distinct result; see [`Claim`] for which
    /// rows change. Returns the number of rows changed.
    pub async fn finish_requests(
        &mut self,
        finished: &[Finished],
        claim: Claim,
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        let mut changed = 0;
        for (result, ids) in &group_finished(finished) {
            let rows = table.filter(in_list(tr::id, ids.iter().copied()));
            let outcome = (
                tr::status.eq(result.status.as_str()),
                tr::outcome.eq(result.outcome.map(Outcome::as_str)),
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
                    self.execute(Cached(diesel::update(rows).set(outcome)))
                        .await?
                }
                Claim::Inline { token, at } => {
                    let claimed = (tr::claim_token.eq(token), tr::claimed_at.eq(at));
                    self.execute(Cached(diesel::update(rows).set((outcome, claimed))))
                        .await?
                }
            };
        }
        Ok(changed)
    }

    /// Puts every request still held by `token` back in the queue (used at shutdown).
    pub async fn release_claims(&mut self, token: i64) -> QueryResult<usize> {
        let release = diesel::update(
            table
                .filter(tr::claim_token.eq(token))
                .filter(tr::status.eq(CLAIMED)),
        )
        .set((
            tr::status.eq(QUEUED),
            tr::claim_token.eq(None::<i64>),
            tr::claimed_at.eq(None::<NaiveDateTime>),
        ));
        self.execute(release).await
    }

    /// Recovers claims taken before `claimed_before` (or with no valid claim time, as a
    /// client may write): back to the queue with their attempt count raised, or
    /// `failed` once they reach `max_attempts`. Rejects requests whose status is none
    /// of the daemon's statuses, naming the row and the value.
    pub async fn reclaim_expired(
        &mut self,
        claimed_before: NaiveDateTime,
        max_attempts: i32,
    ) -> QueryResult<Reclaimed> {
        self.write_transaction(async |conn| {
            let rows = conn.expired_claims(claimed_before).await?;
            let (spent, retry): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .partition(|(_, attempts)| attempts + 1 >= max_attempts);
            let spent: Vec<i64> = spent.into_iter().map(|(id, _)| id).collect();
            let retry: Vec<i64> = retry.into_iter().map(|(id, _)| id).collect();
            let requeue = diesel::update(table.filter(tr::id.eq_any(&retry))).set((
                tr::status.eq(QUEUED),
                tr::attempts.eq(tr::attempts + 1),
                tr::claim_token.eq(None::<i64>),
                tr::claimed_at.eq(None::<NaiveDateTime>),
            ));
            let requeued = conn.execute(requeue).await?;
            let reason = format!(
                "lease expired {max_attempts} times: the request was claimed and never finished"
            );
            let fail = diesel::update(table.filter(tr::id.eq_any(&spent))).set((
                tr::status.eq(RequestStatus::Failed.as_str()),
                tr::attempts.eq(tr::attempts + 1),
                tr::error.eq(reason),
                tr::claim_token.eq(None::<i64>),
                tr::processed_at.eq(super::now()),
            ));
            let failed = conn.execute(fail).await?;
            let rejected = conn.reject_unknown_statuses().await?;
            Ok(Reclaimed {
                requeued,
                failed,
                rejected,
            })
        })
        .await
    }

    /// Inside the caller's transaction: (id, attempts) of up to 1,000 claims taken
    /// before `claimed_before` or with no valid claim time, locked on MySQL.
    async fn expired_claims(
        &mut self,
        claimed_before: NaiveDateTime,
    ) -> QueryResult<Vec<(i64, i32)>> {
        // A claim time the client wrote may be NULL or, on SQLite, text
        // that is no time at all: such a claim has no lease to wait for.
        let no_time = match self.backend() {
            Backend::Mysql => "claimed_at IS NULL",
            Backend::Sqlite => "(claimed_at IS NULL OR julianday(claimed_at) IS NULL)",
        };
        let query = table
            .filter(tr::status.eq(CLAIMED))
            .filter(tr::claimed_at.lt(claimed_before).or(sql::<Bool>(no_time)))
            // Served by (status, id): only claims in flight are 'claimed'.
            .order(tr::id.asc())
            .limit(1000)
            .select((tr::id, tr::attempts));
        // SKIP LOCKED: a claim whose daemon is inside its grant
        // transaction right now is not expired, whatever its age.
        self.load_either(query.clone().for_update().skip_locked(), query)
            .await
    }

    /// Rejects (at most 1,000 of) the requests whose status is none of the daemon's statuses:
    /// a client set it, and no stage would ever take such a row up.
    pub async fn reject_unknown_statuses(&mut self) -> QueryResult<usize> {
        let status = match self.backend() {
            Backend::Mysql => "CAST(status AS BINARY)",
            Backend::Sqlite => "CAST(status AS BLOB)",
        };
        // Served by (status, id): the known statuses are skipped as ranges.
        let unknown = table
            .filter(tr::status.ne_all(STATUSES))
            .limit(1000)
            .select((tr::id, sql::<Nullable<Binary>>(status)));
        let rows: Vec<(i64, Option<Vec<u8>>)> = self.load(unknown).await?;
        for (id, value) in &rows {
            let value = value
                .as_deref()
                .map(|v| format!("{:?}", String::from_utf8_lossy(v)))
                .unwrap_or_else(|| "NULL".into());
            let reason = format!(
                "request {id}: status: {value} is not a status the daemon knows; insert requests with status 'queued' (or leave it out)"
            );
            let reject = diesel::update(table.filter(tr::id.eq(id))).set((
                tr::status.eq(RequestStatus::Rejected.as_str()),
                tr::error.eq(reason),
                tr::claim_token.eq(None::<i64>),
                tr::processed_at.eq(super::now()),
            ));
            self.execute(reject).await?;
        }
        Ok(rows.len())
    }

    /// Inserts requests (the demo and benchmarks).
    pub async fn enqueue(&mut self, rows: &[NewRequest]) -> QueryResult<usize> {
        self.insert_all::<_, NewRequest>(table, rows).await
    }

    /// Queued requests and the creation time of the oldest one.
    pub async fn queue_depth(&mut self) -> QueryResult<(i64, Option<NaiveDateTime>)> {
        // The oldest *valid* time: a zero or malformed created_at (rejected at
        // the next claim) must not fail the gauges' read.
        let oldest = match self.backend() {
            Backend::Mysql => {
                "CAST(MIN(CASE WHEN created_at >= '1000-01-01' THEN created_at END) AS BINARY)"
            }
            Backend::Sqlite => {
                "CAST(MIN(CASE WHEN julianday(created_at) IS NOT NULL THEN created_at END) AS BLOB)"
            }
        };
        let query = table
            .filter(tr::status.eq(QUEUED))
            .select((diesel::dsl::count_star(), sql::<Nullable<Binary>>(oldest)));
        let (count, oldest): (i64, Option<Vec<u8>>) = self.first(query).await?;
        Ok((count, oldest.as_deref().and_then(parse_time)))
    }

    /// Requests counted by status and outcome.
    pub async fn count_by_outcome(&mut self) -> QueryResult<Vec<(String, Option<String>, i64)>> {
        // As bytes: a status or outcome a client wrote need not be UTF-8.
        let (status, outcome) = match self.backend() {
            Backend::Mysql => ("CAST(status AS BINARY)", "CAST(outcome AS BINARY)"),
            Backend::Sqlite => ("CAST(status AS BLOB)", "CAST(outcome AS BLOB)"),
        };
        let query = table
            .group_by((tr::status, tr::outcome))
            .select((
                sql::<Nullable<Binary>>(status),
                sql::<Nullable<Binary>>(outcome),
                diesel::dsl::count_star(),
            ))
            .order((tr::status, tr::outcome));
        let rows: Vec<(Bytes, Bytes, i64)> = self.load(query).await?;
        let lossy = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        Ok(rows
            .into_iter()
            .map(|(s, o, n)| (s.map(lossy).unwrap_or_default(), o.map(lossy), n))
            .collect())
    }
}
