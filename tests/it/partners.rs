//! Slow and gone partners: deliveries fenced by their hold (no duplicate sends, no
//! rewound history), and one slow channel that does not delay another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use couponsd::domain::DeliveryStatus;
use couponsd::pipeline::dispatch::worker::hold_token;
use couponsd::runtime::{run_loops, Daemon, Mode};
use couponsd::store::deliveries::AttemptRecord;
use tokio_util::sync::CancellationToken;

use crate::on_both_backends;
use crate::support::*;

/// What a partner saw: the webhook-id, the channel and when it arrived.
#[derive(Debug, Clone)]
struct Hit {
    webhook_id: String,
    channel: String,
    at: Instant,
}

/// A partner on 127.0.0.1:0 that answers each channel after that channel's delay, with
/// 200 or 202 by the webhook-id (so that each row's recorded status can be checked).
#[derive(Clone)]
struct Partner {
    base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Requests that arrived, answered or not yet.
    arrived: Arc<Mutex<usize>>,
}

impl Partner {
    async fn start(delays: &[(&str, Duration)]) -> Partner {
        let delays: Arc<HashMap<String, Duration>> =
            Arc::new(delays.iter().map(|(c, d)| ((*c).to_owned(), *d)).collect());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Mutex::new(0));
        let state = (delays, hits.clone(), arrived.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/webhooks/{channel}", axum::routing::post(answer))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Partner {
            base,
            hits,
            arrived,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn arrived(&self) -> usize {
        *self.arrived.lock().unwrap()
    }
}

type PartnerState = (
    Arc<HashMap<String, Duration>>,
    Arc<Mutex<Vec<Hit>>>,
    Arc<Mutex<usize>>,
);

async fn answer(
    State((delays, hits, arrived)): State<PartnerState>,
    UrlPath(channel): UrlPath<String>,
    headers: HeaderMap,
) -> StatusCode {
    let at = Instant::now();
    *arrived.lock().unwrap() += 1;
    let webhook_id = headers["webhook-id"].to_str().unwrap().to_owned();
    let answered = status_for(&webhook_id);
    if let Some(delay) = delays.get(&channel) {
        tokio::time::sleep(*delay).await;
    }
    hits.lock().unwrap().push(Hit {
        webhook_id,
        channel,
        at,
    });
    StatusCode::from_u16(answered).unwrap()
}

fn status_for(webhook_id: &str) -> u16 {
    if webhook_id.bytes().last().unwrap_or(0) % 2 == 0 {
        200
    } else {
        202
    }
}

/// The config of `tests/it/support.rs` with the three channels pointed at `partner`,
/// each with `timeout`, and `extra` replacing its worker and dispatch sections.
fn partner_config(
    db: &TestDb,
    partner: &Partner,
    timeouts: &[(&str, &str)],
    extra: &str,
) -> couponsd::config::Config {
    let channels: String = timeouts
        .iter()
        .map(|(name, timeout)| {
            format!(
                "  {name}:\n    url: \"{}/webhooks/{name}\"\n    secret: \"{SECRET}\"\n    timeout: {timeout}\n    max_attempts: 5\n",
                partner.base
            )
        })
        .collect();
    let yaml = format!(
        r#"database:
  url: "{url}"
  max_connections: 12
rules:
  dir: "{rules}"
{extra}
channels:
{channels}
campaigns:
  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: NEW10, face_value: "10.00", stock: 100000, channel: wallet }}
  - id: shop
    event: purchase
    audience: first_time
    coupons:
      - {{ id: SHOP3, face_value: "3.00", stock: 100000, channel: sms }}
"#,
        url = db.url,
        rules = shipped_rules().display(),
    );
    couponsd::config::Config::from_yaml_with_env(&yaml, std::path::Path::new("test.yaml"), &|_| {
        None
    })
    .unwrap_or_else(|e| panic!("test config does not load: {e}\n{yaml}"))
}

/// Runs a daemon's loops until the returned token is cancelled.
fn serve(ctx: &Daemon) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn(run_loops(ctx.clone(), Mode::Serve, stop.clone()));
    stop
}

