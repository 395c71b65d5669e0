//! Partner updates (`grant_updates`) and revocation: each transition and each refusal,
//! concurrent redeems of one code from two daemons, an update key seen before, a bad
//! row among good ones, what a revocation gives back, the events verified by the
//! reference `standardwebhooks` library, and `couponsd grants show|revoke`.

use std::collections::HashMap;

use couponsd::pipeline::lifecycle::{process_updates, UpdatesOutcome};
use couponsd::runtime::Daemon;
use diesel::sql_types::{BigInt, Nullable, Text};

use crate::on_both_backends;
use crate::support::*;

/// `newcomer`: budget 100.00, daily budget 50.00 in Amsterdam; NEW10 (10.00, `stock`
/// in stock, generated codes, valid 7 days), then NEW8 (8.00, plenty).
fn campaigns(stock: i64) -> String {
    format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    budget: "100.00"
    daily_budget: "50.00"
    timezone: Europe/Amsterdam
    coupons:
      - {{ id: NEW10, face_value: "10.00", stock: {stock}, channel: wallet, codes: {{ generate: "NW-XXXX-XXXX" }}, valid_for: 7d }}
      - {{ id: NEW8, face_value: "8.00", stock: 100000, channel: wallet, codes: {{ generate: "NE-XXXX-XXXX" }} }}"#
    )
}

async fn daemon(db: &TestDb, receiver: &Receiver, campaigns: &str) -> Daemon {
    context(config(db, receiver, &shipped_rules(), campaigns, "")).await
}

/// Grants one coupon to each of `users` (their first visit); returns each user's
/// grant (id, code).
async fn grant_to(ctx: &Daemon, users: &[&str]) -> HashMap<String, (i64, String)> {
    for user in users {
        insert(ctx, &format!("visit-{user}"), user, "app_open", None)
            .await
            .unwrap();
    }
    drain(ctx).await;
    grants(ctx).await
}

#[derive(Debug, diesel::QueryableByName)]
struct GrantRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    code: Option<String>,
    #[diesel(sql_type = Text)]
    state: String,
}

async fn grant_rows(ctx: &Daemon) -> Vec<GrantRow> {
    query_rows(
        ctx,
        "SELECT id, user_id, code, state FROM grants ORDER BY id",
    )
    .await
}

async fn grants(ctx: &Daemon) -> HashMap<String, (i64, String)> {
    grant_rows(ctx)
        .await
        .into_iter()
        .map(|g| (g.user_id, (g.id, g.code.unwrap_or_default())))
        .collect()
}

async fn states(ctx: &Daemon) -> HashMap<String, String> {
    grant_rows(ctx)
        .await
        .into_iter()
        .map(|g| (g.user_id, g.state))
        .collect()
}

/// Inserts an update the way a partner does: plain SQL. `by` is `code = ...` or
/// `grant_id = ...` as SQL values.
async fn update(
    ctx: &Daemon,
    key: &str,
    (code, grant_id): (Option<&str>, Option<i64>),
    action: &str,
) {
    let code = code.map_or("NULL".to_owned(), |c| format!("'{c}'"));
    let grant_id = grant_id.map_or("NULL".to_owned(), |g| g.to_string());
    execute(
        ctx,
        &format!(
            "INSERT INTO grant_updates (update_key, code, grant_id, action, reason) \
             VALUES ('{key}', {code}, {grant_id}, '{action}', 'because {key}')"
        ),
    )
    .await;
}

/// Processes updates until the queue is empty; returns the batches that did work.
async fn process(ctx: &Daemon) -> usize {
    let deps = ctx.lifecycle();
    let mut batches = 0;
    while let UpdatesOutcome::Processed(_) = process_updates(&deps).await.unwrap() {
        batches += 1;
    }
    batches
}

