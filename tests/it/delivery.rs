//! Webhook delivery: Standard Webhooks signatures, retries with a stable webhook-id,
//! permanent failures, 410 Gone, and the grant/outbox pairing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;

use crate::on_both_backends;
use crate::support::*;

async fn every_grant_is_delivered_signed_and_verifies_with_the_reference_crate(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(3),
        "",
    ))
    .await;
    for i in 0..10 {
        insert(&ctx, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter().all(|s| s.verified),
        "every signature verifies with standardwebhooks"
    );
    assert!(seen.iter().all(|s| s.path == "/webhooks/wallet"));
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["type"], "coupon.granted");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    let data = &body["data"];
    for field in [
        "grant_id",
        "request_key",
        "user_id",
        "campaign",
        "coupon",
        "face_value",
        "user_type",
    ] {
        assert!(!data[field].is_null(), "data.{field} is present: {body}");
    }
    assert!(data["face_value"] == "10.00" || data["face_value"] == "8.00");
    let ts: i64 = seen[0].headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 60,
        "whole Unix seconds, now"
    );
    // The grant, its outbox row and the request's status committed together.
    let deliveries = counts(&ctx, "status", "deliveries").await;
    assert_eq!(deliveries["delivered"], 10);
    let paired = counts(
        &ctx,
        "'paired'",
        "grants g JOIN deliveries d ON d.grant_id = g.id",
    )
    .await;
    assert_eq!(paired["paired"], 10);
}
on_both_backends!(
    every_grant_is_delivered_signed_and_verifies_with_the_reference_crate,
    every_grant_is_delivered_signed_and_verifies_with_the_reference_crate
);

async fn a_channel_with_old_and_new_secrets_reaches_a_partner_that_knows_only_the_new(db: TestDb) {
    // The middle of a rotation: the daemon signs with both keys, the partner has
    // already switched to the new one.
    const NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let receiver = Receiver::verifying_with(NEW, |_, _| StatusCode::NO_CONTENT).await;
    let mut config = config(&db, &receiver, &shipped_rules(), &standard_campaigns(3), "");
    let wallet = couponsd::domain::ChannelName::parse("wallet").unwrap();
    let rotating = format!(
        "channels:\n  wallet:\n    url: \"{}/webhooks/wallet\"\n    \
         secrets: [\"{SECRET}\", \"{NEW}\"]\n",
        receiver.base_url()
    );
    let rotating = couponsd::config::Config::from_yaml_with_env(
        &rotating,
        std::path::Path::new("rotating.yaml"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("secrets: [old, new] loads: {e}"));
    config
        .channels
        .insert(wallet.clone(), rotating.channels[&wallet].clone());
    let ctx = context(config).await;
    for i in 0..3 {
        insert(&ctx, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert!(s.verified, "the new key alone verifies: {:?}", s.headers);
        let header = s.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(
            header.split(' ').count(),
            2,
            "one signature per key: {header}"
        );
        let old = standardwebhooks::Webhook::new(SECRET).unwrap();
        assert!(
            old.verify(s.body.as_bytes(), &s.headers).is_ok(),
            "a partner still on the old key verifies too"
        );
    }
    assert_eq!(counts(&ctx, "status", "deliveries").await["delivered"], 3);
}
on_both_backends!(
    a_channel_with_old_and_new_secrets_reaches_a_partner_that_knows_only_the_new,
    a_channel_with_old_and_new_secrets_reaches_a_partner_that_knows_only_the_new
);

async fn a_receiver_failing_twice_sees_the_same_webhook_id_three_times(db: TestDb) {
    let receiver = Receiver::start(|n, _| {
        if n < 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    })
    .await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(3),
        "",
    ))
    .await;
    insert(&ctx, "once", "u1", "app_open", None).await.unwrap();
    drain(&ctx).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3, "two failures, then delivered");
    let ids: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["webhook-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "same webhook-id on every retry: {ids:?}"
    );
    assert!(seen.iter().all(|s| s.verified));
    let attempts = counts(&ctx, "CAST(attempts AS CHAR)", "deliveries").await;
    assert_eq!(attempts.get("3"), Some(&1));
    let delivered = counts(&ctx, "status", "deliveries").await;
    assert_eq!(delivered.get("delivered"), Some(&1));
    let logged = counts(
        &ctx,
        "CAST(COALESCE(status_code, 0) AS CHAR)",
        "delivery_attempts",
    )
    .await;
    assert_eq!((logged.get("500"), logged.get("200")), (Some(&2), Some(&1)));
}
on_both_backends!(
    a_receiver_failing_twice_sees_the_same_webhook_id_three_times,
    a_receiver_failing_twice_sees_the_same_webhook_id_three_times
);

