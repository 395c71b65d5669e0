//! `store::records`: the read-only queries of the authoring commands.

use couponsd::domain::{Budget, Outcome, RequestStatus};
use couponsd::store::deliveries::NewDelivery;
use couponsd::store::records::{CouponTotal, PastAttempt};
use couponsd::store::requests::{parse_time, Claim, Finished};
use couponsd::store::Conn;

use super::{at, grant, queue_requests, two_campaigns, PlainSql};

/// Requests `r0`…`rN` (user `u-rI`), each granted NEW10 at `I` seconds, except where
/// `users` names another user.
async fn granted(conn: &mut Conn, users: &[&str]) -> Vec<i64> {
    let keys: Vec<String> = (0..users.len()).map(|i| format!("r{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let ids = queue_requests(conn, &keys).await;
    let grants: Vec<_> = ids
        .iter()
        .zip(users)
        .enumerate()
        .map(|(i, (id, user))| grant(*id, user, ("newcomer", "NEW10"), at(i as i64)))
        .collect();
    conn.record_grants(&grants).await.unwrap();
    ids
}

fn grant_ids(grants: &[couponsd::store::records::GrantRecord]) -> Vec<i64> {
    grants.iter().map(|g| g.id).collect()
}

async fn request_by_key_reads_a_request_as_recorded(conn: &mut Conn) {
    let big = "x".repeat(70_000);
    conn.exec(&format!(
        "INSERT INTO trigger_requests (request_key, user_id, event, attributes, created_at) \
         VALUES ('k1', 'u1', 'app_open', '{{\"n\":1}}', '{}'), \
         ('k2', 'u2', 'app_open', '{big}', '{}')",
        at(0),
        at(1)
    ))
    .await;
    let ids = super::requests(conn).await;
    conn.claim_batch(1, 1, at(2)).await.unwrap();
    let finished = Finished {
        id: ids[0].id,
        status: RequestStatus::Done,
        outcome: Some(Outcome::Granted),
        error: None,
        detail: Some("rule newcomer".to_owned()),
        user_type: Some("first_time".to_owned()),
        campaign_id: Some("newcomer".to_owned()),
        rules_version: Some("v1".to_owned()),
    };
    conn.finish_requests(&[finished], Claim::Token(1), at(3))
        .await
        .unwrap();
    let found = conn.request_by_key("k1").await.unwrap().unwrap();
    assert_eq!((found.id, found.attempts), (ids[0].id, 0));
    assert_eq!(found.attributes.as_deref(), Some(r#"{"n":1}"#));
    let text = [
        &found.request_key,
        &found.user_id,
        &found.event,
        &found.status,
    ];
    assert_eq!(
        text.map(|t| t.as_deref()),
        [Some("k1"), Some("u1"), Some("app_open"), Some("done")]
    );
    assert_eq!(found.outcome.as_deref(), Some("granted"));
    assert_eq!(found.detail.as_deref(), Some("rule newcomer"));
    assert_eq!(found.error, None);
    // Times are shown as each database renders them; both read as the time written.
    let time = |t: &Option<String>| t.as_deref().and_then(|t| parse_time(t.as_bytes()));
    assert_eq!(
        (time(&found.created_at), time(&found.processed_at)),
        (Some(at(0)), Some(at(3)))
    );
    let long = conn.request_by_key("k2").await.unwrap().unwrap();
    assert_eq!(long.attributes.as_deref(), Some("(70000 bytes, not shown)"));
    assert_eq!(long.processed_at, None);
    assert_eq!(conn.request_by_key("nosuch").await.unwrap(), None);
}
conformance!(request_by_key_reads_a_request_as_recorded);

/// The key is compared byte for byte: MariaDB's PAD SPACE collation alone would find
/// `k1` for `k1 ` and the reverse, where SQLite finds nothing.
async fn request_by_key_finds_the_exact_key_only(conn: &mut Conn) {
    conn.exec(
        "INSERT INTO trigger_requests (request_key, user_id, event) \
         VALUES ('k1', 'u1', 'app_open'), ('k2 ', 'u2', 'app_open')",
    )
    .await;
    let key = async |conn: &mut Conn, key: &str| {
        let found = conn.request_by_key(key).await.unwrap();
        found.and_then(|r| r.request_key)
    };
    assert_eq!(key(conn, "k1").await.as_deref(), Some("k1"));
    assert_eq!(key(conn, "k1 ").await, None);
    assert_eq!(key(conn, "k2").await, None);
    assert_eq!(key(conn, "k2 ").await.as_deref(), Some("k2 "));
    assert_eq!(key(conn, "K1").await, None);
}
conformance!(request_by_key_finds_the_exact_key_only);

async fn grant_of_request_finds_the_grant_a_request_earned(conn: &mut Conn) {
    let ids = granted(conn, &["u1"]).await;
    let ungranted = queue_requests(conn, &["none"]).await;
    let found = conn.grant_of_request(ids[0]).await.unwrap();
    assert_eq!(
        found,
        Some(grant(ids[0], "u1", ("newcomer", "NEW10"), at(0)))
    );
    assert_eq!(conn.grant_of_request(ungranted[0]).await.unwrap(), None);
}
conformance!(grant_of_request_finds_the_grant_a_request_earned);

async fn deliveries_of_grant_lists_a_grants_outbox_rows_oldest_first(conn: &mut Conn) {
    let ids = granted(conn, &["u1", "u2"]).await;
    let row = |webhook_id: &str, grant_id| NewDelivery {
        webhook_id: webhook_id.to_owned(),
        channel: "wallet".to_owned(),
        event_type: "coupon.granted".to_owned(),
        grant_id,
        payload: "{}".to_owned(),
        next_attempt_at: at(0),
        created_at: at(0),
        hold_token: None,
    };
    let rows = [
        row("first", Some(ids[0])),
        row("other", Some(ids[1])),
        row("alert", None),
        row("second", Some(ids[0])),
    ];
    conn.record_deliveries(&rows).await.unwrap();
    let found = conn.deliveries_of_grant(ids[0]).await.unwrap();
    let webhooks: Vec<&str> = found.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(webhooks, ["first", "second"]);
    assert_eq!(
        (
            found[0].status.as_str(),
            found[0].attempts,
            found[0].next_attempt_at
        ),
        ("pending", 0, at(0))
    );
}
conformance!(deliveries_of_grant_lists_a_grants_outbox_rows_oldest_first);

async fn attempts_of_deliveries_lists_attempts_by_delivery_and_number(conn: &mut Conn) {
    for (delivery, attempt, code) in [(2, 2, "503"), (1, 1, "NULL"), (2, 1, "500"), (3, 1, "200")] {
        conn.exec(&format!(
            "INSERT INTO delivery_attempts \
             (delivery_id, attempt, attempted_at, status_code, error, duration_ms) \
             VALUES ({delivery}, {attempt}, '{}', {code}, NULL, 12)",
            at(attempt as i64)
        ))
        .await;
    }
    let found = conn.attempts_of_deliveries(&[1, 2]).await.unwrap();
    let seen: Vec<(i64, i32, Option<i32>)> = found
        .iter()
        .map(|a| (a.delivery_id, a.attempt, a.status_code))
        .collect();
    assert_eq!(seen, [(1, 1, None), (2, 1, Some(500)), (2, 2, Some(503))]);
    assert_eq!(
        found[2],
        PastAttempt {
            delivery_id: 2,
            attempt: 2,
            attempted_at: at(2),
            status_code: Some(503),
            error: None,
            duration_ms: 12,
        }
    );
    assert_eq!(conn.attempts_of_deliveries(&[]).await.unwrap(), []);
}
conformance!(attempts_of_deliveries_lists_attempts_by_delivery_and_number);

async fn campaign_budgets_lists_every_campaign_with_its_budget(conn: &mut Conn) {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
    conn.add_granted_value("newcomer", 1000).await.unwrap();
    let budget = |campaign_id: &str, budget_cents, granted_cents| Budget {
        campaign_id: campaign_id.to_owned(),
        budget_cents,
        granted_cents,
    };
    assert_eq!(
        conn.campaign_budgets().await.unwrap(),
        [
            budget("loyalty", None, 0),
            budget("newcomer", Some(5000), 1000)
        ]
    );
}
conformance!(campaign_budgets_lists_every_campaign_with_its_budget);

async fn recent_grants_of_lists_a_users_latest_grants_for_an_event(conn: &mut Conn) {
    let ids = granted(conn, &["u1", "u2", "u1", "u1"]).await;
    conn.exec(&format!(
        "UPDATE grants SET event = 'deposit' WHERE id = {}",
        ids[3]
    ))
    .await;
    let recent = conn.recent_grants_of("u1", "app_open", 5).await.unwrap();
    assert_eq!(grant_ids(&recent), [ids[2], ids[0]]);
    let latest = conn.recent_grants_of("u1", "app_open", 1).await.unwrap();
    assert_eq!(grant_ids(&latest), [ids[2]]);
    assert!(conn
        .recent_grants_of("u3", "app_open", 5)
        .await
        .unwrap()
        .is_empty());
}
conformance!(recent_grants_of_lists_a_users_latest_grants_for_an_event);

async fn done_requests_since_lists_done_requests_created_from_a_time_on(conn: &mut Conn) {
    for (key, status, created) in [
        ("before", "done", at(0)),
        ("first", "done", at(10)),
        ("queued", "queued", at(11)),
        ("second", "done", at(12)),
        ("third", "done", at(13)),
    ] {
        conn.exec(&format!(
            "INSERT INTO trigger_requests (request_key, user_id, event, status, created_at) \
             VALUES ('{key}', 'u', 'app_open', '{status}', '{created}')"
        ))
        .await;
    }
    let found = conn.done_requests_since(at(10), 2).await.unwrap();
    let keys: Vec<&str> = found.iter().map(|r| r.request_key.as_str()).collect();
    assert_eq!(keys, ["first", "second"]);
    assert_eq!(
        (
            found[0].status.as_str(),
            found[0].created_at,
            found[0].attempts
        ),
        ("done", at(10), 0)
    );
}
conformance!(done_requests_since_lists_done_requests_created_from_a_time_on);

async fn ledger_before_lists_the_grants_of_users_before_a_request(conn: &mut Conn) {
    let ids = granted(conn, &["u1", "u2", "u3", "u1", "u2"]).await;
    let users = ["u1".to_owned(), "u2".to_owned()];
    let ledger = conn.ledger_before(&users, ids[4]).await.unwrap();
    assert_eq!(grant_ids(&ledger), [ids[0], ids[1], ids[3]]);
    assert!(conn.ledger_before(&users, ids[0]).await.unwrap().is_empty());
}
conformance!(ledger_before_lists_the_grants_of_users_before_a_request);

async fn grants_in_window_lists_the_grants_of_requests_in_an_id_range(conn: &mut Conn) {
    let ids = granted(conn, &["u1", "u2", "u3", "u4"]).await;
    let window = conn.grants_in_window(ids[1], ids[2]).await.unwrap();
    assert_eq!(grant_ids(&window), [ids[1], ids[2]], "both ends included");
    assert_eq!(window[0], grant(ids[1], "u2", ("newcomer", "NEW10"), at(1)));
}
conformance!(grants_in_window_lists_the_grants_of_requests_in_an_id_range);

async fn grants_after_request_counts_later_grants_by_coupon(conn: &mut Conn) {
    let ids = granted(conn, &["u1", "u2", "u3", "u4"]).await;
    conn.exec(&format!(
        "UPDATE grants SET coupon_id = 'NEW8', face_value_cents = 800 WHERE id = {}",
        ids[3]
    ))
    .await;
    let mut totals = conn.grants_after_request(ids[0]).await.unwrap();
    totals.sort_by(|a, b| a.coupon_id.cmp(&b.coupon_id));
    let total = |coupon_id: &str, face_value_cents, grants| CouponTotal {
        campaign_id: "newcomer".to_owned(),
        coupon_id: coupon_id.to_owned(),
        face_value_cents,
        grants,
    };
    assert_eq!(totals, [total("NEW10", 1000, 2), total("NEW8", 800, 1)]);
}
conformance!(grants_after_request_counts_later_grants_by_coupon);