#[derive(Debug, diesel::QueryableByName)]
struct UpdateRow {
    #[diesel(sql_type = Text)]
    update_key: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

/// Each update's (status, error) by key.
async fn outcomes(ctx: &Daemon) -> HashMap<String, (String, String)> {
    query_rows::<UpdateRow>(ctx, "SELECT update_key, status, error FROM grant_updates")
        .await
        .into_iter()
        .map(|u| (u.update_key, (u.status, u.error.unwrap_or_default())))
        .collect()
}

/// The event bodies of type `kind` the receiver got, all verified.
fn events_of(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver
        .seen()
        .iter()
        .map(|s| {
            assert!(s.verified, "every event is signed: {}", s.body);
            serde_json::from_str::<serde_json::Value>(&s.body).unwrap()
        })
        .filter(|b| b["type"] == kind)
        .collect()
}

async fn each_transition_is_applied_recorded_and_sent(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(100)).await;
    let g = grant_to(&ctx, &["u1", "u2", "u3", "u4"]).await;
    update(&ctx, "r1", (Some(&g["u1"].1), None), "redeem").await;
    update(&ctx, "r2", (None, Some(g["u2"].0)), "redeem").await;
    update(&ctx, "x2", (None, Some(g["u2"].0)), "unredeem").await;
    update(&ctx, "v3", (Some(&g["u3"].1), None), "revoke").await;
    // Two updates of one grant in one batch: the second sees the first.
    update(&ctx, "r4", (None, Some(g["u4"].0)), "redeem").await;
    update(&ctx, "v4", (None, Some(g["u4"].0)), "revoke").await;
    assert_eq!(process(&ctx).await, 1, "one batch");
    let done = outcomes(&ctx).await;
    assert!(done.values().all(|(s, _)| s == "done"), "{done:?}");
    let s = states(&ctx).await;
    assert_eq!(
        [&s["u1"], &s["u2"], &s["u3"], &s["u4"]],
        ["redeemed", "granted", "revoked", "revoked"]
    );
    let transitions = counts(
        &ctx,
        "CONCAT(from_state, '>', to_state, ' ', update_key)",
        "grant_transitions",
    )
    .await;
    let want: HashMap<String, i64> = [
        "granted>redeemed r1",
        "granted>redeemed r2",
        "redeemed>granted x2",
        "granted>revoked v3",
        "granted>redeemed r4",
        "redeemed>revoked v4",
    ]
    .iter()
    .map(|t| (t.to_string(), 1))
    .collect();
    assert_eq!(transitions, want);
    drain(&ctx).await;
    let redeemed = events_of(&receiver, "coupon.redeemed");
    let revoked = events_of(&receiver, "coupon.revoked");
    assert_eq!((redeemed.len(), revoked.len()), (3, 2));
    let r1 = redeemed
        .iter()
        .find(|e| e["data"]["code"] == g["u1"].1.as_str())
        .unwrap();
    assert_eq!(r1["data"]["state"], "redeemed");
    assert_eq!(r1["data"]["reason"], "because r1");
    assert_eq!(r1["data"]["grant_id"], g["u1"].0);
    assert!(revoked.iter().all(|e| e["data"]["state"] == "revoked"));
}
on_both_backends!(
    each_transition_is_applied_recorded_and_sent,
    each_transition_is_applied_recorded_and_sent
);

