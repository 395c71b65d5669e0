//! Hostile, careless and unlucky clients: rows no stage can decode, ids the database
//! compares differently from the daemon, requests that fail alone, and documents far
//! over the limits. None of them may stop the queue, fail its neighbours, bend
//! `per_user_limit` or take memory the configuration did not grant.

use std::time::Duration;

use couponsd::config::Config;
use couponsd::pipeline::decide::PANIC_FOR_TESTS;
use couponsd::runtime::{Daemon, Mode};
use couponsd::store::Db;
use diesel::sql_types::{BigInt, Nullable, Text};
use tokio_util::sync::CancellationToken;

use crate::on_both_backends;
use crate::support::*;

/// The shipped `worker.batch_size`: every test here runs whole batches, as in
/// production, so that one bad row shares its batch with good ones.
const SHIPPED_BATCH_SIZE: usize = 200;

async fn hostile_context(db: &TestDb, receiver: &Receiver) -> Daemon {
    let mut cfg: Config = config(
        db,
        receiver,
        &shipped_rules(),
        &standard_campaigns(100_000),
        "",
    );
    cfg.worker.batch_size = SHIPPED_BATCH_SIZE;
    context(cfg).await
}

/// Runs the grant workers and the dispatcher until the queue is empty, within a minute.
async fn drain_within_a_minute(ctx: &Daemon) {
    let drained = tokio::time::timeout(
        Duration::from_secs(60),
        couponsd::runtime::run_loops(ctx.clone(), Mode::Drain, CancellationToken::new()),
    )
    .await;
    assert!(
        drained.is_ok(),
        "run --drain did not end: the queue is stuck"
    );
}

async fn good_requests(ctx: &Daemon, tag: &str, n: usize) {
    for i in 0..n {
        let (key, user) = (format!("{tag}-{i}"), format!("{tag}-user-{i}"));
        insert(ctx, &key, &user, "app_open", None).await.unwrap();
    }
}

/// One row of `SELECT status, error`.
#[derive(Debug, Clone, diesel::QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

async fn status_of_key(ctx: &Daemon, key: &str) -> StatusRow {
    let rows: Vec<StatusRow> = query_rows(
        ctx,
        &format!("SELECT id, status, error FROM trigger_requests WHERE request_key = '{key}'"),
    )
    .await;
    rows.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no row {key}"))
}

/// Inserts the rows a client can write and no stage can decode, with the column each
/// rejection must name.
async fn insert_unreadable_rows(ctx: &Daemon) -> Vec<(&'static str, &'static str)> {
    let mysql = matches!(ctx.db, Db::Mysql(_));
    let mut bad = vec![("padded-user", "user_id")];
    insert(ctx, "padded-user", "alice ", "app_open", None)
        .await
        .unwrap();
    if mysql {
        // MariaDB's default sql_mode refuses a zero date; any session may clear it.
        execute(
            ctx,
            "SET STATEMENT sql_mode = '' FOR INSERT INTO trigger_requests \
             (request_key, user_id, event, created_at) \
             VALUES ('zero-date', 'u-zero', 'app_open', '0000-00-00 00:00:00')",
        )
        .await;
        bad.push(("zero-date", "created_at"));
    } else {
        execute(
            ctx,
            "INSERT INTO trigger_requests (request_key, user_id, event, created_at) \
             VALUES ('yesterday', 'u-yesterday', 'app_open', 'yesterday')",
        )
        .await;
        execute(
            ctx,
            "INSERT INTO trigger_requests (request_key, user_id, event) \
             VALUES ('not-utf8', CAST(X'FF616C696365' AS TEXT), 'app_open')",
        )
        .await;
        bad.extend([("yesterday", "created_at"), ("not-utf8", "user_id")]);
    }
    bad
}

