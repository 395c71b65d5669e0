//! Store: every SQL statement couponsd runs, one file per table.
//!
//! Two backends share one schema: MySQL/MariaDB (production; claims with
//! `FOR UPDATE SKIP LOCKED`, READ COMMITTED sessions) and SQLite (the embedded default;
//! a single writer, so one pooled connection and no row locks). Each table's file
//! declares a trait with its operations and implements it for both connection types;
//! the differences between the backends stay inside those implementations.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::migration::MigrationSource;
use diesel::result::Error as DieselError;
use diesel::{ConnectionError, SqliteConnection};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;

pub mod catalog;
pub mod clock;
pub mod connect;
pub mod coupons;
pub mod deliveries;
pub mod grants;
pub mod health;
pub mod records;
pub mod prepared;
pub mod requests;
pub mod jobs;
pub mod schema;

pub use diesel::result::QueryResult;

/// The store's traits, for calling their operations on a connection.
pub mod prelude {
    pub use super::catalog::Catalog;
    pub use super::coupons::Coupons;
    pub use super::deliveries::Deliveries;
    pub use super::grants::Grants;
    pub use super::jobs::Jobs;
    pub use super::records::Records;
    pub use super::requests::Requests;
    pub use super::Store;
}

/// The MySQL/MariaDB connection type.
pub type MysqlConn = AsyncMysqlConnection;
/// The SQLite connection type: diesel's sync connection run on a blocking thread.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] DieselError),
    /// No connection could be had.
    #[error("database connection failed: {0}")]
    Connect(String),
    /// The schema could not be migrated.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database URL is not one couponsd knows.
    #[error("database.url: {0}")]
    Url(String),
}

impl StoreError {
    /// True for errors that a fresh attempt of the same transaction may not meet again:
    /// MariaDB deadlocks (1213) and lock-wait timeouts (1205), SQLite's busy database,
    /// and lost connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Query(e) => is_retryable(e),
            StoreError::Connect(_) => true,
            StoreError::Migration(_) | StoreError::Url(_) => false,
        }
    }
}

/// True when `error` is a deadlock, a lock-wait timeout or a busy SQLite database.
///
/// diesel-async maps MariaDB's 1213 and 1205 to `DatabaseErrorKind::Unknown`, so the
/// server's message is what tells them apart ("… try restarting transaction").
pub fn is_retryable(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(_, info) => {
            let message = info.message();
            message.contains("try restarting transaction")
                || message.contains("database is locked")
                || message.contains("Lock wait timeout")
        }
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

/// True when `error` says the connection to the database broke (the statement may
/// never have reached it), as opposed to the database refusing the statement.
pub fn is_connection_lost(error: &DieselError) -> bool {
    use diesel::result::DatabaseErrorKind as Kind;
    match error {
        DieselError::DatabaseError(Kind::ClosedConnection | Kind::UnableToSendCommand, _) => true,
        DieselError::DatabaseError(_, info) => {
            let message = info.message().to_ascii_lowercase();
            [
                "connection",
                "gone away",
                "broken pipe",
                "timed out",
                "io error",
            ]
            .iter()
            .any(|m| message.contains(m))
        }
        DieselError::BrokenTransactionManager | DieselError::AlreadyInTransaction => true,
        _ => false,
    }
}

/// True when the database stopped the statement: `database.statement_timeout` ran out
/// (MariaDB 1969, MySQL 3024) or it was killed (1317). The fault is the database's
/// load, not the statement's.
pub fn is_interrupted(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(_, info) => info.message().contains("execution was interrupted"),
        _ => false,
    }
}

/// A pool of connections to one of the two backends.
#[derive(Clone)]
pub enum Db {
    /// MySQL or MariaDB.
    Mysql(Pool<MysqlConn>),
    /// SQLite.
    Sqlite(Pool<SqliteConn>),
}

/// A pooled connection, whichever the backend.
pub enum Conn {
    /// MySQL or MariaDB.
    Mysql(Object<MysqlConn>),
    /// SQLite.
    Sqlite(Object<SqliteConn>),
}

