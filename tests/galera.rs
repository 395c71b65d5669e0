//! couponsd on a real Galera cluster: three MariaDB nodes from Debian's packages
//! (`mariadb-server`, `galera-4`) on loopback ports, each in a folder of its own and
//! running as user `mysql`. Three daemons given all three hosts in `database.url`
//! ride out `kill -9` of the writer node in the middle of a burst; three daemons each
//! pointed at another node write through one of them. Every invariant of one server
//! must hold across both.
//!
//! A test binary of its own, so that its six servers do not share the machine with the
//! other suites' timings. Outside CI it skips, with the reason printed, where it cannot
//! start a cluster (no `galera-4`, not root); with `CI=true` it never skips.

#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "it/operations/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use couponsd::runtime::Daemon as InProcess;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

use harness::*;
use support::*;

const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// Held by each test for its whole run: one cluster at a time, so that the figures it
/// prints (failover, takeover, requests/s) are not those of two clusters sharing the
/// machine's cores.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One node: its folder, its ports and its process.
struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Three nodes on loopback; killed when dropped.
struct Cluster {
    _dir: TempDir,
    nodes: Vec<Node>,
}

/// True when this machine can run a cluster; otherwise prints why and returns false,
/// which fails the test with `CI=true`.
fn can_run_a_cluster() -> bool {
    let why = if !Path::new(PROVIDER).exists() {
        Some("galera-4 is not installed (apt-get install galera-4)")
    } else if !mariadbd_installed() {
        Some("mariadb-server is not installed")
    } else if whoami() != "root" {
        Some("the nodes run as user mysql, which only root can start them as")
    } else if Command::new("rsync").arg("--version").output().is_err() {
        Some("rsync (the nodes' state transfer) is not installed")
    } else {
        None
    };
    if let Some(why) = why {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true and {why}"
        );
        eprintln!("SKIPPED: {why}");
    }
    why.is_none()
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Writes the three nodes' configs, installs node 1's data folder (the others get
    /// theirs by state transfer), bootstraps node 1 and joins 2 and 3.
    async fn start() -> Cluster {
        let dir = TempDir::new("galera");
        let ports: Vec<[u16; 4]> = (0..3)
            .map(|_| [free_port(), free_port(), free_port(), free_port()])
            .collect();
        let gcomm: Vec<String> = ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p[1]))
            .collect();
        let mut nodes = Vec::new();
        for (i, [sql, group, ist, sst]) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let node_dir = dir.0.join(&name);
            std::fs::create_dir_all(node_dir.join("data")).unwrap();
            let d = node_dir.display();
            let cnf = format!(
                "[mysqld]\ndatadir={d}/data\nsocket={d}/mysqld.sock\npid-file={d}/mysqld.pid\n\
                 log-error={d}/error.log\nport={sql}\nbind-address=127.0.0.1\nuser=mysql\n\
                 skip-name-resolve\ninnodb_buffer_pool_size=64M\ninnodb_log_file_size=16M\n\
                 innodb_flush_log_at_trx_commit=2\nbinlog_format=ROW\n\
                 innodb_autoinc_lock_mode=2\nwsrep_on=ON\nwsrep_provider={PROVIDER}\n\
                 wsrep_cluster_name=couponsd_test\nwsrep_cluster_address=gcomm://{gcomm}\n\
                 wsrep_node_address=127.0.0.1\nwsrep_node_name={name}\n\
                 wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:{group};\
                 ist.recv_addr=127.0.0.1:{ist};gcache.size=64M\"\n\
                 wsrep_sst_method=rsync\nwsrep_sst_receive_address=127.0.0.1:{sst}\n",
                gcomm = gcomm.join(","),
            );
            std::fs::write(node_dir.join("my.cnf"), cnf).unwrap();
            nodes.push(Node {
                name,
                dir: node_dir,
                port: *sql,
                child: None,
            });
        }
        run(Command::new("chmod").arg("755").arg(&dir.0));
        run(Command::new("chown")
            .args(["-R", "mysql:mysql"])
            .arg(&dir.0));
        run(Command::new("mariadb-install-db")
            .arg(format!(
                "--defaults-file={}",
                nodes[0].dir.join("my.cnf").display()
            ))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]));
        let mut cluster = Cluster { _dir: dir, nodes };
        cluster.start_node(0, true).await;
        for i in 1..3 {
            cluster.start_node(i, false).await;
        }
        cluster
    }

    fn host(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// `database.url` with the three hosts in order.
    fn url(&self, database: &str) -> String {
        let hosts: Vec<String> = (0..3).map(|i| self.host(i)).collect();
        format!("mysql://root@{}/{database}", hosts.join(","))
    }

    /// Starts node `i` and waits until it is synced with the cluster.
    async fn start_node(&mut self, i: usize, bootstrap: bool) {
        let node = &mut self.nodes[i];
        let mut command = Command::new("/usr/sbin/mariadbd");
        command.arg(format!(
            "--defaults-file={}",
            node.dir.join("my.cnf").display()
        ));
        if bootstrap {
            command.arg("--wsrep-new-cluster");
        }
        node.child = Some(command.spawn().unwrap());
        let url = format!("mysql://root@127.0.0.1:{}/mysql", node.port);
        let synced = wait_for("a synced node", Duration::from_secs(90), || async {
            let mut conn = AsyncMysqlConnection::establish(&url).await.ok()?;
            let state = couponsd::store::cluster::node_state(&mut conn).await.ok()?;
            (state == couponsd::store::cluster::NodeState::Synced).then_some(())
        })
        .await;
        assert!(
            synced.is_some(),
            "{} did not join: {}",
            node.name,
            tail(&std::fs::read_to_string(node.dir.join("error.log")).unwrap_or_default())
        );
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

/// Newcomers get a hot coupon of `hot`, then plenty; the returning draw codes from a
/// pool, then get plenty.
fn campaigns(hot: i64) -> String {
    format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: HOT, face_value: "10.00", stock: {hot}, channel: wallet }}
      - {{ id: PLENTY, face_value: "5.00", stock: 100000, channel: wallet }}
  - id: loyalty
    event: app_open
    audience: returning
    coupons:
      - {{ id: POOL, face_value: "8.00", codes: {{ pool: true }}, channel: wallet }}
      - {{ id: BACK, face_value: "3.00", stock: 100000, channel: wallet }}"#
    )
}

