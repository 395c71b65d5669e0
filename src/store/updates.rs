//! `grant_updates`: partner updates of a grant (redeem, unredeem, revoke), queued by
//! plain SQL like trigger requests. Claimed in the processing transaction (`FOR UPDATE
//! SKIP LOCKED`, oldest first, served by `ix_grant_updates_claim (status, id)`), read
//! defensively (every client column as bytes, so that no value makes a batch fail to
//! load), and finished in the same transaction with their final status.

use chrono::NaiveDateTime;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable};

use super::prepared::{in_list, Cached};
use super::schema::grant_updates::dsl as u;
use super::schema::grant_updates::table;
use super::{Backend, Conn, QueryResult};
use crate::domain::{GrantState, UpdateStatus};

/// How many bytes of `update_key`, `code` and `action` are read: one more than the
/// longest value the daemon accepts, so that a longer one is seen to be too long.
pub const UPDATE_KEY_PREFIX: usize = 256;

/// A `reason` longer than this many bytes is not read (its length always is).
pub const MAX_REASON_LEN: usize = 4096;

/// A queued update as the partner wrote it, read defensively: text and numbers as
/// bytes (key columns cut after [`UPDATE_KEY_PREFIX`] bytes, `grant_id` as its decimal
/// text), `reason` only when it is no longer than [`MAX_REASON_LEN`], and
/// `occurred_at` as the text the database renders it as. The lifecycle stage decides
/// what of it is valid and rejects the rest by id and column.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct QueuedUpdate {
    /// Row id.
    pub id: i64,
    /// The partner's idempotency key.
    pub update_key: Option<Vec<u8>>,
    /// The code the update names, when it names one.
    pub code: Option<Vec<u8>>,
    /// The grant id the update names, as text, when it names one.
    pub grant_id: Option<Vec<u8>>,
    /// `redeem`, `unredeem` or `revoke`, as written.
    pub action: Option<Vec<u8>>,
    /// The length of `reason` in bytes, `None` when it is NULL.
    pub reason_len: Option<i64>,
    /// The reason, when no longer than [`MAX_REASON_LEN`].
    pub reason: Option<Vec<u8>>,
    /// `occurred_at` as text.
    pub occurred_at: Option<Vec<u8>>,
}

type QueuedUpdateSql = (
    BigInt,
    Nullable<Binary>,
    Nullable<Binary>,
    Nullable<Binary>,
    Nullable<Binary>,
    Nullable<BigInt>,
    Nullable<Binary>,
    Nullable<Binary>,
);

/// The columns of [`QueuedUpdate`], as each backend reads them defensively (on SQLite
/// any column may hold any type and size; `octet_length` reads a size from the record
/// header without loading the value).
fn queued_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Mysql => concat!(
            "id, SUBSTRING(CAST(update_key AS BINARY), 1, 256), ",
            "SUBSTRING(CAST(code AS BINARY), 1, 256), CAST(grant_id AS BINARY), ",
            "SUBSTRING(CAST(action AS BINARY), 1, 256), LENGTH(reason), ",
            "CASE WHEN LENGTH(reason) <= 4096 THEN CAST(reason AS BINARY) END, ",
            "CAST(occurred_at AS BINARY)"
        ),
        // NULL stays NULL: `octet_length(NULL) >= 256` is not true.
        Backend::Sqlite => concat!(
            "id, CASE WHEN octet_length(update_key) >= 256 THEN zeroblob(256) ",
            "ELSE CAST(update_key AS BLOB) END, ",
            "CASE WHEN octet_length(code) >= 256 THEN zeroblob(256) ",
            "ELSE CAST(code AS BLOB) END, ",
            "CASE WHEN octet_length(grant_id) >= 256 THEN zeroblob(256) ",
            "ELSE CAST(grant_id AS BLOB) END, ",
            "CASE WHEN octet_length(action) >= 256 THEN zeroblob(256) ",
            "ELSE CAST(action AS BLOB) END, octet_length(reason), ",
            "CASE WHEN octet_length(reason) <= 4096 THEN CAST(reason AS BLOB) END, ",
            "CAST(occurred_at AS BLOB)"
        ),
    }
}

/// What `grant_updates.finish_room` holds while an update is queued (its default).
pub const FINISH_ROOM_BYTES: usize = 6;

// The room is what finishing `done` adds: `processed_at`, less the status's letters.
const _: () = assert!(
    FINISH_ROOM_BYTES
        == 8 + UpdateStatus::Done.as_str().len() - UpdateStatus::Queued.as_str().len()
);

// The literals above repeat these numbers: SQL text is built at compile time.
const _: () = assert!(UPDATE_KEY_PREFIX == 256 && MAX_REASON_LEN == 4096);

/// The final state of one processed update.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FinishedUpdate {
    /// Row id.
    pub id: i64,
    /// `Done` or `Rejected`.
    pub status: UpdateStatus,
    /// For `Rejected`: why.
    pub error: Option<String>,
}

/// An update to insert (tests and benchmarks; partners use plain SQL).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::schema::grant_updates, treat_none_as_default_value = false)]
pub struct NewUpdate {
    /// Idempotency key.
    pub update_key: String,
    /// The code, or …
    pub code: Option<String>,
    /// … the grant id.
    pub grant_id: Option<i64>,
    /// `redeem`, `unredeem` or `revoke`.
    pub action: String,
    /// Why.
    pub reason: Option<String>,
    /// When it happened at the partner.
    pub occurred_at: Option<NaiveDateTime>,
}

