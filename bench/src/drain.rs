//! One timed drain, shared by `steady`, `baseline` and `flash`: a scratch database,
//! the triggers queued with bulk INSERTs, then daemons started with `run --drain`,
//! timed from spawn to exit; then what they did (outcomes, grants per coupon, stock,
//! deliveries, what the receiver verified) and what it cost (CPU of the daemons, of
//! MariaDB and of the bench; the server's counters). `check_common` refuses a drain
//! that lost, failed or duplicated anything before any rate is reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::database::{self, ScratchDb};
use super::process::{self, Exit};
use super::receiver::CodeTally;
use super::report::{mib, Figures, Goal};
use super::workload::{self, Catalog, Knobs};
use super::{Bench, BenchError};
use couponsd::config::Config;
use couponsd::domain::chain::CouponStock;
use couponsd::store::codes::CodeCounts;
use couponsd::store::requests::NewRequest;
use couponsd::store::StoreError;

/// Peak RSS a daemon must stay under.
const RSS_TARGET_MIB: f64 = 64.0;

/// What one drain did.
pub(super) struct Drained {
    pub requests: usize,
    pub restarts: u32,
    pub load: Duration,
    pub wall: Duration,
    pub exits: Vec<Exit>,
    pub outcomes: Vec<(String, Option<String>, i64)>,
    pub per_coupon: Vec<(String, String, i64)>,
    pub stock: Vec<CouponStock>,
    pub delivered: i64,
    pub verified: u64,
    pub rejected: u64,
    pub duplicates: u64,
    /// What the receiver saw of the grants' codes.
    pub codes: CodeTally,
    /// Each coupon's codes in `coupon_codes` after the drain.
    pub code_counts: Vec<(String, CodeCounts)>,
    pub receive_span: Option<Duration>,
    pub grant_span: Option<Duration>,
    pub server: Option<Vec<(String, i64)>>,
    pub db_cpu: Option<Duration>,
    pub bench_cpu: Duration,
}

impl Drained {
    pub fn count(&self, status: &str, outcome: Option<&str>) -> i64 {
        self.outcomes
            .iter()
            .filter(|(s, o, _)| s == status && (outcome.is_none() || o.as_deref() == outcome))
            .map(|(_, _, n)| n)
            .sum()
    }

    pub fn granted(&self) -> i64 {
        self.count("done", Some("granted"))
    }

    pub fn unfinished(&self) -> i64 {
        self.count("queued", None) + self.count("claimed", None)
    }

    pub fn coupon_grants(&self, coupon: &str) -> i64 {
        self.per_coupon
            .iter()
            .filter(|(_, c, _)| c == coupon)
            .map(|(_, _, n)| n)
            .sum()
    }

    pub fn daemon_cpu(&self) -> Duration {
        self.exits.iter().map(Exit::cpu).sum()
    }

    /// CPU seconds per 1,000 requests.
    pub fn per_k(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1000.0 / self.requests as f64
    }

    /// All CPU the drain saw (daemons, database server, bench) over wall x cores, in
    /// percent: below about 85 on two cores, something else had the machine.
    pub fn busy_percent(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = self.daemon_cpu() + self.db_cpu.unwrap_or_default() + self.bench_cpu;
        100.0 * busy.as_secs_f64() / (self.wall.as_secs_f64() * cores)
    }
}

pub(super) async fn drain(
    bench: &mut Bench,
    tag: &str,
    catalog: Catalog,
    knobs: Knobs,
    triggers: Vec<NewRequest>,
    daemons: usize,
) -> Result<Drained, BenchError> {
    let scratch = bench.target.create(tag).await?;
    let result = drain_in(bench, &scratch, tag, catalog, knobs, triggers, daemons).await;
    scratch.drop_now().await?;
    result
}