/// A database's catalog: the hot coupon's stock and the pool's codes.
#[derive(Clone, Copy)]
struct Stock {
    hot: i64,
    codes: usize,
}

/// `count` through the in-process pool, waiting for the node to have applied every
/// commit of the cluster; `None` while the pool has no writer.
async fn synced_count(ctx: &InProcess, from_where: &str) -> Option<i64> {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = ctx.db.get().await.ok()?;
    let couponsd::store::Conn::Mysql(c) = &mut conn else {
        unreachable!()
    };
    c.batch_execute("SET SESSION wsrep_sync_wait = 1")
        .await
        .ok()?;
    let sql = format!("SELECT COUNT(*) AS n FROM {from_where}");
    let rows: Vec<N> = diesel_async::RunQueryDsl::load(diesel::sql_query(sql), &mut **c)
        .await
        .ok()?;
    rows.first().map(|r| r.n)
}

/// Lines of text a query returns as `line`, for a failure's message.
async fn lines(ctx: &InProcess, sql: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let rows: Vec<Line> = query_rows(ctx, sql).await;
    rows.into_iter().map(|l| l.line).collect()
}

/// The moves a daemon's log records, as `to` hosts in order.
fn moves(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("database writer moved"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["to"].as_str().map(str::to_owned))
        .collect()
}

/// Database `name` on the cluster, migrated, its pool seeded; the context goes
/// through `url`.
async fn database(
    cluster: &Cluster,
    (name, stock): (&str, Stock),
    dir: &Path,
    url: &str,
    receiver: &Receiver,
) -> (PathBuf, InProcess) {
    let root = format!("mysql://root@{}/mysql", cluster.host(0));
    let mut admin = AsyncMysqlConnection::establish(&root).await.unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let channel = wallet_channel(&receiver.base_url());
    let path = write_config(dir, url, &channel, &campaigns(stock.hot), "");
    let ctx = migrated(&path).await;
    seed_pool(&ctx, "POOL", &format!("{name}-"), stock.codes).await;
    (path, ctx)
}

