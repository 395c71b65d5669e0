//! Scenario 7, floor: the rows `steady` writes, written with plain SQL and nothing
//! else. The same workload (requests, users, the steady catalog) is queued, then
//! `worker.concurrency` lanes of the bench itself drain it in transactions of one
//! `worker.batch_size` batch each: no daemon, no rules, no HTTP. Its rate is what
//! MariaDB allows for these writes on this machine; `steady ÷ floor` is how close the
//! daemon comes to it. MariaDB only, like `flash` and `latency`. The statements, and
//! how many per batch, are in `writes`.

mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use couponsd::store::schema::campaigns;
use couponsd::store::{Conn, Db, StoreError};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::database::{self, ScratchDb};
use super::drain;
use super::process;
use super::sqltrace;
use super::workload::{self, Catalog, Codes};
use super::{Bench, BenchError};

/// The floor's decisions: the steady catalog's chains with what is left of each coupon,
/// and the (user, event) pairs granted so far (the shipped `user_type.rhai`: a user
/// with a grant for the event is `returning`).
#[derive(Default)]
struct Plan {
    /// (event, audience) → campaign and its coupons in chain order.
    chains: HashMap<(String, String), (String, Vec<Coupon>)>,
    granted: HashSet<(String, String)>,
}

struct Coupon {
    id: String,
    face_value_cents: i64,
    channel: String,
    remaining: i64,
}

/// One claimed request and what the floor decided.
struct Decided {
    id: i64,
    key: String,
    user_id: String,
    event: String,
    user_type: &'static str,
    outcome: &'static str,
    grant: Option<Grant>,
}

/// The coupon a request is granted.
struct Grant {
    campaign: String,
    coupon: String,
    face_value_cents: i64,
    channel: String,
}

/// Runs the scenario with `n` requests.
pub async fn run(bench: &mut Bench, n: usize) -> Result<(), BenchError> {
    let knobs = bench.knobs;
    println!(
        "\n[floor] plain SQL: the rows steady writes for {n} requests, no daemon, no rules, no HTTP; {} lanes, one transaction per batch of {}",
        knobs.workers, knobs.batch_size
    );
    let scratch = bench.target.create("floor").await?;
    let result = run_in(bench, &scratch, n).await;
    scratch.drop_now().await?;
    result
}

async fn run_in(bench: &mut Bench, scratch: &ScratchDb, n: usize) -> Result<(), BenchError> {
    let dir = bench.dir.join("floor");
    let catalog = Catalog::Steady {
        requests: n,
        codes: Codes::None,
    };
    let (_, db) = drain::prepare(bench, scratch, &dir, catalog, bench.knobs).await?;
    let plan = Mutex::new(plan(&db).await?);
    let load = workload::bulk_load(&db, workload::steady_triggers("fl", n)).await?;
    println!("  queued {n} requests in {:.2} s", load.as_secs_f64());
    let Some(server) = bench.server.clone() else {
        return Err(BenchError::Setup("the floor needs MariaDB".into()));
    };
    let before = database::status(&server).await?;
    let db_cpu = bench.db_pid.and_then(process::cpu_of);
    let own_cpu = process::own_cpu();
    if let Some(trace) = &bench.trace {
        trace.reset();
    }
    let started = Instant::now();
    let batch = bench.knobs.batch_size as i64;
    let lanes = (0..bench.knobs.workers.max(1)).map(|lane| drain_lane(&db, &plan, batch, lane));
    let done = futures_util::future::join_all(lanes).await;
    let wall = started.elapsed();
    let requests: usize = done.into_iter().sum::<Result<usize, BenchError>>()?;
    let client_cpu = process::own_cpu().saturating_sub(own_cpu);
    if let Some(trace) = &bench.trace {
        sqltrace::print(&trace.take(), n, wall);
    }
    let db_cpu = db_cpu
        .zip(bench.db_pid.and_then(process::cpu_of))
        .map(|(a, b)| b.saturating_sub(a));
    let server = database::delta(&before, &database::status(&server).await?);
    check(&db, n, requests).await?;
    report(bench, n, wall, client_cpu, db_cpu, &server);
    Ok(())
}

