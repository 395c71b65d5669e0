//! Periodic limits and the rules' history: a rolling `per_user_limit_period`, revoked
//! grants that no longer count, `daily_budget` counted by the day of the campaign's
//! time zone (across its midnight, and under several daemons), and a rule that reads
//! `history.redeemed_for_event`.

use chrono::{DateTime, TimeDelta, Utc};
use couponsd::authoring::simulate::{self, SimulateArgs};
use couponsd::domain::lifecycle::day_in;
use couponsd::domain::{RequestId, RequestKey, TriggerRequest, UserId};
use couponsd::pipeline::decide::{decide_one, Books, DayBooks, Histories, Refusal, Verdict};
use couponsd::runtime::Daemon;
use diesel::sql_types::{Nullable, Text};

use crate::on_both_backends;
use crate::support::*;

/// A request's outcome and detail, by key.
#[derive(Debug, diesel::QueryableByName)]
struct Finished {
    #[diesel(sql_type = Nullable<Text>)]
    outcome: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    detail: Option<String>,
}

async fn finished(ctx: &Daemon, key: &str) -> (String, String) {
    let sql = format!("SELECT outcome, detail FROM trigger_requests WHERE request_key = '{key}'");
    let row = query_rows::<Finished>(ctx, &sql).await.pop().unwrap();
    (
        row.outcome.unwrap_or_default(),
        row.detail.unwrap_or_default(),
    )
}

/// Queues one request of `user` per key, then drains the queue.
async fn requests(ctx: &Daemon, user: &str, keys: &[&str]) {
    for key in keys {
        insert(ctx, key, user, "app_open", None).await.unwrap();
    }
    drain(ctx).await;
}

/// What `couponsd simulate` says a request of `user` would come to now: its outcome
/// and detail.
async fn simulated(ctx: &Daemon, user: &str) -> (String, String) {
    let args = SimulateArgs {
        user: user.to_owned(),
        event: "app_open".to_owned(),
        attrs: None,
        json: false,
    };
    let request = simulate::request(&args).unwrap();
    let rules = ctx.rules.current();
    let simulation = simulate::simulate(&ctx.db, &ctx.config, &rules, request)
        .await
        .unwrap();
    (simulation.outcome, simulation.detail.unwrap_or_default())
}

/// The outcomes of two requests of one user drained together, the granted one first;
/// panics unless exactly one was granted.
async fn one_granted(ctx: &Daemon, (a, b): (&str, &str)) -> ((String, String), (String, String)) {
    let (a, b) = (finished(ctx, a).await, finished(ctx, b).await);
    match (a.0.as_str(), b.0.as_str()) {
        ("granted", other) if other != "granted" => (a, b),
        (other, "granted") if other != "granted" => (b, a),
        _ => panic!("exactly one of the two is granted: {a:?} {b:?}"),
    }
}

/// A time as both backends store and compare it.
fn sql_time(at: DateTime<Utc>) -> String {
    at.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

fn database_now() -> DateTime<Utc> {
    couponsd::store::now().and_utc()
}

const ROLLING: &str = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 1000, channel: wallet }
  - id: loyalty
    event: app_open
    audience: returning
    per_user_limit: 1
    per_user_limit_period: 7d
    coupons:
      - { id: BACK5, face_value: "5.00", stock: 1000, channel: wallet }"#;