/// Every invariant of one server, after `total` requests: each request done and
/// granted once, no user first-time twice, no coupon oversold, no code issued twice,
/// every grant delivered to the partner once with one webhook-id.
async fn assert_every_invariant(
    ctx: &InProcess,
    (total, stock): (i64, Stock),
    receiver: &Receiver,
) {
    let books = [
        (
            "requests not done",
            "trigger_requests WHERE status <> 'done'",
        ),
        (
            "coupons whose stock does not match their grants",
            "coupons c WHERE c.remaining < 0 OR c.granted + c.remaining <> c.stock \
             OR c.granted <> (SELECT COUNT(*) FROM grants g WHERE g.coupon_id = c.id)",
        ),
        (
            "requests granted twice",
            "(SELECT request_id FROM grants GROUP BY request_id HAVING COUNT(*) > 1) t",
        ),
        (
            "users first-time twice",
            "(SELECT user_id FROM grants WHERE user_type = 'first_time' \
              GROUP BY user_id HAVING COUNT(*) > 1) t",
        ),
        (
            "codes issued twice",
            "(SELECT code FROM grants WHERE code IS NOT NULL GROUP BY code \
              HAVING COUNT(*) > 1) t",
        ),
        (
            "pool codes issued but not to a grant with that code",
            "coupon_codes k WHERE k.grant_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM grants g WHERE g.id = k.grant_id AND g.code = k.code)",
        ),
        (
            "grants without their delivered coupon.granted",
            "grants g WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.grant_id = g.id \
             AND d.event_type = 'coupon.granted' AND d.status = 'delivered')",
        ),
    ];
    let strays = lines(
        ctx,
        "SELECT CONCAT_WS(' ', k.id, k.code, k.grant_id, IFNULL(g.code, '-'), \
         IFNULL(g.coupon_id, '-'), k.issued_at, IFNULL(g.granted_at, '-')) AS line \
         FROM coupon_codes k LEFT JOIN grants g ON g.id = k.grant_id \
         WHERE k.grant_id IS NOT NULL AND (g.code IS NULL OR g.code <> k.code) LIMIT 20",
    )
    .await;
    let twice = lines(
        ctx,
        "SELECT CONCAT_WS(' ', g.user_id, g.id, g.event, g.campaign_id, g.coupon_id, g.user_type, \
         g.granted_at, r.request_key, r.attempts) AS line FROM grants g \
         JOIN trigger_requests r ON r.id = g.request_id WHERE g.user_id IN \
         (SELECT user_id FROM grants WHERE user_type = 'first_time' GROUP BY user_id \
          HAVING COUNT(*) > 1) ORDER BY g.user_id, g.id LIMIT 20",
    )
    .await;
    for (what, from_where) in books {
        assert_eq!(
            synced_count(ctx, from_where).await,
            Some(0),
            "{what}; pool codes not on their grant (id code grant_id grant's-code coupon \
             issued granted): {strays:#?}; grants of users first-time twice: {twice:#?}"
        );
    }
    assert_eq!(
        synced_count(ctx, "grants").await,
        Some(total),
        "one grant per request"
    );
    assert_eq!(
        synced_count(ctx, "grants WHERE coupon_id = 'HOT'").await,
        Some(stock.hot),
        "the hot coupon granted to its stock"
    );
    assert_eq!(
        synced_count(ctx, "coupon_codes WHERE grant_id IS NOT NULL").await,
        Some(stock.codes as i64),
        "the pool ran dry, each code issued once"
    );
    let mut webhook_ids = HashSet::new();
    let mut grants = HashSet::new();
    for seen in receiver.seen() {
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        grants.insert(body["data"]["grant_id"].to_string());
        webhook_ids.insert(seen.headers["webhook-id"].to_str().unwrap().to_owned());
    }
    assert_eq!(grants.len() as i64, total, "the partner got every grant");
    assert_eq!(webhook_ids.len() as i64, total, "one webhook-id per grant");
}

/// Batch transactions a daemon's log says it tried again (deadlocks, and on a
/// cluster the commits certification refused).
fn retries(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("batch transaction will be tried again"))
        .count()
}

