//! Production operation with the real binary on real MariaDB: several daemons on one
//! database, `kill -9`, a database restart, partners down or gone, systemd
//! notifications and a graceful stop. Everything listens on loopback only, and every
//! wait is bounded.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use couponsd::config::Config;
use couponsd::daemon::Context;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_couponsd");

/// A `couponsd run` process; killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::start_with(Command::new(BIN), config, log, None)
    }

    /// Starts `command` (the binary, or a shell that execs it) with `run`; with
    /// `notify`, as systemd would, else with no `NOTIFY_SOCKET` whatever the test's is.
    fn start_with(
        mut command: Command,
        config: &Path,
        log: &Path,
        notify: Option<&Path>,
    ) -> Daemon {
        match notify {
            Some(socket) => command.env("NOTIFY_SOCKET", socket),
            None => command.env_remove("NOTIFY_SOCKET"),
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("COUPONSD_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("couponsd starts");
        Daemon {
            child,
            log: log.to_owned(),
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The health and metrics address the daemon logged (`http.listen: 127.0.0.1:0`).
    async fn http_address(&self) -> String {
        let found = wait_for("the metrics listener", Duration::from_secs(15), || async {
            self.log_text().lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                let fields = &v["fields"];
                (fields["message"] == "health and metrics listening")
                    .then(|| fields["address"].as_str().map(str::to_owned))?
            })
        })
        .await;
        found.unwrap_or_else(|| panic!("no listener logged:\n{}", self.log_text()))
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` every 50 ms until it gives a value or `within` has passed.
async fn wait_for<T, F, Fut>(_what: &str, within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config for the binary: JSON logs, the listener on a free loopback port, quick
/// polling and retries, a 2 s lease recovered every second. `channels` and `campaigns`
/// are YAML blocks; `extra` is more top-level YAML.
fn write_config(dir: &Path, url: &str, channels: &str, campaigns: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"database:
  url: "{url}"
  max_connections: 6
rules:
  dir: "{rules}"
worker:
  batch_size: 20
  concurrency: 2
  poll_interval: 20ms
  lease: 2s
  shutdown_grace: 3s
dispatch:
  retry_base: 50ms
  retry_max: 300ms
schedule:
  reclaim_leases: "* * * * * *"
http:
  listen: 127.0.0.1:0
logging:
  format: json
channels:
{channels}
campaigns:
{campaigns}
{extra}"#,
        rules = shipped_rules().display(),
    );
    let path = dir.join("couponsd.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn wallet_channel(base: &str) -> String {
    format!(
        r#"  wallet:
    url: "{base}/webhooks/wallet"
    secret: "{SECRET}"
    timeout: 2s
    max_attempts: 50"#
    )
}

/// Migrates through the binary, then a context for inserts and asserts.
async fn migrated(config: &Path) -> Context {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("migrate")
        .env_remove("COUPONSD_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    context(Config::load(config).unwrap()).await
}

/// Queues `n` requests in multi-row inserts: users `u0…`, every fifth user twice.
async fn burst(ctx: &Context, tag: &str, n: usize) {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("('{tag}-{i}', 'u{tag}{}', 'app_open')", i - i / 5))
        .collect();
    for chunk in rows.chunks(200) {
        let sql = format!(
            "INSERT INTO trigger_requests (request_key, user_id, event) VALUES {}",
            chunk.join(",")
        );
        with_sql(ctx, &sql).await;
    }
}

async fn with_sql(ctx: &Context, sql: &str) {
    use diesel_async::RunQueryDsl;
    let query = diesel::sql_query(sql.to_owned());
    let result = match ctx.db.get().await.unwrap() {
        couponsd::store::Conn::Mysql(mut c) => query.execute(&mut *c).await,
        couponsd::store::Conn::Sqlite(mut c) => query.execute(&mut *c).await,
    };
    result.unwrap();
}

async fn count(ctx: &Context, from_where: &str) -> i64 {
    counts(ctx, "'n'", from_where)
        .await
        .get("n")
        .copied()
        .unwrap_or(0)
}

/// Waits until `n` requests are finished and every coupon.granted delivery is
/// delivered; panics with the daemons' logs otherwise.
async fn wait_until_all_done(ctx: &Context, n: i64, within: Duration, daemons: &[&Daemon]) {
    let done = wait_for("all requests done and delivered", within, || async {
        let finished = count(ctx, "trigger_requests WHERE status = 'done'").await;
        let open = count(
            ctx,
            "deliveries WHERE event_type = 'coupon.granted' AND status <> 'delivered'",
        )
        .await;
        (finished == n && open == 0).then_some(())
    })
    .await;
    if done.is_none() {
        let statuses = counts(ctx, "status", "trigger_requests").await;
        let outbox = counts(ctx, "status", "deliveries").await;
        let logs: Vec<String> = daemons.iter().map(|d| tail(&d.log_text())).collect();
        panic!(
            "not finished within {within:?}: requests {statuses:?}, deliveries {outbox:?}\n{}",
            logs.join("\n----\n")
        );
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Every request granted once, no coupon oversold, every grant delivered, and every
/// repeat of a delivery carried the same `webhook-id`.
async fn assert_the_books_balance(ctx: &Context, n: i64, receiver: &Receiver) {
    assert_eq!(count(ctx, "grants").await, n, "one grant per request");
    assert_eq!(
        count(ctx, "trigger_requests WHERE outcome = 'granted'").await,
        n
    );
    let oversold = count(
        ctx,
        "coupons c WHERE c.remaining < 0 OR c.granted + c.remaining <> c.stock \
         OR c.granted <> (SELECT COUNT(*) FROM grants g WHERE g.coupon_id = c.id)",
    )
    .await;
    assert_eq!(
        oversold, 0,
        "stock matches the ledger and never goes below zero"
    );
    assert_eq!(
        count(
            ctx,
            "grants g JOIN deliveries d ON d.grant_id = g.id AND d.status = 'delivered'"
        )
        .await,
        n,
        "every grant has its delivered outbox row"
    );
    let mut ids_by_grant: HashMap<String, HashSet<String>> = HashMap::new();
    for seen in receiver.seen() {
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        let id = seen.headers["webhook-id"].to_str().unwrap().to_owned();
        ids_by_grant
            .entry(body["data"]["grant_id"].to_string())
            .or_default()
            .insert(id);
    }
    assert_eq!(ids_by_grant.len() as i64, n, "the partner got every grant");
    assert!(
        ids_by_grant.values().all(|ids| ids.len() == 1),
        "a repeated delivery keeps its webhook-id"
    );
}

/// The sum of `couponsd_grants_total` on a daemon's `/metrics`.
async fn grants_on_metrics(address: &str) -> f64 {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("couponsd_grants_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn mysql_db() -> Option<TestDb> {
    fresh_db(Backend::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_a_burst_and_never_oversell() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("three");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(40),
        "",
    );
    let ctx = migrated(&path).await;
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(&path, &dir.0.join(format!("d{i}.log"))))
        .collect();
    let mut addresses = Vec::new();
    for d in &daemons {
        addresses.push(d.http_address().await);
    }
    let n = 600;
    burst(&ctx, "three", n).await;
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(30), &refs).await;
    assert_the_books_balance(&ctx, n as i64, &receiver).await;
    assert_eq!(
        count(&ctx, "grants WHERE coupon_id = 'NEW10'").await,
        40,
        "the hot coupon is granted exactly to its stock"
    );
    let mut per_daemon = Vec::new();
    for address in &addresses {
        per_daemon.push(grants_on_metrics(address).await);
    }
    assert_eq!(per_daemon.iter().sum::<f64>() as usize, n, "{per_daemon:?}");
    assert!(
        per_daemon.iter().all(|g| *g > 0.0),
        "every daemon took part: {per_daemon:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_burst_loses_nothing_and_grants_nothing_twice() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("kill9");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(30),
        "",
    );
    let ctx = migrated(&path).await;
    let log_a = dir.0.join("a.log");
    let mut a = Daemon::start(&path, &log_a);
    let b = Daemon::start(&path, &dir.0.join("b.log"));
    a.http_address().await;
    b.http_address().await;
    let n = 600;
    burst(&ctx, "kill", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 100).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "no progress:\n{}", tail(&a.log_text()));
    a.kill9();
    let a = Daemon::start(&path, &log_a);
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(30), &[&a, &b]).await;
    assert_the_books_balance(&ctx, n as i64, &receiver).await;
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'claimed'").await,
        0
    );
    let recovered = count(&ctx, "trigger_requests WHERE attempts > 0").await;
    assert!(
        recovered > 0,
        "the kill left claims that lease recovery took up"
    );
    eprintln!(
        "kill -9: {recovered} request(s) recovered from the dead daemon's claims, {} webhook(s) sent again",
        receiver.seen().len() - n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_everything_and_a_gone_one_stops_only_its_channel() {
    let Some(db) = mysql_db().await else { return };
    // wallet: nothing listens on its port at first; partner: answers 410 Gone.
    let wallet = Receiver::ok().await;
    let answer_gone = Arc::new(Mutex::new(true));
    let gone = answer_gone.clone();
    let partner = Receiver::start(move |_, _| {
        if *gone.lock().unwrap() {
            StatusCode::GONE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let port = free_port();
    let channels = format!(
        "{}\n  partner:\n    url: \"{}/webhooks/partner\"\n    secret: \"{SECRET}\"\n    timeout: 2s",
        wallet_channel(&format!("http://127.0.0.1:{port}")),
        partner.base_url()
    );
    let campaigns = format!(
        "{}\n  - id: shop\n    event: purchase\n    audience: first_time\n    coupons:\n      - {{ id: SHOP3, face_value: \"3.00\", stock: 1000, channel: partner }}",
        standard_campaigns(1000)
    );
    let dir = TempDir::new("partners");
    let path = write_config(&dir.0, &db.url, &channels, &campaigns, "");
    let ctx = migrated(&path).await;
    let daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    burst(&ctx, "down", 100).await;
    with_sql(&ctx, "INSERT INTO trigger_requests (request_key, user_id, event) VALUES ('p1', 'buyer1', 'purchase'), ('p2', 'buyer2', 'purchase'), ('p3', 'buyer3', 'purchase')").await;
    // The partner's 410 disables its channel while wallet deliveries keep retrying.
    let disabled = wait_for(
        "the partner channel disabled",
        Duration::from_secs(15),
        || async {
            (count(&ctx, "channel_states WHERE channel = 'partner'").await == 1
                && count(
                    &ctx,
                    "deliveries WHERE channel = 'partner' AND status = 'dead'",
                )
                .await
                    == 3)
                .then_some(())
        },
    )
    .await;
    assert!(disabled.is_some(), "{}", tail(&daemon.log_text()));
    let retried = count(
        &ctx,
        "deliveries WHERE channel = 'wallet' AND attempts >= 2 AND status = 'pending'",
    )
    .await;
    assert!(
        retried > 0,
        "wallet deliveries retry while the receiver is down"
    );
    // Up: a forwarder on the channel's port, to the real receiver.
    let _up = forward(port, &wallet.base_url()).await;
    let delivered = wait_for(
        "wallet deliveries after the receiver is up",
        Duration::from_secs(15),
        || async {
            (count(
                &ctx,
                "deliveries WHERE channel = 'wallet' AND status = 'delivered'",
            )
            .await
                == 100)
                .then_some(())
        },
    )
    .await;
    assert!(delivered.is_some(), "{}", tail(&daemon.log_text()));
    assert_eq!(
        wallet.seen().len(),
        100,
        "each arrived once the receiver was up"
    );
    assert!(wallet.seen().iter().all(|s| s.verified));

    // Replay: refused while the channel is disabled, sent once it is enabled.
    let list = ops(&path, &["deliveries", "list", "--dead"]);
    assert!(list.contains("partner") && list.contains("410"), "{list}");
    let refused = ops_output(
        &path,
        &["deliveries", "replay", "--dead", "--channel", "partner"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("couponsd channels enable partner"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    *answer_gone.lock().unwrap() = false;
    ops(&path, &["channels", "enable", "partner"]);
    ops(
        &path,
        &["deliveries", "replay", "--dead", "--channel", "partner"],
    );
    let replayed = wait_for(
        "the replayed deliveries",
        Duration::from_secs(10),
        || async {
            (count(
                &ctx,
                "deliveries WHERE channel = 'partner' AND status = 'delivered'",
            )
            .await
                == 3)
                .then_some(())
        },
    )
    .await;
    assert!(replayed.is_some(), "{}", tail(&daemon.log_text()));
    let ids: HashMap<String, usize> = partner.seen().iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(ids.len(), 3, "three deliveries");
    assert!(
        ids.values().all(|n| *n == 2),
        "each replayed with its original webhook-id: {ids:?}"
    );
}

fn ops_output(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("COUPONSD_DATABASE_URL")
        .output()
        .unwrap()
}

fn ops(config: &Path, args: &[&str]) -> String {
    let out = ops_output(config, args);
    assert!(
        out.status.success(),
        "couponsd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Forwards connections to 127.0.0.1:`port` to `target` until dropped.
async fn forward(port: u16, target: &str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let target = target.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_exits_0_within_the_grace_and_leaves_no_claim() {
    let Some(db) = mysql_db().await else { return };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("sigterm");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(50),
        "",
    );
    let ctx = migrated(&path).await;
    let mut daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    let n = 2000;
    burst(&ctx, "term", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 100).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "{}", tail(&daemon.log_text()));
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(6)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", tail(&daemon.log_text())));
    assert!(
        status.success(),
        "exit 0: {status:?}\n{}",
        tail(&daemon.log_text())
    );
    assert!(
        took < Duration::from_secs(4),
        "within shutdown_grace (3s): {took:?}"
    );
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'claimed'").await,
        0,
        "no claim left behind"
    );
    let finished = count(&ctx, "trigger_requests WHERE status = 'done'").await;
    let queued = count(&ctx, "trigger_requests WHERE status = 'queued'").await;
    assert_eq!(finished + queued, n as i64, "the rest waits in the queue");
    assert!(queued > 0, "stopped mid-burst");
    assert_eq!(count(&ctx, "grants").await, finished);
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'pending'").await,
        0,
        "the deliveries of the batches finished were flushed before exit"
    );
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'delivered'").await,
        finished
    );
    assert!(daemon.log_text().contains("couponsd stopped"));
    eprintln!("SIGTERM: stopped in {took:?} with {finished} done and {queued} queued");
}

/// A partner that takes `delay` to answer each webhook; returns its base URL.
async fn slow_partner(delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/webhooks/{channel}",
        axum::routing::post(move || async move {
            tokio::time::sleep(delay).await;
            StatusCode::NO_CONTENT
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_outlasts_the_grace_exits_0_on_time_and_loses_nothing() {
    let Some(db) = mysql_db().await else { return };
    let dir = TempDir::new("grace");
    let slow = slow_partner(Duration::from_millis(1500)).await;
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&slow),
        &standard_campaigns(50),
        "",
    );
    let ctx = migrated(&path).await;
    let mut daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    let n = 400;
    burst(&ctx, "grace", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 100).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "{}", tail(&daemon.log_text()));
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.exit_within(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", tail(&daemon.log_text())));
    assert!(status.success(), "exit 0: {status:?}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "stopped when shutdown_grace (3s) ran out: {took:?}"
    );
    assert!(daemon.log_text().contains("worker.shutdown_grace ran out"));
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'claimed'").await,
        0
    );
    assert!(
        count(&ctx, "deliveries WHERE status = 'pending'").await > 0,
        "cut short"
    );

    // The next daemon, with a quick partner, finishes everything.
    let receiver = Receiver::ok().await;
    write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(50),
        "",
    );
    let drain = tokio::task::spawn_blocking(move || ops_output(&path, &["run", "--drain"]))
        .await
        .unwrap();
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert_eq!(
        count(&ctx, "trigger_requests WHERE status = 'done'").await,
        n as i64
    );
    assert_eq!(count(&ctx, "grants").await, n as i64);
    assert_eq!(
        count(
            &ctx,
            "grants g JOIN deliveries d ON d.grant_id = g.id AND d.status = 'delivered'"
        )
        .await,
        n as i64
    );
}

/// Collects the datagrams a daemon sends to `NOTIFY_SOCKET`.
struct NotifySocket {
    path: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test drops its side of `seen`.
            while Arc::strong_count(&into) > 1 {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    into.lock().unwrap().push(text);
                }
            }
        });
        NotifySocket { path, seen }
    }

    fn messages(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, within: Duration) -> Vec<String> {
        let found = wait_for(what, within, || async {
            let all = self.messages();
            all.iter().any(|m| m.contains(what)).then_some(all)
        })
        .await;
        found.unwrap_or_else(|| panic!("no {what} within {within:?}: {:?}", self.messages()))
    }
}

/// `couponsd run` started the way systemd starts it: `NOTIFY_SOCKET`, and a watchdog
/// whose `WATCHDOG_PID` is the daemon's own (the shell execs into it).
fn start_under_systemd(config: &Path, log: &Path, socket: &NotifySocket) -> Daemon {
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"WATCHDOG_PID=$$ exec "$0" "$@""#, BIN])
        .env("WATCHDOG_USEC", "600000");
    Daemon::start_with(command, config, log, Some(&socket.path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_reload_and_stopping() {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("notify");
    let url = format!("sqlite://{}", dir.0.join("couponsd.db").display());
    let channels = wallet_channel(&receiver.base_url());
    let path = write_config(&dir.0, &url, &channels, &standard_campaigns(5), "");
    let socket = NotifySocket::bind(&dir.0);

    // An unmigrated database: start-up fails and READY=1 is never sent.
    let mut refused = start_under_systemd(&path, &dir.0.join("refused.log"), &socket);
    let status = refused.exit_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", refused.log_text());
    assert!(refused.log_text().contains("couponsd migrate"));
    assert!(socket.messages().is_empty(), "{:?}", socket.messages());

    let ctx = migrated(&path).await;
    let mut daemon = start_under_systemd(&path, &dir.0.join("d.log"), &socket);
    let sent = socket.wait_for("READY=1", Duration::from_secs(10)).await;
    assert!(sent[0].contains("READY=1"), "READY=1 comes first: {sent:?}");
    socket
        .wait_for("STATUS=queue 0", Duration::from_secs(5))
        .await;
    socket.wait_for("WATCHDOG=1", Duration::from_secs(5)).await;

    // Reload: a new coupon in the config is applied, between RELOADING=1 and READY=1.
    let grown = standard_campaigns(5).replace(
        "      - { id: NEW8,",
        "      - { id: NEW9, face_value: \"9.00\", stock: 7, channel: wallet }\n      - { id: NEW8,",
    );
    write_config(&dir.0, &url, &channels, &grown, "");
    daemon.signal("HUP");
    socket.wait_for("RELOADING=1", Duration::from_secs(5)).await;
    let reloaded = wait_for("NEW9 in the database", Duration::from_secs(5), || async {
        (count(&ctx, "coupons WHERE id = 'NEW9'").await == 1).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "{}", tail(&daemon.log_text()));
    let all = socket.messages();
    let reloading = all.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    let ready_again = wait_for(
        "READY=1 after the reload",
        Duration::from_secs(5),
        || async {
            let all = socket.messages();
            all.iter()
                .skip(reloading + 1)
                .any(|m| m.contains("READY=1"))
                .then_some(())
        },
    )
    .await;
    assert!(ready_again.is_some(), "{:?}", socket.messages());

    // The reloaded catalog is in force: a newcomer now gets NEW10 first, and NEW9 is
    // next in the chain.
    burst(&ctx, "reload", 8).await;
    let granted = wait_for("grants", Duration::from_secs(10), || async {
        (count(&ctx, "grants").await == 8).then_some(())
    })
    .await;
    assert!(granted.is_some(), "{}", tail(&daemon.log_text()));
    assert_eq!(
        count(&ctx, "grants WHERE coupon_id = 'NEW9'").await,
        2,
        "5 NEW10, then NEW9 for the other first-timers"
    );

    // Health and metrics.
    let address = daemon.http_address().await;
    let get = |path: &str| reqwest::get(format!("http://{address}{path}"));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().starts_with("ready: rules "));
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        r#"couponsd_grants_total{campaign="newcomer",coupon="NEW9"} 2"#,
        r#"couponsd_requests_total{status="done",outcome="granted"} 8"#,
        r#"couponsd_coupon_stock_remaining{campaign="newcomer",coupon="NEW10"}"#,
        "couponsd_queue_depth ",
        "couponsd_queue_oldest_age_seconds ",
        "couponsd_batch_duration_seconds_bucket",
        "couponsd_rule_evaluation_seconds_bucket",
        "couponsd_deliveries_dead 0",
        "couponsd_database_up 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    daemon.signal("TERM");
    socket.wait_for("STOPPING=1", Duration::from_secs(5)).await;
    let status = daemon.exit_within(Duration::from_secs(6)).await.unwrap();
    assert!(status.success());
}

/// A MariaDB server of the test's own, on its own port and data folder, that the test
/// may kill and start again.
struct ThrowawayServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl ThrowawayServer {
    /// `None` (with the reason printed) when mariadbd is not installed, outside CI.
    fn install() -> Option<ThrowawayServer> {
        let installed = Path::new("/usr/sbin/mariadbd").exists()
            && Command::new("mariadb-install-db")
                .arg("--help")
                .output()
                .is_ok();
        if !installed {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true and mariadbd or mariadb-install-db is not installed"
            );
            eprintln!("SKIPPED: /usr/sbin/mariadbd or mariadb-install-db is not installed (apt-get install mariadb-server)");
            return None;
        }
        let dir = TempDir::new("mariadbd");
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.0.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--user={}", whoami()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(ThrowawayServer {
            dir,
            port: free_port(),
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let data = self.dir.0.join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("server.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.dir.0.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.0.join("pid").display()))
            .arg(format!("--user={}", whoami()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("{}/mysql", self.url());
        let up = wait_for("mariadbd", Duration::from_secs(20), || async {
            AsyncMysqlConnection::establish(&url).await.ok().map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "mariadbd did not start: {}",
            std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
        );
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_a_database_restart() {
    let Some(mut server) = ThrowawayServer::install() else {
        return;
    };
    server.start().await;
    let mut admin = AsyncMysqlConnection::establish(&format!("{}/mysql", server.url()))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE couponsd")
        .await
        .unwrap();
    drop(admin);
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("restart");
    let url = format!("{}/couponsd", server.url());
    let path = write_config(
        &dir.0,
        &url,
        &wallet_channel(&receiver.base_url()),
        &standard_campaigns(30),
        "",
    );
    let ctx = migrated(&path).await;
    let daemon = Daemon::start(&path, &dir.0.join("d.log"));
    daemon.http_address().await;
    let n = 600;
    burst(&ctx, "restart", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(20),
        || async { (count(&ctx, "grants").await >= 50).then_some(()) },
    )
    .await;
    assert!(started.is_some(), "{}", tail(&daemon.log_text()));
    server.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.start().await;
    // The test's own pool lost its connections too: a fresh context.
    let ctx = context((*ctx.config).clone()).await;
    wait_until_all_done(&ctx, n as i64, Duration::from_secs(30), &[&daemon]).await;
    assert_the_books_balance(&ctx, n as i64, &receiver).await;
    let errors = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("\"ERROR\""))
        .count();
    eprintln!(
        "database restart: {errors} error line(s) logged\n{}",
        tail(&daemon.log_text())
    );
    assert!(errors > 0, "the outage was seen and logged");
}

async fn a_replay_resends_dead_deliveries_with_their_webhook_id_once_the_channel_is_enabled(
    db: TestDb,
) {
    use couponsd::ops::deliveries::{enable, list, replay};
    use couponsd::store::deliveries::Replay;
    // 410 for the first two webhooks, 200 after: both die and disable the channel.
    let receiver = Receiver::start(|n, _| {
        if n < 2 {
            StatusCode::GONE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(3),
        "",
    ))
    .await;
    insert(&ctx, "a", "u-a", "app_open", None).await.unwrap();
    insert(&ctx, "b", "u-b", "app_open", None).await.unwrap();
    drain(&ctx).await;
    assert_eq!(count(&ctx, "deliveries WHERE status = 'dead'").await, 2);
    let table = list(&ctx, true, 10).await.unwrap();
    assert_eq!(table.lines().count(), 3, "a header and two rows:\n{table}");
    assert!(
        table.contains("coupon.granted") && table.contains("410"),
        "{table}"
    );

    let refused = replay(&ctx, Replay::AllDead).await.unwrap_err().to_string();
    assert!(
        refused.contains("couponsd channels enable wallet"),
        "{refused}"
    );
    assert!(enable(&ctx, "wallet").await.unwrap().contains("is enabled"));
    assert!(
        replay(&ctx, Replay::One(999_999)).await.is_err(),
        "not a dead delivery"
    );
    let done = replay(&ctx, Replay::Channel("wallet")).await.unwrap();
    assert!(done.starts_with("replayed 2 "), "{done}");
    drain(&ctx).await;
    assert_eq!(
        count(&ctx, "deliveries WHERE status = 'delivered'").await,
        2
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 4);
    let id = |i: usize| seen[i].headers["webhook-id"].to_str().unwrap().to_owned();
    let first: HashSet<String> = [id(0), id(1)].into();
    let again: HashSet<String> = [id(2), id(3)].into();
    assert_eq!(first, again, "the replay keeps each webhook-id");
    assert!(seen.iter().all(|s| s.verified));
}
crate::on_both_backends!(
    a_replay_resends_dead_deliveries_with_their_webhook_id_once_the_channel_is_enabled,
    a_replay_resends_dead_deliveries_with_their_webhook_id_once_the_channel_is_enabled
);
