//! Test helpers: a fresh database per test (MariaDB or SQLite), a real webhook receiver
//! on 127.0.0.1:0, configs and contexts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use couponsd::config::Config;
use couponsd::installation::Installation;
use couponsd::pipeline::dispatch::send::Sender;
use couponsd::rules::Rules;
use couponsd::runtime::Daemon;
use couponsd::store::{Conn, Db};
use diesel::sql_types::{Nullable, Text};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

/// The signing secret every test channel uses.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Mysql,
    Sqlite,
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub url: String,
    server: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, name)) = self.server.take() {
            // Drop runs outside any runtime guarantee: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) =
                        AsyncMysqlConnection::establish(&format!("{server}/mysql")).await
                    {
                        let _ = conn
                            .batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A temp folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "couponsd-test-{tag}-{}-{n}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// The MariaDB server tests use.
pub fn mysql_server() -> String {
    std::env::var("COUPONSD_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A fresh database, or `None` (with the reason printed) when MariaDB is unreachable
/// outside CI. In CI a MySQL test never skips.
pub async fn fresh_db(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => {
            let dir = TempDir::new("sqlite");
            Some(TestDb {
                url: format!("sqlite://{}", dir.0.join("couponsd.db").display()),
                server: None,
                _dir: Some(dir),
            })
        }
        Backend::Mysql => {
            let server = mysql_server();
            let mut conn = match AsyncMysqlConnection::establish(&format!("{server}/mysql")).await {
                Ok(conn) => conn,
                Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                    eprintln!("SKIPPED: MariaDB is not reachable at {server} ({e}); set COUPONSD_TEST_MYSQL_URL or start MariaDB (see DEVELOPERS.md)");
                    return None;
                }
                Err(e) => panic!("CI=true and MariaDB is not reachable at {server}: {e}"),
            };
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("couponsd_t_{}_{n}_{}", std::process::id(), rand_suffix());
            conn.batch_execute(&format!("CREATE DATABASE `{name}`"))
                .await
                .unwrap();
            Some(TestDb {
                url: format!("{server}/{name}"),
                server: Some((server, name)),
                _dir: None,
            })
        }
    }
}

/// The shipped rules folder.
pub fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// A config for `db` with channels `wallet`, `ops` and `sms` pointing at `receiver`, the
/// given campaigns YAML (a list) and extra top-level YAML.
pub fn config(
    db: &TestDb,
    receiver: &Receiver,
    rules: &Path,
    campaigns: &str,
    extra: &str,
) -> Config {
    let yaml = config_yaml(db, receiver, rules, campaigns, extra);
    Config::from_yaml_with_env(&yaml, Path::new("test.yaml"), &|_| None)
        .unwrap_or_else(|e| panic!("test config does not load: {e}\n{yaml}"))
}

/// The YAML of [`config`], for a config file the `couponsd` binary reads.
pub fn config_yaml(
    db: &TestDb,
    receiver: &Receiver,
    rules: &Path,
    campaigns: &str,
    extra: &str,
) -> String {
    format!(
        r#"database:
  url: "{url}"
  max_connections: 12
rules:
  dir: "{rules}"
worker:
  batch_size: 50
  poll_interval: 20ms
dispatch:
  retry_base: 20ms
  retry_max: 200ms
channels:
  wallet:
    url: "{base}/webhooks/wallet"
    secret: "{SECRET}"
    timeout: 2s
    max_attempts: 5
  ops:
    url: "{base}/webhooks/ops"
    secret: "{SECRET}"
    timeout: 2s
  sms:
    url: "{base}/webhooks/sms"
    secret: "{SECRET}"
    timeout: 2s
campaigns:
{campaigns}
{extra}"#,
        url = db.url,
        rules = rules.display(),
        base = receiver.base_url(),
    )
}

/// The two standard campaigns: newcomers get NEW10 (`hot` in stock) then NEW8; the
/// returning get BACK5.
pub fn standard_campaigns(hot: i64) -> String {
    format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: NEW10, face_value: "10.00", stock: {hot}, channel: wallet }}
      - {{ id: NEW8, face_value: "8.00", stock: 100000, channel: wallet }}
  - id: loyalty
    event: app_open
    audience: returning
    coupons:
      - {{ id: BACK5, face_value: "5.00", stock: 100000, channel: wallet }}"#
    )
}