async fn unreadable_rows_are_rejected_by_id_and_never_block_the_rows_behind_them(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = hostile_context(&db, &receiver).await;
    good_requests(&ctx, "before", 20).await;
    let bad = insert_unreadable_rows(&ctx).await;
    good_requests(&ctx, "after", 250).await;
    let queued = 270 + bad.len() as i64;

    couponsd::metrics::refresh(&ctx.db, &ctx.metrics, &ctx.config)
        .await
        .expect("the gauges read the queue");
    assert_eq!(ctx.metrics.snapshot().queue_depth, queued);
    assert!(ctx.metrics.snapshot().oldest_age < 3600.0);

    drain_within_a_minute(&ctx).await;
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(statuses.get("done"), Some(&270), "{statuses:?}");
    assert_eq!(statuses.get("rejected"), Some(&(bad.len() as i64)));
    for (key, column) in bad {
        let row = status_of_key(&ctx, key).await;
        let error = row.error.unwrap_or_default();
        assert!(
            error.starts_with(&format!("request {} ", row.id))
                && error.contains(&format!(": {column}: ")),
            "{key}: the reason names the row and the column: {error}"
        );
        let explained = couponsd::authoring::explain::explain(&ctx.db, key)
            .await
            .unwrap_or_else(|e| panic!("explain {key}: {e}"));
        assert_eq!(explained.request.status, "rejected");
        assert_eq!(explained.request.error.as_deref(), Some(error.as_str()));
    }
}
on_both_backends!(
    unreadable_rows_are_rejected_by_id_and_never_block_the_rows_behind_them,
    unreadable_rows_are_rejected_by_id_and_never_block_the_rows_behind_them
);

async fn a_status_the_client_set_itself_is_taken_up_or_rejected(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = hostile_context(&db, &receiver).await;
    execute(
        &ctx,
        "INSERT INTO trigger_requests (request_key, user_id, event, status) \
         VALUES ('made-up', 'u1', 'app_open', 'urgent'), \
         ('claimed-by-nobody', 'u2', 'app_open', 'claimed')",
    )
    .await;
    couponsd::schedule::reclaim(&ctx.schedule()).await.unwrap();
    let made_up = status_of_key(&ctx, "made-up").await;
    assert_eq!(made_up.status, "rejected");
    let error = made_up.error.unwrap();
    assert!(
        error.contains(&format!("request {}", made_up.id)) && error.contains("status: \"urgent\""),
        "{error}"
    );
    assert_eq!(
        status_of_key(&ctx, "claimed-by-nobody").await.status,
        "queued"
    );
    drain_within_a_minute(&ctx).await;
    assert_eq!(
        status_of_key(&ctx, "claimed-by-nobody").await.status,
        "done"
    );
}
on_both_backends!(
    a_status_the_client_set_itself_is_taken_up_or_rejected,
    a_status_the_client_set_itself_is_taken_up_or_rejected
);

/// The user type the daemon decided for a request.
async fn user_type_of(ctx: &Daemon, key: &str) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Nullable<Text>)]
        user_type: Option<String>,
    }
    let rows: Vec<Row> = query_rows(
        ctx,
        &format!("SELECT user_type FROM trigger_requests WHERE request_key = '{key}'"),
    )
    .await;
    rows.into_iter().next().and_then(|r| r.user_type)
}

/// Whether the database finds a grant of `user` under its own comparison rules.
async fn database_has_granted(ctx: &Daemon, user: &str) -> bool {
    let sql = format!(
        "SELECT user_id AS k, COUNT(*) AS n FROM grants WHERE user_id = '{}' GROUP BY user_id",
        user.replace('\'', "''")
    );
    !query_rows::<KeyCount>(ctx, &sql).await.is_empty()
}

