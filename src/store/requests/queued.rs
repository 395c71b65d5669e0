//! The queued request as a claim reads it: defensively, so that nothing a client
//! writes makes the row fail to load.

use chrono::NaiveDateTime;
use diesel::sql_types::{BigInt, Binary, Nullable};
use diesel::Queryable;

use crate::domain::{MAX_ATTRIBUTES_LEN, MAX_KEY_LEN};
use crate::store::Backend;

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
pub(super) fn queued_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Mysql => concat!(
            "id, SUBSTRING(CAST(request_key AS BINARY), 1, 192), ",
            "SUBSTRING(CAST(user_id AS BINARY), 1, 192), ",
            "SUBSTRING(CAST(event AS BINARY), 1, 192), LENGTH(attributes), ",
            "CASE WHEN LENGTH(attributes) <= 16384 THEN CAST(attributes AS BINARY) END, ",
            "CAST(created_at AS BINARY)"
        ),
        // `octet_length` reads a value's size from its record header without loading it,
        // so a 4 MB value is never brought into memory; a key column longer than 191 bytes
        // is read as 192 zero bytes, which intake sees as too long.
        Backend::Sqlite => concat!(
            "id, CASE WHEN octet_length(request_key) < 192 THEN CAST(request_key AS BLOB) ",
            "ELSE zeroblob(192) END, ",
            "CASE WHEN octet_length(user_id) < 192 THEN CAST(user_id AS BLOB) ",
            "ELSE zeroblob(192) END, ",
            "CASE WHEN octet_length(event) < 192 THEN CAST(event AS BLOB) ",
            "ELSE zeroblob(192) END, octet_length(attributes), ",
            "CASE WHEN octet_length(attributes) <= 16384 ",
            "THEN CAST(attributes AS BLOB) END, CAST(created_at AS BLOB)"
        ),
    }
}

/// A column read as bytes, NULL as `None`.
pub(super) type Bytes = Option<Vec<u8>>;

pub(super) type QueuedSql = (
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