/// A migrated database with the catalog applied, and a context on it.
pub async fn context(config: Config) -> Daemon {
    let config = Arc::new(config);
    let db = Db::connect(
        config.database.url.expose(),
        config.database.max_connections,
    )
    .unwrap();
    db.migrate().await.unwrap();
    couponsd::runtime::apply_catalog(&db, &config)
        .await
        .unwrap();
    let rules = Rules::load(&config.rules.dir, &config.rules.limits).expect("rules compile");
    Daemon::new(db, config, rules, Sender::new().unwrap())
}

/// The plain handle an operator command works on: the context's database and config.
pub fn installation(ctx: &Daemon) -> Installation {
    Installation {
        db: ctx.db.clone(),
        config: ctx.config.clone(),
        rules_version: ctx.rules.current().version().clone(),
    }
}

/// Inserts a trigger request the way a client app does: plain SQL.
pub async fn insert(
    ctx: &Daemon,
    key: &str,
    user: &str,
    event: &str,
    attributes: Option<&str>,
) -> Result<(), String> {
    let query = diesel::sql_query(
        "INSERT INTO trigger_requests (request_key, user_id, event, attributes) VALUES (?, ?, ?, ?)",
    )
    .bind::<Text, _>(key)
    .bind::<Text, _>(user)
    .bind::<Text, _>(event)
    .bind::<Nullable<Text>, _>(attributes);
    let mut conn = ctx.db.get().await.unwrap();
    let result = conn.execute(query).await;
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// Writes a grant for the request `key` straight into the ledger, as if an earlier
/// version had granted it; a batch that holds the request then fails on its insert.
pub async fn plant_grant(ctx: &Daemon, key: &str) {
    let sql = format!(
        "INSERT INTO grants (id, request_id, user_id, event, campaign_id, coupon_id, \
         face_value_cents, user_type, rules_version, granted_at) \
         SELECT id, id, user_id, event, 'newcomer', 'NEW10', 1000, 'first_time', 'planted', \
         created_at FROM trigger_requests WHERE request_key = '{key}'"
    );
    execute(ctx, &sql).await;
}

/// Runs one SQL statement on either backend.
pub async fn execute(ctx: &Daemon, sql: &str) -> usize {
    let mut conn = ctx.db.get().await.unwrap();
    conn.execute(diesel::sql_query(sql)).await.unwrap()
}

/// Runs a query returning rows of (String, Option<String>, i64)-like text, for asserts.
pub async fn query_rows<T>(ctx: &Daemon, sql: &str) -> Vec<T>
where
    T: diesel::QueryableByName<diesel::mysql::Mysql>
        + diesel::QueryableByName<diesel::sqlite::Sqlite>
        + Send
        + 'static,
{
    let mut conn = ctx.db.get().await.unwrap();
    conn.load(diesel::sql_query(sql)).await.unwrap()
}

/// One row of `SELECT ... AS k, ... AS n`.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct KeyCount {
    #[diesel(sql_type = Text)]
    pub k: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// Counts rows grouped by one text expression: `counts(ctx, "outcome", "trigger_requests")`.
pub async fn counts(ctx: &Daemon, expr: &str, from: &str) -> HashMap<String, i64> {
    let sql = format!("SELECT COALESCE({expr}, '') AS k, CAST(COUNT(*) AS SIGNED) AS n FROM {from} GROUP BY COALESCE({expr}, '')");
    let sql = if matches!(ctx.db, Db::Sqlite(_)) {
        sql.replace("AS SIGNED", "AS INTEGER")
    } else {
        sql
    };
    query_rows::<KeyCount>(ctx, &sql)
        .await
        .into_iter()
        .map(|r| (r.k, r.n))
        .collect()
}

/// A webhook delivery the receiver saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    pub verified: bool,
}

type Responder = dyn Fn(usize, &Seen) -> StatusCode + Send + Sync;

