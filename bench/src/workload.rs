//! What the benchmarks feed the daemon: its config file (the catalog of each scenario
//! and the knobs under test), the synthetic trigger requests, the bulk load that
//! queues them before a timed drain, and the steady client of the latency scenario.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::receiver::Receiver;
use super::BenchError;
use couponsd::demo::{SHIPPED_SELECT_COUPON, SHIPPED_USER_TYPE};
use couponsd::store::requests::NewRequest;
use couponsd::store::{Db, StoreError};

/// The signing secret of the `wallet` channel (a benchmark's; it may be printed).
pub const WALLET_SECRET: &str = "whsec_YmVuY2gtd2FsbGV0LWtleS1mb3ItY291cG9uc2QtYmVuY2g=";
/// The signing secret of the `ops` channel.
pub const OPS_SECRET: &str = "whsec_YmVuY2gtb3BzLWtleS1mb3ItY291cG9uc2QtYmVuY2g=";

/// Rows per multi-row INSERT when queueing requests.
const LOAD_CHUNK: usize = 1000;

/// The config knobs a benchmark varies; the rest of the config is the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// `worker.batch_size`
    pub batch_size: usize,
    /// `worker.concurrency`
    pub workers: usize,
    /// `database.max_connections`
    pub max_connections: usize,
    /// `dispatch.concurrency`
    pub dispatch_concurrency: usize,
    /// `dispatch.batch_size`
    pub dispatch_batch_size: usize,
    /// `worker.poll_interval`
    pub poll_interval: Duration,
}

impl Default for Knobs {
    /// The shipped defaults (see `couponsd.example.yaml`).
    fn default() -> Self {
        Knobs {
            batch_size: 200,
            workers: 4,
            max_connections: 8,
            dispatch_concurrency: 64,
            dispatch_batch_size: 500,
            poll_interval: Duration::from_millis(200),
        }
    }
}

impl Knobs {
    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "worker.batch_size={} worker.concurrency={} database.max_connections={} \
             dispatch.concurrency={} dispatch.batch_size={} worker.poll_interval={}",
            self.batch_size,
            self.workers,
            self.max_connections,
            self.dispatch_concurrency,
            self.dispatch_batch_size,
            humantime::format_duration(self.poll_interval)
        )
    }
}

/// Where the coupons of a scenario take their codes from (`--codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Codes {
    /// Counted stock and no codes: the catalog as it was before codes.
    None,
    /// `codes: {pool: true}`: each coupon's stock is a pool of codes the bench imports
    /// before the timed drain, as many as its counted stock would have been.
    Pool,
    /// `codes: {generate: "BENCH-XXXX-XXXX-XXXX"}`: a fresh code written at each grant.
    Generate,
}

impl Codes {
    /// The word of `--codes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Codes::None => "none",
            Codes::Pool => "pool",
            Codes::Generate => "generate",
        }
    }
}

/// The pattern of `--codes generate`: twelve places, 31^12 codes, far over the
/// 1,000,000 x stock `check` asks of the largest stock here (100,000).
pub const GENERATE_PATTERN: &str = "BENCH-XXXX-XXXX-XXXX";

/// The campaigns of a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Catalog {
    /// Three campaigns, ten coupons, stock for everyone: newcomers on `app_open`
    /// (four coupons, the first three of which run out), returning users on `app_open`
    /// (three coupons), newcomers on `checkout` (three coupons). A returning user on
    /// `checkout` has no campaign.
    Steady {
        /// Requests the stock is sized for.
        requests: usize,
        /// Where the coupons' codes come from.
        codes: Codes,
    },
    /// One campaign whose first coupon has `hot` in stock and whose second has enough
    /// for everyone else.
    Flash {
        /// Stock of the hot coupon.
        hot: usize,
        /// Requests the fallback is sized for.
        requests: usize,
        /// Where the coupons' codes come from.
        codes: Codes,
    },
}

/// One campaign of a catalog: id, event, audience, and its chain of coupons.
struct CampaignSpec {
    id: &'static str,
    event: &'static str,
    audience: &'static str,
    coupons: Vec<CouponSpec>,
}