async fn wait_for_delivered(ctx: &Daemon, n: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let delivered = counts(ctx, "status", "deliveries").await;
        if delivered.get("delivered").copied().unwrap_or(0) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The issue's case, scaled down: a partner that answers just under the channel's
/// timeout, two senders per daemon and two daemons. A hand-off or a claim whose hold
/// would run out before its attempt could finish is not sent from memory, so no
/// delivery is sent twice while its sender is alive.
async fn a_partner_answering_just_under_the_timeout_gets_each_delivery_once(db: TestDb) {
    let partner = Partner::start(&[("wallet", Duration::from_millis(900))]).await;
    let settings = || {
        partner_config(
            &db,
            &partner,
            &[("wallet", "1s"), ("ops", "1s"), ("sms", "1s")],
            "worker:\n  batch_size: 200\n  poll_interval: 20ms\n  lease: 2s\ndispatch:\n  concurrency: 2\n  retry_base: 20ms\n  retry_max: 200ms",
        )
    };
    let a = context(settings()).await;
    let b = context(settings()).await;
    let n = 20;
    for i in 0..n {
        insert(&a, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    // Daemon a grants them all in one batch and hands them off to its own dispatcher.
    couponsd::pipeline::grant::process_batch(&a.grant())
        .await
        .unwrap();
    let (stop_a, stop_b) = (serve(&a), serve(&b));
    let all = wait_for_delivered(&a, n, Duration::from_secs(30)).await;
    stop_a.cancel();
    stop_b.cancel();
    let hits = partner.hits();
    let mut sent: HashMap<&str, usize> = HashMap::new();
    for h in &hits {
        *sent.entry(h.webhook_id.as_str()).or_default() += 1;
    }
    let duplicates = hits.len() - sent.len();
    eprintln!(
        "partner at 900 ms, timeout 1 s, lease 2 s, 2 daemons x 2 senders: {} POSTs for {} deliveries, {duplicates} duplicate(s)",
        hits.len(),
        sent.len()
    );
    assert!(all, "all {n} delivered within 30 s");
    assert_eq!(duplicates, 0, "no delivery sent twice: {sent:?}");
    // Each row has its own status and time, and one attempt.
    let rows: Vec<DeliveredRow> = query_rows(
        &a,
        "SELECT webhook_id, attempts, last_status, CAST(delivered_at AS CHAR) AS delivered_at FROM deliveries",
    )
    .await;
    assert_eq!(rows.len(), n as usize);
    for r in &rows {
        assert_eq!(r.attempts, 1, "{r:?}");
        assert_eq!(
            r.last_status,
            Some(i32::from(status_for(&r.webhook_id))),
            "{r:?}"
        );
    }
    let times: std::collections::HashSet<&str> = rows
        .iter()
        .filter_map(|r| r.delivered_at.as_deref())
        .collect();
    assert!(
        times.len() > n as usize / 2,
        "rows carry their own delivery times: {times:?}"
    );
}
on_both_backends!(
    a_partner_answering_just_under_the_timeout_gets_each_delivery_once,
    a_partner_answering_just_under_the_timeout_gets_each_delivery_once
);

#[derive(Debug, diesel::QueryableByName)]
struct DeliveredRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    webhook_id: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    last_status: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    delivered_at: Option<String>,
}

#[derive(Debug, diesel::QueryableByName)]
struct HeldRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    hold_token: Option<i64>,
}

/// A result that comes back after its hold was taken over changes nothing: not a
/// delivered row, not a dead one, and never the number of attempts.
async fn a_late_result_never_overwrites_the_holder_or_lowers_attempts(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(3),
        "",
    ))
    .await;
    // Written due for any dispatcher (nothing handed off).
    ctx.handoff.mark_slow("wallet");
    insert(&ctx, "k1", "u1", "app_open", None).await.unwrap();
    couponsd::pipeline::grant::process_batch(&ctx.grant())
        .await
        .unwrap();
    let now = couponsd::store::now();
    let lease = chrono::TimeDelta::seconds(30);
    let (first, second) = (hold_token(), hold_token());
    let claimed = store(&ctx, async |c| {
        c.claim_due("wallet", 10, (now, now + lease), first).await
    })
    .await;
    assert_eq!(claimed.len(), 1);
    // The first sender's hold runs out; a second dispatcher claims the delivery.
    execute(
        &ctx,
        "UPDATE deliveries SET next_attempt_at = '2000-01-01 00:00:00'",
    )
    .await;
    let again = store(&ctx, async |c| {
        c.claim_due("wallet", 10, (now, now + lease), second).await
    })
    .await;
    assert_eq!(again.len(), 1);
    let record = |token: i64, attempt: i32, status: DeliveryStatus| AttemptRecord {
        delivery_id: Some(claimed[0].id),
        webhook_id: claimed[0].webhook_id.clone(),
        hold_token: token,
        attempt,
        status,
        next_attempt_at: (status == DeliveryStatus::Pending).then(|| now + lease),
        status_code: Some(if status == DeliveryStatus::Delivered {
            200
        } else {
            503
        }),
        error: (status != DeliveryStatus::Delivered).then(|| "503".to_owned()),
        attempted_at: now,
        duration_ms: 1,
    };
    let state = || async {
        query_rows::<HeldRow>(&ctx, "SELECT status, attempts, hold_token FROM deliveries").await
    };
    // The second holder's attempt fails and is scheduled again …
    let refused = store(&ctx, async |c| {
        c.record_attempts(&[record(second, 1, DeliveryStatus::Pending)])
            .await
    })
    .await;
    assert_eq!(refused, 0);
    // … then the first sender's late 2xx comes back: refused.
    let refused = store(&ctx, async |c| {
        c.record_attempts(&[record(first, 1, DeliveryStatus::Delivered)])
            .await
    })
    .await;
    assert_eq!(refused, 1, "a late delivered result is refused");
    let row = &state().await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("pending", 1),
        "{row:?}"
    );
    // A third holder delivers at attempt 2; a late failure of the first cannot rewind it.
    let third = hold_token();
    execute(
        &ctx,
        "UPDATE deliveries SET next_attempt_at = '2000-01-01 00:00:00'",
    )
    .await;
    store(&ctx, async |c| {
        c.claim_due("wallet", 10, (now, now + lease), third).await
    })
    .await;
    let refused = store(&ctx, async |c| {
        c.record_attempts(&[record(third, 2, DeliveryStatus::Delivered)])
            .await
    })
    .await;
    assert_eq!(refused, 0);
    let refused = store(&ctx, async |c| {
        c.record_attempts(&[record(first, 1, DeliveryStatus::Dead)])
            .await
    })
    .await;
    assert_eq!(refused, 1, "a late dead result is refused");
    let row = &state().await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.hold_token),
        ("delivered", 2, None),
        "{row:?}"
    );
    assert_eq!(
        counts(&ctx, "CAST(attempt AS CHAR)", "delivery_attempts")
            .await
            .len(),
        2,
        "the attempts recorded, and only those, are logged"
    );
}
on_both_backends!(
    a_late_result_never_overwrites_the_holder_or_lowers_attempts,
    a_late_result_never_overwrites_the_holder_or_lowers_attempts
);

