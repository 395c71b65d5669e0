//! Read-only queries over `trigger_requests`, `grants`, `deliveries`,
//! `delivery_attempts` and `campaigns` for the authoring commands (`simulate`,
//! `backtest`, `explain`). None of them locks or writes: they may run against a live
//! database while daemons work on it.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::catalog::budget;
use super::schema::campaigns::dsl as k;
use super::schema::deliveries::dsl as d;
use super::schema::delivery_attempts::dsl as a;
use super::schema::grants::dsl as g;
use super::schema::trigger_requests::dsl as tr;
use super::schema::{campaigns, deliveries, delivery_attempts, grants, trigger_requests};
use super::{columns, Backend, Conn, QueryResult};
use crate::domain::Budget;

/// A request as `explain` shows it, read defensively like a claim (every text column
/// as bytes, shown lossily; `attributes` only up to [`INSPECT_ATTRIBUTES`] bytes; times
/// as the text the database renders), so that a row no stage could decode can still be
/// looked at. Every text field is `None` for NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedRequest {
    /// Row id.
    pub id: i64,
    /// Claims whose lease expired and were recovered.
    pub attempts: i32,
    /// The attributes text, or a note of its length when it is longer than
    /// [`INSPECT_ATTRIBUTES`].
    pub attributes: Option<String>,
    /// The client's idempotency key.
    pub request_key: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// The event.
    pub event: Option<String>,
    /// The status.
    pub status: Option<String>,
    /// For `done`: the outcome.
    pub outcome: Option<String>,
    /// For `rejected` and `failed`: why.
    pub error: Option<String>,
    /// For `done`: what decided the outcome.
    pub detail: Option<String>,
    /// The user type the rules decided.
    pub user_type: Option<String>,
    /// The campaign, when one answered.
    pub campaign_id: Option<String>,
    /// The rules version that decided.
    pub rules_version: Option<String>,
    /// When the client inserted it, as the database renders it.
    pub created_at: Option<String>,
    /// When it was finished, as the database renders it.
    pub processed_at: Option<String>,
}

/// The longest `attributes` `explain` prints.
pub const INSPECT_ATTRIBUTES: i64 = 64 * 1024;

/// The text columns of [`InspectedRequest`], in the order they are selected and
/// destructured in [`inspected`].
const INSPECTED: [&str; 12] = [
    "request_key",
    "user_id",
    "event",
    "status",
    "outcome",
    "error",
    "detail",
    "user_type",
    "campaign_id",
    "rules_version",
    "created_at",
    "processed_at",
];

type Bytes = Option<Vec<u8>>;
type Twelve<T> = (T, T, T, T, T, T, T, T, T, T, T, T);
/// What the database returns for an [`InspectedRequest`].
type InspectedRow = (i64, i32, Option<i64>, Bytes, Twelve<Bytes>);
type B = diesel::sql_types::Nullable<diesel::sql_types::Binary>;
type InspectedSql = (
    diesel::sql_types::BigInt,
    diesel::sql_types::Integer,
    diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
    B,
    Twelve<B>,
);

fn inspected((id, attempts, attributes_len, attributes, text): InspectedRow) -> InspectedRequest {
    let lossy = |b: Bytes| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    let attributes = match (attributes_len, attributes) {
        (Some(len), None) => Some(format!("({len} bytes, not shown)")),
        (_, bytes) => lossy(bytes),
    };
    let (
        key,
        user,
        event,
        status,
        outcome,
        error,
        detail,
        user_type,
        campaign,
        version,
        created,
        processed,
    ) = text;
    InspectedRequest {
        id,
        attempts,
        attributes,
        request_key: lossy(key),
        user_id: lossy(user),
        event: lossy(event),
        status: lossy(status),
        outcome: lossy(outcome),
        error: lossy(error),
        detail: lossy(detail),
        user_type: lossy(user_type),
        campaign_id: lossy(campaign),
        rules_version: lossy(version),
        created_at: lossy(created),
        processed_at: lossy(processed),
    }
}

/// The columns of an [`InspectedRow`] on each backend.
fn inspected_columns(cast: &str, byte_length: &str) -> String {
    let text: Vec<String> = INSPECTED
        .iter()
        .map(|c| format!("CAST({c} AS {cast})"))
        .collect();
    let len = format!("{byte_length}(attributes)");
    format!(
        "id, attempts, {len}, CASE WHEN {len} <= {INSPECT_ATTRIBUTES} THEN CAST(attributes AS {cast}) END, {}",
        text.join(", ")
    )
}

/// A request as recorded, every column an operator asks about.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = trigger_requests)]
pub struct RequestRecord {
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
    /// `queued`, `claimed`, `done`, `rejected` or `failed`.
    pub status: String,
    /// For `done`: the outcome.
    pub outcome: Option<String>,
    /// For `rejected` and `failed`: why.
    pub error: Option<String>,
    /// For `done`: what decided the outcome.
    pub detail: Option<String>,
    /// The user type the rules decided.
    pub user_type: Option<String>,
    /// The campaign, when one answered.
    pub campaign_id: Option<String>,
    /// The rules version that decided.
    pub rules_version: Option<String>,
    /// Claims whose lease expired and were recovered.
    pub attempts: i32,
    /// When the client inserted it.
    pub created_at: NaiveDateTime,
    /// When it was finished.
    pub processed_at: Option<NaiveDateTime>,
}

/// A grant as recorded: the same row the grant step writes.
pub use super::grants::NewGrant as GrantRecord;

/// An outbox row as recorded, without its body.
pub use super::deliveries::DeliveryRecord;