/// Runs `$body` with `$conn` bound to a `&mut` pooled connection of the right type.
/// `$body` is compiled once per backend, so it may call the store's traits generically.
#[macro_export]
macro_rules! with_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        match $db.get().await? {
            $crate::store::Conn::Mysql(mut pooled) => {
                #[allow(unused_imports)]
                use $crate::store::prelude::*;
                let $conn: &mut $crate::store::MysqlConn = &mut *pooled;
                $body
            }
            $crate::store::Conn::Sqlite(mut pooled) => {
                #[allow(unused_imports)]
                use $crate::store::prelude::*;
                let $conn: &mut $crate::store::SqliteConn = &mut *pooled;
                $body
            }
        }
    };
}

/// What the connections of a pool may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write: the daemon, `migrate` and the commands that change something.
    ReadWrite,
    /// Read only, enforced by the database: every session is `READ ONLY` on MySQL and
    /// `query_only` on SQLite, so a statement that would write fails instead.
    ReadOnly,
}

/// How a pool's connections are made and bounded (`database.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Connections in the pool (SQLite always has one).
    pub max_connections: usize,
    /// The longest a new connection or a wait for a pooled one may take.
    pub connect_timeout: Duration,
    /// The longest one statement may run.
    pub statement_timeout: Duration,
    /// Idle time before the kernel probes a MySQL connection.
    pub tcp_keepalive: Duration,
    /// What the sessions may do.
    pub access: Access,
}

impl Settings {
    /// The defaults of `database.*`, with `max_connections` connections.
    pub fn new(max_connections: usize, access: Access) -> Self {
        Settings {
            max_connections,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(15),
            access,
        }
    }
}

impl Db {
    /// Opens a pool for `url` (`mysql://…` or `sqlite://PATH`) with the default
    /// settings; SQLite gets one connection because it has one writer.
    pub fn connect(url: &str, max_connections: usize) -> Result<Db, StoreError> {
        Db::open(url, Settings::new(max_connections, Access::ReadWrite))
    }

    /// Opens a pool whose connections may do what `access` allows.
    pub fn connect_with(
        url: &str,
        max_connections: usize,
        access: Access,
    ) -> Result<Db, StoreError> {
        Db::open(url, Settings::new(max_connections, access))
    }

