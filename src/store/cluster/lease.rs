//! One writer *node* for the whole cluster, whatever each daemon was given.
//!
//! A host list makes the daemons given that list converge on one writer (the parent
//! module). Daemons given different URLs, one node each, would still write through
//! several nodes at once, and Galera does not make that safe for couponsd: its
//! certification sees two transactions writing one row, not a row one of them only
//! read under a lock, and such runs broke invariants (`docs/operations.md`). So it is
//! refused: on a Galera node the health probe also holds the cluster's writer node,
//! the `job_leases` row `database.writer_node` whose holder is the node's
//! `wsrep_gcomm_uuid` and whose `held_until` is [`LEASE`] ahead, renewed at every
//! probe by each daemon writing through that node. A daemon takes it when it is free:
//! nobody holds it, its time has passed, or its node has left the cluster (it is not
//! in `mysql.wsrep_cluster_members`, as after a failover). Two daemons on two nodes
//! taking it at once write the same row, so the cluster lets one COMMIT through.
//!
//! A daemon whose node does not hold it stands by ([`Writes::standby`]): its loops and
//! jobs claim nothing and it says why in the log, until the lease is free. A daemon
//! that holds it stops writing when it has not renewed it for half its time, before
//! any other may take it over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use tracing::{info, warn};

use super::super::MysqlConn;
use super::NodeState;

/// The `job_leases` row that records the writer node.
const WRITER_NODE_JOB: &str = "database.writer_node";

/// How long the writer node's lease lasts unless renewed. Its holder stops writing
/// after half of it without a renewal.
pub const LEASE: Duration = Duration::from_secs(6);

/// Whether this daemon may write, as the probe last found.
#[derive(Debug, Default)]
pub struct Writes {
    state: Mutex<Gate>,
    /// Set once `mysql.wsrep_cluster_members` could not be read (said once).
    members_unreadable: AtomicBool,
    /// Woken when this daemon may write again.
    opened: tokio::sync::Notify,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Gate {
    /// Not a Galera node, or no probe runs: nothing to hold.
    #[default]
    Open,
    /// A probe is to look first.
    Pending,
    /// This daemon's node holds the lease, renewed then.
    Holding(Instant),
    /// Another node holds it: which, and why this daemon stands by, in words.
    Standby { holder: String, why: String },
}

impl Writes {
    /// Until the first probe has looked, this daemon stands by.
    pub fn await_first_look(&self) {
        *self.lock() = Gate::Pending;
    }

    /// Why this daemon must not write now, or `None` when it may.
    pub fn standby(&self) -> Option<String> {
        Self::closed(&self.lock())
    }

    fn closed(gate: &Gate) -> Option<String> {
        match gate {
            Gate::Open => None,
            Gate::Pending => Some("the writer node has not been looked up yet".into()),
            Gate::Holding(renewed) if renewed.elapsed() < LEASE / 2 => None,
            Gate::Holding(renewed) => Some(format!(
                "the writer node's lease was last renewed {:.1} s ago",
                renewed.elapsed().as_secs_f64()
            )),
            Gate::Standby { why, .. } => Some(why.clone()),
        }
    }

    /// Resolves when the gate next opens (from the moment it is called, polled or
    /// not), so that a loop standing by starts at once.
    pub fn opened(&self) -> tokio::sync::futures::Notified<'_> {
        self.opened.notified()
    }

    fn set(&self, next: Gate) {
        let mut gate = self.lock();
        let opens = Self::closed(&gate).is_some() && Self::closed(&next).is_none();
        match (&*gate, &next) {
            (Gate::Holding(_), Gate::Holding(_)) | (Gate::Open, Gate::Open) => {}
            (_, Gate::Holding(_)) => info!("this daemon's node is the cluster's writer node"),
            // Said once per holder: the time left changes at every probe.
            (Gate::Standby { holder: was, .. }, Gate::Standby { holder, .. }) if was == holder => {}
            (_, Gate::Standby { why, .. }) => warn!(
                "standing by, writing nothing: {why}; couponsd writes through one Galera \
                 node at a time (docs/operations.md)"
            ),
            _ => {}
        }
        *gate = next;
        if opens {
            self.opened.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(QueryableByName)]
struct Node {
    #[diesel(sql_type = Text)]
    uuid: String,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Nullable<Text>)]
    holder: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    left_ms: Option<i64>,
}

