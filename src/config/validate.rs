//! `Config::from_raw`: turns what the file says into the validated [`Config`], section
//! by section, with defaults filled in. Every refusal names the key path it is about.
//! Channels and campaigns, which reference each other, and the rules' limits have
//! their own files.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use croner::parser::{CronParser, Seconds};

use super::raw::{
    RawAlerts, RawConfig, RawDatabase, RawDispatch, RawHttp, RawLogFormat, RawLogging, RawSchedule,
    RawWorker,
};
use super::{
    campaigns, channels, rule_limits, AlertsConfig, Config, ConfigError, DatabaseConfig,
    DispatchConfig, HttpConfig, LogFormat, LoggingConfig, ScheduleConfig, Secret, WorkerConfig,
    DATABASE_URL_ENV,
};
use crate::domain::InvalidValue;

/// What validation needs besides the file's contents.
pub(super) struct Ctx<'a> {
    /// The config path as given, for error messages.
    pub file: &'a str,
    /// The config file's folder, which a relative `rules.dir` is resolved against.
    pub dir: &'a Path,
    /// Reads an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    /// A [`ConfigError::Invalid`] for `key`.
    pub fn invalid(&self, key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// Parses a domain value, reporting its refusal under `key`.
    pub fn domain<T>(
        &self,
        key: &str,
        raw: &str,
        parse: fn(&str) -> Result<T, InvalidValue>,
    ) -> Result<T, ConfigError> {
        parse(raw).map_err(|e| self.invalid(key, e.reason))
    }

    /// A count that must be at least `min`.
    pub fn at_least<T>(
        &self,
        key: &str,
        raw: Option<T>,
        default: T,
        min: T,
    ) -> Result<T, ConfigError>
    where
        T: PartialOrd + fmt::Display + Copy,
    {
        let value = raw.unwrap_or(default);
        if value < min {
            return Err(self.invalid(key, format!("must be at least {min}, got {value}")));
        }
        Ok(value)
    }

    /// A listening address (`http.listen`, `api.listen`); `None` when unset. `example`
    /// is an address like the one expected, shown when the text is not one.
    pub fn listen(
        &self,
        key: &str,
        raw: Option<String>,
        example: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        raw.map(|text| {
            text.trim().parse::<SocketAddr>().map_err(|_| {
                self.invalid(
                    key,
                    format!("{text:?} is not an IP address and port like {example}"),
                )
            })
        })
        .transpose()
    }

    /// A listener's bounds (`http`, `api`): `max_connections` [64, ≥ 1], `header_timeout` [5s].
    pub fn listener_bounds(
        &self,
        section: &str,
        max_connections: Option<usize>,
        header_timeout: Option<Duration>,
    ) -> Result<(usize, Duration), ConfigError> {
        let (max, timeout) = (
            format!("{section}.max_connections"),
            format!("{section}.header_timeout"),
        );
        Ok((
            self.at_least(&max, max_connections, 64, 1)?,
            self.positive(&timeout, header_timeout, Duration::from_secs(5))?,
        ))
    }

    /// A duration that must not be zero.
    pub fn positive(
        &self,
        key: &str,
        raw: Option<Duration>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = raw.unwrap_or(default);
        if value.is_zero() {
            return Err(self.invalid(key, "must be longer than 0s"));
        }
        Ok(value)
    }
}

impl Config {
    /// Validates a [`RawConfig`], filling in defaults.
    pub(super) fn from_raw(raw: RawConfig, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
        let channels = channels::channels(raw.channels, ctx)?;
        let campaigns = campaigns::campaigns(raw.campaigns.unwrap_or_default(), &channels, ctx)?;
        let alerts = alerts(raw.alerts.unwrap_or_default(), &channels, ctx)?;
        let http = http(raw.http.unwrap_or_default(), ctx)?;
        Ok(Config {
            database: database(raw.database.unwrap_or_default(), ctx)?,
            rules: rule_limits::rules(raw.rules.unwrap_or_default(), ctx)?,
            worker: worker(raw.worker.unwrap_or_default(), ctx)?,
            dispatch: dispatch(raw.dispatch.unwrap_or_default(), ctx)?,
            channels,
            campaigns,
            schedule: schedule(raw.schedule.unwrap_or_default(), ctx)?,
            alerts,
            api: super::api::api(raw.api.unwrap_or_default(), http.listen, ctx)?,
            http,
            logging: logging(raw.logging.unwrap_or_default()),
        })
    }
}

