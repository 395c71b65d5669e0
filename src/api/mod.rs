//! The HTTP API (`api.listen`; off when unset, and separate from `http.listen`): client
//! apps post trigger requests and read what became of them, partners redeem, unredeem
//! and revoke grants. It writes the same tables as the SQL contracts
//! (`trigger_requests`, `grant_updates`) and checks a body with the rules the daemon
//! would reject the row by ([`crate::pipeline::intake::check`],
//! [`crate::pipeline::lifecycle::parse::check`]), so that a client learns at once, as a
//! 422 naming the field, what the daemon would otherwise reject later.
//!
//! Clients authenticate with bearer tokens known by their SHA-256 ([`auth`]). Posted
//! triggers are committed in groups by a few writer tasks ([`commits`]): one multi-row
//! insert and one COMMIT for every request that arrived meanwhile, each answered only
//! after its group committed. The listener has the bounds of `http.listen`
//! (`api.max_connections`, `api.header_timeout`); bodies over 64 KiB are refused (413).
//! The OpenAPI 3.1 document (`openapi.json`, served at `/v1/openapi.json`) describes
//! every route and answer.
//!
//! Answers never carry a database error's text, and nothing logs a token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::{ApiConfig, Scope};
use crate::runtime::http::listener::{self, Bounds};
use crate::store::Db;

mod answer;
pub mod auth;
mod body;
pub mod commits;
mod grants;
mod triggers;

pub use answer::Problem;

/// The OpenAPI 3.1 document of this API, as checked in.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The largest request body, in bytes; a larger one is answered 413.
pub const MAX_BODY: usize = 64 * 1024;

/// The most triggers one `POST /v1/triggers/batch` takes.
pub const MAX_BATCH: usize = 1_000;

/// What the API uses.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Db,
    /// `api:`
    pub config: ApiConfig,
}

/// The state every handler shares.
#[derive(Clone)]
struct Api {
    db: Db,
    commits: commits::Committer,
}

/// Binds the listener for `addr` (`api.listen`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the API on `listener` within `api.max_connections` and `api.header_timeout`
/// until the process exits, with its group-commit writers.
pub fn serve(deps: Deps, listener: TcpListener) -> JoinHandle<()> {
    let bounds = Bounds {
        section: "api",
        max_connections: deps.config.max_connections,
        header_timeout: deps.config.header_timeout,
    };
    if let Ok(address) = listener.local_addr() {
        info!(%address, clients = deps.config.clients.len(), max_connections = bounds.max_connections, "api listening");
    }
    tokio::spawn(listener::accept_loop(listener, router(deps), bounds))
}

/// The routes, each behind its scope.
fn router(deps: Deps) -> Router {
    let clients = Arc::new(auth::Clients::new(deps.config.clients));
    let api = Api {
        commits: commits::Committer::start(deps.db.clone()),
        db: deps.db,
    };
    let guard = |scope| {
        let needs = auth::Needs {
            clients: clients.clone(),
            scope,
        };
        middleware::from_fn_with_state(needs, auth::require)
    };
    let triggers = Router::new()
        .route("/v1/triggers", post(triggers::post_one))
        .route("/v1/triggers/batch", post(triggers::post_batch))
        .route("/v1/triggers/{request_key}", get(triggers::get_one))
        .route_layer(guard(Scope::Triggers));
    let grants = Router::new()
        .route("/v1/grants/{code}/redeem", post(grants::redeem))
        .route("/v1/grants/{code}/unredeem", post(grants::unredeem))
        .route("/v1/grants/{code}/revoke", post(grants::revoke))
        .route_layer(guard(Scope::GrantUpdates));
    Router::new()
        .merge(triggers)
        .merge(grants)
        .route("/v1/openapi.json", get(openapi))
        .fallback(answer::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}