/// The 99th percentile of insert-to-arrival of `keys` (inserted at the given instants).
fn p99(
    inserted: &HashMap<String, Instant>,
    hits: &[Hit],
    grants: &HashMap<String, String>,
) -> Duration {
    let mut lat: Vec<Duration> = hits
        .iter()
        .filter_map(|h| {
            let key = grants.get(&h.webhook_id)?;
            Some(h.at.saturating_duration_since(*inserted.get(key)?))
        })
        .collect();
    assert!(!lat.is_empty(), "no deliveries measured");
    lat.sort();
    lat[(lat.len() * 99).div_ceil(100) - 1]
}

/// Inserts `n` app_open requests 20 ms apart; returns when each was inserted.
async fn trickle(ctx: &Daemon, prefix: &str, n: usize) -> HashMap<String, Instant> {
    let mut at = HashMap::new();
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        insert(ctx, &key, &format!("user-{key}"), "app_open", None)
            .await
            .unwrap();
        at.insert(key, Instant::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    at
}

/// webhook-id → request key, from the outbox.
async fn keys_by_webhook(ctx: &Daemon) -> HashMap<String, String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        webhook_id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        request_key: String,
    }
    query_rows::<Row>(
        ctx,
        "SELECT d.webhook_id, r.request_key FROM deliveries d JOIN trigger_requests r ON r.id = d.grant_id",
    )
    .await
    .into_iter()
    .map(|r| (r.webhook_id, r.request_key))
    .collect()
}

