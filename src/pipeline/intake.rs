//! Intake: validates the rows a batch claimed from `trigger_requests` into domain
//! types. A row is read as bytes and checked here, never trusted to decode: whatever a
//! client wrote (a zero date, invalid UTF-8, a 4 MB attributes document, padded ids)
//! becomes either a [`TriggerRequest`] or a rejection whose reason names the row's id
//! and the column at fault. It never fails the batch or holds up the rows behind it.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::domain::{
    Event, InvalidValue, RequestId, RequestKey, TriggerRequest, UserId, MAX_ATTRIBUTES_LEN,
    MAX_KEY_LEN,
};
use crate::store::requests::{parse_time, QueuedRequest, KEY_PREFIX};

/// A claimed request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Row id.
    pub id: RequestId,
    /// Why, naming the row id, the request key when it is readable, and the column.
    pub reason: String,
}

/// A client-written value that is not valid: the column (or field) and why. Intake
/// words it as a [`Rejected`] row; the HTTP API answers it as a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The column at fault (`user_id`, `attributes`, …).
    pub column: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl From<InvalidValue> for Invalid {
    fn from(e: InvalidValue) -> Self {
        Invalid {
            column: e.field,
            reason: e.reason,
        }
    }
}

/// Validates one claimed request.
pub fn validate(row: QueuedRequest) -> Result<TriggerRequest, Rejected> {
    check(&row).map_err(|e| {
        let mut prefix = format!("request {}", row.id);
        if e.column != "request_key" {
            // The key was read before any other column: it is valid text here.
            let key = String::from_utf8_lossy(row.request_key.as_deref().unwrap_or_default());
            let _ = write!(prefix, " (request_key {})", printable(&key));
        }
        Rejected {
            id: RequestId(row.id),
            reason: format!("{prefix}: {}: {}", e.column, e.reason),
        }
    })
}

/// Checks one request's columns in order (`request_key`, `user_id`, `event`,
/// `attributes`, `created_at`) and says which is at fault first.
pub fn check(row: &QueuedRequest) -> Result<TriggerRequest, Invalid> {
    let key = RequestKey::parse(text(row.request_key.as_deref(), "request_key")?)?;
    let user_id = UserId::parse(text(row.user_id.as_deref(), "user_id")?)?;
    let event = Event::parse(text(row.event.as_deref(), "event")?)?;
    let invalid = |column, reason| Invalid { column, reason };
    let attributes = attributes(row).map_err(|why| invalid("attributes", why))?;
    let created_at =
        created_at(row.created_at.as_deref()).map_err(|why| invalid("created_at", why))?;
    Ok(TriggerRequest {
        id: RequestId(row.id),
        key,
        user_id,
        event,
        attributes,
        created_at,
    })
}

/// Splits a claimed batch into valid requests and rejections, keeping claim order.
pub fn validate_batch(rows: Vec<QueuedRequest>) -> (Vec<TriggerRequest>, Vec<Rejected>) {
    let mut valid = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for row in rows {
        match validate(row) {
            Ok(request) => valid.push(request),
            Err(r) => rejected.push(r),
        }
    }
    (valid, rejected)
}

/// A key column's bytes as text; NULL and invalid UTF-8 are refused by name.
fn text<'a>(bytes: Option<&'a [u8]>, field: &'static str) -> Result<&'a str, InvalidValue> {
    let bytes = bytes.ok_or_else(|| InvalidValue {
        field,
        reason: "is NULL".into(),
    })?;
    if bytes.len() >= KEY_PREFIX {
        // Only the first KEY_PREFIX bytes were read: enough to know it is too long.
        return Err(InvalidValue {
            field,
            reason: format!("is longer than {MAX_KEY_LEN} bytes, the limit"),
        });
    }
    utf8(bytes).map_err(|reason| InvalidValue { field, reason })
}

/// `bytes` as text, or why not, naming the first byte that is not UTF-8. (Partner
/// updates read their columns with it too.)
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes)
        .map_err(|e| format!("is not valid UTF-8 (byte {} is not)", e.valid_up_to()))
}

fn attributes(row: &QueuedRequest) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let len = row.attributes_len.unwrap_or(0);
    if len > MAX_ATTRIBUTES_LEN as i64 {
        return Err(format!(
            "is {len} bytes, longer than the limit of {MAX_ATTRIBUTES_LEN}"
        ));
    }
    let Some(bytes) = row.attributes.as_deref() else {
        return Ok(serde_json::Map::new());
    };
    match utf8(bytes)?.trim() {
        "" | "null" => Ok(serde_json::Map::new()),
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(other) => Err(format!("must be a JSON object, got {}", json_kind(&other))),
            Err(e) => Err(format!("not valid JSON: {e}")),
        },
    }
}