async fn each_refusal_is_rejected_with_its_reason_and_the_rest_go_on(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(100)).await;
    let g = grant_to(&ctx, &["u1", "u2", "u3", "u4"]).await;
    update(&ctx, "first", (Some(&g["u1"].1), None), "redeem").await;
    update(&ctx, "gone", (None, Some(g["u2"].0)), "revoke").await;
    execute(
        &ctx,
        &format!(
            "UPDATE grants SET state = 'expired' WHERE id = {}",
            g["u3"].0
        ),
    )
    .await;
    execute(
        &ctx,
        &format!(
            "UPDATE grants SET expires_at = '2020-01-01 00:00:00' WHERE id = {}",
            g["u4"].0
        ),
    )
    .await;
    process(&ctx).await;
    let cases = [
        (
            "again",
            (Some(g["u1"].1.as_str()), None),
            "redeem",
            "already redeemed",
        ),
        ("of-revoked", (None, Some(g["u2"].0)), "redeem", "revoked"),
        ("of-expired", (None, Some(g["u3"].0)), "redeem", "expired"),
        (
            "ended",
            (None, Some(g["u4"].0)),
            "redeem",
            "expired at 2020-01-01T00:00:00Z",
        ),
        (
            "not-redeemed",
            (None, Some(g["u4"].0)),
            "unredeem",
            "not redeemed (it is granted)",
        ),
        (
            "revoke-expired",
            (None, Some(g["u3"].0)),
            "revoke",
            "expired",
        ),
        (
            "revoke-twice",
            (None, Some(g["u2"].0)),
            "revoke",
            "already revoked",
        ),
        (
            "no-code",
            (Some("NOPE"), None),
            "redeem",
            r#"code: no grant holds "NOPE""#,
        ),
        (
            "no-grant",
            (None, Some(999_999)),
            "redeem",
            "grant_id: no grant 999999",
        ),
        (
            "refund",
            (Some(g["u1"].1.as_str()), None),
            "refund",
            r#"action: "refund" is not one of redeem, unredeem, revoke"#,
        ),
        (
            "both",
            (Some(g["u1"].1.as_str()), Some(g["u1"].0)),
            "revoke",
            "code, grant_id: both are set",
        ),
        (
            "neither",
            (None, None),
            "revoke",
            "code, grant_id: neither is set",
        ),
    ];
    for (key, target, action, _) in &cases {
        update(&ctx, key, *target, action).await;
    }
    update(&ctx, "good", (None, Some(g["u4"].0)), "revoke").await;
    process(&ctx).await;
    let out = outcomes(&ctx).await;
    for (key, _, _, why) in &cases {
        let (status, error) = &out[*key];
        assert_eq!(status, "rejected", "{key}: {error}");
        assert!(error.contains(why), "{key}: {error:?} should say {why:?}");
        assert!(
            error.contains(&format!("(update_key \"{key}\")")),
            "{error}"
        );
    }
    assert_eq!(out["good"].0, "done", "the rest go on");
    let s = states(&ctx).await;
    assert_eq!(
        [&s["u1"], &s["u2"], &s["u3"], &s["u4"]],
        ["redeemed", "revoked", "expired", "revoked"]
    );
}
on_both_backends!(
    each_refusal_is_rejected_with_its_reason_and_the_rest_go_on,
    each_refusal_is_rejected_with_its_reason_and_the_rest_go_on
);

async fn an_unredeem_after_the_validity_ended_expires_the_grant(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(100)).await;
    let g = grant_to(&ctx, &["u1"]).await;
    update(&ctx, "r", (None, Some(g["u1"].0)), "redeem").await;
    process(&ctx).await;
    execute(&ctx, "UPDATE grants SET expires_at = '2020-01-01 00:00:00'").await;
    update(&ctx, "x", (None, Some(g["u1"].0)), "unredeem").await;
    process(&ctx).await;
    assert_eq!(outcomes(&ctx).await["x"].0, "done");
    assert_eq!(states(&ctx).await["u1"], "expired");
    drain(&ctx).await;
    assert_eq!(events_of(&receiver, "coupon.expired").len(), 1);
}
on_both_backends!(
    an_unredeem_after_the_validity_ended_expires_the_grant,
    an_unredeem_after_the_validity_ended_expires_the_grant
);

/// Two daemons process, side by side, two `redeem` updates of each of 40 codes: for
/// each code one wins and the other is rejected, `already redeemed`.
async fn two_redeems_of_one_code_from_two_daemons_one_wins(db: TestDb) {
    let receiver = Receiver::ok().await;
    // Without budgets: 40 grants would pass them.
    let unbudgeted = campaigns(100)
        .replace("    budget: \"100.00\"\n", "")
        .replace("    daily_budget: \"50.00\"\n", "");
    let mut cfg = config(&db, &receiver, &shipped_rules(), &unbudgeted, "");
    cfg.worker.batch_size = 7;
    let a = context(cfg.clone()).await;
    let b = context(cfg).await;
    let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let g = grant_to(&a, &users).await;
    for (i, user) in users.iter().enumerate() {
        let code = g[*user].1.as_str();
        // Interleaved so that each daemon's batches hold one update of many codes.
        update(&a, &format!("a{i}"), (Some(code), None), "redeem").await;
    }
    for (i, user) in users.iter().enumerate().rev() {
        update(
            &a,
            &format!("b{i}"),
            (Some(g[*user].1.as_str()), None),
            "redeem",
        )
        .await;
    }
    tokio::join!(process(&a), process(&b));
    let out = outcomes(&a).await;
    for i in 0..users.len() {
        let (x, y) = (&out[&format!("a{i}")], &out[&format!("b{i}")]);
        let mut statuses = [x.0.as_str(), y.0.as_str()];
        statuses.sort();
        assert_eq!(statuses, ["done", "rejected"], "{x:?} {y:?}");
        let loser = if x.0 == "rejected" { x } else { y };
        assert!(loser.1.contains("already redeemed"), "{loser:?}");
    }
    let redemptions = counts(&a, "to_state", "grant_transitions").await;
    assert_eq!(redemptions["redeemed"], 40, "each grant redeemed once");
}
on_both_backends!(
    two_redeems_of_one_code_from_two_daemons_one_wins,
    two_redeems_of_one_code_from_two_daemons_one_wins
);