struct ReceiverState {
    seen: Mutex<Vec<Seen>>,
    respond: Box<Responder>,
    /// The partner's key: `SECRET` unless the test rotates it.
    secret: String,
}

/// A real HTTP webhook receiver on 127.0.0.1:0 that verifies every signature with the
/// reference `standardwebhooks` crate.
#[derive(Clone)]
pub struct Receiver {
    port: u16,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// A receiver that answers 204 to everything.
    pub async fn ok() -> Receiver {
        Receiver::start(|_, _| StatusCode::NO_CONTENT).await
    }

    /// A receiver whose answer depends on how many requests it saw before (0-based)
    /// and the request itself.
    pub async fn start(
        respond: impl Fn(usize, &Seen) -> StatusCode + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::verifying_with(SECRET, respond).await
    }

    /// A receiver like `start` that verifies with `secret` (a `whsec_` key) only.
    pub async fn verifying_with(
        secret: &str,
        respond: impl Fn(usize, &Seen) -> StatusCode + Send + Sync + 'static,
    ) -> Receiver {
        let state = Arc::new(ReceiverState {
            seen: Mutex::new(Vec::new()),
            respond: Box::new(respond),
            secret: secret.to_owned(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/webhooks/{channel}", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { port, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let verified = standardwebhooks::Webhook::new(&state.secret)
        .map(|w| w.verify(body.as_bytes(), &headers).is_ok())
        .unwrap_or(false);
    let seen = Seen {
        path: uri.path().to_owned(),
        headers,
        body,
        verified,
    };
    let mut all = state.seen.lock().unwrap();
    let status = (state.respond)(all.len(), &seen);
    all.push(seen);
    status
}

/// Calls `process_batch` until the queue is empty, then `dispatch_due` until nothing
/// is due; returns the number of batches.
pub async fn drain(ctx: &Daemon) -> usize {
    couponsd::runtime::run_loops(
        ctx.clone(),
        couponsd::runtime::Mode::Drain,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    0
}

/// Runs the store operations `op` on a connection of the context's database and
/// returns what they returned; panics on an error.
pub async fn store<T, E: std::fmt::Debug>(
    ctx: &Daemon,
    op: impl AsyncFnOnce(&mut Conn) -> Result<T, E>,
) -> T {
    let mut conn = ctx.db.get().await.unwrap();
    op(&mut conn).await.unwrap()
}

/// Declares a test that runs once on MariaDB and once on SQLite.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_mariadb() {
                if let Some(db) = $crate::support::fresh_db($crate::support::Backend::Mysql).await {
                    $body(db).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                let db = $crate::support::fresh_db($crate::support::Backend::Sqlite)
                    .await
                    .unwrap();
                $body(db).await;
            }
        }
    };
}

/// Imports `n` codes `{prefix}{i}` into a pool coupon with the store's import
/// operation (`codes import`): each chunk's rows and the coupon's stock in one
/// transaction.
pub async fn seed_pool(ctx: &Daemon, coupon: &str, prefix: &str, n: usize) {
    let codes: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut conn = ctx.db.get().await.unwrap();
    for chunk in codes.chunks(5000) {
        let imported = conn
            .import_chunk(coupon, chunk, couponsd::store::now())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no coupon {coupon}"));
        assert_eq!(imported.imported, chunk.len(), "every code is new");
    }
}

/// Runs `couponsd demo --users USERS` in a temporary folder and returns what it
/// printed, once it succeeded; removes the demo's throwaway workspace.
pub fn demo(users: usize) -> String {
    let dir = TempDir::new("demo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_couponsd"))
        .args(["demo", "--users", &users.to_string()])
        .current_dir(&dir.0)
        .env_remove("COUPONSD_CONFIG")
        .output()
        .expect("couponsd runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(workspace) = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("workspace"))
    {
        let _ = std::fs::remove_dir_all(workspace.trim());
    }
    stdout
}

/// Runs the `couponsd` binary with `--config config` and `args`, without the
/// environment's database URL, and returns what it printed and its exit status.
pub fn couponsd(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_couponsd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("COUPONSD_DATABASE_URL")
        .output()
        .expect("couponsd runs")
}
