//! `trigger_requests`: the intake queue. Claims, fencing, final statuses and lease
//! recovery.

use std::collections::HashMap;
use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use diesel::dsl::sql;
use diesel::sql_types::{BigInt, Binary, Bool, Nullable};

use super::prepared::{in_list, Cached};
use super::schema::trigger_requests::dsl as tr;
use super::schema::trigger_requests::table;
use super::{backend, insert_all, write_transaction, MysqlConn, QueryResult, SqliteConn};
use crate::domain::{Outcome, RequestStatus, MAX_ATTRIBUTES_LEN, MAX_KEY_LEN};

/// A claimed request as the client wrote it, read defensively: text as bytes (a key
/// column cut after [`KEY_PREFIX`] bytes), `attributes` only when it is no longer than
/// [`MAX_ATTRIBUTES_LEN`] (its length always), and `created_at` as the text the
/// database renders it as. Nothing a client can write makes this row fail to load;
/// intake decides what of it is valid, and rejects the rest by id and column.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct QueuedRequest {
    /// Row id.
    pub id: i64,
    /// The client's idempotency key (at most [`KEY_PREFIX`] bytes of it).
    pub request_key: Option<Vec<u8>>,
    /// The user (at most [`KEY_PREFIX`] bytes of it).
    pub user_id: Option<Vec<u8>>,
    /// The event (at most [`KEY_PREFIX`] bytes of it).
    pub event: Option<Vec<u8>>,
    /// The length of `attributes` in bytes, `None` when it is NULL.
    pub attributes_len: Option<i64>,
    /// The attributes JSON text, when no longer than [`MAX_ATTRIBUTES_LEN`].
    pub attributes: Option<Vec<u8>>,
    /// `created_at` as text (`YYYY-MM-DD HH:MM:SS[.ffffff]` when it is a valid time).
    pub created_at: Option<Vec<u8>>,
}

impl QueuedRequest {
    /// A row from values already read as text (dry runs replaying recorded requests).
    pub fn from_text(
        id: i64,
        (request_key, user_id, event): (&str, &str, &str),
        attributes: Option<&str>,
        created_at: NaiveDateTime,
    ) -> Self {
        let bytes = |s: &str| Some(s.as_bytes().to_vec());
        Self {
            id,
            request_key: bytes(request_key),
            user_id: bytes(user_id),
            event: bytes(event),
            attributes_len: attributes.map(|a| a.len() as i64),
            attributes: attributes.and_then(bytes),
            created_at: bytes(&created_at.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        }
    }
}

/// A time as the database renders it as text (MariaDB `2026-12-02 16:15:54.123456`,
/// SQLite whatever was stored): `None` for a zero date or anything else that is not a
/// valid time.
pub fn parse_time(bytes: &[u8]) -> Option<NaiveDateTime> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_end_matches('Z');
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
}

/// How many bytes of a key column (`request_key`, `user_id`, `event`) are read: one
/// more than the longest valid value, so that a longer one is seen to be too long.
pub const KEY_PREFIX: usize = MAX_KEY_LEN + 1;

/// The columns of [`QueuedRequest`], as each backend reads them defensively. Lengths
/// are bytes on both (MySQL's `LENGTH`, SQLite's `octet_length`).
macro_rules! queued_columns {
    (mysql) => {
        concat!(
            "id, SUBSTRING(CAST(request_key AS BINARY), 1, 192), ",
            "SUBSTRING(CAST(user_id AS BINARY), 1, 192), ",
            "SUBSTRING(CAST(event AS BINARY), 1, 192), LENGTH(attributes), ",
            "CASE WHEN LENGTH(attributes) <= 16384 THEN CAST(attributes AS BINARY) END, ",
            "CAST(created_at AS BINARY)"
        )
    };
    // `octet_length` reads a value's size from its record header without loading it,
    // so a 4 MB value is never brought into memory; a key column longer than 191 bytes
    // is read as 192 zero bytes, which intake sees as too long.
    (sqlite) => {
        concat!(
            "id, CASE WHEN octet_length(request_key) < 192 THEN CAST(request_key AS BLOB) ",
            "ELSE zeroblob(192) END, ",
            "CASE WHEN octet_length(user_id) < 192 THEN CAST(user_id AS BLOB) ",
            "ELSE zeroblob(192) END, ",
            "CASE WHEN octet_length(event) < 192 THEN CAST(event AS BLOB) ",
            "ELSE zeroblob(192) END, octet_length(attributes), ",
            "CASE WHEN octet_length(attributes) <= 16384 ",
            "THEN CAST(attributes AS BLOB) END, CAST(created_at AS BLOB)"
        )
    };
}

type QueuedSql = (
    BigInt,
    Nullable<Binary>,
    Nullable<Binary>,
    Nullable<Binary>,
    Nullable<BigInt>,
    Nullable<Binary>,
    Nullable<Binary>,
);