/// One coupon of a catalog: id, face value, and its stock (counted, or the size of its
/// pool).
struct CouponSpec {
    id: &'static str,
    face_value: &'static str,
    stock: usize,
}

impl Catalog {
    /// Where its coupons' codes come from.
    pub fn codes(self) -> Codes {
        match self {
            Catalog::Steady { codes, .. } | Catalog::Flash { codes, .. } => codes,
        }
    }

    /// The pool coupons and how many codes each is seeded with (none unless
    /// `--codes pool`).
    pub fn pools(self) -> Vec<(&'static str, usize)> {
        if self.codes() != Codes::Pool {
            return Vec::new();
        }
        self.campaigns()
            .into_iter()
            .flat_map(|c| c.coupons)
            .map(|c| (c.id, c.stock))
            .collect()
    }

    fn campaigns(self) -> Vec<CampaignSpec> {
        let coupon = |id, face_value, stock| CouponSpec {
            id,
            face_value,
            stock,
        };
        match self {
            Catalog::Steady { requests: n, .. } => {
                let (tenth, twentieth) = (n / 10 + 1, n / 20 + 1);
                vec![
                    CampaignSpec {
                        id: "newcomer",
                        event: "app_open",
                        audience: "first_time",
                        coupons: vec![
                            coupon("NEW10", "10.00", tenth),
                            coupon("NEW8", "8.00", tenth),
                            coupon("NEW5", "5.00", tenth),
                            coupon("NEW3", "3.00", n),
                        ],
                    },
                    CampaignSpec {
                        id: "loyalty",
                        event: "app_open",
                        audience: "returning",
                        coupons: vec![
                            coupon("BACK5", "5.00", tenth),
                            coupon("BACK3", "3.00", tenth),
                            coupon("BACK2", "2.00", n),
                        ],
                    },
                    CampaignSpec {
                        id: "checkout",
                        event: "checkout",
                        audience: "first_time",
                        coupons: vec![
                            coupon("CHK10", "10.00", twentieth),
                            coupon("CHK5", "5.00", twentieth),
                            coupon("CHK2", "2.00", n),
                        ],
                    },
                ]
            }
            Catalog::Flash { hot, requests, .. } => vec![CampaignSpec {
                id: "flash",
                event: "app_open",
                audience: "first_time",
                coupons: vec![
                    coupon("HOT50", "50.00", hot),
                    coupon("SORRY5", "5.00", requests),
                ],
            }],
        }
    }
}

fn catalog_yaml(catalog: Catalog) -> String {
    let mut yaml = String::new();
    for campaign in catalog.campaigns() {
        yaml.push_str(&format!(
            "  - id: {}\n    event: {}\n    audience: {}\n    coupons:\n",
            campaign.id, campaign.event, campaign.audience
        ));
        for c in campaign.coupons {
            let (id, face, stock) = (c.id, c.face_value, c.stock);
            let source = match catalog.codes() {
                Codes::None => format!("stock: {stock}"),
                Codes::Pool => "codes: { pool: true }, valid_for: 7d".to_owned(),
                Codes::Generate => format!(
                    "stock: {stock}, codes: {{ generate: \"{GENERATE_PATTERN}\" }}, valid_for: 7d"
                ),
            };
            yaml.push_str(&format!(
                "      - {{ id: {id}, face_value: \"{face}\", {source}, channel: wallet }}\n"
            ));
        }
    }
    yaml
}

