//! `couponsd backtest --rules DIR`: replays recorded requests through candidate rules
//! and through the live rules (`rules.dir`), side by side, and reports how many
//! decisions — user type and coupon — the candidate would change, by campaign and
//! coupon, with examples. Read-only; nothing is granted.
//!
//! Each request is decided as of its own time, from the database's record:
//! - history: the grants ledger of requests with a lower id (grants are recorded in
//!   request-id order, and a user's earlier request in the same batch counts, as it
//!   did in the batch). It is the recorded ledger, not what the candidate would have
//!   granted: a changed decision does not change later requests' histories;
//! - stock: today's `remaining` plus the grants made since the request (by requests
//!   with an id at or above its own), so stock added since counts as if it had been
//!   there; a coupon the inventory check retired after the request counts as active
//!   (from `coupon_rotations`), but one brought back by `stock activate` since counts
//!   as active throughout (activations are not audited);
//! - budgets: today's granted value minus what was granted since;
//! - validity: today's catalog (`valid_for`, `valid_until`, `min_validity`) applied as
//!   the grant step applies it, at the request's time: a coupon whose validity had
//!   ended then, or would have been too short, counts as out of stock;
//! - time: `now()`, `days_since` and campaign windows see the request's `processed_at`.
//!
//! Both rule sets see the same reconstruction, so a difference between them is the
//! rules' doing; how faithful the reconstruction is shows in how many recorded
//! decisions the live rules reproduce.

mod replay;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;

use super::{to_json_line, AuthoringError, SetClock};
use crate::config::Config;
use crate::rules::Rules;
use crate::store::{Db, StoreError};
use replay::{Recorded, Replayed};

/// How many changed decisions the report shows.
const EXAMPLES: usize = 5;
/// Users per query when reading the ledger (SQLite binds at most 32766 values).
const USERS_PER_QUERY: usize = 500;

/// `couponsd backtest` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BacktestArgs {
    /// The candidate rules folder (with `user_type.rhai` and `select_coupon.rhai`).
    #[arg(long)]
    pub rules: PathBuf,
    /// Replay requests created at or after this: RFC 3339 (2025-03-01T00:00:00Z), a
    /// date (2025-03-01, midnight UTC) or a duration ago (36h, 7days); all by default.
    #[arg(long)]
    pub since: Option<String>,
    /// Replay at most this many requests, oldest first.
    #[arg(long, default_value_t = 10_000)]
    pub limit: i64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The backtest's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backtest {
    /// Requests replayed.
    pub requests: usize,
    /// The first request id replayed.
    pub first_id: Option<i64>,
    /// The last request id replayed.
    pub last_id: Option<i64>,
    /// The live rules (`rules.dir`).
    pub live: RulesRef,
    /// The candidate rules (`--rules`).
    pub candidate: RulesRef,
    /// Recorded decisions the live rules reproduce (see the module docs).
    pub reproduced: usize,
    /// Decisions whose user type or coupon would change.
    pub changed: usize,
    /// Decisions whose user type would change.
    pub user_type_changed: usize,
    /// Decisions whose coupon would change (`none` counts as a coupon).
    pub coupon_changed: usize,
    /// Requests on which a candidate rule fails.
    pub candidate_failures: usize,
    /// By the live decision's campaign and coupon.
    pub by_coupon: Vec<CouponRow>,
    /// Up to five changed decisions, oldest first.
    pub examples: Vec<Example>,
}

/// A rules folder and the version of its rules.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RulesRef {
    /// The folder.
    pub dir: String,
    /// The digest of its two rules.
    pub version: String,
}

/// One (campaign, coupon) of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CouponRow {
    /// Campaign id, `-` for none.
    pub campaign: String,
    /// Coupon id, `none` for no grant.
    pub coupon: String,
    /// Decisions landing here with the live rules.
    pub live: usize,
    /// Decisions landing here with the candidate.
    pub candidate: usize,
    /// Of the live ones, how many change user type.
    pub user_type_changed: usize,
    /// Of the live ones, how many change coupon.
    pub coupon_changed: usize,
}

/// A changed decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// The request.
    pub request_key: String,
    /// The live rules' decision: `user_type campaign/coupon`.
    pub old: String,
    /// The candidate's decision.
    pub new: String,
}

