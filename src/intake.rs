//! Intake: claims trigger requests from `trigger_requests` in batches and validates
//! them into domain types. A malformed request is rejected with a reason naming the
//! request key and the field; it never stops the batch or the requests behind it.

use chrono::{NaiveDateTime, Utc};

use crate::domain::{Event, RequestId, RequestKey, TriggerRequest, UserId, MAX_ATTRIBUTES_LEN};
use crate::store::requests::QueuedRequest;

/// A claimed request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Row id.
    pub id: RequestId,
    /// Why, naming the request key and the field.
    pub reason: String,
}

/// Validates one claimed request.
pub fn validate(row: QueuedRequest) -> Result<TriggerRequest, Rejected> {
    let id = RequestId(row.id);
    let reject = |reason: String| Rejected { id, reason };
    let key = RequestKey::parse(&row.request_key)
        .map_err(|e| reject(format!("request {}: {e}", row.id)))?;
    let named = |e: crate::domain::InvalidValue| reject(format!("request_key {key}: {e}"));
    let user_id = UserId::parse(&row.user_id).map_err(named)?;
    let event = Event::parse(&row.event).map_err(named)?;
    let attributes = match row.attributes.as_deref().map(str::trim) {
        None | Some("") | Some("null") => serde_json::Map::new(),
        Some(text) if text.len() > MAX_ATTRIBUTES_LEN => {
            return Err(reject(format!(
                "request_key {key}: attributes: is {} bytes, longer than the limit of {MAX_ATTRIBUTES_LEN}",
                text.len()
            )))
        }
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(other) => {
                return Err(reject(format!(
                    "request_key {key}: attributes: must be a JSON object, got {}",
                    json_kind(&other)
                )))
            }
            Err(e) => {
                return Err(reject(format!(
                    "request_key {key}: attributes: not valid JSON: {e}"
                )))
            }
        },
    };
    Ok(TriggerRequest {
        id,
        key,
        user_id,
        event,
        attributes,
        created_at: utc(row.created_at),
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

fn utc(at: NaiveDateTime) -> chrono::DateTime<Utc> {
    at.and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, attributes: Option<&str>) -> QueuedRequest {
        QueuedRequest {
            id: 7,
            request_key: "k-7".into(),
            user_id: user.into(),
            event: "app_open".into(),
            attributes: attributes.map(str::to_owned),
            created_at: Utc::now().naive_utc(),
        }
    }

    #[test]
    fn a_well_formed_request_becomes_a_trigger_request() {
        let request = validate(row("u1", Some(r#"{"country":"DE"}"#))).unwrap();
        assert_eq!(request.user_id.as_str(), "u1");
        assert_eq!(request.attributes["country"], "DE");
        assert!(validate(row("u1", None)).unwrap().attributes.is_empty());
    }

    #[test]
    fn malformed_requests_are_rejected_with_key_and_field() {
        let empty_user = validate(row("", None)).unwrap_err();
        assert_eq!(empty_user.reason, "request_key k-7: user_id: is empty");
        let array = validate(row("u1", Some("[1,2]"))).unwrap_err();
        assert!(array
            .reason
            .contains("attributes: must be a JSON object, got an array"));
        let broken = validate(row("u1", Some("{oops"))).unwrap_err();
        assert!(broken.reason.contains("attributes: not valid JSON"));
        let long = validate(row(&"x".repeat(300), None)).unwrap_err();
        assert!(long.reason.contains("user_id: is 300 bytes"));
    }
}