/// An update as the HTTP API answers about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedUpdate {
    /// Row id.
    pub id: i64,
    /// The partner's idempotency key.
    pub update_key: String,
    /// The code it names, when it names one.
    pub code: Option<String>,
    /// The grant id it names, when it names one.
    pub grant_id: Option<i64>,
    /// The action, as written.
    pub action: String,
    /// The reason, as written.
    pub reason: Option<String>,
    /// Where it is; `None` for a word the daemon does not know (a client wrote it).
    pub status: Option<UpdateStatus>,
    /// For `Rejected`: why.
    pub error: Option<String>,
}

type PostedRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
    String,
    Option<String>,
);

/// Operations on `grant_updates`.
impl Conn {
    /// Inside the caller's transaction (a write transaction, so that on SQLite the one
    /// writer is held from the claim on): locks up to `limit` queued updates, oldest
    /// first, skipping rows another transaction holds. They stay `queued` until the
    /// caller finishes them in the same transaction, so a rollback or a crash puts them
    /// back in the queue at once.
    pub async fn take_queued_updates(&mut self, limit: i64) -> QueryResult<Vec<QueuedUpdate>> {
        let query = table
            .filter(u::status.eq(UpdateStatus::Queued.as_str()))
            .order(u::id.asc())
            .limit(limit)
            .select(sql::<QueuedUpdateSql>(queued_columns(self.backend())));
        self.load_either(
            Cached(query.clone().for_update().skip_locked()),
            Cached(query),
        )
        .await
    }

    /// Inside the caller's transaction: locks those of `ids` that are still queued
    /// (skipping rows another transaction holds): a part of a batch that failed, taken
    /// again on its own.
    pub async fn take_queued_updates_of(&mut self, ids: &[i64]) -> QueryResult<Vec<QueuedUpdate>> {
        let query = table
            .filter(in_list(u::id, ids.iter().copied()))
            .filter(u::status.eq(UpdateStatus::Queued.as_str()))
            .order(u::id.asc())
            .select(sql::<QueuedUpdateSql>(queued_columns(self.backend())));
        self.load_either(query.clone().for_update().skip_locked(), query)
            .await
    }

    /// Writes final statuses, `error` and `processed_at`: one statement per distinct
    /// (status, error), so every `done` update of a batch is one UPDATE. Each gives up
    /// its `finish_room` (6 bytes: `processed_at` less the 2 that `done` is shorter than
    /// `queued`), so that on MariaDB a `done` record keeps its size (see the migration
    /// `record_rooms`). Returns the number of rows changed.
    pub async fn finish_updates(
        &mut self,
        finished: &[FinishedUpdate],
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        let mut groups: Vec<(&FinishedUpdate, Vec<i64>)> = Vec::new();
        for f in finished {
            match groups
                .iter_mut()
                .find(|(g, _)| g.status == f.status && g.error == f.error)
            {
                Some((_, ids)) => ids.push(f.id),
                None => groups.push((f, vec![f.id])),
            }
        }
        let mut changed = 0;
        for (result, ids) in groups {
            let set = diesel::update(table.filter(in_list(u::id, ids))).set((
                u::status.eq(result.status.as_str()),
                u::error.eq(result.error.as_deref()),
                u::processed_at.eq(now),
                u::finish_room.eq(None::<&[u8]>),
            ));
            changed += self.execute(Cached(set)).await?;
        }
        Ok(changed)
    }

    /// Inserts updates (tests and benchmarks).
    pub async fn enqueue_updates(&mut self, rows: &[NewUpdate]) -> QueryResult<usize> {
        self.insert_all::<_, NewUpdate>(table, rows).await
    }

    /// Updates counted by status, in status order.
    pub async fn count_updates(&mut self) -> QueryResult<Vec<(String, i64)>> {
        let query = table
            .group_by(u::status)
            .select((u::status, diesel::dsl::count_star()))
            .order(u::status);
        self.load(query).await
    }

    /// Queued updates.
    pub async fn update_queue_depth(&mut self) -> QueryResult<i64> {
        let query = table
            .filter(u::status.eq(UpdateStatus::Queued.as_str()))
            .select(diesel::dsl::count_star());
        self.first(query).await
    }

    /// Inserts `row` unless its `update_key` is taken (no error then). Returns
    /// whether it was inserted.
    pub async fn enqueue_update_new(&mut self, row: &NewUpdate) -> QueryResult<bool> {
        let inserted = self
            .insert_all_ignoring::<_, NewUpdate>(table, std::slice::from_ref(row))
            .await?;
        Ok(inserted > 0)
    }

    /// The update with this key, as recorded.
    pub async fn update_by_key(&mut self, key: &str) -> QueryResult<Option<PostedUpdate>> {
        let query = table.filter(u::update_key.eq(key)).select((
            u::id,
            u::update_key,
            u::code,
            u::grant_id,
            u::action,
            u::reason,
            u::status,
            u::error,
        ));
        let row: Option<PostedRow> = self.first(query).await.optional()?;
        Ok(row.map(|r| PostedUpdate {
            id: r.0,
            update_key: r.1,
            code: r.2,
            grant_id: r.3,
            action: r.4,
            reason: r.5,
            status: UpdateStatus::parse(&r.6),
            error: r.7,
        }))
    }

    /// The state of the grant that carries `code`, when one does; `None` inside for a
    /// state the daemon does not know.
    pub async fn grant_state_by_code(
        &mut self,
        code: &str,
    ) -> QueryResult<Option<Option<GrantState>>> {
        use super::schema::grants::dsl as g;
        let query = g::grants.filter(g::code.eq(code)).select(g::state);
        let state: Option<String> = self.first(query).await.optional()?;
        Ok(state.map(|s| GrantState::parse(&s)))
    }
}
