//! The config file as written: serde structs that mirror the YAML keys one for one and
//! refuse unknown keys. Only shapes and types are checked here, where serde knows the
//! key path and the line; what the values mean (ranges, references, domain values) is
//! checked in `validate`.
//!
//! Every key is an `Option` so that `worker:` with nothing under it, or a missing
//! section, both mean "use the defaults".

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::ConfigError;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of config sections")]
pub(super) struct RawConfig {
    pub database: Option<RawDatabase>,
    pub rules: Option<RawRules>,
    pub worker: Option<RawWorker>,
    pub dispatch: Option<RawDispatch>,
    #[serde(default, deserialize_with = "unique_channels")]
    pub channels: Vec<(String, RawChannel)>,
    pub campaigns: Option<Vec<RawCampaign>>,
    pub schedule: Option<RawSchedule>,
    pub alerts: Option<RawAlerts>,
    pub http: Option<RawHttp>,
    pub api: Option<super::api::RawApi>,
    pub logging: Option<RawLogging>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of database settings")]
pub(super) struct RawDatabase {
    pub url: Option<String>,
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tcp_keepalive: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with dir and limits")]
pub(super) struct RawRules {
    pub dir: Option<PathBuf>,
    pub limits: Option<RawRuleLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of rule limits")]
pub(super) struct RawRuleLimits {
    pub max_operations: Option<u64>,
    pub max_call_depth: Option<usize>,
    pub max_string_size: Option<usize>,
    pub max_array_size: Option<usize>,
    pub max_map_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_time: Option<Duration>,
    pub max_memory: Option<RawBytes>,
}

/// A size as written: a number of bytes, or text with a binary unit (`16MiB`); what
/// the text means is checked in `validate`, where the key path is known.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a size in bytes, such as 16777216 or \"16MiB\"")]
pub(super) enum RawBytes {
    Count(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of worker settings")]
pub(super) struct RawWorker {
    pub batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    pub concurrency: Option<usize>,
    pub max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of dispatch settings")]
pub(super) struct RawDispatch {
    pub concurrency: Option<usize>,
    pub batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub retry_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_max: Option<Duration>,
}

/// `channels.<name>`. Deliberately not `Debug`: it holds the secret as written.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a channel: a map with url and secret, secret_env, secrets or secrets_env"
)]
pub(super) struct RawChannel {
    pub url: String,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub secrets_env: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
}

impl fmt::Debug for RawChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawChannel")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("secret_env", &self.secret_env)
            .field(
                "secrets",
                &self.secrets.as_ref().map(|keys| vec!["***"; keys.len()]),
            )
            .field("secrets_env", &self.secrets_env)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a campaign: a map with id, event, audience and coupons"
)]
pub(super) struct RawCampaign {
    pub id: String,
    pub event: String,
    pub audience: String,
    pub per_user_limit: Option<i64>,
    #[serde(default, with = "humantime_serde")]
    pub per_user_limit_period: Option<Duration>,
    pub daily_budget: Option<RawMoney>,
    pub timezone: Option<String>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub budget: Option<RawMoney>,
    pub coupons: Vec<RawCoupon>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a coupon: a map with id, face_value, stock and channel"
)]
pub(super) struct RawCoupon {
    pub id: String,
    pub face_value: RawMoney,
    pub stock: Option<i64>,
    pub low_stock: Option<i64>,
    pub channel: String,
    pub codes: Option<RawCodes>,
    #[serde(default, with = "humantime_serde")]
    pub valid_for: Option<Duration>,
    pub valid_until: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub min_validity: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub remind_before: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with generate (a pattern) or pool: true"
)]
pub(super) struct RawCodes {
    pub generate: Option<String>,
    pub pool: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of cron expressions")]
pub(super) struct RawSchedule {
    pub inventory_check: Option<String>,
    pub reclaim_leases: Option<String>,
    pub reconcile: Option<String>,
    pub expire_grants: Option<String>,
    pub sample_stock: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with channel")]
pub(super) struct RawAlerts {
    pub channel: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of listener settings")]
pub(super) struct RawHttp {
    pub listen: Option<String>,
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    pub console_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with format")]
pub(super) struct RawLogging {
    pub format: Option<RawLogFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawLogFormat {
    Human,
    Json,
}

/// An amount as written: `"10.00"`, `10` or `8.5`, kept as text for `Money::parse`.
///
/// YAML hands a bare number over as an `f64`, not as its source text; Rust prints an
/// `f64` as the shortest text that reads back to the same value (`8.5`, `50000.5`,
/// `8.125`), which is the text ops wrote for any amount an `f64` holds exactly enough
/// to matter, so a third decimal is still seen and refused.
#[derive(Debug)]
pub(super) struct RawMoney(pub String);

impl<'de> Deserialize<'de> for RawMoney {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;

