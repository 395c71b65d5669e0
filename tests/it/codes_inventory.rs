//! The scheduled jobs and operator commands for codes and validity: the inventory check
//! retires an expired coupon (reason `expired`) whose reserve is never granted; a pool
//! rotates at its watermark and is forecast to run out like counted stock;
//! reconciliation holds a pool's stock to its unissued codes and every grant of a
//! coupon with codes to its code; `stock add` refuses a pool and `stock show` marks it.

use chrono::{Duration, SecondsFormat, Utc};
use couponsd::runtime::Daemon;
use couponsd::schedule::{inventory, reconcile};
use diesel::sql_types::Text;

use crate::on_both_backends;
use crate::support::*;

const ALERTS: &str = "alerts:\n  channel: ops\n";

/// Queues first visits `{prefix}-0..n` of distinct users and drains the queue and the
/// outbox.
async fn wave(ctx: &Daemon, prefix: &str, n: usize) {
    for i in 0..n {
        let (key, user) = (format!("{prefix}-{i}"), format!("{prefix}-user-{i}"));
        insert(ctx, &key, &user, "app_open", None).await.unwrap();
    }
    drain(ctx).await;
}

fn alerts_of(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver
        .seen()
        .into_iter()
        .filter(|s| s.path == "/webhooks/ops")
        .map(|s| {
            assert!(s.verified, "alerts are signed like every webhook");
            serde_json::from_str::<serde_json::Value>(&s.body).unwrap()
        })
        .filter(|b| b["type"] == kind)
        .collect()
}

async fn remaining_of(ctx: &Daemon, coupon: &str) -> i64 {
    let all = store(ctx, async |c| c.coupon_stock().await).await;
    all.iter().find(|c| c.id == coupon).unwrap().remaining
}

#[derive(Debug, diesel::QueryableByName)]
struct Code {
    #[diesel(sql_type = Text)]
    code: String,
}

/// The codes carried by the grants of `coupon`.
async fn granted_codes(ctx: &Daemon, coupon: &str) -> Vec<String> {
    let sql = format!(
        "SELECT code FROM grants WHERE coupon_id = '{coupon}' AND code IS NOT NULL ORDER BY id"
    );
    let rows: Vec<Code> = query_rows(ctx, &sql).await;
    rows.into_iter().map(|r| r.code).collect()
}

