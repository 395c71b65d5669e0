//! Recording attempts: the deliveries' new state and the `delivery_attempts` log.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Integer, Nullable, Text, Timestamp};

use super::{DELIVERED, PENDING};
use crate::domain::DeliveryStatus;
use crate::store::prepared::{in_list, padded_chunks, Cached};
use crate::store::schema::deliveries::dsl as d;
use crate::store::schema::{deliveries, delivery_attempts};
use crate::store::{Conn, QueryResult};

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

/// What `deliveries.delivery_room` holds until its row is marked delivered (the
/// column's default): what marking a row held under a token delivered adds.
pub const DELIVERY_ROOM_BYTES: usize = 6;

// 'delivered' is longer than 'pending'; `last_status` (INT) and `delivered_at` are
// filled; `hold_token` (BIGINT) is cleared.
const _: () = assert!(
    DELIVERY_ROOM_BYTES + 8
        == DeliveryStatus::Delivered.as_str().len() - DeliveryStatus::Pending.as_str().len()
            + 4
            + 8
);

/// Marks the delivered records' rows delivered in one statement, each with its own
/// HTTP status and time, each only while it is held under the record's token (only a
/// `pending` row carries one: every change of status clears it). The filter names
/// `webhook_id` and the token only, so that the unique index on `webhook_id` serves it:
/// with `status = 'pending'` beside it, MariaDB may scan the due index instead, across
/// every pending row. Rows are found by `webhook_id`, which a hand-off also knows. The
/// list is padded to a power of two (repeating the last record changes nothing) so that
/// the statement, kept prepared, takes one of a few shapes. Each row gives up its
/// `delivery_room` ([`DELIVERY_ROOM_BYTES`]), so that on MariaDB a delivery handed off
/// with its hold token keeps its record's size (see the migration `record_rooms`).
struct MarkDelivered<'r>(Vec<&'r AttemptRecord>);

impl<DB> QueryFragment<DB> for MarkDelivered<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<Integer> + HasSqlType<BigInt>,
    DB: HasSqlType<Timestamp>,
    String: ToSql<Text, DB>,
    Option<i32>: ToSql<Nullable<Integer>, DB>,
    NaiveDateTime: ToSql<Timestamp, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let records = &self.0[..];
        out.push_sql(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, \
             last_error = NULL, hold_token = NULL, delivery_room = NULL, \
             last_status = CASE webhook_id",
        );
        when_then::<_, Nullable<Integer>, _>(&mut out, records, |r| &r.status_code)?;
        out.push_sql(" END, delivered_at = CASE webhook_id");
        when_then::<_, Timestamp, _>(&mut out, records, |r| &r.attempted_at)?;
        out.push_sql(" END WHERE webhook_id IN (");
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_bind_param::<Text, _>(&r.webhook_id)?;
        }
        out.push_sql(") AND hold_token = CASE webhook_id");
        when_then::<_, BigInt, _>(&mut out, records, |r| &r.hold_token)?;
        out.push_sql(" END");
        Ok(())
    }
}

