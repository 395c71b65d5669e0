//! The API's refusals, as JSON: `{"error": "...", "field": "..."}` with the status that
//! says what the client does next (fix the body, authenticate, use another key, retry).

use axum::http::header::WWW_AUTHENTICATE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

use crate::pipeline::intake::Invalid;
use crate::store::StoreError;

/// A refusal: its status, what is wrong and, for a 422, the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong, for the client.
    pub error: String,
    /// The field at fault (`user_id`, `triggers[3].event`), for a 422.
    pub field: Option<String>,
}

impl Problem {
    /// A 422 naming `field`.
    pub fn invalid(field: impl Into<String>, error: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: error.into(),
            field: Some(field.into()),
        }
    }

    /// Any other refusal.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Problem {
        Problem {
            status,
            error: error.into(),
            field: None,
        }
    }

    /// The database failed: logged here, answered 503 without its text (it may name a
    /// host or a user).
    pub fn database(e: &StoreError) -> Problem {
        warn!(error = %e, "api: the database failed; answered 503");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not available; try again",
        )
    }

    /// The body of this refusal.
    pub fn body(&self) -> serde_json::Value {
        match &self.field {
            Some(field) => json!({ "error": self.error, "field": field }),
            None => json!({ "error": self.error }),
        }
    }
}

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Problem {
        Problem::invalid(e.column, e.reason)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Json(self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            return (self.status, [(WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (self.status, body).into_response()
    }
}

/// Any path the API does not have.
pub async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such route (see /v1/openapi.json)",
    )
}