async fn an_update_key_seen_before_changes_nothing(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(100)).await;
    let g = grant_to(&ctx, &["u1"]).await;
    update(&ctx, "once", (None, Some(g["u1"].0)), "redeem").await;
    process(&ctx).await;
    let again = diesel::sql_query(format!(
        "INSERT INTO grant_updates (update_key, grant_id, action) VALUES ('once', {}, 'unredeem')",
        g["u1"].0
    ));
    let mut conn = ctx.db.get().await.unwrap();
    assert!(conn.execute(again).await.is_err(), "the key is unique");
    drop(conn);
    assert_eq!(process(&ctx).await, 0, "nothing left to apply");
    assert_eq!(states(&ctx).await["u1"], "redeemed");
    assert_eq!(
        counts(&ctx, "update_key", "grant_transitions").await["once"],
        1
    );
}
on_both_backends!(
    an_update_key_seen_before_changes_nothing,
    an_update_key_seen_before_changes_nothing
);

#[derive(Debug, diesel::QueryableByName)]
struct Redeemed {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamp>)]
    redeemed_at: Option<chrono::NaiveDateTime>,
}

async fn each_redemption_keeps_the_time_its_partner_reported(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(100)).await;
    let users = ["u1", "u2", "u3"];
    let g = grant_to(&ctx, &users).await;
    for (i, user) in users.iter().enumerate() {
        execute(
            &ctx,
            &format!(
                "INSERT INTO grant_updates (update_key, grant_id, action, occurred_at) \
                 VALUES ('paid-{user}', {}, 'redeem', '2026-12-03 10:00:0{i}.25')",
                g[*user].0
            ),
        )
        .await;
    }
    assert_eq!(process(&ctx).await, 1, "one batch");
    let rows: Vec<Redeemed> = query_rows(
        &ctx,
        "SELECT user_id, redeemed_at FROM grants ORDER BY user_id",
    )
    .await;
    let at = |s: u32| {
        chrono::NaiveDate::from_ymd_opt(2026, 12, 3)
            .unwrap()
            .and_hms_milli_opt(10, 0, s, 250)
    };
    let got: Vec<(String, Option<chrono::NaiveDateTime>)> = rows
        .into_iter()
        .map(|r| (r.user_id, r.redeemed_at))
        .collect();
    assert_eq!(
        got,
        [
            ("u1".to_owned(), at(0)),
            ("u2".to_owned(), at(1)),
            ("u3".to_owned(), at(2))
        ]
    );
}
on_both_backends!(
    each_redemption_keeps_the_time_its_partner_reported,
    each_redemption_keeps_the_time_its_partner_reported
);

#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
struct Ledger {
    #[diesel(sql_type = BigInt)]
    granted: i64,
    #[diesel(sql_type = BigInt)]
    remaining: i64,
    #[diesel(sql_type = BigInt)]
    budget_used: i64,
}

async fn ledger(ctx: &Daemon) -> Ledger {
    let rows: Vec<Ledger> = query_rows(
        ctx,
        "SELECT c.granted AS granted, c.remaining AS remaining, k.granted_cents AS budget_used \
         FROM coupons c JOIN campaigns k ON k.id = c.campaign_id WHERE c.id = 'NEW10'",
    )
    .await;
    rows.into_iter().next().unwrap()
}

async fn day_used(ctx: &Daemon, day: &str) -> i64 {
    let wanted = [("newcomer".to_owned(), day.to_owned())];
    let days = store(ctx, async |c| c.granted_on_days(&wanted).await).await;
    days.first().map_or(0, |d| d.2)
}

