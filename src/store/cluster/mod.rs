//! Several database hosts, one writer at a time: a Galera cluster.
//!
//! `database.url` may list hosts, `mysql://user@h1:3306,h2:3306,h3:3306/couponsd`.
//! Every connection of the process goes to one of them, the *writer*. A host is
//! *ready* when it is a plain server (`wsrep_on` off), or a Galera node in the primary
//! component and synced (`wsrep_ready = ON`, `wsrep_local_state = 4`).
//!
//! Daemons converge on one writer through the database itself: the writer in use is
//! recorded in `job_leases` (job `database.writer`, holder the host as listed). A
//! daemon starts on the recorded writer when it is ready; when there is none, or it is
//! not ready, it takes the first ready host in list order and records it. The writer
//! stays while it is ready: a node that comes back after a failover does not take the
//! writes back, so no two daemons ever write through different nodes while they move
//! (Galera certifies concurrent writers' batches against each other, and such runs
//! broke invariants: see `docs/operations.md`). Once a second the health probe
//! ([`super::health`]) checks the writer and the record: a writer no longer ready is
//! replaced as above, and a record another daemon changed is followed.
//!
//! A move is logged; the pool then discards every connection made before it as it
//! would hand it out ([`Writer::made_before_switch`]), so the workers' next
//! transactions run on the new writer. A transaction in flight on a node that dies
//! fails and is tried again like any other; one the cluster refuses at COMMIT (1213)
//! is a deadlock ([`super::is_retryable`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel::result::ConnectionResult;
use tracing::warn;

use super::connect::UrlError;
use super::{MysqlConn, Settings};

mod lease;
mod node;

pub use lease::{hold, Writes, LEASE};
use node::{connect_ready, is_ready, look, record};
pub use node::{node_state, NodeState};

/// Checks, a second apart, of a writer another daemon recorded before this one takes
/// another.
const RECORDED_TRIES: usize = 3;

/// The hosts of one `database.url` and which of them is the writer, shared by every
/// pool of the process that was opened with that URL.
#[derive(Debug)]
pub struct Writer {
    /// One URL per host, in the list's order, each with the list's user, database and
    /// parameters.
    urls: Vec<String>,
    /// Each host as `host:port`, for the log (the URL may hold a password).
    names: Vec<String>,
    /// The index of the writer in `urls`.
    current: AtomicUsize,
    /// When the writer last changed.
    switched_at: Mutex<Option<Instant>>,
    /// Whether the recorded writer has been looked up (at the first connection).
    settled: AtomicBool,
    /// Held while a new writer is elected, so that a pool's connections failing at
    /// once elect one writer once.
    electing: tokio::sync::Mutex<()>,
}

