//! Each new connection's session: the isolation level, lock and statement limits,
//! and read-only access where asked (MySQL), or the journal, busy timeout and
//! `query_only` (SQLite).

use std::time::Duration;

use diesel::result::Error as DieselError;
use diesel::ConnectionError;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};

use super::{cluster, connect, Access, MysqlConn, QueryResult, Settings, SqliteConn};

pub(super) async fn setup_mysql(
    url: String,
    settings: Settings,
) -> Result<MysqlConn, ConnectionError> {
    let writer = cluster::writer(&url)
        .map_err(|e| ConnectionError::InvalidConnectionUrl(format!("database.url: {e}")))?;
    let mut conn = match writer {
        Some(writer) => writer.connect(&settings).await?,
        None => connect::establish(&url, &settings).await?,
    };
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
    if access == Access::ReadOnly {
        see_latest_commit(&mut conn)
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
    }
    Ok(conn)
}

/// On a Galera node, a read-only session's reads wait until the node has applied
/// every write the cluster committed before them (`wsrep_sync_wait = 1`): the console,
/// `report` and the other commands that only read may run on a node other than the
/// writer, and show what the writer committed. The writer's own sessions need no
/// wait: a transaction that read a row a later-applied write set changed, and writes
/// it, fails certification at COMMIT (1213) and is tried again.
async fn see_latest_commit(conn: &mut MysqlConn) -> QueryResult<()> {
    if cluster::node_state(conn).await? == cluster::NodeState::Standalone {
        return Ok(());
    }
    conn.batch_execute("SET SESSION wsrep_sync_wait = 1").await
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
pub(super) async fn set_statement_limit(conn: &mut MysqlConn, limit: Duration) -> QueryResult<()> {
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

pub(super) async fn setup_sqlite(
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
