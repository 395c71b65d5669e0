use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::domain::Money;

const WALLET_KEY: &str = "whsec_ZXhhbXBsZSB3YWxsZXQga2V5OiByZXBsYWNlIG1lISE=";
const OPS_KEY: &str = "whsec_ZXhhbXBsZSBvcHMga2V5IC0tLSByZXBsYWNlIG1lISE=";

fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    };
    Config::from_yaml_with_env(text, Path::new("/etc/couponsd/couponsd.yaml"), &lookup)
}

fn parse(text: &str) -> Config {
    parse_with_env(text, &[]).unwrap_or_else(|e| panic!("config must parse: {e}"))
}

/// The error text for a config that must be refused.
fn refusal(text: &str) -> String {
    refusal_with_env(text, &[])
}

fn refusal_with_env(text: &str, env: &[(&str, &str)]) -> String {
    match parse_with_env(text, env) {
        Ok(config) => panic!("config must be refused: {config:?}"),
        Err(e) => e.to_string(),
    }
}

/// A valid config with two channels and one campaign, to which a test appends.
fn with_channels(rest: &str) -> String {
    format!(
        "channels:\n  wallet:\n    url: https://wallet.example/hooks\n    secret: \"{WALLET_KEY}\"\n  \
         ops:\n    url: http://127.0.0.1:9000/ops\n    secret: \"{OPS_KEY}\"\n{rest}"
    )
}

const FULL: &str = r#"
database:
  url: "mysql://root@127.0.0.1:3306/couponsd"
  max_connections: 4
rules:
  dir: scripts
  limits:
    max_operations: 5000
    max_call_depth: 8
    max_string_size: 1024
    max_array_size: 100
    max_map_size: 200
    max_time: 20ms
    max_memory: 8MiB
worker:
  batch_size: 50
  poll_interval: 1s
  lease: 2m
  max_attempts: 3
  shutdown_grace: 30s
dispatch:
  concurrency: 16
  batch_size: 100
  retry_base: 2s
  retry_max: 30m
channels:
  wallet:
    url: "http://127.0.0.1:9000/webhooks/coupons"
    secret: "whsec_ZXhhbXBsZSB3YWxsZXQga2V5OiByZXBsYWNlIG1lISE="
    timeout: 5s
    max_attempts: 4
  ops:
    url: "https://ops.example/alerts"
    secret_env: OPS_SECRET
campaigns:
  - id: newcomer
    event: app_open
    audience: first_time
    per_user_limit: 2
    starts_at: 2026-12-01T00:00:00Z
    ends_at: 2026-12-31T23:59:59+02:00
    budget: 50000.5
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 1000, low_stock: 100, channel: wallet }
      - { id: NEW8, face_value: 8.5, stock: 0, channel: wallet }
schedule:
  inventory_check: "*/5 * * * * *"
  reclaim_leases: "*/30 * * * *"
  reconcile: "0 30 4 * * *"
  expire_grants: "30 */5 * * * *"
alerts:
  channel: ops
http:
  listen: 127.0.0.1:9464
logging:
  format: json
"#;