/// The single-host URLs of `url` in its order: `mysql://u@h1:3306,h2:3306/db?p` gives
/// `mysql://u@h1:3306/db?p` and `mysql://u@h2:3306/db?p`; any other URL gives itself.
pub fn split_hosts(url: &str) -> Result<Vec<String>, UrlError> {
    let Some(rest) = url.strip_prefix("mysql://") else {
        return Ok(vec![url.to_owned()]);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.len() > 1 {
        if let Some(n) = hosts.iter().position(|h| h.is_empty()) {
            return Err(UrlError::new(format!(
                "host {} of the list is empty (hosts are separated by single commas)",
                n + 1
            )));
        }
        for (n, host) in hosts.iter().enumerate() {
            if hosts[..n].contains(host) {
                return Err(UrlError::new(format!("host {host} is listed twice")));
            }
        }
    }
    Ok(hosts
        .iter()
        .map(|host| format!("mysql://{user}{host}{tail}"))
        .collect())
}

/// The writer of `url` when it lists several hosts, shared with every other pool of
/// the process opened with the same URL; `None` for one host.
pub fn writer(url: &str) -> Result<Option<Arc<Writer>>, UrlError> {
    static WRITERS: OnceLock<Mutex<HashMap<String, Arc<Writer>>>> = OnceLock::new();
    let urls = split_hosts(url)?;
    if urls.len() < 2 {
        return Ok(None);
    }
    let mut writers = WRITERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let writer = writers.entry(url.to_owned()).or_insert_with(|| {
        let names = urls.iter().map(|u| host_of(u)).collect();
        Arc::new(Writer {
            urls,
            names,
            current: AtomicUsize::new(0),
            switched_at: Mutex::new(None),
            settled: AtomicBool::new(false),
            electing: tokio::sync::Mutex::new(()),
        })
    });
    Ok(Some(writer.clone()))
}

/// `host:port` of a single-host URL, without the user or password.
fn host_of(url: &str) -> String {
    let rest = url.strip_prefix("mysql://").unwrap_or(url);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

impl Writer {
    /// The writer's index in the list and its URL.
    fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire);
        (i, &self.urls[i])
    }

    /// True for a pooled connection made before the writer last changed: the pool
    /// discards it instead of handing it out.
    pub fn made_before_switch(&self, created: Instant) -> bool {
        let switched = self.switched_at.lock().unwrap_or_else(|e| e.into_inner());
        switched.is_some_and(|at| created < at)
    }

    /// A new connection to the writer, ready to write. The first one of the process
    /// looks up the recorded writer; when the writer cannot be reached or is not
    /// ready, a new one is elected first.
    pub async fn connect(&self, settings: &Settings) -> ConnectionResult<MysqlConn> {
        if !self.settled.load(Ordering::Acquire) {
            let _electing = self.electing.lock().await;
            if !self.settled.load(Ordering::Acquire) {
                self.settle(settings).await;
                self.settled.store(true, Ordering::Release);
            }
        }
        let (seen, url) = self.current();
        let refused = match connect_ready(url, settings, settings.connect_timeout).await {
            Ok((conn, _)) => return Ok(conn),
            Err(e) => e,
        };
        let elected = {
            let _electing = self.electing.lock().await;
            match self.current().0 {
                now if now != seen => Some(now),
                _ => self.settle(settings).await,
            }
        };
        match elected {
            Some(i) => connect_ready(&self.urls[i], settings, settings.connect_timeout)
                .await
                .map(|(conn, _)| conn),
            None => Err(refused),
        }
    }

    /// The health probe's check, once a second: replaces a writer that is no longer
    /// ready, and follows a record another daemon changed. True when it moved.
    pub async fn check(&self, settings: &Settings) -> bool {
        let (seen, url) = self.current();
        let _electing = self.electing.lock().await;
        if self.current().0 != seen {
            return true;
        }
        let recorded = match look(url, settings).await {
            None => {
                self.settle(settings).await;
                return self.current().0 != seen;
            }
            Some(recorded) => recorded,
        };
        let named = self.names.iter().position(|n| Some(n) == recorded.as_ref());
        let follow = match named {
            Some(i) if i == seen => return false,
            Some(_) => {
                self.usable(recorded.as_deref(), (seen, seen), settings)
                    .await
            }
            None => None,
        };
        match follow {
            Some(i) if i != seen => {
                self.switch(seen, i);
                true
            }
            // No record yet (the daemons before this one had no list), or one naming
            // a host that stayed not ready: this writer stands, recorded.
            _ => {
                record(url, &self.names[seen], recorded.as_deref(), settings).await;
                false
            }
        }
    }

    /// Elects the writer: the recorded one when it is ready, else the first ready host
    /// in list order, recorded in its place unless another daemon changed the record
    /// meanwhile (then that one is followed). `None` when no host is ready.
    async fn settle(&self, settings: &Settings) -> Option<usize> {
        let (seen, _) = self.current();
        let mut first = None;
        for (i, url) in self.urls.iter().enumerate() {
            if let Some(recorded) = look(url, settings).await {
                first = Some((i, recorded));
                break;
            }
        }
        let (first, recorded) = first?;
        let chosen = match self
            .usable(recorded.as_deref(), (first, seen), settings)
            .await
        {
            Some(i) => i,
            None => {
                let url = &self.urls[first];
                match record(url, &self.names[first], recorded.as_deref(), settings).await {
                    Some(false) => {
                        let now = look(url, settings).await.flatten();
                        let usable = self.usable(now.as_deref(), (first, seen), settings);
                        usable.await.unwrap_or(first)
                    }
                    _ => first,
                }
            }
        };
        if chosen != seen {
            self.switch(seen, chosen);
        }
        Some(chosen)
    }

    /// The host `recorded` names when it may be the writer: it is `first` (ready), or
    /// it is ready. A host another daemon recorded (not the one this daemon just left,
    /// `seen`) that is not ready is given a few seconds: a node reports itself not
    /// ready for a moment while the cluster changes its membership, and taking another
    /// writer then would put two nodes to work.
    async fn usable(
        &self,
        recorded: Option<&str>,
        (first, seen): (usize, usize),
        settings: &Settings,
    ) -> Option<usize> {
        let i = self
            .names
            .iter()
            .position(|n| Some(n.as_str()) == recorded)?;
        if i == first {
            return Some(i);
        }
        let tries = if i == seen { 1 } else { RECORDED_TRIES };
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if is_ready(&self.urls[i], settings).await {
                return Some(i);
            }
        }
        None
    }

    fn switch(&self, from: usize, to: usize) {
        *self.switched_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.current.store(to, Ordering::Release);
        warn!(
            from = %self.names[from],
            to = %self.names[to],
            "database writer moved: the first ready host of database.url is now another"
        );
    }
}

#[cfg(test)]
mod tests;
