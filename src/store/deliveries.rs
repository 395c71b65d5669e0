//! `deliveries` (the outbox), `delivery_attempts` and `channel_states`.

use std::collections::HashMap;
use std::future::Future;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::prepared::{in_list, Cached};
use super::schema::channel_states::dsl as cs;
use super::schema::deliveries::dsl as d;
use super::schema::{channel_states, deliveries, delivery_attempts};
use super::{backend, insert_all, write_transaction, MysqlConn, QueryResult, SqliteConn};
use crate::domain::DeliveryStatus;

const PENDING: &str = DeliveryStatus::Pending.as_str();
const DELIVERED: &str = DeliveryStatus::Delivered.as_str();
const DEAD: &str = DeliveryStatus::Dead.as_str();

/// An outbox row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = deliveries, treat_none_as_default_value = false)]
pub struct NewDelivery {
    /// The `webhook-id`, the same on every attempt.
    pub webhook_id: String,
    /// The channel.
    pub channel: String,
    /// `coupon.granted`, `coupon.rotated`, …
    pub event_type: String,
    /// The grant, for `coupon.granted`.
    pub grant_id: Option<i64>,
    /// The body, fixed at creation.
    pub payload: String,
    /// When it is first due.
    pub next_attempt_at: NaiveDateTime,
    /// When it was created.
    pub created_at: NaiveDateTime,
    /// The hold of a row handed off to this daemon's dispatcher; `None` for a row due
    /// for any dispatcher.
    pub hold_token: Option<i64>,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub struct DueDelivery {
    /// Row id.
    pub id: i64,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The channel.
    pub channel: String,
    /// The body.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// The result of one attempt, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The delivery's row id, when known (a hand-off knows only its `webhook_id`).
    pub delivery_id: Option<i64>,
    /// The delivery's `webhook-id`, which finds its row.
    pub webhook_id: String,
    /// The hold the attempt was made under: the result is recorded only while the row
    /// still carries it.
    pub hold_token: i64,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    /// `delivered`, `pending` (retry at `next_attempt_at`, or held by its disabled
    /// channel) or `dead`.
    pub status: DeliveryStatus,
    /// For a retry: when. A `pending` record without one is held by its channel,
    /// which a 410 Gone disabled, until `channels enable`.
    pub next_attempt_at: Option<NaiveDateTime>,
    /// The partner's HTTP status, if it answered.
    pub status_code: Option<i32>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// When the attempt was made.
    pub attempted_at: NaiveDateTime,
    /// How long it took.
    pub duration_ms: i64,
}

/// A delivery as operators see it (`couponsd deliveries list`).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub struct DeliveryRow {
    /// Row id.
    pub id: i64,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The channel.
    pub channel: String,
    /// The event type.
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// The partner's last HTTP status.
    pub last_status: Option<i32>,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: NaiveDateTime,
}

/// Which dead deliveries to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay<'a> {
    /// The delivery with this id.
    One(i64),
    /// Every dead delivery.
    AllDead,
    /// Every dead delivery of this channel.
    Channel(&'a str),
}

/// A disabled channel: when and why.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct DisabledChannel {
    /// The channel.
    pub channel: String,
    /// When it was disabled.
    pub disabled_at: Option<NaiveDateTime>,
    /// The partner's answer.
    pub reason: Option<String>,
}

#[derive(Clone, Insertable)]
#[diesel(table_name = delivery_attempts, treat_none_as_default_value = false)]
struct AttemptRow {
    delivery_id: i64,
    attempt: i32,
    attempted_at: NaiveDateTime,
    status_code: Option<i32>,
    error: Option<String>,
    duration_ms: i64,
}

