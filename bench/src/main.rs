//! `couponsd-bench`: benchmarks of the whole pipeline, end to end, against a real
//! MariaDB (or, with `--sqlite`, a throwaway SQLite file) and a loopback partner that
//! verifies every signature. These are measurements to read, not timed tests: nothing
//! here fails a build, and every loop is bounded in count and in time.
//!
//! The scenarios (see `BENCHMARKS.md` for the figures and how to read them):
//!
//! | scenario   | what it measures |
//! |------------|------------------|
//! | `steady`   | 100,000 queued triggers drained by one daemon: requests/s, grants/s, deliveries/s, CPU |
//! | `baseline` | the same with `worker.batch_size: 1` (one transaction per request), for the ratio |
//! | `floor`    | the rows `steady` writes, in plain SQL from the bench: no daemon, rules or HTTP, for the ratio |
//! | `flash`    | one hot coupon, three daemons at once: grants/s, exactly the stock granted |
//! | `latency`  | 1,000 triggers/s into a running daemon for 30 s: insert to delivery p50/p99/max |
//! | `memory`   | peak RSS of the daemons of `steady` and `flash` |
//! | `rules`    | one evaluation of each shipped rule, in process |
//! | `lifecycle`| triggers drained, then a `redeem` per grant drained: updates/s against requests/s |
//! | `console`  | the ops console's overview with 100 campaigns: render time, `GET /` over HTTP, `/healthz` meanwhile |
//! | `api`      | 64 keep-alive clients POST /v1/triggers to a running daemon: acknowledged/s, p50/p99, decided/s |
//! | `shards`   | a simulation of `docs/scaling.md`'s escrow slots and rebalancer, no database: stock never created or lost, stock stranded |
//!
//! `--codes none,pool,generate` runs `steady` and `flash` once per code source (every
//! coupon a pool the bench seeds first, or generated codes), and `--rounds N` repeats
//! them in interleaved rounds with the ratios against `none` at the end (`rounds`).
//!
//! Daemons are separate processes of the `couponsd` binary (`run --drain`, or `run`
//! then SIGTERM), so that each one's CPU time and peak RSS are its own (see `process`).
//! The bench finds it with `--daemon`, `COUPONSD_BIN`, or beside its own executable:
//! `cargo build --release --workspace` puts both in `target/release/`.

mod api;
mod codes;
mod console;
mod database;
mod drain;
mod flash;
mod floor;
mod latency;
mod lifecycle;
mod process;
mod receiver;
mod report;
mod rounds;
mod rules;
mod shards;
mod sqltrace;
mod throughput;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use couponsd::app::AppError;
use couponsd::store::StoreError;
use database::Target;
use receiver::Receiver;
use report::Figures;
use workload::{Codes, Knobs};

/// Requests of `steady` and `flash` on MariaDB unless `--requests` says otherwise.
const MYSQL_REQUESTS: usize = 100_000;
/// Requests of `steady` on SQLite unless `--requests` says otherwise.
const SQLITE_REQUESTS: usize = 10_000;
/// Requests of `latency` (at 1,000 per second).
const LATENCY_REQUESTS: usize = 30_000;

/// A benchmark that could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The bench could not set itself up (folder, database, receiver, config).
    #[error("bench setup: {0}")]
    Setup(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A daemon failed or overran its time.
    #[error("{name} {message}")]
    Daemon {
        /// Which daemon.
        name: String,
        /// What happened, with the end of its log.
        message: String,
    },
    /// A scenario finished but its result is wrong (an oversell, a lost delivery).
    #[error("{scenario}: check failed: {message}")]
    Check {
        /// The scenario.
        scenario: String,
        /// What was wrong.
        message: String,
    },
}

impl From<AppError> for BenchError {
    fn from(e: AppError) -> Self {
        BenchError::Setup(e.to_string())
    }
}

impl From<diesel::result::Error> for BenchError {
    fn from(e: diesel::result::Error) -> Self {
        BenchError::Store(StoreError::from(e))
    }
}

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every scenario the backend supports.
    All,
    /// Queued triggers drained by one daemon.
    Steady,
    /// `steady` with `worker.batch_size: 1`.
    Baseline,
    /// The rows `steady` writes, in plain SQL with no daemon.
    Floor,
    /// A hot coupon and three daemons.
    Flash,
    /// Insert-to-delivery latency at 1,000 triggers/s.
    Latency,
    /// Peak RSS of the daemons of `steady` and `flash`.
    Memory,
    /// Time of one evaluation of each shipped rule.
    Rules,
    /// Triggers drained, then one partner `redeem` per grant drained: the per-row ratio.
    Lifecycle,
    /// The ops console's overview with 100 campaigns, in process and over HTTP.
    Console,
    /// 64 keep-alive clients posting to the HTTP API of a running daemon.
    Api,
    /// The sharded design's escrow slots and rebalancer, simulated.
    Shards,
}

