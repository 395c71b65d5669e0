//! `store::deliveries`: the outbox, its attempts and the channels' states.

use chrono::NaiveDateTime;
use couponsd::domain::DeliveryStatus;
use couponsd::store::deliveries::{
    AttemptRecord, DeliveryRecord, DisabledChannel, NewDelivery, Replay, DELIVERY_ROOM_BYTES,
};
use couponsd::store::Conn;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamp};

use super::{at, migrated, while_a_client_commits, PlainSql};

/// The words `deliveries.status` stores.
const PENDING: &str = "pending";
const DELIVERED: &str = "delivered";
const DEAD: &str = "dead";

/// A `coupon.granted` delivery `webhook_id` on `channel`, due at `due`, held by nobody.
fn delivery(webhook_id: &str, channel: &str, due: NaiveDateTime) -> NewDelivery {
    NewDelivery {
        webhook_id: webhook_id.to_owned(),
        channel: channel.to_owned(),
        event_type: "coupon.granted".to_owned(),
        grant_id: None,
        payload: format!(r#"{{"id":"{webhook_id}"}}"#),
        next_attempt_at: due,
        created_at: at(0),
        hold_token: None,
    }
}

/// The result of attempt `attempt` of `webhook_id`, made under `hold_token`.
fn attempt(webhook_id: &str, hold_token: i64, attempt: i32, word: &'static str) -> AttemptRecord {
    let status = DeliveryStatus::parse(word).expect("a delivery status");
    let delivered = word == DELIVERED;
    AttemptRecord {
        delivery_id: None,
        webhook_id: webhook_id.to_owned(),
        hold_token,
        attempt,
        status,
        next_attempt_at: (word == PENDING).then(|| at(600)),
        status_code: Some(if delivered { 200 } else { 503 }),
        error: (!delivered).then(|| "503 Service Unavailable".to_owned()),
        attempted_at: at(20),
        duration_ms: 15,
    }
}

/// One delivery's columns that the store writes, as read back.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
struct Outbox {
    #[diesel(sql_type = Text)]
    webhook_id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Timestamp)]
    next_attempt_at: NaiveDateTime,
    #[diesel(sql_type = Nullable<Integer>)]
    last_status: Option<i32>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    delivered_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<BigInt>)]
    hold_token: Option<i64>,
}

async fn outbox(conn: &mut Conn) -> Vec<Outbox> {
    conn.rows(
        "SELECT webhook_id, status, attempts, next_attempt_at, last_status, delivered_at, \
         hold_token FROM deliveries ORDER BY id",
    )
    .await
}

/// The attempts logged in `delivery_attempts`: (webhook_id, attempt, status code).
async fn logged(conn: &mut Conn) -> Vec<(String, i32, Option<i32>)> {
    #[derive(diesel::QueryableByName)]
    struct Logged {
        #[diesel(sql_type = Text)]
        webhook_id: String,
        #[diesel(sql_type = Integer)]
        attempt: i32,
        #[diesel(sql_type = Nullable<Integer>)]
        status_code: Option<i32>,
    }
    let rows: Vec<Logged> = conn
        .rows(
            "SELECT d.webhook_id, a.attempt, a.status_code FROM delivery_attempts a \
             JOIN deliveries d ON d.id = a.delivery_id ORDER BY a.id",
        )
        .await;
    rows.into_iter()
        .map(|r| (r.webhook_id, r.attempt, r.status_code))
        .collect()
}

/// Deliveries `w1`…`wN` on `wallet`, due at 0, dead after one attempt.
async fn dead_letters(conn: &mut Conn, channels: &[&str]) {
    let rows: Vec<NewDelivery> = channels
        .iter()
        .enumerate()
        .map(|(i, channel)| delivery(&format!("w{}", i + 1), channel, at(0)))
        .collect();
    conn.record_deliveries(&rows).await.unwrap();
    conn.exec("UPDATE deliveries SET status = 'dead', attempts = 5, last_status = 400")
        .await;
}

/// Deliveries `webhook_ids` on `wallet`, due at 0, claimed at 10 under token 7 until 40.
async fn held(conn: &mut Conn, webhook_ids: &[&str]) {
    let rows: Vec<NewDelivery> = webhook_ids
        .iter()
        .map(|w| delivery(w, "wallet", at(0)))
        .collect();
    conn.record_deliveries(&rows).await.unwrap();
    let due = conn
        .claim_due("wallet", 10, (at(10), at(40)), 7)
        .await
        .unwrap();
    assert_eq!(due.len(), webhook_ids.len());
}