async fn the_daemon_tells_users_apart_exactly_as_the_database_does(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = hostile_context(&db, &receiver).await;
    // A grant written before padded ids were refused: MariaDB compares 'frank ' equal
    // to 'frank', SQLite does not.
    insert(&ctx, "legacy", "frank ", "app_open", None)
        .await
        .unwrap();
    plant_grant(&ctx, "legacy").await;
    execute(
        &ctx,
        "UPDATE trigger_requests SET status = 'done' WHERE request_key = 'legacy'",
    )
    .await;
    let pairs = [
        ("alice", "alice "),
        ("bob", " bob"),
        ("carol", "carol\u{a0}"),
        ("dave", "DAVE"),
        ("\u{e9}mile", "e\u{301}mile"),
        ("gr\u{fc}n", "gru\u{308}n"),
    ];
    for (i, (first, _)) in pairs.iter().enumerate() {
        insert(&ctx, &format!("first-{i}"), first, "app_open", None)
            .await
            .unwrap();
    }
    // Asked before the requests are processed: does the database find a grant?
    let frank_is_known = database_has_granted(&ctx, "frank").await;
    insert(&ctx, "frank", "frank", "app_open", None)
        .await
        .unwrap();
    drain_within_a_minute(&ctx).await;
    let mut same_user = Vec::new();
    for (_, second) in pairs {
        same_user.push(database_has_granted(&ctx, second).await);
    }
    for (i, (_, second)) in pairs.iter().enumerate() {
        insert(&ctx, &format!("second-{i}"), second, "app_open", None)
            .await
            .unwrap();
    }
    drain_within_a_minute(&ctx).await;

    assert_eq!(
        frank_is_known,
        matches!(ctx.db, Db::Mysql(_)),
        "MariaDB pads, SQLite does not"
    );
    let expected = if frank_is_known {
        "returning"
    } else {
        "first_time"
    };
    assert_eq!(
        user_type_of(&ctx, "frank").await.as_deref(),
        Some(expected),
        "the ledger row the database finds for 'frank' is frank's history"
    );
    for (i, (first, second)) in pairs.iter().enumerate() {
        let row = status_of_key(&ctx, &format!("second-{i}")).await;
        if second.trim() != *second {
            assert_eq!(row.status, "rejected", "{second:?} is padded");
            assert!(row
                .error
                .unwrap()
                .contains("user_id: starts or ends with white space"));
            continue;
        }
        let same_user = same_user[i];
        let user_type = user_type_of(&ctx, &format!("second-{i}")).await;
        assert_eq!(
            user_type.as_deref(),
            Some(if same_user { "returning" } else { "first_time" }),
            "{first:?} then {second:?}: the daemon and the database agree"
        );
    }
    let limits = counts(
        &ctx,
        "outcome",
        "trigger_requests WHERE request_key LIKE 'second-%'",
    )
    .await;
    assert!(!limits.contains_key("limit_reached"), "{limits:?}");
}
on_both_backends!(
    the_daemon_tells_users_apart_exactly_as_the_database_does,
    the_daemon_tells_users_apart_exactly_as_the_database_does
);

