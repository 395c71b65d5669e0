//! The pipeline from a queued trigger to a grant: stock, chains, limits, user types,
//! malformed requests and failing rules.

use std::collections::HashMap;

use couponsd::pipeline::grant::{process_batch, BatchOutcome};

use crate::on_both_backends;
use crate::support::*;

async fn standard(db: &TestDb, hot: i64, extra: &str) -> (couponsd::runtime::Daemon, Receiver) {
    let receiver = Receiver::ok().await;
    let config = config(
        db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(hot),
        extra,
    );
    (context(config).await, receiver)
}

async fn a_hot_coupon_runs_out_and_the_chain_falls_back(db: TestDb) {
    let (ctx, _receiver) = standard(&db, 7, "").await;
    for i in 0..30 {
        insert(&ctx, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(
        per_coupon["NEW10"], 7,
        "exactly the hot coupon's stock is granted"
    );
    assert_eq!(
        per_coupon["NEW8"], 23,
        "the rest fall back to the next coupon"
    );
    let remaining = counts(
        &ctx,
        "CASE WHEN remaining = 0 THEN 'empty' ELSE 'left' END",
        "coupons WHERE id = 'NEW10'",
    )
    .await;
    assert_eq!(remaining["empty"], 1);
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!(outcomes["granted"], 30);
}
on_both_backends!(
    a_hot_coupon_runs_out_and_the_chain_falls_back,
    a_hot_coupon_runs_out_and_the_chain_falls_back
);

async fn first_visit_then_returning_then_limit_reached(db: TestDb) {
    let (ctx, _receiver) = standard(&db, 100, "").await;
    // Three requests of one user in one batch: each must see the grants before it.
    for i in 0..3 {
        insert(&ctx, &format!("same-{i}"), "alice", "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    let rows: Vec<Outcome> = query_rows(&ctx, "SELECT request_key AS k, COALESCE(outcome, '') AS outcome, COALESCE(user_type, '') AS user_type FROM trigger_requests ORDER BY id").await;
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.outcome.as_str(), r.user_type.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("granted", "first_time"),
            ("granted", "returning"),
            ("limit_reached", "returning")
        ]
    );
    let per_campaign = counts(&ctx, "campaign_id", "grants").await;
    assert_eq!(per_campaign["newcomer"], 1);
    assert_eq!(per_campaign["loyalty"], 1);
}
on_both_backends!(
    first_visit_then_returning_then_limit_reached,
    first_visit_then_returning_then_limit_reached
);

#[derive(Debug, diesel::QueryableByName)]
struct Outcome {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[allow(dead_code)]
    k: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    outcome: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_type: String,
}

async fn a_duplicate_request_key_is_refused_by_the_database(db: TestDb) {
    let (ctx, _receiver) = standard(&db, 10, "").await;
    insert(&ctx, "dup", "u1", "app_open", None).await.unwrap();
    let second = insert(&ctx, "dup", "u2", "app_open", None).await;
    let error = second.expect_err("a second insert with the same request_key must fail");
    assert!(
        error.to_lowercase().contains("unique") || error.contains("Duplicate"),
        "{error}"
    );
}
on_both_backends!(
    a_duplicate_request_key_is_refused_by_the_database,
    a_duplicate_request_key_is_refused_by_the_database
);

#[derive(Debug, diesel::QueryableByName)]
struct Status {
    #[diesel(sql_type = diesel::sql_types::Text)]
    k: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    error: String,
}

async fn statuses(ctx: &couponsd::runtime::Daemon) -> HashMap<String, (String, String)> {
    let rows: Vec<Status> = query_rows(
        ctx,
        "SELECT request_key AS k, status, COALESCE(error, '') AS error FROM trigger_requests",
    )
    .await;
    rows.into_iter()
        .map(|r| (r.k, (r.status, r.error)))
        .collect()
}

async fn malformed_requests_are_rejected_with_reasons_and_block_nothing(db: TestDb) {
    let (ctx, _receiver) = standard(&db, 10, "").await;
    insert(&ctx, "empty-user", "", "app_open", None)
        .await
        .unwrap();
    insert(&ctx, "array", "u1", "app_open", Some("[1]"))
        .await
        .unwrap();
    insert(&ctx, "broken", "u2", "app_open", Some("{oops"))
        .await
        .unwrap();
    insert(&ctx, "long-user", &"x".repeat(250), "app_open", None)
        .await
        .unwrap();
    insert(&ctx, "good", "u3", "app_open", Some(r#"{"country":"DE"}"#))
        .await
        .unwrap();
    drain(&ctx).await;
    let s = statuses(&ctx).await;
    assert_eq!(s["empty-user"].0, "rejected");
    assert!(
        s["empty-user"]
            .1
            .ends_with(r#" (request_key "empty-user"): user_id: is empty"#),
        "{:?}",
        s["empty-user"]
    );
    assert_eq!(s["array"].0, "rejected");
    assert!(
        s["array"]
            .1
            .contains("attributes: must be a JSON object, got an array"),
        "{:?}",
        s["array"]
    );
    assert!(
        s["broken"].1.contains("attributes: not valid JSON"),
        "{:?}",
        s["broken"]
    );
    assert!(
        s["long-user"]
            .1
            .contains("user_id: is longer than 191 bytes"),
        "{:?}",
        s["long-user"]
    );
    assert_eq!(s["good"], ("done".into(), String::new()));
}
on_both_backends!(
    malformed_requests_are_rejected_with_reasons_and_block_nothing,
    malformed_requests_are_rejected_with_reasons_and_block_nothing
);

async fn a_failing_rule_fails_only_its_request(db: TestDb) {
    let receiver = Receiver::ok().await;
    let rules = TempDir::new("rules");
    std::fs::write(
        rules.0.join("user_type.rhai"),
        "// line 1\nif request.user_id == \"boom\" {\n    throw \"cannot classify boom\";\n}\nif history.grants_for_event == 0 { \"first_time\" } else { \"returning\" }\n",
    )
    .unwrap();
    std::fs::copy(
        shipped_rules().join("select_coupon.rhai"),
        rules.0.join("select_coupon.rhai"),
    )
    .unwrap();
    let ctx = context(config(
        &db,
        &receiver,
        &rules.0,
        &standard_campaigns(10),
        "",
    ))
    .await;
    for (key, user) in [("a", "u1"), ("b", "boom"), ("c", "u2")] {
        insert(&ctx, key, user, "app_open", None).await.unwrap();
    }
    drain(&ctx).await;
    let s = statuses(&ctx).await;
    assert_eq!(s["a"].0, "done");
    assert_eq!(s["c"].0, "done");
    assert_eq!(s["b"].0, "failed");
    assert!(
        s["b"].1.contains("user_type.rhai:3:"),
        "names file and line: {}",
        s["b"].1
    );
    assert!(s["b"].1.contains("cannot classify boom"), "{}", s["b"].1);
}
on_both_backends!(
    a_failing_rule_fails_only_its_request,
    a_failing_rule_fails_only_its_request
);

async fn process_batch_reports_empty_on_an_empty_queue(db: TestDb) {
    let (ctx, _receiver) = standard(&db, 10, "").await;
    assert_eq!(
        process_batch(&ctx.grant()).await.unwrap(),
        BatchOutcome::Empty
    );
    insert(&ctx, "one", "u1", "app_open", None).await.unwrap();
    match process_batch(&ctx.grant()).await.unwrap() {
        BatchOutcome::Processed(summary) => {
            assert_eq!((summary.claimed, summary.granted), (1, 1));
        }
        BatchOutcome::Empty => panic!("one request was queued"),
    }
}
on_both_backends!(
    process_batch_reports_empty_on_an_empty_queue,
    process_batch_reports_empty_on_an_empty_queue
);

/// A batch claimed on its own (the grant worker's way after a failure) whose
/// transaction then failed stays claimed until `worker.lease`, which no job recovers
/// during a drain: `run --drain` gives it back and grants it instead of ending with it
/// in hand (three SQLite daemons sharing 30,000 requests once ended a drain 200 short
/// in CI, one batch).
async fn a_drain_gives_back_the_claims_of_its_failed_batches_and_grants_them(db: TestDb) {
    let (ctx, _receiver) = standard(&db, 100, "").await;
    for i in 0..250 {
        insert(&ctx, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    let token = 4242;
    let claimed = store(&ctx, async |c| {
        c.claim_batch(200, token, couponsd::store::now()).await
    })
    .await;
    assert_eq!(claimed.len(), 200);
    // As process_claimed_batch leaves a batch whose transaction failed.
    ctx.claims.hold(token);
    drain(&ctx).await;
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!(outcomes.get("granted"), Some(&250), "{outcomes:?}");
    assert!(ctx.claims.tokens().is_empty(), "nothing left in hand");
}
on_both_backends!(
    a_drain_gives_back_the_claims_of_its_failed_batches_and_grants_them,
    a_drain_gives_back_the_claims_of_its_failed_batches_and_grants_them
);

/// Four workers and two daemons' worth of contexts on one MariaDB database, a hot coupon
/// with less stock than the burst: never oversold, every user first-time once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_coupon_is_never_oversold_with_concurrent_workers_on_mariadb() {
    let Some(db) = fresh_db(Backend::Mysql).await else {
        return;
    };
    let receiver = Receiver::ok().await;
    let cfg = config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(150),
        "",
    );
    let mut cfg4 = cfg.clone();
    cfg4.worker.concurrency = 4;
    let a = context(cfg4.clone()).await;
    let b = context(cfg4).await;
    // 400 users, each with 2 requests: 800 requests, interleaved.
    for round in 0..2 {
        for u in 0..400 {
            insert(
                &a,
                &format!("r{round}-u{u}"),
                &format!("u{u}"),
                "app_open",
                None,
            )
            .await
            .unwrap();
        }
    }
    let (x, y) = tokio::join!(drain(&a), drain(&b));
    let _ = (x, y);
    let per_coupon = counts(&a, "coupon_id", "grants").await;
    assert_eq!(
        per_coupon["NEW10"], 150,
        "hot coupon granted exactly its stock"
    );
    assert_eq!(per_coupon["NEW8"], 250);
    assert_eq!(per_coupon["BACK5"], 400);
    let first_time_per_user = counts(&a, "user_id", "grants WHERE user_type = 'first_time'").await;
    assert_eq!(first_time_per_user.len(), 400);
    assert!(
        first_time_per_user.values().all(|&n| n == 1),
        "no user is first-time twice"
    );
    let statuses = counts(&a, "status", "trigger_requests").await;
    assert_eq!(statuses.get("done"), Some(&800), "{statuses:?}");
    let stock = counts(&a, "CAST(remaining AS CHAR)", "coupons WHERE id = 'NEW10'").await;
    assert_eq!(stock.get("0"), Some(&1));
}
