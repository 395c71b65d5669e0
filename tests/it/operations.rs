//! Production operation with the real binary on real MariaDB: several daemons on one
//! database, `kill -9`, a database restart, partners down or gone, systemd
//! notifications and a graceful stop. Everything listens on loopback only, and every
//! wait is bounded.

pub(crate) mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

use crate::support::*;
use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_a_burst_and_never_oversell() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("three");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(40),
        "",
    );
    let ctx = migrated(&path).await;
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(&path, &dir.0.join(format!("d{i}.log"))))
        .collect();
    let mut addresses = Vec::new();
    for d in &daemons {
        addresses.push(d.http_address().await);
    }
    let n = 600;
    burst(&ctx, "three", n).await;
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(30), &refs).await;
    assert_the_books_balance(&ctx, n as i64, &receiver).await;
    assert_eq!(
        count(&ctx, "grants WHERE coupon_id = 'NEW10'").await,
        40,
        "the hot coupon is granted exactly to its stock"
    );
    let mut per_daemon = Vec::new();
    for address in &addresses {
        per_daemon.push(grants_on_metrics(address).await);
    }
    assert_eq!(per_daemon.iter().sum::<f64>() as usize, n, "{per_daemon:?}");
    assert!(
        per_daemon.iter().all(|g| *g > 0.0),
        "every daemon took part: {per_daemon:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_burst_loses_nothing_and_grants_nothing_twice() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("kill9");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(30),
        "",
    );
    let ctx = migrated(&path).await;
    let log_a = dir.0.join("a.log");
    let mut a = Daemon::start(&path, &log_a);
    let b = Daemon::start(&path, &dir.0.join("b.log"));
    a.http_address().await;
    b.http_address().await;
    let n = 600;
    burst(&ctx, "kill", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 100).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "no progress:\n{}", tail(&a.log_text()));
    a.kill9();
    let a = Daemon::start(&path, &log_a);
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(30), &[&a, &b]).await;
    assert_the_books_balance(&ctx, n as i64, &receiver).await;
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'claimed'").await,
        0
    );
    // The dead daemon's open batches were claimed inside their transactions: MariaDB
    // rolled them back into the queue when its connections dropped, so no lease
    // recovery was needed for them.
    assert_eq!(
        count(&ctx, "trigger_requests WHERE attempts > 0").await,
        0,
        "requests recovered by lease"
    );
    eprintln!(
        "kill -9: {} webhook(s) sent again",
        receiver.seen().len() - n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_everything_and_a_gone_one_stops_only_its_channel() {
    let Some(db) = mysql_db().await else { return };
    // wallet: nothing listens on its port at first; partner: answers 410 Gone.
    let wallet = Receiver::ok().await;
    let answer_gone = Arc::new(Mutex::new(true));
    let gone = answer_gone.clone();
    let partner = Receiver::start(move |_, _| {
        if *gone.lock().unwrap() {
            StatusCode::GONE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let port = free_port();
    let channels = format!(
        "{}\n  partner:\n    url: \"{}/webhooks/partner\"\n    secret: \"{SECRET}\"\n    timeout: 2s",
        wallet_channel(&format!("http://127.0.0.1:{port}")),
        partner.base_url()
    );
    let campaigns = format!(
        "{}\n  - id: shop\n    event: purchase\n    audience: first_time\n    coupons:\n      - {{ id: SHOP3, face_value: \"3.00\", stock: 1000, channel: partner }}",
        standard_campaigns(1000)
    );
    let dir = TempDir::new("partners");
    let path = write_config(&dir.0, &db.url, &channels, &campaigns, "");
    let ctx = migrated(&path).await;
    let daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    burst(&ctx, "down", 100).await;
    with_sql(&ctx, "INSERT INTO trigger_requests (request_key, user_id, event) VALUES ('p1', 'buyer1', 'purchase'), ('p2', 'buyer2', 'purchase'), ('p3', 'buyer3', 'purchase')").await;
    // The partner's 410 disables its channel, whose deliveries are held, while wallet
    // deliveries keep retrying.
    let disabled = wait_for(
        "the partner channel disabled",
        Duration::from_secs(15),
        || async {
            (count(&ctx, "channel_states WHERE channel = 'partner'").await == 1
                && count(
                    &ctx,
                    "deliveries WHERE channel = 'partner' AND status = 'pending' AND hold_token IS NULL",
                )
                .await
                    == 3)
                .then_some(())
        },
    )
    .await;
    assert!(disabled.is_some(), "{}", tail(&daemon.log_text()));
    let retried = count(
        &ctx,
        "deliveries WHERE channel = 'wallet' AND attempts >= 2 AND status = 'pending'",
    )
    .await;
    assert!(
        retried > 0,
        "wallet deliveries retry while the receiver is down"
    );
    // Up: a forwarder on the channel's port, to the real receiver.
    let _up = forward(port, &wallet.base_url()).await;
    let delivered = wait_for(
        "wallet deliveries after the receiver is up",
        Duration::from_secs(15),
        || async {
            (count(
                &ctx,
                "deliveries WHERE channel = 'wallet' AND status = 'delivered'",
            )
            .await
                == 100)
                .then_some(())
        },
    )
    .await;
    assert!(delivered.is_some(), "{}", tail(&daemon.log_text()));
    assert_eq!(
        wallet.seen().len(),
        100,
        "each arrived once the receiver was up"
    );
    assert!(wallet.seen().iter().all(|s| s.verified));

    // Held, not dead: `channels list` counts them; nothing more is sent meanwhile.
    let list = ops(&path, &["channels", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("partner"))
        .unwrap_or("");
    assert!(
        line.contains("disabled") && line.contains(" 3 ") && line.contains("410"),
        "{list}"
    );
    assert_eq!(count(&ctx, "deliveries WHERE status = 'dead'").await, 0);
    let sent_before = partner.seen().len();
    // Enabled once the partner is fixed: the held deliveries go out by themselves.
    *answer_gone.lock().unwrap() = false;
    let enabled = ops(&path, &["channels", "enable", "partner"]);
    assert!(
        enabled.contains("the 3 deliveries it held are due now"),
        "{enabled}"
    );
    let replayed = wait_for("the held deliveries", Duration::from_secs(10), || async {
        (count(
            &ctx,
            "deliveries WHERE channel = 'partner' AND status = 'delivered'",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    assert!(replayed.is_some(), "{}", tail(&daemon.log_text()));
    let ids: HashMap<String, usize> = partner.seen().iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(ids.len(), 3, "three deliveries");
    assert_eq!(
        partner.seen().len(),
        sent_before + 3,
        "each held delivery sent once more, with its original webhook-id: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_exits_0_within_the_grace_and_leaves_no_claim() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("sigterm");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(50),
        "",
    );
    let ctx = migrated(&path).await;
    let mut daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    let n = 2000;
    burst(&ctx, "term", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 100).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "{}", tail(&daemon.log_text()));
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(6)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", tail(&daemon.log_text())));
    assert!(
        status.success(),
        "exit 0: {status:?}\n{}",
        tail(&daemon.log_text())
    );
    assert!(
        took < Duration::from_secs(4),
        "within shutdown_grace (3s): {took:?}"
    );
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'claimed'").await,
        0,
        "no claim left behind"
    );
    let finished = count(&ctx, "trigger_requests WHERE status = 'done'").await;
    let queued = count(&ctx, "trigger_requests WHERE status = 'queued'").await;
    assert_eq!(finished + queued, n as i64, "the rest waits in the queue");
    assert!(queued > 0, "stopped mid-burst");
    assert_eq!(count(&ctx, "grants").await, finished);
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'pending'").await,
        0,
        "the deliveries of the batches finished were flushed before exit"
    );
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'delivered'").await,
        finished
    );
    assert!(daemon.log_text().contains("couponsd stopped"));
    eprintln!("SIGTERM: stopped in {took:?} with {finished} done and {queued} queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_outlasts_the_grace_exits_0_on_time_and_loses_nothing() {
    let Some(db) = mysql_db().await else { return };
    let dir = TempDir::new("grace");
    let slow = slow_partner(Duration::from_millis(1500)).await;
    // Eight senders at 1.5 s a delivery cannot send the grants of a whole burst within
    // the 3 s grace.
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&slow),
        &standard_campaigns(50),
        "",
    );
    let yaml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        yaml.replace("dispatch:\n", "dispatch:\n  concurrency: 8\n"),
    )
    .unwrap();
    let ctx = migrated(&path).await;
    let mut daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    let n = 400;
    burst(&ctx, "grace", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 100).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "{}", tail(&daemon.log_text()));
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", tail(&daemon.log_text())));
    assert!(status.success(), "exit 0: {status:?}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "stopped when shutdown_grace (3s) ran out: {took:?}"
    );
    assert!(daemon.log_text().contains("worker.shutdown_grace ran out"));
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'claimed'").await,
        0
    );
    assert!(
        count(&ctx, "deliveries WHERE status = 'pending'").await > 0,
        "cut short"
    );

    // The next daemon, with a quick partner, finishes everything.
    let receiver = Receiver::ok().await;
    write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(50),
        "",
    );
    let drain = tokio::task::spawn_blocking(move || ops_output(&path, &["run", "--drain"]))
        .await
        .unwrap();
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'done'").await,
        n as i64
    );
    assert_eq!(count(&ctx, "grants").await, n as i64);
    assert_eq!(
        count(
            &ctx,
            "grants g JOIN deliveries d ON d.grant_id = g.id AND d.status = 'delivered'"
        )
        .await,
        n as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_reload_and_stopping() {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("notify");
    let url = format!("sqlite://{}", dir.0.join("couponsd.db").display());
    let channels = wallet_channel(&receiver.base_url());
    let path = write_config(&dir.0, &url, &channels, &standard_campaigns(5), "");
    let socket = NotifySocket::bind(&dir.0);

    // An unmigrated database: start-up fails and READY=1 is never sent.
    let mut refused = start_under_systemd(&path, &dir.0.join("refused.log"), &socket);
    let status = refused.exit_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", refused.log_text());
    assert!(refused.log_text().contains("couponsd migrate"));
    assert!(socket.messages().is_empty(), "{:?}", socket.messages());

    let ctx = migrated(&path).await;
    let mut daemon = start_under_systemd(&path, &dir.0.join("d.log"), &socket);
    let sent = socket.wait_for("READY=1", Duration::from_secs(10)).await;
    assert!(sent[0].contains("READY=1"), "READY=1 comes first: {sent:?}");
    socket
        .wait_for("STATUS=queue 0", Duration::from_secs(5))
        .await;
    socket.wait_for("WATCHDOG=1", Duration::from_secs(5)).await;

    // Reload: a new coupon in the config is applied, between RELOADING=1 and READY=1.
    let grown = standard_campaigns(5).replace(
        "      - { id: NEW8,",
        "      - { id: NEW9, face_value: \"9.00\", stock: 7, channel: wallet }\n      - { id: NEW8,",
    );
    write_config(&dir.0, &url, &channels, &grown, "");
    daemon.signal("HUP");
    socket.wait_for("RELOADING=1", Duration::from_secs(5)).await;
    let reloaded = wait_for("NEW9 in the database", Duration::from_secs(5), || async {
        (count(&ctx, "coupons WHERE id = 'NEW9'").await == 1).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "{}", tail(&daemon.log_text()));
    let all = socket.messages();
    let reloading = all.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    let ready_again = wait_for(
        "READY=1 after the reload",
        Duration::from_secs(5),
        || async {
            let all = socket.messages();
            all.iter()
                .skip(reloading + 1)
                .any(|m| m.contains("READY=1"))
                .then_some(())
        },
    )
    .await;
    assert!(ready_again.is_some(), "{:?}", socket.messages());

    // The reloaded catalog is in force: a newcomer now gets NEW10 first, and NEW9 is
    // next in the chain.
    burst(&ctx, "reload", 8).await;
    let granted = wait_for("grants", Duration::from_secs(10), || async {
        (count(&ctx, "grants").await == 8).then_some(())
    })
    .await;
    assert!(granted.is_some(), "{}", tail(&daemon.log_text()));
    assert_eq!(
        count(&ctx, "grants WHERE coupon_id = 'NEW9'").await,
        2,
        "5 NEW10, then NEW9 for the other first-timers"
    );

    // Health and metrics.
    let address = daemon.http_address().await;
    let get = |path: &str| reqwest::get(format!("http://{address}{path}"));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().starts_with("ready: rules "));
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        r#"couponsd_grants_total{campaign="newcomer",coupon="NEW9"} 2"#,
        r#"couponsd_requests_total{status="done",outcome="granted"} 8"#,
        r#"couponsd_coupon_stock_remaining{campaign="newcomer",coupon="NEW10"}"#,
        "couponsd_queue_depth ",
        "couponsd_queue_oldest_age_seconds ",
        "couponsd_batch_duration_seconds_bucket",
        "couponsd_rule_evaluation_seconds_bucket",
        "couponsd_deliveries_dead 0",
        "couponsd_database_up 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    daemon.signal("TERM");
    socket.wait_for("STOPPING=1", Duration::from_secs(5)).await;
    let status = daemon.exit_within(Duration::from_secs(6)).await.unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_a_database_restart() {
    let Some(mut server) = ThrowawayServer::install() else {
        return;
    };
    server.start().await;
    let mut admin = AsyncMysqlConnection::establish(&format!("{}/mysql", server.url()))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE couponsd")
        .await
        .unwrap();
    drop(admin);
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("restart");
    let url = format!("{}/couponsd", server.url());
    let path = write_config(
        &dir.0,
        &url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(30),
        "",
    );
    let ctx = migrated(&path).await;
    let daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    let n = 600;
    burst(&ctx, "restart", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 50).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "{}", tail(&daemon.log_text()));
    server.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.start().await;
    // The test's own pool lost its connections too: a fresh context.
    let ctx = context((*ctx.config).clone()).await;
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(30), &[&daemon]).await;
    assert_the_books_balance(&ctx, n as i64, &receiver).await;
    let errors = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("\"ERROR\""))
        .count();
    eprintln!(
        "database restart: {errors} error line(s) logged\n{}",
        tail(&daemon.log_text())
    );
    assert!(errors > 0, "the outage was seen and logged");
}