async fn drain_in(
    bench: &mut Bench,
    scratch: &ScratchDb,
    tag: &str,
    catalog: Catalog,
    knobs: Knobs,
    triggers: Vec<NewRequest>,
    daemons: usize,
) -> Result<Drained, BenchError> {
    let dir = bench.dir.join(tag);
    let (path, db) = prepare(bench, scratch, &dir, catalog, knobs).await?;
    let requests = triggers.len();
    let load = workload::bulk_load(&db, triggers).await?;
    println!(
        "  queued {requests} requests in {:.2} s ({:.0} rows/s, multi-row INSERTs of 1,000)",
        load.as_secs_f64(),
        requests as f64 / load.as_secs_f64()
    );
    let pools = catalog.pools();
    let seeded = if pools.is_empty() {
        None
    } else {
        Some(super::codes::seed_pools(&db, &pools).await?)
    };
    let received = bench.receiver.received.clone();
    received.reset();
    if let Some((seeded, took)) = seeded {
        println!(
            "  seeded {} pool codes into {} coupons in {:.2} s (multi-row INSERTs of 1,000, stock raised in the same transaction)",
            seeded.len(),
            pools.len(),
            took.as_secs_f64()
        );
        received.expect_codes(seeded);
    }
    let before = match &bench.server {
        Some(server) => Some(database::status(server).await?),
        None => None,
    };
    let db_cpu = bench.db_pid.and_then(process::cpu_of);
    let own_cpu = process::own_cpu();
    if let Some(trace) = &bench.trace {
        trace.reset();
    }
    let started = Instant::now();
    let limit = Duration::from_secs(60) + Duration::from_millis(5 * requests as u64);
    let supervised = (1..=daemons).map(|i| supervise(&bench.daemon, &dir, &path, i, limit));
    let exits = futures_util::future::join_all(supervised).await;
    let wall = started.elapsed();
    let exits = exits.into_iter().collect::<Result<Vec<_>, _>>()?;
    let restarts = exits.iter().map(|(_, r)| r).sum();
    let exits: Vec<Exit> = exits.into_iter().map(|(e, _)| e).collect();
    let bench_cpu = process::own_cpu().saturating_sub(own_cpu);
    if let Some(trace) = &bench.trace {
        super::sqltrace::print(&trace.take(), requests, wall);
    }
    let db_cpu = db_cpu
        .zip(bench.db_pid.and_then(process::cpu_of))
        .map(|(a, b)| b.saturating_sub(a));
    let server = match (&bench.server, &before) {
        (Some(server), Some(before)) => {
            Some(database::delta(before, &database::status(server).await?))
        }
        _ => None,
    };
    let ledger = read_ledger(&db).await?;
    Ok(Drained {
        requests,
        restarts,
        load,
        wall,
        exits,
        outcomes: ledger.outcomes,
        per_coupon: ledger.per_coupon,
        stock: ledger.stock,
        delivered: ledger.delivered,
        verified: received.verified(),
        rejected: received.rejected(),
        duplicates: received.duplicates(),
        codes: received.codes(),
        code_counts: ledger.code_counts,
        receive_span: received.span().map(|(a, b)| b - a),
        grant_span: ledger.grant_span,
        server,
        db_cpu,
        bench_cpu,
    })
}

/// Writes the config into `dir`, migrates the scratch database and applies the
/// catalog; returns the config file and a pool for the bench's own statements.
pub(super) async fn prepare(
    bench: &Bench,
    scratch: &ScratchDb,
    dir: &std::path::Path,
    catalog: Catalog,
    knobs: Knobs,
) -> Result<(std::path::PathBuf, couponsd::store::Db), BenchError> {
    let url = bench.daemon_url(&scratch.url);
    let path = workload::write_config(dir, &url, &bench.receiver, knobs, catalog)?;
    let db = migrated(&path).await?;
    Ok((path, db))
}

/// Loads the config file at `path`, migrates its database and applies its catalog;
/// returns a pool for the bench's own statements.
pub(super) async fn migrated(path: &std::path::Path) -> Result<couponsd::store::Db, BenchError> {
    let config = Arc::new(Config::load(path).map_err(couponsd::app::AppError::from)?);
    couponsd::app::migrate(&config).await?;
    Ok(couponsd::installation::open_db(&config).map_err(couponsd::app::AppError::from)?)
}