async fn a_delivery_out_of_attempts_is_dead_and_kept(db: TestDb) {
    let receiver = Receiver::start(|_, _| StatusCode::SERVICE_UNAVAILABLE).await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(3),
        "",
    ))
    .await;
    insert(&ctx, "doomed", "u1", "app_open", None)
        .await
        .unwrap();
    drain(&ctx).await;
    assert_eq!(receiver.seen().len(), 5, "max_attempts: 5");
    let status = counts(&ctx, "status", "deliveries").await;
    assert_eq!(status.get("dead"), Some(&1));
    let error = counts(&ctx, "last_error", "deliveries").await;
    let text = error.keys().next().unwrap();
    assert!(
        text.contains("503") && text.contains("gave up after 5 attempts"),
        "{text}"
    );
}
on_both_backends!(
    a_delivery_out_of_attempts_is_dead_and_kept,
    a_delivery_out_of_attempts_is_dead_and_kept
);

async fn a_client_error_is_permanent_and_410_disables_the_channel(db: TestDb) {
    let fixed = Arc::new(AtomicBool::new(false));
    let partner_fixed = fixed.clone();
    let receiver = Receiver::start(move |_, seen| {
        let gone = seen.path.ends_with("/wallet") && !partner_fixed.load(Ordering::SeqCst);
        if seen.body.contains("\"u-bad\"") {
            StatusCode::BAD_REQUEST
        } else if gone && seen.body.contains("\"u-gone\"") {
            StatusCode::GONE
        } else {
            StatusCode::NO_CONTENT
        }
    })
    .await;
    // NEW10 reaches users through wallet, NEW8 through sms; ops gets the alerts.
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100, channel: wallet }
      - { id: NEW8, face_value: "8.00", stock: 100, channel: sms }"#;
    let extra = "alerts:\n  channel: ops\n";
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, extra)).await;
    insert(&ctx, "bad", "u-bad", "app_open", None)
        .await
        .unwrap();
    drain(&ctx).await;
    assert_eq!(receiver.seen().len(), 1, "a 400 is not retried");
    assert_eq!(
        counts(&ctx, "status", "deliveries").await.get("dead"),
        Some(&1)
    );

    insert(&ctx, "gone", "u-gone", "app_open", None)
        .await
        .unwrap();
    drain(&ctx).await;
    let disabled = counts(
        &ctx,
        "channel",
        "channel_states WHERE disabled_at IS NOT NULL",
    )
    .await;
    assert_eq!(disabled.get("wallet"), Some(&1), "410 disables the channel");
    let held = counts(
        &ctx,
        "CONCAT(status, ' ', CAST(attempts AS CHAR), ' ', CAST(last_status AS CHAR))",
        "deliveries WHERE grant_id = (SELECT id FROM trigger_requests WHERE request_key = 'gone')",
    )
    .await;
    assert_eq!(
        held.get("pending 1 410"),
        Some(&1),
        "held, not dead: {held:?}"
    );

    // The grant step treats NEW10, whose only channel is disabled, as out of stock.
    insert(&ctx, "after", "u-after", "app_open", None)
        .await
        .unwrap();
    drain(&ctx).await;
    let after = counts(
        &ctx,
        "CONCAT(coupon_id, ' | ', r.detail)",
        "grants g JOIN trigger_requests r ON r.id = g.id WHERE r.request_key = 'after'",
    )
    .await;
    assert_eq!(
        after.keys().next().map(String::as_str),
        Some(
            "NEW8 | NEW10 cannot reach the user (channel wallet is disabled); granted NEW8 instead"
        ),
        "{after:?}"
    );
    let stock = counts(&ctx, "CONCAT(id, ' ', CAST(remaining AS CHAR))", "coupons").await;
    assert!(
        stock.contains_key("NEW10 98") && stock.contains_key("NEW8 99"),
        "{stock:?}"
    );
    let alerts: Vec<Seen> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with("/ops"))
        .collect();
    assert_eq!(alerts.len(), 1, "one channel.disabled alert");
    assert!(
        alerts[0].body.contains("\"channel.disabled\"") && alerts[0].body.contains("\"wallet\"")
    );
    let gone_id = receiver
        .seen()
        .iter()
        .find(|s| s.body.contains("\"u-gone\""))
        .map(|s| s.headers["webhook-id"].clone())
        .unwrap();

    // The partner fixes its endpoint; ops enable the channel: what was held goes out
    // with its original webhook-id.
    fixed.store(true, Ordering::SeqCst);
    let said = couponsd::ops::deliveries::enable(&installation(&ctx), "wallet")
        .await
        .unwrap();
    assert!(said.contains("the 1 deliveries it held"), "{said}");
    ctx.handoff.read_disabled(Vec::<String>::new());
    drain(&ctx).await;
    let resent: Vec<Seen> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.headers["webhook-id"] == gone_id)
        .collect();
    assert_eq!(resent.len(), 2, "the 410, then the delivery after enable");
    assert!(resent.iter().all(|s| s.verified));
    let now = counts(
        &ctx,
        "CONCAT(status, ' ', CAST(attempts AS CHAR), ' ', CAST(last_status AS CHAR))",
        "deliveries WHERE grant_id = (SELECT id FROM trigger_requests WHERE request_key = 'gone')",
    )
    .await;
    assert_eq!(now.get("delivered 2 204"), Some(&1), "{now:?}");
}
on_both_backends!(
    a_client_error_is_permanent_and_410_disables_the_channel,
    a_client_error_is_permanent_and_410_disables_the_channel
);

