//! Scenario `api`: 64 keep-alive clients post `POST /v1/triggers` on loopback to a
//! running daemon (`run`: its grant workers decide and its dispatcher delivers at the
//! same time), each posting its next trigger as soon as the last was acknowledged. An
//! acknowledgement (202) means the row was committed: the API commits them in groups.
//! Figures: acknowledged/s and the p50/p99 of one POST; how fast the same requests
//! reached their decision (and a grant) from the first POST; the ratio to this run's
//! `steady` (the SQL intake) when it ran; CPU per request of the daemon, the bench
//! (the 64 clients and the receiver) and MariaDB.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::database::ScratchDb;
use super::drain;
use super::latency::{server_load, ServerLoad};
use super::process;
use super::report::{mib, ms, percentile, Goal};
use super::workload::{self, Catalog, Codes};
use super::{Bench, BenchError};
use couponsd::store::requests::NewRequest;
use couponsd::store::Db;

/// Concurrent keep-alive clients.
const CLIENTS: usize = 64;
/// The bench client's bearer token (a benchmark's; it may be printed).
const TOKEN: &str = "bench-api-token-0f4c2b";
/// Acknowledged POSTs per second, at least.
const ACK_TARGET: f64 = 5_000.0;
/// p99 of one POST, below.
const P99_TARGET_MS: f64 = 50.0;
/// The rate of decisions against the rate of acknowledgements, at least.
const DECIDED_SHARE_TARGET: f64 = 0.8;
/// How long the daemon gets, after the last acknowledgement, to decide the rest.
const SETTLE: Duration = Duration::from_secs(120);

/// Runs the scenario with `n` triggers.
pub async fn run(bench: &mut Bench, n: usize) -> Result<(), BenchError> {
    println!(
        "\n[api] {n} triggers posted by {CLIENTS} keep-alive clients to POST /v1/triggers of a running daemon (`run`), which decides and delivers them meanwhile"
    );
    println!("  knobs: {}", bench.knobs.describe());
    let scratch = bench.target.create("api").await?;
    let result = run_in(bench, &scratch, n).await;
    scratch.drop_now().await?;
    result
}

async fn run_in(bench: &mut Bench, scratch: &ScratchDb, n: usize) -> Result<(), BenchError> {
    let dir = bench.dir.join("api");
    let catalog = Catalog::Steady {
        requests: n + 1,
        codes: Codes::None,
    };
    let (path, db) = drain::prepare(bench, scratch, &dir, catalog, bench.knobs).await?;
    let address = add_api_section(&path)?;
    let received = bench.receiver.received.clone();
    received.reset();
    let daemon = process::spawn(
        &bench.daemon,
        "daemon",
        &path,
        &["run"],
        &dir.join("daemon.log"),
    )?;
    let http = client()?;
    let endpoint = format!("http://{address}/v1/triggers");
    if let Err(e) = warm_up(&http, &endpoint, &received).await {
        daemon.terminate();
        let _ = daemon.wait(Duration::from_secs(10)).await;
        return Err(e);
    }
    received.reset();
    let bodies: Vec<String> = workload::steady_triggers("a", n).iter().map(body).collect();
    let own_cpu = process::own_cpu();
    let server_before = server_load(bench).await?;
    let started = Instant::now();
    let posted = post_all(&http, &endpoint, Arc::new(bodies)).await;
    let acked_span = started.elapsed();
    let decided = wait_until_decided(&db, SETTLE)
        .await?
        .map(|_| started.elapsed());
    let server_after = server_load(bench).await?;
    let bench_cpu = process::own_cpu().saturating_sub(own_cpu);
    daemon.terminate();
    let exit = daemon.wait(Duration::from_secs(30)).await?;
    let granted = count(&db, "outcome = 'granted' AND request_key LIKE 'a-%'").await?;

    let acked = posted.latencies.len();
    let acked_rate = acked as f64 / acked_span.as_secs_f64();
    let figures = &mut bench.figures;
    let s = "api";
    figures.note(s, "triggers posted", n as f64, "requests");
    figures.target(
        s,
        "answers other than 202",
        posted.refused as f64,
        "requests",
        Goal::Exactly(0.0),
    );
    figures.target(
        s,
        "acknowledged/s (64 clients, each after COMMIT)",
        acked_rate,
        "requests/s",
        Goal::AtLeast(ACK_TARGET),
    );
    figures.note(s, "p50 POST", ms(percentile(&posted.latencies, 50.0)), "ms");
    figures.target(
        s,
        "p99 POST",
        ms(percentile(&posted.latencies, 99.0)),
        "ms",
        Goal::Below(P99_TARGET_MS),
    );
    figures.note(
        s,
        "max POST",
        ms(posted.latencies.last().copied().unwrap_or_default()),
        "ms",
    );
    match decided {
        Some(span) => {
            let decided_rate = n as f64 / span.as_secs_f64();
            figures.note(
                s,
                "decided/s (first POST to last decision)",
                decided_rate,
                "requests/s",
            );
            figures.note(
                s,
                "granted/s (first POST to last decision)",
                granted as f64 / span.as_secs_f64(),
                "grants/s",
            );
            figures.target(
                s,
                "decided/s ÷ acknowledged/s",
                decided_rate / acked_rate,
                "x",
                Goal::AtLeast(DECIDED_SHARE_TARGET),
            );
        }
        None => println!(
            "  NOTE: requests were still queued {} s after the last acknowledgement",
            SETTLE.as_secs()
        ),
    }
    figures.note(s, "grants", granted as f64, "grants");
    if let Some(steady) = bench.steady_rate {
        figures.note(
            s,
            "acknowledged/s ÷ steady requests/s (SQL intake, this run)",
            acked_rate / steady,
            "x",
        );
    }
    cpu_figures(bench, n, exit.cpu(), bench_cpu, server_before, server_after);
    bench
        .figures
        .note(s, "daemon peak RSS", mib(exit.peak_rss), "MiB");
    Ok(())
}