async fn a_rolling_limit_grants_again_once_its_period_has_passed(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(&db, &receiver, &shipped_rules(), ROLLING, "")).await;
    requests(&ctx, "u", &["r1"]).await;
    // Two requests drained together: whichever is decided second (in one batch, or in
    // two batches of concurrent workers that claimed one each) sees the first's grant.
    requests(&ctx, "u", &["r2", "r3"]).await;
    assert_eq!(finished(&ctx, "r1").await.0, "granted");
    let (granted, refused) = one_granted(&ctx, ("r2", "r3")).await;
    assert_eq!(refused.0, "limit_reached", "{granted:?} {refused:?}");
    assert_eq!(
        refused.1,
        "user has 1 grant(s) in campaign loyalty within the last 7days, the limit is 1"
    );
    let loyalty_granted = async |days_ago: i64| {
        let at = sql_time(database_now() - TimeDelta::days(days_ago));
        let sql = format!("UPDATE grants SET granted_at = '{at}' WHERE campaign_id = 'loyalty'");
        assert_eq!(execute(&ctx, &sql).await, 1);
    };
    loyalty_granted(6).await;
    requests(&ctx, "u", &["r4"]).await;
    assert_eq!(
        finished(&ctx, "r4").await.0,
        "limit_reached",
        "6 days ago is within 7d"
    );
    assert_eq!(simulated(&ctx, "u").await, finished(&ctx, "r4").await);

    loyalty_granted(8).await;
    requests(&ctx, "u", &["r5", "r6"]).await;
    let (_, refused) = one_granted(&ctx, ("r5", "r6")).await;
    assert_eq!(
        refused.0, "limit_reached",
        "the period has passed: one, not two"
    );
    assert_eq!(simulated(&ctx, "u").await.0, "limit_reached");
    let per_campaign = counts(&ctx, "campaign_id", "grants").await;
    assert_eq!((per_campaign["newcomer"], per_campaign["loyalty"]), (1, 2));
}
on_both_backends!(
    a_rolling_limit_grants_again_once_its_period_has_passed,
    a_rolling_limit_grants_again_once_its_period_has_passed
);

async fn a_revoked_grant_no_longer_counts(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(&db, &receiver, &shipped_rules(), ROLLING, "")).await;
    requests(&ctx, "u", &["r1"]).await;
    assert_eq!(finished(&ctx, "r1").await.0, "granted");
    execute(&ctx, "UPDATE grants SET state = 'revoked'").await;
    // As if never granted: first-time again, and newcomer's limit of 1 is free.
    requests(&ctx, "u", &["r2"]).await;
    assert_eq!(finished(&ctx, "r2").await.0, "granted");
    requests(&ctx, "u", &["r3", "r4"]).await;
    let (_, refused) = one_granted(&ctx, ("r3", "r4")).await;
    assert_eq!(refused.0, "limit_reached", "returning: loyalty, once");
    // Within a rolling period too.
    execute(
        &ctx,
        "UPDATE grants SET state = 'revoked' WHERE campaign_id = 'loyalty'",
    )
    .await;
    requests(&ctx, "u", &["r5"]).await;
    assert_eq!(finished(&ctx, "r5").await.0, "granted");
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!((per_coupon["NEW10"], per_coupon["BACK5"]), (2, 2));
}
on_both_backends!(
    a_revoked_grant_no_longer_counts,
    a_revoked_grant_no_longer_counts
);

async fn the_catalog_recount_of_a_budget_leaves_revoked_grants_out(db: TestDb) {
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    budget: "100.00"
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100, channel: wallet }"#;
    let ctx = context(config(&db, &receiver, &shipped_rules(), campaigns, "")).await;
    for user in ["a", "b", "c"] {
        requests(&ctx, user, &[&format!("k-{user}")]).await;
    }
    // A revocation gives the value back to the budget (as `grants revoke` does).
    execute(
        &ctx,
        "UPDATE grants SET state = 'revoked' WHERE user_id = 'b'",
    )
    .await;
    execute(
        &ctx,
        "UPDATE campaigns SET granted_cents = granted_cents - 1000",
    )
    .await;
    couponsd::runtime::apply_catalog(&ctx.db, &ctx.config)
        .await
        .unwrap();
    let value = counts(&ctx, "CAST(granted_cents AS CHAR)", "campaigns").await;
    assert_eq!(value.get("2000"), Some(&1), "{value:?}");
}
on_both_backends!(
    the_catalog_recount_of_a_budget_leaves_revoked_grants_out,
    the_catalog_recount_of_a_budget_leaves_revoked_grants_out
);