/// `couponsd backtest`: `backtester` run on `db` (opened read-only by the caller); the
/// report as text, or as one JSON line with `json`.
pub async fn run(
    db: &Db,
    config: &Config,
    backtester: Backtester,
    json: bool,
) -> Result<String, AuthoringError> {
    let report = backtester.compare(db, config).await?;
    if json {
        return to_json_line(&report);
    }
    Ok(render(&report))
}

/// A backtest ready to run: `--limit` and `--since` checked, and the live rules
/// (`rules.dir`) and the candidate compiled with a clock the replay sets, all before the
/// database is read, so that a bad argument or a rule that does not compile is reported
/// first.
pub struct Backtester {
    live: Rules,
    candidate: Rules,
    clock: SetClock,
    since: NaiveDateTime,
    limit: i64,
    /// The report so far: which rules are compared.
    report: Backtest,
}

impl Backtester {
    /// Checks `args` and compiles both rule sets; every rule problem is reported at once.
    pub fn new(config: &Config, args: &BacktestArgs) -> Result<Self, AuthoringError> {
        if args.limit < 1 {
            return Err(AuthoringError::Refused(format!(
                "--limit: must be at least 1, got {}",
                args.limit
            )));
        }
        let since = parse_since(args.since.as_deref(), Utc::now())?;
        let clock = SetClock::new(Utc::now());
        let limits = &config.rules.limits;
        let live_dir = &config.rules.dir;
        let live = Rules::load_with_clock(live_dir, limits, clock.clock());
        let candidate = Rules::load_with_clock(&args.rules, limits, clock.clock());
        let (live, candidate) = match (live, candidate) {
            (Ok(live), Ok(candidate)) => (live, candidate),
            (live, candidate) => {
                let errors = [live.err(), candidate.err()].into_iter().flatten();
                return Err(AuthoringError::Rules(errors.flatten().collect()));
            }
        };
        let report = Backtest {
            live: RulesRef {
                dir: live_dir.display().to_string(),
                version: live.version().to_string(),
            },
            candidate: RulesRef {
                dir: args.rules.display().to_string(),
                version: candidate.version().to_string(),
            },
            ..Backtest::default()
        };
        Ok(Self {
            live,
            candidate,
            clock,
            since,
            limit: args.limit,
            report,
        })
    }

    /// Replays the requests recorded in `db` through both rule sets, with `config`'s
    /// campaigns, and compares; see the module docs.
    pub async fn compare(self, db: &Db, config: &Config) -> Result<Backtest, AuthoringError> {
        let Self {
            live,
            candidate,
            clock,
            since,
            limit,
            mut report,
        } = self;
        let recorded = read(db, since, limit).await?;
        let campaigns = config.campaigns.clone();
        let replayed = tokio::task::spawn_blocking(move || {
            replay::replay(&campaigns, &live, &candidate, &clock, &recorded)
        })
        .await
        .map_err(|e| AuthoringError::Stopped(format!("replay stopped unexpectedly: {e}")))?;
        tally(&mut report, &replayed);
        Ok(report)
    }
}

async fn read(db: &Db, since: NaiveDateTime, limit: i64) -> Result<Recorded, AuthoringError> {
    let conn = &mut db.get().await?;
    let requests = conn
        .done_requests_since(since, limit)
        .await
        .map_err(StoreError::from)?;
    let (first, last) = match (requests.first(), requests.last()) {
        (Some(f), Some(l)) => (f.id, l.id),
        _ => (0, 0),
    };
    let mut users: Vec<String> = requests.iter().map(|r| r.user_id.clone()).collect();
    users.sort();
    users.dedup();
    let mut ledger = Vec::new();
    for chunk in users.chunks(USERS_PER_QUERY) {
        let rows = conn.ledger_before(chunk, last).await;
        ledger.extend(rows.map_err(StoreError::from)?);
    }
    let window = conn.grants_in_window(first, last).await;
    let after = conn.grants_after_request(last).await;
    let stock = conn.coupon_stock().await;
    let budgets = conn.campaign_budgets().await;
    let rotations = conn.rotations().await;
    Ok(Recorded {
        requests,
        ledger,
        window: window.map_err(StoreError::from)?,
        after: after.map_err(StoreError::from)?,
        stock: stock.map_err(StoreError::from)?,
        budgets: budgets.map_err(StoreError::from)?,
        rotations: rotations.map_err(StoreError::from)?,
    })
}

