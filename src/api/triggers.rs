//! `POST /v1/triggers`, `POST /v1/triggers/batch` and `GET /v1/triggers/{request_key}`.
//!
//! A posted trigger is answered 202 `{"id","status":"queued"}` once its row is
//! committed; the same key again with the same body 200 with the request's current
//! state; with another body 409; a body intake would reject 422 naming the field.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::body::{object, same_trigger, trigger};
use super::commits::Written;
use super::{Api, Problem, MAX_BATCH};
use crate::domain::RequestStatus;
use crate::store::records::RequestRecord;
use crate::store::requests::NewRequest;
use crate::store::Db;

/// The longest `?wait=` a `GET` may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// `POST /v1/triggers`
pub async fn post_one(State(api): State<Api>, body: Result<Bytes, BytesRejection>) -> Response {
    let row = match object(body).and_then(|map| trigger(&map, "")) {
        Ok(row) => row,
        Err(problem) => return problem.into_response(),
    };
    let written = match api.commits.write(vec![row.clone()]).await {
        Ok(mut written) => written.remove(0),
        Err(e) => return Problem::database(&e).into_response(),
    };
    let (status, body) = match answer(&api.db, &row, written).await {
        Ok(answer) => answer,
        Err(problem) => (problem.status, problem.body()),
    };
    (status, Json(body)).into_response()
}

/// `POST /v1/triggers/batch` `{"triggers": [...]}`: each trigger answered as
/// `POST /v1/triggers` would, in order, under `results` (its status as `code`).
pub async fn post_batch(State(api): State<Api>, body: Result<Bytes, BytesRejection>) -> Response {
    let items = match object(body).and_then(batch_items) {
        Ok(items) => items,
        Err(problem) => return problem.into_response(),
    };
    let checked: Vec<Result<NewRequest, Problem>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(map) => trigger(map, &format!("triggers[{i}].")),
            _ => Err(Problem::invalid(
                format!("triggers[{i}]"),
                "must be a JSON object",
            )),
        })
        .collect();
    let rows: Vec<NewRequest> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .cloned()
        .collect();
    let mut written = match api.commits.write(rows).await {
        Ok(written) => written.into_iter(),
        Err(e) => return Problem::database(&e).into_response(),
    };
    let mut results = Vec::with_capacity(checked.len());
    for item in checked {
        let (status, mut body) = match item {
            Ok(row) => {
                let mine = written.next().expect("one answer per row");
                match answer(&api.db, &row, mine).await {
                    Ok(answer) => answer,
                    Err(problem) => (problem.status, problem.body()),
                }
            }
            Err(problem) => (problem.status, problem.body()),
        };
        body["code"] = json!(status.as_u16());
        results.push(body);
    }
    Json(json!({ "results": results })).into_response()
}

fn batch_items(mut map: Map<String, Value>) -> Result<Vec<Value>, Problem> {
    if let Some(unknown) = map.keys().find(|k| *k != "triggers") {
        return Err(Problem::invalid(
            unknown.clone(),
            "is not a field here (the fields: triggers)",
        ));
    }
    match map.remove("triggers") {
        Some(Value::Array(items)) if items.is_empty() => {
            Err(Problem::invalid("triggers", "is empty"))
        }
        Some(Value::Array(items)) if items.len() > MAX_BATCH => Err(Problem::invalid(
            "triggers",
            format!("has {} triggers, more than {MAX_BATCH}", items.len()),
        )),
        Some(Value::Array(items)) => Ok(items),
        None => Err(Problem::invalid("triggers", "is missing")),
        Some(_) => Err(Problem::invalid("triggers", "must be an array")),
    }
}

/// The answer to one posted row, from what the group wrote.
async fn answer(
    db: &Db,
    row: &NewRequest,
    written: Written,
) -> Result<(StatusCode, Value), Problem> {
    let conflict = || {
        Problem::new(
            StatusCode::CONFLICT,
            format!(
                "request_key {:?} was posted before with another body",
                row.request_key
            ),
        )
    };
    match written {
        Written::Created(id) => Ok((
            StatusCode::ACCEPTED,
            json!({ "id": id, "status": RequestStatus::Queued.as_str() }),
        )),
        Written::Existing(r) if same_trigger(&r, row) => Ok((StatusCode::OK, state(db, &r).await?)),
        Written::Existing(_) | Written::Taken => Err(conflict()),
    }
}

/// `GET /v1/triggers/{request_key}[?wait=5s]`: the request's state; with `wait`, once
/// it is decided or the wait is over.
pub async fn get_one(
    State(api): State<Api>,
    Path(key): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    match get(&api.db, &key, &query).await {
        Ok(body) => Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn get(db: &Db, key: &str, query: &[(String, String)]) -> Result<Value, Problem> {
    let wait = wait_of(query)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(10);
    loop {
        let record = read(db, key).await?.ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!("no request has request_key {key:?}"),
            )
        })?;
        let decided = !matches!(
            RequestStatus::parse(&record.status),
            Some(RequestStatus::Queued | RequestStatus::Claimed)
        );
        let now = tokio::time::Instant::now();
        if decided || now >= deadline {
            return state(db, &record).await;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn wait_of(query: &[(String, String)]) -> Result<Duration, Problem> {
    let mut wait = Duration::ZERO;
    for (name, value) in query {
        if name != "wait" {
            return Err(Problem::invalid(
                name.clone(),
                "is not a query parameter here (wait)",
            ));
        }
        wait = humantime::parse_duration(value).map_err(|e| {
            Problem::invalid("wait", format!("{value:?} is not a duration like 5s: {e}"))
        })?;
        if wait > MAX_WAIT {
            return Err(Problem::invalid(
                "wait",
                format!("is longer than {}", humantime::format_duration(MAX_WAIT)),
            ));
        }
    }
    Ok(wait)
}

/// The request with exactly this key (MariaDB's unique key ignores trailing spaces).
async fn read(db: &Db, key: &str) -> Result<Option<RequestRecord>, Problem> {
    let mut conn = db.get().await.map_err(|e| Problem::database(&e))?;
    let rows = conn
        .requests_by_keys(&[key])
        .await
        .map_err(|e| Problem::database(&e.into()))?;
    Ok(rows.into_iter().find(|r| r.request_key == key))
}

/// A request's state as the API shows it, with its grant when it has one.
async fn state(db: &Db, r: &RequestRecord) -> Result<Value, Problem> {
    let granted = r.outcome.as_deref() == Some(crate::domain::Outcome::Granted.as_str());
    let grant = if granted {
        let mut conn = db.get().await.map_err(|e| Problem::database(&e))?;
        let grants = conn.grants_by_id(&[r.id], false).await;
        grants.map_err(|e| Problem::database(&e.into()))?.pop()
    } else {
        None
    };
    let grant = grant.map(|g| {
        json!({
            "coupon": g.coupon_id,
            "code": g.code,
            "expires_at": g.expires_at.map(|t| t.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            "state": g.state.as_str(),
        })
    });
    Ok(json!({
        "id": r.id,
        "request_key": r.request_key,
        "status": r.status,
        "outcome": r.outcome,
        "detail": r.detail,
        "error": r.error,
        "grant": grant,
    }))
}