/// Disables `wallet` at 1 and `sms` at 2, as their partners answered 410 Gone.
async fn wallet_and_sms_gone(conn: &mut Conn) {
    for (channel, reason, when) in [
        ("wallet", "410 Gone: unsubscribed", 1),
        ("sms", "410 Gone", 2),
    ] {
        let disabled = conn.disable_channel(channel, reason, at(when), None).await;
        assert!(disabled.unwrap());
    }
}

fn ids(rows: &[DeliveryRecord]) -> Vec<&str> {
    rows.iter().map(|r| r.webhook_id.as_str()).collect()
}

fn sorted<T: Ord>(mut rows: Vec<T>) -> Vec<T> {
    rows.sort();
    rows
}

async fn record_deliveries_writes_pending_rows(conn: &mut Conn) {
    let rows = [
        delivery("w1", "wallet", at(5)),
        delivery("w2", "sms", at(6)),
    ];
    assert_eq!(conn.record_deliveries(&rows).await.unwrap(), 2);
    assert_eq!(conn.record_deliveries(&[]).await.unwrap(), 0);
    let written = outbox(conn).await;
    assert_eq!(written.len(), 2);
    assert_eq!(
        (written[0].webhook_id.as_str(), written[0].status.as_str()),
        ("w1", PENDING)
    );
    assert_eq!(
        (
            written[0].attempts,
            written[0].next_attempt_at,
            written[0].hold_token
        ),
        (0, at(5), None)
    );
    assert!(
        conn.record_deliveries(&[delivery("w1", "wallet", at(7))])
            .await
            .is_err(),
        "a webhook-id is sent once"
    );
}
conformance!(record_deliveries_writes_pending_rows);

async fn claim_due_holds_the_due_deliveries_of_one_channel_under_its_token(conn: &mut Conn) {
    let rows = [
        delivery("late", "wallet", at(5)),
        delivery("early", "wallet", at(0)),
        delivery("later", "wallet", at(8)),
        delivery("future", "wallet", at(100)),
        delivery("other", "sms", at(0)),
    ];
    conn.record_deliveries(&rows).await.unwrap();
    let due = conn
        .claim_due("wallet", 2, (at(10), at(40)), 7)
        .await
        .unwrap();
    let claimed: Vec<&str> = due.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(
        claimed,
        ["early", "late"],
        "the earliest due, up to the limit"
    );
    assert_eq!((due[0].channel.as_str(), due[0].attempts), ("wallet", 0));
    assert_eq!(due[0].payload, r#"{"id":"early"}"#);
    let held = outbox(conn).await;
    assert_eq!(
        (held[1].next_attempt_at, held[1].hold_token),
        (at(40), Some(7))
    );
    let next = conn
        .claim_due("wallet", 10, (at(10), at(40)), 8)
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "held rows are not claimed again: {next:?}");
    let after_the_hold = conn
        .claim_due("wallet", 10, (at(41), at(70)), 9)
        .await
        .unwrap();
    assert_eq!(after_the_hold.len(), 3, "a hold that ran out is due again");
}
conformance!(claim_due_holds_the_due_deliveries_of_one_channel_under_its_token);

/// Three, so that the one statement is padded to four (the last record repeated).
async fn record_attempts_marks_first_time_deliveries_delivered(conn: &mut Conn) {
    let webhooks = ["w1", "w2", "w3"];
    held(conn, &webhooks).await;
    let records = webhooks.map(|w| attempt(w, 7, 1, DELIVERED));
    assert_eq!(conn.record_attempts(&records).await.unwrap(), 0);
    for row in outbox(conn).await {
        assert_eq!(
            (row.status.as_str(), row.attempts, row.last_status),
            (DELIVERED, 1, Some(200))
        );
        assert_eq!((row.delivered_at, row.hold_token), (Some(at(20)), None));
    }
    assert_eq!(
        logged(conn).await,
        [],
        "a first-time delivery is its own record"
    );
}
conformance!(record_attempts_marks_first_time_deliveries_delivered);

