//! Store: every SQL statement couponsd runs, one file per table.
//!
//! Two backends share one schema: MySQL/MariaDB (production; claims with
//! `FOR UPDATE SKIP LOCKED`, READ COMMITTED sessions) and SQLite (the embedded default;
//! a single writer, so one pooled connection and no row locks). [`Db`] is the pool and
//! [`Conn`] one connection of either backend ([`conn`], the one place that picks the
//! backend). Each table's file adds its operations to `Conn`, written once with
//! diesel's query builder; where the backends' SQL differs, the operation says so
//! beside the query (`load_either`, `write_transaction`, `Conn::backend`).

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::migration::MigrationSource;
use diesel::result::Error as DieselError;
use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Hook, HookError, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;

pub mod campaign_days;
pub mod catalog;
pub mod cluster;
pub mod codes;
pub mod clock;
pub mod conn;
pub mod connect;
pub mod coupons;
pub mod deliveries;
pub mod expiry;
pub mod grants;
pub mod health;
pub mod records;
pub mod report;
pub mod prepared;
pub mod requests;
pub mod samples;
pub mod jobs;
pub mod lifecycle;
pub mod schema;
pub mod transitions;
pub mod updates;
mod session;

pub use conn::{columns, Backend, Conn};
pub use diesel::result::QueryResult;

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

/// True when `error` is a deadlock, a lock-wait timeout or a busy SQLite database;
/// on a Galera cluster also a transaction refused at COMMIT by certification (1213,
/// which the client may report as a COMMIT whose ROLLBACK failed too) and a node that
/// has left the primary component (1047), whose next try runs on the new writer.
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
                || message.contains("WSREP has not yet prepared node")
        }
        DieselError::RollbackErrorOnCommit { commit_error, .. } => is_retryable(commit_error),
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
                Box::new(move |url| session::setup_mysql(url.to_owned(), settings).boxed());
            let manager = AsyncDieselConnectionManager::new_with_config(url, config);
            let mut pool = Pool::builder(manager);
            // With several hosts, a connection made before the writer moved goes to
            // the old writer: it is dropped instead of handed out.
            if let Some(writer) =
                cluster::writer(url).map_err(|e| StoreError::Url(e.to_string()))?
            {
                pool = pool.pre_recycle(Hook::sync_fn(move |_, metrics| {
                    match writer.made_before_switch(metrics.created) {
                        true => Err(HookError::Message("the database writer moved".into())),
                        false => Ok(()),
                    }
                }));
            }
            let pool = pool
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
                session::setup_sqlite(path.to_owned(), settings.access, settings).boxed()
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
            session::set_statement_limit(c, Duration::ZERO).await?;
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
        let conn = &mut self.get().await?;
        let tables: Vec<TableCount> = conn.load(diesel::sql_query(has_table)).await?;
        let applied: Vec<AppliedMigration> = match tables.iter().any(|t| t.n > 0) {
            false => Vec::new(),
            true => {
                let versions = "SELECT version FROM __diesel_schema_migrations";
                conn.load(diesel::sql_query(versions)).await?
            }
        };
        Ok(known
            .iter()
            .all(|v| applied.iter().any(|a| &a.version == v)))
    }

    /// One round trip, to prove the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.get().await?.batch_execute("SELECT 1").await?;
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

/// The database's current time (UTC, no zone): the host's clock corrected by the
/// offset of the database's ([`clock`]). Leases, holds and ticks are read from it.
pub fn now() -> NaiveDateTime {
    clock::now()
}
