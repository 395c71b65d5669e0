//! `POST /v1/grants/{code}/redeem`, `/unredeem` and `/revoke` `{"update_key","reason"}`:
//! a row of `grant_updates` (the grant-update contract), then a bounded wait for the
//! daemon's update loops to apply it, answered with the outcome: 200 with `done` (and
//! the grant's state) or `rejected` (and why), or 202 `queued` when it was not applied
//! within [`OUTCOME_WAIT`]. The same `update_key` again with the same body is answered
//! the same way; with another body 409.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::body::{object, same_update, update};
use super::{Api, Problem};
use crate::domain::{UpdateAction, UpdateStatus};
use crate::store::updates::{NewUpdate, PostedUpdate};
use crate::store::Db;

/// The longest an update's answer waits for the update loops.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(5);

/// `POST /v1/grants/{code}/redeem`
pub async fn redeem(
    api: State<Api>,
    code: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post(api, code, body, UpdateAction::Redeem).await
}

/// `POST /v1/grants/{code}/unredeem`
pub async fn unredeem(
    api: State<Api>,
    code: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post(api, code, body, UpdateAction::Unredeem).await
}

/// `POST /v1/grants/{code}/revoke`
pub async fn revoke(
    api: State<Api>,
    code: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    post(api, code, body, UpdateAction::Revoke).await
}

async fn post(
    State(api): State<Api>,
    Path(code): Path<String>,
    body: Result<Bytes, BytesRejection>,
    action: UpdateAction,
) -> Response {
    let answer = async {
        let row = update(&object(body)?, &code, action)?;
        let recorded = record(&api.db, &row).await?;
        outcome(&api.db, recorded).await
    };
    match answer.await {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Inserts the update unless its key is taken, and returns the row with the key: 409
/// when it is another update.
async fn record(db: &Db, row: &NewUpdate) -> Result<PostedUpdate, Problem> {
    let mut conn = db.get().await.map_err(|e| Problem::database(&e))?;
    let failed = |e: diesel::result::Error| Problem::database(&e.into());
    conn.enqueue_update_new(row).await.map_err(failed)?;
    let recorded = conn.update_by_key(&row.update_key).await.map_err(failed)?;
    match recorded {
        Some(r) if same_update(&r, row) => Ok(r),
        _ => Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "update_key {:?} was posted before with another update",
                row.update_key
            ),
        )),
    }
}

/// Waits up to [`OUTCOME_WAIT`] for the update to be applied, and answers with what
/// became of it.
async fn outcome(db: &Db, mut recorded: PostedUpdate) -> Result<(StatusCode, Value), Problem> {
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    let mut pause = Duration::from_millis(5);
    while recorded.status == Some(UpdateStatus::Queued) {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
        let mut conn = db.get().await.map_err(|e| Problem::database(&e))?;
        let again = conn.update_by_key(&recorded.update_key).await;
        match again.map_err(|e| Problem::database(&e.into()))? {
            Some(r) => recorded = r,
            None => break,
        }
    }
    let mut body = json!({
        "id": recorded.id,
        "update_key": recorded.update_key,
        "action": recorded.action,
        "status": recorded.status.map_or("unknown", UpdateStatus::as_str),
    });
    match recorded.status {
        Some(UpdateStatus::Queued) => return Ok((StatusCode::ACCEPTED, body)),
        Some(UpdateStatus::Rejected) => body["error"] = json!(recorded.error),
        Some(UpdateStatus::Done) | None => {}
    }
    if let Some(code) = &recorded.code {
        let mut conn = db.get().await.map_err(|e| Problem::database(&e))?;
        let state = conn.grant_state_by_code(code).await;
        let state = state.map_err(|e| Problem::database(&e.into()))?.flatten();
        body["state"] = json!(state.map(|s| s.as_str()));
    }
    Ok((StatusCode::OK, body))
}
