//! `api:`, the HTTP API for client apps and partners (`api.listen`, off when unset):
//! its listener's bounds, as on `http.listen`, and its clients, each known by the
//! SHA-256 of its bearer token (the token itself is never in the config) and allowed
//! the scopes it names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Ctx;
use super::ConfigError;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `triggers`: post trigger requests and read them.
    Triggers,
    /// `grant_updates`: redeem, unredeem and revoke grants.
    GrantUpdates,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 2] = [Scope::Triggers, Scope::GrantUpdates];

    /// The word the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Triggers => "triggers",
            Scope::GrantUpdates => "grant_updates",
        }
    }
}

/// `api.clients.<name>`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    /// The client's name, as in the config; never the token.
    pub name: String,
    /// `token_sha256`: the SHA-256 of the client's bearer token.
    pub token_sha256: [u8; 32],
    /// `scopes`: what it may do.
    pub scopes: Vec<Scope>,
}

/// `api:`
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// `api.listen`: the HTTP API's listener; off when unset.
    pub listen: Option<SocketAddr>,
    /// `api.clients`, by name.
    pub clients: Vec<ApiClient>,
    /// `api.max_connections` [64]: as `http.max_connections`.
    pub max_connections: usize,
    /// `api.header_timeout` [5s]: as `http.header_timeout`.
    pub header_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with listen, clients, max_connections and header_timeout"
)]
pub(super) struct RawApi {
    pub listen: Option<String>,
    pub clients: Option<BTreeMap<String, RawApiClient>>,
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with token_sha256 and scopes")]
pub(super) struct RawApiClient {
    pub token_sha256: Option<String>,
    pub scopes: Option<Vec<String>>,
}

/// Validates `api:`; `http_listen` is `http.listen`, which it may not share.
pub(super) fn api(
    raw: RawApi,
    http_listen: Option<SocketAddr>,
    ctx: &Ctx<'_>,
) -> Result<ApiConfig, ConfigError> {
    let listen = ctx.listen("api.listen", raw.listen, "127.0.0.1:8080")?;
    if let (Some(api), Some(http)) = (listen, http_listen) {
        if api == http && api.port() != 0 {
            return Err(ctx.invalid("api.listen", format!("{api} is http.listen too")));
        }
    }
    let mut clients = Vec::new();
    for (name, client) in raw.clients.unwrap_or_default() {
        let client = api_client(name, client, ctx)?;
        if let Some(other) = clients
            .iter()
            .find(|c: &&ApiClient| c.token_sha256 == client.token_sha256)
        {
            return Err(ctx.invalid(
                format!("api.clients.{}.token_sha256", client.name),
                format!(
                    "is the token of api.clients.{} too: give each client its own token",
                    other.name
                ),
            ));
        }
        clients.push(client);
    }
    if listen.is_some() && clients.is_empty() {
        return Err(ctx.invalid(
            "api.clients",
            "api.listen is set but no client is: every request would be refused",
        ));
    }
    let (max_connections, header_timeout) =
        ctx.listener_bounds("api", raw.max_connections, raw.header_timeout)?;
    Ok(ApiConfig {
        listen,
        clients,
        max_connections,
        header_timeout,
    })
}

fn api_client(name: String, raw: RawApiClient, ctx: &Ctx<'_>) -> Result<ApiClient, ConfigError> {
    let key = |field: &str| format!("api.clients.{name}.{field}");
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ctx.invalid(
            format!("api.clients.{name:?}"),
            "a client's name is one word of printable characters",
        ));
    }
    let hex = raw
        .token_sha256
        .ok_or_else(|| ctx.invalid(key("token_sha256"), "is missing"))?;
    let token_sha256 = sha256_hex(hex.trim()).ok_or_else(|| {
        ctx.invalid(
            key("token_sha256"),
            "must be 64 hex digits, the SHA-256 of the client's token \
             (printf %s \"$TOKEN\" | sha256sum)",
        )
    })?;
    let words = raw
        .scopes
        .ok_or_else(|| ctx.invalid(key("scopes"), "is missing"))?;
    let mut scopes = Vec::new();
    for word in &words {
        let scope = Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| {
                ctx.invalid(
                    key("scopes"),
                    format!("{word:?} is not one of triggers, grant_updates"),
                )
            })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ctx.invalid(
            key("scopes"),
            "is empty: name triggers, grant_updates or both",
        ));
    }
    Ok(ApiClient {
        name,
        token_sha256,
        scopes,
    })
}