/// `--since`: RFC 3339, a date (midnight UTC), or a duration before `now`.
fn parse_since(text: Option<&str>, now: DateTime<Utc>) -> Result<NaiveDateTime, AuthoringError> {
    let Some(text) = text.map(str::trim) else {
        return Ok(DateTime::UNIX_EPOCH.naive_utc());
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.naive_utc());
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default());
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(now.naive_utc() - chrono::TimeDelta::from_std(ago).unwrap_or_default()),
        Err(_) => Err(AuthoringError::Refused(format!(
            "--since: {text:?} is not an RFC 3339 time (2025-03-01T00:00:00Z), a date (2025-03-01) or a duration (36h, 7days)"
        ))),
    }
}

fn tally(report: &mut Backtest, replayed: &[Replayed]) {
    report.requests = replayed.len();
    report.first_id = replayed.first().map(|r| r.id);
    report.last_id = replayed.last().map(|r| r.id);
    let mut rows: BTreeMap<(String, String), CouponRow> = BTreeMap::new();
    for r in replayed {
        let (old, new) = (&r.live, &r.candidate);
        report.reproduced += usize::from(r.recorded.same_as(old));
        report.candidate_failures += usize::from(new.failed);
        let user_type = old.user_type != new.user_type;
        let coupon = old.coupon != new.coupon;
        report.user_type_changed += usize::from(user_type);
        report.coupon_changed += usize::from(coupon);
        if user_type || coupon {
            report.changed += 1;
            if report.examples.len() < EXAMPLES {
                report.examples.push(Example {
                    request_key: r.request_key.clone(),
                    old: old.to_string(),
                    new: new.to_string(),
                });
            }
        }
        let row = |d: &replay::Summary| (d.campaign.clone(), d.coupon.clone());
        let live_row = rows.entry(row(old)).or_default();
        live_row.live += 1;
        live_row.user_type_changed += usize::from(user_type);
        live_row.coupon_changed += usize::from(coupon);
        rows.entry(row(new)).or_default().candidate += 1;
    }
    report.by_coupon = rows
        .into_iter()
        .map(|((campaign, coupon), row)| CouponRow {
            campaign,
            coupon,
            ..row
        })
        .collect();
}

fn render(b: &Backtest) -> String {
    let mut out = String::new();
    let (Some(first), Some(last)) = (b.first_id, b.last_id) else {
        return "backtest  no recorded requests with status done in range: nothing to replay\n"
            .into();
    };
    let _ = writeln!(
        out,
        "backtest  {} recorded request(s), ids {first}..{last} (read-only)",
        b.requests
    );
    let _ = writeln!(
        out,
        "live      {} (version {}) reproduces {} of {} recorded decisions",
        b.live.dir, b.live.version, b.reproduced, b.requests
    );
    let _ = writeln!(
        out,
        "candidate {} (version {})",
        b.candidate.dir, b.candidate.version
    );
    let _ = writeln!(
        out,
        "changed   {} decision(s): user type {}, coupon {}; the candidate fails on {}",
        b.changed, b.user_type_changed, b.coupon_changed, b.candidate_failures
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:<12} {:>8} {:>10} {:>18} {:>15}",
        "CAMPAIGN", "COUPON", "LIVE", "CANDIDATE", "USER TYPE CHANGED", "COUPON CHANGED"
    );
    for r in &b.by_coupon {
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:>8} {:>10} {:>18} {:>15}",
            r.campaign, r.coupon, r.live, r.candidate, r.user_type_changed, r.coupon_changed
        );
    }
    if !b.examples.is_empty() {
        let _ = writeln!(out, "\nexamples (live → candidate)");
        for e in &b.examples {
            let _ = writeln!(out, "  {}  {} → {}", e.request_key, e.old, e.new);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn since_takes_a_time_a_date_or_a_duration_ago() {
        let now = Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap();
        let at = |text| parse_since(Some(text), now).unwrap().to_string();
        assert_eq!(at("2025-03-01T06:00:00+02:00"), "2025-03-01 04:00:00");
        assert_eq!(at("2025-03-01"), "2025-03-01 00:00:00");
        assert_eq!(at("36h"), "2025-03-09 00:00:00");
        assert!(parse_since(Some("last tuesday"), now).is_err());
        assert_eq!(
            parse_since(None, now).unwrap(),
            DateTime::UNIX_EPOCH.naive_utc()
        );
    }
}