// The literals above repeat these numbers: SQL text is built at compile time.
const _: () = assert!(KEY_PREFIX == 192 && MAX_ATTRIBUTES_LEN == 16384);

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

    /// Recovers claims taken before `claimed_before` (or with no valid claim time, as a
    /// client may write): back to the queue with their attempt count raised, or
    /// `failed` once they reach `max_attempts`. Rejects requests whose status is none
    /// of the daemon's statuses, naming the row and the value.
    fn reclaim_expired(
        &mut self,
        claimed_before: NaiveDateTime,
        max_attempts: i32,
    ) -> impl Future<Output = QueryResult<Reclaimed>> + Send;

    /// Rejects (at most 1,000 of) the requests whose status is none of the daemon's statuses:
    /// a client set it, and no stage would ever take such a row up.
    fn reject_unknown_statuses(&mut self) -> impl Future<Output = QueryResult<usize>> + Send;

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
                write_transaction!($backend, self, async |conn| {
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
                        Cached(claim).execute(conn).await?;
                        Ok(rows)
                })
            }

            async fn take_queued(&mut self, limit: i64) -> QueryResult<Vec<QueuedRequest>> {
                let query = table
                    .filter(tr::status.eq(QUEUED))
                    .order(tr::id.asc())
                    .limit(limit)
                    .select(sql::<QueuedSql>(queued_columns!($backend)));
                backend!($backend,
                    mysql => { Cached(query.for_update().skip_locked()).load(self).await },
                    sqlite => { Cached(query).load(self).await })
            }

            async fn lock_claimed(&mut self, ids: &[i64], token: i64) -> QueryResult<Vec<i64>> {
                let query = table
                    .filter(in_list(tr::id, ids.iter().copied()))
                    .filter(tr::claim_token.eq(token))
                    .filter(tr::status.eq(CLAIMED))
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
                        .filter(tr::status.eq(CLAIMED)),
                )
                .set((
                    tr::status.eq(QUEUED),
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
                write_transaction!($backend, self, async |conn| {
                        // A claim time the client wrote may be NULL or, on SQLite, text
                        // that is no time at all: such a claim has no lease to wait for.
                        let no_time = backend!($backend,
                            mysql => { "claimed_at IS NULL" },
                            sqlite => { "(claimed_at IS NULL OR julianday(claimed_at) IS NULL)" });
                        let query = table
                            .filter(tr::status.eq(CLAIMED))
                            .filter(tr::claimed_at.lt(claimed_before).or(sql::<Bool>(no_time)))
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
                                tr::status.eq(QUEUED),
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
                                tr::status.eq(RequestStatus::Failed.as_str()),
                                tr::attempts.eq(tr::attempts + 1),
                                tr::error.eq(reason),
                                tr::claim_token.eq(None::<i64>),
                                tr::processed_at.eq(super::now()),
                            ))
                            .execute(conn)
                            .await?;
                        let rejected = conn.reject_unknown_statuses().await?;
                        Ok(Reclaimed { requeued, failed, rejected })
                })
            }

            async fn reject_unknown_statuses(&mut self) -> QueryResult<usize> {
                let status = backend!($backend,
                    mysql => { "CAST(status AS BINARY)" },
                    sqlite => { "CAST(status AS BLOB)" });
                // Served by (status, id): the known statuses are skipped as ranges.
                let rows: Vec<(i64, Option<Vec<u8>>)> = table
                    .filter(tr::status.ne_all(STATUSES))
                    .limit(1000)
                    .select((tr::id, sql::<Nullable<Binary>>(status)))
                    .load(self)
                    .await?;
                for (id, value) in &rows {
                    let value = value
                        .as_deref()
                        .map(|v| format!("{:?}", String::from_utf8_lossy(v)))
                        .unwrap_or_else(|| "NULL".into());
                    let reason = format!(
                        "request {id}: status: {value} is not a status the daemon knows; insert requests with status 'queued' (or leave it out)"
                    );
                    diesel::update(table.filter(tr::id.eq(id)))
                        .set((
                            tr::status.eq(RequestStatus::Rejected.as_str()),
                            tr::error.eq(reason),
                            tr::claim_token.eq(None::<i64>),
                            tr::processed_at.eq(super::now()),
                        ))
                        .execute(self)
                        .await?;
                }
                Ok(rows.len())
            }

            async fn enqueue(&mut self, rows: &[NewRequest]) -> QueryResult<usize> {
                insert_all!($backend, self, table, rows)
            }

            async fn queue_depth(&mut self) -> QueryResult<(i64, Option<NaiveDateTime>)> {
                // The oldest *valid* time: a zero or malformed created_at (rejected at
                // the next claim) must not fail the gauges' read.
                let oldest = backend!($backend,
                    mysql => { "CAST(MIN(CASE WHEN created_at >= '1000-01-01' THEN created_at END) AS BINARY)" },
                    sqlite => { "CAST(MIN(CASE WHEN julianday(created_at) IS NOT NULL THEN created_at END) AS BLOB)" });
                let (count, oldest): (i64, Option<Vec<u8>>) = table
                    .filter(tr::status.eq(QUEUED))
                    .select((diesel::dsl::count_star(), sql::<Nullable<Binary>>(oldest)))
                    .first(self)
                    .await?;
                Ok((count, oldest.as_deref().and_then(parse_time)))
            }

            async fn count_by_outcome(&mut self) -> QueryResult<Vec<(String, Option<String>, i64)>> {
                // As bytes: a status or outcome a client wrote need not be UTF-8.
                let (status, outcome) = backend!($backend,
                    mysql => { ("CAST(status AS BINARY)", "CAST(outcome AS BINARY)") },
                    sqlite => { ("CAST(status AS BLOB)", "CAST(outcome AS BLOB)") });
                let rows: Vec<(Option<Vec<u8>>, Option<Vec<u8>>, i64)> = table
                    .group_by((tr::status, tr::outcome))
                    .select((
                        sql::<Nullable<Binary>>(status),
                        sql::<Nullable<Binary>>(outcome),
                        diesel::dsl::count_star(),
                    ))
                    .order((tr::status, tr::outcome))
                    .load(self)
                    .await?;
                let lossy = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                Ok(rows
                    .into_iter()
                    .map(|(s, o, n)| (s.map(lossy).unwrap_or_default(), o.map(lossy), n))
                    .collect())
            }
        }
    };
}

impl_requests!(MysqlConn, mysql);
impl_requests!(SqliteConn, sqlite);
