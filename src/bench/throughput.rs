//! The drain scenarios: `steady` (one daemon, a mixed catalog), `baseline` (the same,
//! one request per transaction) and `flash` (a hot coupon, several daemons). Each
//! queues its triggers first, then times daemons started with `run --drain` from
//! spawn to exit, and checks what they did before it reports how fast they did it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::database::{self, ScratchDb};
use super::process::{self, Exit};
use super::report::{mib, Goal};
use super::workload::{self, Catalog, Knobs};
use super::{Bench, BenchError};
use crate::config::Config;
use crate::store::coupons::CouponStock;
use crate::store::requests::NewRequest;
use crate::store::StoreError;
use crate::with_conn;

/// Peak RSS a daemon must stay under.
const RSS_TARGET_MIB: f64 = 64.0;

/// What one drain did.
struct Drained {
    requests: usize,
    load: Duration,
    wall: Duration,
    exits: Vec<Exit>,
    outcomes: Vec<(String, Option<String>, i64)>,
    per_coupon: Vec<(String, String, i64)>,
    stock: Vec<CouponStock>,
    delivered: i64,
    verified: u64,
    rejected: u64,
    duplicates: u64,
    receive_span: Option<Duration>,
    grant_span: Option<Duration>,
    server: Option<Vec<(String, i64)>>,
    db_cpu: Option<Duration>,
    bench_cpu: Duration,
}

impl Drained {
    fn count(&self, status: &str, outcome: Option<&str>) -> i64 {
        self.outcomes
            .iter()
            .filter(|(s, o, _)| s == status && (outcome.is_none() || o.as_deref() == outcome))
            .map(|(_, _, n)| n)
            .sum()
    }

    fn granted(&self) -> i64 {
        self.count("done", Some("granted"))
    }

    fn unfinished(&self) -> i64 {
        self.count("queued", None) + self.count("claimed", None)
    }

    fn coupon_grants(&self, coupon: &str) -> i64 {
        self.per_coupon
            .iter()
            .filter(|(_, c, _)| c == coupon)
            .map(|(_, _, n)| n)
            .sum()
    }

    fn daemon_cpu(&self) -> Duration {
        self.exits.iter().map(Exit::cpu).sum()
    }

