//! Rule authoring: `check`, `rules test`, `simulate`, `backtest`, `explain` and hot
//! reload, through the real binary where the command is the interface.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use couponsd::authoring::backtest::{self, BacktestArgs, Backtester};
use couponsd::authoring::reload::{self, ReloadError};
use couponsd::authoring::simulate::{self, SimulateArgs};
use couponsd::config::Config;
use couponsd::runtime::{Daemon, Mode};
use couponsd::store::Db;
use diesel::sql_types::{Nullable, Text};
use tokio_util::sync::CancellationToken;

use crate::on_both_backends;
use crate::support::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config file in `dir` for `url`, the rules in `rules`, and webhooks to `base`.
fn write_config(dir: &Path, url: &str, rules: &Path, base: &str, hot: i64) -> PathBuf {
    let yaml = format!(
        r#"database:
  url: "{url}"
rules:
  dir: "{rules}"
worker:
  poll_interval: 20ms
dispatch:
  retry_base: 20ms
  retry_max: 200ms
channels:
  wallet:
    url: "{base}/webhooks/wallet"
    secret: "{SECRET}"
    timeout: 2s
campaigns:
{campaigns}
"#,
        rules = rules.display(),
        campaigns = standard_campaigns(hot)
    );
    let path = dir.join("couponsd.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A copy of the shipped rules and their tests in `dir/rules`.
fn copy_shipped_rules(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(rules.join("tests")).unwrap();
    for file in ["user_type.rhai", "select_coupon.rhai", "tests/shipped.yaml"] {
        std::fs::copy(shipped_rules().join(file), rules.join(file)).unwrap();
    }
    rules
}

#[test]
fn check_passes_the_shipped_rules_without_touching_a_database() {
    let dir = TempDir::new("check-ok");
    // Nothing listens on port 1: check must not need the database.
    let path = write_config(
        &dir.0,
        "mysql://root@127.0.0.1:1/none",
        &shipped_rules(),
        "http://127.0.0.1:9",
        5,
    );
    let out = couponsd(&path, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("5 rule test(s) in 1 file(s)"), "{stdout}");
    let tests = couponsd(&path, &["rules", "test"]);
    assert_eq!(tests.status.code(), Some(0), "{}", text(&tests.stderr));
    let passed = text(&tests.stdout);
    assert_eq!(
        passed.lines().filter(|l| l.starts_with("ok  ")).count(),
        5,
        "{passed}"
    );
}

#[test]
fn check_reports_both_broken_rule_files_at_once_with_their_lines() {
    let dir = TempDir::new("check-broken");
    let rules = copy_shipped_rules(&dir.0);
    std::fs::write(
        rules.join("user_type.rhai"),
        "// line 1\nif history.grants_for_event == 0 {\n  \"first_time\"\n} else {\n  \"returning\" +\n}\n",
    )
    .unwrap();
    std::fs::write(
        rules.join("select_coupon.rhai"),
        "// picks the first\nfor coupon in cupons {\n    return coupon.id;\n}\n",
    )
    .unwrap();
    let path = write_config(
        &dir.0,
        "sqlite://unused.db",
        &rules,
        "http://127.0.0.1:9",
        5,
    );
    let out = couponsd(&path, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let user_type = format!("{}:6:1: ", rules.join("user_type.rhai").display());
    let select = format!("{}:2:15: ", rules.join("select_coupon.rhai").display());
    assert!(lines[0].starts_with(&user_type), "{stderr}");
    assert!(lines[1].starts_with(&select), "{stderr}");
    assert!(lines[1].contains("cupons"), "{stderr}");
    assert_eq!(lines[2], "couponsd: 2 problem(s) in the rules");
    assert!(!dir.0.join("unused.db").exists());
    // The same folder as a candidate next to good live rules.
    let live = write_config(
        &dir.0,
        "sqlite://unused.db",
        &shipped_rules(),
        "http://127.0.0.1:9",
        5,
    );
    let candidate = couponsd(&live, &["check", "--rules", rules.to_str().unwrap()]);
    assert_eq!(candidate.status.code(), Some(2));
    assert_eq!(text(&candidate.stderr), stderr);
}

#[test]
fn a_failing_rule_test_shows_expected_and_got_and_exits_2() {
    let dir = TempDir::new("rules-test");
    let rules = copy_shipped_rules(&dir.0);
    std::fs::write(
        rules.join("user_type.rhai"),
        "if history.grants_for_event == 0 { \"first_time\" } else { \"regular\" }\n",
    )
    .unwrap();
    let path = write_config(
        &dir.0,
        "sqlite://unused.db",
        &rules,
        "http://127.0.0.1:9",
        5,
    );
    for command in [&["rules", "test"][..], &["check"][..]] {
        let out = couponsd(&path, command);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let stderr = text(&out.stderr);
        let fixture = rules.join("tests/shipped.yaml");
        let expected = format!(
            "{}:19:5: case \"a returning user gets the loyalty coupon\": user type: expected returning, got regular",
            fixture.display()
        );
        assert!(stderr.starts_with(&expected), "{stderr}");
        assert!(
            stderr.contains("coupon: expected BACK5, got none"),
            "{stderr}"
        );
        // The returning user and the one who redeemed a coupon.
        assert!(
            stderr.ends_with("couponsd: 2 problem(s) in the rules\n"),
            "{stderr}"
        );
    }
}

/// Every value of every table, by table, as text: equal snapshots mean nothing changed.
async fn snapshot(ctx: &Daemon) -> BTreeMap<String, Vec<Vec<Option<String>>>> {
    let mysql = matches!(ctx.db, Db::Mysql(_));
    let tables = if mysql {
        "SELECT table_name AS k, 0 AS n FROM information_schema.tables WHERE table_schema = DATABASE()"
    } else {
        "SELECT name AS k, 0 AS n FROM sqlite_master WHERE type = 'table'"
    };
    let mut all = BTreeMap::new();
    for table in query_rows::<KeyCount>(ctx, tables).await {
        let columns = if mysql {
            format!("SELECT column_name AS k, ordinal_position AS n FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{}' ORDER BY ordinal_position", table.k)
        } else {
            format!(
                "SELECT name AS k, cid AS n FROM pragma_table_info('{}')",
                table.k
            )
        };
        let columns: Vec<String> = query_rows::<KeyCount>(ctx, &columns)
            .await
            .into_iter()
            .map(|c| format!("`{}`", c.k))
            .collect();
        let order = columns.join(", ");
        let mut values = Vec::new();
        for column in &columns {
            let sql = format!(
                "SELECT CAST({column} AS CHAR) AS v FROM `{}` ORDER BY {order}",
                table.k
            );
            let rows: Vec<Value> = query_rows(ctx, &sql).await;
            values.push(rows.into_iter().map(|r| r.v).collect());
        }
        all.insert(table.k, values);
    }
    all
}

#[derive(diesel::QueryableByName)]
struct Value {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

async fn simulate_writes_nothing_and_shows_the_decision(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("simulate");
    let path = write_config(&dir.0, &db.url, &shipped_rules(), &receiver.base_url(), 1);
    let ctx = context(Config::load(&path).unwrap()).await;
    for (key, user) in [("k0", "ann"), ("k1", "bob"), ("k2", "ann")] {
        insert(&ctx, key, user, "app_open", None).await.unwrap();
    }
    drain(&ctx).await;
    let before = snapshot(&ctx).await;
    assert!(before["grants"][0].len() == 3 && before["deliveries"][0].len() == 3);
    let request = |user: &str| {
        simulate::request(&SimulateArgs {
            user: user.into(),
            event: "app_open".into(),
            attrs: Some(r#"{"country":"DE"}"#.into()),
            json: false,
        })
        .unwrap()
    };
    let rules = ctx.rules.current();
    let out = simulate::run(&ctx.db, &ctx.config, &rules, request("cid"), false)
        .await
        .unwrap();
    assert!(out.contains("user type first_time"), "{out}");
    assert!(
        out.contains("granted: coupon NEW8 via channel wallet"),
        "{out}"
    );
    let columns = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert!(
        out.lines()
            .any(|l| columns(l) == ["NEW10", "10.00", "0", "wallet", "active"]),
        "{out}"
    );
    let out = simulate::run(&ctx.db, &ctx.config, &rules, request("bob"), true)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["user_type"], "returning");
    assert_eq!(
        (json["campaign"].as_str(), json["coupon"].as_str()),
        (Some("loyalty"), Some("BACK5"))
    );
    assert_eq!(json["history"]["grants_by_campaign"]["newcomer"], 1);
    let out = simulate::run(&ctx.db, &ctx.config, &rules, request("ann"), false)
        .await
        .unwrap();
    assert!(out.contains("outcome   limit_reached"), "{out}");
    let binary = couponsd(
        &path,
        &["simulate", "--user", "dan", "--event", "app_open", "--json"],
    );
    assert!(binary.status.success(), "{}", text(&binary.stderr));
    let json: serde_json::Value = serde_json::from_slice(&binary.stdout).unwrap();
    assert_eq!(
        (json["outcome"].as_str(), json["coupon"].as_str()),
        (Some("granted"), Some("NEW8"))
    );
    assert_eq!(json["coupons"][1]["remaining"], 100_000 - 1);
    assert_eq!(
        snapshot(&ctx).await,
        before,
        "simulate must not change any row"
    );
}
on_both_backends!(
    simulate_writes_nothing_and_shows_the_decision,
    simulate_writes_nothing_and_shows_the_decision
);

async fn explain_tells_what_happened_to_a_request(db: TestDb) {
    let receiver = Receiver::start(|n, _| match n {
        0 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::NO_CONTENT,
    })
    .await;
    let dir = TempDir::new("explain");
    let path = write_config(&dir.0, &db.url, &shipped_rules(), &receiver.base_url(), 0);
    let ctx = context(Config::load(&path).unwrap()).await;
    insert(&ctx, "k-1", "ann", "app_open", Some(r#"{"country":"DE"}"#))
        .await
        .unwrap();
    drain(&ctx).await;
    let version = ctx.rules.current().version().to_string();
    let out = couponsd(&path, &["explain", "k-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for wanted in [
        "status        done".to_owned(),
        "outcome       granted".to_owned(),
        "user type     first_time".to_owned(),
        "campaign      newcomer".to_owned(),
        format!("rules version {version}"),
        "coupon NEW8 (8.00)".to_owned(),
        "channel wallet: delivered after 2 attempt(s)".to_owned(),
        "HTTP 503".to_owned(),
        "HTTP 204".to_owned(),
    ] {
        assert!(stdout.contains(&wanted), "missing {wanted:?} in\n{stdout}");
    }
    let out = couponsd(&path, &["explain", "k-1", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["request"]["rules_version"], version.as_str());
    assert_eq!(json["grant"]["coupon"], "NEW8");
    let delivery = &json["deliveries"][0];
    assert_eq!(delivery["status"], "delivered");
    let codes: Vec<i64> = delivery["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["http_status"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [503, 204]);
    let webhook_id = receiver.seen()[0].headers["webhook-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(delivery["webhook_id"], webhook_id.as_str());
    let unknown = couponsd(&path, &["explain", "no-such-key"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("request_key \"no-such-key\": no such request"));
}
on_both_backends!(
    explain_tells_what_happened_to_a_request,
    explain_tells_what_happened_to_a_request
);

/// Sixteen requests with the shipped rules: ten newcomers (five get NEW10, five NEW8),
/// four of them come back (BACK5), two a third time (loyalty limit reached).
async fn recorded_history(db: &TestDb, dir: &Path) -> (Daemon, PathBuf) {
    let receiver = Receiver::ok().await;
    let path = write_config(dir, &db.url, &shipped_rules(), &receiver.base_url(), 5);
    let ctx = context(Config::load(&path).unwrap()).await;
    let visits = (0..10).chain(0..4).chain(0..2);
    for (i, user) in visits.enumerate() {
        insert(
            &ctx,
            &format!("k{i:02}"),
            &format!("u{user}"),
            "app_open",
            None,
        )
        .await
        .unwrap();
    }
    drain(&ctx).await;
    (ctx, path)
}

fn candidate(dir: &Path, name: &str, user_type: &str, select_coupon: &str) -> PathBuf {
    let rules = dir.join(name);
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("user_type.rhai"), user_type).unwrap();
    std::fs::write(rules.join("select_coupon.rhai"), select_coupon).unwrap();
    rules
}

fn row(r: &backtest::CouponRow) -> (&str, &str, usize, usize, usize, usize) {
    (
        &r.campaign,
        &r.coupon,
        r.live,
        r.candidate,
        r.user_type_changed,
        r.coupon_changed,
    )
}

/// `couponsd backtest` as the command runs it, on the context's database.
async fn compare(ctx: &Daemon, args: &BacktestArgs) -> backtest::Backtest {
    let backtester = Backtester::new(&ctx.config, args).unwrap();
    backtester.compare(&ctx.db, &ctx.config).await.unwrap()
}

async fn backtest_counts_the_decisions_a_candidate_changes(db: TestDb) {
    let dir = TempDir::new("backtest");
    let (ctx, path) = recorded_history(&db, &dir.0).await;
    // NEW10 is exhausted: the inventory check retires it, after the requests it served.
    couponsd::schedule::inventory::check(&ctx.schedule())
        .await
        .unwrap();
    let state = counts(&ctx, "state", "coupons WHERE id = 'NEW10'").await;
    assert_eq!(state.get("retired"), Some(&1));
    let shipped_select =
        std::fs::read_to_string(shipped_rules().join("select_coupon.rhai")).unwrap();
    let shipped_user_type =
        std::fs::read_to_string(shipped_rules().join("user_type.rhai")).unwrap();
    let everyone_returns = candidate(&dir.0, "returning", "\"returning\"", &shipped_select);
    let args = |rules: &Path| BacktestArgs {
        rules: rules.to_owned(),
        since: None,
        limit: 10_000,
        json: false,
    };
    let report = compare(&ctx, &args(&everyone_returns)).await;
    assert_eq!(report.requests, 16);
    assert_eq!(
        report.reproduced, 16,
        "the live rules reproduce every recorded decision"
    );
    assert_eq!(
        (
            report.changed,
            report.user_type_changed,
            report.coupon_changed
        ),
        (10, 10, 10)
    );
    let rows: Vec<_> = report.by_coupon.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            ("loyalty", "BACK5", 4, 14, 0, 0),
            ("loyalty", "none", 2, 2, 0, 0),
            ("newcomer", "NEW10", 5, 0, 5, 5),
            ("newcomer", "NEW8", 5, 0, 5, 5),
        ]
    );
    assert_eq!(report.examples.len(), 5);
    assert_eq!(report.examples[0].request_key, "k00");
    assert_eq!(report.examples[0].old, "first_time newcomer/NEW10");
    assert_eq!(report.examples[0].new, "returning loyalty/BACK5");

    let second = "if coupons.len() > 1 { coupons[1].id } else { coupons[0].id }";
    let second_coupon = candidate(&dir.0, "second", &shipped_user_type, second);
    let out = couponsd(
        &path,
        &[
            "backtest",
            "--rules",
            second_coupon.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["changed"].as_i64(), json["user_type_changed"].as_i64()),
        (Some(5), Some(0))
    );
    assert_eq!(json["coupon_changed"], 5);
    let new10 = &json["by_coupon"][2];
    assert_eq!(
        (
            new10["coupon"].as_str(),
            new10["live"].as_i64(),
            new10["coupon_changed"].as_i64()
        ),
        (Some("NEW10"), Some(5), Some(5))
    );
    assert_eq!(
        json["by_coupon"][3]["candidate"], 10,
        "every newcomer gets NEW8"
    );

    let mut limited = args(&everyone_returns);
    limited.limit = 4;
    let report = compare(&ctx, &limited).await;
    assert_eq!((report.requests, report.changed), (4, 4));
    limited.since = Some("2999-01-01".into());
    assert_eq!(compare(&ctx, &limited).await.requests, 0);
}
on_both_backends!(
    backtest_counts_the_decisions_a_candidate_changes,
    backtest_counts_the_decisions_a_candidate_changes
);

#[derive(Debug, diesel::QueryableByName)]
struct Decided {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Text)]
    user_type: String,
    #[diesel(sql_type = Text)]
    claim: String,
}

async fn decided(ctx: &Daemon) -> Vec<Decided> {
    query_rows(ctx, "SELECT status, COALESCE(rules_version, '') AS version, COALESCE(user_type, '') AS user_type, CAST(COALESCE(claim_token, 0) AS CHAR) AS claim FROM trigger_requests ORDER BY id").await
}

async fn wait_until_all_done(ctx: &Daemon, expected: usize) -> Vec<Decided> {
    for _ in 0..500 {
        let rows = decided(ctx).await;
        if rows.len() == expected
            && rows
                .iter()
                .all(|r| r.status != "queued" && r.status != "claimed")
        {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("requests not processed in time: {:?}", decided(ctx).await);
}

/// A context on `db` whose rules are a copy of the shipped ones in a folder of its own,
/// to change and reload; the receiver and the folder live as long as the test needs.
async fn with_own_rules(db: &TestDb, name: &str) -> (Daemon, PathBuf, Receiver, TempDir) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new(name);
    let rules = copy_shipped_rules(&dir.0);
    let ctx = context(config(db, &receiver, &rules, &standard_campaigns(1000), "")).await;
    (ctx, rules, receiver, dir)
}

async fn reload_keeps_the_running_rules_until_a_change_compiles_and_passes_its_tests(db: TestDb) {
    let (ctx, rules, _receiver, _dir) = with_own_rules(&db, "reload").await;
    let old = ctx.rules.current().version().clone();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(couponsd::runtime::run_loops(
        ctx.clone(),
        Mode::Serve,
        shutdown.clone(),
    ));
    // A client inserting all along, so that every reload happens while batches run.
    let inserted = Arc::new(AtomicUsize::new(0));
    let stop_inserting = CancellationToken::new();
    let client = {
        let (ctx, inserted, stop) = (ctx.clone(), inserted.clone(), stop_inserting.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let n = inserted.load(Ordering::SeqCst);
                let vip = if n % 2 == 0 {
                    Some(r#"{"vip":true}"#)
                } else {
                    None
                };
                insert(
                    &ctx,
                    &format!("bg{n:04}"),
                    &format!("bg{n}"),
                    "app_open",
                    vip,
                )
                .await
                .unwrap();
                inserted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let limits = &ctx.config.rules.limits;

    std::fs::write(
        rules.join("user_type.rhai"),
        "if history.grants_for_event == 0 {\n  \"first_time\"\n} else {\n",
    )
    .unwrap();
    let Err(ReloadError::Rejected(problems)) =
        reload::reload_rules(&ctx.rules, &ctx.catalog, &rules, limits).await
    else {
        panic!("a rule that does not compile must not be swapped in");
    };
    assert!(
        problems[0]
            .to_string()
            .starts_with(&format!("{}:4:", rules.join("user_type.rhai").display())),
        "{problems:?}"
    );
    assert_eq!(ctx.rules.current().version(), &old);

    // Compiles, but newcomers become "returning": the shipped first-time tests fail.
    std::fs::write(rules.join("user_type.rhai"), "\"returning\"\n").unwrap();
    let Err(ReloadError::Rejected(problems)) =
        reload::reload_rules(&ctx.rules, &ctx.catalog, &rules, limits).await
    else {
        panic!("rules failing their tests must not be swapped in");
    };
    assert!(
        problems
            .iter()
            .all(|p| p.file.ends_with("tests/shipped.yaml")),
        "{problems:?}"
    );
    assert_eq!(
        problems.len(),
        3,
        "the three first-time cases fail: {problems:?}"
    );
    assert_eq!(ctx.rules.current().version(), &old);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let vip = "if request.attributes.vip == true { return \"returning\"; }\n";
    let shipped = std::fs::read_to_string(shipped_rules().join("user_type.rhai")).unwrap();
    std::fs::write(rules.join("user_type.rhai"), format!("{vip}{shipped}")).unwrap();
    let reloaded = reload::reload_rules(&ctx.rules, &ctx.catalog, &rules, limits)
        .await
        .unwrap();
    assert_eq!((&reloaded.previous, reloaded.tests), (&old, 5));
    assert_ne!(reloaded.version, old);
    assert_eq!(ctx.rules.current().version(), &reloaded.version);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_inserting.cancel();
    client.await.unwrap();

    let rows = wait_until_all_done(&ctx, inserted.load(Ordering::SeqCst)).await;
    shutdown.cancel();
    daemon.await.unwrap();
    assert!(
        rows.iter().all(|r| r.status == "done"),
        "no request fails across reloads"
    );
    let (new, old) = (reloaded.version.to_string(), old.to_string());
    let before: Vec<&Decided> = rows.iter().filter(|r| r.version == old).collect();
    let after: Vec<&Decided> = rows.iter().filter(|r| r.version == new).collect();
    assert_eq!(
        before.len() + after.len(),
        rows.len(),
        "only the two good versions decided"
    );
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{} before, {} after",
        before.len(),
        after.len()
    );
    assert!(before.iter().all(|r| r.user_type == "first_time"));
    // Even-numbered requests carry vip: the new rules make them returning.
    assert!(after.iter().any(|r| r.user_type == "returning"));
    let mut versions_by_claim: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &rows {
        versions_by_claim
            .entry(&r.claim)
            .or_default()
            .push(&r.version);
    }
    for (claim, versions) in versions_by_claim {
        assert!(
            versions.windows(2).all(|w| w[0] == w[1]),
            "batch {claim} mixed rules versions"
        );
    }
}
on_both_backends!(
    reload_keeps_the_running_rules_until_a_change_compiles_and_passes_its_tests,
    reload_keeps_the_running_rules_until_a_change_compiles_and_passes_its_tests
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_the_rules_folder_reloads_once_it_settles() {
    let dir = TempDir::new("watch");
    let rules = copy_shipped_rules(&dir.0);
    let reloads = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let counter = reloads.clone();
    // Saves less than one look apart count as one change; 250 ms leaves room for the
    // test thread to be descheduled between its two writes on a busy CI machine
    // (at 50 ms it was, once, and the watcher rightly reloaded twice).
    let watcher = reload::watch(
        rules.clone(),
        Duration::from_millis(250),
        shutdown.clone(),
        move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        },
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(reloads.load(Ordering::SeqCst), 0, "nothing changed");
    let same = std::fs::read(rules.join("select_coupon.rhai")).unwrap();
    std::fs::write(rules.join("select_coupon.rhai"), &same).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        reloads.load(Ordering::SeqCst),
        0,
        "a save that changes nothing does not reload"
    );
    std::fs::write(rules.join("select_coupon.rhai"), "()\n").unwrap();
    std::fs::write(rules.join("tests/more.yaml"), "cases: []\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        reloads.load(Ordering::SeqCst),
        1,
        "two files saved together reload once"
    );
    shutdown.cancel();
    watcher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_watcher_swaps_in_an_edited_rule() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("watch-daemon");
    let rules = copy_shipped_rules(&dir.0);
    let ctx = context(config(&db, &receiver, &rules, &standard_campaigns(10), "")).await;
    let old = ctx.rules.current().version().clone();
    let shutdown = CancellationToken::new();
    // The config path does not exist: the reload falls back to the running config.
    let reloader = reload::Reloader::new(
        ctx.rules.clone(),
        ctx.catalog.clone(),
        dir.0.join("missing.yaml"),
    );
    let watcher = reloader.watch(shutdown.clone());
    let edited = format!(
        "// edited\n{}",
        std::fs::read_to_string(rules.join("select_coupon.rhai")).unwrap()
    );
    std::fs::write(rules.join("select_coupon.rhai"), edited).unwrap();
    for _ in 0..200 {
        if ctx.rules.current().version() != &old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        ctx.rules.current().version(),
        &old,
        "the watcher swapped in the edit"
    );
    shutdown.cancel();
    watcher.await.unwrap();
}

#[test]
fn check_names_the_config_key_at_fault() {
    let dir = TempDir::new("check-config");
    let path = dir.0.join("couponsd.yaml");
    std::fs::write(&path, "rules:\n  limits:\n    max_operations: 0\n").unwrap();
    let out = couponsd(&path, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rules.limits.max_operations: must be at least 1, got 0"),
        "{stderr}"
    );
}

/// A rules reload runs the rule tests with the campaigns in force now (the catalog of
/// the last config reload), not those the daemon started with: batches decide with
/// those, so rules must pass their tests against them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_reload_tests_against_the_catalog_in_force_not_the_start_up_one() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let (ctx, rules, receiver, _dir) = with_own_rules(&db, "reload-catalog").await;
    let limits = ctx.config.rules.limits.clone();
    reload::reload_rules(&ctx.rules, &ctx.catalog, &rules, &limits)
        .await
        .expect("the shipped rules pass their tests against the start-up campaigns");
    // A config reload takes the loyalty campaign away; the shipped tests expect it.
    let newcomers_only = standard_campaigns(1000)
        .split("  - id: loyalty")
        .next()
        .unwrap()
        .to_owned();
    let reloaded = config(&db, &receiver, &rules, &newcomers_only, "");
    ctx.catalog.swap(Arc::new(reloaded));
    let Err(ReloadError::Rejected(problems)) =
        reload::reload_rules(&ctx.rules, &ctx.catalog, &rules, &limits).await
    else {
        panic!("the shipped tests expect the loyalty campaign, which is no longer in force");
    };
    assert!(
        problems.iter().any(|p| p
            .to_string()
            .contains("a returning user gets the loyalty coupon")),
        "{problems:?}"
    );
}