/// Requests per second of a burst of `n`, from its insert to its last delivery.
async fn timed_burst(ctx: &InProcess, tag: &str, n: usize, daemons: &[&Daemon]) -> f64 {
    let started = Instant::now();
    burst(ctx, tag, n).await;
    wait_until_all_done(ctx, n as i64, Duration::from_secs(120), daemons).await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// The tail of each daemon's log.
fn logs(daemons: &[Daemon]) -> Vec<String> {
    daemons.iter().map(|d| tail(&d.log_text())).collect()
}

/// Daemons pointed at three different nodes, one node each. The first daemon to take
/// the writer-node lease writes; the other two stand by and say so in their logs, and
/// every invariant holds. The writing daemon is then killed with `kill -9`: once its
/// lease has run out, a daemon on another node takes it and finishes a second burst.
/// Returns the first burst's rate and the time from the kill to the first grant after.
async fn three_nodes_one_writer(cluster: &Cluster) -> (f64, Duration) {
    let receiver = Receiver::ok().await;
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("galera-w{i}")))
        .collect();
    // A user with rights on its database only, as in production: it cannot read
    // mysql.wsrep_cluster_members, and the lease is still held and taken over.
    let root = format!("mysql://root@{}/mysql", cluster.host(0));
    let mut admin = AsyncMysqlConnection::establish(&root).await.unwrap();
    admin
        .batch_execute(
            "CREATE USER 'couponsd'@'127.0.0.1' IDENTIFIED BY 'pw'; \
             GRANT ALL PRIVILEGES ON multi.* TO 'couponsd'@'127.0.0.1'",
        )
        .await
        .unwrap();
    let single = |i: usize| format!("mysql://couponsd:pw@{}/multi", cluster.host(i));
    let stock = Stock {
        hot: 150,
        codes: 200,
    };
    let (_, ctx) = database(cluster, ("multi", stock), &dirs[0].0, &single(0), &receiver).await;
    let configs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let channel = wallet_channel(&receiver.base_url());
            write_config(&dirs[i].0, &single(i), &channel, &campaigns(stock.hot), "")
        })
        .collect();
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(&configs[i], &dirs[i].0.join("d.log")))
        .collect();
    for d in &daemons {
        d.http_address().await;
    }
    let n = 1500;
    let rate = {
        let refs: Vec<&Daemon> = daemons.iter().collect();
        timed_burst(&ctx, "m", n, &refs).await
    };
    assert_every_invariant(&ctx, (n as i64, stock), &receiver).await;
    let writing = |d: &Daemon| d.log_text().contains("is the cluster's writer node");
    let standing = |d: &Daemon| d.log_text().contains("standing by, writing nothing");
    let writers: Vec<usize> = (0..3).filter(|&i| writing(&daemons[i])).collect();
    assert_eq!(writers.len(), 1, "one daemon writes: {:#?}", logs(&daemons));
    let writer = writers[0];
    for (i, d) in daemons.iter().enumerate().filter(|(i, _)| *i != writer) {
        assert!(standing(d), "daemon {i} stands by: {}", tail(&d.log_text()));
        let said = d.log_text().matches("standing by, writing nothing").count();
        assert!(
            said <= 2,
            "said once per writer node, not at every probe: {said}"
        );
        let ready = reqwest::get(format!("http://{}/readyz", d.http_address().await))
            .await
            .unwrap();
        let said = ready.text().await.unwrap();
        assert!(said.contains("standing by"), "daemon {i}'s /readyz: {said}");
    }

    // An operator command that writes, pointed at a standing node, is refused and
    // writes nothing.
    let standby = (writer + 1) % 3;
    let first = lines(&ctx, "SELECT CAST(MIN(id) AS CHAR) AS line FROM grants").await;
    let args = ["grants", "revoke", first[0].as_str(), "--reason", "test"];
    let refused = ops_output(&configs[standby], &args);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("run it against the writer node"),
        "a revoke through a standing node is refused: {said}"
    );
    assert_eq!(
        synced_count(&ctx, "grants WHERE state = 'revoked'").await,
        Some(0)
    );

    daemons[writer].kill9();
    let killed = Instant::now();
    let second = 500;
    burst(&ctx, "k", second).await;
    let resumed = wait_for(
        "a grant after the writing daemon was killed",
        Duration::from_secs(60),
        || async { (synced_count(&ctx, "grants").await? > n as i64).then_some(()) },
    )
    .await;
    let takeover = killed.elapsed();
    assert!(
        resumed.is_some(),
        "no daemon took over: {:#?}",
        logs(&daemons)
    );
    let total = (n + second) as i64;
    let refs: Vec<&Daemon> = (0..3)
        .filter(|&i| i != writer)
        .map(|i| &daemons[i])
        .collect();
    wait_until_all_done(&ctx, total, Duration::from_secs(120), &refs).await;
    assert_every_invariant(&ctx, (total, stock), &receiver).await;
    assert!(
        daemons[writer]
            .log_text()
            .contains("cannot read mysql.wsrep_cluster_members"),
        "the user's missing right is said: {}",
        tail(&daemons[writer].log_text())
    );
    let took: Vec<usize> = (0..3)
        .filter(|&i| i != writer && writing(&daemons[i]))
        .collect();
    assert_eq!(
        took.len(),
        1,
        "one other daemon took over: {:#?}",
        logs(&daemons)
    );
    (rate, takeover)
}