/// The steady catalog as the scratch database holds it, in chain order.
async fn plan(db: &Db) -> Result<Plan, BenchError> {
    use campaigns::dsl as ca;
    let mut conn = mysql(db).await?;
    let rows: Vec<(String, String, String)> = ca::campaigns
        .select((ca::id, ca::event, ca::audience))
        .load(writes::mysql(&mut conn))
        .await
        .map_err(StoreError::from)?;
    let stock = conn.coupon_stock().await.map_err(StoreError::from)?;
    let mut plan = Plan::default();
    for (campaign, event, audience) in rows {
        let chain = stock
            .iter()
            .filter(|c| c.campaign_id == campaign)
            .map(|c| Coupon {
                id: c.id.clone(),
                face_value_cents: c.face_value_cents,
                channel: c.channel.clone(),
                remaining: c.remaining,
            })
            .collect();
        plan.chains.insert((event, audience), (campaign, chain));
    }
    Ok(plan)
}

async fn mysql(db: &Db) -> Result<Conn, BenchError> {
    match db.get().await? {
        Conn::Sqlite(_) => Err(BenchError::Setup("the floor needs MariaDB".into())),
        conn => Ok(conn),
    }
}

/// One lane: batches until the queue is empty; returns the requests it finished.
async fn drain_lane(
    db: &Db,
    plan: &Mutex<Plan>,
    batch: i64,
    lane: usize,
) -> Result<usize, BenchError> {
    let mut finished = 0;
    let mut conn = mysql(db).await?;
    for round in 0i64.. {
        // Unique per batch, as the daemon's random claim and hold tokens are.
        let token = ((lane as i64) << 40) | round;
        let written = conn
            .transaction(async |conn| writes::write_batch(conn, plan, batch, token).await)
            .await
            .map_err(StoreError::from)?;
        let Some((claimed, webhook_ids)) = written else {
            break;
        };
        finished += claimed;
        writes::mark_delivered(writes::mysql(&mut conn), &webhook_ids, token)
            .await
            .map_err(StoreError::from)?;
    }
    Ok(finished)
}

/// What the shipped rules decide for the steady catalog, without them: the user type
/// from the grants seen, the campaign of (event, user type), its first coupon in stock.
fn decide(plan: &Mutex<Plan>, claimed: Vec<(i64, String, String, String)>) -> Vec<Decided> {
    let mut plan = plan.lock().unwrap_or_else(|p| p.into_inner());
    let Plan { chains, granted } = &mut *plan;
    claimed
        .into_iter()
        .map(|(id, key, user_id, event)| {
            let pair = (user_id, event);
            let user_type = if granted.contains(&pair) {
                "returning"
            } else {
                "first_time"
            };
            let (user_id, event) = pair;
            let chain = chains.get_mut(&(event.clone(), user_type.to_owned()));
            let (outcome, grant) = match chain {
                None => ("no_campaign", None),
                Some((campaign, coupons)) => match coupons.iter_mut().find(|c| c.remaining > 0) {
                    None => ("out_of_stock", None),
                    Some(c) => {
                        c.remaining -= 1;
                        granted.insert((user_id.clone(), event.clone()));
                        let grant = Grant {
                            campaign: campaign.clone(),
                            coupon: c.id.clone(),
                            face_value_cents: c.face_value_cents,
                            channel: c.channel.clone(),
                        };
                        ("granted", Some(grant))
                    }
                },
            };
            Decided {
                id,
                key,
                user_id,
                event,
                user_type,
                outcome,
                grant,
            }
        })
        .collect()
}

