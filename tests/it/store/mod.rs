//! The store conformance suite: every store operation has one test body, written once
//! against [`Conn`], and each test runs that body on SQLite and then on MariaDB, each
//! time on a fresh migrated database. A backend difference shows as a test that passes
//! on one backend and fails on the other, and the failure names the backend.
//!
//! A body is a plain `async fn body(conn: &mut Conn)`: it calls the store's operations,
//! which are methods of `Conn`, and [`PlainSql`] when it sets up or reads back rows the
//! store has no operation for. `conformance!(body)` declares it a test, which hands it
//! a connection taken from a pool on each backend's database (`Db::get`). An operation
//! on `Db` itself takes the fresh database's URL, unmigrated, and is declared by
//! `conformance!(url: body)`. Times are explicit ([`at`]) wherever an operation takes
//! one, so nothing waits on the clock.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use couponsd::config::{CampaignConfig, CouponConfig};
use couponsd::domain::{CampaignId, ChannelName, CouponId, Event, Money, UserType};
use couponsd::store::grants::NewGrant;
use couponsd::store::requests::NewRequest;
use couponsd::store::{Conn, Db};
use diesel::sql_types::{BigInt, Nullable, Text};
use futures_util::FutureExt;

use crate::support::{fresh_db, Backend, TestDb};

/// Declares the test `$body::on_sqlite_and_mariadb`, which runs the function `$body`
/// on each backend: with a connection of a migrated database (`conformance!(body)`), or
/// with the URL of a database not yet migrated (`conformance!(url: body)`). In the first
/// form, attributes before the name go on the test (`conformance!(#[ignore = "why"] body)`).
macro_rules! conformance {
    (url: $body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite_and_mariadb() {
                $crate::store::on_each_backend(false, async |url: &str| super::$body(url).await)
                    .await;
            }
        }
    };
    ($(#[$attr:meta])* $body:ident) => {
        mod $body {
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite_and_mariadb() {
                $crate::store::on_each_backend(true, async |url: &str| {
                    let db = couponsd::store::Db::connect(url, 4).unwrap();
                    let mut conn = db.get().await.unwrap();
                    super::$body(&mut conn).await
                })
                .await;
            }
        }
    };
}

mod campaign_days;
mod catalog;
mod codes;
mod coupons;
mod db;
mod deliveries;
mod expiry;
mod grants;
mod records;
mod lifecycle;
mod report;
mod requests;
mod updates;
mod jobs;
mod migrations;

/// Runs `test` on a fresh SQLite database and on a fresh MariaDB database (skipped
/// outside CI when MariaDB is unreachable, as `fresh_db` says), given its URL; with
/// `migrate`, the databases are migrated first. A panic on one backend does not keep the
/// other from running; the test then fails naming the backends it failed on.
pub async fn on_each_backend(migrate: bool, test: impl AsyncFn(&str)) {
    let run = async |backend: Backend, database: Option<TestDb>| {
        let database = database?;
        eprintln!("---- on {backend:?}");
        let outcome = AssertUnwindSafe(test(&database.url)).catch_unwind().await;
        outcome.is_err().then_some(backend)
    };
    // SQLite runs while MariaDB is made and migrated: its DDL is most of a test's time.
    let (on_sqlite, mariadb) = tokio::join!(
        async { run(Backend::Sqlite, prepare(Backend::Sqlite, migrate).await).await },
        prepare(Backend::Mysql, migrate)
    );
    let on_mariadb = run(Backend::Mysql, mariadb).await;
    let failed: Vec<Backend> = [on_sqlite, on_mariadb].into_iter().flatten().collect();
    assert!(
        failed.is_empty(),
        "failed on {failed:?}: the panic printed under \"---- on …\" says why"
    );
}

/// A fresh database of `backend` (see `fresh_db`), migrated when `migrate` is set.
async fn prepare(backend: Backend, migrate: bool) -> Option<TestDb> {
    let database = fresh_db(backend).await?;
    if migrate {
        migrated(&database.url).await;
    }
    Some(database)
}

/// Runs `op` on a connection of `daemon` while a client, on a connection of its own to
/// `url`, holds a transaction that wrote open and then commits it; returns what `op`
/// returned. An operation that reads and then writes must not fail for it: MySQL locks
/// rows, and on SQLite the one writer must be taken before the read, since a
/// transaction that read first cannot wait for the writer to finish (see
/// `Conn::write_transaction` in `src/store/conn.rs`).
pub async fn while_a_client_commits<T>(
    daemon: &Db,
    url: &str,
    op: impl AsyncFnOnce(&mut Conn) -> T,
) -> T {
    let client = Db::connect(url, 1).unwrap();
    let (wrote, written) = tokio::sync::oneshot::channel();
    let (_, done) = tokio::join!(
        async {
            let mut conn = client.get().await.unwrap();
            insert_and_commit_a_moment_later(&mut conn, wrote).await
        },
        async {
            written.await.unwrap();
            let mut conn = daemon.get().await.unwrap();
            op(&mut conn).await
        },
    );
    done
}

/// A client's insert, in a transaction held open a moment after it wrote (said on
/// `wrote`), as a client app busy inserting requests may.
async fn insert_and_commit_a_moment_later(
    conn: &mut Conn,
    wrote: tokio::sync::oneshot::Sender<()>,
) {
    conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
        conn.exec(
            "INSERT INTO trigger_requests (request_key, user_id, event) \
             VALUES ('late', 'u', 'app_open')",
        )
        .await;
        wrote.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok(())
    })
    .await
    .unwrap();
}