async fn a_panic_in_rule_evaluation_fails_only_its_own_request(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = hostile_context(&db, &receiver).await;
    good_requests(&ctx, "good", 57).await;
    let attributes = format!(r#"{{"{PANIC_FOR_TESTS}": true}}"#);
    insert(&ctx, "panics", "u-panic", "app_open", Some(&attributes))
        .await
        .unwrap();
    good_requests(&ctx, "more", 142).await;
    drain_within_a_minute(&ctx).await;
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(statuses.get("done"), Some(&199), "{statuses:?}");
    let row = status_of_key(&ctx, "panics").await;
    assert_eq!(row.status, "failed");
    assert!(
        row.error
            .unwrap()
            .contains("rule evaluation stopped unexpectedly"),
        "the real cause is in the row"
    );
}
on_both_backends!(
    a_panic_in_rule_evaluation_fails_only_its_own_request,
    a_panic_in_rule_evaluation_fails_only_its_own_request
);

/// Peak resident memory of `couponsd run --drain` over a queue of 50 requests with
/// 4 MB attributes each, at the shipped defaults, against the same drain over 50 small
/// requests just before: the documents (200 MB in all) never reach the daemon. On
/// MariaDB, the issue's setting, the peak is also under 64 MiB as it stands (a debug
/// build, bigger than the release binary). SQLite runs inside the daemon and rewrites
/// a whole row to update it: marking a 4 MB row rejected holds a few copies of it for a
/// moment (15–31 MiB more than the control, measured), so there only the difference is
/// bounded, far below the 200 MB the documents would take (375–407 MiB more before
/// the claim read them defensively).
async fn huge_attributes_do_not_reach_the_daemons_memory(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("hostile");
    let path = dir.0.join("couponsd.yaml");
    let yaml = format!(
        "database:\n  url: \"{url}\"\nrules:\n  dir: \"{rules}\"\nchannels:\n  wallet:\n    url: \"{base}/webhooks/wallet\"\n    secret: \"{SECRET}\"\ncampaigns:\n{campaigns}\n",
        url = db.url,
        rules = shipped_rules().display(),
        base = receiver.base_url(),
        campaigns = standard_campaigns(1000),
    );
    std::fs::write(&path, yaml).unwrap();
    let ctx = context(Config::load(&path).unwrap()).await;
    let peak_over = async |tag: &str, attributes: &str| {
        for i in 0..50 {
            let (key, user) = (format!("{tag}-{i}"), format!("{tag}-user-{i}"));
            insert(&ctx, &key, &user, "app_open", Some(attributes))
                .await
                .unwrap();
        }
        let (status, peak_kib) = run_drain_measuring_peak(&path);
        assert!(status.success(), "run --drain exited with {status}");
        peak_kib
    };
    let control = peak_over("small", r#"{"blob": "x"}"#).await;
    let huge = format!(r#"{{"blob": "{}"}}"#, "x".repeat(4 << 20));
    let hostile = peak_over("huge", &huge).await;
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(statuses.get("rejected"), Some(&50), "{statuses:?}");
    assert_eq!(statuses.get("done"), Some(&50), "{statuses:?}");
    let errors = counts(&ctx, "error", "trigger_requests WHERE status = 'rejected'").await;
    assert!(
        errors
            .keys()
            .all(|e| e.contains("attributes: is 4194316 bytes, longer than the limit of 16384")),
        "{errors:?}"
    );
    eprintln!("run --drain peak RSS: {control} KiB over small rows, {hostile} KiB over 4 MB rows");
    assert!(
        hostile < control + 64 * 1024,
        "4 MB documents reached memory: peak {hostile} KiB against {control} KiB"
    );
    if matches!(ctx.db, Db::Mysql(_)) {
        assert!(hostile < 64 * 1024, "peak RSS {hostile} KiB, over 64 MiB");
    }
}
on_both_backends!(
    huge_attributes_do_not_reach_the_daemons_memory,
    huge_attributes_do_not_reach_the_daemons_memory
);

/// Runs `couponsd run --drain` and returns its exit status and peak RSS in KiB: the
/// kernel's high-water mark of the daemon's own memory (`VmHWM`), read until it exits.
/// (`wait4`'s `ru_maxrss` would count the test process too: a spawned child's peak
/// starts from the memory it was forked from.)
fn run_drain_measuring_peak(config: &std::path::Path) -> (std::process::ExitStatus, i64) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_couponsd"))
        .arg("--config")
        .arg(config)
        .args(["run", "--drain"])
        .env_remove("COUPONSD_DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("couponsd starts");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "run --drain did not end"
        );
        let high_water = std::fs::read_to_string(&status_file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
        peak_kib = peak_kib.max(high_water.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn a_queue_that_does_not_move_is_not_ready(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = hostile_context(&db, &receiver).await;
    let listener = couponsd::runtime::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let stopping = CancellationToken::new();
    let server = couponsd::runtime::http::serve(ctx.clone(), listener, stopping.clone());
    let ready = async || reqwest::get(&url).await.unwrap().status().as_u16();
    assert_eq!(ready().await, 200);
    for _ in 0..couponsd::runtime::http::FAILED_BATCHES_NOT_READY {
        ctx.liveness.batch_failed();
    }
    assert_eq!(
        ready().await,
        503,
        "batches fail in a row: the queue is stuck"
    );
    ctx.liveness.batch_done();
    assert_eq!(
        ready().await,
        200,
        "a batch committed: the queue moves again"
    );
    server.abort();
}
on_both_backends!(
    a_queue_that_does_not_move_is_not_ready,
    a_queue_that_does_not_move_is_not_ready
);
