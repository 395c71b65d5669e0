//! `deliveries` (the outbox), `delivery_attempts` and `channel_states`.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::prepared::{in_list, Cached};
use super::schema::channel_states::dsl as cs;
use super::schema::deliveries::dsl as d;
use super::schema::{channel_states, deliveries};
use super::{columns, Conn, QueryResult};
use crate::domain::DeliveryStatus;

mod attempts;

pub use attempts::{AttemptRecord, DELIVERY_ROOM_BYTES};

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

/// An outbox row as recorded, without its body: as operators see it (`couponsd
/// deliveries list`) and as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub struct DeliveryRecord {
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
    /// When the next attempt is due (while pending).
    pub next_attempt_at: NaiveDateTime,
    /// The partner's last HTTP status.
    pub last_status: Option<i32>,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: NaiveDateTime,
    /// When a partner accepted it.
    pub delivered_at: Option<NaiveDateTime>,
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

/// Operations on the outbox.
impl Conn {
    /// Inserts outbox rows in one statement.
    pub async fn record_deliveries(&mut self, rows: &[NewDelivery]) -> QueryResult<usize> {
        self.insert_all::<_, NewDelivery>(deliveries::table, rows)
            .await
    }

    /// Claims up to `limit` deliveries of `channel` due at `hold.0` in a transaction of
    /// its own, holding them under `token` until `hold.1` so that no other dispatcher
    /// sends them meanwhile.
    pub async fn claim_due(
        &mut self,
        channel: &str,
        limit: i64,
        (now, lease_until): (NaiveDateTime, NaiveDateTime),
        token: i64,
    ) -> QueryResult<Vec<DueDelivery>> {
        self.write_transaction(async |conn| {
            // Served by ix_deliveries_due (status, channel, next_attempt_at).
            let query = deliveries::table
                .filter(d::status.eq(PENDING))
                .filter(d::channel.eq(channel))
                .filter(d::next_attempt_at.le(now))
                .order(d::next_attempt_at.asc())
                .limit(limit)
                .select(columns::<DueDelivery>());
            let due: Vec<DueDelivery> = conn
                .load_either(query.for_update().skip_locked(), query)
                .await?;
            if !due.is_empty() {
                let ids: Vec<i64> = due.iter().map(|r| r.id).collect();
                let hold = diesel::update(deliveries::table.filter(in_list(d::id, ids)))
                    .set((d::next_attempt_at.eq(lease_until), d::hold_token.eq(token)));
                conn.execute(Cached(hold)).await?;
            }
            Ok(due)
        })
        .await
    }

    /// Marks a channel disabled (its partner answered 410 Gone) and writes `alert`
    /// (the ops event, if any) in the same transaction. Returns false, writing
    /// nothing, when the channel was disabled already.
    pub async fn disable_channel(
        &mut self,
        channel: &str,
        reason: &str,
        now: NaiveDateTime,
        alert: Option<NewDelivery>,
    ) -> QueryResult<bool> {
        let disabled = self
            .write_transaction(async |conn| {
                let known = channel_states::table
                    .filter(cs::channel.eq(channel))
                    .filter(cs::disabled_at.is_not_null())
                    .count();
                let known: i64 = conn.get_result(known).await?;
                if known > 0 {
                    return Ok(false);
                }
                conn.execute(diesel::delete(channel_states::table.find(channel)))
                    .await?;
                let state = (
                    cs::channel.eq(channel),
                    cs::disabled_at.eq(now),
                    cs::reason.eq(reason),
                );
                conn.execute(diesel::insert_into(channel_states::table).values(state))
                    .await?;
                if let Some(alert) = &alert {
                    conn.execute(diesel::insert_into(deliveries::table).values(alert))
                        .await?;
                }
                Ok(true)
            })
            .await;
        match disabled {
            // Another dispatcher disabled it at the same moment: its alert stands.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => Ok(false),
            other => other,
        }
    }

    /// Pending deliveries counted by channel.
    pub async fn pending_by_channel(&mut self) -> QueryResult<Vec<(String, i64)>> {
        let query = deliveries::table
            .filter(d::status.eq(PENDING))
            .group_by(d::channel)
            .select((d::channel, diesel::dsl::count_star()));
        self.load(query).await
    }

    /// The pending deliveries of each disabled channel: held until it is enabled.
    pub async fn held_deliveries(&mut self) -> QueryResult<Vec<(String, i64)>> {
        let disabled = channel_states::table
            .filter(cs::disabled_at.is_not_null())
            .select(cs::channel);
        let query = deliveries::table
            .filter(d::status.eq(PENDING))
            .filter(d::channel.eq_any(disabled))
            .group_by(d::channel)
            .select((d::channel, diesel::dsl::count_star()));
        self.load(query).await
    }