fn rfc3339(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A coupon past its `valid_until` and one with less than its `min_validity` left are
/// retired by the check with reason `expired` and announced to ops, well above their
/// watermark; their stock is never granted, not even as the last resort once the
/// coupon that took over runs out, and the chain is then announced exhausted.
async fn an_expired_coupon_is_retired_and_its_reserve_is_never_granted(db: TestDb) {
    let receiver = Receiver::ok().await;
    let now = Utc::now();
    let (past, soon) = (
        rfc3339(now - Duration::days(1)),
        rfc3339(now + Duration::hours(2)),
    );
    let campaigns = format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: OLD, face_value: "10.00", stock: 50, low_stock: 5, channel: wallet, valid_until: "{past}" }}
      - {{ id: SHORT, face_value: "9.00", stock: 50, channel: wallet, valid_until: "{soon}", min_validity: 24h }}
      - {{ id: NEW, face_value: "8.00", stock: 3, channel: wallet, valid_for: 7d }}"#
    );
    let ctx = context(config(&db, &receiver, &shipped_rules(), &campaigns, ALERTS)).await;
    wave(&ctx, "a", 1).await;
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    let rotated: Vec<_> = report
        .rotations
        .iter()
        .map(|r| {
            let to = r.to_coupon.as_deref();
            (r.from_coupon.as_str(), to, r.reason.as_str(), r.remaining)
        })
        .collect();
    assert_eq!(
        rotated,
        [
            ("OLD", Some("NEW"), "expired", 50),
            ("SHORT", Some("NEW"), "expired", 50)
        ]
    );
    assert!(report.exhausted.is_empty(), "NEW still serves");
    let audit = counts(&ctx, "reason", "coupon_rotations").await;
    assert_eq!(audit.get("expired"), Some(&2));
    let states = counts(&ctx, "state", "coupons").await;
    assert_eq!(states.get("retired"), Some(&2), "{states:?}");

    wave(&ctx, "b", 5).await;
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(
        per_coupon,
        [("NEW".to_owned(), 3)].into(),
        "the retired coupons' 100 left are never granted"
    );
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!((outcomes["granted"], outcomes["out_of_stock"]), (3, 3));
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    assert!(report.rotations.is_empty(), "rotated once: {report:?}");
    assert_eq!(
        report.exhausted,
        ["newcomer"],
        "stock nobody can use is none"
    );
    drain(&ctx).await;

    let alerts = alerts_of(&receiver, "coupon.rotated");
    let mut data: Vec<_> = alerts.iter().map(|a| &a["data"]).collect();
    data.sort_by_key(|d| d["from"].as_str().map(str::to_owned));
    assert_eq!(data.len(), 2, "{alerts:?}");
    for (d, from) in data.iter().zip(["OLD", "SHORT"]) {
        assert_eq!(
            (d["from"].as_str(), d["to"].as_str(), d["reason"].as_str()),
            (Some(from), Some("NEW"), Some("expired")),
            "{d}"
        );
        assert_eq!(d["remaining"], 50);
    }
    assert_eq!(alerts_of(&receiver, "campaign.exhausted").len(), 1);
    assert!(
        alerts_of(&receiver, "coupon.running_low")
            .iter()
            .all(|a| a["data"]["coupon"] == "NEW"),
        "an expired coupon is retired, not forecast"
    );
}
on_both_backends!(
    an_expired_coupon_is_retired_and_its_reserve_is_never_granted,
    an_expired_coupon_is_retired_and_its_reserve_is_never_granted
);

/// The last coupon of a chain, expired, is retired all the same (nothing takes over)
/// and the chain is announced exhausted at once.
async fn an_expired_last_coupon_is_retired_without_a_successor(db: TestDb) {
    let receiver = Receiver::ok().await;
    let past = rfc3339(Utc::now() - Duration::minutes(5));
    let campaigns = format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: ONLY, face_value: "10.00", stock: 20, channel: wallet, valid_until: "{past}" }}"#
    );
    let ctx = context(config(&db, &receiver, &shipped_rules(), &campaigns, ALERTS)).await;
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    assert_eq!(report.rotations.len(), 1);
    let r = &report.rotations[0];
    assert_eq!(
        (
            r.from_coupon.as_str(),
            r.to_coupon.as_deref(),
            r.reason.as_str()
        ),
        ("ONLY", None, "expired")
    );
    assert_eq!(report.exhausted, ["newcomer"]);
    drain(&ctx).await;
    let rotated = alerts_of(&receiver, "coupon.rotated");
    assert_eq!(rotated.len(), 1);
    assert!(rotated[0]["data"]["to"].is_null(), "{}", rotated[0]);
    assert_eq!(alerts_of(&receiver, "campaign.exhausted").len(), 1);
}
on_both_backends!(
    an_expired_last_coupon_is_retired_without_a_successor,
    an_expired_last_coupon_is_retired_without_a_successor
);

fn pool_chain(next_stock: i64) -> String {
    format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: POOL, face_value: "10.00", low_stock: 3, channel: wallet, codes: {{ pool: true }} }}
      - {{ id: NEXT, face_value: "8.00", stock: {next_stock}, channel: wallet }}"#
    )
}

