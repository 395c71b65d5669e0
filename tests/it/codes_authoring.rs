//! Codes and validity in the authoring commands and the demo: `explain` shows a grant's
//! code and validity, `simulate` passes over an expired coupon as the grant step does
//! and says where the code would come from and how long a grant would be valid, rule
//! tests give `select_coupon.rhai` a coupon's `valid_until`, and the demo issues pool
//! and generated codes.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use couponsd::authoring::check::RulesDirArgs;
use couponsd::authoring::explain::{self, ExplainArgs};
use couponsd::authoring::fixtures;
use couponsd::authoring::simulate::{self, SimulateArgs};
use couponsd::config::Config;
use couponsd::domain::codes::CODE_ALPHABET;
use couponsd::runtime::Daemon;
use couponsd::store::codes::IssuedCode;
use diesel::sql_types::{Nullable, Text};

use crate::on_both_backends;
use crate::support::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// True when `code` is `prefix` followed by `XXXX-XXXX` of the unambiguous alphabet.
fn generated(code: &str, prefix: &str) -> bool {
    let Some(rest) = code.strip_prefix(prefix) else {
        return false;
    };
    rest.len() == 9
        && rest.as_bytes()[4] == b'-'
        && rest
            .bytes()
            .filter(|&b| b != b'-')
            .all(|b| CODE_ALPHABET.contains(&b))
}

#[derive(Debug, diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

async fn texts(ctx: &Daemon, sql: &str) -> Vec<Option<String>> {
    query_rows::<Row>(ctx, sql)
        .await
        .into_iter()
        .map(|r| r.v)
        .collect()
}

/// Imports `codes` into the pool coupon `coupon` as `codes import` does: the unissued
/// rows and the coupon's stock raised by as many, in one transaction.
async fn import(ctx: &Daemon, coupon: &str, codes: &[&str]) {
    let rows: Vec<IssuedCode> = codes
        .iter()
        .map(|code| IssuedCode {
            id: None,
            coupon_id: coupon.to_owned(),
            code: (*code).to_owned(),
            grant_id: None,
            issued_at: None,
        })
        .collect();
    let raised = store(ctx, async |conn| {
        conn.write_transaction(async |conn| {
            conn.insert_generated_codes(&rows).await?;
            conn.add_stock(coupon, rows.len() as i64).await
        })
        .await
    })
    .await;
    assert!(raised, "no coupon {coupon}");
}

async fn explain_shows_the_code_and_validity_of_a_grant(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 5, channel: wallet,
          codes: { generate: "NEW10-XXXX-XXXX" }, valid_for: 7d }
  - id: loyalty
    event: app_open
    audience: returning
    coupons:
      - { id: BACK5, face_value: "5.00", stock: 100, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, "")).await;
    insert(&ctx, "k-1", "ann", "app_open", None).await.unwrap();
    insert(&ctx, "k-2", "ann", "app_open", None).await.unwrap();
    drain(&ctx).await;
    let stored = texts(
        &ctx,
        "SELECT code AS v FROM grants WHERE coupon_id = 'NEW10'",
    )
    .await;
    let code = stored[0].clone().expect("the NEW10 grant has a code");
    assert!(generated(&code, "NEW10-"), "{code}");

    let args = |key: &str, json: bool| ExplainArgs {
        request_key: key.into(),
        json,
    };
    let json = explain::run(&ctx.db, &args("k-1", true)).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let grant = &json["grant"];
    assert_eq!(grant["coupon"], "NEW10");
    assert_eq!(grant["code"], code.as_str());
    let granted = at(grant["granted_at"].as_str().unwrap());
    let from = at(grant["valid_from"].as_str().expect("valid_from is set"));
    let until = at(grant["expires_at"].as_str().expect("expires_at is set"));
    assert_eq!(from, granted, "valid from the grant");
    assert_eq!(until - from, Duration::days(7), "valid_for: 7d");

    let text = explain::run(&ctx.db, &args("k-1", false)).await.unwrap();
    for wanted in [
        format!("code          {code}\n"),
        format!("valid from    {}\n", grant["valid_from"].as_str().unwrap()),
        format!("expires at    {}\n", grant["expires_at"].as_str().unwrap()),
    ] {
        assert!(text.contains(&wanted), "missing {wanted:?} in\n{text}");
    }

    // A coupon without codes or validity: no such lines, and nulls in JSON.
    let text = explain::run(&ctx.db, &args("k-2", false)).await.unwrap();
    assert!(text.contains("coupon BACK5 (5.00)"), "{text}");
    for absent in ["code ", "valid from", "expires at"] {
        assert!(!text.contains(absent), "{absent:?} in\n{text}");
    }
    let json = explain::run(&ctx.db, &args("k-2", true)).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in ["code", "valid_from", "expires_at"] {
        assert!(json["grant"][key].is_null(), "{key}: {json}");
    }
}
on_both_backends!(
    explain_shows_the_code_and_validity_of_a_grant,
    explain_shows_the_code_and_validity_of_a_grant
);