/// One partner answering after 10 s (sms) must not delay another answering at once
/// (wallet): wallet's p99 insert-to-delivery stays within 2× of its figure alone.
async fn a_slow_channel_does_not_delay_another(db: TestDb) {
    let partner = Partner::start(&[("sms", Duration::from_secs(10))]).await;
    let ctx = context(partner_config(
        &db,
        &partner,
        &[("wallet", "2s"), ("ops", "2s"), ("sms", "15s")],
        "worker:\n  poll_interval: 20ms\ndispatch:\n  concurrency: 4",
    ))
    .await;
    let stop = serve(&ctx);
    let alone = trickle(&ctx, "alone", 40).await;
    assert!(wait_for_delivered(&ctx, 40, Duration::from_secs(10)).await);
    // sms: more slow deliveries than its senders, so its lane stays full.
    for i in 0..12 {
        insert(
            &ctx,
            &format!("slow-{i}"),
            &format!("buyer-{i}"),
            "purchase",
            None,
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beside = trickle(&ctx, "beside", 40).await;
    assert!(
        wait_for_delivered(&ctx, 80, Duration::from_secs(8)).await,
        "wallet kept delivering"
    );
    stop.cancel();
    let keys = keys_by_webhook(&ctx).await;
    let wallet: Vec<Hit> = partner
        .hits()
        .into_iter()
        .filter(|h| h.channel == "wallet")
        .collect();
    let (p_alone, p_beside) = (p99(&alone, &wallet, &keys), p99(&beside, &wallet, &keys));
    eprintln!(
        "wallet p99 insert-to-delivery: {p_alone:?} alone, {p_beside:?} beside a 10 s partner"
    );
    // Below 100 ms the figure is scheduling noise on a loaded 2-core machine (CI saw
    // 29 ms alone and 140 ms beside): the bound is twice the larger of the two, still
    // fifty times under the slow partner's 10 s.
    let bound = 2 * p_alone.max(Duration::from_millis(100));
    assert!(p_beside <= bound, "{p_beside:?} > {bound:?}");
}
on_both_backends!(
    a_slow_channel_does_not_delay_another,
    a_slow_channel_does_not_delay_another
);

/// A record that fails is made again with the next round's, not dropped: here SQLite's
/// write lock is held by another connection past the busy timeout (300 ms) while the
/// only delivery's send is in flight. A poll interval of 5 s keeps the dispatcher from
/// claiming meanwhile, so the first statement to meet the lock is the record. Dropped,
/// the result would leave the row held until its hold ran out (15 s) and the delivery
/// would then be sent a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_fails_is_made_again_once_the_database_answers() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let partner = Partner::start(&[("wallet", Duration::from_millis(800))]).await;
    let config = Arc::new(partner_config(
        &db,
        &partner,
        &[("wallet", "5s"), ("ops", "5s"), ("sms", "5s")],
        "worker:\n  poll_interval: 5s\n  lease: 10s",
    ));
    let settings = couponsd::store::Settings {
        statement_timeout: Duration::from_millis(300),
        ..couponsd::store::Settings::new(2, couponsd::store::Access::ReadWrite)
    };
    let pool = couponsd::store::Db::open(&db.url, settings).unwrap();
    pool.migrate().await.unwrap();
    couponsd::runtime::apply_catalog(&pool, &config)
        .await
        .unwrap();
    let rules = couponsd::rules::Rules::load(&config.rules.dir, &config.rules.limits).unwrap();
    let sender = couponsd::pipeline::dispatch::send::Sender::new().unwrap();
    let ctx = Daemon::new(pool, config, rules, sender);
    insert(&ctx, "k1", "u1", "app_open", None).await.unwrap();
    couponsd::pipeline::grant::process_batch(&ctx.grant())
        .await
        .unwrap();
    let stop = serve(&ctx);
    let deadline = Instant::now() + Duration::from_secs(10);
    while partner.arrived() == 0 {
        assert!(Instant::now() < deadline, "the hand-off was never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The send is in flight: hold the write lock until well after it answered.
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let locked = tokio::task::spawn_blocking(move || {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut conn = diesel::sqlite::SqliteConnection::establish(&path).unwrap();
        conn.batch_execute("PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE")
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        conn.batch_execute("COMMIT").unwrap();
        Instant::now()
    });
    let released = locked.await.unwrap();
    assert_eq!(partner.hits().len(), 1, "answered while the lock was held");
    let delivered = wait_for_delivered(&ctx, 1, Duration::from_secs(8)).await;
    let recorded_after = released.elapsed();
    stop.cancel();
    assert!(
        delivered,
        "the delivery was still not recorded 8 s after the lock was released"
    );
    eprintln!("recorded within {recorded_after:?} of the lock's release");
    let hits = partner.hits();
    assert_eq!(hits.len(), 1, "sent once: {hits:?}");
    let rows: Vec<DeliveredRow> = query_rows(
        &ctx,
        "SELECT webhook_id, attempts, last_status, CAST(delivered_at AS CHAR) AS delivered_at FROM deliveries",
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 1, "{:?}", rows[0]);
}
