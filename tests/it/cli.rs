//! The real binary: `migrate`, `run --drain`, exit codes, and which commands write.

use std::path::{Path, PathBuf};

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;

use crate::on_both_backends;
use crate::support::*;

fn write_config(dir: &Path, db: &TestDb, receiver: &Receiver) -> PathBuf {
    write_named_config(dir, "couponsd.yaml", db, receiver, &standard_campaigns(5))
}

fn write_named_config(
    dir: &Path,
    name: &str,
    db: &TestDb,
    receiver: &Receiver,
    campaigns: &str,
) -> PathBuf {
    let yaml = format!(
        r#"database:
  url: "{url}"
rules:
  dir: "{rules}"
worker:
  poll_interval: 20ms
channels:
  wallet:
    url: "{base}/webhooks/wallet"
    secret: "{SECRET}"
campaigns:
{campaigns}
"#,
        url = db.url,
        rules = shipped_rules().display(),
        base = receiver.base_url(),
    );
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn run_drain_leaves_nothing_queued_and_nothing_pending(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("cli");
    let path = write_config(&dir.0, &db, &receiver);
    let out = couponsd(&path, &["migrate"]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctx = context(couponsd::config::Config::load(&path).unwrap()).await;
    for i in 0..40 {
        insert(
            &ctx,
            &format!("k{i}"),
            &format!("u{}", i % 30),
            "app_open",
            None,
        )
        .await
        .unwrap();
    }
    let run = tokio::task::spawn_blocking(move || couponsd(&path, &["run", "--drain"]))
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "run --drain: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(statuses.get("done"), Some(&40), "{statuses:?}");
    let deliveries = counts(&ctx, "status", "deliveries").await;
    assert_eq!(deliveries.get("pending"), None, "{deliveries:?}");
    assert_eq!(deliveries.get("delivered"), Some(&40));
    assert_eq!(receiver.seen().len(), 40);
}
on_both_backends!(
    run_drain_leaves_nothing_queued_and_nothing_pending,
    run_drain_leaves_nothing_queued_and_nothing_pending
);

#[test]
fn a_bad_config_exits_2_and_names_the_key() {
    let dir = TempDir::new("badcfg");
    let path = dir.0.join("couponsd.yaml");
    std::fs::write(&path, "worker:\n  poll_interval: soon\n").unwrap();
    let out = couponsd(&path, &["migrate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker.poll_interval"), "{stderr}");
}

#[test]
fn a_broken_rule_exits_2_and_names_file_and_line() {
    let dir = TempDir::new("badrule");
    std::fs::create_dir_all(dir.0.join("rules")).unwrap();
    std::fs::write(
        dir.0.join("rules/user_type.rhai"),
        "let x = 1;\nlet y = ;\n",
    )
    .unwrap();
    std::fs::copy(
        shipped_rules().join("select_coupon.rhai"),
        dir.0.join("rules/select_coupon.rhai"),
    )
    .unwrap();
    let path = dir.0.join("couponsd.yaml");
    std::fs::write(
        &path,
        format!(
            "database:\n  url: \"sqlite://{}\"\n",
            dir.0.join("db.sqlite").display()
        ),
    )
    .unwrap();
    let migrate = couponsd(&path, &["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let out = couponsd(&path, &["run", "--drain"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("user_type.rhai:2:"), "{stderr}");
}

/// Config B's catalog differs from the one in the database: NEW10 out of stock, the
/// loyalty campaign (BACK5) gone, a campaign (WIN3) that the database never saw.
const ANOTHER_CATALOG: &str = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 0, channel: wallet }
      - { id: NEW8, face_value: "8.00", stock: 100000, channel: wallet }
  - id: winback
    event: app_open
    audience: returning
    coupons:
      - { id: WIN3, face_value: "3.00", stock: 500, channel: wallet }"#;

#[derive(diesel::QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Text)]
    v: String,
}

/// Every table, every column, every row: rows as (first column, the whole row in hex),
/// sorted, by table name.
type Snapshot = std::collections::BTreeMap<String, Vec<(String, String)>>;

async fn snapshot(ctx: &couponsd::runtime::Daemon) -> Snapshot {
    let mysql = ctx.db.is_mysql();
    let tables = if mysql {
        "SELECT table_name AS k, '' AS v FROM information_schema.tables WHERE table_schema = DATABASE()"
    } else {
        "SELECT name AS k, '' AS v FROM sqlite_master WHERE type = 'table'"
    };
    let mut all = Snapshot::new();
    for table in query_rows::<TextRow>(ctx, tables).await {
        let table = table.k;
        let columns = if mysql {
            format!("SELECT column_name AS k, '' AS v FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY ordinal_position")
        } else {
            format!("SELECT name AS k, '' AS v FROM pragma_table_info('{table}') ORDER BY cid")
        };
        let columns: Vec<String> = query_rows::<TextRow>(ctx, &columns)
            .await
            .into_iter()
            .map(|c| c.k)
            .collect();
        let values: Vec<String> = columns
            .iter()
            .map(|c| format!("CASE WHEN `{c}` IS NULL THEN 'NULL' ELSE HEX(`{c}`) END"))
            .collect();
        let (row, text) = if mysql {
            (format!("CONCAT_WS('|', {})", values.join(", ")), "CHAR")
        } else {
            (values.join(" || '|' || "), "TEXT")
        };
        let sql = format!(
            "SELECT CAST(`{}` AS {text}) AS k, {row} AS v FROM `{table}`",
            columns[0]
        );
        let mut rows: Vec<(String, String)> = query_rows::<TextRow>(ctx, &sql)
            .await
            .into_iter()
            .map(|r| (r.k, r.v))
            .collect();
        rows.sort();
        all.insert(table, rows);
    }
    all
}

/// Runs the binary off the runtime's threads; returns its stdout, failing on an error.
async fn couponsd_ok(config: &Path, args: &[&str]) -> String {
    let (config, args) = (
        config.to_owned(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    let shown = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        couponsd(&config, &args)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "couponsd {shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database migrated with config A (NEW10 100,000 in stock), 12 requests granted and
/// delivered, the first delivery dead and channel `wallet` disabled by a 410; a context
/// on it, and the path of config B ([`ANOTHER_CATALOG`]).
async fn live_database_and_another_config(
    db: &TestDb,
    dir: &Path,
    receiver: &Receiver,
) -> (couponsd::runtime::Daemon, PathBuf) {
    let a = write_named_config(dir, "a.yaml", db, receiver, &standard_campaigns(100_000));
    couponsd_ok(&a, &["migrate"]).await;
    let ctx = context(couponsd::config::Config::load(&a).unwrap()).await;
    for i in 0..12 {
        let user = format!("u{}", i % 8);
        insert(&ctx, &format!("k{i}"), &user, "app_open", None)
            .await
            .unwrap();
    }
    couponsd_ok(&a, &["run", "--drain"]).await;
    execute(&ctx, "UPDATE deliveries SET status = 'dead' WHERE id = (SELECT MIN(id) FROM (SELECT id FROM deliveries) d)").await;
    execute(&ctx, "INSERT INTO channel_states (channel, disabled_at, reason) VALUES ('wallet', '2026-01-02 03:04:05', 'HTTP 410 Gone')").await;
    let b = write_named_config(dir, "b.yaml", db, receiver, ANOTHER_CATALOG);
    (ctx, b)
}

async fn inspection_with_another_config_writes_nothing(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("inspect");
    let (ctx, b) = live_database_and_another_config(&db, &dir.0, &receiver).await;
    let rules = shipped_rules().display().to_string();
    let before = snapshot(&ctx).await;
    assert_eq!(before["coupons"].len(), 3, "{before:?}");
    let inspections: [&[&str]; 8] = [
        &["stock", "show"],
        &["deliveries", "list"],
        &["deliveries", "list", "--dead"],
        &["channels", "list"],
        &["explain", "k3"],
        &["simulate", "--user", "u1", "--event", "app_open"],
        &["simulate", "--user", "newbie", "--event", "app_open"],
        &["backtest", "--rules", &rules, "--since", "1d"],
    ];
    for args in inspections {
        couponsd_ok(&b, args).await;
        let after = snapshot(&ctx).await;
        assert!(
            before == after,
            "`couponsd {}` changed the database:\nbefore {before:#?}\nafter {after:#?}",
            args.join(" ")
        );
    }
}
on_both_backends!(
    inspection_with_another_config_writes_nothing,
    inspection_with_another_config_writes_nothing
);

/// Runs `couponsd args` with config `b` and asserts that it changed nothing outside the
/// rows of `table` whose first column is `key` (outside `table` at all for `None`);
/// returns the database as it is afterwards.
async fn assert_changes_only(
    ctx: &couponsd::runtime::Daemon,
    b: &Path,
    args: &[&str],
    before: &Snapshot,
    (table, key): (&str, Option<&str>),
) -> Snapshot {
    couponsd_ok(b, args).await;
    let after = snapshot(ctx).await;
    let outside = |snapshot: &Snapshot| {
        let mut rest = snapshot.clone();
        match key {
            Some(key) => rest
                .entry(table.into())
                .or_default()
                .retain(|(k, _)| k != key),
            None => {
                rest.remove(table);
            }
        }
        rest
    };
    assert!(
        outside(before) == outside(&after),
        "`couponsd {}` changed more than {table} {key:?}:\nbefore {before:#?}\nafter {after:#?}",
        args.join(" ")
    );
    after
}

/// A coupon's (stock, remaining).
async fn stock_of(ctx: &couponsd::runtime::Daemon, coupon: &str) -> (i64, i64) {
    let sql = format!(
        "SELECT 'stock' AS k, stock AS n FROM coupons WHERE id = '{coupon}' \
         UNION ALL SELECT 'remaining' AS k, remaining AS n FROM coupons WHERE id = '{coupon}'"
    );
    let rows = query_rows::<KeyCount>(ctx, &sql).await;
    let of = |what: &str| rows.iter().find(|r| r.k == what).unwrap().n;
    (of("stock"), of("remaining"))
}

async fn mutating_verbs_with_another_config_change_only_their_rows(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("mutate");
    let (ctx, b) = live_database_and_another_config(&db, &dir.0, &receiver).await;
    let sql = "UPDATE coupons SET state = 'retired' WHERE id = 'NEW10'";
    execute(&ctx, sql).await;
    let before = snapshot(&ctx).await;
    let (stock, remaining) = stock_of(&ctx, "NEW8").await;
    let add = ["stock", "add", "NEW8", "5"];
    let before = assert_changes_only(&ctx, &b, &add, &before, ("coupons", Some("NEW8"))).await;
    assert_eq!(stock_of(&ctx, "NEW8").await, (stock + 5, remaining + 5));
    let activate = ["stock", "activate", "NEW10"];
    let before =
        assert_changes_only(&ctx, &b, &activate, &before, ("coupons", Some("NEW10"))).await;
    let state = counts(&ctx, "state", "coupons WHERE id = 'NEW10'").await;
    assert_eq!(state.get("active"), Some(&1), "{state:?}");
    let enable = ["channels", "enable", "wallet"];
    let before = assert_changes_only(&ctx, &b, &enable, &before, ("channel_states", None)).await;
    assert!(before["channel_states"].is_empty(), "{before:?}");
    let replay = ["deliveries", "replay", "--dead"];
    assert_changes_only(&ctx, &b, &replay, &before, ("deliveries", None)).await;
    let dead = counts(&ctx, "status", "deliveries WHERE status = 'dead'").await;
    assert!(dead.is_empty(), "{dead:?}");
}
on_both_backends!(
    mutating_verbs_with_another_config_change_only_their_rows,
    mutating_verbs_with_another_config_change_only_their_rows
);

async fn a_read_only_connection_refuses_every_write(db: TestDb) {
    let receiver = Receiver::ok().await;
    let config = config(&db, &receiver, &shipped_rules(), &standard_campaigns(5), "");
    let writable = context(config.clone()).await;
    let read_only =
        couponsd::store::Db::connect_with(&db.url, 2, couponsd::store::Access::ReadOnly).unwrap();
    assert!(read_only.is_migrated().await.unwrap());
    let ctx = couponsd::runtime::Daemon {
        db: read_only,
        ..writable.clone()
    };
    let before = snapshot(&writable).await;
    for sql in [
        "UPDATE coupons SET remaining = 0",
        "DELETE FROM channel_states",
        "INSERT INTO channel_states (channel, reason) VALUES ('wallet', 'test')",
        "CREATE TABLE scratch (id INT)",
    ] {
        let query = diesel::sql_query(sql);
        let result = match ctx.db.get().await.unwrap() {
            couponsd::store::Conn::Mysql(mut c) => query.execute(&mut *c).await,
            couponsd::store::Conn::Sqlite(mut c) => query.execute(&mut *c).await,
        };
        assert!(result.is_err(), "{sql} ran on a read-only connection");
    }
    assert!(before == snapshot(&writable).await);
}
on_both_backends!(
    a_read_only_connection_refuses_every_write,
    a_read_only_connection_refuses_every_write
);

async fn an_operator_command_on_a_database_never_migrated_creates_nothing(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("unmigrated");
    let path = write_config(&dir.0, &db, &receiver);
    for args in [&["stock", "show"][..], &["stock", "add", "NEW10", "5"]] {
        let out = couponsd(&path, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("couponsd migrate"), "{args:?}: {stderr}");
    }
    match db.url.strip_prefix("sqlite://") {
        Some(file) => assert!(!Path::new(file).exists(), "{file} was created"),
        None => {
            let config = couponsd::config::Config::load(&path).unwrap();
            let rules = couponsd::rules::Rules::load(&config.rules.dir, &config.rules.limits);
            let writable = couponsd::runtime::Daemon::new(
                couponsd::store::Db::connect(&db.url, 1).unwrap(),
                std::sync::Arc::new(config),
                rules.unwrap(),
                couponsd::pipeline::dispatch::send::Sender::new().unwrap(),
            );
            let tables = snapshot(&writable).await;
            assert!(tables.is_empty(), "tables were created: {tables:?}");
        }
    }
}
on_both_backends!(
    an_operator_command_on_a_database_never_migrated_creates_nothing,
    an_operator_command_on_a_database_never_migrated_creates_nothing
);