/// NEW10 has one unit: u1 gets it and u2 falls back to NEW8. Revoking u1's grant gives
/// the unit, 10.00 of budget and 10.00 of its day's budget back; u3 then gets NEW10.
async fn a_revocation_gives_back_stock_budget_and_daily_budget(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(1)).await;
    let g = grant_to(&ctx, &["u1", "u2"]).await;
    let day = store(&ctx, async |c| c.grants_by_id(&[g["u1"].0], false).await).await[0]
        .granted_at
        .and_utc()
        .with_timezone(&chrono_tz::Europe::Amsterdam)
        .format("%Y-%m-%d")
        .to_string();
    // The day's ledger row, whether or not the grant step keeps it yet.
    let wanted = ("newcomer", day.as_str());
    store(&ctx, async |c| {
        c.take_daily_budget(wanted, 1000, i64::MAX).await
    })
    .await;
    let before = (ledger(&ctx).await, day_used(&ctx, &day).await);
    assert_eq!(
        before.0,
        Ledger {
            granted: 1,
            remaining: 0,
            budget_used: 1800
        }
    );
    update(&ctx, "refund", (Some(&g["u1"].1), None), "revoke").await;
    process(&ctx).await;
    assert_eq!(
        ledger(&ctx).await,
        Ledger {
            granted: 0,
            remaining: 1,
            budget_used: 800
        }
    );
    assert_eq!(day_used(&ctx, &day).await, before.1 - 1000);
    let drift = couponsd::schedule::reconcile::run(&ctx.schedule())
        .await
        .unwrap();
    assert!(
        drift.is_empty(),
        "the ledger agrees with the stock: {drift:?}"
    );
    let again = grant_to(&ctx, &["u3"]).await;
    let coupon = counts(
        &ctx,
        "coupon_id",
        &format!("grants WHERE id = {}", again["u3"].0),
    )
    .await;
    assert_eq!(
        coupon.get("NEW10"),
        Some(&1),
        "the unit given back is granted again"
    );
    assert_eq!(
        ledger(&ctx).await,
        Ledger {
            granted: 1,
            remaining: 0,
            budget_used: 1800
        }
    );
}
on_both_backends!(
    a_revocation_gives_back_stock_budget_and_daily_budget,
    a_revocation_gives_back_stock_budget_and_daily_budget
);

/// A pool coupon's code was seen: revoking its grant burns the code (never issued
/// again) and leaves the pool's stock taken, so `remaining` is still its unissued codes.
async fn a_revoked_pool_code_stays_burned(db: TestDb) {
    let receiver = Receiver::ok().await;
    let pool = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: POOL, face_value: "10.00", channel: wallet, codes: { pool: true } }
      - { id: NEW8, face_value: "8.00", stock: 100, channel: wallet }"#;
    let ctx = daemon(&db, &receiver, pool).await;
    seed_pool(&ctx, "POOL", "P-", 2).await;
    let g = grant_to(&ctx, &["u1"]).await;
    update(&ctx, "fraud", (Some(&g["u1"].1), None), "revoke").await;
    process(&ctx).await;
    let g = grant_to(&ctx, &["u2", "u3"]).await;
    let codes: Vec<&str> = ["u1", "u2"].iter().map(|u| g[*u].1.as_str()).collect();
    assert_ne!(codes[0], codes[1], "the burned code is not issued again");
    assert!(
        g["u3"].1.is_empty(),
        "u3 fell back to NEW8: the pool is dry"
    );
    let pool = counts(&ctx, "CAST(granted AS CHAR)", "coupons WHERE id = 'POOL'").await;
    assert_eq!(
        pool.get("2"),
        Some(&1),
        "the revoked grant's stock stays taken"
    );
}
on_both_backends!(
    a_revoked_pool_code_stays_burned,
    a_revoked_pool_code_stays_burned
);

/// After a revocation the user may be granted again within `per_user_limit`: the
/// revoked grant no longer counts.
async fn a_revoked_grant_no_longer_counts_toward_the_users_limit(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver, &campaigns(100)).await;
    let g = grant_to(&ctx, &["u1"]).await;
    update(&ctx, "v", (None, Some(g["u1"].0)), "revoke").await;
    process(&ctx).await;
    insert(&ctx, "visit-again", "u1", "app_open", None)
        .await
        .unwrap();
    drain(&ctx).await;
    let grants = counts(&ctx, "user_id", "grants").await;
    assert_eq!(grants["u1"], 2, "granted again once the first was revoked");
}
on_both_backends!(
    a_revoked_grant_no_longer_counts,
    a_revoked_grant_no_longer_counts_toward_the_users_limit
);

