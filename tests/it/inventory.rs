//! Scheduled inventory control: rotation at the watermark (never earlier) and the
//! run-out forecast as an alert, exhausted chains, windows, budgets, one job per
//! scheduled time across daemons, lease recovery with fencing, and the stock commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use couponsd::runtime::Daemon;
use couponsd::schedule::{inventory, parse_cron, run_once_per_tick};
use couponsd::store::StoreError;
use croner::Cron;

use crate::on_both_backends;
use crate::support::*;

const ALERTS: &str = "alerts:\n  channel: ops\n";

fn chain(new10_stock: i64, new10_low: i64) -> String {
    format!(
        r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: NEW10, face_value: "10.00", stock: {new10_stock}, low_stock: {new10_low}, channel: wallet }}
      - {{ id: NEW8, face_value: "8.00", stock: 100000, channel: wallet }}"#
    )
}

async fn wave(ctx: &Daemon, prefix: &str, n: usize) {
    for i in 0..n {
        insert(
            ctx,
            &format!("{prefix}-{i}"),
            &format!("{prefix}-user-{i}"),
            "app_open",
            None,
        )
        .await
        .unwrap();
    }
    drain(ctx).await;
}

async fn remaining_of(ctx: &Daemon, coupon: &str) -> i64 {
    let all = store(ctx, async |c| c.coupon_stock().await).await;
    all.iter().find(|c| c.id == coupon).unwrap().remaining
}

fn alerts_of(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver
        .seen()
        .into_iter()
        .filter(|s| s.path == "/webhooks/ops")
        .map(|s| {
            assert!(s.verified, "alerts are signed like every webhook");
            serde_json::from_str::<serde_json::Value>(&s.body).unwrap()
        })
        .filter(|b| b["type"] == kind)
        .collect()
}

async fn a_hot_coupon_rotates_at_its_watermark_and_its_replacement_serves(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &chain(100, 20),
        ALERTS,
    ))
    .await;
    wave(&ctx, "w1", 85).await;
    let report = inventory::check(&ctx.schedule()).await.unwrap();
    assert_eq!(report.rotations.len(), 1);
    let r = &report.rotations[0];
    assert_eq!(
        (
            r.from_coupon.as_str(),
            r.to_coupon.as_deref(),
            r.reason.as_str(),
            r.remaining
        ),
        ("NEW10", Some("NEW8"), "low_stock", 15)
    );
    wave(&ctx, "w2", 10).await;
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(
        per_coupon["NEW10"], 85,
        "the retired coupon is no longer chosen"
    );
    assert_eq!(
        per_coupon["NEW8"], 10,
        "its replacement serves the next wave"
    );
    let audit = counts(&ctx, "reason", "coupon_rotations").await;
    assert_eq!(audit.get("low_stock"), Some(&1));
    let rotated = alerts_of(&receiver, "coupon.rotated");
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["data"]["from"], "NEW10");
    assert_eq!(rotated[0]["data"]["to"], "NEW8");
    assert_eq!(rotated[0]["data"]["remaining"], 15);
    assert!(
        inventory::check(&ctx.schedule())
            .await
            .unwrap()
            .rotations
            .is_empty(),
        "rotates once"
    );
}
on_both_backends!(
    a_hot_coupon_rotates_at_its_watermark_and_its_replacement_serves,
    a_hot_coupon_rotates_at_its_watermark_and_its_replacement_serves
);