/// `created_at` as the database renders it: MariaDB `2026-12-02 16:15:54.123456`
/// (`0000-00-00 00:00:00.000000` for a zero date), SQLite whatever text was stored.
fn created_at(bytes: Option<&[u8]>) -> Result<DateTime<Utc>, String> {
    time(bytes.ok_or("is NULL")?)
}

/// A time column's bytes as the database renders them (see [`parse_time`]), or why
/// not. (Partner updates read `occurred_at` with it too.)
pub(crate) fn time(bytes: &[u8]) -> Result<DateTime<Utc>, String> {
    parse_time(bytes).map(|at| at.and_utc()).ok_or_else(|| {
        format!(
            "{} is not a valid date and time (YYYY-MM-DD HH:MM:SS, UTC)",
            printable(&String::from_utf8_lossy(bytes))
        )
    })
}

/// `value` quoted, with control characters escaped, for a reason an operator reads in
/// a terminal.
fn printable(value: &str) -> String {
    format!("{:?}", value)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &[u8], attributes: Option<&str>) -> QueuedRequest {
        QueuedRequest {
            id: 7,
            request_key: Some(b"k-7".to_vec()),
            user_id: Some(user.to_vec()),
            event: Some(b"app_open".to_vec()),
            attributes_len: attributes.map(|a| a.len() as i64),
            attributes: attributes.map(|a| a.as_bytes().to_vec()),
            created_at: Some(b"2026-12-02 16:15:54.123456".to_vec()),
        }
    }

    #[test]
    fn a_well_formed_request_becomes_a_trigger_request() {
        let request = validate(row(b"u1", Some(r#"{"country":"DE"}"#))).unwrap();
        assert_eq!(request.user_id.as_str(), "u1");
        assert_eq!(request.attributes["country"], "DE");
        assert_eq!(
            request.created_at.to_rfc3339(),
            "2026-12-02T16:15:54.123456+00:00"
        );
        assert!(validate(row(b"u1", None)).unwrap().attributes.is_empty());
    }

    #[test]
    fn malformed_requests_are_rejected_naming_the_row_and_the_column() {
        let empty_user = validate(row(b"", None)).unwrap_err();
        assert_eq!(
            empty_user.reason,
            r#"request 7 (request_key "k-7"): user_id: is empty"#
        );
        let array = validate(row(b"u1", Some("[1,2]"))).unwrap_err();
        assert!(array
            .reason
            .contains("attributes: must be a JSON object, got an array"));
        let broken = validate(row(b"u1", Some("{oops"))).unwrap_err();
        assert!(broken.reason.contains("attributes: not valid JSON"));
        let long = validate(row(&[b'x'; 192], None)).unwrap_err();
        assert!(
            long.reason.contains("user_id: is longer than 191 bytes"),
            "{long:?}"
        );
        let long_event = validate(QueuedRequest {
            event: Some(vec![b'e'; 100]),
            ..row(b"u1", None)
        })
        .unwrap_err();
        assert!(long_event
            .reason
            .contains("event: is 100 bytes, longer than the limit of 64"));
        let padded = validate(row(b"alice ", None)).unwrap_err();
        assert!(padded
            .reason
            .contains("user_id: starts or ends with white space"));
    }

    #[test]
    fn undecodable_values_are_rejected_by_id_and_column() {
        let not_utf8 = validate(row(b"\xffalice", None)).unwrap_err();
        assert_eq!(
            not_utf8.reason,
            r#"request 7 (request_key "k-7"): user_id: is not valid UTF-8 (byte 0 is not)"#
        );
        let mut zero_date = row(b"u1", None);
        zero_date.created_at = Some(b"0000-00-00 00:00:00.000000".to_vec());
        let err = validate(zero_date).unwrap_err();
        assert!(
            err.reason
                .contains(r#"created_at: "0000-00-00 00:00:00.000000" is not a valid"#),
            "{err:?}"
        );
        let mut no_key = row(b"u1", None);
        no_key.request_key = Some(b"k\x00".to_vec());
        let err = validate(no_key).unwrap_err();
        assert_eq!(
            err.reason,
            "request 7: request_key: contains a control character"
        );
    }

    #[test]
    fn oversized_attributes_are_refused_by_their_length_alone() {
        let mut huge = row(b"u1", None);
        huge.attributes_len = Some(4 << 20);
        let err = validate(huge).unwrap_err();
        assert!(err
            .reason
            .contains("attributes: is 4194304 bytes, longer than the limit of 16384"));
    }
}