/// Every request finished, every grant delivered, no coupon below zero.
async fn check(db: &Db, n: usize, finished: usize) -> Result<(), BenchError> {
    let ledger = drain::read_ledger(db).await?;
    let count = |status: &str| -> i64 {
        ledger
            .outcomes
            .iter()
            .filter(|(s, _, _)| s == status)
            .map(|(_, _, k)| k)
            .sum()
    };
    let granted: i64 = ledger.per_coupon.iter().map(|(_, _, k)| k).sum();
    let oversold = ledger.stock.iter().any(|c| c.remaining < 0);
    if finished != n || count("done") != n as i64 || ledger.delivered != granted || oversold {
        return Err(BenchError::Check {
            scenario: "floor".into(),
            message: format!(
                "{finished} of {n} requests finished ({:?}), {granted} grants, {} delivered, stock {:?}",
                ledger.outcomes, ledger.delivered, ledger.stock
            ),
        });
    }
    println!("  checked: {n} requests done ({granted} granted), {granted} deliveries delivered, no coupon below zero");
    Ok(())
}

fn report(
    bench: &mut Bench,
    n: usize,
    wall: Duration,
    client_cpu: Duration,
    db_cpu: Option<Duration>,
    server: &[(String, i64)],
) {
    let rate = n as f64 / wall.as_secs_f64();
    let per_k = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / n as f64;
    let figures = &mut bench.figures;
    figures.note(
        "floor",
        "requests/s (first claim to last delivered)",
        rate,
        "requests/s",
    );
    figures.note("floor", "wall time", wall.as_secs_f64(), "s");
    figures.note(
        "floor",
        "CPU s per 1,000 requests (bench: the floor's lanes)",
        per_k(client_cpu),
        "s",
    );
    if let Some(cpu) = db_cpu {
        figures.note(
            "floor",
            "CPU s per 1,000 requests (mariadbd, whole server)",
            per_k(cpu),
            "s",
        );
    }
    drain::report_server(figures, "floor", server, n);
    match bench.steady_rate {
        Some(steady) => figures.note(
            "floor",
            "steady requests/s / floor requests/s",
            steady / rate,
            "x",
        ),
        None => println!("  (run `steady` in the same invocation for the ratio)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(id: &str, remaining: i64) -> Coupon {
        Coupon {
            id: id.into(),
            face_value_cents: 500,
            channel: "wallet".into(),
            remaining,
        }
    }

    fn request(id: i64, user: &str, event: &str) -> (i64, String, String, String) {
        (id, format!("k-{id}"), user.into(), event.into())
    }

    #[test]
    fn decisions_follow_the_shipped_rules_on_the_steady_catalog() {
        let mut plan = Plan::default();
        let chain = |c: &str, coupons| (c.to_owned(), coupons);
        let key = |e: &str, a: &str| (e.to_owned(), a.to_owned());
        plan.chains.insert(
            key("app_open", "first_time"),
            chain("newcomer", vec![coupon("NEW10", 1), coupon("NEW3", 5)]),
        );
        plan.chains.insert(
            key("app_open", "returning"),
            chain("loyalty", vec![coupon("BACK2", 5)]),
        );
        plan.chains.insert(
            key("checkout", "first_time"),
            chain("checkout", vec![coupon("CHK2", 5)]),
        );
        let plan = Mutex::new(plan);
        let first = decide(
            &plan,
            vec![
                request(1, "a", "app_open"),
                request(2, "b", "app_open"),
                request(3, "c", "checkout"),
            ],
        );
        let coupons: Vec<Option<&str>> = first
            .iter()
            .map(|d| d.grant.as_ref().map(|g| g.coupon.as_str()))
            .collect();
        assert_eq!(coupons, [Some("NEW10"), Some("NEW3"), Some("CHK2")]);
        let back = decide(
            &plan,
            vec![request(4, "a", "app_open"), request(5, "c", "checkout")],
        );
        assert_eq!(back[0].user_type, "returning");
        assert_eq!(
            back[0].grant.as_ref().map(|g| g.campaign.as_str()),
            Some("loyalty")
        );
        assert_eq!(
            (back[1].user_type, back[1].outcome),
            ("returning", "no_campaign")
        );
        assert!(back[1].grant.is_none());
    }
}
