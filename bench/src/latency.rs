//! Scenario 3, latency: a client inserts 1,000 triggers per second (a multi-row INSERT
//! every 10 ms) into a running daemon (`run`, scheduler and all) for 30 s; each
//! request's latency runs from the moment its INSERT was sent to the moment the
//! receiver had verified its webhook. The daemon is stopped with SIGTERM afterwards.
//!
//! The database's own timestamps split that time in two: `created_at` to
//! `processed_at` (waiting in the queue, then the grant transaction) and
//! `processed_at` to arrival (the outbox worker and the HTTP request).

use std::collections::HashMap;
use std::time::Duration;

use super::database::{self, ScratchDb};
use super::drain;
use super::process;
use super::report::{mib, ms, percentile, Figures, Goal};
use super::workload::{self, Catalog, Codes};
use super::{Bench, BenchError};
use couponsd::store::requests::NewRequest;
use couponsd::store::StoreError;

/// Triggers per second.
const RATE: usize = 1_000;
/// One INSERT per tick.
const TICK: Duration = Duration::from_millis(10);
/// How long the daemon gets, after the last insert, to deliver everything.
const SETTLE: Duration = Duration::from_secs(30);
/// p99 target.
const P99_TARGET_MS: f64 = 250.0;

/// What the database server has spent so far: its CPU time and its COMMITs.
pub(crate) struct ServerLoad {
    pub cpu: Duration,
    pub commits: i64,
    /// Bytes written to the redo log (`Innodb_os_log_written`).
    pub redo: i64,
}

impl ServerLoad {
    /// Notes what the server spent between `before` and `after` on `n` requests: its
    /// CPU per 1,000 (named `cpu_name`) and its COMMITs per request. Nothing when either
    /// reading is missing.
    pub(crate) fn note_between(
        figures: &mut Figures,
        (s, cpu_name): (&str, &str),
        (before, after): (Option<ServerLoad>, Option<ServerLoad>),
        n: usize,
    ) {
        let (Some(before), Some(after)) = (before, after) else {
            return;
        };
        let cpu = after.cpu.saturating_sub(before.cpu);
        let per_k = cpu.as_secs_f64() * 1000.0 / n.max(1) as f64;
        figures.note(s, cpu_name, per_k, "s");
        let commits = after.commits - before.commits;
        figures.note(
            s,
            "COMMITs per request (server-wide)",
            commits as f64 / n.max(1) as f64,
            "per request",
        );
    }
}

/// `None` when the server is not a local MariaDB whose process the bench can read.
pub(crate) async fn server_load(bench: &Bench) -> Result<Option<ServerLoad>, BenchError> {
    let (Some(server), Some(cpu)) = (&bench.server, bench.db_pid.and_then(process::cpu_of)) else {
        return Ok(None);
    };
    let status = database::status(server).await?;
    Ok(Some(ServerLoad {
        cpu,
        commits: status.get("Com_commit").copied().unwrap_or_default(),
        redo: status
            .get("Innodb_os_log_written")
            .copied()
            .unwrap_or_default(),
    }))
}

/// Runs the scenario with `count` triggers (30 s at 1,000 per second by default).
pub async fn run(bench: &mut Bench, count: usize) -> Result<(), BenchError> {
    let knobs = bench.knobs;
    println!(
        "\n[latency] {RATE} triggers/s for {:.0} s into a running daemon (`run`), insert to verified delivery",
        count as f64 / RATE as f64
    );
    println!("  knobs: {}", knobs.describe());
    let scratch = bench.target.create("latency").await?;
    let result = run_in(bench, &scratch, count).await;
    scratch.drop_now().await?;
    result
}