/// One delivery attempt as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = delivery_attempts)]
pub struct PastAttempt {
    /// The delivery.
    pub delivery_id: i64,
    /// The attempt's number (1 for the first).
    pub attempt: i32,
    /// When.
    pub attempted_at: NaiveDateTime,
    /// The partner's HTTP status, if it answered.
    pub status_code: Option<i32>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// Grants after a point, counted by coupon and face value.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct CouponTotal {
    /// The campaign.
    pub campaign_id: String,
    /// The coupon.
    pub coupon_id: String,
    /// The face value of each, in cents.
    pub face_value_cents: i64,
    /// Grants.
    pub grants: i64,
}

/// Read-only operations for the authoring commands.
impl Conn {
    /// The request with this idempotency key.
    pub async fn request_by_key(&mut self, key: &str) -> QueryResult<Option<InspectedRequest>> {
        let (cast, byte_length) = match self.backend() {
            Backend::Mysql => ("BINARY", "LENGTH"),
            // SQLite's octet_length reads the size without loading the value.
            Backend::Sqlite => ("BLOB", "octet_length"),
        };
        let columns = inspected_columns(cast, byte_length);
        // The bytes decide: MariaDB's PAD SPACE collation alone takes `k1 ` for
        // `k1`, where SQLite does not. The first filter keeps the unique index.
        let exact =
            diesel::dsl::sql::<diesel::sql_types::Bool>(&format!("CAST(request_key AS {cast}) = "))
                .bind::<diesel::sql_types::Binary, _>(key.as_bytes());
        let query = trigger_requests::table
            .filter(tr::request_key.eq(key))
            .filter(exact)
            .select(diesel::dsl::sql::<InspectedSql>(&columns));
        let row: Option<InspectedRow> = self.first(query).await.optional()?;
        Ok(row.map(inspected))
    }

    /// The grant a request earned.
    pub async fn grant_of_request(&mut self, request_id: i64) -> QueryResult<Option<GrantRecord>> {
        // A grant's id is its request's id (the primary key serves it;
        // request_id has no index of its own on MySQL).
        let query = grants::table
            .filter(g::id.eq(request_id))
            .select(columns::<GrantRecord>());
        self.first(query).await.optional()
    }

    /// The outbox rows of a grant, oldest first.
    pub async fn deliveries_of_grant(&mut self, grant_id: i64) -> QueryResult<Vec<DeliveryRecord>> {
        let query = deliveries::table
            .filter(d::grant_id.eq(grant_id))
            .order(d::id)
            .select(columns::<DeliveryRecord>());
        self.load(query).await
    }

    /// The attempts of deliveries, by delivery and attempt number.
    pub async fn attempts_of_deliveries(
        &mut self,
        delivery_ids: &[i64],
    ) -> QueryResult<Vec<PastAttempt>> {
        let query = delivery_attempts::table
            .filter(a::delivery_id.eq_any(delivery_ids))
            .order((a::delivery_id, a::attempt, a::id))
            .select(columns::<PastAttempt>());
        self.load(query).await
    }

    /// Every campaign's budget, without locking it.
    pub async fn campaign_budgets(&mut self) -> QueryResult<Vec<Budget>> {
        let query =
            campaigns::table
                .order(k::id)
                .select((k::id, k::budget_cents, k::granted_cents));
        let rows: Vec<(String, Option<i64>, i64)> = self.load(query).await?;
        Ok(rows.into_iter().map(budget).collect())
    }

    /// A user's latest grants for an event, newest first.
    pub async fn recent_grants_of(
        &mut self,
        user_id: &str,
        event: &str,
        limit: i64,
    ) -> QueryResult<Vec<GrantRecord>> {
        let query = grants::table
            .filter(g::user_id.eq(user_id))
            .filter(g::event.eq(event))
            .order(g::id.desc())
            .limit(limit)
            .select(columns::<GrantRecord>());
        self.load(query).await
    }

    /// Up to `limit` requests with status `done` created at or after `since`, oldest
    /// (lowest id) first.
    pub async fn done_requests_since(
        &mut self,
        since: NaiveDateTime,
        limit: i64,
    ) -> QueryResult<Vec<RequestRecord>> {
        let query = trigger_requests::table
            .filter(tr::status.eq("done"))
            .filter(tr::created_at.ge(since))
            .order(tr::id)
            .limit(limit)
            .select(columns::<RequestRecord>());
        self.load(query).await
    }

    /// The grants of `users` earned by requests before `before_id`.
    pub async fn ledger_before(
        &mut self,
        users: &[String],
        before_id: i64,
    ) -> QueryResult<Vec<GrantRecord>> {
        let query = grants::table
            .filter(g::user_id.eq_any(users))
            .filter(g::id.lt(before_id))
            .order(g::id)
            .select(columns::<GrantRecord>());
        self.load(query).await
    }

    /// The grants earned by requests with ids in `first..=last`.
    pub async fn grants_in_window(
        &mut self,
        first: i64,
        last: i64,
    ) -> QueryResult<Vec<GrantRecord>> {
        let query = grants::table
            .filter(g::id.between(first, last))
            .order(g::id)
            .select(columns::<GrantRecord>());
        self.load(query).await
    }

    /// The grants earned by requests after `after_id`, counted by coupon.
    pub async fn grants_after_request(&mut self, after_id: i64) -> QueryResult<Vec<CouponTotal>> {
        let query = grants::table
            .filter(g::id.gt(after_id))
            // Counted, not summed: SUM of a BIGINT is a DECIMAL on MySQL.
            .group_by((g::campaign_id, g::coupon_id, g::face_value_cents))
            .select((
                g::campaign_id,
                g::coupon_id,
                g::face_value_cents,
                diesel::dsl::count_star(),
            ));
        self.load(query).await
    }
}