/// What the database says was done.
pub(super) struct Ledger {
    /// Requests by status and outcome.
    pub outcomes: Vec<(String, Option<String>, i64)>,
    /// Grants by campaign and coupon.
    pub per_coupon: Vec<(String, String, i64)>,
    /// Every coupon's stock.
    pub stock: Vec<CouponStock>,
    /// Deliveries delivered.
    pub delivered: i64,
    /// The first claim to the last decision.
    pub grant_span: Option<Duration>,
    /// Each coupon's codes.
    pub code_counts: Vec<(String, CodeCounts)>,
}

pub(super) async fn read_ledger(db: &couponsd::store::Db) -> Result<Ledger, BenchError> {
    let (outcomes, per_coupon, deliveries, stock, code_counts) = {
        let conn = &mut db.get().await?;
        let e = StoreError::from;
        (
            conn.count_by_outcome().await.map_err(e)?,
            conn.grants_per_coupon().await.map_err(e)?,
            conn.count_deliveries().await.map_err(e)?,
            conn.coupon_stock().await.map_err(e)?,
            conn.code_counts().await.map_err(e)?,
        )
    };
    let grant_span = database::grant_span(db)
        .await?
        .and_then(|(a, b)| (b - a).to_std().ok());
    let delivered = deliveries
        .iter()
        .filter(|(s, _)| *s == couponsd::domain::DeliveryStatus::Delivered)
        .map(|(_, n)| n)
        .sum();
    Ok(Ledger {
        outcomes,
        per_coupon,
        stock,
        delivered,
        grant_span,
        code_counts,
    })
}

/// Start-up failures a daemon is started again after, at most.
const MAX_RESTARTS: u32 = 5;

/// Runs daemon `i` with `run --drain` until it exits; returns how it ended and how
/// many times it had to be started again because it failed during start-up.
///
/// Daemons started while others are granting can fail in start-up: applying the
/// catalog locks `campaigns` then `coupons`, the grant transaction `coupons` then
/// `campaigns`, so the two deadlock, and start-up gives up after three tries (see
/// BENCHMARKS.md). That is counted and reported, and the daemon started again, so
/// that the drain is still measured with all its daemons; the clock keeps running.
pub(super) async fn supervise(
    exe: &std::path::Path,
    dir: &std::path::Path,
    config: &std::path::Path,
    i: usize,
    limit: Duration,
) -> Result<(Exit, u32), BenchError> {
    let mut restarts = 0;
    loop {
        let log = dir.join(format!("daemon-{i}-start-{}.log", restarts + 1));
        let daemon = process::spawn(
            exe,
            &format!("daemon {i}"),
            config,
            &["run", "--drain"],
            &log,
        )?;
        match daemon.wait(limit).await {
            Ok(exit) => return Ok((exit, restarts)),
            Err(e) => {
                let started = std::fs::read_to_string(&log)
                    .is_ok_and(|text| text.contains("couponsd running"));
                if started || restarts >= MAX_RESTARTS {
                    return Err(e);
                }
                restarts += 1;
                println!(
                    "  daemon {i} failed during start-up, started again: {}",
                    last_error(&log)
                );
            }
        }
    }
}

/// The last error line of a daemon's log, without terminal colours.
fn last_error(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .unwrap_or("");
    let mut plain = String::with_capacity(line.len());
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => plain.push(c),
            _ => {}
        }
    }
    plain
}

