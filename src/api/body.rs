//! Request bodies into rows: JSON read by hand, so that a refusal names the field
//! (`user_id`, `triggers[3].event`), then checked by the rules the daemon would reject
//! the row by, never a copy of them.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::{Problem, MAX_BODY};
use crate::domain::UpdateAction;
use crate::pipeline::intake;
use crate::pipeline::lifecycle::parse;
use crate::store::records::RequestRecord;
use crate::store::requests::{NewRequest, QueuedRequest};
use crate::store::updates::{NewUpdate, PostedUpdate, QueuedUpdate};

/// The body as a JSON object, or the refusal: 413 over [`MAX_BODY`], 422 otherwise.
pub fn object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, Problem> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY} bytes"),
        ),
        status => Problem::new(status, e.body_text()),
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Problem::invalid("body", "must be a JSON object")),
        Err(e) => Err(Problem::invalid("body", format!("is not valid JSON: {e}"))),
    }
}

/// One trigger (`{"request_key","user_id","event","attributes"}`) into the row a client
/// would insert; `at` prefixes the field names (`triggers[3].`).
pub fn trigger(map: &Map<String, Value>, at: &str) -> Result<NewRequest, Problem> {
    only(map, &["request_key", "user_id", "event", "attributes"], at)?;
    let key = string(map, "request_key", at)?;
    let user_id = string(map, "user_id", at)?;
    let event = string(map, "event", at)?;
    let attributes = match map.get("attributes") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.to_string()),
    };
    let row = QueuedRequest::from_text(
        0,
        (key, user_id, event),
        attributes.as_deref(),
        crate::store::now(),
    );
    intake::check(&row).map_err(|e| Problem::invalid(format!("{at}{}", e.column), e.reason))?;
    Ok(NewRequest {
        request_key: key.to_owned(),
        user_id: user_id.to_owned(),
        event: event.to_owned(),
        attributes,
    })
}

/// Whether a recorded request is the one `row` would insert: the same key, user,
/// event and attributes (compared as JSON; none, `null` and `{}` are the same).
pub fn same_trigger(recorded: &RequestRecord, row: &NewRequest) -> bool {
    recorded.request_key == row.request_key
        && recorded.user_id == row.user_id
        && recorded.event == row.event
        && attributes(recorded.attributes.as_deref()) == attributes(row.attributes.as_deref())
}

fn attributes(text: Option<&str>) -> Option<Value> {
    match text.map(str::trim) {
        None | Some("") | Some("null") => Some(Value::Object(Map::new())),
        Some(text) => serde_json::from_str(text).ok(),
    }
}

/// A grant update (`{"update_key","reason"}`) of the grant carrying `code`.
pub fn update(
    map: &Map<String, Value>,
    code: &str,
    action: UpdateAction,
) -> Result<NewUpdate, Problem> {
    only(map, &["update_key", "reason"], "")?;
    let key = string(map, "update_key", "")?;
    let reason = match map.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(_) => return Err(Problem::invalid("reason", "must be a string")),
    };
    let bytes = |s: &str| Some(s.as_bytes().to_vec());
    let row = QueuedUpdate {
        id: 0,
        update_key: bytes(key),
        code: bytes(code),
        grant_id: None,
        action: bytes(action.as_str()),
        reason_len: reason.map(|r| r.len() as i64),
        reason: reason.and_then(bytes),
        occurred_at: None,
    };
    parse::check(&row)?;
    Ok(NewUpdate {
        update_key: key.to_owned(),
        code: Some(code.to_owned()),
        grant_id: None,
        action: action.as_str().to_owned(),
        reason: reason.map(str::to_owned),
        occurred_at: None,
    })
}

/// Whether a recorded update is the one `row` would insert.
pub fn same_update(recorded: &PostedUpdate, row: &NewUpdate) -> bool {
    recorded.update_key == row.update_key
        && recorded.code == row.code
        && recorded.grant_id.is_none()
        && recorded.action == row.action
        && recorded.reason == row.reason
}

/// Refuses a field the body may not have, naming it.
fn only(map: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), Problem> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(Problem::invalid(
            format!("{at}{unknown}"),
            format!("is not a field here (the fields: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string<'a>(map: &'a Map<String, Value>, field: &str, at: &str) -> Result<&'a str, Problem> {
    match map.get(field) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(Problem::invalid(format!("{at}{field}"), "is missing")),
        Some(_) => Err(Problem::invalid(format!("{at}{field}"), "must be a string")),
    }
}
