//! Configuration: `couponsd.yaml` read into `RawConfig` (serde, unknown keys refused),
//! then validated into `Config` with durations, URLs, money and secrets that do not
//! print. A bad config refuses to start and the error names the key path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeDelta;

use crate::domain::ChannelName;

mod api;
mod campaigns;
mod channels;

pub use api::{ApiClient, ApiConfig, Scope};
pub use channels::signing_key;
mod raw;
mod rule_limits;
mod validate;

/// The variable that overrides `database.url`, so that a password need not sit in the
/// config file.
pub const DATABASE_URL_ENV: &str = "COUPONSD_DATABASE_URL";

/// A config error; the message names the key path (`campaigns[0].coupons[1].stock`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key has a bad value, or the YAML does not parse.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: String,
        /// The key path at fault (`channels.wallet.url`), or `line L column C`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A secret that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `database:`
    pub database: DatabaseConfig,
    /// `rules:`
    pub rules: RulesConfig,
    /// `worker:`
    pub worker: WorkerConfig,
    /// `dispatch:`
    pub dispatch: DispatchConfig,
    /// `channels:`, by name.
    pub channels: BTreeMap<ChannelName, ChannelConfig>,
    /// `campaigns:`, in config order.
    pub campaigns: Vec<CampaignConfig>,
    /// `schedule:`
    pub schedule: ScheduleConfig,
    /// `alerts:`
    pub alerts: AlertsConfig,
    /// `http:`
    pub http: HttpConfig,
    /// `api:`
    pub api: ApiConfig,
    /// `logging:`
    pub logging: LoggingConfig,
}

/// `database:`
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `database.url` (or `COUPONSD_DATABASE_URL`) [sqlite://couponsd.db]; may hold a
    /// password, so it does not print.
    pub url: Secret,
    /// `database.max_connections` [8]
    pub max_connections: usize,
    /// `database.connect_timeout` [5s]: the longest a new connection (TCP, TLS and
    /// the MySQL handshake) or a wait for a pooled one may take.
    pub connect_timeout: Duration,
    /// `database.statement_timeout` [30s]: the longest one statement may run.
    pub statement_timeout: Duration,
    /// `database.tcp_keepalive` [15s]: idle time before the kernel probes a MySQL
    /// connection, so that a peer gone silently is noticed.
    pub tcp_keepalive: Duration,
}

impl DatabaseConfig {
    /// The connection settings of a pool whose sessions may do what `access` allows.
    pub fn settings(&self, access: crate::store::Access) -> crate::store::Settings {
        crate::store::Settings {
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            tcp_keepalive: self.tcp_keepalive,
            access,
        }
    }
}

/// `rules:`
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// `rules.dir` [rules], resolved against the config file's folder.
    pub dir: PathBuf,
    /// `rules.limits`
    pub limits: RuleLimits,
}

/// `rules.limits`: the sandbox every rule evaluation runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleLimits {
    /// `max_operations` [100000]
    pub max_operations: u64,
    /// `max_call_depth` [32]
    pub max_call_depth: usize,
    /// `max_string_size` [16384]
    pub max_string_size: usize,
    /// `max_array_size` [10000]
    pub max_array_size: usize,
    /// `max_map_size` [10000]
    pub max_map_size: usize,
    /// `max_time` [50ms], wall-clock time per evaluation.
    pub max_time: Duration,
    /// `max_memory` [16 MiB], bytes one value or one built-in call may take; see
    /// [`RuleLimits::value_share`].
    pub max_memory: usize,
}

impl RuleLimits {
    /// What one array item or map entry is counted as, in bytes: the item itself (16),
    /// the allocation of a short string or an empty container it holds (about 40), and
    /// the slack of the vector or tree node it sits in.
    pub const ITEM_BYTES: usize = 64;

    /// The most bytes one kind of content of one value may take under `max_memory`:
    /// an eighth of it. A value holds strings, items and entries, so it takes at most
    /// three eighths, and a built-in joining two values (`+`, `append`, `pad`) at most
    /// twice that before the result is refused: `max_memory` in all.
    pub fn value_share(&self) -> usize {
        self.max_memory / 8
    }

    /// The largest `max_string_size` that `max_memory` allows.
    pub fn string_size_cap(&self) -> usize {
        self.value_share()
    }

    /// The largest `max_array_size` or `max_map_size` that `max_memory` allows.
    pub fn item_count_cap(&self) -> usize {
        self.value_share() / Self::ITEM_BYTES
    }
}

impl Default for RuleLimits {
    fn default() -> Self {
        Self {
            max_operations: 100_000,
            max_call_depth: 32,
            max_string_size: 16_384,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_time: Duration::from_millis(50),
            max_memory: 16 << 20,
        }
    }
}

