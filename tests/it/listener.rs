//! The health and metrics listener under a flood of idle connections: the real binary
//! under a low file-descriptor limit, more idle connections than the limit, and the
//! things that used to starve (`/healthz`, deliveries, a reload) still work at once.
//! Everything listens on loopback only, and every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::operations::harness::*;
use crate::support::*;

/// The daemon's `ulimit -n`: well under the flood, well over what its pool, its
/// partner connections and the listener's cap need.
const NOFILE: u32 = 256;
const FLOOD: usize = 1_100;
const MAX_CONNECTIONS: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on top of `HEADER_TIMEOUT` for a loaded test machine.
const MARGIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_starves_neither_health_nor_deliveries_nor_reload() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("flood");
    let channels = wallet_channel(&receiver.base_url());
    let path = bounded_config(&dir, &db.url, &channels, &standard_campaigns(5));
    let ctx = migrated(&path).await;
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!(r#"ulimit -n {NOFILE} && exec "$0" "$@""#),
        BIN,
    ]);
    let daemon = Daemon::start_with(command, &path, &dir.0.join("d.log"), None);
    let address = daemon.http_address().await;
    assert_idle_connections_close_after_the_header_timeout(&daemon, &address);

    let flood = open_idle(&address, FLOOD).await;
    // More than the daemon's limit, even where the daemon stopped accepting and the
    // kernel's backlog filled up.
    assert!(flood.len() > NOFILE as usize, "{} connected", flood.len());

    // Health: answered while the flood is open, within one header timeout.
    let client = reqwest::Client::builder()
        .timeout(HEADER_TIMEOUT + MARGIN)
        .build()
        .unwrap();
    let started = Instant::now();
    let health = client.get(format!("http://{address}/healthz")).send().await;
    let health = health.unwrap_or_else(|e| panic!("/healthz: {e}\n{}", tail(&daemon.log_text())));
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < HEADER_TIMEOUT + MARGIN);

    // Deliveries: every one at its first attempt, none short of a file descriptor.
    let n = 20;
    burst(&ctx, "flood", n).await;
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(15), &[&daemon]).await;
    assert_eq!(
        count(&ctx, "delivery_attempts WHERE error LIKE '%open files%'").await,
        0,
        "no attempt ran out of file descriptors"
    );
    assert_eq!(
        count(
            &ctx,
            "deliveries WHERE event_type = 'coupon.granted' AND attempts <> 1"
        )
        .await,
        0,
        "every delivery succeeded at its first attempt"
    );

    // Reload: a coupon added to the config is applied.
    let grown = standard_campaigns(5).replace(
        "      - { id: NEW8,",
        "      - { id: NEW9, face_value: \"9.00\", stock: 7, channel: wallet }\n      - { id: NEW8,",
    );
    bounded_config(&dir, &db.url, &channels, &grown);
    daemon.signal("HUP");
    let reloaded = wait_for("NEW9 in the database", Duration::from_secs(5), || async {
        (count(&ctx, "coupons WHERE id = 'NEW9'").await == 1).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "{}", tail(&daemon.log_text()));
    drop(flood);
}

/// Idle connections, new or kept alive after a request, are closed after the header
/// timeout. They are fewer than the cap, so none is shed for a newer one; this runs
/// before the flood, whose last connections may reach the daemon seconds after they
/// connected (the kernel holds a handshake back while the accept queue is full).
fn assert_idle_connections_close_after_the_header_timeout(daemon: &Daemon, address: &str) {
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    let mut kept_alive = TcpStream::connect(address).unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: couponsd\r\n\r\n")
        .unwrap();
    idle.push(kept_alive);
    let opened = Instant::now();
    for (i, mut stream) in idle.into_iter().enumerate() {
        let closed_after = closed_within(&mut stream, opened, HEADER_TIMEOUT + MARGIN);
        let closed_after = closed_after
            .unwrap_or_else(|| panic!("connection {i} still open\n{}", tail(&daemon.log_text())));
        assert!(
            closed_after >= HEADER_TIMEOUT - Duration::from_millis(100),
            "connection {i} closed after {closed_after:?}, before the header timeout"
        );
    }
}

/// The harness's config with `http.max_connections` and `http.header_timeout` set.
fn bounded_config(dir: &TempDir, url: &str, channels: &str, campaigns: &str) -> std::path::PathBuf {
    let path = write_config(&dir.0, url, channels, campaigns, "");
    let yaml = std::fs::read_to_string(&path).unwrap().replace(
        "http:\n  listen: 127.0.0.1:0\n",
        &format!(
            "http:\n  listen: 127.0.0.1:0\n  max_connections: {MAX_CONNECTIONS}\n  header_timeout: {}ms\n",
            HEADER_TIMEOUT.as_millis()
        ),
    );
    assert!(yaml.contains("max_connections: 8"), "{yaml}");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `n` connections to `address` that send nothing; those not connected within 5 s are
/// left out (the caller counts them).
async fn open_idle(address: &str, n: usize) -> Vec<TcpStream> {
    let need = n as u64 + 200;
    if nofile_soft_limit() < need {
        // Up to the hard limit, which needs no privilege.
        let raise = format!("--nofile={need}:");
        let pid = std::process::id().to_string();
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &raise])
            .status();
    }
    let limit = nofile_soft_limit();
    assert!(
        limit >= need,
        "the test needs ulimit -n {need} at least, has {limit}"
    );
    let connects: Vec<_> = (0..n)
        .map(|_| {
            let address = address.to_owned();
            tokio::spawn(async move {
                let connect = tokio::net::TcpStream::connect(address);
                tokio::time::timeout(Duration::from_secs(5), connect).await
            })
        })
        .collect();
    let mut open = Vec::with_capacity(n);
    for connect in connects {
        if let Ok(Ok(Ok(stream))) = connect.await {
            open.push(stream.into_std().unwrap());
        }
    }
    for stream in &open {
        stream.set_nonblocking(false).unwrap();
    }
    open
}

/// How long after `since` the peer closed `stream` (its response, if any, read and
/// skipped), or `None` when it is still open at `since + within`.
fn closed_within(stream: &mut TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        let left = (since + within).checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(since.elapsed())
            }
            Err(_) => return None,
        }
    }
}

fn nofile_soft_limit() -> u64 {
    let out = Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    text.parse().unwrap_or(u64::MAX)
}