/// Issue 11's HOT10 (here NEW10): stock 1,000, `low_stock: 200`, a wave of 200-request batches
/// with a check after each (at the shipped `batch_size` and check schedule). Its rate
/// would run it out long before the next check, yet it is retired at its watermark and
/// not before; ops hear of the rate once, and again after a restock.
async fn a_burst_is_forecast_but_rotates_only_at_the_watermark(db: TestDb) {
    let receiver = Receiver::ok().await;
    let mut cfg = config(&db, &receiver, &shipped_rules(), &chain(1000, 200), ALERTS);
    cfg.worker.batch_size = 200;
    assert_eq!(cfg.schedule.inventory_check, "*/10 * * * * *", "shipped");
    let ctx = context(cfg).await;
    let check = async |wave_name: &str, left: i64| {
        wave(&ctx, wave_name, 200).await;
        let report = inventory::check(&ctx.schedule()).await.unwrap();
        assert_eq!(remaining_of(&ctx, "NEW10").await, left);
        report
    };
    let mut running_low = Vec::new();
    for (n, left) in [(1, 800), (2, 600)] {
        let report = check(&format!("w{n}"), left).await;
        assert!(report.rotations.is_empty(), "{left} left: {report:?}");
        running_low.extend(report.running_low);
    }
    assert!(inventory::check(&ctx.schedule())
        .await
        .unwrap()
        .running_low
        .is_empty());
    assert_eq!(running_low, ["NEW10"], "announced once, not at every check");
    couponsd::ops::stock::add(&installation(&ctx), "NEW10", 200)
        .await
        .unwrap();
    for (n, left) in [(3, 600), (4, 400)] {
        let report = check(&format!("w{n}"), left).await;
        assert!(report.rotations.is_empty(), "{left} left: {report:?}");
        running_low.extend(report.running_low);
    }
    assert_eq!(running_low, ["NEW10", "NEW10"], "a restock re-arms it");
    let report = check("w5", 200).await;
    assert_eq!(report.rotations.len(), 1);
    let r = &report.rotations[0];
    assert_eq!(
        (r.from_coupon.as_str(), r.reason.as_str(), r.remaining),
        ("NEW10", "low_stock", 200),
        "retired at its watermark"
    );
    drain(&ctx).await;
    let alerts = alerts_of(&receiver, "coupon.running_low");
    assert_eq!(alerts.len(), 2);
    let remaining: Vec<_> = alerts
        .iter()
        .map(|a| a["data"]["remaining"].clone())
        .collect();
    assert_eq!(
        remaining,
        [800, 600],
        "at the first check, and after the restock"
    );
    for alert in &alerts {
        let data = &alert["data"];
        assert_eq!(
            (data["campaign"].as_str(), data["coupon"].as_str()),
            (Some("newcomer"), Some("NEW10"))
        );
        let rate = data["rate_per_min"].as_f64().unwrap();
        let run_out =
            chrono::DateTime::parse_from_rfc3339(data["run_out_at"].as_str().unwrap()).unwrap();
        let sent =
            chrono::DateTime::parse_from_rfc3339(alert["timestamp"].as_str().unwrap()).unwrap();
        let minutes = data["remaining"].as_f64().unwrap() / rate;
        let expected = sent + TimeDelta::milliseconds((minutes * 60_000.0) as i64);
        assert!(
            rate > 0.0 && (run_out - expected).num_seconds().abs() <= 2,
            "{alert}"
        );
    }
}
on_both_backends!(
    a_burst_is_forecast_but_rotates_only_at_the_watermark,
    a_burst_is_forecast_but_rotates_only_at_the_watermark
);

async fn a_retired_reserve_is_granted_only_when_nothing_else_is_left(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: OLD, face_value: "10.00", stock: 10, low_stock: 8, channel: wallet }
      - { id: NEW, face_value: "8.00", stock: 3, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, ALERTS)).await;
    wave(&ctx, "a", 2).await;
    assert_eq!(
        inventory::check(&ctx.schedule())
            .await
            .unwrap()
            .rotations
            .len(),
        1
    );
    wave(&ctx, "b", 6).await;
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(per_coupon["NEW"], 3);
    assert_eq!(
        per_coupon["OLD"],
        2 + 3,
        "the reserve serves once the replacement ran out: nobody is refused"
    );
}
on_both_backends!(
    a_retired_reserve_is_granted_only_when_nothing_else_is_left,
    a_retired_reserve_is_granted_only_when_nothing_else_is_left
);

async fn an_exhausted_chain_alerts_once(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: ONLY, face_value: "10.00", stock: 2, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, ALERTS)).await;
    wave(&ctx, "x", 5).await;
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!((outcomes["granted"], outcomes["out_of_stock"]), (2, 3));
    for _ in 0..3 {
        inventory::check(&ctx.schedule()).await.unwrap();
    }
    drain(&ctx).await;
    assert_eq!(
        alerts_of(&receiver, "campaign.exhausted").len(),
        1,
        "once, not every tick"
    );
    couponsd::ops::stock::add(&installation(&ctx), "ONLY", 5)
        .await
        .unwrap();
    wave(&ctx, "y", 6).await;
    inventory::check(&ctx.schedule()).await.unwrap();
    drain(&ctx).await;
    assert_eq!(
        alerts_of(&receiver, "campaign.exhausted").len(),
        2,
        "a restock re-arms the alert"
    );
}
on_both_backends!(
    an_exhausted_chain_alerts_once,
    an_exhausted_chain_alerts_once
);