async fn the_binary_shows_and_revokes_grants(db: TestDb) {
    let receiver = Receiver::ok().await;
    let cfg_text = campaigns(100);
    let ctx = daemon(&db, &receiver, &cfg_text).await;
    let g = grant_to(&ctx, &["u1", "u2"]).await;
    update(&ctx, "r1", (None, Some(g["u1"].0)), "redeem").await;
    process(&ctx).await;
    let dir = TempDir::new("grants-cli");
    let yaml = format!(
        "database:\n  url: \"{url}\"\nrules:\n  dir: \"{rules}\"\nchannels:\n  wallet:\n    \
         url: \"{base}/webhooks/wallet\"\n    secret: \"{SECRET}\"\ncampaigns:\n{cfg_text}\n",
        url = db.url,
        rules = shipped_rules().display(),
        base = receiver.base_url(),
    );
    let path = dir.0.join("couponsd.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = |args: Vec<String>| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = couponsd(&path, &args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + String::from_utf8_lossy(&out.stderr).as_ref();
            (out.status.code(), text)
        })
    };
    let id = g["u1"].0.to_string();
    let (code, shown) = run(vec![
        "grants".into(),
        "show".into(),
        "--code".into(),
        g["u1"].1.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains(&format!("grant {id}: redeemed")), "{shown}");
    assert!(
        shown.contains("granted -> redeemed by update r1: because r1"),
        "{shown}"
    );
    let (code, revoked) = run(vec![
        "grants".into(),
        "revoke".into(),
        id.clone(),
        "--reason".into(),
        "chargeback".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{revoked}");
    assert!(
        revoked.contains(&format!("revoked grant {id} (was redeemed)")),
        "{revoked}"
    );
    let (code, twice) = run(vec![
        "grants".into(),
        "revoke".into(),
        id.clone(),
        "--reason".into(),
        "again".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{twice}");
    assert!(twice.contains("already revoked"), "{twice}");
    let (code, unknown) = run(vec![
        "grants".into(),
        "revoke".into(),
        "999999".into(),
        "--reason".into(),
        "x".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{unknown}");
    assert!(unknown.contains("no grant 999999"), "{unknown}");
    let (code, user) = run(vec![
        "grants".into(),
        "show".into(),
        "--user".into(),
        "u1".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{user}");
    assert!(user.contains("redeemed -> revoked by operator"), "{user}");
    assert!(user.contains(": chargeback"), "{user}");
    assert_eq!(states(&ctx).await["u1"], "revoked");
    let (code, none) = run(vec!["grants".into(), "show".into()]).await.unwrap();
    assert_eq!(code, Some(2), "clap refuses a show of nothing: {none}");
}
on_both_backends!(
    the_binary_shows_and_revokes_grants,
    the_binary_shows_and_revokes_grants
);

/// The demo's partners redeem every fifth grant and revoke every fiftieth other one:
/// each applied update is one signed event the receiver verified, the unknown code is
/// the one rejection, and the report counts what the updates did.
#[test]
fn the_demo_applies_partner_updates_and_reports_them() {
    let stdout = demo(120);
    // The figure after `key` on the first line starting with it, after `section`.
    let figure = |section: &str, key: &str| -> i64 {
        let from = stdout
            .find(section)
            .unwrap_or_else(|| panic!("no {section} in\n{stdout}"));
        stdout[from..]
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(key)).then(|| words.next())?
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} under {section} in\n{stdout}"))
    };
    let done = figure("partner updates", "done");
    assert_eq!(figure("partner updates", "rejected"), 1, "{stdout}");
    let redeemed = figure("deliveries", "coupon.redeemed");
    let revoked = figure("deliveries", "coupon.revoked");
    assert!(redeemed > 0 && revoked > 0, "{stdout}");
    assert_eq!(
        redeemed + revoked,
        done,
        "one event per applied update\n{stdout}"
    );
    let (granted, report_redeemed, report_revoked) = stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() > 6 && w[1] == "*").then(|| {
                let n = |i: usize| w[i].parse::<i64>().unwrap();
                (n(2), n(3), n(5))
            })
        })
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    assert_eq!(
        granted, 180,
        "120 new users and 60 returning ones\n{stdout}"
    );
    assert_eq!(
        (report_redeemed, report_revoked),
        (redeemed, revoked),
        "{stdout}"
    );
}