/// A delivery handed off in memory (written with its hold token) keeps its record's
/// size when it is marked delivered: what it fills, it had as room.
async fn a_handed_off_delivery_keeps_its_records_size_when_delivered(conn: &mut Conn) {
    #[derive(diesel::QueryableByName)]
    struct Size {
        #[diesel(sql_type = BigInt)]
        bytes: i64,
    }
    // `status`, `hold_token` (8), `last_status` (4), `delivered_at` (8) and the room.
    async fn sizes(conn: &mut Conn) -> Vec<i64> {
        let rows: Vec<Size> = conn
            .rows(
                "SELECT LENGTH(status) + CASE WHEN hold_token IS NULL THEN 0 ELSE 8 END \
                 + CASE WHEN last_status IS NULL THEN 0 ELSE 4 END \
                 + CASE WHEN delivered_at IS NULL THEN 0 ELSE 8 END \
                 + COALESCE(LENGTH(delivery_room), 0) AS bytes FROM deliveries ORDER BY id",
            )
            .await;
        rows.into_iter().map(|r| r.bytes).collect()
    }
    let mut rows = vec![
        delivery("w1", "wallet", at(0)),
        delivery("w2", "wallet", at(0)),
    ];
    for row in &mut rows {
        row.hold_token = Some(7);
    }
    conn.record_deliveries(&rows).await.unwrap();
    let held = (PENDING.len() + 8 + DELIVERY_ROOM_BYTES) as i64;
    assert_eq!(sizes(conn).await, [held, held]);
    let records = [attempt("w1", 7, 1, DELIVERED)];
    assert_eq!(conn.record_attempts(&records).await.unwrap(), 0);
    assert_eq!(outbox(conn).await[0].status, DELIVERED);
    assert_eq!(sizes(conn).await, [held, held]);
}
conformance!(a_handed_off_delivery_keeps_its_records_size_when_delivered);

async fn record_attempts_writes_retries_dead_ends_and_later_deliveries(conn: &mut Conn) {
    held(conn, &["retry", "dead", "second"]).await;
    let first = [
        attempt("retry", 7, 1, PENDING),
        attempt("dead", 7, 1, DEAD),
        attempt("second", 7, 1, PENDING),
    ];
    assert_eq!(conn.record_attempts(&first).await.unwrap(), 0);
    let due = conn
        .claim_due("wallet", 10, (at(600), at(640)), 8)
        .await
        .unwrap();
    assert_eq!(due.len(), 2, "the retries are due again: {due:?}");
    let second = [
        attempt("retry", 8, 2, PENDING),
        attempt("second", 8, 2, DELIVERED),
    ];
    assert_eq!(conn.record_attempts(&second).await.unwrap(), 0);
    let rows = outbox(conn).await;
    let states: Vec<(&str, i32, NaiveDateTime, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.status.as_str(),
                r.attempts,
                r.next_attempt_at,
                r.hold_token,
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (PENDING, 2, at(600), None),
            (DEAD, 1, at(20), None),
            (DELIVERED, 2, at(640), None),
        ]
    );
    let log = |w: &str, n, code| (w.to_owned(), n, Some(code));
    assert_eq!(
        sorted(logged(conn).await),
        [
            log("dead", 1, 503),
            log("retry", 1, 503),
            log("retry", 2, 503),
            log("second", 1, 503),
            log("second", 2, 200),
        ]
    );
}
conformance!(record_attempts_writes_retries_dead_ends_and_later_deliveries);

async fn record_attempts_refuses_results_whose_hold_is_gone(conn: &mut Conn) {
    held(conn, &["w1", "w2"]).await;
    // Another dispatcher claimed them again after the hold ran out.
    conn.claim_due("wallet", 10, (at(41), at(70)), 8)
        .await
        .unwrap();
    let late = [attempt("w1", 7, 1, DELIVERED), attempt("w2", 7, 1, PENDING)];
    assert_eq!(conn.record_attempts(&late).await.unwrap(), 2);
    for row in outbox(conn).await {
        assert_eq!(
            (row.status.as_str(), row.attempts, row.hold_token),
            (PENDING, 0, Some(8))
        );
    }
    assert_eq!(logged(conn).await, []);
}
conformance!(record_attempts_refuses_results_whose_hold_is_gone);