/// Benchmarks of couponsd against MariaDB (or `--sqlite`) and a verifying loopback
/// receiver.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct BenchArgs {
    /// The `couponsd` binary to start the daemons from [default: `couponsd` beside
    /// this executable].
    #[arg(long, env = "COUPONSD_BIN")]
    pub daemon: Option<PathBuf>,
    /// The MariaDB/MySQL server, without a database: the bench creates and drops its own.
    #[arg(
        long,
        env = "COUPONSD_BENCH_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    pub mysql_url: String,
    /// Run against a throwaway SQLite file instead (steady, baseline and rules only).
    #[arg(long)]
    pub sqlite: bool,
    /// Which scenarios, comma-separated: the ratios need their two in one run
    /// (`steady,baseline`, `steady,floor`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,
    /// Requests per drain of steady, baseline, floor and flash [100000 on MariaDB, 10000 on
    /// SQLite]; latency inserts 30000 unless set.
    #[arg(long)]
    pub requests: Option<usize>,
    /// Override `worker.batch_size` (not for `baseline`, whose point is 1).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override `worker.concurrency`.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Override `database.max_connections`.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Override `dispatch.concurrency`.
    #[arg(long)]
    pub dispatch_concurrency: Option<usize>,
    /// Override `dispatch.batch_size`.
    #[arg(long)]
    pub dispatch_batch_size: Option<usize>,
    /// Override `worker.poll_interval` (e.g. 20ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Daemons of the flash sale.
    #[arg(long, default_value_t = 3)]
    pub daemons: usize,
    /// Where the coupons of steady and flash take their codes from, comma-separated:
    /// `none` (counted stock), `pool` (every coupon a pool, seeded before the drain with
    /// as many codes as its stock), `generate` (a fresh code per grant). Each is run;
    /// with `none` and another, the end shows the ratios against `none`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none")]
    pub codes: Vec<Codes>,
    /// Rounds of steady and flash (each with every `--codes` source, the order rotated
    /// by one per round), for ratios the machine's noise cancels in.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub rounds: u16,
    /// Profile: route the daemons' MariaDB connections through a relay that times every
    /// statement, and print where the round-trip time went. Slows the run down.
    #[arg(long)]
    pub trace_sql: bool,
}

impl BenchArgs {
    /// The shipped defaults with this run's overrides.
    fn knobs(&self) -> Knobs {
        let d = Knobs::default();
        Knobs {
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            workers: self.workers.unwrap_or(d.workers),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            dispatch_concurrency: self.dispatch_concurrency.unwrap_or(d.dispatch_concurrency),
            dispatch_batch_size: self.dispatch_batch_size.unwrap_or(d.dispatch_batch_size),
            poll_interval: self.poll_interval.unwrap_or(d.poll_interval),
        }
    }
}

/// What every scenario shares.
pub(crate) struct Bench {
    /// The `couponsd` binary the daemons are started from.
    daemon: PathBuf,
    target: Target,
    /// The MariaDB server, when the target is one.
    server: Option<String>,
    dir: PathBuf,
    receiver: Receiver,
    knobs: Knobs,
    figures: Figures,
    db_pid: Option<u32>,
    /// Requests/s of `steady` in this run, for the ratios of `baseline` and `floor`.
    steady_rate: Option<f64>,
    /// The statement-timing relay, with `--trace-sql`.
    trace: Option<sqltrace::SqlTrace>,
}