async fn simulate_passes_over_an_expired_coupon_and_shows_the_code_and_validity(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 5, channel: wallet,
          valid_until: "2025-01-01T08:00:00+08:00" }
      - { id: NEW8, face_value: "8.00", stock: 100, channel: wallet,
          codes: { generate: "NEW8-XXXX-XXXX" }, valid_for: 7d,
          valid_until: "2099-12-31T23:59:59Z", min_validity: 1d }
  - id: shoppers
    event: purchase
    audience: first_time
    coupons:
      - { id: SHOP1, face_value: "1.00", codes: { pool: true }, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, "")).await;
    import(&ctx, "SHOP1", &["SHOP-A", "SHOP-B", "SHOP-C"]).await;
    let request = |event: &str, json: bool| {
        let args = SimulateArgs {
            user: "zed".into(),
            event: event.into(),
            attrs: None,
            json,
        };
        simulate::request(&args).unwrap()
    };
    let rules = ctx.rules.current();
    let before = Utc::now();
    let json = simulate::run(
        &ctx.db,
        &ctx.config,
        &rules,
        request("app_open", true),
        true,
    )
    .await
    .unwrap();
    let after = Utc::now();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let expired = "has expired (valid until 2025-01-01T00:00:00Z)";
    assert_eq!(json["outcome"], "granted");
    assert_eq!(json["coupon"], "NEW8");
    assert_eq!(
        json["detail"].as_str(),
        Some(format!("NEW10 {expired}; granted NEW8 instead").as_str())
    );
    assert_eq!(json["coupons"][0]["id"], "NEW10");
    assert_eq!(json["coupons"][0]["remaining"], 5);
    assert_eq!(json["coupons"][0]["unusable"].as_str(), Some(expired));
    assert!(json["coupons"][1]["unusable"].is_null(), "{json}");
    assert_eq!(
        json["code"],
        serde_json::json!({"source": "generate", "pattern": "NEW8-XXXX-XXXX"})
    );
    let from = at(json["valid_from"].as_str().expect("valid_from is set"));
    let until = at(json["expires_at"].as_str().expect("expires_at is set"));
    assert!(
        before - Duration::milliseconds(1) <= from && from <= after,
        "{from}"
    );
    assert_eq!(
        until - from,
        Duration::days(7),
        "the earlier of valid_for and valid_until"
    );

    let text = simulate::run(
        &ctx.db,
        &ctx.config,
        &rules,
        request("app_open", false),
        false,
    )
    .await
    .unwrap();
    for wanted in [
        format!("active, but {expired}"),
        "outcome   granted: coupon NEW8 via channel wallet".to_owned(),
        "code      generated from NEW8-XXXX-XXXX  (a dry run generates none)".to_owned(),
        "validity  from ".to_owned(),
        format!("detail    NEW10 {expired}; granted NEW8 instead"),
    ] {
        assert!(text.contains(&wanted), "missing {wanted:?} in\n{text}");
    }

    // A pool coupon: its codes left, none drawn; no validity.
    let json = simulate::run(
        &ctx.db,
        &ctx.config,
        &rules,
        request("purchase", true),
        true,
    )
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["coupon"], "SHOP1");
    assert_eq!(
        json["code"],
        serde_json::json!({"source": "pool", "available": 3})
    );
    assert!(json["valid_from"].is_null() && json["expires_at"].is_null());
    let text = simulate::run(
        &ctx.db,
        &ctx.config,
        &rules,
        request("purchase", false),
        false,
    )
    .await
    .unwrap();
    assert!(
        text.contains("code      drawn from the pool (3 available)  (a dry run draws none)"),
        "{text}"
    );
    assert!(!text.contains("validity  "), "{text}");

    // Nothing was written: no grant, no code issued or generated.
    assert!(texts(&ctx, "SELECT code AS v FROM grants").await.is_empty());
    let issued =
        "SELECT code AS v FROM coupon_codes WHERE grant_id IS NOT NULL OR coupon_id <> 'SHOP1'";
    assert!(texts(&ctx, issued).await.is_empty());
}
on_both_backends!(
    simulate_passes_over_an_expired_coupon_and_shows_the_code_and_validity,
    simulate_passes_over_an_expired_coupon_and_shows_the_code_and_validity
);

/// The select_coupon.rhai of docs/rules.md: skip a coupon ending within a day, give the
/// one valid longest.
const VALID_LONGEST: &str = r#"
let best = ();
let best_left = 0;
for coupon in coupons {
    if coupon.remaining == 0 { continue; }
    let left = if coupon.valid_until == () { 1000000000 } else { -hours_since(coupon.valid_until) };
    if left < 24 { continue; }
    if best == () || left > best_left {
        best = coupon.id;
        best_left = left;
    }
}
best
"#;