fn database(raw: RawDatabase, ctx: &Ctx<'_>) -> Result<DatabaseConfig, ConfigError> {
    const KEY: &str = "database.url";
    // An empty variable is treated as unset, as shells and unit files often leave them.
    let (url, source) = match (ctx.env)(DATABASE_URL_ENV).filter(|v| !v.is_empty()) {
        Some(url) => (url, format!(" (from {DATABASE_URL_ENV})")),
        None => (
            raw.url.unwrap_or_else(|| "sqlite://couponsd.db".to_owned()),
            String::new(),
        ),
    };
    // The URL may hold a password: messages name its scheme at most, never the value.
    if let Some(rest) = url.strip_prefix("sqlite://") {
        if rest.is_empty() {
            return Err(ctx.invalid(KEY, format!("sqlite:// needs a file name{source}")));
        }
    } else if url.starts_with("mysql://") {
        // Several hosts (a Galera cluster, `store::cluster`) are checked one by one.
        let hosts = crate::store::cluster::split_hosts(&url)
            .map_err(|e| ctx.invalid(KEY, format!("{e}{source}")))?;
        let many = hosts.len() > 1;
        for (n, host) in hosts.iter().enumerate() {
            let which = match many {
                true => format!(" (host {} of the list)", n + 1),
                false => String::new(),
            };
            let parsed = reqwest::Url::parse(host).map_err(|e| {
                ctx.invalid(
                    KEY,
                    format!("is not a valid mysql:// URL{which}{source}: {e}"),
                )
            })?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(ctx.invalid(KEY, format!("mysql:// URL has no host{which}{source}")));
            }
            crate::store::connect::check(host).map_err(|e| {
                let prefix = match many {
                    true => format!("host {} of the list: ", n + 1),
                    false => String::new(),
                };
                ctx.invalid(KEY, format!("{prefix}{e}{source}"))
            })?;
        }
    } else {
        return Err(ctx.invalid(
            KEY,
            format!("must start with mysql:// or sqlite://{source}"),
        ));
    }
    Ok(DatabaseConfig {
        url: Secret::new(url),
        max_connections: ctx.at_least("database.max_connections", raw.max_connections, 8, 1)?,
        connect_timeout: ctx.positive(
            "database.connect_timeout",
            raw.connect_timeout,
            Duration::from_secs(5),
        )?,
        statement_timeout: ctx.positive(
            "database.statement_timeout",
            raw.statement_timeout,
            Duration::from_secs(30),
        )?,
        tcp_keepalive: ctx.positive(
            "database.tcp_keepalive",
            raw.tcp_keepalive,
            Duration::from_secs(15),
        )?,
    })
}

fn worker(raw: RawWorker, ctx: &Ctx<'_>) -> Result<WorkerConfig, ConfigError> {
    let batch_size = raw.batch_size.unwrap_or(200);
    if !(1..=5000).contains(&batch_size) {
        return Err(ctx.invalid(
            "worker.batch_size",
            format!("must be between 1 and 5000, got {batch_size}"),
        ));
    }
    Ok(WorkerConfig {
        batch_size,
        poll_interval: ctx.positive(
            "worker.poll_interval",
            raw.poll_interval,
            Duration::from_millis(200),
        )?,
        lease: ctx.positive("worker.lease", raw.lease, Duration::from_secs(60))?,
        concurrency: ctx.at_least("worker.concurrency", raw.concurrency, 4, 1)?,
        max_attempts: ctx.at_least("worker.max_attempts", raw.max_attempts, 5, 1)?,
        shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(10)),
    })
}

fn dispatch(raw: RawDispatch, ctx: &Ctx<'_>) -> Result<DispatchConfig, ConfigError> {
    let retry_base = ctx.positive(
        "dispatch.retry_base",
        raw.retry_base,
        Duration::from_secs(5),
    )?;
    let retry_max = ctx.positive(
        "dispatch.retry_max",
        raw.retry_max,
        Duration::from_secs(3600),
    )?;
    if retry_max < retry_base {
        return Err(ctx.invalid(
            "dispatch.retry_max",
            format!(
                "{} is shorter than dispatch.retry_base {}",
                humantime::format_duration(retry_max),
                humantime::format_duration(retry_base)
            ),
        ));
    }
    Ok(DispatchConfig {
        concurrency: ctx.at_least("dispatch.concurrency", raw.concurrency, 64, 1)?,
        batch_size: ctx.at_least("dispatch.batch_size", raw.batch_size, 500, 1)?,
        retry_base,
        retry_max,
    })
}

