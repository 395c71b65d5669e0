//! A database that stalls, and hosts whose clocks disagree: the real binary on real
//! MariaDB, behind a TCP relay the test pauses, and with a host clock skewed by an hour
//! (debug builds only, `COUPONSD_TEST_CLOCK_SKEW_SECS`). Every wait is bounded.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::operations::harness::*;
use crate::support::*;

/// A TCP relay on 127.0.0.1:0 to a MariaDB server that can be paused: paused, it moves
/// no byte either way (connections, old and new, stay open), like a server stopped
/// with SIGSTOP or a network that drops everything.
struct PausableRelay {
    port: u16,
    paused: Arc<watch::Sender<bool>>,
}

impl PausableRelay {
    async fn start(target: String) -> PausableRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let paused = Arc::new(watch::Sender::new(false));
        let gate = paused.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(relay(in_read, out_write, gate.subscribe()));
                tokio::spawn(relay(out_read, in_write, gate.subscribe()));
            }
        });
        PausableRelay { port, paused }
    }

    fn pause(&self) {
        self.paused.send_replace(true);
    }

    fn resume(&self) {
        self.paused.send_replace(false);
    }
}

/// Copies `from` to `to`, holding every chunk while paused.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The daemon's config with `database.*` timeouts, and the database reached at `url`.
fn with_database(path: &Path, url: &str, db_url: &str, database: &str) {
    let yaml = std::fs::read_to_string(path).unwrap();
    let yaml = yaml.replace(db_url, url).replace(
        "  max_connections: 6\n",
        &format!("  max_connections: 6\n{database}"),
    );
    std::fs::write(path, yaml).unwrap();
}

