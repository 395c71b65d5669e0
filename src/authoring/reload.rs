//! Hot reload of the rules: on SIGHUP, or when a file in the rules folder changes, the
//! rules are compiled again and their tests run; only when both pass is the new set
//! swapped in, whole, for every batch that starts afterwards (a batch reads the rules
//! once, when it starts). Otherwise the running rules stay and each problem is logged
//! with its file and line.
//!
//! The folder is polled once a second rather than watched with inotify (the `notify`
//! crate): there are a handful of small files, polling them costs nothing, and it
//! works the same on every filesystem — including bind mounts, NFS and Kubernetes
//! ConfigMaps (which swap a symlink), where change events are missed or doubled — and
//! with every editor's way of saving. Files are compared by content, so a save that
//! changes nothing does not reload; send SIGHUP to force one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::fixtures::{self, TESTS_DIR};
use crate::config::{CampaignConfig, Config, RuleLimits};
use crate::domain::RulesVersion;
use crate::in_force::InForce;
use crate::rules::{RuleError, Rules};

/// How often the rules folder is looked at. A change is acted on once the folder has
/// stayed the same for one more look, so that a save in several steps reloads once.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Why a reload kept the running rules.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A rule does not compile, a rule test file does not parse, or a rule test fails.
    #[error("{} problem(s) in the rules; the first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    Rejected(Vec<RuleError>),
    /// The files changed between the test run and the compile; the next look at the
    /// folder sees the change and tries again.
    #[error("the rules changed while they were tested (tested {tested}, compiled {compiled})")]
    Changed {
        /// The version the tests ran on.
        tested: RulesVersion,
        /// The version compiled afterwards.
        compiled: RulesVersion,
    },
    /// Compiling or testing stopped unexpectedly (a bug in couponsd).
    #[error("reload stopped unexpectedly: {0}")]
    Stopped(String),
}

/// The rules in force after a successful reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The version now in force.
    pub version: RulesVersion,
    /// The version before; equal to `version` when nothing changed.
    pub previous: RulesVersion,
    /// Rule tests that passed.
    pub tests: usize,
}

/// Compiles the rules in `dir` and runs their tests (with the campaigns of `catalog`,
/// those in force now); when both pass, puts them in force in `rules`. Logs the
/// outcome, naming file and line of every problem: this is where a failed reload is
/// handled.
pub async fn reload_rules(
    rules: &InForce<Rules>,
    catalog: &InForce<Config>,
    dir: &Path,
    limits: &RuleLimits,
) -> Result<Reloaded, ReloadError> {
    let previous = rules.current().version().clone();
    let (folder, limits) = (dir.to_owned(), limits.clone());
    // The campaigns in force now (a config reload may have changed them since start-up):
    // the rules will decide with these.
    let campaigns = catalog.current().campaigns.clone();
    // Compiling and running the tests is CPU work: keep it off the runtime's workers.
    let candidate = tokio::task::spawn_blocking(move || candidate(&folder, &limits, &campaigns))
        .await
        .map_err(|e| ReloadError::Stopped(e.to_string()))
        .and_then(|r| r);
    let (compiled, tests) = match candidate {
        Ok(found) => found,
        Err(e) => {
            log_refusal(&e, &previous, dir);
            return Err(e);
        }
    };
    let version = compiled.version().clone();
    if version == previous {
        info!(rules_version = %version, tests, "rules reloaded: unchanged");
    } else {
        rules.swap(compiled);
        info!(rules_version = %version, previous = %previous, tests, dir = %dir.display(), "rules reloaded: new rules in force");
    }
    Ok(Reloaded {
        version,
        previous,
        tests,
    })
}

fn candidate(
    dir: &Path,
    limits: &RuleLimits,
    campaigns: &[CampaignConfig],
) -> Result<(Rules, usize), ReloadError> {
    let passed = fixtures::test_dir(dir, limits, campaigns).map_err(ReloadError::Rejected)?;
    // The tests ran on rules compiled with a test clock; these read the real one.
    let rules = Rules::load(dir, limits).map_err(ReloadError::Rejected)?;
    if rules.version() != &passed.version {
        return Err(ReloadError::Changed {
            tested: passed.version,
            compiled: rules.version().clone(),
        });
    }
    Ok((rules, passed.cases.len()))
}