/// A pool of ten imported codes is forecast to run out at its grant rate (once, until
/// an import restocks it), rotated at its watermark with reason `low_stock` and what is
/// left of it, and its unissued codes stay the last-resort reserve once the coupon
/// that took over runs out — exactly as counted stock.
async fn a_pool_rotates_at_its_watermark_and_runs_low_like_counted_stock(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &pool_chain(2),
        ALERTS,
    ))
    .await;
    seed_pool(&ctx, "POOL", "P-", 10).await;
    wave(&ctx, "a", 4).await;
    assert_eq!(remaining_of(&ctx, "POOL").await, 6);
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    assert!(
        report.rotations.is_empty(),
        "above its watermark: {report:?}"
    );
    assert_eq!(
        report.running_low,
        ["POOL"],
        "at its grant rate it runs out soon"
    );
    assert!(
        inventory::check(&ctx.schedule())
            .await
            .unwrap()
            .running_low
            .is_empty(),
        "announced once"
    );
    seed_pool(&ctx, "POOL", "Q-", 1).await;
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    assert_eq!(report.running_low, ["POOL"], "an import re-arms it");

    wave(&ctx, "b", 4).await;
    assert_eq!(remaining_of(&ctx, "POOL").await, 3);
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    assert_eq!(report.rotations.len(), 1, "{report:?}");
    let r = &report.rotations[0];
    assert_eq!(
        (
            r.from_coupon.as_str(),
            r.to_coupon.as_deref(),
            r.reason.as_str(),
            r.remaining
        ),
        ("POOL", Some("NEXT"), "low_stock", 3)
    );

    wave(&ctx, "c", 4).await;
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!((per_coupon["POOL"], per_coupon["NEXT"]), (8 + 2, 2));
    assert_eq!(remaining_of(&ctx, "POOL").await, 1);
    let mut codes = granted_codes(&ctx, "POOL").await;
    assert_eq!(codes.len(), 10, "every pool grant carries a code");
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 10, "each code once");
    assert!(
        codes
            .iter()
            .all(|c| c.starts_with("P-") || c.starts_with("Q-")),
        "{codes:?}"
    );

    drain(&ctx).await;
    let low = alerts_of(&receiver, "coupon.running_low");
    let mut remaining: Vec<_> = low
        .iter()
        .map(|a| a["data"]["remaining"].as_i64())
        .collect();
    remaining.sort();
    assert_eq!(
        remaining,
        [Some(6), Some(7)],
        "at the first check, and after the import"
    );
    let rotated = alerts_of(&receiver, "coupon.rotated");
    assert_eq!(rotated.len(), 1);
    assert_eq!(
        (
            rotated[0]["data"]["reason"].as_str(),
            rotated[0]["data"]["remaining"].as_i64()
        ),
        (Some("low_stock"), Some(3))
    );
    assert!(
        reconcile::run(&ctx.schedule()).await.unwrap().is_empty(),
        "a healthy pool agrees with its codes and the ledger"
    );
}
on_both_backends!(
    a_pool_rotates_at_its_watermark_and_runs_low_like_counted_stock,
    a_pool_rotates_at_its_watermark_and_runs_low_like_counted_stock
);

/// A pool whose stock was raised by hand (stock and remaining together, so the
/// counters still agree with each other and the ledger) has more stock than codes:
/// reconciliation raises `inventory.drift` with its unissued codes.
async fn a_pool_changed_by_hand_raises_inventory_drift(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &pool_chain(100),
        ALERTS,
    ))
    .await;
    seed_pool(&ctx, "POOL", "P-", 5).await;
    wave(&ctx, "a", 2).await;
    assert!(
        reconcile::run(&ctx.schedule()).await.unwrap().is_empty(),
        "agrees after normal work"
    );
    let sql = "UPDATE coupons SET stock = stock + 4, remaining = remaining + 4 WHERE id = 'POOL'";
    execute(&ctx, sql).await;
    let drift = reconcile::run(&ctx.schedule()).await.unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    let d = &drift[0];
    assert_eq!(
        (
            d.coupon.as_str(),
            d.remaining,
            d.unissued_codes,
            d.ledger_granted,
            d.issued_codes
        ),
        ("POOL", 7, Some(3), 2, Some(2))
    );
    drain(&ctx).await;
    let alerts = alerts_of(&receiver, "inventory.drift");
    assert_eq!(alerts.len(), 1);
    let data = &alerts[0]["data"];
    assert_eq!(
        (
            data["coupon"].as_str(),
            data["remaining"].as_i64(),
            data["unissued_codes"].as_i64()
        ),
        (Some("POOL"), Some(7), Some(3)),
        "{data}"
    );
}
on_both_backends!(
    a_pool_changed_by_hand_raises_inventory_drift,
    a_pool_changed_by_hand_raises_inventory_drift
);