/// Writes the shipped rules and a config for `db_url` into `dir`; returns the config
/// file's path.
pub fn write_config(
    dir: &Path,
    db_url: &str,
    receiver: &Receiver,
    knobs: Knobs,
    catalog: Catalog,
) -> Result<PathBuf, BenchError> {
    let io = |e: std::io::Error| BenchError::Setup(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir.join("rules")).map_err(io)?;
    std::fs::write(dir.join("rules/user_type.rhai"), SHIPPED_USER_TYPE).map_err(io)?;
    std::fs::write(dir.join("rules/select_coupon.rhai"), SHIPPED_SELECT_COUPON).map_err(io)?;
    let yaml = format!(
        r#"# Written by `couponsd-bench`.
database:
  url: "{db_url}"
  max_connections: {max_connections}
rules:
  dir: rules
worker:
  batch_size: {batch_size}
  concurrency: {workers}
  poll_interval: {poll}
dispatch:
  concurrency: {dispatch_concurrency}
  batch_size: {dispatch_batch_size}
  retry_base: 1s
  retry_max: 10s
channels:
  wallet:
    url: "{wallet}"
    secret: "{WALLET_SECRET}"
    timeout: 10s
  ops:
    url: "{ops}"
    secret: "{OPS_SECRET}"
    timeout: 10s
alerts:
  channel: ops
campaigns:
{campaigns}"#,
        max_connections = knobs.max_connections,
        batch_size = knobs.batch_size,
        workers = knobs.workers,
        poll = humantime::format_duration(knobs.poll_interval),
        dispatch_concurrency = knobs.dispatch_concurrency,
        dispatch_batch_size = knobs.dispatch_batch_size,
        wallet = receiver.url("wallet"),
        ops = receiver.url("ops"),
        campaigns = catalog_yaml(catalog),
    );
    let path = dir.join("couponsd.yaml");
    std::fs::write(&path, yaml).map_err(io)?;
    Ok(path)
}

fn request(key: String, user: String, event: &str, seq: usize) -> NewRequest {
    let platform = if seq % 3 == 0 { "android" } else { "ios" };
    NewRequest {
        request_key: key,
        user_id: user,
        event: event.to_owned(),
        attributes: Some(format!(
            r#"{{"platform":"{platform}","app_version":"4.2.{}"}}"#,
            seq % 10
        )),
    }
}

/// `n` requests of `n / 2` users: each user's first visit, then (in the second half)
/// each one's return. One user in five comes through `checkout`, the others through
/// `app_open`.
pub fn steady_triggers(prefix: &str, n: usize) -> Vec<NewRequest> {
    let half = n.div_ceil(2);
    (0..n)
        .map(|i| {
            let user = if i < half { i } else { i - half };
            let event = if user % 5 == 4 {
                "checkout"
            } else {
                "app_open"
            };
            request(
                format!("{prefix}-{i}"),
                format!("{prefix}-user-{user}"),
                event,
                i,
            )
        })
        .collect()
}

/// `n` requests, each from a new user, on `app_open`.
pub fn flash_triggers(prefix: &str, n: usize) -> Vec<NewRequest> {
    (0..n)
        .map(|i| {
            request(
                format!("{prefix}-{i}"),
                format!("{prefix}-user-{i}"),
                "app_open",
                i,
            )
        })
        .collect()
}

/// Queues `rows` with multi-row INSERTs of 1,000 through [`Conn::enqueue`], two
/// at a time; returns how long it took.
///
/// [`Conn::enqueue`]: couponsd::store::Conn::enqueue
pub async fn bulk_load(db: &Db, rows: Vec<NewRequest>) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let chunks: Vec<Vec<NewRequest>> = rows.chunks(LOAD_CHUNK).map(<[_]>::to_vec).collect();
    let lanes = if db.is_mysql() { 2 } else { 1 };
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let db = db.clone();
        let mine: Vec<Vec<NewRequest>> = chunks.iter().skip(lane).step_by(lanes).cloned().collect();
        tasks.spawn(async move {
            for chunk in mine {
                enqueue(&db, &chunk).await?;
            }
            Ok::<_, BenchError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| BenchError::Setup(format!("bulk load: {e}")))??;
    }
    Ok(started.elapsed())
}

async fn enqueue(db: &Db, rows: &[NewRequest]) -> Result<usize, BenchError> {
    Ok(db
        .get()
        .await?
        .enqueue(rows)
        .await
        .map_err(StoreError::from)?)
}

/// What the steady client did.
pub struct Inserted {
    /// For request `l-<seq>`, when the INSERT that carried it was sent.
    pub sent_at: Vec<Instant>,
    /// From the first insert to the last.
    pub span: Duration,
}

