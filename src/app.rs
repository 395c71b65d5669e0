//! The daemon's start-up and its commands: `migrate`, and `run` with its signals,
//! reloads and shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::authoring::reload::Reloader;
use crate::config::{Config, ConfigError};
use crate::installation::{load_rules, open_db, open_migrated, OpenError};
use crate::pipeline::dispatch::send::Sender;
use crate::runtime::notify;
use crate::runtime::{self, Daemon, Mode};
use crate::store::{Access, StoreError};

/// Why the daemon's start-up, `migrate` or the demo failed. The exit code each
/// deserves is the command line's business (`cli/exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The installation cannot be opened: a rule does not compile, or the database is
    /// unreachable or not migrated.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// `couponsd migrate`: creates or upgrades the schema, then applies the catalog.
pub async fn migrate(config: &Config) -> Result<(), AppError> {
    let db = open_db(config)?;
    let applied = db.migrate().await?;
    if applied.is_empty() {
        info!("schema is up to date");
    } else {
        info!(migrations = ?applied, "schema migrated");
    }
    runtime::apply_catalog(&db, config).await?;
    Ok(())
}

/// Start-up shared by `run` and the demo: rules compiled, database reachable and
/// migrated, then the catalog applied.
pub async fn start(config: Arc<Config>) -> Result<Daemon, AppError> {
    let rules = load_rules(&config)?;
    let db = open_migrated(&config, Access::ReadWrite).await?;
    let sender = Sender::new().map_err(|e| AppError::Other(format!("HTTP client: {e}")))?;
    let ctx = Daemon::new(db, config, rules, sender);
    runtime::apply_catalog(&ctx.db, &ctx.config).await?;
    info!(rules_version = %ctx.rules.current().version(), "rules compiled");
    Ok(ctx)
}

/// `couponsd run [--drain]`: start-up, then `READY=1` once the loops run; at a stop
/// signal, stop claiming, finish the batch in hand, flush what is due within
/// `worker.shutdown_grace`, put back claims not started, exit.
pub async fn run(config: Arc<Config>, config_path: &Path, drain: bool) -> Result<(), AppError> {
    let ctx = start(config).await?;
    let shutdown = CancellationToken::new();
    let reloader = Reloader::new(
        ctx.rules.clone(),
        ctx.catalog.clone(),
        config_path.to_owned(),
    );
    spawn_signal_handlers(
        ctx.clone(),
        config_path.to_owned(),
        reloader.clone(),
        shutdown.clone(),
    );
    watch_database(&ctx, shutdown.clone());
    let mode = if drain { Mode::Drain } else { Mode::Serve };
    if mode == Mode::Serve {
        reloader.watch(shutdown.clone());
    }
    let scheduler = match mode {
        Mode::Serve => Some(
            crate::runtime::scheduler::start(ctx.clone())
                .await
                .map_err(|e| AppError::Other(format!("scheduler: {e}")))?,
        ),
        Mode::Drain => None,
    };
    if let Some(address) = ctx.config.http.listen {
        let listener = crate::runtime::http::bind(address).await.map_err(|e| {
            AppError::Other(format!("http.listen: cannot listen on {address}: {e}"))
        })?;
        crate::runtime::http::serve(ctx.clone(), listener, shutdown.clone());
    }
    if let Some(address) = ctx.config.api.listen {
        let listener = crate::api::bind(address)
            .await
            .map_err(|e| AppError::Other(format!("api.listen: cannot listen on {address}: {e}")))?;
        let deps = crate::api::Deps {
            db: ctx.db.clone(),
            config: ctx.config.api.clone(),
        };
        crate::api::serve(deps, listener);
    }
    let loops = tokio::spawn(runtime::run_loops(ctx.clone(), mode, shutdown.clone()));
    notify::ready();
    tokio::spawn(notify::report_status(ctx.clone(), shutdown.clone()));
    tokio::spawn(notify::watchdog(ctx.clone(), shutdown.clone()));
    info!(?mode, instance = %ctx.instance, "couponsd running");
    let finished = stop_within_grace(loops, &shutdown, ctx.config.worker.shutdown_grace).await;
    if !shutdown.is_cancelled() {
        // Drained: no stop signal said it yet.
        notify::stopping();
    }
    release_claims_left(&ctx).await;
    if let Some(mut scheduler) = scheduler {
        let _ = tokio::time::timeout(Duration::from_secs(2), scheduler.shutdown()).await;
    }
    info!(granted = ctx.metrics.granted(), "couponsd stopped");
    if !finished {
        // Work is still in flight: leave now rather than wait for it while the runtime
        // winds down. The server rolls back any open transaction of this process.
        std::process::exit(0);
    }
    Ok(())
}