/// A grant whose generated code was lost is drift: the coupon issued fewer codes than
/// its grants, though its counters agree with the ledger.
async fn a_grant_without_its_code_raises_inventory_drift(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: GEN, face_value: "10.00", stock: 10, channel: wallet, codes: { generate: "G-XXXX-XXXX" } }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, ALERTS)).await;
    wave(&ctx, "a", 3).await;
    assert!(reconcile::run(&ctx.schedule()).await.unwrap().is_empty());
    let codes = granted_codes(&ctx, "GEN").await;
    assert_eq!(codes.len(), 3);
    let lose = format!("DELETE FROM coupon_codes WHERE code = '{}'", codes[0]);
    assert_eq!(execute(&ctx, &lose).await, 1);
    let drift = reconcile::run(&ctx.schedule()).await.unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(
        (
            drift[0].ledger_granted,
            drift[0].issued_codes,
            drift[0].unissued_codes
        ),
        (3, Some(2), None),
        "a generated coupon's stock is not its codes"
    );
    drain(&ctx).await;
    let alerts = alerts_of(&receiver, "inventory.drift");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["data"]["issued_codes"], 2);
    assert!(alerts[0]["data"].get("unissued_codes").is_none());
}
on_both_backends!(
    a_grant_without_its_code_raises_inventory_drift,
    a_grant_without_its_code_raises_inventory_drift
);

/// `stock add` refuses a pool coupon, naming it and the command that restocks it, and
/// changes nothing; `stock show` marks the pool at the end of its row.
async fn stock_add_refuses_a_pool_and_stock_show_marks_it(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &pool_chain(100),
        "",
    ))
    .await;
    seed_pool(&ctx, "POOL", "P-", 5).await;
    let refused = couponsd::ops::stock::add(&installation(&ctx), "POOL", 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("POOL")
            && refused.contains("its stock is its imported codes: use couponsd codes import"),
        "{refused}"
    );
    assert_eq!(remaining_of(&ctx, "POOL").await, 5, "nothing added");
    assert!(
        reconcile::run(&ctx.schedule()).await.unwrap().is_empty(),
        "the pool still agrees with its codes"
    );
    couponsd::ops::stock::add(&installation(&ctx), "NEXT", 10)
        .await
        .unwrap();

    let table = couponsd::ops::stock::show(&installation(&ctx))
        .await
        .unwrap();
    let row = |coupon: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(coupon))
            .unwrap_or_else(|| panic!("{table}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    let pool = row("POOL");
    assert_eq!(
        &pool[..6],
        ["newcomer", "POOL", "active", "5", "0", "5"],
        "{table}"
    );
    assert_eq!(pool.last().map(String::as_str), Some("pool"), "{table}");
    let next = row("NEXT");
    assert_eq!(&next[3..6], ["110", "0", "110"], "{table}");
    assert_eq!(next.last().map(String::as_str), Some("-"), "{table}");
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.contains("PREDICTED RUN-OUT") && header.ends_with("CODES"),
        "{header}"
    );
}
on_both_backends!(
    stock_add_refuses_a_pool_and_stock_show_marks_it,
    stock_add_refuses_a_pool_and_stock_show_marks_it
);
