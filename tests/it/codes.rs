//! Codes and validity in the grant step: a pool drained by three daemons never issues
//! a code twice and falls back when dry; generated codes are unique; a coupon whose
//! validity has ended or would be too short is passed over with the reason; deliveries
//! carry the code, verified by the reference `standardwebhooks` library. (A repeated
//! code refused by the unique key is the store's: `store::codes`.)

use chrono::{Duration, NaiveDateTime, Utc};
use couponsd::runtime::Daemon;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};

use crate::on_both_backends;
use crate::support::*;

/// Queues `n` first visits of distinct users, in multi-row inserts.
async fn queue_first_visits(ctx: &Daemon, n: usize) {
    for start in (0..n).step_by(1000) {
        let values: Vec<String> = (start..n.min(start + 1000))
            .map(|i| format!("('k{i}', 'u{i}', 'app_open')"))
            .collect();
        let sql = format!(
            "INSERT INTO trigger_requests (request_key, user_id, event) VALUES {}",
            values.join(", ")
        );
        execute(ctx, &sql).await;
    }
}

#[derive(Debug, diesel::QueryableByName)]
struct GrantCode {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    coupon_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    code: Option<String>,
    #[diesel(sql_type = Timestamp)]
    granted_at: NaiveDateTime,
    #[diesel(sql_type = Nullable<Timestamp>)]
    valid_from: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    expires_at: Option<NaiveDateTime>,
}

async fn grant_codes(ctx: &Daemon) -> Vec<GrantCode> {
    query_rows(
        ctx,
        "SELECT id, coupon_id, code, granted_at, valid_from, expires_at FROM grants ORDER BY id",
    )
    .await
}

fn pool_campaign(fallback: &str) -> String {
    format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: POOL, face_value: "10.00", channel: wallet, codes: {{ pool: true }}, valid_for: 7d }}
      - {fallback}"#
    )
}

/// Three daemons of four workers each, at the shipped batch size, drain 30,000 first
/// visits against a 20,000-code pool: every pool code is issued once, to one grant;
/// the other 10,000 fall back with the reason; the pool's stock ends at zero.
async fn a_pool_drained_by_three_daemons_never_issues_a_code_twice(db: TestDb) {
    let receiver = Receiver::ok().await;
    let fallback = r#"{ id: NEXT, face_value: "8.00", stock: 100000, channel: wallet, codes: { generate: "NX-XXXX-XXXX-XX" } }"#;
    let mut cfg = config(
        &db,
        &receiver,
        &shipped_rules(),
        &pool_campaign(fallback),
        "",
    );
    cfg.worker.batch_size = 200;
    cfg.worker.concurrency = 4;
    let daemons = [
        context(cfg.clone()).await,
        context(cfg.clone()).await,
        context(cfg).await,
    ];
    seed_pool(&daemons[0], "POOL", "P-", 20_000).await;
    queue_first_visits(&daemons[0], 30_000).await;
    let [a, b, c] = &daemons;
    tokio::join!(drain(a), drain(b), drain(c));

    let grants = grant_codes(a).await;
    assert_eq!(grants.len(), 30_000, "every request granted");
    let mut codes: Vec<&str> = grants.iter().filter_map(|g| g.code.as_deref()).collect();
    assert_eq!(codes.len(), 30_000, "every grant carries a code");
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 30_000, "no code is held by two grants");
    let pool: Vec<&GrantCode> = grants.iter().filter(|g| g.coupon_id == "POOL").collect();
    assert_eq!(pool.len(), 20_000, "the pool gave exactly its codes");
    assert!(pool
        .iter()
        .all(|g| g.code.as_deref().unwrap().starts_with("P-")));
    let issued = counts(
        a,
        "CAST(grant_id IS NULL AS CHAR)",
        "coupon_codes WHERE coupon_id = 'POOL'",
    )
    .await;
    assert_eq!(issued.get("0"), Some(&20_000), "{issued:?}");
    assert_eq!(issued.get("1"), None, "no pool code left unissued");
    let matched = counts(
        a,
        "g.coupon_id",
        "grants g JOIN coupon_codes k ON k.grant_id = g.id AND k.code = g.code",
    )
    .await;
    assert_eq!(
        matched.get("POOL"),
        Some(&20_000),
        "each pool row names its grant"
    );
    assert_eq!(
        matched.get("NEXT"),
        Some(&10_000),
        "each generated code has its row"
    );
    let remaining = counts(a, "CAST(remaining AS CHAR)", "coupons WHERE id = 'POOL'").await;
    assert_eq!(
        remaining.get("0"),
        Some(&1),
        "the pool's stock ends at zero"
    );
    // The rule passes over a coupon it sees empty; one the batch emptied under it falls
    // back in allocation, which says why.
    let details = counts(a, "detail", "trigger_requests").await;
    assert!(
        details
            .keys()
            .all(|d| d.is_empty() || d == "POOL is out of stock; granted NEXT instead"),
        "{details:?}"
    );
    // Each grant's validity: seven days from the grant.
    for g in pool.iter().take(50) {
        assert_eq!(g.valid_from, Some(g.granted_at));
        assert_eq!(g.expires_at, Some(g.granted_at + Duration::days(7)));
    }
}
on_both_backends!(
    a_pool_drained_by_three_daemons_never_issues_a_code_twice,
    a_pool_drained_by_three_daemons_never_issues_a_code_twice
);