/// Inserts `total` requests at `rate` per second, one multi-row INSERT every `tick`,
/// for as long as that takes (and at most twice as long, if the database falls
/// behind). Request `seq` is `l-<seq>` from a new user.
pub async fn steady_client(
    db: &Db,
    rate: usize,
    total: usize,
    tick: Duration,
) -> Result<Inserted, BenchError> {
    let planned = Duration::from_secs_f64(total as f64 / rate.max(1) as f64);
    let started = Instant::now();
    let mut sent_at: Vec<Instant> = Vec::with_capacity(total);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent_at.len() < total && started.elapsed() < planned * 2 {
        ticks.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        if due <= sent_at.len() {
            continue;
        }
        let rows: Vec<NewRequest> = (sent_at.len()..due)
            .map(|seq| {
                let event = if seq % 5 == 4 { "checkout" } else { "app_open" };
                request(format!("l-{seq}"), format!("l-user-{seq}"), event, seq)
            })
            .collect();
        let at = Instant::now();
        enqueue(db, &rows).await?;
        sent_at.extend(std::iter::repeat_n(at, rows.len()));
    }
    Ok(Inserted {
        span: started.elapsed(),
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_triggers_bring_every_user_back_once() {
        let rows = steady_triggers("s", 10);
        let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
        assert_eq!(
            users[..5],
            users[5..],
            "the second half are the first half's returns"
        );
        let mut keys: Vec<&str> = rows.iter().map(|r| r.request_key.as_str()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 10, "every request key is its own");
        assert_eq!(rows[4].event, "checkout");
        assert_eq!(rows[3].event, "app_open");
    }

    #[tokio::test]
    async fn every_code_source_writes_a_config_check_accepts() {
        use couponsd::domain::codes::CodeSource;
        let receiver = Receiver::start(&[("wallet", WALLET_SECRET), ("ops", OPS_SECRET)])
            .await
            .unwrap();
        let dir = std::env::temp_dir().join(format!("couponsd-bench-test-{}", std::process::id()));
        for codes in [Codes::None, Codes::Pool, Codes::Generate] {
            for catalog in [
                Catalog::Steady {
                    requests: 100_000,
                    codes,
                },
                Catalog::Flash {
                    hot: 20_000,
                    requests: 100_000,
                    codes,
                },
            ] {
                let path = write_config(
                    &dir,
                    "mysql://root@127.0.0.1:3306/unused",
                    &receiver,
                    Knobs::default(),
                    catalog,
                )
                .unwrap();
                let config = couponsd::config::Config::load(&path)
                    .unwrap_or_else(|e| panic!("{codes:?} {catalog:?}: {e}"));
                let coupons: Vec<_> = config.campaigns.iter().flat_map(|c| &c.coupons).collect();
                for c in &coupons {
                    match codes {
                        Codes::None => assert_eq!(c.codes, None),
                        Codes::Pool => {
                            assert_eq!((&c.codes, c.stock), (&Some(CodeSource::Pool), 0))
                        }
                        Codes::Generate => {
                            assert!(matches!(c.codes, Some(CodeSource::Generate(_))))
                        }
                    }
                    assert_eq!(c.validity.valid_for.is_some(), codes != Codes::None);
                }
                let pooled: usize = catalog.pools().iter().map(|(_, n)| n).sum();
                let counted: i64 = match codes {
                    Codes::Pool => 0,
                    _ => coupons.iter().map(|c| c.stock).sum(),
                };
                match (codes, catalog) {
                    (Codes::Pool, Catalog::Steady { .. }) => assert_eq!(pooled, 360_007),
                    (Codes::Pool, Catalog::Flash { .. }) => assert_eq!(pooled, 120_000),
                    _ => assert_eq!((pooled, counted > 0), (0, true)),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flash_triggers_are_all_new_users() {
        let rows = flash_triggers("f", 100);
        let mut users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
        users.sort();
        users.dedup();
        assert_eq!(users.len(), 100);
    }
}