async fn a_handed_off_delivery_is_held_for_its_daemon_and_sent_by_another_after_the_lease(
    db: TestDb,
) {
    let receiver = Receiver::ok().await;
    let settings = || config(&db, &receiver, &shipped_rules(), &standard_campaigns(3), "");
    let dying = context(settings()).await;
    let other = context(settings()).await;
    insert(&dying, "k-1", "u1", "app_open", None).await.unwrap();
    couponsd::pipeline::grant::process_batch(&dying.grant())
        .await
        .unwrap();
    assert_eq!(dying.handoff.len(), 1, "the grant handed its delivery off");
    let outcome = couponsd::pipeline::dispatch::worker::dispatch_due(&other.dispatch())
        .await
        .unwrap();
    assert_eq!(
        outcome,
        couponsd::pipeline::dispatch::worker::DispatchOutcome::Empty,
        "another daemon leaves a handed-off row alone while its lease runs"
    );
    assert!(receiver.seen().is_empty());
    // The daemon dies with the delivery in memory; its lease runs out.
    drop(dying);
    let expire = diesel::sql_query("UPDATE deliveries SET next_attempt_at = '2000-01-01 00:00:00'");
    match other.db.get().await.unwrap() {
        couponsd::store::Conn::Mysql(mut c) => diesel_async::RunQueryDsl::execute(expire, &mut *c)
            .await
            .unwrap(),
        couponsd::store::Conn::Sqlite(mut c) => diesel_async::RunQueryDsl::execute(expire, &mut *c)
            .await
            .unwrap(),
    };
    drain(&other).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "sent once, by the other daemon");
    assert!(seen[0].verified);
    assert_eq!(
        counts(&other, "status", "deliveries")
            .await
            .get("delivered"),
        Some(&1)
    );
}
on_both_backends!(
    a_handed_off_delivery_is_held_for_its_daemon_and_sent_by_another_after_the_lease,
    a_handed_off_delivery_is_held_for_its_daemon_and_sent_by_another_after_the_lease
);

async fn a_first_attempt_delivery_is_described_by_its_row_and_logs_no_attempt(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(3),
        "",
    ))
    .await;
    insert(&ctx, "k-1", "u1", "app_open", None).await.unwrap();
    drain(&ctx).await;
    assert_eq!(receiver.seen().len(), 1);
    let rows = counts(
        &ctx,
        "CONCAT(status, ' ', CAST(attempts AS CHAR), ' ', CAST(last_status AS CHAR), ' ', CASE WHEN delivered_at IS NULL THEN 'no' ELSE 'at' END)",
        "deliveries",
    )
    .await;
    assert_eq!(rows.get("delivered 1 204 at"), Some(&1), "{rows:?}");
    assert!(counts(&ctx, "status_code", "delivery_attempts")
        .await
        .is_empty());
}
on_both_backends!(
    a_first_attempt_delivery_is_described_by_its_row_and_logs_no_attempt,
    a_first_attempt_delivery_is_described_by_its_row_and_logs_no_attempt
);

async fn a_stream_of_handed_off_deliveries_leaves_a_quarter_of_each_round_to_retries(db: TestDb) {
    let receiver = Receiver::start(|n, _| {
        if n == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    })
    .await;
    let mut settings = config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(100),
        "",
    );
    // One sender, so that the order of sends is the order the partner sees: with more,
    // sends started together arrive in any order.
    settings.dispatch.concurrency = 1;
    let ctx = context(settings).await;
    insert(&ctx, "k-retry", "u0", "app_open", None)
        .await
        .unwrap();
    couponsd::pipeline::grant::process_batch(&ctx.grant())
        .await
        .unwrap();
    couponsd::pipeline::dispatch::worker::dispatch_due(&ctx.dispatch())
        .await
        .unwrap();
    let retried_id = receiver.seen()[0].headers["webhook-id"].clone();
    // The retry comes due (retry_base 20ms), and the outbox poll interval (20ms) passes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for i in 1..=8 {
        insert(&ctx, &format!("k-{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    couponsd::pipeline::grant::process_batch(&ctx.grant())
        .await
        .unwrap();
    assert_eq!(ctx.handoff.len(), 8, "eight sends' worth waits in memory");
    // The outbox's poll interval passed: its due retry is claimed ahead of the hand-offs
    // (a quarter of the free senders at least, however many hand-offs wait).
    drain(&ctx).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 10, "one failure, then nine deliveries");
    let second_try = seen
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, s)| s.headers["webhook-id"] == retried_id)
        .map(|(i, _)| i)
        .unwrap();
    assert_eq!(
        second_try, 1,
        "the retry went out before the hand-offs that waited"
    );
    assert!(seen.iter().all(|s| s.verified));
    assert_eq!(
        counts(&ctx, "status", "deliveries").await.get("delivered"),
        Some(&9)
    );
}
on_both_backends!(
    a_stream_of_handed_off_deliveries_leaves_a_quarter_of_each_round_to_retries,
    a_stream_of_handed_off_deliveries_leaves_a_quarter_of_each_round_to_retries
);