#[test]
fn full_example_parses_with_every_key() {
    let c = parse_with_env(FULL, &[("OPS_SECRET", OPS_KEY)]).unwrap();
    assert_eq!(
        c.database.url.expose(),
        "mysql://root@127.0.0.1:3306/couponsd"
    );
    assert_eq!(c.database.max_connections, 4);
    assert_eq!(c.rules.dir, PathBuf::from("/etc/couponsd/scripts"));
    let limits = RuleLimits {
        max_operations: 5000,
        max_call_depth: 8,
        max_string_size: 1024,
        max_array_size: 100,
        max_map_size: 200,
        max_time: Duration::from_millis(20),
        max_memory: 8 << 20,
    };
    assert_eq!(c.rules.limits, limits);
    assert_eq!(c.worker.batch_size, 50);
    assert_eq!(c.worker.poll_interval, Duration::from_secs(1));
    assert_eq!(c.worker.lease, Duration::from_secs(120));
    assert_eq!(c.worker.max_attempts, 3);
    assert_eq!(c.worker.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.dispatch.concurrency, 16);
    assert_eq!(c.dispatch.batch_size, 100);
    assert_eq!(c.dispatch.retry_base, Duration::from_secs(2));
    assert_eq!(c.dispatch.retry_max, Duration::from_secs(1800));

    let wallet = c.channel(&ChannelName::parse("wallet").unwrap()).unwrap();
    assert_eq!(wallet.url, "http://127.0.0.1:9000/webhooks/coupons");
    assert_eq!(
        wallet.secrets,
        [SigningKey(b"example wallet key: replace me!!".to_vec())]
    );
    assert_eq!(wallet.timeout, Duration::from_secs(5));
    assert_eq!(wallet.max_attempts, 4);
    let ops = c.channel(&ChannelName::parse("ops").unwrap()).unwrap();
    assert_eq!(
        ops.secrets,
        [SigningKey(b"example ops key --- replace me!!".to_vec())]
    );
    assert_eq!(ops.timeout, Duration::from_secs(15));
    assert_eq!(ops.max_attempts, 8);

    let [campaign] = &c.campaigns[..] else {
        panic!("one campaign")
    };
    assert_eq!(campaign.id.as_str(), "newcomer");
    assert_eq!(campaign.event.as_str(), "app_open");
    assert_eq!(campaign.audience.as_str(), "first_time");
    assert_eq!(campaign.per_user_limit, 2);
    assert_eq!(
        campaign.starts_at.unwrap().to_rfc3339(),
        "2026-12-01T00:00:00+00:00"
    );
    assert_eq!(
        campaign.ends_at.unwrap().to_rfc3339(),
        "2026-12-31T21:59:59+00:00"
    );
    assert_eq!(campaign.budget, Some(Money::from_cents(5_000_050)));
    let ids: Vec<&str> = campaign.coupons.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["NEW10", "NEW8"]);
    let first = &campaign.coupons[0];
    assert_eq!(
        (first.face_value.cents(), first.stock, first.low_stock),
        (1000, 1000, 100)
    );
    assert_eq!(first.channel.as_str(), "wallet");
    let second = &campaign.coupons[1];
    assert_eq!(
        (second.face_value.cents(), second.stock, second.low_stock),
        (850, 0, 0)
    );

    assert_eq!(c.schedule.inventory_check, "*/5 * * * * *");
    assert_eq!(c.schedule.reclaim_leases, "0 */30 * * * *");
    assert_eq!(c.schedule.reconcile, "0 30 4 * * *");
    assert_eq!(c.schedule.expire_grants, "30 */5 * * * *");
    assert_eq!(c.alerts.channel.unwrap().as_str(), "ops");
    assert_eq!(c.http.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(c.logging.format, LogFormat::Json);
}

