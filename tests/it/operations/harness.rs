//! The harness of the operations tests: the real binary as a daemon, its config,
//! bursts of requests, the books to balance, a notify socket standing in for systemd,
//! a MariaDB server of the test's own, and partners that are slow, down or forwarded.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use couponsd::config::Config;
use couponsd::runtime::Daemon as InProcess;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};

use crate::support::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_couponsd");

/// A `couponsd run` process; killed when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::start_with(Command::new(BIN), config, log, None)
    }

    /// Starts `command` (the binary, or a shell that execs it) with `run`; with
    /// `notify`, as systemd would, else with no `NOTIFY_SOCKET` whatever the test's is.
    pub fn start_with(
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

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The health and metrics address the daemon logged (`http.listen: 127.0.0.1:0`).
    pub async fn http_address(&self) -> String {
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

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
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
pub async fn wait_for<T, F, Fut>(_what: &str, within: Duration, mut check: F) -> Option<T>
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
pub fn write_config(
    dir: &Path,
    url: &str,
    channels: &str,
    campaigns: &str,
    extra: &str,
) -> PathBuf {
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

pub fn wallet_channel(base: &str) -> String {
    format!(
        r#"  wallet:
    url: "{base}/webhooks/wallet"
    secret: "{SECRET}"
    timeout: 2s
    max_attempts: 50"#
    )
}

/// Migrates through the binary, then a context for inserts and asserts.
pub async fn migrated(config: &Path) -> InProcess {
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
pub async fn burst(ctx: &InProcess, tag: &str, n: usize) {
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

pub async fn with_sql(ctx: &InProcess, sql: &str) {
    let mut conn = ctx.db.get().await.unwrap();
    conn.execute(diesel::sql_query(sql)).await.unwrap();
}

pub async fn count(ctx: &InProcess, from_where: &str) -> i64 {
    counts(ctx, "'n'", from_where)
        .await
        .get("n")
        .copied()
        .unwrap_or(0)
}

/// Waits until `n` requests are finished and every coupon.granted delivery is
/// delivered; panics with the daemons' logs otherwise.
pub async fn wait_until_all_done(ctx: &InProcess, n: i64, within: Duration, daemons: &[&Daemon]) {
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

pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Every request granted once, no coupon oversold, every grant delivered, and every
/// repeat of a delivery carried the same `webhook-id`.
pub async fn assert_the_books_balance(ctx: &InProcess, n: i64, receiver: &Receiver) {
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
pub async fn grants_on_metrics(address: &str) -> f64 {
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

pub async fn mysql_db() -> Option<TestDb> {
    fresh_db(Backend::Mysql).await
}

pub fn ops_output(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("COUPONSD_DATABASE_URL")
        .output()
        .unwrap()
}

pub fn ops(config: &Path, args: &[&str]) -> String {
    let out = ops_output(config, args);
    assert!(
        out.status.success(),
        "couponsd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Forwards connections to 127.0.0.1:`port` to `target` until dropped.
pub async fn forward(port: u16, target: &str) -> tokio::task::JoinHandle<()> {
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

/// A partner that takes `delay` to answer each webhook; returns its base URL.
pub async fn slow_partner(delay: Duration) -> String {
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

/// Collects the datagrams a daemon sends to `NOTIFY_SOCKET`.
pub struct NotifySocket {
    path: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
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

    pub fn messages(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, what: &str, within: Duration) -> Vec<String> {
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
pub fn start_under_systemd(config: &Path, log: &Path, socket: &NotifySocket) -> Daemon {
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"WATCHDOG_PID=$$ exec "$0" "$@""#, BIN])
        .env("WATCHDOG_USEC", "600000");
    Daemon::start_with(command, config, log, Some(&socket.path))
}

/// A MariaDB server of the test's own, on its own port and data folder, that the test
/// may kill and start again.
pub struct ThrowawayServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

/// True when Debian's mariadbd and mariadb-install-db are here to start a server of a
/// test's own. Outside CI a test may then skip (the reason is printed); with `CI=true`
/// their absence fails the test.
pub fn mariadbd_installed() -> bool {
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
    }
    installed
}

impl ThrowawayServer {
    /// `None` (with the reason printed) when mariadbd is not installed, outside CI.
    pub fn install() -> Option<ThrowawayServer> {
        if !mariadbd_installed() {
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

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) {
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

    pub fn kill9(&mut self) {
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

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