fn cpu_figures(
    bench: &mut Bench,
    n: usize,
    daemon: Duration,
    own: Duration,
    before: Option<ServerLoad>,
    after: Option<ServerLoad>,
) {
    let per_k = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / n.max(1) as f64;
    let (s, figures) = ("api", &mut bench.figures);
    figures.note(
        s,
        "CPU s per 1,000 requests (daemon: API, grants, deliveries)",
        per_k(daemon),
        "s",
    );
    figures.note(
        s,
        "CPU s per 1,000 requests (bench: 64 clients + receiver)",
        per_k(own),
        "s",
    );
    ServerLoad::note_between(
        figures,
        (s, "CPU s per 1,000 requests (mariadbd, whole server)"),
        (before, after),
        n,
    );
}

/// Appends `api:` (a free loopback port, the bench's client) to the config; returns
/// the address.
fn add_api_section(path: &std::path::Path) -> Result<String, BenchError> {
    use sha2::Digest;
    let setup = |e: std::io::Error| BenchError::Setup(format!("{}: {e}", path.display()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(setup)?
        .port();
    let address = format!("127.0.0.1:{port}");
    let hash = format!("{:x}", sha2::Sha256::digest(TOKEN.as_bytes()));
    let section = format!(
        "\napi:\n  listen: {address}\n  max_connections: {}\n  clients:\n    bench: {{ token_sha256: \"{hash}\", scopes: [triggers] }}\n",
        CLIENTS * 2
    );
    let mut yaml = std::fs::read_to_string(path).map_err(setup)?;
    yaml.push_str(&section);
    std::fs::write(path, yaml).map_err(setup)?;
    Ok(address)
}

fn client() -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::Setup(format!("HTTP client: {e}")))
}

fn body(row: &NewRequest) -> String {
    let attributes: serde_json::Value = row
        .attributes
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    serde_json::json!({
        "request_key": row.request_key,
        "user_id": row.user_id,
        "event": row.event,
        "attributes": attributes,
    })
    .to_string()
}

/// Posts one trigger until the daemon answers (it is starting), then waits for its
/// delivery: the daemon is serving end to end.
async fn warm_up(
    http: &reqwest::Client,
    endpoint: &str,
    received: &super::receiver::Received,
) -> Result<(), BenchError> {
    let warm = body(&NewRequest {
        request_key: "warm-0".into(),
        user_id: "warm-user".into(),
        event: "app_open".into(),
        attributes: None,
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = http
            .post(endpoint)
            .bearer_auth(TOKEN)
            .body(warm.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().as_u16() == 202 => break,
            Ok(answer) => {
                return Err(BenchError::Setup(format!(
                    "the warm-up POST was answered {}",
                    answer.status()
                )))
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => {
                return Err(BenchError::Setup(format!(
                    "the API did not answer within 30 s: {e}"
                )))
            }
        }
    }
    if !received.wait_for_grants(1, Duration::from_secs(30)).await {
        return Err(BenchError::Setup(
            "the daemon delivered nothing within 30 s of the warm-up POST".into(),
        ));
    }
    Ok(())
}

/// What the clients saw.
struct Posted {
    /// Each acknowledged POST's time, sorted.
    latencies: Vec<Duration>,
    /// POSTs answered otherwise, or not at all.
    refused: usize,
}

/// [`CLIENTS`] tasks take the next body, post it and wait for the answer, until none
/// is left.
async fn post_all(http: &reqwest::Client, endpoint: &str, bodies: Arc<Vec<String>>) -> Posted {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, endpoint) = (http.clone(), endpoint.to_owned());
        let (bodies, next) = (bodies.clone(), next.clone());
        clients.spawn(async move {
            let mut mine = Posted {
                latencies: Vec::new(),
                refused: 0,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let sent = Instant::now();
                let answer = http
                    .post(&endpoint)
                    .bearer_auth(TOKEN)
                    .body(body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(a) if a.status().as_u16() == 202 => {
                        let _ = a.bytes().await;
                        mine.latencies.push(sent.elapsed());
                    }
                    _ => mine.refused += 1,
                }
            }
            mine
        });
    }
    let mut all = Posted {
        latencies: Vec::with_capacity(bodies.len()),
        refused: 0,
    };
    while let Some(done) = clients.join_next().await {
        if let Ok(mine) = done {
            all.latencies.extend(mine.latencies);
            all.refused += mine.refused;
        }
    }
    all.latencies.sort();
    all
}

/// Waits until no request is queued or claimed; `None` when `limit` passed first.
async fn wait_until_decided(db: &Db, limit: Duration) -> Result<Option<()>, BenchError> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if count(db, "status IN ('queued', 'claimed')").await? == 0 {
            return Ok(Some(()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

async fn count(db: &Db, filter: &str) -> Result<i64, BenchError> {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let sql = format!("SELECT COUNT(*) AS n FROM trigger_requests WHERE {filter}");
    let rows: Vec<N> = db.get().await?.load(diesel::sql_query(sql)).await?;
    Ok(rows.first().map_or(0, |r| r.n))
}
