//! `channels:`: partner webhooks, their URLs and signing keys. Keys come from the file
//! (`secret`) or from a variable it names (`secret_env`) and are decoded here, so a
//! malformed key stops the daemon at start rather than at the first delivery. No
//! message built here contains a key.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::raw::RawChannel;
use super::validate::Ctx;
use super::{ChannelConfig, ConfigError, SigningKey};
use crate::domain::ChannelName;

/// The validated channels, by name.
pub(super) type Channels = BTreeMap<ChannelName, ChannelConfig>;

/// The prefix of a Standard Webhooks secret.
const WHSEC: &str = "whsec_";

/// Validates every channel, in file order.
pub(super) fn channels(
    raw: Vec<(String, RawChannel)>,
    ctx: &Ctx<'_>,
) -> Result<Channels, ConfigError> {
    raw.into_iter()
        .map(|(name, channel)| {
            let config = self::channel(&name, channel, ctx)?;
            Ok((config.name.clone(), config))
        })
        .collect()
}

fn channel(raw_name: &str, raw: RawChannel, ctx: &Ctx<'_>) -> Result<ChannelConfig, ConfigError> {
    let base = format!("channels.{raw_name}");
    let name = ctx.domain(&base, raw_name, ChannelName::parse)?;
    let url_key = format!("{base}.url");
    // The URL is not echoed: a partner may put a token in its query string.
    let url = reqwest::Url::parse(raw.url.trim())
        .map_err(|e| ctx.invalid(&url_key, format!("is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ctx.invalid(
            &url_key,
            format!("must be an http or https URL, not {}:", url.scheme()),
        ));
    }
    let secret = match (raw.secret, raw.secret_env) {
        (Some(_), Some(_)) => {
            return Err(ctx.invalid(&base, "set secret or secret_env, not both"));
        }
        (None, None) => {
            return Err(ctx.invalid(
                &base,
                "needs secret (a whsec_ key) or secret_env (the variable that holds one)",
            ));
        }
        (Some(text), None) => {
            signing_key(&text).map_err(|why| ctx.invalid(format!("{base}.secret"), why))?
        }
        (None, Some(var)) => secret_from_env(&format!("{base}.secret_env"), &var, ctx)?,
    };
    Ok(ChannelConfig {
        name,
        url: raw.url.trim().to_owned(),
        secret,
        timeout: ctx.positive(
            &format!("{base}.timeout"),
            raw.timeout,
            Duration::from_secs(15),
        )?,
        max_attempts: ctx.at_least(&format!("{base}.max_attempts"), raw.max_attempts, 8, 1)?,
    })
}

fn secret_from_env(key: &str, var: &str, ctx: &Ctx<'_>) -> Result<SigningKey, ConfigError> {
    if var.trim().is_empty() {
        return Err(ctx.invalid(key, "is empty; name the variable that holds the key"));
    }
    let value = (ctx.env)(var)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            ctx.invalid(
                key,
                format!("environment variable {var} is not set or is empty"),
            )
        })?;
    signing_key(&value).map_err(|why| ctx.invalid(key, format!("environment variable {var} {why}")))
}

/// Decodes `whsec_<base64>` (standard alphabet, padded), the form Standard Webhooks
/// libraries hand out and accept. The reason for a refusal never quotes the key.
/// (Also used by the demo receiver.)
pub fn signing_key(text: &str) -> Result<SigningKey, String> {
    let Some(encoded) = text.trim().strip_prefix(WHSEC) else {
        return Err(format!(
            "must be {WHSEC:?} followed by the base64 key (a Standard Webhooks secret)"
        ));
    };
    let bytes = STANDARD.decode(encoded).map_err(|_| {
        format!("is not valid base64 (standard alphabet, with padding) after {WHSEC:?}")
    })?;
    if bytes.is_empty() {
        return Err(format!("holds no key after {WHSEC:?}"));
    }
    Ok(SigningKey(bytes))
}

/// Resolves a reference to a channel (`campaigns[0].coupons[1].channel`,
/// `alerts.channel`).
pub(super) fn reference(
    ctx: &Ctx<'_>,
    key: &str,
    raw: &str,
    channels: &Channels,
) -> Result<ChannelName, ConfigError> {
    let name = ctx.domain(key, raw, ChannelName::parse)?;
    if channels.contains_key(&name) {
        return Ok(name);
    }
    let known = if channels.is_empty() {
        "none are configured".to_owned()
    } else {
        let names: Vec<&str> = channels.keys().map(ChannelName::as_str).collect();
        format!("known: {}", names.join(", "))
    };
    Err(ctx.invalid(key, format!("unknown channel {raw:?} ({known})")))
}