#[test]
fn example_file_at_the_repo_root_parses() {
    let text = include_str!("../../couponsd.example.yaml");
    let c = Config::from_yaml_with_env(text, Path::new("couponsd.example.yaml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.channels.keys().map(ChannelName::as_str).collect();
    assert_eq!(names, ["ops", "wallet"]);
    let chains: Vec<(&str, &str, Vec<&str>)> = c
        .campaigns
        .iter()
        .map(|c| {
            let coupons = c.coupons.iter().map(|k| k.id.as_str()).collect();
            (c.id.as_str(), c.audience.as_str(), coupons)
        })
        .collect();
    assert_eq!(
        chains,
        [
            ("newcomer", "first_time", vec!["NEW10", "NEW8"]),
            ("loyalty", "returning", vec!["BACK5"]),
        ]
    );
    assert_eq!(c.database.url.expose(), "sqlite://couponsd.db");
    assert_eq!(c.rules.dir, PathBuf::from("rules"));
    assert_eq!(c.alerts.channel.unwrap().as_str(), "ops");
}

#[test]
fn defaults_apply_to_an_empty_or_minimal_file() {
    for text in [
        "",
        "# only a comment\n",
        "database:\n",
        "worker: {}\nchannels:\ncampaigns: []\n",
    ] {
        let c = parse(text);
        assert_eq!(c.database.url.expose(), "sqlite://couponsd.db", "{text:?}");
        assert_eq!(c.database.max_connections, 8);
        assert_eq!(c.rules.dir, PathBuf::from("/etc/couponsd/rules"));
        assert_eq!(c.rules.limits, RuleLimits::default());
        assert_eq!(c.worker.batch_size, 200);
        assert_eq!(c.worker.poll_interval, Duration::from_millis(200));
        assert_eq!(c.worker.lease, Duration::from_secs(60));
        assert_eq!(c.worker.max_attempts, 5);
        assert_eq!(c.worker.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.dispatch.concurrency, 64);
        assert_eq!(c.dispatch.batch_size, 500);
        assert_eq!(c.dispatch.retry_base, Duration::from_secs(5));
        assert_eq!(c.dispatch.retry_max, Duration::from_secs(3600));
        assert!(c.channels.is_empty() && c.campaigns.is_empty());
        assert_eq!(c.schedule.inventory_check, "*/10 * * * * *");
        assert_eq!(c.schedule.reclaim_leases, "*/15 * * * * *");
        assert_eq!(c.schedule.reconcile, "0 0 3 * * *");
        assert_eq!(c.schedule.expire_grants, "0 * * * * *");
        assert!(c.alerts.channel.is_none() && c.http.listen.is_none());
        assert_eq!(c.logging.format, LogFormat::Human);
    }
}

#[test]
fn database_url_from_the_environment_overrides_the_file() {
    let text = "database:\n  url: sqlite://file.db\n";
    let url = "mysql://app:pw@db:3306/couponsd";
    let c = parse_with_env(text, &[("COUPONSD_DATABASE_URL", url)]).unwrap();
    assert_eq!(c.database.url.expose(), url);
    let c = parse_with_env(text, &[("COUPONSD_DATABASE_URL", "")]).unwrap();
    assert_eq!(c.database.url.expose(), "sqlite://file.db");
    let e = refusal_with_env("", &[("COUPONSD_DATABASE_URL", "postgres://x")]);
    assert!(
        e.contains(
            "database.url: must start with mysql:// or sqlite:// (from COUPONSD_DATABASE_URL)"
        ),
        "{e}"
    );
}

#[test]
fn a_bad_tls_parameter_in_the_database_url_stops_the_start_under_its_key() {
    let e = refusal("database:\n  url: \"mysql://app:pw@db/couponsd?ssl-mode=VERIFY\"\n");
    assert!(
        e.contains("database.url: ssl-mode must be DISABLED, REQUIRED or VERIFY_IDENTITY"),
        "{e}"
    );
    let url = "mysql://app:pw@db/couponsd?ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem";
    let e = refusal_with_env("", &[("COUPONSD_DATABASE_URL", url)]);
    assert!(
        e.contains("database.url: ssl-ca: /nonexistent/ca.pem: ")
            && e.ends_with("(from COUPONSD_DATABASE_URL)"),
        "{e}"
    );
    let c = parse("database:\n  url: \"mysql://app:pw@db/couponsd?ssl-mode=REQUIRED\"\n");
    assert!(c.database.url.expose().ends_with("?ssl-mode=REQUIRED"));
}

#[test]
fn a_list_of_database_hosts_is_checked_host_by_host_under_its_key() {
    let c = parse("database:\n  url: \"mysql://app:pw@db1:3306,db2:3306/couponsd\"\n");
    assert_eq!(
        c.database.url.expose(),
        "mysql://app:pw@db1:3306,db2:3306/couponsd"
    );
    let e = refusal("database:\n  url: \"mysql://app:pw@db1:3306,,db3:3306/couponsd\"\n");
    assert!(
        e.contains("database.url: host 2 of the list is empty"),
        "{e}"
    );
    let e = refusal("database:\n  url: \"mysql://app:pw@db1:3306,db1:3306/couponsd\"\n");
    assert!(
        e.contains("database.url: host db1:3306 is listed twice"),
        "{e}"
    );
    let e = refusal("database:\n  url: \"mysql://app:pw@db1,db2/couponsd?ssl-mode=VERIFY\"\n");
    assert!(
        e.contains("database.url: host 1 of the list: ssl-mode must be DISABLED"),
        "{e}"
    );
    let e = refusal("database:\n  url: \"mysql://app:pw@db1,db2:x/couponsd\"\n");
    assert!(
        e.contains("database.url: is not a valid mysql:// URL (host 2 of the list): "),
        "{e}"
    );
}

#[test]
fn unknown_key_is_refused_with_its_path() {
    let e = refusal("worker:\n  poll_intervall: 1s\n");
    assert!(e.starts_with("/etc/couponsd/couponsd.yaml: worker"), "{e}");
    assert!(e.contains("unknown field `poll_intervall`"), "{e}");
    let e = refusal(&with_channels("campaigns:\n  - { id: a, event: e, audience: u, coupons: [{ id: C, face_value: 1, stock: 1, channel: ops, colour: red }] }\n"));
    assert!(e.contains("campaigns[0].coupons[0]"), "{e}");
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = refusal("databse:\n  url: sqlite://x.db\n");
    assert!(e.contains("unknown field `databse`"), "{e}");
}

#[test]
fn bad_duration_names_its_path_and_line() {
    let e = refusal("worker:\n  poll_interval: 2 fortnights\n");
    assert!(e.contains(": worker.poll_interval: "), "{e}");
    assert!(e.contains("duration"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn broken_yaml_names_line_and_column() {
    let e = refusal("worker:\n  lease: [1s\n");
    assert!(e.contains("line "), "{e}");
    assert!(e.contains("column "), "{e}");
}

#[test]
fn unknown_channel_reference_is_named() {
    let campaign = "campaigns:\n  - id: a\n    event: app_open\n    audience: first_time\n    coupons:\n      - { id: C1, face_value: 1, stock: 1, channel: wallet }\n      - { id: C2, face_value: 1, stock: 1, channel: walet }\n";
    let e = refusal(&with_channels(campaign));
    assert!(
        e.ends_with(
            r#": campaigns[0].coupons[1].channel: unknown channel "walet" (known: ops, wallet)"#
        ),
        "{e}"
    );
    let e = refusal(&with_channels("alerts:\n  channel: pager\n"));
    assert!(
        e.contains(r#"alerts.channel: unknown channel "pager""#),
        "{e}"
    );
    let e = refusal("alerts:\n  channel: ops\n");
    assert!(e.contains("none are configured"), "{e}");
}

#[test]
fn duplicate_coupon_id_across_campaigns_names_both_places() {
    let campaigns = "campaigns:\n  - { id: a, event: e, audience: u, coupons: [{ id: X, face_value: 1, stock: 1, channel: ops }] }\n  - { id: b, event: e, audience: v, coupons: [{ id: Y, face_value: 1, stock: 1, channel: ops }, { id: X, face_value: 2, stock: 1, channel: ops }] }\n";
    let e = refusal(&with_channels(campaigns));
    assert!(e.contains(r#"campaigns[1].coupons[1].id: coupon id "X" is already used at campaigns[0].coupons[0].id"#), "{e}");
}

#[test]
fn duplicate_campaign_or_channel_is_refused() {
    let campaigns = "campaigns:\n  - { id: a, event: e, audience: u, coupons: [{ id: X, face_value: 1, stock: 1, channel: ops }] }\n  - { id: a, event: e, audience: v, coupons: [{ id: Y, face_value: 1, stock: 1, channel: ops }] }\n";
    let e = refusal(&with_channels(campaigns));
    assert!(
        e.contains(r#"campaigns[1].id: campaign id "a" is already used at campaigns[0].id"#),
        "{e}"
    );
    let e = refusal(&format!("channels:\n  ops: {{ url: http://a/, secret: \"{OPS_KEY}\" }}\n  ops: {{ url: http://b/, secret: \"{OPS_KEY}\" }}\n"));
    assert!(e.contains(r#"channel "ops" is defined twice"#), "{e}");
}

#[test]
fn missing_secret_env_names_the_variable() {
    let text = "channels:\n  wallet:\n    url: http://127.0.0.1/\n    secret_env: WALLET_SECRET\n";
    let e = refusal(text);
    assert!(
        e.contains("channels.wallet.secret_env: environment variable WALLET_SECRET is not set"),
        "{e}"
    );
    let c = parse_with_env(text, &[("WALLET_SECRET", WALLET_KEY)]).unwrap();
    assert_eq!(
        c.channels.values().next().unwrap().secrets,
        [SigningKey(b"example wallet key: replace me!!".to_vec())]
    );
}

#[test]
fn channel_needs_exactly_one_well_formed_secret_and_an_http_url() {
    let channel = |body: &str| format!("channels:\n  wallet:\n    url: http://127.0.0.1/\n{body}");
    let e = refusal(&channel(&format!(
        "    secret: \"{WALLET_KEY}\"\n    secret_env: X\n"
    )));
    assert!(
        e.contains("channels.wallet: set secret or secret_env, not both"),
        "{e}"
    );
    let e = refusal(&channel(""));
    assert!(e.contains("channels.wallet: needs secret"), "{e}");
    let e = refusal(&channel("    secret: plain-text-password\n"));
    assert!(
        e.contains(r#"channels.wallet.secret: must be "whsec_" followed by"#),
        "{e}"
    );
    let e = refusal(&channel("    secret: whsec_not*base64\n"));
    assert!(
        e.contains("channels.wallet.secret: is not valid base64"),
        "{e}"
    );
    let e = refusal(&format!(
        "channels:\n  wallet:\n    url: ftp://x/\n    secret: \"{WALLET_KEY}\"\n"
    ));
    assert!(
        e.contains("channels.wallet.url: must be an http or https URL, not ftp:"),
        "{e}"
    );
    let e = refusal(&format!(
        "channels:\n  wallet:\n    url: not a url\n    secret: \"{WALLET_KEY}\"\n"
    ));
    assert!(e.contains("channels.wallet.url: is not a valid URL"), "{e}");
}

#[test]
fn a_key_shorter_than_24_bytes_is_refused_naming_its_key() {
    use base64::Engine as _;
    let whsec = |n: usize| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        format!("whsec_{encoded}")
    };
    let channel = |body: &str| format!("channels:\n  wallet:\n    url: http://127.0.0.1/\n{body}");
    let e = refusal(&channel(&format!("    secret: \"{}\"\n", whsec(1))));
    assert!(
        e.contains("channels.wallet.secret: holds a key of 1 byte; at least 24 bytes are needed"),
        "{e}"
    );
    let e = refusal_with_env(
        &channel("    secret_env: SHORT\n"),
        &[("SHORT", &whsec(23))],
    );
    assert!(
        e.contains(
            "channels.wallet.secret_env: environment variable SHORT holds a key of 23 bytes; \
             at least 24 bytes are needed"
        ),
        "{e}"
    );
    let e = refusal(&channel(&format!(
        "    secrets: [\"{WALLET_KEY}\", \"{}\"]\n",
        whsec(16)
    )));
    assert!(
        e.contains("channels.wallet.secrets[1]: holds a key of 16 bytes"),
        "{e}"
    );
    let c = parse(&channel(&format!("    secret: \"{}\"\n", whsec(24))));
    assert_eq!(c.channels.values().next().unwrap().secrets[0].0.len(), 24);
}

#[test]
fn secrets_lists_every_key_and_excludes_the_single_secret() {
    let channel = |body: &str| format!("channels:\n  wallet:\n    url: http://127.0.0.1/\n{body}");
    let both = [
        SigningKey(b"example wallet key: replace me!!".to_vec()),
        SigningKey(b"example ops key --- replace me!!".to_vec()),
    ];
    let c = parse(&channel(&format!(
        "    secrets: [\"{WALLET_KEY}\", \"{OPS_KEY}\"]\n"
    )));
    assert_eq!(c.channels.values().next().unwrap().secrets, both);
    let env = [("OLD", WALLET_KEY), ("NEW", OPS_KEY)];
    let c = parse_with_env(&channel("    secrets_env: [OLD, NEW]\n"), &env).unwrap();
    assert_eq!(c.channels.values().next().unwrap().secrets, both);

    let e = refusal(&channel(&format!(
        "    secret: \"{WALLET_KEY}\"\n    secrets: [\"{OPS_KEY}\"]\n"
    )));
    assert!(
        e.contains("channels.wallet: set secret or secrets, not both"),
        "{e}"
    );
    let e = refusal(&channel(&format!(
        "    secret_env: X\n    secrets: [\"{OPS_KEY}\"]\n"
    )));
    assert!(
        e.contains("channels.wallet: set secret_env or secrets, not both"),
        "{e}"
    );
    let e = refusal(&channel(&format!(
        "    secret: \"{WALLET_KEY}\"\n    secret_env: X\n    secrets_env: [Y]\n"
    )));
    assert!(
        e.contains("channels.wallet: set only one of secret, secret_env, secrets_env"),
        "{e}"
    );
    let e = refusal(&channel("    secrets: []\n"));
    assert!(e.contains("channels.wallet.secrets: is empty"), "{e}");
    let e = refusal(&channel(&format!(
        "    secrets: [\"{WALLET_KEY}\", \"{WALLET_KEY}\"]\n"
    )));
    assert!(
        e.contains("channels.wallet.secrets[1]: is the same key as channels.wallet.secrets[0]"),
        "{e}"
    );
    let e = refusal(&channel(&format!(
        "    secrets: [\"{WALLET_KEY}\", nope]\n"
    )));
    assert!(
        e.contains(r#"channels.wallet.secrets[1]: must be "whsec_" followed by"#),
        "{e}"
    );
    let e = refusal_with_env(&channel("    secrets_env: [OLD, GONE]\n"), &env);
    assert!(
        e.contains("channels.wallet.secrets_env[1]: environment variable GONE is not set"),
        "{e}"
    );
}

#[test]
fn secrets_never_appear_in_debug_or_error_text() {
    let leaked = |text: &str| {
        [
            "ZXhhbXBsZSB3YWxsZXQga2V5",
            "ZXhhbXBsZSBvcHMga2V5",
            "hunter2",
            "s3cr3t-b4d",
        ]
        .iter()
        .any(|secret| text.contains(secret))
    };
    let env = [("OPS_SECRET", OPS_KEY), ("BAD_SECRET", "whsec_s3cr3t-b4d")];
    let full = FULL.replace("mysql://root@", "mysql://root:hunter2@");
    let config = parse_with_env(&full, &env).unwrap();
    let debug = format!("{config:?} {config:#?}");
    assert!(!leaked(&debug), "{debug}");
    assert!(debug.contains("Secret(***)") && debug.contains("SigningKey(***)"));

    let refused = [
        refusal("channels:\n  w: { url: http://a/, secret: whsec_s3cr3t-b4d }\n"),
        refusal("channels:\n  w: { url: http://a/, secret: s3cr3t-b4d }\n"),
        refusal(&format!(
            "channels:\n  w: {{ url: http://a/, secrets: [\"{WALLET_KEY}\", whsec_s3cr3t-b4d] }}\n"
        )),
        refusal_with_env(
            "channels:\n  w: { url: http://a/, secret_env: BAD_SECRET }\n",
            &env,
        ),
        refusal(&format!("channels:\n  w: \"{WALLET_KEY}\"\n")),
        refusal(&format!("channels: \"{WALLET_KEY}\"\n")),
        refusal("database: \"mysql://root:hunter2@db/couponsd\"\n"),
        refusal("database:\n  url: \"mariadb://root:hunter2@db/couponsd\"\n"),
        refusal("database:\n  url: [\"mysql://root:hunter2@db/x\"]\n"),
        refusal("database:\n  url: \"mysql://root:hunter2@db/x?sslmode=on\"\n"),
    ];
    for e in refused {
        assert!(!leaked(&e), "{e}");
    }
}

#[test]
fn five_field_cron_is_normalized_to_six_fields() {
    let c =
        parse("schedule:\n  reconcile: \"30  2 * * *\"\n  inventory_check: \"*/20 * * * * *\"\n");
    assert_eq!(c.schedule.reconcile, "0 30 2 * * *");
    assert_eq!(c.schedule.inventory_check, "*/20 * * * * *");
}

#[test]
fn invalid_cron_names_the_key() {
    let e = refusal("schedule:\n  reclaim_leases: \"*/15 * * * * * * *\"\n");
    assert!(
        e.contains("schedule.reclaim_leases: \"*/15 * * * * * * *\" has 8 field(s)"),
        "{e}"
    );
    let e = refusal("schedule:\n  expire_grants: \"0 * * *\"\n");
    assert!(
        e.contains("schedule.expire_grants: \"0 * * *\" has 4 field(s)"),
        "{e}"
    );
    let e = refusal("schedule:\n  inventory_check: \"0 61 * * * *\"\n");
    assert!(
        e.contains("schedule.inventory_check: \"0 61 * * * *\" is not a valid cron expression"),
        "{e}"
    );
}

#[test]
fn starts_at_after_ends_at_is_refused() {
    let campaign = "campaigns:\n  - id: a\n    event: e\n    audience: u\n    starts_at: 2026-12-31T00:00:00Z\n    ends_at: 2026-12-01T00:00:00Z\n    coupons: [{ id: X, face_value: 1, stock: 1, channel: ops }]\n";
    let e = refusal(&with_channels(campaign));
    assert!(
        e.contains("campaigns[0].starts_at: 2026-12-31T00:00:00+00:00 must be before ends_at"),
        "{e}"
    );
    let e = refusal(&with_channels(
        &campaign.replace("2026-12-01T00:00:00Z", "tomorrow"),
    ));
    assert!(
        e.contains("campaigns[0].ends_at: \"tomorrow\" is not an RFC 3339 time"),
        "{e}"
    );
}

#[test]
fn money_with_three_decimals_is_refused() {
    let campaign = |budget: &str, face: &str| {
        with_channels(&format!("campaigns:\n  - {{ id: a, event: e, audience: u, budget: {budget}, coupons: [{{ id: X, face_value: {face}, stock: 1, channel: ops }}] }}\n"))
    };
    let e = refusal(&campaign("\"100.125\"", "1"));
    assert!(
        e.contains("campaigns[0].budget: \"100.125\" is not an amount"),
        "{e}"
    );
    let e = refusal(&campaign("100", "8.125"));
    assert!(
        e.contains("campaigns[0].coupons[0].face_value: \"8.125\" is not an amount"),
        "{e}"
    );
    let e = refusal(&campaign("-5", "1"));
    assert!(e.contains("campaigns[0].budget:"), "{e}");
    let c = parse(&campaign("50000", "8.5"));
    assert_eq!(c.campaigns[0].budget, Some(Money::from_cents(5_000_000)));
    assert_eq!(c.campaigns[0].coupons[0].face_value, Money::from_cents(850));
}

#[test]
fn counts_out_of_range_are_refused_with_their_key() {
    for (text, expected) in [
        (
            "worker:\n  batch_size: 5001\n",
            "worker.batch_size: must be between 1 and 5000, got 5001",
        ),
        (
            "database:\n  max_connections: 0\n",
            "database.max_connections: must be at least 1, got 0",
        ),
        (
            "rules:\n  limits:\n    max_operations: 0\n",
            "rules.limits.max_operations: must be at least 1",
        ),
        (
            "rules:\n  limits:\n    max_time: 0s\n",
            "rules.limits.max_time: must be longer than 0s",
        ),
        (
            "dispatch:\n  retry_base: 2h\n",
            "dispatch.retry_max: 1h is shorter than dispatch.retry_base 2h",
        ),
        (
            "http:\n  listen: localhost:80\n",
            "http.listen: \"localhost:80\" is not an IP address",
        ),
        (
            "logging:\n  format: xml\n",
            "logging.format: unknown variant `xml`",
        ),
    ] {
        let e = refusal(text);
        assert!(e.contains(expected), "{e}");
    }
    let coupon = "campaigns:\n  - { id: a, event: e, audience: u, coupons: [{ id: X, face_value: 1, stock: -1, channel: ops }] }\n";
    let e = refusal(&with_channels(coupon));
    assert!(
        e.contains("campaigns[0].coupons[0].stock: must be at least 0, got -1"),
        "{e}"
    );
    let e = refusal(&with_channels(
        "campaigns:\n  - { id: a, event: e, audience: u, coupons: [] }\n",
    ));
    assert!(e.contains("campaigns[0].coupons: is empty"), "{e}");
    let e = refusal(&with_channels(
        "campaigns:\n  - { id: \"\", event: e, audience: u, coupons: [] }\n",
    ));
    assert!(e.contains("campaigns[0].id: is empty"), "{e}");
}

#[test]
fn rules_dir_is_resolved_relative_to_the_config_folder() {
    let c = Config::from_yaml_with_env(
        "rules:\n  dir: ./scripts\n",
        Path::new("deploy/couponsd.yaml"),
        &|_| None,
    )
    .unwrap();
    assert_eq!(c.rules.dir, PathBuf::from("deploy/./scripts"));
    let c = Config::from_yaml_with_env("", Path::new("couponsd.yaml"), &|_| None).unwrap();
    assert_eq!(c.rules.dir, PathBuf::from("rules"));
    let c = parse("rules:\n  dir: /srv/rules\n");
    assert_eq!(c.rules.dir, PathBuf::from("/srv/rules"));
}

#[test]
fn error_names_the_file_as_given() {
    let e =
        Config::from_yaml_with_env("worker: 3\n", Path::new("conf/x.yaml"), &|_| None).unwrap_err();
    match e {
        ConfigError::Invalid { file, key, .. } => {
            assert_eq!((file.as_str(), key.as_str()), ("conf/x.yaml", "worker"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_memory_is_bytes_or_a_binary_size_and_defaults_to_16_mib() {
    let memory = |value: &str| {
        parse(&format!("rules:\n  limits:\n    max_memory: {value}\n"))
            .rules
            .limits
            .max_memory
    };
    assert_eq!(parse("").rules.limits.max_memory, 16 << 20);
    assert_eq!(memory("16MiB"), 16 << 20);
    assert_eq!(memory("\"16 MiB\""), 16 << 20);
    assert_eq!(memory("1GiB"), 1 << 30);
    assert_eq!(memory("8388608"), 8 << 20);
    assert_eq!(memory("12582912B"), 12 << 20);
}

#[test]
fn max_memory_that_is_not_a_size_or_out_of_range_is_refused_with_its_key() {
    for (value, expected) in [
        (
            "0",
            "rules.limits.max_memory: must be between 8MiB and 1GiB, got 0 bytes",
        ),
        (
            "7MiB",
            "rules.limits.max_memory: must be between 8MiB and 1GiB, got 7340032 bytes",
        ),
        (
            "2GiB",
            "rules.limits.max_memory: must be between 8MiB and 1GiB, got 2147483648 bytes",
        ),
        (
            "17179869184GiB",
            "rules.limits.max_memory: must be between 8MiB and 1GiB, got more",
        ),
        ("16MB", "rules.limits.max_memory: \"16MB\" is not a size"),
        ("lots", "rules.limits.max_memory: \"lots\" is not a size"),
        ("-1", "rules.limits.max_memory"),
    ] {
        let text = format!("rules:\n  limits:\n    max_memory: {value}\n");
        let err = refusal(&text);
        assert!(err.contains(expected), "{value}: {err}");
    }
}

#[test]
fn a_size_limit_larger_than_max_memory_allows_is_refused_with_its_key() {
    for (key, value, expected) in [
        ("max_string_size", 1048577, "rules.limits.max_string_size: must be at most 1048576 bytes (an eighth of rules.limits.max_memory, 8388608 bytes)"),
        ("max_array_size", 16385, "rules.limits.max_array_size: must be at most 16384 items"),
        ("max_map_size", 16385, "rules.limits.max_map_size: must be at most 16384 entries"),
    ] {
        let mut text = "rules:\n  limits:\n    max_memory: 8MiB\n".to_owned();
        for (name, fits) in [("max_string_size", 1024), ("max_array_size", 16384), ("max_map_size", 16384)] {
            let value = if name == key { value } else { fits };
            text.push_str(&format!("    {name}: {value}\n"));
        }
        let err = refusal(&text);
        assert!(err.contains(expected), "{key}: {err}");
    }
}

/// One campaign with the coupon `{coupon}` (a YAML flow map's inside), for the codes
/// and validity keys.
fn one_coupon(coupon: &str) -> String {
    with_channels(&format!(
        "campaigns:\n  - {{ id: a, event: e, audience: u, coupons: [{{ id: X, face_value: 1, channel: ops, {coupon} }}] }}\n"
    ))
}

#[test]
fn codes_and_validity_parse_into_the_coupon() {
    use crate::domain::codes::CodeSource;
    let c = parse(&one_coupon(
        "stock: 1000, codes: { generate: \"NEW10-XXXX-XXXX\" }, valid_for: 7d, \
         valid_until: \"2026-12-31T23:59:59+08:00\", min_validity: 24h",
    ));
    let coupon = &c.campaigns[0].coupons[0];
    assert!(
        matches!(&coupon.codes, Some(CodeSource::Generate(p)) if p.as_str() == "NEW10-XXXX-XXXX")
    );
    assert_eq!(coupon.validity.valid_for, Some(chrono::Duration::days(7)));
    assert_eq!(
        coupon.validity.valid_until.map(|t| t.to_rfc3339()),
        Some("2026-12-31T15:59:59+00:00".to_owned())
    );
    assert_eq!(coupon.validity.min_validity, chrono::Duration::hours(24));
    let pool = parse(&one_coupon("codes: { pool: true }"));
    let coupon = &pool.campaigns[0].coupons[0];
    assert!(coupon.is_pool());
    assert_eq!(
        coupon.stock, 0,
        "a pool's stock comes from its imported codes"
    );
}

#[test]
fn codes_and_validity_mistakes_are_refused_with_their_key() {
    for (coupon, expected) in [
        (
            "stock: 5, codes: { pool: true }",
            "campaigns[0].coupons[0].stock: is not allowed with codes.pool",
        ),
        (
            "low_stock: 1",
            "campaigns[0].coupons[0].stock: is missing: give the coupon a stock, or codes.pool: true",
        ),
        (
            "stock: 1000, codes: { generate: \"NEW10-XXXX\" }",
            "campaigns[0].coupons[0].codes.generate: \"NEW10-XXXX\" makes 923521 codes, under 1,000,000 x the stock 1000",
        ),
        (
            "stock: 1, codes: { generate: \"NEW10\" }",
            "campaigns[0].coupons[0].codes.generate: \"NEW10\" has no X",
        ),
        (
            "stock: 1, codes: { generate: \"XXXXXXXX\", pool: true }",
            "campaigns[0].coupons[0].codes: has both generate and pool",
        ),
        (
            "stock: 1, codes: { pool: false }",
            "campaigns[0].coupons[0].codes: needs generate",
        ),
        (
            "stock: 1, valid_for: 1h, min_validity: 2h",
            "campaigns[0].coupons[0].min_validity: is longer than valid_for",
        ),
        (
            "stock: 1, valid_for: 0s",
            "campaigns[0].coupons[0].valid_for: must not be zero",
        ),
        (
            "stock: 1, valid_until: \"tomorrow\"",
            "campaigns[0].coupons[0].valid_until: \"tomorrow\" is not an RFC 3339 time",
        ),
        ("stock: 1, codes: { gen: X }", "campaigns[0].coupons[0].codes"),
    ] {
        let e = refusal(&one_coupon(coupon));
        assert!(e.contains(expected), "{coupon}: {e}");
    }
}

/// One campaign with the campaign keys `{keys}` (a YAML flow map's inside).
fn one_campaign(keys: &str) -> String {
    with_channels(&format!(
        "campaigns:\n  - {{ id: a, event: e, audience: u, {keys} coupons: [{{ id: X, face_value: 1, stock: 1, channel: ops }}] }}\n"
    ))
}

#[test]
fn periodic_limits_parse_into_the_campaign() {
    let c = parse(&one_campaign(
        "per_user_limit: 2, per_user_limit_period: 7d, daily_budget: \"500.00\", timezone: Asia/Shanghai,",
    ));
    let campaign = &c.campaigns[0];
    assert_eq!(campaign.per_user_limit, 2);
    assert_eq!(
        campaign.per_user_limit_period,
        Some(chrono::Duration::days(7))
    );
    assert_eq!(campaign.daily_budget, Some(Money::from_cents(50_000)));
    assert_eq!(campaign.timezone, chrono_tz::Asia::Shanghai);
    let plain = parse(&one_campaign(""));
    let campaign = &plain.campaigns[0];
    assert_eq!(
        (campaign.per_user_limit_period, campaign.daily_budget),
        (None, None),
        "by default the limit counts the whole campaign and there is no daily budget"
    );
    assert_eq!(campaign.timezone, chrono_tz::UTC);
}

#[test]
fn periodic_limit_mistakes_are_refused_with_their_key() {
    for (keys, expected) in [
        (
            "per_user_limit_period: 0s,",
            "campaigns[0].per_user_limit_period: must not be zero",
        ),
        (
            "per_user_limit_period: weekly,",
            "campaigns[0].per_user_limit_period",
        ),
        (
            "daily_budget: \"10.005\",",
            "campaigns[0].daily_budget: \"10.005\" is not an amount",
        ),
        (
            "daily_budget: \"5.00\", timezone: Mars/Olympus,",
            "campaigns[0].timezone: \"Mars/Olympus\" is not an IANA time zone name",
        ),
    ] {
        let e = refusal(&one_campaign(keys));
        assert!(e.contains(expected), "{keys} -> {e}");
    }
}