/// Starts the database probe ([`crate::store::health`]) on a connection of its own:
/// `/readyz`, `couponsd_database_up` and the loops' heartbeats read what it finds, and
/// it keeps the database's clock.
fn watch_database(ctx: &Daemon, shutdown: CancellationToken) {
    let metrics = ctx.metrics.clone();
    if ctx.db.is_mysql() {
        // A Galera node's daemon writes only once the probe found its node holds the
        // writer-node lease; a plain server opens the gate at the first probe.
        ctx.health.writes().await_first_look();
    }
    tokio::spawn(crate::store::health::watch(
        ctx.health.clone(),
        ctx.config.database.url.expose().to_owned(),
        ctx.config.database.settings(Access::ReadOnly),
        shutdown,
        move |up| metrics.set_database_up(up),
    ));
}

/// Waits for the loops; once `shutdown` is cancelled, for `grace` at most. Never
/// cancels the loops themselves (a transaction future must not be dropped midway):
/// they see the cancellation between rounds. Returns false when the grace ran out.
async fn stop_within_grace(
    mut loops: JoinHandle<()>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> bool {
    tokio::select! {
        _ = &mut loops => return true,
        _ = shutdown.cancelled() => {}
    }
    if tokio::time::timeout(grace, &mut loops).await.is_ok() {
        return true;
    }
    warn!(
        grace = %humantime::format_duration(grace),
        "worker.shutdown_grace ran out with work in flight: claims and deliveries in hand are taken up again after their leases"
    );
    false
}

/// Puts back in the queue the claims of batches not finished, within 2 s.
async fn release_claims_left(ctx: &Daemon) {
    let ctx = ctx.clone();
    let release = tokio::spawn(async move { runtime::release_claims(&ctx).await });
    match tokio::time::timeout(Duration::from_secs(2), release).await {
        Ok(Ok(Ok(0))) => {}
        Ok(Ok(Ok(n))) => info!(
            requests = n,
            "claimed requests not started are queued again"
        ),
        Ok(Ok(Err(e))) => {
            warn!(error = %e, "cannot release claims: they are recovered after worker.lease")
        }
        Ok(Err(_)) | Err(_) => {
            warn!("releasing claims took too long: they are recovered after worker.lease")
        }
    }
}

/// SIGTERM/SIGINT: stop claiming, finish the batch in hand, then exit; a second one
/// exits at once. SIGHUP: recompile the rules and swap them in if they compile and
/// their tests pass, and re-apply the catalog.
fn spawn_signal_handlers(
    ctx: Daemon,
    config_path: std::path::PathBuf,
    reloader: Reloader,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    notify::reloading();
                    let _ = reloader.reload().await;
                    reload_catalog(&ctx, &config_path).await;
                    notify::ready();
                    continue;
                }
            }
            if shutdown.is_cancelled() {
                warn!("second stop signal: exiting now; uncommitted work is recovered by the next daemon");
                std::process::exit(1);
            }
            info!("stop signal: finishing the batch in hand");
            notify::stopping();
            shutdown.cancel();
        }
    });
}

/// SIGHUP, the catalog: re-reads the config, applies its campaigns to the database and
/// puts them in force for the batches that start from then on. Only the campaigns (and
/// the rules, see [`Reloader`]) change; other settings need a restart. A config that does
/// not load, or whose coupons name a channel the daemon does not run, changes nothing.
async fn reload_catalog(ctx: &Daemon, config_path: &Path) {
    let fresh = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            error!(error = %e, "catalog not reloaded: the config does not load");
            return;
        }
    };
    let mut coupons = fresh.campaigns.iter().flat_map(|k| &k.coupons);
    if let Some(c) = coupons.find(|c| ctx.config.channel_named(c.channel.as_str()).is_none()) {
        error!(coupon = %c.id, channel = %c.channel, "catalog not reloaded: the coupon's channel is new, and channels change only at a restart");
        return;
    }
    let next = Config {
        campaigns: fresh.campaigns,
        ..(*ctx.config).clone()
    };
    match runtime::apply_catalog(&ctx.db, &next).await {
        Ok(_) => ctx.catalog.swap(Arc::new(next)),
        Err(e) => error!(error = %e, "catalog not reloaded: the running catalog stays in force"),
    }
}