async fn a_replay_resends_dead_deliveries_with_their_webhook_id_once_the_channel_is_enabled(
    db: TestDb,
) {
    use couponsd::ops::deliveries::{enable, list, replay};
    use couponsd::store::deliveries::Replay;
    // 400 for the first two webhooks (dead), 410 for the third (held; the channel is
    // disabled), 200 after.
    let receiver = Receiver::start(|n, _| match n {
        0 | 1 => StatusCode::BAD_REQUEST,
        2 => StatusCode::GONE,
        _ => StatusCode::OK,
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
    insert(&ctx, "a", "u-a", "app_open", None).await.unwrap();
    insert(&ctx, "b", "u-b", "app_open", None).await.unwrap();
    drain(&ctx).await;
    assert_eq!(count(&ctx, "deliveries WHERE status = 'dead'").await, 2);
    let operator = installation(&ctx);
    let table = list(&operator, true, 10).await.unwrap();
    assert_eq!(table.lines().count(), 3, "a header and two rows:\n{table}");
    assert!(
        table.contains("coupon.granted") && table.contains("400"),
        "{table}"
    );
    insert(&ctx, "c", "u-c", "app_open", None).await.unwrap();
    drain(&ctx).await;
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'pending'").await,
        1,
        "held"
    );

    let refused = replay(&operator, Replay::AllDead)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("couponsd channels enable wallet"),
        "{refused}"
    );
    let enabled = enable(&operator, "wallet").await.unwrap();
    assert!(
        enabled.contains("is enabled") && enabled.contains("the 1 deliveries it held"),
        "{enabled}"
    );
    ctx.handoff.read_disabled(Vec::<String>::new());
    assert!(
        replay(&operator, Replay::One(999_999)).await.is_err(),
        "not a dead delivery"
    );
    let done = replay(&operator, Replay::Channel("wallet")).await.unwrap();
    assert!(done.starts_with("replayed 2 "), "{done}");
    drain(&ctx).await;
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'delivered'").await,
        3
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 6);
    let id = |i: usize| seen[i].headers["webhook-id"].to_str().unwrap().to_owned();
    let first: HashSet<String> = [id(0), id(1), id(2)].into();
    let again: HashSet<String> = [id(3), id(4), id(5)].into();
    assert_eq!(
        first, again,
        "the replay and the release keep each webhook-id"
    );
    assert!(seen.iter().all(|s| s.verified));
}
crate::on_both_backends!(
    a_replay_resends_dead_deliveries_with_their_webhook_id_once_the_channel_is_enabled,
    a_replay_resends_dead_deliveries_with_their_webhook_id_once_the_channel_is_enabled
);