async fn disable_channel_disables_once_and_writes_its_alert_with_it(conn: &mut Conn) {
    let alert = delivery("alert-1", "ops", at(3));
    let disabled = conn
        .disable_channel("wallet", "410 Gone", at(3), Some(alert))
        .await
        .unwrap();
    assert!(disabled);
    let again = Some(delivery("alert-2", "ops", at(4)));
    assert!(!conn
        .disable_channel("wallet", "410 Gone", at(4), again)
        .await
        .unwrap());
    let written: Vec<String> = outbox(conn)
        .await
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    assert_eq!(written, ["alert-1"], "one alert");
    assert!(conn
        .disable_channel("sms", "410", at(5), None)
        .await
        .unwrap());
}
conformance!(disable_channel_disables_once_and_writes_its_alert_with_it);

/// It reads whether the channel is disabled, then writes; a client committing in between
/// must not fail it.
async fn disable_channel_completes_while_a_client_commits_a_request(url: &str) {
    let daemon = migrated(url).await;
    let alert = Some(delivery("alert-1", "ops", at(3)));
    let disabled = while_a_client_commits(&daemon, url, async move |conn| {
        conn.disable_channel("wallet", "410 Gone", at(3), alert)
            .await
    })
    .await;
    assert!(disabled.unwrap());
}
conformance!(url: disable_channel_completes_while_a_client_commits_a_request);

async fn disabled_channels_lists_the_channels_disabled(conn: &mut Conn) {
    assert_eq!(
        conn.disabled_channels().await.unwrap(),
        Vec::<String>::new()
    );
    wallet_and_sms_gone(conn).await;
    conn.enable_channel("sms", at(3)).await.unwrap();
    assert_eq!(conn.disabled_channels().await.unwrap(), ["wallet"]);
}
conformance!(disabled_channels_lists_the_channels_disabled);

async fn disabled_channel_states_say_when_and_why(conn: &mut Conn) {
    wallet_and_sms_gone(conn).await;
    let state = |channel: &str, when, reason: &str| DisabledChannel {
        channel: channel.to_owned(),
        disabled_at: Some(when),
        reason: Some(reason.to_owned()),
    };
    assert_eq!(
        conn.disabled_channel_states().await.unwrap(),
        [
            state("sms", at(2), "410 Gone"),
            state("wallet", at(1), "410 Gone: unsubscribed"),
        ]
    );
}
conformance!(disabled_channel_states_say_when_and_why);

async fn held_deliveries_counts_the_pending_deliveries_of_disabled_channels(conn: &mut Conn) {
    let rows = [
        delivery("w1", "wallet", at(0)),
        delivery("w2", "wallet", at(0)),
        delivery("s1", "sms", at(0)),
    ];
    conn.record_deliveries(&rows).await.unwrap();
    assert_eq!(conn.held_deliveries().await.unwrap(), []);
    conn.disable_channel("wallet", "410 Gone", at(1), None)
        .await
        .unwrap();
    assert_eq!(
        conn.held_deliveries().await.unwrap(),
        [("wallet".to_owned(), 2)]
    );
}
conformance!(held_deliveries_counts_the_pending_deliveries_of_disabled_channels);

async fn enable_channel_makes_what_the_channel_held_due(conn: &mut Conn) {
    let mut handed_off = delivery("handed-off", "wallet", at(30));
    handed_off.hold_token = Some(3);
    let rows = [
        delivery("held", "wallet", at(500)),
        handed_off,
        delivery("sms", "sms", at(500)),
    ];
    conn.record_deliveries(&rows).await.unwrap();
    assert_eq!(conn.enable_channel("wallet", at(9)).await.unwrap(), None);
    conn.disable_channel("wallet", "410 Gone", at(1), None)
        .await
        .unwrap();
    assert_eq!(conn.enable_channel("wallet", at(9)).await.unwrap(), Some(1));
    let due: Vec<(String, NaiveDateTime)> = outbox(conn)
        .await
        .into_iter()
        .map(|r| (r.webhook_id, r.next_attempt_at))
        .collect();
    assert_eq!(
        due,
        [
            ("held".to_owned(), at(9)),
            ("handed-off".to_owned(), at(30)),
            ("sms".to_owned(), at(500)),
        ]
    );
    assert_eq!(
        conn.disabled_channels().await.unwrap(),
        Vec::<String>::new()
    );
}
conformance!(enable_channel_makes_what_the_channel_held_due);

async fn pending_by_channel_counts_pending_deliveries_by_channel(conn: &mut Conn) {
    dead_letters(conn, &["wallet"]).await;
    let rows = [
        delivery("p1", "wallet", at(0)),
        delivery("p2", "sms", at(0)),
        delivery("p3", "sms", at(9)),
    ];
    conn.record_deliveries(&rows).await.unwrap();
    assert_eq!(
        sorted(conn.pending_by_channel().await.unwrap()),
        [("sms".to_owned(), 2), ("wallet".to_owned(), 1)]
    );
}
conformance!(pending_by_channel_counts_pending_deliveries_by_channel);