/// A coupon past its `valid_until` and one that would leave less than its
/// `min_validity` are passed over as out of stock, the detail saying why; the grant
/// carries the validity of the coupon it got, and its delivery the code and validity,
/// verified by the reference library.
async fn expired_and_too_short_coupons_are_skipped_and_deliveries_carry_the_code(db: TestDb) {
    let receiver = Receiver::ok().await;
    let now = Utc::now();
    let past = (now - Duration::hours(1)).to_rfc3339();
    let soon = (now + Duration::hours(2)).to_rfc3339();
    let end = (now + Duration::days(3)).to_rfc3339();
    let campaigns = format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: OLD, face_value: "10.00", stock: 10, channel: wallet, valid_until: "{past}" }}
      - {{ id: SHORT, face_value: "9.00", stock: 10, channel: wallet, valid_until: "{soon}", min_validity: 24h }}
      - {{ id: GOOD, face_value: "8.00", stock: 10, channel: wallet, valid_for: 7d, valid_until: "{end}", codes: {{ generate: "GD-XXXX-XXXX" }} }}"#
    );
    let ctx = context(config(&db, &receiver, &shipped_rules(), &campaigns, "")).await;
    queue_first_visits(&ctx, 3).await;
    drain(&ctx).await;

    let grants = grant_codes(&ctx).await;
    assert_eq!(grants.len(), 3);
    let end = chrono::DateTime::parse_from_rfc3339(&end)
        .unwrap()
        .naive_utc();
    for g in &grants {
        assert_eq!(g.coupon_id, "GOOD");
        assert_eq!(g.valid_from, Some(g.granted_at));
        let expires = g.expires_at.unwrap();
        assert!(
            (expires - end).num_milliseconds().abs() <= 1,
            "the earlier end applies: {expires}"
        );
        assert_eq!(g.code.as_deref().map(str::len), Some(12));
    }
    let details = counts(&ctx, "detail", "trigger_requests").await;
    let (detail, n) = details.iter().next().unwrap();
    assert_eq!(*n, 3);
    assert!(
        detail.starts_with("OLD has expired (valid until "),
        "the detail says why OLD was passed over: {detail}"
    );
    let seen = receiver.seen();
    let granted: Vec<serde_json::Value> = seen
        .iter()
        .filter(|s| s.path == "/webhooks/wallet")
        .map(|s| {
            assert!(s.verified, "signed as the reference library expects");
            serde_json::from_str(&s.body).unwrap()
        })
        .collect();
    assert_eq!(granted.len(), 3);
    for body in &granted {
        let data = &body["data"];
        let grant = grants
            .iter()
            .find(|g| g.id == data["grant_id"].as_i64().unwrap())
            .unwrap();
        assert_eq!(data["code"].as_str(), grant.code.as_deref());
        let valid_from = data["valid_from"].as_str().unwrap();
        let expires_at = data["expires_at"].as_str().unwrap();
        for t in [valid_from, expires_at] {
            assert!(t.ends_with('Z'), "RFC 3339 in UTC: {t}");
            chrono::DateTime::parse_from_rfc3339(t).unwrap();
        }
    }

    // Only SHORT (too short) and GOOD are left to pass over: OLD out of the way.
    execute(
        &ctx,
        "UPDATE coupons SET remaining = 0, stock = granted WHERE id IN ('OLD', 'GOOD')",
    )
    .await;
    execute(
        &ctx,
        "INSERT INTO trigger_requests (request_key, user_id, event) VALUES ('late', 'late', 'app_open')",
    )
    .await;
    drain(&ctx).await;
    let late = counts(
        &ctx,
        "detail",
        "trigger_requests WHERE request_key = 'late'",
    )
    .await;
    let detail = late.keys().next().unwrap();
    assert!(
        detail.contains("SHORT would leave less than its min_validity 1day"),
        "{detail}"
    );
    let outcome = counts(
        &ctx,
        "outcome",
        "trigger_requests WHERE request_key = 'late'",
    )
    .await;
    assert_eq!(outcome.get("out_of_stock"), Some(&1), "{outcome:?}");
}
on_both_backends!(
    expired_and_too_short_coupons_are_skipped_and_deliveries_carry_the_code,
    expired_and_too_short_coupons_are_skipped_and_deliveries_carry_the_code
);