/// Three daemons given the list through 1,500 requests, then 2,000 more with the
/// writer node killed 300 grants in; the node started again, a fourth daemon started,
/// and 500 more. Every daemon, the late one too, ends on one writer that is not the
/// killed node: a node that comes back does not take the writes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_galera_cluster_the_writer_killed_mid_burst_loses_nothing() {
    if !can_run_a_cluster() {
        return;
    }
    let _alone = ONE_CLUSTER.lock().await;
    let mut cluster = Cluster::start().await;
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("galera-daemons");
    let url = cluster.url("couponsd");
    // Enough stock that the hot coupon and the pool are still drawn from when the
    // writer is killed, and both run out before the end.
    let stock = Stock {
        hot: 1600,
        codes: 600,
    };
    let (path, ctx) = database(&cluster, ("couponsd", stock), &dir.0, &url, &receiver).await;
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| Daemon::start(&path, &dir.0.join(format!("d{i}.log"))))
        .collect();
    for d in &daemons {
        d.http_address().await;
    }
    let warm = 1500;
    let single_rate = {
        let refs: Vec<&Daemon> = daemons.iter().collect();
        timed_burst(&ctx, "w", warm, &refs).await
    };
    let single_retries: usize = daemons.iter().map(|d| retries(&d.log_text())).sum();
    eprintln!("FIGURE one writer: {single_rate:.0} requests/s, {single_retries} batches retried");

    let n = 2000;
    burst(&ctx, "g", n).await;
    let started = wait_for(
        "a first part of the burst",
        Duration::from_secs(60),
        || async { (synced_count(&ctx, "grants").await? >= warm as i64 + 300).then_some(()) },
    )
    .await;
    assert!(
        started.is_some(),
        "no progress:\n{}",
        tail(&daemons[0].log_text())
    );
    cluster.kill9(0);
    let killed = Instant::now();
    let before = wait_for(
        "a count on the new writer",
        Duration::from_secs(30),
        || async { synced_count(&ctx, "grants").await },
    )
    .await
    .expect("no node answered after the writer was killed");
    let resumed = wait_for(
        "a grant on the new writer",
        Duration::from_secs(60),
        || async { (synced_count(&ctx, "grants").await? > before).then_some(()) },
    )
    .await;
    let failover = killed.elapsed();
    assert!(
        resumed.is_some(),
        "no grant after the kill:\n{}",
        tail(&daemons[0].log_text())
    );
    eprintln!(
        "FIGURE failover: {failover:?} from kill -9 of the writer to the first grant on the \
         next host ({before} grants before)"
    );

    cluster.start_node(0, false).await;
    let late = Daemon::start(&path, &dir.0.join("late.log"));
    late.http_address().await;
    daemons.push(late);
    let second = 500;
    burst(&ctx, "h", second).await;
    let total = (warm + n + second) as i64;
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until_all_done(&ctx, total, Duration::from_secs(120), &refs).await;
    assert_every_invariant(&ctx, (total, stock), &receiver).await;
    // The daemons may pass through the third host while the cluster changes its
    // membership; they end on one host that is not the killed one, the late daemon
    // too, and none goes back to the killed one after it returned.
    let killed_host = cluster.host(0);
    let last: Vec<Vec<String>> = daemons.iter().map(|d| moves(&d.log_text())).collect();
    let writer = last[0].last().cloned();
    for moved in &last {
        assert!(
            !moved.is_empty() && moved.last() == writer.as_ref() && !moved.contains(&killed_host),
            "every daemon ends on one writer, not the killed node: {last:?} (killed {killed_host})"
        );
    }
    assert!(
        failover < Duration::from_secs(10),
        "the goal is a grant on the new writer within 10 s of the kill: {failover:?}"
    );
}

/// Daemons pointed at three different nodes: one writes, the others stand by, and a
/// standing daemon takes over when the writing one dies (see [`three_nodes_one_writer`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_galera_cluster_daemons_on_three_nodes_write_through_one() {
    if !can_run_a_cluster() {
        return;
    }
    let _alone = ONE_CLUSTER.lock().await;
    let cluster = Cluster::start().await;
    let (rate, takeover) = three_nodes_one_writer(&cluster).await;
    eprintln!("FIGURE three nodes, one writing: {rate:.0} requests/s");
    eprintln!("FIGURE takeover: {takeover:?} from kill -9 of the writing daemon to the next grant");
    assert!(
        takeover < couponsd::store::cluster::LEASE + Duration::from_secs(10),
        "a standing daemon takes over once the lease has run out: {takeover:?}"
    );
}