        impl Visitor<'_> for MoneyVisitor {
            type Value = RawMoney;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount like \"10.00\" or 10")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMoney, E> {
                Ok(RawMoney(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawMoney, E> {
                Ok(RawMoney(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawMoney, E> {
                Ok(RawMoney(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawMoney, E> {
                Ok(RawMoney(v.to_string()))
            }
        }

        deserializer.deserialize_any(MoneyVisitor)
    }
}

/// `channels:` as a list of (name, channel) in file order, refusing a name given twice
/// (a plain map would keep the last one silently).
fn unique_channels<'de, D>(deserializer: D) -> Result<Vec<(String, RawChannel)>, D::Error>
where
    D: Deserializer<'de>,
{
    struct ChannelsVisitor;

    impl<'de> Visitor<'de> for ChannelsVisitor {
        type Value = Vec<(String, RawChannel)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of channel name to channel")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut channels: Vec<(String, RawChannel)> = Vec::new();
            while let Some((name, channel)) = map.next_entry::<String, RawChannel>()? {
                if channels.iter().any(|(seen, _)| *seen == name) {
                    return Err(de::Error::custom(format!(
                        "channel {name:?} is defined twice"
                    )));
                }
                channels.push((name, channel));
            }
            Ok(channels)
        }
    }

    deserializer.deserialize_map(ChannelsVisitor)
}

/// Reads the YAML into a [`RawConfig`]; an empty file (or one with only comments) is
/// the all-defaults config.
pub(super) fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let raw: Option<RawConfig> =
        serde_path_to_error::deserialize(deserializer).map_err(|e| yaml_error(e, file))?;
    Ok(raw.unwrap_or_default())
}

/// Turns a serde error into [`ConfigError::Invalid`] keyed by the path serde was at,
/// or by line and column when the YAML itself is broken.
fn yaml_error(error: serde_path_to_error::Error<serde_yaml::Error>, file: &str) -> ConfigError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let mut message = inner.to_string();
    let key = if path == "." {
        match inner.location() {
            Some(at) => {
                let place = format!("line {} column {}", at.line(), at.column());
                if let Some(short) = message.strip_suffix(&format!(" at {place}")) {
                    message = short.to_owned();
                }
                place
            }
            None => "(document)".to_owned(),
        }
    } else {
        // serde_yaml already starts its message with the path of the map it was in.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if is_path_prefix(prefix, &path) {
                message = rest.to_owned();
            }
        }
        path
    };
    // Serde quotes a string it did not expect ("invalid type: string \"whsec_…\",
    // expected struct RawChannel"). Where a secret or a database password can sit, a
    // misplaced one would be printed, so there the quoted text is left out.
    if key == "(document)"
        || key.starts_with("line ")
        || key.starts_with("database")
        || key.starts_with("channels")
    {
        message = redact_quoted_strings(&message);
    }
    ConfigError::Invalid {
        file: file.to_owned(),
        key,
        message,
    }
}

/// Whether `prefix` is `path` or a parent of it (`worker` of `worker.lease`,
/// `campaigns[0]` of `campaigns[0].id`).
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Replaces each `string "…"` (serde's `Unexpected::Str`, Debug-escaped) with
/// `a string`.
fn redact_quoted_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        let mut chars = rest[start + MARK.len()..].char_indices();
        let mut end = rest.len() - start - MARK.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[start + MARK.len() + end..];
    }
    out.push_str(rest);
    out
}
