//! Whether the database answers, as a probe finds once a second, and the database's
//! clock that the probe reads on the way ([`super::clock`]).
//!
//! The probe runs on a connection of its own, never one of the pool: a pool whose
//! connections are all stuck in a stalled database would also hold back the probe that
//! is to notice it. `/readyz` and `couponsd_database_up` read the [`Health`] it keeps,
//! so neither waits for the database, and many scrapers cost nothing more.
//!
//! Each probe runs in a task that owns the probe's connection. It is given
//! `database.statement_timeout` to answer (plus `database.connect_timeout` when it
//! has to connect first); past that the database is down. A stalled database answers
//! nothing, so a probe that hangs is waited for as long again, never doubled by a
//! second one, then aborted with its connection: it is a lone `SELECT` on a
//! connection nobody else uses, so nothing is left half-done. The next probe connects
//! afresh, bounded by `database.connect_timeout`. A paused database is therefore seen
//! down within one probe interval plus the statement timeout, and up again at the
//! first probe after it answers.
//!
//! On a Galera node the probe also takes or renews the cluster's writer-node lease
//! ([`super::cluster::hold`]): [`Health::writes`] says whether this daemon may write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::sql_types::Timestamp;
use diesel_async::RunQueryDsl;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{clock, Access, MysqlConn, QueryResult, Settings, SqliteConn};

/// How often the database is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the database was last found down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownCause {
    /// No connection within `database.connect_timeout`.
    ConnectTimeout,
    /// The connection was refused or failed.
    ConnectFailed,
    /// No answer within `database.statement_timeout`.
    StatementTimeout,
    /// The probe's statement failed.
    StatementFailed,
}

impl DownCause {
    /// A few words for `/readyz` and the log, naming no host or user.
    pub fn as_str(self) -> &'static str {
        match self {
            DownCause::ConnectTimeout => "no connection within database.connect_timeout",
            DownCause::ConnectFailed => "connection failed",
            DownCause::StatementTimeout => "no answer within database.statement_timeout",
            DownCause::StatementFailed => "statement failed",
        }
    }
}

/// What the last probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The database answered.
    Up,
    /// The database has not answered since `since`.
    Down {
        /// When a probe first failed.
        since: Instant,
        /// Why the last probe failed.
        cause: DownCause,
    },
}

/// The database's health as the probe last found it; up until a probe says otherwise
/// (the daemon starts only after the database answered).
#[derive(Debug)]
pub struct Health {
    status: Mutex<Status>,
    /// Whether this daemon may write through its Galera node.
    writes: super::cluster::Writes,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            status: Mutex::new(Status::Up),
            writes: super::cluster::Writes::default(),
        }
    }
}

impl Health {
    /// What the last probe found.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this daemon may write through its node: on a Galera cluster only the
    /// daemons on the writer node do ([`super::cluster::hold`]).
    pub fn writes(&self) -> &super::cluster::Writes {
        &self.writes
    }

    /// True unless the last probe failed.
    pub fn is_up(&self) -> bool {
        self.status() == Status::Up
    }

    fn set(&self, found: Result<(), DownCause>) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *status = match (found, *status) {
            (Ok(()), Status::Down { since, .. }) => {
                info!(down_for = ?since.elapsed(), "the database answers again");
                Status::Up
            }
            (Ok(()), Status::Up) => Status::Up,
            (Err(cause), Status::Down { since, .. }) => Status::Down { since, cause },
            (Err(cause), Status::Up) => {
                warn!(cause = cause.as_str(), "the database does not answer");
                Status::Down {
                    since: Instant::now(),
                    cause,
                }
            }
        };
    }
}

/// The probe's own connection.
enum ProbeConn {
    Mysql(MysqlConn),
    Sqlite(SqliteConn),
}

#[derive(diesel::QueryableByName)]
struct DatabaseTime {
    #[diesel(sql_type = Timestamp)]
    t: NaiveDateTime,
}

/// Reads MariaDB's clock (UTC, to the microsecond) and records its offset.
pub(super) async fn read_mysql_clock(conn: &mut MysqlConn) -> QueryResult<()> {
    let sent = clock::host_now();
    let read: DatabaseTime = diesel::sql_query("SELECT UTC_TIMESTAMP(6) AS t")
        .get_result(conn)
        .await?;
    clock::observe(sent, read.t, clock::host_now());
    Ok(())
}