const DAILY: &str = r#"  - id: newcomer
    event: app_open
    audience: first_time
    daily_budget: "20.00"
    timezone: Asia/Shanghai
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100, channel: wallet }"#;

async fn a_daily_budget_fills_its_day_in_its_time_zone_and_opens_again_the_next(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(&db, &receiver, &shipped_rules(), DAILY, "")).await;
    let shanghai = chrono_tz::Asia::Shanghai;
    let before = day_in(shanghai, database_now());
    for user in ["a", "b", "c"] {
        insert(&ctx, &format!("d1-{user}"), user, "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    let today = day_in(shanghai, database_now());
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!((outcomes["granted"], outcomes["not_eligible"]), (2, 1));
    let (_, detail) = finished(&ctx, "d1-c").await;
    let refused_on = |day: &str| {
        format!("campaign newcomer has reached its daily budget 20.00 for {day} (Asia/Shanghai)")
    };
    assert!(
        detail == refused_on(&before) || detail == refused_on(&today),
        "{detail}"
    );
    let days = counts(&ctx, "day", "campaign_days WHERE granted_cents = 2000").await;
    assert!(
        days.contains_key(&today) || days.contains_key(&before),
        "{days:?}"
    );
    let (outcome, detail) = simulated(&ctx, "z").await;
    assert_eq!(outcome, "not_eligible");
    assert!(
        detail.contains("has reached its daily budget 20.00"),
        "{detail}"
    );

    // Midnight passes in Shanghai: what was granted is yesterday's.
    let yesterday = day_in(shanghai, database_now() - TimeDelta::days(1));
    execute(
        &ctx,
        &format!("UPDATE campaign_days SET day = '{yesterday}'"),
    )
    .await;
    for user in ["d", "e", "f"] {
        insert(&ctx, &format!("d2-{user}"), user, "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    let outcomes = counts(&ctx, "outcome", "trigger_requests").await;
    assert_eq!((outcomes["granted"], outcomes["not_eligible"]), (4, 2));
    let value = counts(&ctx, "day", "campaign_days WHERE granted_cents = 2000").await;
    assert_eq!(value.len(), 2, "two full days: {value:?}");
}
on_both_backends!(
    a_daily_budget_fills_its_day_in_its_time_zone_and_opens_again_the_next,
    a_daily_budget_fills_its_day_in_its_time_zone_and_opens_again_the_next
);

/// The day turns at midnight in the campaign's zone, not in UTC: decided at 23:59:59
/// and at 00:00:01 Shanghai time (15:59:59 and 16:00:01 UTC) with the 3rd's budget
/// spent.
#[tokio::test]
async fn a_daily_budget_day_turns_at_midnight_in_its_time_zone() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::ok().await;
    let config = config(&db, &receiver, &shipped_rules(), DAILY, "");
    let rules = couponsd::rules::Rules::load(&config.rules.dir, &config.rules.limits).unwrap();
    let decide_at = |at: &str, days: &mut DayBooks| {
        let now: DateTime<Utc> = at.parse().unwrap();
        let stock = couponsd::domain::chain::CouponStock {
            id: "NEW10".into(),
            campaign_id: "newcomer".into(),
            position: 0,
            face_value_cents: 1000,
            channel: "wallet".into(),
            stock: 100,
            granted: 0,
            remaining: 100,
            low_stock: 0,
            state: couponsd::domain::CouponState::Active,
        };
        let chain = couponsd::domain::chain::Chain::from_stock(vec![stock]);
        let mut books = Books {
            histories: &mut Histories::default(),
            chains: &mut [("newcomer".to_owned(), chain)].into(),
            budgets: &mut Default::default(),
            days,
        };
        let request = TriggerRequest {
            id: RequestId(1),
            key: RequestKey::parse("k").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            event: couponsd::domain::Event::parse("app_open").unwrap(),
            attributes: Default::default(),
            created_at: now,
        };
        decide_one(&rules, &config.campaigns, &mut books, request, now).verdict
    };
    let mut days: DayBooks = [(("newcomer".to_owned(), "2026-12-03".to_owned()), 2000)].into();
    match decide_at("2026-12-03T15:59:59Z", &mut days) {
        Verdict::Refused(Refusal::DailyBudgetReached { day, .. }) => assert_eq!(day, "2026-12-03"),
        other => panic!("refused on the 3rd in Shanghai, not {other:?}"),
    }
    assert!(matches!(
        decide_at("2026-12-03T16:00:01Z", &mut days),
        Verdict::Granted { .. }
    ));
    assert_eq!(
        days[&("newcomer".to_owned(), "2026-12-04".to_owned())],
        1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_budget_is_never_overspent_by_several_daemons_on_mariadb() {
    let Some(db) = fresh_db(Backend::Mysql).await else {
        return;
    };
    let receiver = Receiver::ok().await;
    let campaigns = r#"  - id: newcomer
    event: app_open
    audience: first_time
    daily_budget: "1000.00"
    timezone: America/New_York
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100000, channel: wallet }"#;
    let mut cfg = config(&db, &receiver, &shipped_rules(), campaigns, "");
    // The shipped defaults.
    cfg.worker.batch_size = 200;
    cfg.worker.concurrency = 4;
    let (a, b) = (context(cfg.clone()).await, context(cfg).await);
    for i in 0..1200 {
        insert(&a, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    tokio::join!(drain(&a), drain(&b));
    let granted = counts(&a, "coupon_id", "grants").await;
    assert_eq!(
        granted["NEW10"], 100,
        "exactly the day's worth: 100 x 10.00 = 1000.00"
    );
    let days = counts(&a, "CAST(granted_cents AS CHAR)", "campaign_days").await;
    assert_eq!(days.get("100000"), Some(&1), "{days:?}");
    let outcomes = counts(&a, "outcome", "trigger_requests").await;
    assert_eq!(outcomes["not_eligible"], 1100);
}

const REDEEMED_BEFORE: &str = r#"// returning = redeemed a coupon for this event within a year
if history.redeemed_for_event > 0 && days_since(history.last_redeemed_at) < 365 {
    "returning"
} else {
    "first_time"
}
"#;

async fn a_rule_sees_the_grants_a_user_redeemed(db: TestDb) {
    let rules = TempDir::new("redeemed-rules");
    std::fs::write(rules.0.join("user_type.rhai"), REDEEMED_BEFORE).unwrap();
    std::fs::copy(
        shipped_rules().join("select_coupon.rhai"),
        rules.0.join("select_coupon.rhai"),
    )
    .unwrap();
    let receiver = Receiver::ok().await;
    let campaigns = standard_campaigns(100);
    let ctx = context(config(&db, &receiver, &rules.0, &campaigns, "")).await;
    requests(&ctx, "u", &["r1", "r2"]).await;
    let (_, refused) = one_granted(&ctx, ("r1", "r2")).await;
    assert_eq!(
        refused.0, "limit_reached",
        "sent one, redeemed none: still first-time"
    );
    let at = sql_time(database_now() - TimeDelta::hours(2));
    execute(
        &ctx,
        &format!("UPDATE grants SET state = 'redeemed', redeemed_at = '{at}'"),
    )
    .await;
    requests(&ctx, "u", &["r3"]).await;
    assert_eq!(finished(&ctx, "r3").await.0, "granted");
    let per_coupon = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(
        per_coupon.get("BACK5"),
        Some(&1),
        "returning: {per_coupon:?}"
    );
}
on_both_backends!(
    a_rule_sees_the_grants_a_user_redeemed,
    a_rule_sees_the_grants_a_user_redeemed
);