fn log_refusal(error: &ReloadError, running: &RulesVersion, dir: &Path) {
    match error {
        ReloadError::Rejected(problems) => {
            for p in problems {
                error!(file = %p.file.display(), line = p.line, column = p.column, "{p}");
            }
            error!(rules_version = %running, dir = %dir.display(), problems = problems.len(), "rules not reloaded: the running rules stay in force");
        }
        ReloadError::Changed { .. } => warn!(error = %error, "rules not reloaded yet"),
        ReloadError::Stopped(_) => {
            error!(error = %error, "rules not reloaded: the running rules stay in force")
        }
    }
}

/// Reloads the rules of a running daemon, one reload at a time: SIGHUP and the folder
/// watcher may fire together, and a slower reload of older files must not overwrite a
/// newer one. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    rules: InForce<Rules>,
    catalog: InForce<Config>,
    config_path: PathBuf,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    /// A reloader for the daemon whose `rules` and `catalog` are in force, started with
    /// the config at `config_path`.
    pub fn new(rules: InForce<Rules>, catalog: InForce<Config>, config_path: PathBuf) -> Self {
        Self {
            rules,
            catalog,
            config_path,
            one_at_a_time: Arc::default(),
        }
    }

    /// Reads the config file again for `rules.dir` and `rules.limits` (falling back to
    /// the running config's when it no longer loads), then [`reload_rules`]. Campaigns
    /// and every other setting need a restart.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let (dir, limits) = match Config::load(&self.config_path) {
            Ok(config) => (config.rules.dir, config.rules.limits),
            Err(e) => {
                warn!(error = %e, "config does not load; reloading rules from the running config's folder");
                // A catalog reload changes only the campaigns: these are the start-up's.
                let running = self.catalog.current();
                (running.rules.dir.clone(), running.rules.limits.clone())
            }
        };
        reload_rules(&self.rules, &self.catalog, &dir, &limits).await
    }

    /// Watches the running config's rules folder until `shutdown`, reloading on a
    /// change (see the module docs).
    pub fn watch(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let reloader = self.clone();
        let dir = self.catalog.current().rules.dir.clone();
        watch(dir, POLL_EVERY, shutdown, move || {
            let reloader = reloader.clone();
            async move {
                let _ = reloader.reload().await;
            }
        })
    }
}

/// What the watcher compares: the SHA-256 of every `*.rhai` in the rules folder and
/// every `*.yaml`/`*.yml` in its `tests` folder, by path.
type Snapshot = BTreeMap<PathBuf, [u8; 32]>;

fn snapshot(dir: &Path) -> Snapshot {
    let files = |folder: PathBuf, extensions: &[&str]| -> Vec<PathBuf> {
        std::fs::read_dir(folder)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension()
                            .is_some_and(|x| extensions.iter().any(|e| x == *e))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut all = files(dir.to_owned(), &["rhai"]);
    all.extend(files(dir.join(TESTS_DIR), &["yaml", "yml"]));
    all.into_iter()
        .filter_map(|path| {
            let text = std::fs::read(&path).ok()?;
            Some((path, Sha256::digest(&text).into()))
        })
        .collect()
}

/// Calls `on_change` when the files of the rules folder `dir` change (compared with
/// when `watch` was called) and then stay the same for one more look; looks every
/// `every` until `shutdown`.
pub fn watch<F, Fut>(
    dir: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
    on_change: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    // Taken before returning, so that any change made after `watch` returns is seen.
    let mut seen = snapshot(&dir);
    tokio::spawn(async move {
        let look = |dir: PathBuf| async move {
            tokio::task::spawn_blocking(move || snapshot(&dir))
                .await
                .unwrap_or_default()
        };
        let mut pending: Option<Snapshot> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let current = look(dir.clone()).await;
            if current == seen {
                pending = None;
            } else if pending.as_ref() == Some(&current) {
                info!(dir = %dir.display(), "rules folder changed: reloading");
                seen = current;
                pending = None;
                on_change().await;
            } else {
                pending = Some(current);
            }
        }
    })
}
