//! One host of the list: whether it may be the writer, and the writer recorded in
//! the database, each read on a fresh connection of its own.

use std::time::Duration;

use diesel::result::{ConnectionError, ConnectionResult};
use diesel::sql_types::{Nullable, Text};
use diesel::QueryableByName;
use tracing::warn;

use super::super::connect;
use super::super::{MysqlConn, Settings};
use super::host_of;

/// The `job_leases` row that records the writer.
const WRITER_JOB: &str = "database.writer";

/// The longest one check of a host may take to connect: a host that is down on a
/// live network refuses at once, and one that hangs must not hold up the failover.
const CHECK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a host says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not a Galera node (`wsrep_on` off, or a server without it).
    Standalone,
    /// A Galera node in the primary component, synced: it takes writes.
    Synced,
    /// A Galera node that is not ready or not synced (joining, donor, or cut off
    /// from the primary component): `wsrep_local_state` as it reported it.
    NotReady(Option<u32>),
}

impl NodeState {
    /// True when the node may be the writer.
    pub fn is_ready(self) -> bool {
        matches!(self, NodeState::Standalone | NodeState::Synced)
    }
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Nullable<Text>)]
    value: Option<String>,
}

#[derive(QueryableByName)]
struct Status {
    #[diesel(sql_type = Text, column_name = "Variable_name")]
    name: String,
    #[diesel(sql_type = Text, column_name = "Value")]
    value: String,
}

/// Reads whether the server `conn` is connected to may be the writer.
pub async fn node_state(conn: &mut MysqlConn) -> diesel::QueryResult<NodeState> {
    use diesel_async::RunQueryDsl;
    let on: Vec<Setting> =
        match diesel::sql_query("SELECT CAST(@@global.wsrep_on AS CHAR) AS value")
            .load(conn)
            .await
        {
            Ok(rows) => rows,
            // 1193: unknown system variable: a server built without Galera.
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("Unknown system variable") =>
            {
                return Ok(NodeState::Standalone)
            }
            Err(e) => return Err(e),
        };
    if !matches!(
        <[Setting]>::first(&on).and_then(|s| s.value.as_deref()),
        Some("1" | "ON")
    ) {
        return Ok(NodeState::Standalone);
    }
    let status: Vec<Status> = diesel::sql_query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')",
    )
    .load(conn)
    .await?;
    let get = |name: &str| {
        status
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.as_str())
    };
    let state = get("wsrep_local_state").and_then(|s| s.parse().ok());
    Ok(match (get("wsrep_ready"), state) {
        (Some("ON"), Some(4)) => NodeState::Synced,
        _ => NodeState::NotReady(state),
    })
}

/// One connection to `url`, refused unless its node is ready, with what the node
/// said of itself.
pub(super) async fn connect_ready(
    url: &str,
    settings: &Settings,
    timeout: Duration,
) -> ConnectionResult<(MysqlConn, NodeState)> {
    let connecting = async {
        let mut conn = connect::establish(url, settings).await?;
        match node_state(&mut conn).await {
            Ok(state) if state.is_ready() => Ok((conn, state)),
            Ok(state) => Err(ConnectionError::BadConnection(format!(
                "{} is not ready to write ({state:?})",
                host_of(url)
            ))),
            Err(e) => Err(ConnectionError::CouldntSetupConfiguration(e)),
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(done) => done,
        Err(_) => Err(ConnectionError::BadConnection(format!(
            "{}: no connection within {timeout:?}",
            host_of(url)
        ))),
    }
}

/// The writer recorded in the database, read on a fresh connection to `url` once it
/// has applied every commit before the read: `None` when `url`'s node is not ready,
/// `Some(None)` when nothing is recorded (or the schema is not there yet).
pub(super) async fn look(url: &str, settings: &Settings) -> Option<Option<String>> {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    let timeout = settings.connect_timeout.min(CHECK_CONNECT_TIMEOUT);
    let (mut conn, state) = connect_ready(url, settings, timeout).await.ok()?;
    let reading = async {
        if state != NodeState::Standalone {
            conn.batch_execute("SET SESSION wsrep_sync_wait = 1")
                .await?;
        }
        let query = diesel::sql_query("SELECT holder AS value FROM job_leases WHERE job = ?")
            .bind::<Text, _>(WRITER_JOB);
        let rows: Vec<Setting> = query.load(&mut conn).await?;
        Ok::<_, diesel::result::Error>(rows.into_iter().next().and_then(|r| r.value))
    };
    match tokio::time::timeout(settings.statement_timeout, reading).await {
        Ok(Ok(recorded)) => Some(recorded),
        // No job_leases yet: a database not migrated has no record.
        Ok(Err(e)) if e.to_string().contains("doesn't exist") => Some(None),
        _ => None,
    }
}

/// Records `name` as the writer through `url`, provided the record still says
/// `expected` (what the caller read): `Some(true)` when it did, `Some(false)` when
/// another daemon changed it first (or the cluster refused the write as conflicting
/// with one), `None` when it could not be written (logged; the next check writes it
/// again: the record only helps daemons agree).
pub(super) async fn record(
    url: &str,
    name: &str,
    expected: Option<&str>,
    settings: &Settings,
) -> Option<bool> {
    use diesel_async::RunQueryDsl;
    let timeout = settings.connect_timeout.min(CHECK_CONNECT_TIMEOUT);
    let (mut conn, _) = connect_ready(url, settings, timeout).await.ok()?;
    let writing = async {
        let row = diesel::sql_query("INSERT IGNORE INTO job_leases (job) VALUES (?)")
            .bind::<Text, _>(WRITER_JOB);
        row.execute(&mut conn).await?;
        let swap =
            diesel::sql_query("UPDATE job_leases SET holder = ? WHERE job = ? AND holder <=> ?")
                .bind::<Text, _>(name)
                .bind::<Text, _>(WRITER_JOB)
                .bind::<Nullable<Text>, _>(expected);
        swap.execute(&mut conn).await
    };
    match tokio::time::timeout(settings.statement_timeout, writing).await {
        Ok(Ok(swapped)) => Some(swapped == 1),
        Ok(Err(e)) if super::super::is_retryable(&e) => Some(false),
        Ok(Err(e)) if e.to_string().contains("doesn't exist") => None,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot record the database writer");
            None
        }
        Err(_) => {
            warn!("cannot record the database writer: no answer");
            None
        }
    }
}

/// True when a fresh connection to `url` finds its node ready.
pub(super) async fn is_ready(url: &str, settings: &Settings) -> bool {
    let timeout = settings.connect_timeout.min(CHECK_CONNECT_TIMEOUT);
    connect_ready(url, settings, timeout).await.is_ok()
}