/// Takes or renews the writer node's lease for the node `conn` is connected to, and
/// keeps `writes` as it found: open on a server that is not a Galera node. The
/// session may be read-only (the probe's): the lease is written in a transaction
/// started read-write. An error leaves `writes` as it was; a holder stops writing by
/// itself once its lease is not renewed.
pub async fn hold(conn: &mut MysqlConn, writes: &Writes) -> diesel::QueryResult<()> {
    match super::node_state(conn).await? {
        NodeState::Standalone => {
            writes.set(Gate::Open);
            return Ok(());
        }
        // Cut off or joining: it can take no lease; a lease this daemon holds runs out
        // by itself.
        NodeState::NotReady(_) => return Ok(()),
        NodeState::Synced => {}
    }
    let me = this_node(conn).await?;
    let members = members(conn, &writes.members_unreadable).await;
    let asked = Instant::now();
    conn.batch_execute("START TRANSACTION READ WRITE").await?;
    let taken = take(conn, &me.uuid, members.as_deref()).await;
    let committed = match taken {
        Ok(taken) => conn.batch_execute("COMMIT").await.map(|()| taken),
        Err(e) => Err(e),
    };
    let taken = match committed {
        Ok(taken) => taken,
        Err(e) => {
            let _ = conn.batch_execute("ROLLBACK").await;
            // Another node took it in the same moment: the cluster let its COMMIT
            // through and refused this one.
            if super::super::is_retryable(&e) {
                false
            } else {
                return Err(e);
            }
        }
    };
    if taken {
        writes.set(Gate::Holding(asked));
        return Ok(());
    }
    let held = held(conn, members.as_deref()).await?;
    writes.set(Gate::Standby {
        why: held.describe(&me, "daemon's"),
        holder: held.uuid.unwrap_or_default(),
    });
    Ok(())
}

/// For an operator command that writes (`grants revoke`, `codes import`, …): why it
/// must not, when `conn`'s node is a Galera node and another node holds a live
/// writer-node lease; `None` when it may (a server without Galera, this node the
/// holder, or no live lease).
pub async fn elsewhere(conn: &mut MysqlConn) -> diesel::QueryResult<Option<String>> {
    if super::node_state(conn).await? != NodeState::Synced {
        // A plain server; or a node not ready, which refuses the write by itself.
        return Ok(None);
    }
    let me = this_node(conn).await?;
    let members = members(conn, &AtomicBool::new(false)).await;
    let held = held(conn, members.as_deref()).await?;
    let live = match (&held.uuid, &members) {
        (None, _) => false,
        (Some(uuid), _) if *uuid == me.uuid => false,
        (Some(uuid), Some(view)) => held.left > 0.0 && view.iter().any(|m| m.uuid == *uuid),
        (Some(_), None) => held.left > 0.0,
    };
    Ok(live.then(|| held.describe(&me, "command's")))
}

/// This node, as the cluster knows it.
async fn this_node(conn: &mut MysqlConn) -> diesel::QueryResult<Node> {
    diesel::sql_query(
        "SELECT VARIABLE_VALUE AS uuid, @@wsrep_node_name AS name \
         FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_GCOMM_UUID'",
    )
    .get_result(conn)
    .await
}

/// The lease as recorded.
struct Held {
    /// The holder's `wsrep_gcomm_uuid`.
    uuid: Option<String>,
    /// The holder's name in the cluster's view, when it is there.
    name: Option<String>,
    /// Seconds left, never below zero.
    left: f64,
}

impl Held {
    /// Who holds it, for the log or an error, beside `me`.
    fn describe(&self, me: &Node, whose: &str) -> String {
        format!(
            "the cluster's writer node is {} ({}), held for {:.1} s more; this {whose} \
             node is {} ({})",
            self.name.as_deref().unwrap_or("?"),
            self.uuid.as_deref().unwrap_or("nobody"),
            self.left,
            me.name.as_deref().unwrap_or("?"),
            me.uuid
        )
    }
}

/// Reads the lease, the holder's name taken from `members`.
async fn held(conn: &mut MysqlConn, members: Option<&[Node]>) -> diesel::QueryResult<Held> {
    let row: Option<Holder> = diesel::sql_query(
        "SELECT holder, \
         TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), held_until) DIV 1000 AS left_ms \
         FROM job_leases WHERE job = ?",
    )
    .bind::<Text, _>(WRITER_NODE_JOB)
    .get_result(conn)
    .await
    .optional()?;
    let (uuid, left_ms) = row.map_or((None, None), |r| (r.holder, r.left_ms));
    let name = members
        .unwrap_or_default()
        .iter()
        .find(|m| Some(&m.uuid) == uuid.as_ref())
        .and_then(|m| m.name.clone());
    Ok(Held {
        uuid,
        name,
        left: left_ms.unwrap_or(0).max(0) as f64 / 1000.0,
    })
}