/// ` WHEN ? THEN ?` for each record: its `webhook_id`, then what `then` takes from it.
fn when_then<'b, DB, T, U>(
    out: &mut AstPass<'_, 'b, DB>,
    records: &'b [&'b AttemptRecord],
    then: fn(&AttemptRecord) -> &U,
) -> QueryResult<()>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<T>,
    String: ToSql<Text, DB>,
    U: ToSql<T, DB> + 'b,
{
    for r in records {
        out.push_sql(" WHEN ");
        out.push_bind_param::<Text, _>(&r.webhook_id)?;
        out.push_sql(" THEN ");
        out.push_bind_param::<T, _>(then(r))?;
    }
    Ok(())
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

/// Recording attempts, and the steps of [`Conn::record_attempts`], each run inside its
/// transaction.
impl Conn {
    /// Records attempts, each only while its row is `pending` and still held under the
    /// record's token (a late result of a hold that ran out changes nothing): the
    /// deliveries' new state, and a `delivery_attempts` row for every attempt except a
    /// delivery at the first attempt, which its own row describes whole (`attempts` =
    /// 1, its own `last_status` and `delivered_at`). Returns how many records were
    /// refused because their hold was gone.
    pub async fn record_attempts(&mut self, records: &[AttemptRecord]) -> QueryResult<usize> {
        if records.is_empty() {
            return Ok(0);
        }
        // The common flush, every delivery through at the first attempt, is one
        // statement: no transaction of its own to open and commit.
        if records
            .iter()
            .all(|r| r.status == DeliveryStatus::Delivered && r.attempt == 1)
        {
            let (sent, changed) = self.mark_delivered(records).await?;
            return Ok(sent.saturating_sub(changed));
        }
        self.transaction(async |conn| {
            let (sent, changed) = conn.mark_delivered(records).await?;
            let (refused, mut logged) = conn.record_retries(records).await?;
            logged.extend(conn.delivered_later(records).await?);
            if !logged.is_empty() {
                conn.log_attempts(&logged).await?;
            }
            Ok(sent.saturating_sub(changed) + refused)
        })
        .await
    }

    /// Marks the delivered records' rows delivered ([`MarkDelivered`]), one statement
    /// per padded chunk; returns how many records were delivered and how many rows
    /// changed.
    async fn mark_delivered(&mut self, records: &[AttemptRecord]) -> QueryResult<(usize, usize)> {
        let delivered: Vec<&AttemptRecord> = records
            .iter()
            .filter(|r| r.status == DeliveryStatus::Delivered)
            .collect();
        let mut changed = 0;
        for chunk in padded_chunks(&delivered) {
            changed += self.execute(Cached(MarkDelivered(chunk))).await?;
        }
        Ok((delivered.len(), changed))
    }

    /// Records retries, dead deliveries and 410s under their holds; returns how many a
    /// hold no longer covered and the records that were recorded.
    async fn record_retries<'r>(
        &mut self,
        records: &'r [AttemptRecord],
    ) -> QueryResult<(usize, Vec<&'r AttemptRecord>)> {
        let (mut refused, mut logged) = (0, Vec::new());
        for r in records
            .iter()
            .filter(|r| r.status != DeliveryStatus::Delivered)
        {
            let held = deliveries::table
                .filter(d::webhook_id.eq(&r.webhook_id))
                .filter(d::status.eq(PENDING))
                .filter(d::hold_token.eq(r.hold_token));
            // A record without a time is held by its disabled channel:
            // due at once when the channel is enabled.
            let at = r.next_attempt_at.unwrap_or(r.attempted_at);
            let retry = diesel::update(held).set((
                d::status.eq(r.status.as_str()),
                d::attempts.eq(r.attempt),
                d::last_status.eq(r.status_code),
                d::last_error.eq(r.error.as_deref()),
                d::next_attempt_at.eq(at),
                d::hold_token.eq(None::<i64>),
            ));
            let changed = self.execute(retry).await?;
            if changed == 0 {
                refused += 1;
            } else {
                logged.push(r);
            }
        }
        Ok((refused, logged))
    }

    /// The deliveries at a later attempt that the flush recorded (their attempts are
    /// logged too).
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
        let query = deliveries::table
            .filter(in_list(d::webhook_id, ids))
            .filter(d::status.eq(DELIVERED))
            .select((d::webhook_id, d::attempts));
        let now_delivered: Vec<(String, i32)> = self.load(query).await?;
        Ok(later
            .into_iter()
            .filter(|r| {
                now_delivered
                    .iter()
                    .any(|(w, a)| *w == r.webhook_id && *a == r.attempt)
            })
            .collect())
    }

    /// Logs the recorded attempts in `delivery_attempts`.
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
            let query = deliveries::table
                .filter(in_list(d::webhook_id, unknown))
                .select((d::webhook_id, d::id));
            let ids: Vec<(String, i64)> = self.load(query).await?;
            ids.into_iter().collect()
        };
        let rows = attempt_rows(logged, &ids);
        self.insert_all::<_, AttemptRow>(delivery_attempts::table, &rows)
            .await
    }
}