/// `worker:`
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `worker.batch_size` [200]
    pub batch_size: usize,
    /// `worker.poll_interval` [200ms]
    pub poll_interval: Duration,
    /// `worker.lease` [60s]: a claim older than this is recovered.
    pub lease: Duration,
    /// `worker.concurrency` [4]: grant workers per daemon on MySQL (SQLite has one).
    pub concurrency: usize,
    /// `worker.max_attempts` [5]: claims of one request before it is `failed`.
    pub max_attempts: u32,
    /// `worker.shutdown_grace` [10s]
    pub shutdown_grace: Duration,
}

/// `dispatch:`: how webhooks are sent and retried.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// `dispatch.concurrency` [64]: deliveries in flight per daemon.
    pub concurrency: usize,
    /// `dispatch.batch_size` [500]: deliveries claimed per round trip.
    pub batch_size: usize,
    /// `dispatch.retry_base` [5s]: first retry delay; doubles each attempt.
    pub retry_base: Duration,
    /// `dispatch.retry_max` [1h]: the longest delay between two attempts, also the cap
    /// on a partner's `Retry-After`.
    pub retry_max: Duration,
}

/// `channels.<name>`: a partner webhook.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The channel's name (the key under `channels:`).
    pub name: ChannelName,
    /// `url`: http or https.
    pub url: String,
    /// `secret`, `secret_env`, `secrets` or `secrets_env`: the `whsec_`-prefixed base64
    /// keys, decoded, in the order written; never empty. Every delivery is signed with
    /// each of them, so a partner can move from one to the next without downtime.
    pub secrets: Vec<SigningKey>,
    /// `timeout` [15s]
    pub timeout: Duration,
    /// `max_attempts` [8]
    pub max_attempts: u32,
}

/// A decoded Standard Webhooks signing key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

pub use crate::domain::campaign::{CampaignConfig, CouponConfig};

/// `schedule:`: 6-field cron expressions (seconds first).
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// `schedule.inventory_check` ["*/10 * * * * *"]
    pub inventory_check: String,
    /// `schedule.reclaim_leases` ["*/15 * * * * *"]
    pub reclaim_leases: String,
    /// `schedule.reconcile` ["0 0 3 * * *"]
    pub reconcile: String,
    /// `schedule.expire_grants` ["0 * * * * *"]: expiry, then reminders
    pub expire_grants: String,
    /// `schedule.sample_stock` ["0 * * * * *"]: every coupon's remaining stock,
    /// recorded for the console's burn-down plots (the last day is kept)
    pub sample_stock: String,
}

/// `alerts:`
#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    /// `alerts.channel`: a key of `channels:` that receives ops events.
    pub channel: Option<ChannelName>,
}

/// `http:`
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// `http.listen`: health and metrics listener; off when unset.
    pub listen: Option<SocketAddr>,
    /// `http.max_connections` [64]: connections open at once; at the cap a new one
    /// replaces the oldest not in a handler, and when all are in handlers more wait in
    /// the kernel's backlog without taking a file descriptor.
    pub max_connections: usize,
    /// `http.header_timeout` [5s]: a connection that has not sent a whole request head
    /// within this is closed, new or idle on keep-alive.
    pub header_timeout: Duration,
    /// `http.console_token`: the token the ops console's actions (`stock add`, replay,
    /// `channels enable`) ask for; without it the console is read-only.
    pub console_token: Option<Secret>,
}

/// `logging:`
#[derive(Debug, Clone, Default)]
pub struct LoggingConfig {
    /// `logging.format`: human [default] or json.
    pub format: LogFormat,
}

/// `logging.format`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The channel named `name`.
    pub fn channel_named(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    }

    /// How long a claimed delivery is held before another dispatcher may send it: the
    /// longest channel timeout plus a margin of `worker.lease`, at most 30 s (so that a
    /// short claim lease also brings back quickly the deliveries of a crashed daemon).
    pub fn delivery_lease(&self) -> TimeDelta {
        let longest = self
            .channels
            .values()
            .map(|c| c.timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        let margin = self.worker.lease.min(Duration::from_secs(30));
        TimeDelta::from_std(longest + margin).unwrap_or(TimeDelta::MAX)
    }

    /// Reads and validates the config file at `path`; `COUPONSD_DATABASE_URL` in the
    /// process environment overrides `database.url`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors
    /// the relative `rules.dir`. Variables (`COUPONSD_DATABASE_URL`, `secret_env`) are
    /// read from the process environment.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_yaml_with_env(text, path, &|name| std::env::var(name).ok())
    }

    /// [`Config::from_yaml`] with the environment passed in as `env` (a variable's
    /// value, or `None` when unset), so that tests need not touch the process
    /// environment.
    pub fn from_yaml_with_env(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw = raw::parse(text, &file)?;
        let ctx = validate::Ctx {
            file: &file,
            dir: path.parent().unwrap_or(Path::new("")),
            env,
        };
        Self::from_raw(raw, &ctx)
    }

    /// The channel a coupon names.
    pub fn channel(&self, name: &ChannelName) -> Option<&ChannelConfig> {
        self.channels.get(name)
    }
}

#[cfg(test)]
mod tests;