const VALIDITY_CASES: &str = r#"
now: 2026-12-10T12:00:00Z
cases:
  - name: the coupon valid longest is chosen
    request: { user_id: u-new, event: app_open }
    coupons:
      - { id: NEW10, remaining: 5, valid_until: 2026-12-12T12:00:00Z }
      - { id: NEW8, remaining: 5, valid_until: "2026-12-20T12:00:00+08:00" }
    expect: { campaign: newcomer, coupon: NEW8 }
  - name: a coupon ending within a day is skipped
    request: { user_id: u-new, event: app_open }
    coupons:
      - { id: NEW10, remaining: 5, valid_until: 2026-12-12T12:00:00Z }
      - { id: NEW8, remaining: 5, valid_until: 2026-12-11T06:00:00Z }
    expect: { campaign: newcomer, coupon: NEW10 }
  - name: a coupon without a fixed end outlasts any date
    request: { user_id: u-new, event: app_open }
    coupons:
      - { id: NEW10, remaining: 5, valid_until: 2030-01-01T00:00:00Z }
      - { id: NEW8, remaining: 5 }
    expect: { campaign: newcomer, coupon: NEW8 }
  - name: a coupon whose end has passed counts as out of stock
    request: { user_id: u-new, event: app_open }
    coupons:
      - { id: NEW10, remaining: 5, valid_until: 2026-12-01T00:00:00Z }
    expect: { campaign: newcomer, coupon: none, outcome: out_of_stock }
"#;

#[test]
fn a_rule_test_gives_select_coupon_each_coupons_valid_until() {
    let dir = TempDir::new("rules-valid-until");
    let rules = dir.0.join("rules");
    std::fs::create_dir_all(rules.join("tests")).unwrap();
    std::fs::copy(
        shipped_rules().join("user_type.rhai"),
        rules.join("user_type.rhai"),
    )
    .unwrap();
    std::fs::write(rules.join("select_coupon.rhai"), VALID_LONGEST).unwrap();
    std::fs::write(rules.join("tests/validity.yaml"), VALIDITY_CASES).unwrap();
    let yaml = format!(
        r#"database:
  url: "sqlite://unused.db"
rules:
  dir: "{rules}"
channels:
  wallet:
    url: "http://127.0.0.1:9/webhooks/wallet"
    secret: "{SECRET}"
campaigns:
{campaigns}
"#,
        rules = rules.display(),
        campaigns = standard_campaigns(5)
    );
    let config = Config::from_yaml_with_env(&yaml, Path::new("test.yaml"), &|_| None).unwrap();
    let out = fixtures::run(&config, &RulesDirArgs { rules: None })
        .unwrap_or_else(|e| panic!("the rule tests fail:\n{e}"));
    assert!(out.contains("4 rule test(s) in 1 file(s)"), "{out}");
    // The same cases expecting the opposite fail, naming what the rule chose.
    let flipped = VALIDITY_CASES.replace(
        "expect: { campaign: newcomer, coupon: NEW8 }\n  - name: a coupon ending",
        "expect: { campaign: newcomer, coupon: NEW10 }\n  - name: a coupon ending",
    );
    std::fs::write(rules.join("tests/validity.yaml"), flipped).unwrap();
    let err = fixtures::run(&config, &RulesDirArgs { rules: None })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the coupon valid longest is chosen")
            && err.contains("coupon: expected NEW10, got NEW8"),
        "{err}"
    );
}

#[test]
fn the_demo_issues_pool_codes_until_the_pool_runs_dry_then_generated_ones() {
    let stdout = demo(120);
    let started = Utc::now();
    assert!(
        stdout.contains("imported   5 codes into the pool of BACK5"),
        "{stdout}"
    );
    let columns = |key: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no line for {key} in\n{stdout}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    for n in 0..5 {
        assert_eq!(
            columns(&format!("again-{n}")),
            [
                format!("again-{n}"),
                "BACK5".into(),
                format!("BACK5-DEMO-{:04}", n + 1),
                "no".into(),
                "expiry".into()
            ],
            "{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["BACK5", "5", "issued,", "from", "its", "pool,", "which", "ran", "dry"]),
        "{stdout}"
    );
    // After the pool: BACK3's generated codes, valid for a week.
    for key in ["again-5", "again-6"] {
        let line = columns(key);
        assert_eq!(line[1], "BACK3", "{stdout}");
        assert!(generated(&line[2], "BACK3-"), "{stdout}");
        assert_eq!(line[3], "expires", "{stdout}");
        let left = at(&line[4]) - started;
        assert!(
            left > Duration::days(7) - Duration::minutes(5) && left <= Duration::days(7),
            "{stdout}"
        );
    }
    // BACK4 ended last year: the inventory check between the waves retires it (its
    // stock is no reserve), so the second wave never meets it.
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "loyalty",
                    "BACK4",
                    "->",
                    "BACK3",
                    "(expired,",
                    "120",
                    "left",
                    "never",
                    "granted)"
                ]),
        "{stdout}"
    );
    assert!(
        stdout.contains("generated from BACK3-XXXX-XXXX"),
        "{stdout}"
    );
}