async fn count_deliveries_counts_deliveries_by_status(conn: &mut Conn) {
    dead_letters(conn, &["wallet", "wallet"]).await;
    conn.record_deliveries(&[delivery("p1", "wallet", at(0))])
        .await
        .unwrap();
    assert_eq!(
        sorted(
            conn.count_deliveries()
                .await
                .unwrap()
                .into_iter()
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect()
        ),
        [("dead".to_owned(), 2), ("pending".to_owned(), 1)]
    );
}
conformance!(count_deliveries_counts_deliveries_by_status);

async fn list_deliveries_lists_the_newest_first_or_only_the_dead(conn: &mut Conn) {
    dead_letters(conn, &["wallet", "sms"]).await;
    let rows = [
        delivery("p1", "wallet", at(0)),
        delivery("p2", "wallet", at(0)),
    ];
    conn.record_deliveries(&rows).await.unwrap();
    let newest = conn.list_deliveries(false, 3).await.unwrap();
    assert_eq!(ids(&newest), ["p2", "p1", "w2"]);
    let dead = conn.list_deliveries(true, 10).await.unwrap();
    assert_eq!(ids(&dead), ["w2", "w1"]);
    assert_eq!(
        dead[0],
        DeliveryRecord {
            id: dead[0].id,
            webhook_id: "w2".into(),
            channel: "sms".into(),
            event_type: "coupon.granted".into(),
            status: DEAD.into(),
            attempts: 5,
            next_attempt_at: dead[0].next_attempt_at,
            last_status: Some(400),
            last_error: None,
            created_at: at(0),
            delivered_at: None,
        }
    );
}
conformance!(list_deliveries_lists_the_newest_first_or_only_the_dead);

async fn dead_deliveries_selects_one_a_channels_or_all(conn: &mut Conn) {
    dead_letters(conn, &["wallet", "sms", "wallet"]).await;
    conn.record_deliveries(&[delivery("p1", "wallet", at(0))])
        .await
        .unwrap();
    let all = conn.dead_deliveries(Replay::AllDead).await.unwrap();
    assert_eq!(ids(&all), ["w1", "w2", "w3"]);
    let wallet = conn
        .dead_deliveries(Replay::Channel("wallet"))
        .await
        .unwrap();
    assert_eq!(ids(&wallet), ["w1", "w3"]);
    let one = conn.dead_deliveries(Replay::One(all[1].id)).await.unwrap();
    assert_eq!(ids(&one), ["w2"]);
    let pending = conn.list_deliveries(false, 1).await.unwrap()[0].id;
    assert!(conn
        .dead_deliveries(Replay::One(pending))
        .await
        .unwrap()
        .is_empty());
}
conformance!(dead_deliveries_selects_one_a_channels_or_all);

async fn replay_dead_sends_dead_deliveries_again_from_a_fresh_count(conn: &mut Conn) {
    dead_letters(conn, &["wallet", "sms", "wallet"]).await;
    let all = conn.dead_deliveries(Replay::AllDead).await.unwrap();
    assert_eq!(
        conn.replay_dead(Replay::One(all[0].id), at(50))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        conn.replay_dead(Replay::Channel("wallet"), at(60))
            .await
            .unwrap(),
        1,
        "w1 is no longer dead"
    );
    assert_eq!(conn.replay_dead(Replay::AllDead, at(70)).await.unwrap(), 1);
    let again: Vec<(String, String, i32, NaiveDateTime)> = outbox(conn)
        .await
        .into_iter()
        .map(|r| (r.webhook_id, r.status, r.attempts, r.next_attempt_at))
        .collect();
    let pending = |w: &str, due| (w.to_owned(), PENDING.to_owned(), 0, due);
    assert_eq!(
        again,
        [
            pending("w1", at(50)),
            pending("w2", at(70)),
            pending("w3", at(60))
        ]
    );
    let due = conn
        .claim_due("wallet", 10, (at(70), at(90)), 1)
        .await
        .unwrap();
    assert_eq!(due[0].payload, r#"{"id":"w1"}"#, "the same body");
}
conformance!(replay_dead_sends_dead_deliveries_again_from_a_fresh_count);