/// 64 hex digits as 32 bytes.
fn sha256_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn load(api: &str) -> Result<Config, String> {
        Config::from_yaml_with_env(api, Path::new("c.yaml"), &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_api_is_off_by_default_and_takes_its_bounds_like_http() {
        let c = load("").unwrap();
        assert!(c.api.listen.is_none() && c.api.clients.is_empty());
        assert_eq!(c.api.max_connections, 64);
        let c = load(&format!(
            "api:\n  listen: 127.0.0.1:8080\n  header_timeout: 2s\n  clients:\n    \
             shop: {{ token_sha256: \"{HASH}\", scopes: [triggers, grant_updates] }}\n"
        ))
        .unwrap();
        assert_eq!(c.api.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.api.header_timeout, std::time::Duration::from_secs(2));
        assert_eq!(c.api.clients[0].name, "shop");
        assert_eq!(c.api.clients[0].token_sha256[0], 0x9f);
        assert_eq!(c.api.clients[0].scopes.len(), 2);
    }

    #[test]
    fn a_bad_api_section_is_refused_naming_the_key() {
        let client = |body: &str| format!("api:\n  clients:\n    shop: {body}\n");
        for (text, expected) in [
            ("api:\n  listen: here\n".to_owned(), "api.listen: \"here\" is not an IP address"),
            (client("{ scopes: [triggers] }"), "api.clients.shop.token_sha256: is missing"),
            (
                client("{ token_sha256: abc, scopes: [triggers] }"),
                "api.clients.shop.token_sha256: must be 64 hex digits",
            ),
            (
                client(&format!("{{ token_sha256: \"{}\", scopes: [triggers] }}", "g".repeat(64))),
                "api.clients.shop.token_sha256: must be 64 hex digits",
            ),
            (
                client(&format!("{{ token_sha256: \"{HASH}\", scopes: [admin] }}")),
                "api.clients.shop.scopes: \"admin\" is not one of triggers, grant_updates",
            ),
            (
                client(&format!("{{ token_sha256: \"{HASH}\", scopes: [] }}")),
                "api.clients.shop.scopes: is empty",
            ),
            (
                client(&format!("{{ token_sha256: \"{HASH}\", scope: [triggers] }}")),
                "unknown field `scope`",
            ),
            (
                format!(
                    "api:\n  clients:\n    a: {{ token_sha256: \"{HASH}\", scopes: [triggers] }}\n    \
                     b: {{ token_sha256: \"{HASH}\", scopes: [triggers] }}\n"
                ),
                "api.clients.b.token_sha256: is the token of api.clients.a too",
            ),
            ("api:\n  listen: 127.0.0.1:8080\n".to_owned(), "api.clients: api.listen is set but no client is"),
            ("api:\n  max_connections: 0\n".to_owned(), "api.max_connections: must be at least 1"),
            (
                format!(
                    "http:\n  listen: 127.0.0.1:9000\napi:\n  listen: 127.0.0.1:9000\n  clients:\n    \
                     a: {{ token_sha256: \"{HASH}\", scopes: [triggers] }}\n"
                ),
                "api.listen: 127.0.0.1:9000 is http.listen too",
            ),
        ] {
            let e = load(&text).expect_err(&text);
            assert!(e.contains(expected), "{e}\nexpected: {expected}");
            assert!(!e.contains(HASH), "a refusal does not repeat the hash: {e}");
        }
    }
}