/// Reads SQLite's clock, which is the host's: one code path for both backends, and a
/// host clock skewed for the tests is corrected like a database's.
pub(super) async fn read_sqlite_clock(conn: &mut SqliteConn) -> QueryResult<()> {
    let sent = clock::host_now();
    let read: DatabaseTime = diesel::sql_query("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS t")
        .get_result(conn)
        .await?;
    clock::observe(sent, read.t, clock::host_now());
    Ok(())
}

impl ProbeConn {
    async fn connect(url: &str, settings: Settings) -> Result<ProbeConn, DownCause> {
        let connecting = async {
            if let Some(path) = url.strip_prefix("sqlite://") {
                super::session::setup_sqlite(path.to_owned(), Access::ReadOnly, settings)
                    .await
                    .map(ProbeConn::Sqlite)
            } else {
                let settings = Settings {
                    access: Access::ReadOnly,
                    ..settings
                };
                super::session::setup_mysql(url.to_owned(), settings)
                    .await
                    .map(ProbeConn::Mysql)
            }
        };
        // Dropping a connection not yet made leaves nothing half-done.
        match tokio::time::timeout(settings.connect_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(_)) => Err(DownCause::ConnectFailed),
            Err(_) => Err(DownCause::ConnectTimeout),
        }
    }

    async fn read_clock(&mut self) -> QueryResult<()> {
        match self {
            ProbeConn::Mysql(conn) => read_mysql_clock(conn).await,
            ProbeConn::Sqlite(conn) => read_sqlite_clock(conn).await,
        }
    }

    /// On a Galera node, takes or renews the writer node's lease; a failure is left to
    /// the next probe (the lease's holder stops writing by itself when it is not
    /// renewed).
    async fn hold_writer_node(&mut self, health: &Health) {
        if let ProbeConn::Mysql(conn) = self {
            if let Err(e) = super::cluster::hold(conn, health.writes()).await {
                warn!(error = %e, "cannot take or renew the writer node's lease");
            }
        }
    }
}

/// One probe: connects if `conn` is `None`, reads the database's clock, and gives the
/// connection back for the next probe.
async fn probe(
    conn: Option<ProbeConn>,
    (url, health): (Arc<str>, Arc<Health>),
    settings: Settings,
) -> Result<ProbeConn, DownCause> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => ProbeConn::connect(&url, settings).await?,
    };
    // With several hosts, the probe also keeps the writer the first ready one; when
    // it moves, the probe's own connection follows it.
    if let Ok(Some(writer)) = super::cluster::writer(&url) {
        if writer.check(&settings).await {
            conn = ProbeConn::connect(&url, settings).await?;
        }
    }
    conn.read_clock()
        .await
        .map_err(|_| DownCause::StatementFailed)?;
    conn.hold_writer_node(&health).await;
    Ok(conn)
}

/// Probes the database at `url` every [`PROBE_INTERVAL`] until `shutdown`, keeping
/// `health` and calling `report` with whether it answered after every probe.
pub async fn watch(
    health: Arc<Health>,
    url: String,
    settings: Settings,
    shutdown: CancellationToken,
    report: impl Fn(bool) + Send + 'static,
) {
    let url: Arc<str> = url.into();
    let mut conn = None;
    loop {
        let limit = match conn {
            Some(_) => settings.statement_timeout,
            None => settings.statement_timeout + settings.connect_timeout,
        };
        let task = tokio::spawn(probe(conn.take(), (url.clone(), health.clone()), settings));
        let found = tokio::select! {
            _ = shutdown.cancelled() => return,
            found = wait_for_probe(task, limit, &health, &report) => found,
        };
        let found = match found {
            Ok(kept) => {
                conn = Some(kept);
                Ok(())
            }
            Err(cause) => Err(cause),
        };
        health.set(found);
        report(found.is_ok());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Waits `limit` for the probe; past it reports the database down and waits as long
/// again before aborting the probe (see the module's doc).
async fn wait_for_probe(
    mut task: JoinHandle<Result<ProbeConn, DownCause>>,
    limit: Duration,
    health: &Health,
    report: &impl Fn(bool),
) -> Result<ProbeConn, DownCause> {
    let joined =
        |r: Result<Result<ProbeConn, DownCause>, _>| r.unwrap_or(Err(DownCause::StatementFailed));
    if let Ok(done) = tokio::time::timeout(limit, &mut task).await {
        return joined(done);
    }
    health.set(Err(DownCause::StatementTimeout));
    report(false);
    match tokio::time::timeout(limit, &mut task).await {
        Ok(done) => joined(done),
        Err(_) => {
            task.abort();
            Err(DownCause::StatementTimeout)
        }
    }
}
