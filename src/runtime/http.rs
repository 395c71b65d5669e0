//! The health and metrics listener (`http.listen`; off when unset), which also serves
//! the ops console at `/` ([`crate::console`]): `/healthz` (the
//! process answers), `/readyz` (the database answered its last probe, rules are
//! loaded, grant batches are not failing in a row, not stopping; a daemon standing by
//! on a Galera node that is not the writer says so) and `/metrics`
//! (Prometheus text, see [`crate::metrics`]). Neither `/readyz` nor `/metrics` touches
//! the database: they read what the probe ([`crate::store::health`], once a second)
//! and the gauges' refresh last found.
//!
//! The listener is bounded (`http.max_connections`, `http.header_timeout`; see
//! [`listener`]) so that it cannot take the file descriptors deliveries need.
//!
//! Answers never carry an error's text: a database error may name a host or a user,
//! and this port may be reachable from further than the logs.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::runtime::Daemon;
use crate::store::health::Status;

pub mod listener;

/// Grant batches failed in a row at which `/readyz` says the daemon is not ready: one
/// failure is a deadlock or a bad request being split off; this many means the queue
/// does not move.
pub const FAILED_BATCHES_NOT_READY: u32 = 5;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Http {
    ctx: Daemon,
    stopping: CancellationToken,
}

/// Binds the listener for `addr` (`http.listen`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints on `listener` within `http.max_connections` and
/// `http.header_timeout` until the process exits; `/readyz` says 503 once `stopping`
/// is cancelled.
pub fn serve(ctx: Daemon, listener: TcpListener, stopping: CancellationToken) -> JoinHandle<()> {
    let bounds = listener::Bounds {
        section: "http",
        max_connections: ctx.config.http.max_connections,
        header_timeout: ctx.config.http.header_timeout,
    };
    if let Ok(address) = listener.local_addr() {
        info!(%address, max_connections = bounds.max_connections, header_timeout = ?bounds.header_timeout, "health and metrics listening");
    }
    let app = router(ctx, stopping);
    tokio::spawn(listener::accept_loop(listener, app, bounds))
}

fn router(ctx: Daemon, stopping: CancellationToken) -> Router {
    let console = crate::console::Console::new(ctx.console());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Http { ctx, stopping })
        .merge(crate::console::router(console))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(http): State<Http>) -> (StatusCode, String) {
    if http.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
    }
    let failed = http.ctx.liveness.failed_batches();
    if failed >= FAILED_BATCHES_NOT_READY {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("grant batches failing: {failed} in a row (see the log)\n"),
        );
    }
    match http.ctx.health.status() {
        Status::Up => {
            let version = http.ctx.rules.current().version().to_string();
            // A standby is ready to take over: it answers 200 and says what it does.
            let role = match http.ctx.health.writes().standby() {
                Some(_) => ", standing by: another Galera node is the writer (see the log)",
                None => "",
            };
            (StatusCode::OK, format!("ready: rules {version}{role}\n"))
        }
        Status::Down { since, cause } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "database unreachable for {}s: {}\n",
                since.elapsed().as_secs(),
                cause.as_str()
            ),
        ),
    }
}

async fn metrics(State(http): State<Http>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS)], http.ctx.metrics.encode())
}
