//! Group commits of posted triggers. A handler hands its rows to a [`Committer`] and
//! waits; a few writer tasks each take every request waiting (up to [`MAX_GROUP`]
//! rows, lingering [`LINGER`] for more when the queue is empty) and write the group in
//! one transaction: one multi-row `INSERT IGNORE` (`INSERT OR IGNORE` on SQLite) of its
//! keys, COMMIT, then the group's rows read back by key. When a key was taken, the
//! group is rolled back and written again with the keys already known left out.
//! Every handler is answered only after that COMMIT. One COMMIT per request held 64
//! clients to the database's rate of commits; a group's COMMIT is shared.
//!
//! A duplicate key never fails the group: a key already in the table (or twice in the
//! group) is left out of the insert, and the handler compares the recorded row with
//! what it posted (200 for the same body, 409 for another).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;
use tracing::warn;

use crate::store::records::RequestRecord;
use crate::store::requests::NewRequest;
use crate::store::{Conn, Db, StoreError};

/// The most rows one group writes (a job larger than this, a batch, is its own group).
pub const MAX_GROUP: usize = 512;

/// How long a writer that found the queue empty waits for more before it writes.
pub const LINGER: Duration = Duration::from_millis(1);

/// Requests waiting for a writer, at most; a handler waits for a place beyond it.
const QUEUE: usize = 4_096;

/// How often a group that met a deadlock or a busy database is tried again.
const TRIES: u32 = 4;

/// How often a group is tried again when another transaction inserted one of its keys
/// meanwhile (see [`insert_new`]).
const RACES: u32 = 3;

/// What became of one posted row.
#[derive(Debug, Clone)]
pub enum Written {
    /// This row inserted the key; the id it was given.
    Created(i64),
    /// The key was there before (or earlier in the group); the row that has it.
    Existing(Box<RequestRecord>),
    /// The key was taken, but no row has exactly this key (MariaDB's unique key
    /// ignores trailing spaces, which intake refuses in a key).
    Taken,
}

struct Job {
    rows: Vec<NewRequest>,
    reply: oneshot::Sender<Result<Vec<Written>, Arc<StoreError>>>,
}

/// The handlers' side: hands rows to the writers.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the writers on `db`: two on MySQL, so that a group gathers while the
    /// other commits; one on SQLite, which has one writer.
    pub fn start(db: Db) -> Committer {
        let writers = match db {
            Db::Mysql(_) => 2,
            Db::Sqlite(_) => 1,
        };
        let (jobs, queue) = mpsc::channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..writers {
            tokio::spawn(write_groups(db.clone(), queue.clone()));
        }
        Committer { jobs }
    }

    /// Writes `rows` with the next group; returns, in order, what became of each,
    /// once the group committed.
    pub async fn write(&self, rows: Vec<NewRequest>) -> Result<Vec<Written>, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        let gone = || Arc::new(StoreError::Connect("the API's writers stopped".into()));
        self.jobs
            .send(Job { rows, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn write_groups(db: Db, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let group = {
            let mut queue = queue.lock().await;
            gather(&mut queue).await
        };
        let Some(group) = group else { return };
        let rows: Vec<&NewRequest> = group.iter().flat_map(|j| &j.rows).collect();
        let mut result = write_group(&db, &rows).await;
        for _ in 1..TRIES {
            match &result {
                Err(e) if e.is_retryable() => result = write_group(&db, &rows).await,
                _ => break,
            }
        }
        let mut written = match result {
            Ok(written) => written.into_iter(),
            Err(e) => {
                warn!(error = %e, requests = rows.len(), "api: a group of triggers was not written; answered 503");
                let e = Arc::new(e);
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        for job in group {
            let mine = written.by_ref().take(job.rows.len()).collect();
            // A handler that went away (its client hung up) is not waiting.
            let _ = job.reply.send(Ok(mine));
        }
    }
}

/// The jobs of the next group: the first to come, then all that wait, lingering
/// [`LINGER`] for more while the group is short. `None` once every handle is gone.
async fn gather(queue: &mut mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let first = queue.recv().await?;
    let mut rows = first.rows.len();
    let mut group = vec![first];
    let deadline = Instant::now() + LINGER;
    while rows < MAX_GROUP {
        let next = match queue.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                }
            }
        };
        rows += next.rows.len();
        group.push(next);
    }
    Some(group)
}

