//! `--trace-sql`: a TCP relay between the daemons and MariaDB that reads the MySQL
//! client/server protocol as it passes and times every command from the moment the
//! daemon sent it to the server's first answering packet. That is the round trip as
//! the daemon waits for it: the server's work, its lock waits and its fsync at COMMIT,
//! plus loopback. Statements are grouped by their SQL with bind lists folded
//! (`IN (?…)`), prepared statements by the SQL they were prepared from, and a COMMIT
//! by the statement before it (which tells the claim's COMMIT from the grant's).
//!
//! A profiling aid, not a figure: the relay adds a hop to every round trip and its own
//! CPU to the bench process, so throughput measured through it is lower.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::BenchError;

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;
/// Longest label kept.
const LABEL_LEN: usize = 110;

/// Round trips of one kind of statement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stat {
    /// How many.
    pub count: u64,
    /// Their summed time.
    pub total: Duration,
    /// The longest.
    pub max: Duration,
}

type Stats = Arc<Mutex<HashMap<String, Stat>>>;

/// A running relay; stops accepting when dropped.
pub struct SqlTrace {
    port: u16,
    stats: Stats,
    stop: CancellationToken,
}

impl Drop for SqlTrace {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One connection's view of the protocol.
#[derive(Default)]
struct Session {
    pending: Option<(String, Instant)>,
    prepared: HashMap<u32, String>,
    preparing: Option<String>,
    last: String,
    /// The command in flight locks coupon rows (`SELECT coupons … FOR UPDATE`).
    locking_coupons: bool,
    /// Since when this connection's transaction has held coupon row locks, and how
    /// much of that time it spent waiting on the server since.
    holding: Option<(Instant, Duration)>,
}

/// The label of the time a grant transaction held its coupon row locks.
pub const HELD: &str =
    "[coupon row locks held: the coupon locking read answered -> COMMIT answered]";
/// The label of the part of [`HELD`] spent in the daemon, between round trips.
pub const HELD_DAEMON: &str =
    "[... of which in the daemon between round trips (rules, rows, scheduling)]";

impl SqlTrace {
    /// Starts a relay on `127.0.0.1:0` to the server of `server_url`
    /// (`mysql://user@host:port`).
    pub async fn start(server_url: &str) -> Result<SqlTrace, BenchError> {
        let rest = server_url.trim_start_matches("mysql://");
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split('/').next().unwrap_or(host);
        let upstream = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:3306")
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError::Setup(format!("SQL trace relay: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| BenchError::Setup(format!("SQL trace relay: {e}")))?
            .port();
        let stats: Stats = Arc::default();
        let stop = CancellationToken::new();
        let (accepted, stopped) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stopped.cancelled() => return,
                    client = listener.accept() => client,
                };
                let Ok((client, _)) = client else { continue };
                tokio::spawn(relay(client, upstream.clone(), accepted.clone()));
            }
        });
        Ok(SqlTrace { port, stats, stop })
    }

    /// `url` (`mysql://user@host:port/db`, no query string) pointed at the relay.
    pub fn rewrite(&self, url: &str) -> String {
        let rest = url.trim_start_matches("mysql://");
        let (user, hostpath) = rest.rsplit_once('@').map_or(("", rest), |(u, h)| (u, h));
        let path = hostpath.split_once('/').map_or("", |(_, p)| p);
        let at = if user.is_empty() { "" } else { "@" };
        // mysql_async moves a connection to 127.0.0.1 over to the server's Unix socket
        // (`prefer_socket`), which would go round the relay.
        format!(
            "mysql://{user}{at}127.0.0.1:{}/{path}?prefer_socket=false",
            self.port
        )
    }

    /// Forgets what was seen so far.
    pub fn reset(&self) {
        lock(&self.stats).clear();
    }

    /// Every kind of round trip seen, the longest total first.
    pub fn take(&self) -> Vec<(String, Stat)> {
        let mut all: Vec<(String, Stat)> = lock(&self.stats).drain().collect();
        all.sort_by_key(|b| std::cmp::Reverse(b.1.total));
        all
    }
}