async fn status_of(address: &str, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

async fn database_up(address: &str) -> Option<bool> {
    let (_, text) = status_of(address, "/metrics").await?;
    text.lines().find_map(|l| match l {
        "couponsd_database_up 1" => Some(true),
        "couponsd_database_up 0" => Some(false),
        _ => None,
    })
}

async fn ready(address: &str) -> Option<bool> {
    status_of(address, "/readyz").await.map(|(s, _)| s == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_database_makes_the_daemon_unready_within_twice_the_timeouts_and_it_resumes_by_itself(
) {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("paused");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(40),
        "",
    );
    let ctx = migrated(&path).await;
    let server = mysql_server();
    let relay = PausableRelay::start(server.trim_start_matches("mysql://root@").to_owned()).await;
    // mysql_async would otherwise move a loopback connection to the server's Unix
    // socket, around the relay.
    let relayed = db.url.replace(
        server.trim_start_matches("mysql://root@"),
        &format!("127.0.0.1:{}", relay.port),
    ) + "?prefer_socket=false";
    with_database(
        &path,
        &relayed,
        &db.url,
        "  statement_timeout: 2s\n  connect_timeout: 2s\n",
    );
    let socket = NotifySocket::bind(&dir.0);
    let daemon = start_under_systemd(&path, &dir.0.join("d.log"), &socket);
    let address = daemon.http_address().await;
    burst(&ctx, "before", 10).await;
    wait_until_all_done(&ctx, 10, Duration::from_secs(15), &[&daemon]).await;
    assert_eq!(ready(&address).await, Some(true));
    assert_eq!(database_up(&address).await, Some(true));

    relay.pause();
    let paused_at = Instant::now();
    let seen_down = wait_for(
        "unready and database_up 0",
        Duration::from_secs(10),
        || async {
            let down =
                ready(&address).await == Some(false) && database_up(&address).await == Some(false);
            down.then(|| paused_at.elapsed())
        },
    )
    .await;
    let seen_down = seen_down.unwrap_or_else(|| {
        panic!(
            "still ready 10 s into the pause:\n{}",
            tail(&daemon.log_text())
        )
    });
    assert!(
        seen_down <= Duration::from_secs(4),
        "2× the 2 s timeouts is 4 s; /readyz and database_up took {seen_down:?}"
    );
    let asked = Instant::now();
    let (status, text) = status_of(&address, "/readyz").await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "/readyz answers from the probe's state, without waiting for the database: {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503);
    assert!(text.starts_with("database unreachable"), "{text}");
    assert_eq!(status_of(&address, "/healthz").await.unwrap().0, 200);
    burst(&ctx, "during", 10).await;

    // The loops wait for the database, and say so: the watchdog is still fed past the
    // point where a loop that stopped coming round would be stale (4 s here).
    let stale_after = Duration::from_secs(5);
    tokio::time::sleep(stale_after.saturating_sub(paused_at.elapsed())).await;
    let pings = |s: &NotifySocket| {
        s.messages()
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count()
    };
    let before = pings(&socket);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        pings(&socket) > before,
        "watchdog pings stopped while the database was paused:\n{}",
        tail(&daemon.log_text())
    );
    assert_eq!(
        count(
            &ctx,
            "trigger_requests WHERE request_key LIKE 'during-%' AND status = 'done'"
        )
        .await,
        0,
        "nothing moves while the database is paused"
    );

    relay.resume();
    let back = wait_for("ready again", Duration::from_secs(10), || async {
        let up = ready(&address).await == Some(true) && database_up(&address).await == Some(true);
        up.then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "not ready after the resume:\n{}",
        tail(&daemon.log_text())
    );
    wait_until_all_done(&ctx, 20, Duration::from_secs(30), &[&daemon]).await;
    assert!(
        daemon.log_text().contains("the database answers again"),
        "{}",
        tail(&daemon.log_text())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_host_clock_is_an_hour_ahead_steals_no_lease_and_no_tick() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("skew");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(40),
        "",
    );
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("  lease: 2s\n", "  lease: 30s\n");
    std::fs::write(&path, yaml).unwrap();
    let ctx = migrated(&path).await;
    // Another daemon's claim, taken just now on the database's clock.
    with_sql(
        &ctx,
        "INSERT INTO trigger_requests (request_key, user_id, event, status, claim_token, claimed_at) \
         VALUES ('held', 'u-held', 'app_open', 'claimed', 42, UTC_TIMESTAMP(6))",
    )
    .await;
    let on_time = Daemon::start(&path, &dir.0.join("on-time.log"));
    let mut ahead = std::process::Command::new(BIN);
    ahead.env("COUPONSD_TEST_CLOCK_SKEW_SECS", "3600");
    let ahead = Daemon::start_with(ahead, &path, &dir.0.join("ahead.log"), None);
    on_time.http_address().await;
    ahead.http_address().await;

    // Lease recovery runs every second on both; watch it for a few ticks.
    let mut ticks = Vec::new();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        let rows: Vec<TickRow> = query_rows(
            &ctx,
            "SELECT CAST(COALESCE(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), last_tick), 0) AS SIGNED) AS ahead_us, \
             CAST(COALESCE(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), held_until), 0) AS SIGNED) AS held_us, \
             CAST(UNIX_TIMESTAMP(last_tick) AS SIGNED) AS tick \
             FROM job_leases WHERE job = 'reclaim_leases' AND last_tick IS NOT NULL",
        )
        .await;
        for row in rows {
            assert!(
                row.ahead_us < 2_000_000 && row.held_us < 31_000_000,
                "the tick or its lease is ahead of the database's clock ({row:?}): a skewed host took it\n{}",
                tail(&ahead.log_text())
            );
            if ticks.last() != Some(&row.tick) {
                ticks.push(row.tick);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ticks.len() >= 3,
        "ticks keep being taken, one by one: {ticks:?}"
    );
    assert_eq!(
        count(&ctx, "trigger_requests WHERE request_key = 'held' AND status = 'claimed' AND claim_token = 42 AND attempts = 0").await,
        1,
        "a claim 5 s old under a 30 s lease is not recovered:\n{}",
        tail(&ahead.log_text())
    );
}

#[derive(Debug, diesel::QueryableByName)]
struct TickRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ahead_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    held_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tick: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_longer_than_the_statement_timeout_is_stopped_by_the_database() {
    use couponsd::store::{Access, Db, Settings};
    use diesel_async::SimpleAsyncConnection;
    let Some(db) = mysql_db().await else { return };
    let settings = Settings {
        statement_timeout: Duration::from_secs(1),
        ..Settings::new(2, Access::ReadWrite)
    };
    let pool = Db::open(&db.url, settings).unwrap();
    let started = Instant::now();
    let run = async {
        match pool.get().await.unwrap() {
            couponsd::store::Conn::Mysql(mut conn) => {
                // A cross join of the catalog: far more than a second of work.
                conn.batch_execute(
                    "SELECT COUNT(*) FROM information_schema.columns a, \
                     information_schema.columns b, information_schema.columns c",
                )
                .await
            }
            couponsd::store::Conn::Sqlite(_) => unreachable!(),
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the statement ran on past 10 s");
    let error = result.expect_err("the statement was stopped");
    assert!(
        couponsd::store::is_interrupted(&error),
        "interrupted by max_statement_time: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_fails_a_connection_within_the_connect_timeout() {
    use couponsd::store::{Access, Db, Settings};
    // A listener that takes connections and says nothing, like a stopped server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let settings = Settings {
        connect_timeout: Duration::from_secs(1),
        ..Settings::new(2, Access::ReadWrite)
    };
    let url = format!("mysql://root@127.0.0.1:{port}/none?prefer_socket=false");
    let pool = Db::open(&url, settings).unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("no answer within 10 s: the connection is not bounded");
    assert!(got.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}
