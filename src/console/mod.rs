//! The ops console: server-rendered HTML pages on the health and metrics listener
//! (`http.listen`, path `/`). The overview shows each campaign's rotation chain
//! (state, remaining, grant rate, predicted run-out) with a burn-down plot per coupon
//! drawn as inline SVG on the server ([`plot`]), the recent rotations and alerts, the
//! deliveries dead or held per channel, and the lifecycle figures of `couponsd report`;
//! `/coupons/{id}` shows one coupon's plot at full size. No script, nothing fetched
//! from elsewhere: the pages work from a host with no route to the internet.
//!
//! Read-only by default. Its actions (`stock add`, replaying dead deliveries,
//! `channels enable`) run the operator commands' own code ([`crate::ops`]) and need
//! `http.console_token`, typed into the form, plus a form token bound to it and a
//! same-origin request ([`actions`]).
//!
//! The pages read through a pool of their own: one read-only connection, so that
//! however many people look, the console takes none of the connections the grant
//! workers and the dispatcher use, and `/healthz`, `/readyz` and `/metrics`, which
//! never touch the database, stay as fast as before. What a page shows is read at most
//! once a second and the report's figures at most once a minute ([`snapshot`]),
//! shared by every request meanwhile.
//!
//! The console takes its own [`Deps`], built by the runtime; it never names the
//! daemon's context.

pub mod actions;
mod html;
pub mod page;
pub mod plot;
pub mod snapshot;
mod tables;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::in_force::InForce;
use crate::installation::Installation;
use crate::rules::Rules;
use crate::store::Db;

/// What the console uses, built by the runtime.
#[derive(Clone)]
pub struct Deps {
    /// The daemon's pool: the actions write through it, as the operator commands do.
    pub db: Db,
    /// The console's own read-only pool (one connection) for the pages.
    pub reads: Db,
    /// The start-up config: `http.console_token`, `schedule.*`.
    pub config: Arc<Config>,
    /// The config whose campaigns and channels are in force (changed by a reload).
    pub catalog: InForce<Config>,
    /// The rules in force (their version is shown and named by `stock add`).
    pub rules: InForce<Rules>,
}

impl Deps {
    /// The plain handle the operator commands work on: the daemon's pool and the
    /// config in force.
    pub fn installation(&self) -> Installation {
        Installation {
            db: self.db.clone(),
            config: self.catalog.current(),
            rules_version: self.rules.current().version().clone(),
        }
    }
}

/// The console's state shared by its handlers.
pub struct Console {
    deps: Deps,
    snapshots: snapshot::Cache,
    forms: actions::FormKeys,
}

impl Console {
    /// A console on `deps`.
    pub fn new(deps: Deps) -> Arc<Self> {
        Arc::new(Console {
            forms: actions::FormKeys::new(deps.config.http.console_token.clone()),
            deps,
            snapshots: snapshot::Cache::default(),
        })
    }

    /// The overview page, as `GET /` answers it (for benchmarks and tests that time
    /// or read a render without HTTP).
    pub async fn overview(&self) -> Result<String, snapshot::ReadError> {
        let snapshot = self.snapshots.get(&self.deps).await?;
        Ok(page::overview(&self.view(), &snapshot))
    }

    /// Forgets what was read, so that the next page reads again (after an action).
    pub async fn forget(&self) {
        self.snapshots.forget().await;
    }

    fn view(&self) -> page::View<'_> {
        page::View {
            catalog: self.deps.catalog.current(),
            rules_version: self.deps.rules.current().version().to_string(),
            forms: &self.forms,
        }
    }
}

/// The console's routes: `GET /`, `GET /coupons/{id}` and the actions' `POST
/// /actions/…`, with `console`'s state applied (merged into the listener's router).
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/coupons/{id}", get(coupon))
        .route("/actions/stock-add", post(actions::stock_add))
        .route("/actions/replay", post(actions::replay))
        .route("/actions/channels-enable", post(actions::channels_enable))
        .layer(axum::extract::DefaultBodyLimit::max(
            actions::MAX_FORM_BYTES,
        ))
        .with_state(console)
}

async fn overview(State(console): State<Arc<Console>>) -> Response {
    match console.overview().await {
        Ok(body) => html::page(StatusCode::OK, body),
        Err(e) => unavailable(e),
    }
}

async fn coupon(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let snapshot = match console.snapshots.get(&console.deps).await {
        Ok(s) => s,
        Err(e) => return unavailable(e),
    };
    match page::coupon(&console.view(), &snapshot, &id) {
        Some(body) => html::page(StatusCode::OK, body),
        None => html::page(
            StatusCode::NOT_FOUND,
            html::message("Unknown coupon", &format!("No coupon {id} in stock."), None),
        ),
    }
}

/// The database did not answer: said without the error's text (it may name a host or
/// a user), which is logged once here.
fn unavailable(e: snapshot::ReadError) -> Response {
    tracing::warn!(error = %e, "console: cannot read the database");
    html::page(
        StatusCode::SERVICE_UNAVAILABLE,
        html::message(
            "Database unavailable",
            "The console cannot read the database now; see the daemon's log and /readyz.",
            None,
        ),
    )
    .into_response()
}