/// One group: the new keys inserted in one transaction, then every key read back.
async fn write_group(db: &Db, rows: &[&NewRequest]) -> Result<Vec<Written>, StoreError> {
    let mut conn = db.get().await?;
    let mut keys: Vec<&str> = rows.iter().map(|r| r.request_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut look = Look::Blind;
    let created = loop {
        let attempt = conn
            .write_transaction(async |c| insert_new(c, rows, &keys, look).await)
            .await;
        match attempt {
            Err(diesel::result::Error::RollbackTransaction) => look = look.next(),
            other => break other?,
        }
    };
    // The rows this group created answer with their ids alone; the others with the
    // whole row, which the handler compares with what it posted.
    let (mut new_keys, mut old_keys) = (Vec::new(), Vec::new());
    for (row, created) in rows.iter().zip(&created) {
        match created {
            true => new_keys.push(row.request_key.as_str()),
            false => old_keys.push(row.request_key.as_str()),
        }
    }
    old_keys.sort_unstable();
    old_keys.dedup();
    let ids: HashMap<String, i64> = match new_keys.is_empty() {
        true => HashMap::new(),
        false => conn
            .request_ids_by_keys(&new_keys)
            .await?
            .into_iter()
            .collect(),
    };
    let recorded: HashMap<String, RequestRecord> = match old_keys.is_empty() {
        true => HashMap::new(),
        false => conn
            .requests_by_keys(&old_keys)
            .await?
            .into_iter()
            .map(|r| (r.request_key.clone(), r))
            .collect(),
    };
    let written = rows.iter().zip(created).map(|(row, created)| {
        let key = row.request_key.as_str();
        match created {
            true => ids
                .get(key)
                .map_or(Written::Taken, |id| Written::Created(*id)),
            false => recorded
                .get(key)
                .map_or(Written::Taken, |r| Written::Existing(Box::new(r.clone()))),
        }
    });
    Ok(written.collect())
}

/// How a try of a group learns which keys are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// It does not: it inserts every key, and is rolled back when one was taken. Most
    /// groups are all new keys, and save the read.
    Blind,
    /// It reads them first; the how-manieth such try.
    Read(u32),
}

impl Look {
    fn next(self) -> Look {
        match self {
            Look::Blind => Look::Read(0),
            Look::Read(n) => Look::Read(n + 1),
        }
    }
}

/// Inside the group's transaction: inserts the keys no row has yet (the first row of
/// each, in key order, so that two writers lock neighbouring keys in the same order)
/// and says of each row whether it inserted its key.
///
/// A key taken before (a client's retry) or by another transaction after the keys were
/// read (the other writer, or a client's plain insert) is left out by the insert, which
/// then counts fewer rows than it was given: which row was left out is not known, so
/// the transaction is rolled back (`RollbackTransaction`) and the group tried again,
/// reading the keys first ([`Look`]). On MySQL the insert waited for that transaction's
/// commit, so the next read sees it; on SQLite the write lock is held from the read on,
/// so it does not happen. On the last try the rows are kept and every new key is said
/// to be another's (200, never a wrong 202).
async fn insert_new(
    c: &mut Conn,
    rows: &[&NewRequest],
    keys: &[&str],
    look: Look,
) -> Result<Vec<bool>, diesel::result::Error> {
    let (known, last_try): (HashSet<String>, bool) = match look {
        Look::Blind => (HashSet::new(), false),
        Look::Read(n) => {
            let known = c.known_request_keys(keys).await?.into_iter().collect();
            (known, n == RACES)
        }
    };
    let mut first_of_key: HashMap<&str, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if !known.contains(&row.request_key) {
            first_of_key.entry(row.request_key.as_str()).or_insert(i);
        }
    }
    let mut fresh: Vec<NewRequest> = first_of_key.values().map(|&i| rows[i].clone()).collect();
    fresh.sort_unstable_by(|a, b| a.request_key.cmp(&b.request_key));
    let inserted = c.enqueue_new(&fresh).await?;
    let all_ours = inserted == fresh.len();
    if !all_ours && !last_try {
        return Err(diesel::result::Error::RollbackTransaction);
    }
    let created = rows
        .iter()
        .enumerate()
        .map(|(i, row)| all_ours && first_of_key.get(row.request_key.as_str()) == Some(&i));
    Ok(created.collect())
}