/// A fresh pool on `url`, migrated.
pub async fn migrated(url: &str) -> Db {
    let db = Db::connect(url, 4).unwrap();
    db.migrate().await.unwrap();
    db
}

/// `seconds` after the suite's epoch, 2026-12-01 12:00:00: the times the tests pass.
pub fn at(seconds: i64) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        + TimeDelta::seconds(seconds)
}

/// Plain SQL for what the store has no operation for: rows a client (or an operator)
/// writes by hand, and columns read back to check what an operation wrote. A trait only
/// because `Conn` is the library's: the tests add these two methods to it.
pub trait PlainSql {
    /// Runs one statement; returns the rows it changed.
    fn exec(&mut self, sql: &str) -> impl Future<Output = usize> + Send;

    /// Runs one query.
    fn rows<T>(&mut self, sql: &str) -> impl Future<Output = Vec<T>> + Send
    where
        T: diesel::QueryableByName<diesel::mysql::Mysql>
            + diesel::QueryableByName<diesel::sqlite::Sqlite>
            + Send
            + 'static;
}

impl PlainSql for Conn {
    async fn exec(&mut self, sql: &str) -> usize {
        self.execute(diesel::sql_query(sql))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", shortened(sql)))
    }

    async fn rows<T>(&mut self, sql: &str) -> Vec<T>
    where
        T: diesel::QueryableByName<diesel::mysql::Mysql>
            + diesel::QueryableByName<diesel::sqlite::Sqlite>
            + Send
            + 'static,
    {
        self.load(diesel::sql_query(sql))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", shortened(sql)))
    }
}

/// A statement as a failure shows it: its first 200 characters.
fn shortened(sql: &str) -> &str {
    sql.char_indices().nth(200).map_or(sql, |(i, _)| &sql[..i])
}

/// One request's columns that the store writes, as read back.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct RequestState {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub outcome: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub claim_token: Option<i64>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamp>)]
    pub claimed_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamp>)]
    pub processed_at: Option<NaiveDateTime>,
}

/// Every request as the store left it, by id.
pub async fn requests(conn: &mut Conn) -> Vec<RequestState> {
    conn.rows(
        "SELECT id, status, outcome, error, attempts, claim_token, claimed_at, processed_at \
         FROM trigger_requests ORDER BY id",
    )
    .await
}

/// Queues one request per key (user `u-KEY`, event `app_open`); returns their ids.
pub async fn queue_requests(conn: &mut Conn, keys: &[&str]) -> Vec<i64> {
    let rows: Vec<NewRequest> = keys
        .iter()
        .map(|key| NewRequest {
            request_key: (*key).to_owned(),
            user_id: format!("u-{key}"),
            event: "app_open".to_owned(),
            attributes: None,
        })
        .collect();
    assert_eq!(conn.enqueue(&rows).await.unwrap(), keys.len());
    let ids: Vec<i64> = requests(conn).await.iter().map(|r| r.id).collect();
    ids[ids.len() - keys.len()..].to_vec()
}

/// A grant for the request `id` (a grant's id is its request's).
pub fn grant(id: i64, user: &str, (campaign, coupon): (&str, &str), at: NaiveDateTime) -> NewGrant {
    NewGrant {
        id,
        request_id: id,
        user_id: user.to_owned(),
        event: "app_open".to_owned(),
        campaign_id: campaign.to_owned(),
        coupon_id: coupon.to_owned(),
        face_value_cents: 1000,
        user_type: "first_time".to_owned(),
        rules_version: "v1".to_owned(),
        granted_at: at,
        code: None,
        valid_from: None,
        expires_at: None,
    }
}

/// The catalog most tests start from: `newcomer` with a budget of 50.00 and the chain
/// NEW10 (10 in stock), NEW8 (100); `loyalty` without a budget, with BACK5 (50).
pub fn two_campaigns() -> [CampaignConfig; 2] {
    [
        campaign("newcomer", Some(5000), &[("NEW10", 10), ("NEW8", 100)]),
        campaign("loyalty", None, &[("BACK5", 50)]),
    ]
}

/// A campaign for `app_open` with the chain `coupons` (id, stock), each worth 10.00 on
/// channel `wallet`, and an optional budget in cents.
pub fn campaign(id: &str, budget: Option<i64>, coupons: &[(&str, i64)]) -> CampaignConfig {
    CampaignConfig {
        id: CampaignId::parse(id).unwrap(),
        event: Event::parse("app_open").unwrap(),
        audience: UserType::parse("first_time").unwrap(),
        per_user_limit: 1,
        per_user_limit_period: None,
        daily_budget: None,
        timezone: chrono_tz::Tz::UTC,
        starts_at: None,
        ends_at: None,
        budget: budget.map(Money::from_cents),
        coupons: coupons
            .iter()
            .map(|(id, stock)| CouponConfig {
                id: CouponId::parse(id).unwrap(),
                face_value: Money::from_cents(1000),
                stock: *stock,
                low_stock: 2,
                channel: ChannelName::parse("wallet").unwrap(),
                codes: None,
                remind_before: None,
                validity: Default::default(),
            })
            .collect(),
    }
}