/// The nodes of the cluster's current view (`mysql.wsrep_cluster_members`), or `None`
/// when they cannot be read: the database user may lack `SELECT` on that table, which
/// is said once; the lease of a lost node is then taken only once it has run out.
async fn members(conn: &mut MysqlConn, said: &AtomicBool) -> Option<Vec<Node>> {
    let read = diesel::sql_query(
        "SELECT node_uuid AS uuid, node_name AS name FROM mysql.wsrep_cluster_members",
    )
    .load::<Node>(conn)
    .await;
    match read {
        Ok(nodes) => Some(nodes),
        Err(e) => {
            if !said.swap(true, Ordering::Relaxed) {
                warn!(error = %e, "cannot read mysql.wsrep_cluster_members: the writer node's lease is taken from a lost node only once it has run out (grant the database user SELECT on it for a quicker failover)");
            }
            None
        }
    }
}

/// The compare-and-set, inside the caller's transaction: true when `me` holds the
/// lease now. A holder not among `members` (when they are known) has left the cluster.
async fn take(
    conn: &mut MysqlConn,
    me: &str,
    members: Option<&[Node]>,
) -> diesel::QueryResult<bool> {
    diesel::sql_query("INSERT IGNORE INTO job_leases (job) VALUES (?)")
        .bind::<Text, _>(WRITER_NODE_JOB)
        .execute(conn)
        .await?;
    let taken = diesel::sql_query(format!(
        "UPDATE job_leases SET holder = ?, \
         held_until = UTC_TIMESTAMP(6) + INTERVAL {} SECOND \
         WHERE job = ? AND (holder IS NULL OR holder = ? OR held_until < UTC_TIMESTAMP(6){})",
        LEASE.as_secs(),
        left_the_cluster(members)
    ))
    .bind::<Text, _>(me)
    .bind::<Text, _>(WRITER_NODE_JOB)
    .bind::<Text, _>(me)
    .execute(conn)
    .await?;
    Ok(taken == 1)
}

/// ` OR holder NOT IN ('<uuid>', …)` for the nodes of the view, each a UUID as the
/// server reported it (anything else is left out, so nothing is quoted); empty when
/// the view is not known.
fn left_the_cluster(members: Option<&[Node]>) -> String {
    let uuids: Vec<String> = members
        .unwrap_or_default()
        .iter()
        .filter(|m| !m.uuid.is_empty() && m.uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .map(|m| format!("'{}'", m.uuid))
        .collect();
    match uuids.is_empty() {
        true => String::new(),
        false => format!(" OR holder NOT IN ({})", uuids.join(", ")),
    }
}

/// The writer-node check of an operator command that writes.
impl super::super::Conn {
    /// Why a command that writes must not run through this connection's node: another
    /// Galera node is the cluster's writer node ([`elsewhere`]). `None` on SQLite.
    pub async fn writer_node_elsewhere(&mut self) -> diesel::QueryResult<Option<String>> {
        match self {
            super::super::Conn::Mysql(c) => elsewhere(c).await,
            super::super::Conn::Sqlite(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_has_left_the_cluster_when_the_view_does_not_name_it() {
        let node = |uuid: &str| Node {
            uuid: uuid.into(),
            name: None,
        };
        let view = [node("8ff7e739-ef9b-11f1"), node("x'; DROP"), node("")];
        assert_eq!(
            left_the_cluster(Some(&view)),
            " OR holder NOT IN ('8ff7e739-ef9b-11f1')",
            "only what reads as a UUID is written into the statement"
        );
        assert_eq!(
            left_the_cluster(None),
            "",
            "a view not read: the lease runs out"
        );
    }

    #[test]
    fn a_daemon_writes_while_its_node_holds_a_lease_renewed_within_half_its_time() {
        let writes = Writes::default();
        assert_eq!(writes.standby(), None, "no probe runs: nothing to hold");
        writes.await_first_look();
        assert!(writes.standby().unwrap().contains("not been looked up"));
        writes.set(Gate::Holding(Instant::now()));
        assert_eq!(writes.standby(), None);
        let stale = Instant::now().checked_sub(LEASE / 2 + Duration::from_millis(100));
        writes.set(Gate::Holding(stale.unwrap()));
        assert!(writes.standby().unwrap().contains("last renewed"));
        let opened = writes.opened();
        writes.set(Gate::Holding(Instant::now()));
        use futures_util::FutureExt;
        assert!(
            opened.now_or_never().is_some(),
            "a lease renewed after it went stale wakes the loops standing by"
        );
        writes.set(Gate::Standby {
            holder: "u2".into(),
            why: "the cluster's writer node is n2".into(),
        });
        assert_eq!(
            writes.standby().as_deref(),
            Some("the cluster's writer node is n2")
        );
        writes.set(Gate::Open);
        assert_eq!(writes.standby(), None, "a plain server");
    }
}