/// Prints the round trips of a run of `requests` requests that lasted `wall`, the
/// longest total first.
pub fn print(rows: &[(String, Stat)], requests: usize, wall: Duration) {
    let real = rows.iter().filter(|(label, _)| !label.starts_with('['));
    let trips: u64 = real.clone().map(|(_, s)| s.count).sum();
    let total: Duration = real.map(|(_, s)| s.total).sum();
    println!(
        "  SQL trace: {trips} commands ({:.2} per request), {:.2} s waiting on the server summed over connections ({:.2}x the wall time)",
        trips as f64 / requests.max(1) as f64,
        total.as_secs_f64(),
        total.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    );
    println!(
        "    {:>7} {:>9} {:>8} {:>8} {:>6}  statement",
        "count", "total s", "avg ms", "max ms", "share"
    );
    for (label, stat) in rows.iter().take(24) {
        println!(
            "    {:>7} {:>9.3} {:>8.3} {:>8.1} {:>5.1}%  {label}",
            stat.count,
            stat.total.as_secs_f64(),
            stat.total.as_secs_f64() * 1e3 / stat.count.max(1) as f64,
            stat.max.as_secs_f64() * 1e3,
            100.0 * stat.total.as_secs_f64() / total.as_secs_f64().max(1e-9),
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn relay(client: TcpStream, upstream: String, stats: Stats) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let session = Arc::new(Mutex::new(Session::default()));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_server = pump(
        client_read,
        server_write,
        session.clone(),
        stats.clone(),
        true,
    );
    let to_client = pump(server_read, client_write, session, stats, false);
    let _ = tokio::join!(to_server, to_client);
}

/// Copies bytes from `from` to `to`, looking at each complete packet before the chunk
/// that completes it is passed on (so a command is timed before the server can answer).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    session: Arc<Mutex<Session>>,
    stats: Stats,
    from_client: bool,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        partial.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while partial.len() - start >= 4 {
            let h = &partial[start..start + 4];
            let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
            if partial.len() - start < 4 + len {
                break;
            }
            let (seq, payload) = (h[3], &partial[start + 4..start + 4 + len]);
            let mut s = lock(&session);
            if from_client {
                sent(&mut s, &stats, seq, payload);
            } else {
                answered(&mut s, &stats, seq, payload);
            }
            start += 4 + len;
        }
        partial.drain(..start);
        to.write_all(&chunk[..n]).await?;
    }
}

fn sent(s: &mut Session, stats: &Stats, seq: u8, payload: &[u8]) {
    if seq != 0 || payload.is_empty() {
        return;
    }
    let text = || String::from_utf8_lossy(&payload[1..]).into_owned();
    let label = match payload[0] {
        COM_QUERY => {
            let sql = fold(&text());
            let upper = sql.to_ascii_uppercase();
            if upper.starts_with("COMMIT") || upper.starts_with("ROLLBACK") {
                format!("{sql} (after: {})", s.last)
            } else {
                if !upper.starts_with("BEGIN") && !upper.starts_with("START TRANSACTION") {
                    s.last = short(&sql, 60);
                }
                sql
            }
        }
        COM_STMT_PREPARE => {
            let sql = fold(&text());
            s.preparing = Some(sql.clone());
            format!("prepare: {sql}")
        }
        COM_STMT_EXECUTE if payload.len() >= 5 => {
            let id = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
            let sql = s
                .prepared
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("statement {id}"));
            s.last = short(&sql, 60);
            s.locking_coupons = sql.starts_with("SELECT coupons.") && sql.contains("FOR UPDATE");
            format!("execute: {sql}")
        }
        COM_STMT_CLOSE => {
            record(
                stats,
                "close a prepared statement (no answer)".into(),
                Duration::ZERO,
            );
            return;
        }
        COM_QUIT => return,
        other => format!("command 0x{other:02x}"),
    };
    s.pending = Some((short(&label, LABEL_LEN), Instant::now()));
}

fn answered(s: &mut Session, stats: &Stats, seq: u8, payload: &[u8]) {
    if seq != 1 {
        return;
    }
    let Some((label, at)) = s.pending.take() else {
        return;
    };
    if let Some(sql) = s.preparing.take() {
        // COM_STMT_PREPARE_OK: 0x00, then the statement id.
        if payload.len() >= 5 && payload[0] == 0 {
            let id = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
            s.prepared.insert(id, sql);
        }
    }
    let took = at.elapsed();
    if let Some((since, server)) = &mut s.holding {
        *server += took;
        if label.starts_with("COMMIT") || label.starts_with("ROLLBACK") {
            let held = since.elapsed();
            record(stats, HELD.into(), held);
            record(stats, HELD_DAEMON.into(), held.saturating_sub(*server));
            s.holding = None;
        }
    }
    if std::mem::take(&mut s.locking_coupons) {
        s.holding = Some((Instant::now(), Duration::ZERO));
    }
    record(stats, label, took);
}

fn record(stats: &Stats, label: String, took: Duration) {
    let mut all = lock(stats);
    let stat = all.entry(label).or_default();
    stat.count += 1;
    stat.total += took;
    stat.max = stat.max.max(took);
}

/// SQL on one line, without identifier quotes, with runs of placeholders and of
/// placeholder rows folded: `IN (?, ?, ?)` → `IN (?…)`, `VALUES (?, ?), (?, ?)` →
/// `VALUES (?…)…`.
fn fold(sql: &str) -> String {
    let mut s: String = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('`', "");
    if s.len() > 4096 {
        // A multi-row INSERT: its first row says what it is.
        let cut = (0..=4096)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    for (from, to) in [("?, ?", "?"), ("(?), (?)", "(?)")] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s.replace("(?)", "(?…)")
}

fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_lists_and_rows_are_folded() {
        assert_eq!(
            fold("SELECT `a` FROM `t` WHERE `id` IN (?, ?, ?)"),
            "SELECT a FROM t WHERE id IN (?…)"
        );
        assert_eq!(
            fold("INSERT INTO `t` (`a`) VALUES (?), (?), (?)"),
            "INSERT INTO t (a) VALUES (?…)"
        );
    }
}