    /// Dead deliveries counted by channel.
    pub async fn dead_by_channel(&mut self) -> QueryResult<Vec<(String, i64)>> {
        let query = deliveries::table
            .filter(d::status.eq(DEAD))
            .group_by(d::channel)
            .select((d::channel, diesel::dsl::count_star()));
        self.load(query).await
    }

    /// The dead deliveries that died last, at most `limit`: read through the index
    /// on `(status, …)`, so that a large outbox of delivered rows is never walked.
    pub async fn newest_dead(&mut self, limit: i64) -> QueryResult<Vec<DeliveryRecord>> {
        let query = deliveries::table
            .filter(d::status.eq(DEAD))
            .order((d::next_attempt_at.desc(), d::id.desc()))
            .limit(limit)
            .select(columns::<DeliveryRecord>());
        self.load(query).await
    }

    /// The channels that are disabled.
    pub async fn disabled_channels(&mut self) -> QueryResult<Vec<String>> {
        let query = channel_states::table
            .filter(cs::disabled_at.is_not_null())
            .select(cs::channel);
        self.load(query).await
    }

    /// Deliveries counted by status.
    pub async fn count_deliveries(&mut self) -> QueryResult<Vec<(DeliveryStatus, i64)>> {
        let query = deliveries::table
            .group_by(d::status)
            .select((d::status, diesel::dsl::count_star()));
        let counts: Vec<(String, i64)> = self.load(query).await?;
        Ok(counts
            .into_iter()
            .filter_map(|(status, n)| Some((DeliveryStatus::parse(&status)?, n)))
            .collect())
    }

    /// The newest `limit` deliveries (only the dead ones with `dead_only`), newest first.
    pub async fn list_deliveries(
        &mut self,
        dead_only: bool,
        limit: i64,
    ) -> QueryResult<Vec<DeliveryRecord>> {
        let query = deliveries::table
            .order(d::id.desc())
            .limit(limit)
            .select(columns::<DeliveryRecord>());
        if dead_only {
            self.load(query.filter(d::status.eq(DEAD))).await
        } else {
            self.load(query).await
        }
    }

    /// The dead deliveries `which` selects.
    pub async fn dead_deliveries(&mut self, which: Replay<'_>) -> QueryResult<Vec<DeliveryRecord>> {
        let dead = deliveries::table
            .filter(d::status.eq(DEAD))
            .order(d::id.asc())
            .select(columns::<DeliveryRecord>());
        match which {
            Replay::One(id) => self.load(dead.filter(d::id.eq(id))).await,
            Replay::AllDead => self.load(dead).await,
            Replay::Channel(channel) => self.load(dead.filter(d::channel.eq(channel))).await,
        }
    }

    /// Sends dead deliveries again: back to `pending`, due `now`, with a fresh count of
    /// attempts. The `webhook-id` and the body stay as they were, so a partner that got
    /// one before recognises it. Returns the number of deliveries replayed.
    pub async fn replay_dead(
        &mut self,
        which: Replay<'_>,
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        let dead = deliveries::table.filter(d::status.eq(DEAD));
        let again = (
            d::status.eq(PENDING),
            d::attempts.eq(0),
            d::next_attempt_at.eq(now),
            d::hold_token.eq(None::<i64>),
        );
        match which {
            Replay::One(id) => {
                self.execute(diesel::update(dead.filter(d::id.eq(id))).set(again))
                    .await
            }
            Replay::AllDead => self.execute(diesel::update(dead).set(again)).await,
            Replay::Channel(channel) => {
                let dead = dead.filter(d::channel.eq(channel));
                self.execute(diesel::update(dead).set(again)).await
            }
        }
    }

    /// The disabled channels, with when and why.
    pub async fn disabled_channel_states(&mut self) -> QueryResult<Vec<DisabledChannel>> {
        let query = channel_states::table
            .filter(cs::disabled_at.is_not_null())
            .order(cs::channel)
            .select((cs::channel, cs::disabled_at, cs::reason));
        self.load(query).await
    }

    /// Enables a channel disabled by a 410 and makes the deliveries it held due
    /// `now` (nobody holds them; their `webhook-id`s are unchanged). Returns `None`
    /// when it was not disabled, else how many deliveries were released.
    pub async fn enable_channel(
        &mut self,
        channel: &str,
        now: NaiveDateTime,
    ) -> QueryResult<Option<usize>> {
        self.transaction(async |conn| {
            let removed = conn
                .execute(diesel::delete(channel_states::table.find(channel)))
                .await?;
            if removed == 0 {
                return Ok(None);
            }
            // What was held: everything pending that no dispatcher holds (a
            // hand-off's hold runs out on its own).
            let held = deliveries::table
                .filter(d::status.eq(PENDING))
                .filter(d::channel.eq(channel))
                .filter(d::hold_token.is_null());
            let released = conn
                .execute(diesel::update(held).set(d::next_attempt_at.eq(now)))
                .await?;
            Ok(Some(released))
        })
        .await
    }
}
