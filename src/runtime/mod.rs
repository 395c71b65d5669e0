//! The runtime: builds each stage's own dependencies from one start-up ([`Daemon`]),
//! runs the stages' loops ([`loops`]) and the scheduled jobs ([`scheduler`]), talks to
//! systemd ([`notify`]) and serves `/healthz`, `/readyz`, `/metrics` and the ops
//! console ([`http`], [`crate::console`]).
//! The stages never see [`Daemon`]: each takes its `Deps`.

pub mod http;
pub mod loops;
pub mod notify;
pub mod scheduler;

pub use loops::{release_claims, run_loops, Mode};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::console;
use crate::in_force::InForce;
use crate::metrics::{Liveness, Metrics};
use crate::pipeline::dispatch;
use crate::pipeline::dispatch::handoff::Handoff;
use crate::pipeline::dispatch::lanes::Lanes;
use crate::pipeline::dispatch::send::Sender;
use crate::pipeline::grant::{self, ClaimsInHand, DrawCursors};
use crate::pipeline::lifecycle;
use crate::rules::Rules;
use crate::schedule;
use crate::store::catalog::CatalogChanges;
use crate::store::health::Health;
use crate::store::{Access, Db, StoreError};

/// The hand-off holds at most this many dispatch rounds (`dispatch.batch_size` each);
/// beyond it grants leave their deliveries to the outbox.
const HANDOFF_BATCHES: usize = 4;

/// The parts of one running daemon, from which each stage's `Deps` are built. Built
/// once; cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    /// The database.
    pub db: Db,
    /// The validated config, as at start-up.
    pub config: Arc<Config>,
    /// The config whose campaigns are in force (changed by a reload).
    pub catalog: InForce<Config>,
    /// The rules in force.
    pub rules: InForce<Rules>,
    /// The webhook client.
    pub sender: Sender,
    /// Signalled when a batch committed new outbox rows.
    pub outbox_ready: Arc<Notify>,
    /// This daemon's name in leases: host, process and a random part.
    pub instance: Arc<String>,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    /// The worker loops' heartbeats, for the systemd watchdog.
    pub liveness: Arc<Liveness>,
    /// Batches claimed and not finished.
    pub claims: Arc<ClaimsInHand>,
    /// Where this daemon's next draw of each pool coupon starts.
    pub draws: Arc<DrawCursors>,
    /// Deliveries handed from committed grants to this daemon's dispatcher.
    pub handoff: Arc<Handoff>,
    /// The dispatcher's sends in flight, per channel.
    pub lanes: Arc<Lanes>,
    /// Whether the database answers, as the daemon's probe last found
    /// ([`crate::store::health`]); up when no probe runs.
    pub health: Arc<Health>,
}

impl Daemon {
    /// Builds a context from its parts.
    pub fn new(db: Db, config: Arc<Config>, rules: Rules, sender: Sender) -> Self {
        let metrics = Metrics::new();
        // Like `health`: up until a probe says otherwise.
        metrics.set_database_up(true);
        Self {
            handoff: Arc::new(Handoff::new(
                HANDOFF_BATCHES * config.dispatch.batch_size.max(1),
            )),
            db,
            catalog: InForce::new(config.clone()),
            config,
            rules: InForce::new(rules),
            sender,
            outbox_ready: Arc::new(Notify::new()),
            instance: Arc::new(instance_name()),
            metrics: Arc::new(metrics),
            liveness: Arc::new(Liveness::default()),
            claims: Arc::new(ClaimsInHand::default()),
            draws: Arc::new(DrawCursors::default()),
            lanes: Arc::new(Lanes::default()),
            health: Arc::new(Health::default()),
        }
    }

    /// What the grant step uses.
    pub fn grant(&self) -> grant::Deps {
        grant::Deps {
            db: self.db.clone(),
            catalog: self.catalog.clone(),
            rules: self.rules.clone(),
            handoff: self.handoff.clone(),
            outbox_ready: self.outbox_ready.clone(),
            metrics: self.metrics.clone(),
            claims: self.claims.clone(),
            draws: self.draws.clone(),
        }
    }

    /// What the lifecycle stage (partner updates) uses.
    pub fn lifecycle(&self) -> lifecycle::Deps {
        lifecycle::Deps {
            db: self.db.clone(),
            catalog: self.catalog.clone(),
            handoff: self.handoff.clone(),
            outbox_ready: self.outbox_ready.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// What the dispatcher uses.
    pub fn dispatch(&self) -> dispatch::Deps {
        dispatch::Deps {
            db: self.db.clone(),
            config: self.config.clone(),
            sender: self.sender.clone(),
            handoff: self.handoff.clone(),
            lanes: self.lanes.clone(),
            outbox_ready: self.outbox_ready.clone(),
            metrics: self.metrics.clone(),
            heartbeat: self.liveness.dispatcher.clone(),
        }
    }

    /// What the scheduled jobs use.
    pub fn schedule(&self) -> schedule::Deps {
        schedule::Deps {
            db: self.db.clone(),
            config: self.config.clone(),
            catalog: self.catalog.clone(),
            instance: self.instance.clone(),
            outbox_ready: self.outbox_ready.clone(),
        }
    }

    /// What the ops console uses: the daemon's pool for its actions and a pool of its
    /// own for its pages, one read-only connection (the daemon's pool when that cannot
    /// be opened, which `Db::open` refuses only for a URL the daemon already opened).
    pub fn console(&self) -> console::Deps {
        let mut settings = self.config.database.settings(Access::ReadOnly);
        settings.max_connections = 1;
        let reads = Db::open(self.config.database.url.expose(), settings)
            .unwrap_or_else(|_| self.db.clone());
        console::Deps {
            db: self.db.clone(),
            reads,
            config: self.config.clone(),
            catalog: self.catalog.clone(),
            rules: self.rules.clone(),
        }
    }

    /// Grant workers to run: one for SQLite (one writer), else enough to keep the
    /// pool busy while leaving connections for the dispatcher and the scheduler.
    pub fn grant_workers(&self) -> usize {
        match self.db {
            Db::Sqlite(_) => 1,
            Db::Mysql(_) => self.config.worker.concurrency.max(1),
        }
    }
}

fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Applies the config's catalog and logs what changed.
pub async fn apply_catalog(db: &Db, config: &Config) -> Result<CatalogChanges, StoreError> {
    let mut tries = 0;
    loop {
        let result = db
            .get()
            .await?
            .apply_catalog(&config.campaigns, crate::store::now())
            .await;
        match result {
            Ok(changes) => {
                info!(
                    campaigns_added = ?changes.campaigns_added,
                    coupons_added = ?changes.coupons_added,
                    restocked = ?changes.restocked,
                    removed = ?changes.removed,
                    "catalog applied"
                );
                return Ok(changes);
            }
            // Two daemons starting together may both insert a new coupon: one loses
            // the race, and its second try sees the row.
            Err(e) if tries < 10 && crate::store::is_retryable(&e) || tries < 3 => {
                tries += 1;
                warn!(error = %e, "applying the catalog will be tried again");
                let jitter = rand::random::<u64>() % 100;
                tokio::time::sleep(Duration::from_millis(50 * tries + jitter)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
