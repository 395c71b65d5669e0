//! `Db`: pools, migrations, the probe and the database's clock (`store/mod.rs`,
//! `health.rs`, `clock.rs`). These bodies take the fresh database's URL, unmigrated.

use std::sync::Arc;
use std::time::Duration;

use couponsd::store::deliveries::NewDelivery;
use couponsd::store::health::{watch, Health};
use couponsd::store::{clock, Access, Conn, Db, Settings, StoreError};
use tokio_util::sync::CancellationToken;

use super::{at, migrated};

/// The migrations this build ships, by version (the folder name before `_`, digits
/// only), the same list for both backends.
fn shipped_migrations() -> Vec<String> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut versions: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.split('_').next().unwrap().replace('-', "")
        })
        .collect();
    versions.sort();
    versions
}

/// Whether a write and a read succeed on `conn`.
async fn write_and_read(conn: &mut Conn) -> (bool, bool) {
    let wrote = conn.release_claims(1).await.is_ok();
    let read = conn.queue_depth().await.is_ok();
    (wrote, read)
}

async fn connect_opens_a_pool_on_the_backend_its_url_names(url: &str) {
    let db = Db::connect(url, 2).unwrap();
    assert_eq!(db.is_mysql(), url.starts_with("mysql://"));
    db.ping().await.unwrap();
}
conformance!(url: connect_opens_a_pool_on_the_backend_its_url_names);

async fn connect_with_read_only_access_refuses_writes_and_serves_reads(url: &str) {
    migrated(url).await;
    let read_only = Db::connect_with(url, 2, Access::ReadOnly).unwrap();
    let mut conn = read_only.get().await.unwrap();
    assert_eq!(write_and_read(&mut conn).await, (false, true));
    let read_write = Db::connect_with(url, 2, Access::ReadWrite).unwrap();
    let mut conn = read_write.get().await.unwrap();
    assert_eq!(write_and_read(&mut conn).await, (true, true));
}
conformance!(url: connect_with_read_only_access_refuses_writes_and_serves_reads);

async fn open_refuses_a_url_of_no_known_backend(url: &str) {
    let db = Db::open(url, Settings::new(2, Access::ReadWrite)).unwrap();
    db.ping().await.unwrap();
    let Err(refused) = Db::open(
        "postgres://localhost/couponsd",
        Settings::new(2, Access::ReadWrite),
    ) else {
        panic!("a postgres:// URL is refused");
    };
    assert!(matches!(refused, StoreError::Url(_)), "{refused}");
    assert!(!refused.is_retryable());
}
conformance!(url: open_refuses_a_url_of_no_known_backend);

/// The pool hands out at most its size: the next `get` waits until one comes back.
async fn get_hands_out_no_more_connections_than_the_pool_holds(url: &str) {
    let db = Db::connect(url, 1).unwrap();
    let first = db.get().await.unwrap();
    assert_eq!(matches!(first, Conn::Mysql(_)), db.is_mysql());
    let waited = tokio::time::timeout(Duration::from_millis(100), db.get()).await;
    assert!(waited.is_err(), "the one connection is out");
    drop(first);
    db.get().await.unwrap();
}
conformance!(url: get_hands_out_no_more_connections_than_the_pool_holds);

async fn migrate_applies_every_migration_once(url: &str) {
    let db = Db::connect(url, 2).unwrap();
    assert_eq!(db.migrate().await.unwrap(), shipped_migrations());
    assert_eq!(db.migrate().await.unwrap(), Vec::<String>::new());
}
conformance!(url: migrate_applies_every_migration_once);

/// It only reads, so a read-only pool can ask too.
async fn is_migrated_tells_whether_every_migration_was_applied(url: &str) {
    let read_only = Db::connect_with(url, 2, Access::ReadOnly).unwrap();
    assert!(!read_only.is_migrated().await.unwrap());
    let db = migrated(url).await;
    assert!(db.is_migrated().await.unwrap());
    assert!(read_only.is_migrated().await.unwrap());
}
conformance!(url: is_migrated_tells_whether_every_migration_was_applied);

async fn ping_answers_on_read_write_and_read_only_pools(url: &str) {
    Db::connect(url, 1).unwrap().ping().await.unwrap();
    let read_only = Db::connect_with(url, 1, Access::ReadOnly).unwrap();
    read_only.ping().await.unwrap();
}
conformance!(url: ping_answers_on_read_write_and_read_only_pools);

/// SQLite's clock is the host's, MariaDB's is on the same machine here: either way the
/// offset measured is a round trip's error at most.
async fn sync_clock_makes_now_the_database_clock(url: &str) {
    let db = Db::connect(url, 1).unwrap();
    db.sync_clock().await.unwrap();
    assert!(
        clock::offset().abs() < chrono::TimeDelta::seconds(1),
        "{:?}",
        clock::offset()
    );
    let drift = couponsd::store::now() - chrono::Utc::now().naive_utc();
    assert!(drift.abs() < chrono::TimeDelta::seconds(2), "{drift:?}");
}
conformance!(url: sync_clock_makes_now_the_database_clock);

async fn watch_reports_a_database_that_answers_up(url: &str) {
    let health = Arc::new(Health::default());
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let probe = tokio::spawn(watch(
        health.clone(),
        url.to_owned(),
        Settings::new(1, Access::ReadOnly),
        shutdown.clone(),
        move |up| {
            let _ = report.send(up);
        },
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), reports.recv()).await;
    assert_eq!(first.unwrap(), Some(true));
    assert!(health.is_up());
    shutdown.cancel();
    probe.await.unwrap();
}
conformance!(url: watch_reports_a_database_that_answers_up);

/// A statement the database refuses (here a second row with one `webhook-id`) is
/// neither a lost race to try again nor a lost connection nor a statement stopped.
async fn a_refused_statement_is_not_retryable_lost_or_interrupted(conn: &mut Conn) {
    let row = NewDelivery {
        webhook_id: "w1".into(),
        channel: "wallet".into(),
        event_type: "coupon.granted".into(),
        grant_id: None,
        payload: "{}".into(),
        next_attempt_at: at(0),
        created_at: at(0),
        hold_token: None,
    };
    conn.record_deliveries(std::slice::from_ref(&row))
        .await
        .unwrap();
    let refused = conn.record_deliveries(&[row]).await.unwrap_err();
    assert!(!couponsd::store::is_retryable(&refused), "{refused}");
    assert!(!couponsd::store::is_connection_lost(&refused), "{refused}");
    assert!(!couponsd::store::is_interrupted(&refused), "{refused}");
    assert!(!StoreError::Query(refused).is_retryable());
}
conformance!(a_refused_statement_is_not_retryable_lost_or_interrupted);