fn schedule(raw: RawSchedule, ctx: &Ctx<'_>) -> Result<ScheduleConfig, ConfigError> {
    Ok(ScheduleConfig {
        inventory_check: cron(
            ctx,
            "schedule.inventory_check",
            raw.inventory_check,
            "*/10 * * * * *",
        )?,
        reclaim_leases: cron(
            ctx,
            "schedule.reclaim_leases",
            raw.reclaim_leases,
            "*/15 * * * * *",
        )?,
        reconcile: cron(ctx, "schedule.reconcile", raw.reconcile, "0 0 3 * * *")?,
        expire_grants: cron(
            ctx,
            "schedule.expire_grants",
            raw.expire_grants,
            "0 * * * * *",
        )?,
        sample_stock: cron(
            ctx,
            "schedule.sample_stock",
            raw.sample_stock,
            "0 * * * * *",
        )?,
    })
}

/// Normalizes a cron expression to 6 fields (a 5-field one runs at second 0) and checks
/// it with the parser settings tokio-cron-scheduler 0.15 uses for `Job::new_async`
/// (seconds required; `dom_and_dow` changes when a job fires, not what parses).
fn cron(
    ctx: &Ctx<'_>,
    key: &str,
    raw: Option<String>,
    default: &str,
) -> Result<String, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default.to_owned());
    };
    let fields: Vec<&str> = raw.split_whitespace().collect();
    let normalized = match fields.len() {
        6 => fields.join(" "),
        5 => format!("0 {}", fields.join(" ")),
        n => {
            return Err(ctx.invalid(
                key,
                format!(
                    "{raw:?} has {n} field(s); expected 6 (second minute hour day-of-month \
                     month day-of-week) or 5 (the same without seconds)"
                ),
            ))
        }
    };
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&normalized)
        .map_err(|e| ctx.invalid(key, format!("{raw:?} is not a valid cron expression: {e}")))?;
    Ok(normalized)
}

fn alerts(
    raw: RawAlerts,
    channels: &channels::Channels,
    ctx: &Ctx<'_>,
) -> Result<AlertsConfig, ConfigError> {
    let channel = match raw.channel {
        Some(name) => Some(channels::reference(ctx, "alerts.channel", &name, channels)?),
        None => None,
    };
    Ok(AlertsConfig { channel })
}

fn http(raw: RawHttp, ctx: &Ctx<'_>) -> Result<HttpConfig, ConfigError> {
    let listen = ctx.listen("http.listen", raw.listen, "127.0.0.1:9464")?;
    let (max_connections, header_timeout) =
        ctx.listener_bounds("http", raw.max_connections, raw.header_timeout)?;
    Ok(HttpConfig {
        listen,
        max_connections,
        header_timeout,
        console_token: match raw.console_token {
            Some(token) => Some(console_token(ctx, token)?),
            None => None,
        },
    })
}

/// The shortest `http.console_token` taken: a guessable token would open the
/// console's actions to anyone who reaches the port.
pub const CONSOLE_TOKEN_MIN_CHARS: usize = 24;

/// `http.console_token`: printable ASCII without spaces (it is typed into a form and
/// may sit in a password manager), at least [`CONSOLE_TOKEN_MIN_CHARS`] long. The
/// message never repeats the token.
fn console_token(ctx: &Ctx<'_>, token: String) -> Result<Secret, ConfigError> {
    let key = "http.console_token";
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        let what = if bad.is_whitespace() {
            "a space or line break".to_owned()
        } else {
            format!("the character U+{:04X}", bad as u32)
        };
        return Err(ctx.invalid(
            key,
            format!(
                "the token holds {what}; use printable ASCII only (e.g. `openssl rand -hex 24`)"
            ),
        ));
    }
    let n = token.chars().count();
    if n < CONSOLE_TOKEN_MIN_CHARS {
        return Err(ctx.invalid(
            key,
            format!(
                "the token is {n} characters long; at least {CONSOLE_TOKEN_MIN_CHARS} are needed \
                 (e.g. `openssl rand -hex 24`)"
            ),
        ));
    }
    Ok(Secret::new(token))
}

fn logging(raw: RawLogging) -> LoggingConfig {
    LoggingConfig {
        format: match raw.format {
            Some(RawLogFormat::Json) => LogFormat::Json,
            Some(RawLogFormat::Human) | None => LogFormat::Human,
        },
    }
}