/// Operations on the outbox.
pub trait Deliveries {
    /// Inserts outbox rows in one statement.
    fn record_deliveries(
        &mut self,
        rows: &[NewDelivery],
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Claims up to `limit` deliveries of `channel` due at `hold.0` in a transaction of
    /// its own, holding them under `token` until `hold.1` so that no other dispatcher
    /// sends them meanwhile.
    fn claim_due(
        &mut self,
        channel: &str,
        limit: i64,
        hold: (NaiveDateTime, NaiveDateTime),
        token: i64,
    ) -> impl Future<Output = QueryResult<Vec<DueDelivery>>> + Send;

    /// Records attempts, each only while its row is `pending` and still held under the
    /// record's token (a late result of a hold that ran out changes nothing): the
    /// deliveries' new state, and a `delivery_attempts` row for every attempt except a
    /// delivery at the first attempt, which its own row describes whole (`attempts` =
    /// 1, its own `last_status` and `delivered_at`). Returns how many records were
    /// refused because their hold was gone.
    fn record_attempts(
        &mut self,
        records: &[AttemptRecord],
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Marks a channel disabled (its partner answered 410 Gone) and writes `alert`
    /// (the ops event, if any) in the same transaction. Returns false, writing
    /// nothing, when the channel was disabled already.
    fn disable_channel(
        &mut self,
        channel: &str,
        reason: &str,
        now: NaiveDateTime,
        alert: Option<NewDelivery>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Pending deliveries counted by channel.
    fn pending_by_channel(
        &mut self,
    ) -> impl Future<Output = QueryResult<Vec<(String, i64)>>> + Send;

    /// The pending deliveries of each disabled channel: held until it is enabled.
    fn held_deliveries(&mut self) -> impl Future<Output = QueryResult<Vec<(String, i64)>>> + Send;

    /// The channels that are disabled.
    fn disabled_channels(&mut self) -> impl Future<Output = QueryResult<Vec<String>>> + Send;

    /// Deliveries counted by status.
    fn count_deliveries(
        &mut self,
    ) -> impl Future<Output = QueryResult<Vec<(DeliveryStatus, i64)>>> + Send;

    /// The newest `limit` deliveries (only the dead ones with `dead_only`), newest first.
    fn list_deliveries(
        &mut self,
        dead_only: bool,
        limit: i64,
    ) -> impl Future<Output = QueryResult<Vec<DeliveryRow>>> + Send;

    /// The dead deliveries `which` selects.
    fn dead_deliveries(
        &mut self,
        which: Replay<'_>,
    ) -> impl Future<Output = QueryResult<Vec<DeliveryRow>>> + Send;

    /// Sends dead deliveries again: back to `pending`, due `now`, with a fresh count of
    /// attempts. The `webhook-id` and the body stay as they were, so a partner that got
    /// one before recognises it. Returns the number of deliveries replayed.
    fn replay_dead(
        &mut self,
        which: Replay<'_>,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// The disabled channels, with when and why.
    fn disabled_channel_states(
        &mut self,
    ) -> impl Future<Output = QueryResult<Vec<DisabledChannel>>> + Send;

    /// Enables a channel disabled by a 410 and makes the deliveries it held due
    /// `now` (nobody holds them; their `webhook-id`s are unchanged). Returns `None`
    /// when it was not disabled, else how many deliveries were released.
    fn enable_channel(
        &mut self,
        channel: &str,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<Option<usize>>> + Send;
}

/// Marks the delivered records' rows delivered in one statement, each with its own
/// HTTP status and time, each only while it is held under the record's token (only a
/// `pending` row carries one: every change of status clears it). The filter names
/// `webhook_id` and the token only, so that the unique index on `webhook_id` serves it:
/// with `status = 'pending'` beside it, MariaDB may scan the due index instead, across
/// every pending row. Rows are found by `webhook_id`, which a hand-off also knows. The
/// list is padded to a power of two (repeating the last record changes nothing) so that
/// the statement, kept prepared, takes one of a few shapes.
fn mark_delivered_sql(n: usize) -> String {
    let when = |then: &str| " WHEN ? THEN ".to_owned() + then;
    let cases = |then: &str| when(then).repeat(n);
    format!(
        "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, \
         last_error = NULL, hold_token = NULL, \
         last_status = CASE webhook_id{} END, delivered_at = CASE webhook_id{} END \
         WHERE webhook_id IN ({}) AND hold_token = CASE webhook_id{} END",
        cases("?"),
        cases("?"),
        vec!["?"; n].join(", "),
        cases("?"),
    )
}

macro_rules! mark_delivered {
    ($backend:ty, $conn:expr, $records:expr) => {{
        use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamp};
        let delivered: Vec<&AttemptRecord> = $records
            .iter()
            .filter(|r| r.status == DeliveryStatus::Delivered)
            .collect();
        let mut changed = 0;
        for chunk in super::prepared::padded_chunks(&delivered) {
            let n = chunk.len();
            let mut query = diesel::sql_query(mark_delivered_sql(n)).into_boxed::<$backend>();
            for r in &chunk {
                query = query
                    .bind::<Text, _>(r.webhook_id.clone())
                    .bind::<Nullable<Integer>, _>(r.status_code);
            }
            for r in &chunk {
                query = query
                    .bind::<Text, _>(r.webhook_id.clone())
                    .bind::<Timestamp, _>(r.attempted_at);
            }
            for r in &chunk {
                query = query.bind::<Text, _>(r.webhook_id.clone());
            }
            for r in &chunk {
                query = query
                    .bind::<Text, _>(r.webhook_id.clone())
                    .bind::<BigInt, _>(r.hold_token);
            }
            changed += Cached(query).execute(&mut *$conn).await?;
        }
        diesel::QueryResult::Ok((delivered.len(), changed))
    }};
}

/// The steps of [`Deliveries::record_attempts`] beyond the delivered flush, each run
/// inside its transaction.
trait AttemptSteps {
    /// Records retries, dead deliveries and 410s under their holds; returns how many a
    /// hold no longer covered and the records that were recorded.
    fn record_retries<'r>(
        &mut self,
        records: &'r [AttemptRecord],
    ) -> impl Future<Output = QueryResult<(usize, Vec<&'r AttemptRecord>)>> + Send;

    /// The deliveries at a later attempt that the flush recorded (their attempts are
    /// logged too).
    fn delivered_later<'r>(
        &mut self,
        records: &'r [AttemptRecord],
    ) -> impl Future<Output = QueryResult<Vec<&'r AttemptRecord>>> + Send;

    /// Logs the recorded attempts in `delivery_attempts`.
    fn log_attempts(
        &mut self,
        logged: &[&AttemptRecord],
    ) -> impl Future<Output = QueryResult<usize>> + Send;
}

/// The `delivery_attempts` rows of recorded attempts; a hand-off's row id comes from
/// `ids` (by webhook id).
fn attempt_rows(logged: &[&AttemptRecord], ids: &HashMap<String, i64>) -> Vec<AttemptRow> {
    logged
        .iter()
        .filter_map(|r| {
            Some(AttemptRow {
                delivery_id: r.delivery_id.or_else(|| ids.get(&r.webhook_id).copied())?,
                attempt: r.attempt,
                attempted_at: r.attempted_at,
                status_code: r.status_code,
                error: r.error.clone(),
                duration_ms: r.duration_ms,
            })
        })
        .collect()
}

macro_rules! impl_deliveries {
    ($conn:ty, $backend:ident, $backend_ty:ty) => {
        impl Deliveries for $conn {
            async fn record_deliveries(&mut self, rows: &[NewDelivery]) -> QueryResult<usize> {
                if rows.is_empty() {
                    return Ok(0);
                }
                insert_all!($backend, self, deliveries::table, rows)
            }

            async fn claim_due(
                &mut self,
                channel: &str,
                limit: i64,
                (now, lease_until): (NaiveDateTime, NaiveDateTime),
                token: i64,
            ) -> QueryResult<Vec<DueDelivery>> {
                write_transaction!($backend, self, async |conn| {
                        // Served by ix_deliveries_due (status, channel, next_attempt_at).
                        let query = deliveries::table
                            .filter(d::status.eq(PENDING))
                            .filter(d::channel.eq(channel))
                            .filter(d::next_attempt_at.le(now))
                            .order(d::next_attempt_at.asc())
                            .limit(limit)
                            .select(DueDelivery::as_select());
                        let due: Vec<DueDelivery> = backend!($backend,
                            mysql => { query.for_update().skip_locked().load(conn).await? },
                            sqlite => { query.load(conn).await? });
                        if !due.is_empty() {
                            let ids: Vec<i64> = due.iter().map(|r| r.id).collect();
                            let hold = diesel::update(deliveries::table.filter(in_list(d::id, ids)))
                                .set((d::next_attempt_at.eq(lease_until), d::hold_token.eq(token)));
                            Cached(hold).execute(conn).await?;
                        }
                        Ok(due)
                })
            }

            async fn record_attempts(&mut self, records: &[AttemptRecord]) -> QueryResult<usize> {
                if records.is_empty() {
                    return Ok(0);
                }
                // The common flush, every delivery through at the first attempt, is one
                // statement: no transaction of its own to open and commit.
                if records.iter().all(|r| r.status == DeliveryStatus::Delivered && r.attempt == 1) {
                    let (sent, changed) = mark_delivered!($backend_ty, self, records)?;
                    return Ok(sent.saturating_sub(changed));
                }
                self.transaction(async |conn| {
                        let (sent, changed) = mark_delivered!($backend_ty, conn, records)?;
                        let (refused, mut logged) = conn.record_retries(records).await?;
                        logged.extend(conn.delivered_later(records).await?);
                        if !logged.is_empty() {
                            conn.log_attempts(&logged).await?;
                        }
                        Ok(sent.saturating_sub(changed) + refused)
                })
                .await
            }

            async fn disable_channel(
                &mut self,
                channel: &str,
                reason: &str,
                now: NaiveDateTime,
                alert: Option<NewDelivery>,
            ) -> QueryResult<bool> {
                let disabled = write_transaction!($backend, self, async |conn| {
                        let known: i64 = channel_states::table
                            .filter(cs::channel.eq(channel))
                            .filter(cs::disabled_at.is_not_null())
                            .count()
                            .get_result(conn)
                            .await?;
                        if known > 0 {
                            return Ok(false);
                        }
                        diesel::delete(channel_states::table.find(channel)).execute(conn).await?;
                        diesel::insert_into(channel_states::table)
                            .values((cs::channel.eq(channel), cs::disabled_at.eq(now), cs::reason.eq(reason)))
                            .execute(conn)
                            .await?;
                        if let Some(alert) = &alert {
                            diesel::insert_into(deliveries::table).values(alert).execute(conn).await?;
                        }
                        Ok(true)
                });
                match disabled {
                    // Another dispatcher disabled it at the same moment: its alert stands.
                    Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
                    other => other,
                }
            }

            async fn pending_by_channel(&mut self) -> QueryResult<Vec<(String, i64)>> {
                deliveries::table
                    .filter(d::status.eq(PENDING))
                    .group_by(d::channel)
                    .select((d::channel, diesel::dsl::count_star()))
                    .load(self)
                    .await
            }

            async fn held_deliveries(&mut self) -> QueryResult<Vec<(String, i64)>> {
                let disabled = channel_states::table
                    .filter(cs::disabled_at.is_not_null())
                    .select(cs::channel);
                deliveries::table
                    .filter(d::status.eq(PENDING))
                    .filter(d::channel.eq_any(disabled))
                    .group_by(d::channel)
                    .select((d::channel, diesel::dsl::count_star()))
                    .load(self)
                    .await
            }

            async fn disabled_channels(&mut self) -> QueryResult<Vec<String>> {
                channel_states::table
                    .filter(cs::disabled_at.is_not_null())
                    .select(cs::channel)
                    .load(self)
                    .await
            }

            async fn count_deliveries(&mut self) -> QueryResult<Vec<(DeliveryStatus, i64)>> {
                let counts: Vec<(String, i64)> = deliveries::table
                    .group_by(d::status)
                    .select((d::status, diesel::dsl::count_star()))
                    .load(self)
                    .await?;
                Ok(counts
                    .into_iter()
                    .filter_map(|(status, n)| Some((DeliveryStatus::parse(&status)?, n)))
                    .collect())
            }

            async fn list_deliveries(&mut self, dead_only: bool, limit: i64) -> QueryResult<Vec<DeliveryRow>> {
                let query = deliveries::table
                    .order(d::id.desc())
                    .limit(limit)
                    .select(DeliveryRow::as_select());
                if dead_only {
                    query.filter(d::status.eq(DEAD)).load(self).await
                } else {
                    query.load(self).await
                }
            }

            async fn dead_deliveries(&mut self, which: Replay<'_>) -> QueryResult<Vec<DeliveryRow>> {
                let dead = deliveries::table
                    .filter(d::status.eq(DEAD))
                    .order(d::id.asc())
                    .select(DeliveryRow::as_select());
                match which {
                    Replay::One(id) => dead.filter(d::id.eq(id)).load(self).await,
                    Replay::AllDead => dead.load(self).await,
                    Replay::Channel(channel) => dead.filter(d::channel.eq(channel)).load(self).await,
                }
            }

            async fn replay_dead(&mut self, which: Replay<'_>, now: NaiveDateTime) -> QueryResult<usize> {
                let dead = deliveries::table.filter(d::status.eq(DEAD));
                let again = (
                    d::status.eq(PENDING),
                    d::attempts.eq(0),
                    d::next_attempt_at.eq(now),
                    d::hold_token.eq(None::<i64>),
                );
                match which {
                    Replay::One(id) => diesel::update(dead.filter(d::id.eq(id))).set(again).execute(self).await,
                    Replay::AllDead => diesel::update(dead).set(again).execute(self).await,
                    Replay::Channel(channel) => {
                        diesel::update(dead.filter(d::channel.eq(channel))).set(again).execute(self).await
                    }
                }
            }

            async fn disabled_channel_states(&mut self) -> QueryResult<Vec<DisabledChannel>> {
                channel_states::table
                    .filter(cs::disabled_at.is_not_null())
                    .order(cs::channel)
                    .select((cs::channel, cs::disabled_at, cs::reason))
                    .load(self)
                    .await
            }

            async fn enable_channel(&mut self, channel: &str, now: NaiveDateTime) -> QueryResult<Option<usize>> {
                self.transaction(async |conn| {
                        let removed = diesel::delete(channel_states::table.find(channel)).execute(conn).await?;
                        if removed == 0 {
                            return Ok(None);
                        }
                        // What was held: everything pending that no dispatcher holds (a
                        // hand-off's hold runs out on its own).
                        let held = deliveries::table
                            .filter(d::status.eq(PENDING))
                            .filter(d::channel.eq(channel))
                            .filter(d::hold_token.is_null());
                        let released = diesel::update(held).set(d::next_attempt_at.eq(now)).execute(conn).await?;
                        Ok(Some(released))
                })
                .await
            }
        }

        impl AttemptSteps for $conn {
            async fn record_retries<'r>(
                &mut self,
                records: &'r [AttemptRecord],
            ) -> QueryResult<(usize, Vec<&'r AttemptRecord>)> {
                let (mut refused, mut logged) = (0, Vec::new());
                for r in records.iter().filter(|r| r.status != DeliveryStatus::Delivered) {
                    let held = deliveries::table
                        .filter(d::webhook_id.eq(&r.webhook_id))
                        .filter(d::status.eq(PENDING))
                        .filter(d::hold_token.eq(r.hold_token));
                    // A record without a time is held by its disabled channel:
                    // due at once when the channel is enabled.
                    let at = r.next_attempt_at.unwrap_or(r.attempted_at);
                    let changed = diesel::update(held)
                        .set((
                            d::status.eq(r.status.as_str()),
                            d::attempts.eq(r.attempt),
                            d::last_status.eq(r.status_code),
                            d::last_error.eq(r.error.as_deref()),
                            d::next_attempt_at.eq(at),
                            d::hold_token.eq(None::<i64>),
                        ))
                        .execute(self)
                        .await?;
                    if changed == 0 {
                        refused += 1;
                    } else {
                        logged.push(r);
                    }
                }
                Ok((refused, logged))
            }

            async fn delivered_later<'r>(
                &mut self,
                records: &'r [AttemptRecord],
            ) -> QueryResult<Vec<&'r AttemptRecord>> {
                let later: Vec<&AttemptRecord> = records
                    .iter()
                    .filter(|r| r.status == DeliveryStatus::Delivered && r.attempt > 1)
                    .collect();
                if later.is_empty() {
                    return Ok(later);
                }
                let ids: Vec<&str> = later.iter().map(|r| r.webhook_id.as_str()).collect();
                let now_delivered: Vec<(String, i32)> = deliveries::table
                    .filter(in_list(d::webhook_id, ids))
                    .filter(d::status.eq(DELIVERED))
                    .select((d::webhook_id, d::attempts))
                    .load(self)
                    .await?;
                Ok(later
                    .into_iter()
                    .filter(|r| now_delivered.iter().any(|(w, a)| *w == r.webhook_id && *a == r.attempt))
                    .collect())
            }

            async fn log_attempts(&mut self, logged: &[&AttemptRecord]) -> QueryResult<usize> {
                // A hand-off knows its row by webhook_id only.
                let unknown: Vec<&str> = logged
                    .iter()
                    .filter(|r| r.delivery_id.is_none())
                    .map(|r| r.webhook_id.as_str())
                    .collect();
                let ids: HashMap<String, i64> = if unknown.is_empty() {
                    HashMap::new()
                } else {
                    deliveries::table
                        .filter(in_list(d::webhook_id, unknown))
                        .select((d::webhook_id, d::id))
                        .load::<(String, i64)>(self)
                        .await?
                        .into_iter()
                        .collect()
                };
                let rows = attempt_rows(logged, &ids);
                insert_all!($backend, self, delivery_attempts::table, &rows)
            }
        }
    };
}

impl_deliveries!(MysqlConn, mysql, diesel::mysql::Mysql);
impl_deliveries!(SqliteConn, sqlite, diesel::sqlite::Sqlite);