    fn server(&self, name: &str) -> Option<i64> {
        self.server
            .as_ref()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Scenario 1: `n` queued triggers, one daemon.
pub async fn steady(bench: &mut Bench, n: usize) -> Result<(), BenchError> {
    let knobs = bench.knobs;
    println!("\n[steady] {n} queued triggers (half new, half returning users; 3 campaigns, 10 coupons), one daemon");
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Steady { requests: n };
    let drained = drain(
        bench,
        "steady",
        catalog,
        knobs,
        workload::steady_triggers("s", n),
        1,
    )
    .await?;
    check_common("steady", &drained)?;
    let rate = report_drain(bench, "steady", &drained, Some(10_000.0));
    bench.steady_rate = Some(rate);
    memory(bench, "steady", &drained);
    Ok(())
}

/// Scenario 6: `steady` with `worker.batch_size: 1`, one transaction per request.
pub async fn baseline(bench: &mut Bench, n: usize) -> Result<(), BenchError> {
    let knobs = Knobs {
        batch_size: 1,
        ..bench.knobs
    };
    println!("\n[baseline] naive design: {n} queued triggers, worker.batch_size 1 (one transaction per request), one daemon");
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Steady { requests: n };
    let drained = drain(
        bench,
        "baseline",
        catalog,
        knobs,
        workload::steady_triggers("b", n),
        1,
    )
    .await?;
    check_common("baseline", &drained)?;
    let rate = report_drain(bench, "baseline", &drained, None);
    match bench.steady_rate {
        Some(steady) => bench.figures.target(
            "baseline",
            "gain: steady requests/s / baseline requests/s",
            steady / rate,
            "x",
            Goal::AtLeast(8.0),
        ),
        None => println!("  (run `steady` in the same invocation for the ratio)"),
    }
    Ok(())
}

/// Scenario 2: a flash sale. `n` new users, one campaign whose first coupon has `n / 5`
/// in stock, `daemons` daemons at once.
pub async fn flash(bench: &mut Bench, n: usize, daemons: usize) -> Result<(), BenchError> {
    let knobs = bench.knobs;
    let hot = n / 5;
    println!("\n[flash] {n} triggers for one campaign, hot coupon HOT50 with {hot} in stock, {daemons} daemons at once");
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Flash { hot, requests: n };
    let drained = drain(
        bench,
        "flash",
        catalog,
        knobs,
        workload::flash_triggers("f", n),
        daemons,
    )
    .await?;
    check_common("flash", &drained)?;
    let hot_granted = drained.coupon_grants("HOT50");
    let hot_row = drained.stock.iter().find(|c| c.id == "HOT50");
    let oversold = hot_granted > hot as i64
        || hot_row
            .is_none_or(|c| c.granted != hot_granted || c.remaining < 0 || c.granted > c.stock);
    if oversold {
        return Err(BenchError::Check {
            scenario: "flash".into(),
            message: format!(
                "HOT50 has {hot} in stock and {hot_granted} grants; stock row {hot_row:?}"
            ),
        });
    }
    let figures = &mut bench.figures;
    let wall = drained.wall.as_secs_f64();
    figures.target(
        "flash",
        "grants/s (end to end, all daemons)",
        drained.granted() as f64 / wall,
        "grants/s",
        Goal::AtLeast(5_000.0),
    );
    figures.target(
        "flash",
        "HOT50 granted",
        hot_granted as f64,
        "grants",
        Goal::Exactly(hot as f64),
    );
    figures.note(
        "flash",
        "HOT50 remaining",
        hot_row.map_or(0, |c| c.remaining) as f64,
        "coupons",
    );
    figures.target(
        "flash",
        "fell back to SORRY5",
        drained.coupon_grants("SORRY5") as f64,
        "grants",
        Goal::Exactly((n - hot) as f64),
    );
    figures.target(
        "flash",
        "requests failed",
        drained.count("failed", None) as f64,
        "requests",
        Goal::Exactly(0.0),
    );
    figures.note("flash", "wall time", wall, "s");
    for (i, exit) in drained.exits.iter().enumerate() {
        let name = format!("daemon {} CPU", i + 1);
        figures.note("flash", &name, exit.cpu().as_secs_f64(), "s");
        let name = format!("daemon {} wall time", i + 1);
        figures.note("flash", &name, exit.wall.as_secs_f64(), "s");
    }
    report_resources(bench, "flash", &drained);
    memory(bench, "flash", &drained);
    Ok(())
}

async fn drain(
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
    let path = workload::write_config(
        &dir,
        &bench.daemon_url(&scratch.url),
        &bench.receiver,
        knobs,
        catalog,
    )?;
    let config = Arc::new(Config::load(&path).map_err(crate::app::AppError::from)?);
    crate::app::migrate(&config).await?;
    let db = crate::app::open_db(&config)?;
    let requests = triggers.len();
    let load = workload::bulk_load(&db, triggers).await?;
    println!(
        "  queued {requests} requests in {:.2} s ({:.0} rows/s, multi-row INSERTs of 1,000)",
        load.as_secs_f64(),
        requests as f64 / load.as_secs_f64()
    );
    let received = bench.receiver.received.clone();
    received.reset();
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
    let running = (1..=daemons)
        .map(|i| {
            let log = dir.join(format!("daemon-{i}.log"));
            process::spawn(&format!("daemon {i}"), &path, &["run", "--drain"], &log)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = Duration::from_secs(60) + Duration::from_millis(5 * requests as u64);
    let exits = futures_util::future::join_all(running.into_iter().map(|d| d.wait(limit))).await;
    let wall = started.elapsed();
    let exits = exits.into_iter().collect::<Result<Vec<_>, _>>()?;
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
    let (outcomes, per_coupon, deliveries, stock) = with_conn!(db, |conn| {
        let e = StoreError::from;
        (
            conn.count_by_outcome().await.map_err(e)?,
            conn.grants_per_coupon().await.map_err(e)?,
            conn.count_deliveries().await.map_err(e)?,
            conn.coupon_stock().await.map_err(e)?,
        )
    });
    let grant_span = database::grant_span(&db)
        .await?
        .and_then(|(a, b)| (b - a).to_std().ok());
    Ok(Drained {
        requests,
        load,
        wall,
        exits,
        outcomes,
        per_coupon,
        stock,
        delivered: deliveries
            .iter()
            .filter(|(s, _)| s == "delivered")
            .map(|(_, n)| n)
            .sum(),
        verified: received.verified(),
        rejected: received.rejected(),
        duplicates: received.duplicates(),
        receive_span: received.span().map(|(a, b)| b - a),
        grant_span,
        server,
        db_cpu,
        bench_cpu,
    })
}

/// Every request finished, none failed, every grant delivered once and verified.
fn check_common(scenario: &str, d: &Drained) -> Result<(), BenchError> {
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
fn report_drain(bench: &mut Bench, scenario: &str, d: &Drained, target: Option<f64>) -> f64 {
    let wall = d.wall.as_secs_f64();
    let rate = d.requests as f64 / wall;
    let figures = &mut bench.figures;
    match target {
        Some(t) => figures.target(
            scenario,
            "requests/s (end to end: spawn to exit)",
            rate,
            "requests/s",
            Goal::AtLeast(t),
        ),
        None => figures.note(
            scenario,
            "requests/s (end to end: spawn to exit)",
            rate,
            "requests/s",
        ),
    }
    figures.note(
        scenario,
        "grants/s (end to end)",
        d.granted() as f64 / wall,
        "grants/s",
    );
    figures.note(
        scenario,
        "deliveries/s (end to end)",
        d.verified as f64 / wall,
        "deliveries/s",
    );
    if let Some(span) = d.grant_span {
        figures.note(
            scenario,
            "requests/s (first claim to last decision)",
            d.requests as f64 / span.as_secs_f64(),
            "requests/s",
        );
    }
    if let Some(span) = d.receive_span {
        figures.note(
            scenario,
            "deliveries/s (first to last received)",
            d.verified as f64 / span.as_secs_f64(),
            "deliveries/s",
        );
    }
    figures.note(scenario, "wall time", wall, "s");
    figures.note(
        scenario,
        "load rate (bulk INSERT, not timed above)",
        d.requests as f64 / d.load.as_secs_f64(),
        "rows/s",
    );
    report_resources(bench, scenario, d);
    rate
}

/// CPU per 1,000 requests (daemons, database server, bench) and the server's counters.
fn report_resources(bench: &mut Bench, scenario: &str, d: &Drained) {
    let per_k = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / d.requests as f64;
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = d.daemon_cpu() + d.db_cpu.unwrap_or_default() + d.bench_cpu;
    figures.note(
        scenario,
        "machine busy (all CPU / (wall x cores))",
        100.0 * busy.as_secs_f64() / (d.wall.as_secs_f64() * cores),
        "%",
    );
    let n = d.requests as f64;
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
        if let Some(v) = d.server(name) {
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
        if let Some(v) = d.server(name) {
            figures.note(scenario, label, v as f64, unit);
        }
    }
}

fn memory(bench: &mut Bench, scenario: &str, d: &Drained) {
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
