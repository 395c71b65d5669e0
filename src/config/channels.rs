//! `channels:`: partner webhooks, their URLs and signing keys. Keys come from the file
//! (`secret`, or the list `secrets` while a partner rotates) or from variables it names
//! (`secret_env`, `secrets_env`) and are decoded here, so a malformed or short key stops
//! the daemon at start rather than at the first delivery. No message built here
//! contains a key.

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
/// The shortest key accepted, in bytes: the Standard Webhooks specification asks for
/// random keys of 24 to 64 bytes (192 to 512 bits). A shorter key is guessable offline
/// from one signed delivery.
const MIN_KEY_BYTES: usize = 24;

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
    let secrets = signing_keys(&base, &raw, ctx)?;
    Ok(ChannelConfig {
        name,
        url: raw.url.trim().to_owned(),
        secrets,
        timeout: ctx.positive(
            &format!("{base}.timeout"),
            raw.timeout,
            Duration::from_secs(15),
        )?,
        max_attempts: ctx.at_least(&format!("{base}.max_attempts"), raw.max_attempts, 8, 1)?,
    })
}

/// The channel's keys from whichever one of `secret`, `secret_env`, `secrets` and
/// `secrets_env` is set. A list is what lets a partner rotate: the daemon signs with
/// the old key and the new one until the partner has switched.
fn signing_keys(
    base: &str,
    raw: &RawChannel,
    ctx: &Ctx<'_>,
) -> Result<Vec<SigningKey>, ConfigError> {
    only_one_source(base, raw, ctx)?;
    let in_file = |key: String, text: &str| signing_key(text).map_err(|why| ctx.invalid(key, why));
    if let Some(text) = &raw.secret {
        return Ok(vec![in_file(format!("{base}.secret"), text)?]);
    }
    if let Some(var) = &raw.secret_env {
        return Ok(vec![secret_from_env(
            &format!("{base}.secret_env"),
            var,
            ctx,
        )?]);
    }
    let (key, keys) = if let Some(texts) = &raw.secrets {
        let key = format!("{base}.secrets");
        let keys = texts.iter().enumerate();
        let keys = keys.map(|(i, text)| in_file(format!("{key}[{i}]"), text));
        let keys = keys.collect::<Result<Vec<_>, _>>()?;
        (key, keys)
    } else {
        let key = format!("{base}.secrets_env");
        let vars = raw.secrets_env.iter().flatten().enumerate();
        let keys = vars.map(|(i, var)| secret_from_env(&format!("{key}[{i}]"), var, ctx));
        let keys = keys.collect::<Result<Vec<_>, _>>()?;
        (key, keys)
    };
    distinct(&key, keys, ctx)
}

/// Refuses a channel that gives no key, or its keys in more than one way.
fn only_one_source(base: &str, raw: &RawChannel, ctx: &Ctx<'_>) -> Result<(), ConfigError> {
    let given: Vec<&str> = [
        ("secret", raw.secret.is_some()),
        ("secret_env", raw.secret_env.is_some()),
        ("secrets", raw.secrets.is_some()),
        ("secrets_env", raw.secrets_env.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    match given[..] {
        [] => Err(ctx.invalid(
            base,
            "needs secret (a whsec_ key), secret_env (the variable that holds one), \
             or secrets / secrets_env (a list of them, while rotating)",
        )),
        [_] => Ok(()),
        [first, second] => Err(ctx.invalid(base, format!("set {first} or {second}, not both"))),
        _ => Err(ctx.invalid(base, format!("set only one of {}", given.join(", ")))),
    }
}

/// A list of keys must hold at least one, and no key twice: a repeated key is most
/// likely a new key that was never pasted in.
fn distinct(
    key: &str,
    keys: Vec<SigningKey>,
    ctx: &Ctx<'_>,
) -> Result<Vec<SigningKey>, ConfigError> {
    if keys.is_empty() {
        return Err(ctx.invalid(key, "is empty; list at least one key"));
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(first) = keys[..i].iter().position(|earlier| earlier == k) {
            return Err(ctx.invalid(
                format!("{key}[{i}]"),
                format!("is the same key as {key}[{first}]"),
            ));
        }
    }
    Ok(keys)
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
    if bytes.len() < MIN_KEY_BYTES {
        let (n, unit) = (bytes.len(), if bytes.len() == 1 { "byte" } else { "bytes" });
        return Err(format!(
            "holds a key of {n} {unit}; at least {MIN_KEY_BYTES} bytes are needed"
        ));
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