    /// Opens a pool with `settings`. Making a connection, waiting for a free one and
    /// checking an idle one before it is handed out each take `connect_timeout` at
    /// most; every session's statements are limited to `statement_timeout` by the
    /// database itself.
    pub fn open(url: &str, settings: Settings) -> Result<Db, StoreError> {
        let timeout = Some(settings.connect_timeout);
        if url.starts_with("mysql://") {
            let mut config = ManagerConfig::<MysqlConn>::default();
            config.custom_setup =
                Box::new(move |url| setup_mysql(url.to_owned(), settings).boxed());
            let manager = AsyncDieselConnectionManager::new_with_config(url, config);
            let pool = Pool::builder(manager)
                .max_size(settings.max_connections.max(1))
                .create_timeout(timeout)
                .wait_timeout(timeout)
                .recycle_timeout(timeout)
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Connect(e.to_string()))?;
            Ok(Db::Mysql(pool))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let mut config = ManagerConfig::<SqliteConn>::default();
            config.custom_setup = Box::new(move |path| {
                setup_sqlite(path.to_owned(), settings.access, settings).boxed()
            });
            let manager = AsyncDieselConnectionManager::new_with_config(path, config);
            // No wait timeout: the one connection is SQLite's one writer, and a worker
            // waits for it while another commits; a lock held too long ends in the
            // busy timeout of the one holding it.
            let pool = Pool::builder(manager)
                .max_size(1)
                .create_timeout(timeout)
                .recycle_timeout(timeout)
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Connect(e.to_string()))?;
            Ok(Db::Sqlite(pool))
        } else {
            Err(StoreError::Url(
                "must start with mysql:// or sqlite://".to_owned(),
            ))
        }
    }

    /// True for MySQL/MariaDB.
    pub fn is_mysql(&self) -> bool {
        matches!(self, Db::Mysql(_))
    }

    /// Takes a connection from the pool.
    pub async fn get(&self) -> Result<Conn, StoreError> {
        let describe = |e: &dyn std::fmt::Display| StoreError::Connect(e.to_string());
        Ok(match self {
            Db::Mysql(pool) => Conn::Mysql(pool.get().await.map_err(|e| describe(&e))?),
            Db::Sqlite(pool) => Conn::Sqlite(pool.get().await.map_err(|e| describe(&e))?),
        })
    }

    /// Creates or upgrades the schema; returns the names of the migrations applied.
    /// Migrations are not bounded by `database.statement_timeout`: an `ALTER` of a
    /// large table may take longer, and stopping it half-way helps nobody.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.get().await?;
        if let Conn::Mysql(c) = &mut conn {
            set_statement_limit(c, Duration::ZERO).await?;
        }
        // The harness drives the async connection with `block_on`: keep it off the
        // runtime's worker threads.
        tokio::task::spawn_blocking(move || {
            let applied = match conn {
                Conn::Mysql(c) => run_migrations(c, MYSQL_MIGRATIONS),
                Conn::Sqlite(c) => run_migrations(c, SQLITE_MIGRATIONS),
            }?;
            Ok(applied)
        })
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))?
    }

    /// True when every migration this build knows has been applied. It only reads
    /// (the migration harness would first create its table, which a read-only session
    /// refuses), so a database never migrated is simply not up to date.
    pub async fn is_migrated(&self) -> Result<bool, StoreError> {
        use diesel_async::RunQueryDsl;
        let (has_table, known) = match self {
            Db::Mysql(_) => (
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = '__diesel_schema_migrations'",
                versions::<diesel::mysql::Mysql>(MYSQL_MIGRATIONS)?,
            ),
            Db::Sqlite(_) => (
                "SELECT COUNT(*) AS n FROM sqlite_master \
                 WHERE type = 'table' AND name = '__diesel_schema_migrations'",
                versions::<diesel::sqlite::Sqlite>(SQLITE_MIGRATIONS)?,
            ),
        };
        let applied: Vec<AppliedMigration> = with_conn!(self, |conn| {
            let tables: Vec<TableCount> = diesel::sql_query(has_table).load(conn).await?;
            if !tables.iter().any(|t| t.n > 0) {
                Vec::new()
            } else {
                diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
                    .load(conn)
                    .await?
            }
        });
        Ok(known
            .iter()
            .all(|v| applied.iter().any(|a| &a.version == v)))
    }

    /// One round trip, to prove the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn| conn.batch_execute("SELECT 1").await?);
        Ok(())
    }

    /// Reads the database's clock once and records its offset from the host's
    /// ([`clock`]): a round trip that also proves the database answers. The daemon's
    /// probe reads it again every second ([`health`]).
    pub async fn sync_clock(&self) -> Result<(), StoreError> {
        match self.get().await? {
            Conn::Mysql(mut conn) => health::read_mysql_clock(&mut conn).await?,
            Conn::Sqlite(mut conn) => health::read_sqlite_clock(&mut conn).await?,
        }
        Ok(())
    }
}

fn run_migrations<C>(conn: C, migrations: EmbeddedMigrations) -> Result<Vec<String>, StoreError>
where
    C: AsyncConnection + 'static,
    diesel_async::AsyncMigrationHarness<C>: MigrationHarness<C::Backend>,
{
    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
    harness
        .run_pending_migrations(migrations)
        .map(|applied| applied.iter().map(ToString::to_string).collect())
        .map_err(|e| StoreError::Migration(e.to_string()))
}

/// The versions of the migrations built in, as the harness records them.
fn versions<DB: diesel::backend::Backend>(
    migrations: EmbeddedMigrations,
) -> Result<Vec<String>, StoreError>
where
    EmbeddedMigrations: MigrationSource<DB>,
{
    let all = MigrationSource::<DB>::migrations(&migrations)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    Ok(all.iter().map(|m| m.name().version().to_string()).collect())
}

#[derive(diesel::QueryableByName)]
struct TableCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct AppliedMigration {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
}