async fn outside_its_window_a_campaign_grants_nothing(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    starts_at: 2020-01-01T00:00:00Z
    ends_at: 2020-12-31T23:59:59Z
    coupons:
      - { id: OLD10, face_value: "10.00", stock: 10, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, "")).await;
    wave(&ctx, "late", 2).await;
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!(outcomes.get("not_eligible"), Some(&2));
    let detail = counts(&ctx, "detail", "trigger_requests").await;
    assert!(
        detail
            .keys()
            .all(|d| d.contains("campaign newcomer ended at 2020-12-31")),
        "{detail:?}"
    );
}
on_both_backends!(
    outside_its_window_a_campaign_grants_nothing,
    outside_its_window_a_campaign_grants_nothing
);

async fn a_budget_stops_granting_and_alerts_once(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    budget: "25.00"
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, ALERTS)).await;
    wave(&ctx, "b", 5).await;
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!((outcomes["granted"], outcomes["not_eligible"]), (2, 3));
    wave(&ctx, "c", 2).await;
    let alerts = alerts_of(&receiver, "campaign.budget_reached");
    assert_eq!(alerts.len(), 1, "alerted once");
    assert_eq!(alerts[0]["data"]["budget"], "25.00");
}
on_both_backends!(
    a_budget_stops_granting_and_alerts_once,
    a_budget_stops_granting_and_alerts_once
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_is_never_exceeded_under_concurrency_on_mariadb() {
    let Some(db) = fresh_db(Backend::Mysql).await else {
        return;
    };
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    budget: "1000.00"
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100000, channel: wallet }"#;
    let mut cfg = config(&db, &receiver, &shipped_rules(), campaigns, "");
    cfg.worker.concurrency = 4;
    cfg.worker.batch_size = 20;
    let (a, b) = (context(cfg.clone()).await, context(cfg).await);
    for i in 0..400 {
        insert(&a, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    tokio::join!(drain(&a), drain(&b));
    let granted = counts(&a, "coupon_id", "grants").await;
    assert_eq!(
        granted["NEW10"], 100,
        "exactly the budget's worth: 100 × 10.00 = 1000.00"
    );
    let value = counts(&a, "CAST(granted_cents AS CHAR)", "campaigns").await;
    assert_eq!(value.get("100000"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_run_each_scheduled_job_once_per_tick() {
    for backend in [Backend::Mysql, Backend::Sqlite] {
        let Some(db) = fresh_db(backend).await else {
            continue;
        };
        let receiver = Receiver::ok().await;
        let mut cfg = config(&db, &receiver, &shipped_rules(), &chain(10, 0), "");
        cfg.worker.lease = Duration::from_secs(1);
        let daemons = [
            context(cfg.clone()).await,
            context(cfg.clone()).await,
            context(cfg).await,
        ];
        let runs = Arc::new(AtomicUsize::new(0));
        let every_second = &parse_cron("* * * * * *").unwrap();
        // Cron ticks are whole seconds; daemons fire a few milliseconds after one.
        let base = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
        for tick in 0..3 {
            // Every daemon fires within a few milliseconds of the others.
            let fired = base + TimeDelta::seconds(tick) + TimeDelta::milliseconds(tick * 3);
            let ran = futures_util::future::join_all(daemons.iter().enumerate().map(|(i, ctx)| {
                let runs = runs.clone();
                let fired = fired + TimeDelta::milliseconds(i as i64 * 40);
                async move {
                    run_once_per_tick(
                        &ctx.schedule(),
                        "test_job",
                        every_second,
                        fired,
                        || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok::<usize, StoreError>(0)
                        },
                    )
                    .await
                }
            }))
            .await;
            assert_eq!(
                ran.iter().filter(|r| **r).count(),
                1,
                "{backend:?}: one daemon per tick"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "{backend:?}");
    }
}

async fn a_late_or_early_firing_runs_the_job_once_per_scheduled_time(db: TestDb) {
    let receiver = Receiver::ok().await;
    let cfg = config(&db, &receiver, &shipped_rules(), &chain(10, 0), "");
    let (a, b) = (context(cfg.clone()).await, context(cfg).await);
    let every_10s = parse_cron("*/10 * * * * *").unwrap();
    let base = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let ms = TimeDelta::milliseconds;
    let runs = AtomicUsize::new(0);
    // (daemon a fires, daemon b fires) for three scheduled times 10 s apart: late by
    // 0.1 s and 1.4 s, early by 0.05 s and late by 0.6 s, late by 1.4 s and 0.6 s.
    for (n, (late_a, late_b)) in [(100, 1400), (-50, 600), (1400, 600)]
        .into_iter()
        .enumerate()
    {
        let tick = base + TimeDelta::seconds(10 * n as i64);
        let mut ran = 0;
        for (ctx, late) in [(&a, late_a), (&b, late_b)] {
            let job = || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<usize, StoreError>(0)
            };
            ran += run_once_per_tick(
                &ctx.schedule(),
                "test_job",
                &every_10s,
                tick + ms(late),
                job,
            )
            .await as usize;
        }
        assert_eq!(ran, 1, "scheduled time {tick}: one run, not one per firing");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}
on_both_backends!(
    a_late_or_early_firing_runs_the_job_once_per_scheduled_time,
    a_late_or_early_firing_runs_the_job_once_per_scheduled_time
);

/// Fires a job that does nothing; true when this daemon ran it.
async fn idle_run(ctx: &Daemon, job: &str, schedule: &Cron, fired_at: DateTime<Utc>) -> bool {
    run_once_per_tick(&ctx.schedule(), job, schedule, fired_at, || async {
        Ok::<usize, StoreError>(0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_still_running_skips_the_next_tick_and_a_dead_holder_gives_it_up() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::ok().await;
    let mut cfg = config(&db, &receiver, &shipped_rules(), &chain(10, 0), "");
    cfg.worker.lease = Duration::from_secs(1);
    let (a, b) = (context(cfg.clone()).await, context(cfg).await);
    let every_second = parse_cron("* * * * * *").unwrap();
    let t0 = Utc::now();
    let slow = tokio::spawn({
        let (a, every_second) = (a.clone(), every_second.clone());
        async move {
            run_once_per_tick(&a.schedule(), "slow", &every_second, t0, || async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                Ok::<usize, StoreError>(0)
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next_tick = idle_run(&b, "slow", &every_second, t0 + TimeDelta::seconds(1)).await;
    assert!(
        !next_tick,
        "the job still runs: the next tick is skipped, not run twice"
    );
    assert!(slow.await.unwrap());
    // A holder that dies never releases; after one lease the job is free again.
    let now = couponsd::store::now();
    let mut conn = a.db.get().await.unwrap();
    assert!(conn
        .acquire_job("dying", "ghost", now, now, now + TimeDelta::seconds(1))
        .await
        .unwrap());
    drop(conn); // SQLite's pool has one connection: give it back.
    let too_soon = idle_run(
        &b,
        "dying",
        &every_second,
        Utc::now() + TimeDelta::seconds(2),
    )
    .await;
    assert!(!too_soon, "the lease still holds");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = idle_run(
        &b,
        "dying",
        &every_second,
        Utc::now() + TimeDelta::seconds(3),
    )
    .await;
    assert!(after, "given up within one lease");
}

async fn a_recovered_claim_is_fenced_and_never_processed_twice(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(&db, &receiver, &shipped_rules(), &chain(10, 0), "")).await;
    for i in 0..3 {
        insert(&ctx, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    // A daemon claims and stalls (or dies) before its grant transaction.
    let stale_token = 4242;
    let claimed = store(&ctx, async |c| {
        c.claim_batch(10, stale_token, couponsd::store::now()).await
    })
    .await;
    assert_eq!(claimed.len(), 3);
    let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    // Lease recovery puts the claims back; another daemon processes them.
    let future = couponsd::store::now() + TimeDelta::seconds(1);
    let reclaimed = store(&ctx, async |c| c.reclaim_expired(future, 5).await).await;
    assert_eq!(reclaimed.requeued, 3);
    drain(&ctx).await;
    // The stalled daemon wakes up: its claim no longer fences anything.
    let still_ours = store(&ctx, async |c| c.lock_claimed(&ids, stale_token).await).await;
    assert!(
        still_ours.is_empty(),
        "the fence refuses the recovered claim"
    );
    assert_eq!(
        counts(&ctx, "request_id", "grants").await.len(),
        3,
        "each granted once"
    );
    let attempts = counts(&ctx, "CAST(attempts AS CHAR)", "trigger_requests").await;
    assert_eq!(
        attempts.get("1"),
        Some(&3),
        "the recovery raised the attempt count"
    );
}
on_both_backends!(
    a_recovered_claim_is_fenced_and_never_processed_twice,
    a_recovered_claim_is_fenced_and_never_processed_twice
);

async fn a_request_recovered_too_often_fails_with_the_reason(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(&db, &receiver, &shipped_rules(), &chain(10, 0), "")).await;
    insert(&ctx, "cursed", "u1", "app_open", None)
        .await
        .unwrap();
    for round in 0..5 {
        let claimed = store(&ctx, async |c| {
            c.claim_batch(10, 100 + round, couponsd::store::now()).await
        })
        .await;
        assert_eq!(claimed.len(), 1, "round {round}");
        let future = couponsd::store::now() + TimeDelta::seconds(1);
        store(&ctx, async |c| c.reclaim_expired(future, 5).await).await;
    }
    let status = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(status.get("failed"), Some(&1));
    let error = counts(&ctx, "error", "trigger_requests").await;
    assert!(
        error
            .keys()
            .next()
            .unwrap()
            .contains("lease expired 5 times"),
        "{error:?}"
    );
}
on_both_backends!(
    a_request_recovered_too_often_fails_with_the_reason,
    a_request_recovered_too_often_fails_with_the_reason
);

async fn stock_show_add_and_activate(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &chain(100, 20),
        "",
    ))
    .await;
    wave(&ctx, "s", 85).await;
    inventory::check(&ctx.schedule()).await.unwrap();
    let table = couponsd::ops::stock::show(&installation(&ctx))
        .await
        .unwrap();
    let new10 = table
        .lines()
        .find(|l| l.contains(" NEW10 "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        &new10[..6],
        &["newcomer", "NEW10", "retired", "100", "85", "15"],
        "{table}"
    );
    assert!(
        table.contains("RATE/MIN")
            && table.contains("PREDICTED RUN-OUT")
            && table.starts_with("rules version ")
    );
    let added = couponsd::ops::stock::add(&installation(&ctx), "NEW10", 50)
        .await
        .unwrap();
    let row = added
        .lines()
        .find(|l| l.contains(" NEW10 "))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        &row[2..6],
        &["retired", "150", "85", "65"],
        "a restock never brings a retired coupon back"
    );
    assert!(couponsd::ops::stock::add(&installation(&ctx), "NOPE", 5)
        .await
        .is_err());
    let back = couponsd::ops::stock::activate(&installation(&ctx), "NEW10")
        .await
        .unwrap();
    assert!(back
        .lines()
        .any(|l| l.contains("NEW10") && l.contains("active")));
    wave(&ctx, "t", 1).await;
    assert_eq!(
        counts(&ctx, "coupon_id", "grants").await["NEW10"],
        86,
        "only the explicit command brings it back"
    );
}
on_both_backends!(stock_show_add_and_activate, stock_show_add_and_activate);

async fn reconciliation_reports_drift_between_stock_and_the_ledger(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &chain(100, 0),
        ALERTS,
    ))
    .await;
    wave(&ctx, "r", 5).await;
    assert!(
        couponsd::schedule::reconcile::run(&ctx.schedule())
            .await
            .unwrap()
            .is_empty(),
        "agrees after normal work"
    );
    // Someone edits the counters by hand: the daily job notices.
    let tamper = diesel::sql_query("UPDATE coupons SET granted = granted + 2 WHERE id = 'NEW10'");
    store(&ctx, async |c| c.execute(tamper).await).await;
    let drift = couponsd::schedule::reconcile::run(&ctx.schedule())
        .await
        .unwrap();
    assert_eq!(drift.len(), 1);
    assert_eq!((drift[0].granted, drift[0].ledger_granted), (7, 5));
    drain(&ctx).await;
    let alerts = alerts_of(&receiver, "inventory.drift");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["data"]["coupon"], "NEW10");
}
on_both_backends!(
    reconciliation_reports_drift_between_stock_and_the_ledger,
    reconciliation_reports_drift_between_stock_and_the_ledger
);

async fn a_budget_set_later_counts_what_was_granted_before(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = |budget: &str| {
        format!(
            r#"  - id: newcomer
    event: app_open
    audience: first_time
    {budget}
    coupons:
      - {{ id: NEW10, face_value: "10.00", stock: 100, channel: wallet }}"#
        )
    };
    let ctx = context(config(&db, &receiver, &shipped_rules(), &campaigns(""), "")).await;
    wave(&ctx, "before", 3).await;
    let with_budget = config(
        &db,
        &receiver,
        &shipped_rules(),
        &campaigns("budget: \"45.00\""),
        "",
    );
    couponsd::runtime::apply_catalog(&ctx.db, &with_budget)
        .await
        .unwrap();
    let ctx = context(with_budget).await;
    wave(&ctx, "after", 3).await;
    let granted = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(
        granted["NEW10"], 4,
        "30.00 granted before the budget; one more 10.00 fits in 45.00"
    );
}
on_both_backends!(
    a_budget_set_later_counts_what_was_granted_before,
    a_budget_set_later_counts_what_was_granted_before
);