async fn run_in(bench: &mut Bench, scratch: &ScratchDb, count: usize) -> Result<(), BenchError> {
    let dir = bench.dir.join("latency");
    let catalog = Catalog::Steady {
        requests: count * 2,
        codes: Codes::None,
    };
    let (path, db) = drain::prepare(bench, scratch, &dir, catalog, bench.knobs).await?;
    let received = bench.receiver.received.clone();
    received.reset();
    let daemon = process::spawn(
        &bench.daemon,
        "daemon",
        &path,
        &["run"],
        &dir.join("daemon.log"),
    )?;
    // Ready when a first request has gone all the way through.
    let warm = vec![NewRequest {
        request_key: "warm-0".into(),
        user_id: "warm-user".into(),
        event: "app_open".into(),
        attributes: None,
    }];
    db.get()
        .await?
        .enqueue(&warm)
        .await
        .map_err(StoreError::from)?;
    if !received.wait_for_grants(1, Duration::from_secs(30)).await {
        daemon.terminate();
        let _ = daemon.wait(Duration::from_secs(10)).await;
        return Err(BenchError::Setup(
            "the daemon delivered nothing within 30 s of starting".into(),
        ));
    }
    received.reset();
    let own_cpu = process::own_cpu();
    let server_before = server_load(bench).await?;
    let inserted = workload::steady_client(&db, RATE, count, TICK).await?;
    let sent = inserted.sent_at.len();
    let all_arrived = received.wait_for_grants(sent as u64, SETTLE).await;
    let server_after = server_load(bench).await?;
    daemon.terminate();
    let exit = daemon.wait(Duration::from_secs(30)).await?;
    let bench_cpu = process::own_cpu().saturating_sub(own_cpu);

    let arrivals = received.arrivals();
    let mut first: HashMap<usize, &super::receiver::Arrival> = HashMap::new();
    for a in &arrivals {
        if let Some(seq) = a
            .request_key
            .as_deref()
            .and_then(|k| k.strip_prefix("l-")?.parse().ok())
        {
            first.entry(seq).or_insert(a);
        }
    }
    let mut total: Vec<Duration> = first
        .iter()
        .filter_map(|(seq, a)| Some(a.at.duration_since(*inserted.sent_at.get(*seq)?)))
        .collect();
    total.sort();
    let times = database::request_times(&db).await?;
    let mut queue_and_grant = Vec::new();
    let mut delivery = Vec::new();
    for (key, created, processed) in &times {
        let Some(seq) = key.strip_prefix("l-").and_then(|s| s.parse::<usize>().ok()) else {
            continue;
        };
        queue_and_grant.push((*processed - *created).to_std().unwrap_or_default());
        if let Some(a) = first.get(&seq) {
            delivery.push((a.wall - *processed).to_std().unwrap_or_default());
        }
    }
    queue_and_grant.sort();
    delivery.sort();

    let figures = &mut bench.figures;
    let s = "latency";
    figures.note(s, "triggers inserted", sent as f64, "requests");
    figures.note(
        s,
        "insert rate achieved",
        sent as f64 / inserted.span.as_secs_f64(),
        "requests/s",
    );
    figures.target(
        s,
        "deliveries missing after 30 s settle",
        (sent - total.len()) as f64,
        "requests",
        Goal::Exactly(0.0),
    );
    if !all_arrived {
        println!(
            "  NOTE: not every delivery arrived within {} s of the last insert",
            SETTLE.as_secs()
        );
    }
    figures.note(
        s,
        "p50 insert to delivery",
        ms(percentile(&total, 50.0)),
        "ms",
    );
    figures.target(
        s,
        "p99 insert to delivery",
        ms(percentile(&total, 99.0)),
        "ms",
        Goal::Below(P99_TARGET_MS),
    );
    figures.note(
        s,
        "max insert to delivery",
        ms(total.last().copied().unwrap_or_default()),
        "ms",
    );
    figures.note(
        s,
        "p50 created_at to decided (queue + grant tx)",
        ms(percentile(&queue_and_grant, 50.0)),
        "ms",
    );
    figures.note(
        s,
        "p99 created_at to decided (queue + grant tx)",
        ms(percentile(&queue_and_grant, 99.0)),
        "ms",
    );
    figures.note(
        s,
        "p50 decided to delivered (outbox + HTTP)",
        ms(percentile(&delivery, 50.0)),
        "ms",
    );
    figures.note(
        s,
        "p99 decided to delivered (outbox + HTTP)",
        ms(percentile(&delivery, 99.0)),
        "ms",
    );
    let per_k = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / sent.max(1) as f64;
    figures.note(
        s,
        "CPU s per 1,000 requests (daemon)",
        per_k(exit.cpu()),
        "s",
    );
    figures.note(
        s,
        "CPU s per 1,000 requests (bench: client + receiver)",
        per_k(bench_cpu),
        "s",
    );
    ServerLoad::note_between(
        figures,
        (
            s,
            "CPU s per 1,000 requests (mariadbd, whole server, includes the client's INSERTs)",
        ),
        (server_before, server_after),
        sent,
    );
    figures.note(s, "daemon peak RSS", mib(exit.peak_rss), "MiB");
    Ok(())
}