async fn setup_mysql(url: String, settings: Settings) -> Result<MysqlConn, ConnectionError> {
    let mut conn = connect::establish(&url, &settings).await?;
    let access = settings.access;
    // READ COMMITTED: locking reads take record locks only, no gap locks, so claims and
    // stock updates of different daemons do not block each other's inserts.
    let setup = match access {
        Access::ReadWrite => {
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
             SET SESSION innodb_lock_wait_timeout = 10"
        }
        // Every later transaction of the session, autocommitted statements included,
        // is read-only: a write fails with 1792.
        Access::ReadOnly => {
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
             SET SESSION TRANSACTION READ ONLY"
        }
    };
    conn.batch_execute(setup)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    set_statement_limit(&mut conn, settings.statement_timeout)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// MariaDB's `max_statement_time` (seconds, any statement) and, failing that,
/// MySQL's `max_execution_time` (milliseconds, `SELECT`s only); zero lifts the limit.
fn statement_limit_sql(limit: Duration) -> (String, String) {
    (
        format!(
            "SET SESSION max_statement_time = {:.3}",
            limit.as_secs_f64()
        ),
        format!("SET SESSION max_execution_time = {}", limit.as_millis()),
    )
}

/// Limits every statement of the session to `limit` on the server: a statement that
/// runs longer (a lock queue, a plan gone wrong) is stopped there and fails. A server
/// that does not answer at all is another matter: see `daemon` and [`health`].
async fn set_statement_limit(conn: &mut MysqlConn, limit: Duration) -> QueryResult<()> {
    let (mariadb, mysql) = statement_limit_sql(limit);
    match conn.batch_execute(&mariadb).await {
        // 1193: unknown system variable, on MySQL.
        Err(DieselError::DatabaseError(_, info))
            if info.message().contains("max_statement_time") =>
        {
            conn.batch_execute(&mysql).await
        }
        other => other,
    }
}

async fn setup_sqlite(
    path: String,
    access: Access,
    settings: Settings,
) -> Result<SqliteConn, ConnectionError> {
    let mut conn = SqliteConn::establish(&path).await?;
    // A statement waits at most `statement_timeout` for another connection's lock.
    let busy = settings.statement_timeout.as_millis().max(1);
    let setup = match access {
        Access::ReadWrite => format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA busy_timeout = {busy}; PRAGMA foreign_keys = ON;"
        ),
        // Not even the journal mode: setting it writes the file header.
        Access::ReadOnly => format!("PRAGMA busy_timeout = {busy}; PRAGMA query_only = ON;"),
    };
    conn.batch_execute(&setup)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// The database's current time (UTC, no zone): the host's clock corrected by the
/// offset of the database's ([`clock`]). Leases, holds and ticks are read from it.
pub fn now() -> NaiveDateTime {
    clock::now()
}

/// Every store operation, on one connection of either backend.
pub trait Store:
    AsyncConnection
    + requests::Requests
    + grants::Grants
    + coupons::Coupons
    + deliveries::Deliveries
    + catalog::Catalog
    + jobs::Jobs
    + records::Records
    + Send
{
}

impl Store for MysqlConn {}
impl Store for SqliteConn {}

/// Picks the MySQL or the SQLite variant of a piece of code inside a store impl macro.
macro_rules! backend {
    (mysql, mysql => $m:block, sqlite => $s:block) => {
        $m
    };
    (sqlite, mysql => $m:block, sqlite => $s:block) => {
        $s
    };
}
pub(crate) use backend;

/// Runs `$f` in a transaction that reads and then writes. On SQLite it begins
/// `IMMEDIATE`, taking the write lock first (waiting up to `busy_timeout` for it): a
/// deferred transaction that read first fails at once with "database is locked" when
/// another connection wrote meanwhile, which no busy timeout waits out.
macro_rules! write_transaction {
    (mysql, $conn:expr, $f:expr) => {
        $conn.transaction($f).await
    };
    (sqlite, $conn:expr, $f:expr) => {
        $conn.immediate_transaction($f).await
    };
}
pub(crate) use write_transaction;

/// Inserts many rows. On MySQL in one statement per power-of-two chunk (200 rows are
/// 128 + 64 + 8), each kept prepared by the connection: a multi-row insert prepared
/// afresh costs a column definition per value (see `prepared`). diesel-async cannot
/// send SQLite's multi-row insert, so on SQLite one statement runs on the wrapped sync
/// connection (inside the same transaction), where a prepare is cheap.
macro_rules! insert_all {
    (mysql, $conn:expr, $table:expr, $rows:expr) => {{
        let mut inserted = 0;
        for chunk in $crate::store::prepared::pow2_chunks($rows) {
            let insert = diesel::insert_into($table).values(chunk);
            inserted += $crate::store::prepared::Cached(insert)
                .execute(&mut *$conn)
                .await?;
        }
        diesel::QueryResult::Ok(inserted)
    }};
    (sqlite, $conn:expr, $table:expr, $rows:expr) => {{
        let rows = $rows.to_vec();
        $conn
            .spawn_blocking(move |sync| {
                diesel::RunQueryDsl::execute(diesel::insert_into($table).values(&rows), sync)
            })
            .await
    }};
}
pub(crate) use insert_all;