/// A pool whose stock counts more codes than it has (changed by hand) does not stop
/// the queue: the batch is rolled back, the stock set to the codes, ops alerted with
/// `inventory.drift`, and the batch decided again: the pool's codes are granted and
/// the rest fall back.
async fn a_pool_short_of_its_stock_is_trued_up_and_alerts(db: TestDb) {
    let receiver = Receiver::ok().await;
    let fallback = r#"{ id: NEXT, face_value: "8.00", stock: 100, channel: wallet }"#;
    let extra = "alerts:\n  channel: ops";
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &pool_campaign(fallback),
        extra,
    ))
    .await;
    seed_pool(&ctx, "POOL", "S-", 5).await;
    execute(
        &ctx,
        "UPDATE coupons SET stock = 10, remaining = 10 WHERE id = 'POOL'",
    )
    .await;
    queue_first_visits(&ctx, 8).await;
    drain(&ctx).await;

    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(per_coupon.get("POOL"), Some(&5), "{per_coupon:?}");
    assert_eq!(per_coupon.get("NEXT"), Some(&3), "{per_coupon:?}");
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(statuses.get("done"), Some(&8), "{statuses:?}");
    let stock = counts(
        &ctx,
        "CAST(stock AS CHAR)",
        "coupons WHERE id = 'POOL' AND remaining = 0",
    )
    .await;
    assert_eq!(
        stock.get("5"),
        Some(&1),
        "stock = granted + remaining after the true-up"
    );
    let drift: Vec<serde_json::Value> = receiver
        .seen()
        .iter()
        .filter(|s| s.path == "/webhooks/ops")
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .filter(|b: &serde_json::Value| b["type"] == "inventory.drift")
        .collect();
    assert_eq!(drift.len(), 1, "ops hear of it once");
    assert_eq!(drift[0]["data"]["coupon"], "POOL");
    assert_eq!(drift[0]["data"]["remaining"], 10);
    assert_eq!(drift[0]["data"]["unissued_codes"], 5);
}
on_both_backends!(
    a_pool_short_of_its_stock_is_trued_up_and_alerts,
    a_pool_short_of_its_stock_is_trued_up_and_alerts
);
