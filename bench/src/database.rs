//! The bench's own statements: a throwaway database per scenario on the MariaDB server
//! (or a throwaway SQLite file), the server's settings and status counters, and the
//! timestamps the scenarios turn into rates and latencies.
//!
//! These live here rather than in `store/` because they are about measuring the
//! daemon, not about running it: `CREATE DATABASE`, `information_schema.GLOBAL_STATUS`
//! and a few aggregate reads over the schema's public table definitions. Everything
//! the pipeline itself writes goes through `store/`, as in production.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDateTime;
use diesel::dsl::{max, min};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};

use super::BenchError;
use couponsd::store::schema::trigger_requests;
use couponsd::store::Db;

/// Server status counters read before and after a timed part. They are global: other
/// clients of the same server add to them, which the report says.
pub const COUNTERS: &[&str] = &[
    "Questions",
    "Com_stmt_prepare",
    "Com_stmt_execute",
    "Com_stmt_close",
    "Com_commit",
    "Com_rollback",
    "Innodb_row_lock_waits",
    "Innodb_row_lock_time",
    "Innodb_deadlocks",
    "Innodb_log_writes",
    "Innodb_os_log_written",
    "Innodb_data_fsyncs",
];

/// Where a scenario's database lives.
pub enum Target {
    /// A database on a MariaDB/MySQL server (`mysql://user@host:port`).
    Mysql {
        /// The server URL, without a database.
        server: String,
    },
    /// A file in this folder.
    Sqlite {
        /// The folder.
        dir: PathBuf,
    },
}

/// A throwaway database; [`ScratchDb::drop_now`] removes it.
pub struct ScratchDb {
    /// Its URL, for the config file.
    pub url: String,
    mysql: Option<(String, String)>,
}

impl Target {
    /// Creates an empty database named after `tag`.
    pub async fn create(&self, tag: &str) -> Result<ScratchDb, BenchError> {
        let stamp = chrono::Utc::now().timestamp_millis() % 1_000_000_000;
        let name = format!("couponsd_bench_{tag}_{}_{stamp}", std::process::id());
        match self {
            Target::Mysql { server } => {
                let mut conn = admin(server).await?;
                conn.batch_execute(&format!("CREATE DATABASE `{name}`"))
                    .await
                    .map_err(|e| BenchError::Setup(format!("CREATE DATABASE {name}: {e}")))?;
                Ok(ScratchDb {
                    url: format!("{server}/{name}"),
                    mysql: Some((server.clone(), name)),
                })
            }
            Target::Sqlite { dir } => Ok(ScratchDb {
                url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
                mysql: None,
            }),
        }
    }
}

impl ScratchDb {
    /// Drops the database (a SQLite file goes with the bench's folder).
    pub async fn drop_now(self) -> Result<(), BenchError> {
        if let Some((server, name)) = &self.mysql {
            let mut conn = admin(server).await?;
            conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .await
                .map_err(|e| BenchError::Setup(format!("DROP DATABASE {name}: {e}")))?;
        }
        Ok(())
    }
}

async fn admin(server: &str) -> Result<AsyncMysqlConnection, BenchError> {
    AsyncMysqlConnection::establish(&format!("{server}/mysql"))
        .await
        .map_err(|e| {
            BenchError::Setup(format!(
                "cannot connect to MariaDB at {server}: {e} (--mysql-url names another server; --sqlite needs none)"
            ))
        })
}

#[derive(QueryableByName)]
struct Variable {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    value: String,
}

async fn read_table(
    server: &str,
    table: &str,
    names: &[&str],
) -> Result<BTreeMap<String, String>, BenchError> {
    let mut conn = admin(server).await?;
    let list = names
        .iter()
        .map(|n| format!("'{}'", n.to_uppercase()))
        .collect::<Vec<_>>()
        .join(",");
    let query = format!(
        "SELECT VARIABLE_NAME AS name, VARIABLE_VALUE AS value \
         FROM information_schema.{table} WHERE VARIABLE_NAME IN ({list})"
    );
    let rows: Vec<Variable> = diesel::sql_query(query)
        .load(&mut conn)
        .await
        .map_err(|e| BenchError::Setup(format!("reading {table}: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|v| (v.name.to_lowercase(), v.value))
        .collect())
}

/// The server settings that decide what a commit costs, for the report.
pub async fn server_settings(server: &str) -> Result<BTreeMap<String, String>, BenchError> {
    read_table(
        server,
        "GLOBAL_VARIABLES",
        &[
            "version",
            "innodb_flush_log_at_trx_commit",
            "innodb_buffer_pool_size",
            "innodb_log_file_size",
            "sync_binlog",
            "log_bin",
            "max_connections",
        ],
    )
    .await
}

/// A snapshot of [`COUNTERS`].
pub async fn status(server: &str) -> Result<BTreeMap<String, i64>, BenchError> {
    let vars = read_table(server, "GLOBAL_STATUS", COUNTERS).await?;
    Ok(COUNTERS
        .iter()
        .map(|name| {
            let value = vars
                .get(&name.to_lowercase())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            ((*name).to_owned(), value)
        })
        .collect())
}

/// `after - before` for every counter.
pub fn delta(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> Vec<(String, i64)> {
    COUNTERS
        .iter()
        .map(|name| {
            let d =
                after.get(*name).copied().unwrap_or(0) - before.get(*name).copied().unwrap_or(0);
            ((*name).to_owned(), d)
        })
        .collect()
}

/// The first claim and the last finished request: the span the grant workers took.
pub async fn grant_span(db: &Db) -> Result<Option<(NaiveDateTime, NaiveDateTime)>, BenchError> {
    use trigger_requests::dsl as tr;
    let (first, last): (Option<NaiveDateTime>, Option<NaiveDateTime>) = {
        let conn = &mut db.get().await?;
        let span = tr::trigger_requests.select((min(tr::claimed_at), max(tr::processed_at)));
        conn.first(span)
            .await
            .map_err(couponsd::store::StoreError::from)?
    };
    Ok(first.zip(last))
}

/// For every processed request, `(request_key, created_at, processed_at)`: when the
/// client's insert ran and when the grant transaction decided it.
pub async fn request_times(
    db: &Db,
) -> Result<Vec<(String, NaiveDateTime, NaiveDateTime)>, BenchError> {
    use trigger_requests::dsl as tr;
    let rows: Vec<(String, NaiveDateTime, Option<NaiveDateTime>)> = {
        let conn = &mut db.get().await?;
        let times =
            tr::trigger_requests.select((tr::request_key, tr::created_at, tr::processed_at));
        conn.load(times)
            .await
            .map_err(couponsd::store::StoreError::from)?
    };
    Ok(rows
        .into_iter()
        .filter_map(|(k, c, p)| Some((k, c, p?)))
        .collect())
}
