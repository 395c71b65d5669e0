//! The commands behind the CLI: each loads what it needs, does its work, and returns
//! an error that says which exit code it deserves.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::authoring::reload::Reloader;
use crate::config::{Config, ConfigError};
use crate::daemon::{self, Context, Mode};
use crate::dispatch::send::Sender;
use crate::rules::{RuleError, Rules};
use crate::store::{Db, StoreError};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config is bad (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A rule does not compile (exit 2).
    #[error("{}", join_rule_errors(.0))]
    Rules(Vec<RuleError>),
    /// The database failed (exit 1).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

fn join_rule_errors(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl AppError {
    /// The process exit code: 2 for bad config or rules, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Rules(_) => 2,
            AppError::Store(StoreError::Url(_)) => 2,
            AppError::Store(_) | AppError::Other(_) => 1,
        }
    }
}

/// Compiles the rules named by the config.
pub fn load_rules(config: &Config) -> Result<Rules, AppError> {
    Rules::load(&config.rules.dir, &config.rules.limits).map_err(AppError::Rules)
}

/// Opens the database named by the config.
pub fn open_db(config: &Config) -> Result<Db, AppError> {
    Ok(Db::connect(
        config.database.url.expose(),
        config.database.max_connections,
    )?)
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
    daemon::apply_catalog(&db, config).await?;
    Ok(())
}

/// Start-up shared by `run` and the demo: rules compiled, database reachable and
/// migrated, catalog applied.
pub async fn start(config: Arc<Config>) -> Result<Context, AppError> {
    let rules = load_rules(&config)?;
    let db = open_db(&config)?;
    db.ping().await?;
    if !db.is_migrated().await? {
        return Err(AppError::Other(
            "the database schema is not up to date: run `couponsd migrate` first".into(),
        ));
    }
    daemon::apply_catalog(&db, &config).await?;
    let sender = Sender::new().map_err(|e| AppError::Other(format!("HTTP client: {e}")))?;
    info!(rules_version = %rules.version(), "rules compiled");
    Ok(Context::new(db, config, rules, sender))
}

/// `couponsd run [--drain]`.
pub async fn run(config: Arc<Config>, config_path: &Path, drain: bool) -> Result<(), AppError> {
    let ctx = start(config).await?;
    let shutdown = CancellationToken::new();
    let reloader = Reloader::new(ctx.clone(), config_path.to_owned());
    spawn_signal_handlers(reloader.clone(), shutdown.clone());
    let mode = if drain { Mode::Drain } else { Mode::Serve };
    if mode == Mode::Serve {
        reloader.watch(shutdown.clone());
    }
    let scheduler = match mode {
        Mode::Serve => Some(
            crate::schedule::start(ctx.clone())
                .await
                .map_err(|e| AppError::Other(format!("scheduler: {e}")))?,
        ),
        Mode::Drain => None,
    };
    info!(?mode, "couponsd running");
    daemon::run_loops(ctx, mode, shutdown).await;
    if let Some(mut scheduler) = scheduler {
        let _ = scheduler.shutdown().await;
    }
    info!("couponsd stopped");
    Ok(())
}

/// SIGTERM/SIGINT: stop claiming, finish the batch in hand, then exit; a second one
/// exits at once. SIGHUP: recompile the rules and swap them in if they compile and
/// their tests pass.
fn spawn_signal_handlers(reloader: Reloader, shutdown: CancellationToken) {
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
                    let _ = reloader.reload().await;
                    continue;
                }
            }
            if shutdown.is_cancelled() {
                warn!("second stop signal: exiting now; uncommitted work is recovered by the next daemon");
                std::process::exit(1);
            }
            info!("stop signal: finishing the batch in hand");
            shutdown.cancel();
        }
    });
}