/// Every request finished, none failed, every grant delivered once and verified.
pub(super) fn check_common(scenario: &str, d: &Drained) -> Result<(), BenchError> {
    let fail = |message: String| {
        Err(BenchError::Check {
            scenario: scenario.into(),
            message,
        })
    };
    if d.unfinished() > 0 {
        return fail(format!(
            "{} requests were left queued or claimed: {:?}",
            d.unfinished(),
            d.outcomes
        ));
    }
    let bad = d.count("failed", None) + d.count("rejected", None);
    if bad > 0 {
        return fail(format!(
            "{bad} requests failed or were rejected: {:?}",
            d.outcomes
        ));
    }
    if d.rejected > 0 {
        return fail(format!(
            "the receiver refused {} deliveries (bad signature)",
            d.rejected
        ));
    }
    if d.delivered != d.granted() || d.verified < d.granted() as u64 {
        return fail(format!(
            "{} grants, {} deliveries delivered, {} verified by the receiver",
            d.granted(),
            d.delivered,
            d.verified
        ));
    }
    println!(
        "  checked: {} requests finished ({} granted), 0 failed, {} deliveries verified by the receiver, {} duplicates",
        d.requests,
        d.granted(),
        d.verified,
        d.duplicates
    );
    Ok(())
}

/// The throughput figures of a one-daemon drain; returns requests/s end to end.
/// CPU per 1,000 requests (daemons, database server, bench) and the server's counters.
pub(super) fn report_resources(bench: &mut Bench, scenario: &str, d: &Drained) {
    let per_k = |cpu: Duration| d.per_k(cpu);
    let figures = &mut bench.figures;
    figures.note(
        scenario,
        "CPU s per 1,000 requests (daemons)",
        per_k(d.daemon_cpu()),
        "s",
    );
    if let Some(cpu) = d.db_cpu {
        figures.note(
            scenario,
            "CPU s per 1,000 requests (mariadbd, whole server)",
            per_k(cpu),
            "s",
        );
    }
    figures.note(
        scenario,
        "CPU s per 1,000 requests (bench: receiver)",
        per_k(d.bench_cpu),
        "s",
    );
    figures.note(
        scenario,
        "machine busy (all CPU / (wall x cores))",
        d.busy_percent(),
        "%",
    );
    if let Some(server) = &d.server {
        report_server(figures, scenario, server, d.requests);
    }
}

/// The server's counters over a timed part of `requests` requests: statements, prepares,
/// COMMITs, redo writes and fsyncs per request; row lock waits and deadlocks.
pub(super) fn report_server(
    figures: &mut Figures,
    scenario: &str,
    server: &[(String, i64)],
    requests: usize,
) {
    let value = |name: &str| server.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let n = requests as f64;
    for (name, label) in [
        ("Questions", "statements per request (server-wide)"),
        (
            "Com_stmt_prepare",
            "statement prepares per request (server-wide)",
        ),
        ("Com_commit", "COMMITs per request (server-wide)"),
        (
            "Innodb_log_writes",
            "redo log writes per request (server-wide)",
        ),
        ("Innodb_data_fsyncs", "fsyncs per request (server-wide)"),
    ] {
        if let Some(v) = value(name) {
            figures.note(scenario, label, v as f64 / n, "per request");
        }
    }
    for (name, label, unit) in [
        (
            "Innodb_row_lock_waits",
            "row lock waits (server-wide)",
            "waits",
        ),
        (
            "Innodb_row_lock_time",
            "row lock wait time (server-wide)",
            "ms",
        ),
        ("Innodb_deadlocks", "deadlocks (server-wide)", "deadlocks"),
    ] {
        if let Some(v) = value(name) {
            figures.note(scenario, label, v as f64, unit);
        }
    }
}

pub(super) fn memory(bench: &mut Bench, scenario: &str, d: &Drained) {
    for (i, exit) in d.exits.iter().enumerate() {
        let name = if d.exits.len() == 1 {
            format!("{scenario}: daemon peak RSS")
        } else {
            format!("{scenario}: daemon {} peak RSS", i + 1)
        };
        bench.figures.target(
            "memory",
            &name,
            mib(exit.peak_rss),
            "MiB",
            Goal::Below(RSS_TARGET_MIB),
        );
    }
}