impl Bench {
    /// The database URL to give the daemons: the relay's with `--trace-sql`.
    fn daemon_url(&self, url: &str) -> String {
        match &self.trace {
            Some(trace) => trace.rewrite(url),
            None => url.to_owned(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("couponsd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenarios and prints every figure, then the summary.
async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let mut bench = setup(&args).await?;
    let outcome = run_scenarios(&mut bench, &args).await;
    print!("{}", bench.figures.summary());
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&bench.dir);
            if !bench.figures.all_met() {
                println!(
                    "\nsome targets were missed; see BENCHMARKS.md for what the profile showed"
                );
            }
            Ok(())
        }
        Err(e) => {
            println!("\nlogs and configs kept in {}", bench.dir.display());
            Err(e)
        }
    }
}

async fn run_scenarios(bench: &mut Bench, args: &BenchArgs) -> Result<(), BenchError> {
    let picked = |s: Scenario| args.scenario.contains(&s);
    let all = picked(Scenario::All);
    let wants = |s: Scenario| all || picked(s);
    let n = args.requests.unwrap_or(if args.sqlite {
        SQLITE_REQUESTS
    } else {
        MYSQL_REQUESTS
    });
    if wants(Scenario::Rules) {
        rules::run(bench).await?;
    }
    let mut drains = Vec::new();
    if wants(Scenario::Steady) || picked(Scenario::Memory) {
        drains.push(rounds::Drain::Steady);
    }
    let flash = wants(Scenario::Flash) || picked(Scenario::Memory);
    if flash && !args.sqlite {
        drains.push(rounds::Drain::Flash);
    }
    let mut codes = args.codes.clone();
    codes.sort();
    codes.dedup();
    let plan = rounds::Plan {
        drains,
        codes,
        rounds: usize::from(args.rounds),
        requests: n,
        daemons: args.daemons.max(1),
    };
    rounds::run(bench, &plan).await?;
    if wants(Scenario::Baseline) {
        // The same workload as `steady`, size and all, so that the gain is a ratio of
        // two drains of the same queue (about two minutes at 100,000 requests).
        throughput::baseline(bench, n).await?;
    }
    let mysql_only = |name: &str| {
        println!("\n[{name}] skipped: it needs MariaDB");
    };
    if wants(Scenario::Floor) {
        if args.sqlite {
            mysql_only("floor");
        } else {
            floor::run(bench, n).await?;
        }
    }
    if flash && args.sqlite {
        mysql_only("flash");
    }
    if picked(Scenario::Lifecycle) {
        lifecycle::run(bench, n).await?;
    }
    if picked(Scenario::Console) {
        console::run(bench).await?;
    }
    if picked(Scenario::Api) {
        api::run(bench, n).await?;
    }
    if picked(Scenario::Shards) {
        shards::run(bench).await?;
    }
    if wants(Scenario::Latency) {
        if args.sqlite {
            mysql_only("latency");
        } else {
            let count = if all {
                LATENCY_REQUESTS
            } else {
                args.requests.unwrap_or(LATENCY_REQUESTS)
            };
            latency::run(bench, count).await?;
        }
    }
    Ok(())
}

async fn setup(args: &BenchArgs) -> Result<Bench, BenchError> {
    let daemon = daemon_binary(args.daemon.as_deref())?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let dir = std::env::temp_dir().join(format!("couponsd-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", dir.display())))?;
    couponsd::logging::init(Default::default(), "warn");
    let server = (!args.sqlite).then(|| args.mysql_url.trim_end_matches('/').to_owned());
    let target = match &server {
        Some(server) => Target::Mysql {
            server: server.clone(),
        },
        None => Target::Sqlite { dir: dir.clone() },
    };
    let settings = match &server {
        Some(server) => database::server_settings(server).await?,
        None => BTreeMap::new(),
    };
    print_machine(&settings, args, &daemon);
    let trace = match (&server, args.trace_sql) {
        (Some(server), true) => Some(sqltrace::SqlTrace::start(server).await?),
        (None, true) => return Err(BenchError::Setup("--trace-sql needs MariaDB".into())),
        _ => None,
    };
    let receiver = Receiver::start(&[
        ("wallet", workload::WALLET_SECRET),
        ("ops", workload::OPS_SECRET),
    ])
    .await?;
    Ok(Bench {
        daemon,
        target,
        db_pid: server.as_ref().and_then(|_| process::database_server_pid()),
        server,
        dir,
        receiver,
        knobs: args.knobs(),
        figures: Figures::default(),
        steady_rate: None,
        trace,
    })
}

/// The `couponsd` binary: `given`, or the one beside this executable; an error that
/// says how to build it when it is not there.
fn daemon_binary(given: Option<&Path>) -> Result<PathBuf, BenchError> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Setup(format!("cannot find this executable's folder: {e}")))?
            .with_file_name("couponsd"),
    };
    if !path.is_file() {
        return Err(BenchError::Setup(format!(
            "no couponsd binary at {}: build it with `cargo build --release --workspace` \
             (or name one with --daemon or COUPONSD_BIN)",
            path.display()
        )));
    }
    Ok(path)
}

fn print_machine(settings: &BTreeMap<String, String>, args: &BenchArgs, daemon: &Path) {
    println!("couponsd-bench");
    if cfg!(debug_assertions) {
        println!("  WARNING    a debug build: build with `cargo build --release --workspace` for figures that mean anything");
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo.lines().next().unwrap_or("MemTotal: ?").trim();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("?");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("  machine    {cores} cores ({model}), {memory}");
    println!("  load avg   {}", load.trim());
    println!("  daemon     {}", daemon.display());
    if args.sqlite {
        println!("  database   SQLite (a throwaway file; WAL, synchronous=NORMAL)");
    } else {
        let get = |k: &str| settings.get(k).map_or("?", String::as_str);
        println!(
            "  database   MariaDB {} at {}: innodb_flush_log_at_trx_commit={} innodb_buffer_pool_size={} log_bin={} sync_binlog={}",
            get("version"),
            args.mysql_url,
            get("innodb_flush_log_at_trx_commit"),
            get("innodb_buffer_pool_size"),
            get("log_bin"),
            get("sync_binlog"),
        );
    }
    println!("  knobs      {}", args.knobs().describe());
    if args.codes != [Codes::None] || args.rounds > 1 {
        let codes: Vec<&str> = args.codes.iter().map(|c| c.as_str()).collect();
        println!(
            "  codes      {} ({} rounds of steady and flash)",
            codes.join(","),
            args.rounds
        );
    }
    if args.trace_sql {
        println!("  NOTE       --trace-sql: the daemons talk to MariaDB through a timing relay; rates are lower than without it");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::BenchArgs::command().debug_assert();
    }
}
