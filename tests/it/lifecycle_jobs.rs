//! The scheduled side of a grant's life: the `expire_grants` job expires granted grants
//! past their `expires_at` once, with a transition and a signed `coupon.expired`, and
//! reminds of an expiry once (`coupon.expiring`), however many daemons tick; it never
//! holds up a grant batch. The reconciliation catches a state changed by hand, and
//! `couponsd report` and the metrics show hand-counted figures.

use chrono::{Duration, Utc};
use couponsd::runtime::Daemon;
use couponsd::schedule::{self, lifecycle, reconcile};
use diesel::sql_types::{BigInt, Nullable, Text};

use crate::on_both_backends;
use crate::support::*;

/// `newcomer` (budget 100.00): NEW10 (10.00, 6 in stock, valid 30 days, reminded 24h
/// ahead), then NEW8 (8.00, valid 30 days, no reminder); `loyalty` without a budget.
fn campaigns() -> String {
    r#"  - id: newcomer
    event: app_open
    audience: first_time
    budget: "100.00"
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 6, channel: wallet, valid_for: 30d, remind_before: 24h }
      - { id: NEW8, face_value: "8.00", stock: 100, channel: wallet, valid_for: 30d }
  - id: loyalty
    event: app_open
    audience: returning
    coupons:
      - { id: BACK5, face_value: "5.00", stock: 100, channel: wallet }"#
        .to_owned()
}

const EXTRA: &str = "alerts:\n  channel: ops\n";

async fn daemon(db: &TestDb, receiver: &Receiver) -> Daemon {
    context(config(db, receiver, &shipped_rules(), &campaigns(), EXTRA)).await
}

/// [`campaigns`] without the budget and with NEW8 stocked for thousands of grants.
fn unbudgeted_campaigns() -> String {
    campaigns().replace("    budget: \"100.00\"\n", "").replace(
        "stock: 100, channel: wallet, valid_for",
        "stock: 5000, channel: wallet, valid_for",
    )
}

/// Grants `n` first visits (users u0, u1, …): NEW10 to the first six, then NEW8.
async fn grant_first_visits(ctx: &Daemon, n: usize) {
    let values: Vec<String> = (0..n)
        .map(|i| format!("('k{i}', 'u{i}', 'app_open')"))
        .collect();
    let sql = format!(
        "INSERT INTO trigger_requests (request_key, user_id, event) VALUES {}",
        values.join(", ")
    );
    execute(ctx, &sql).await;
    drain(ctx).await;
}

/// The grant ids, in id order.
async fn grant_ids(ctx: &Daemon) -> Vec<i64> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let rows: Vec<Id> = query_rows(ctx, "SELECT id FROM grants ORDER BY id").await;
    rows.into_iter().map(|r| r.id).collect()
}

fn listed(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time `from_now` away on the database's clock, as a SQL literal.
fn sql_time(from_now: Duration) -> String {
    (couponsd::store::now() + from_now)
        .format("'%Y-%m-%d %H:%M:%S'")
        .to_string()
}

async fn set(ctx: &Daemon, column_value: &str, ids: &[i64]) {
    let sql = format!(
        "UPDATE grants SET {column_value} WHERE id IN ({})",
        listed(ids)
    );
    assert_eq!(execute(ctx, &sql).await, ids.len());
}

/// The lifecycle events the receiver got, all verified by the reference library.
fn events_seen(receiver: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    receiver
        .seen()
        .iter()
        .filter_map(|s| {
            let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
            (body["type"] == kind).then(|| {
                assert!(s.verified, "signed as the reference library expects");
                assert_eq!(s.path, "/webhooks/wallet", "to the coupon's channel");
                body
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
struct TransitionRow {
    #[diesel(sql_type = BigInt)]
    grant_id: i64,
    #[diesel(sql_type = Text)]
    from_state: String,
    #[diesel(sql_type = Text)]
    to_state: String,
    #[diesel(sql_type = Nullable<Text>)]
    job: Option<String>,
}

async fn transitions(ctx: &Daemon) -> Vec<TransitionRow> {
    query_rows(
        ctx,
        "SELECT grant_id, from_state, to_state, job FROM grant_transitions ORDER BY grant_id",
    )
    .await
}

/// Of five grants whose validity ended, the two still granted expire (a redeemed and a
/// revoked one never do, nor one still valid); each gets one transition and one
/// `coupon.expired`, and a second run changes nothing.
async fn expiry_moves_only_granted_grants_past_their_expiry(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver).await;
    grant_first_visits(&ctx, 5).await;
    let ids = grant_ids(&ctx).await;
    set(
        &ctx,
        &format!("expires_at = {}", sql_time(-Duration::minutes(5))),
        &ids[..4],
    )
    .await;
    set(&ctx, "state = 'redeemed'", &ids[1..2]).await;
    set(&ctx, "state = 'revoked'", &ids[2..3]).await;

    let tick = lifecycle::run(&ctx.schedule()).await.unwrap();
    assert_eq!((tick.expired, tick.reminded), (2, 0));
    assert_eq!(lifecycle::run(&ctx.schedule()).await.unwrap().expired, 0);
    let states = counts(&ctx, "state", "grants").await;
    assert_eq!(states.get("expired"), Some(&2), "{states:?}");
    assert_eq!(states.get("granted"), Some(&1));
    let moved = |id| TransitionRow {
        grant_id: id,
        from_state: "granted".into(),
        to_state: "expired".into(),
        job: Some("expire_grants".into()),
    };
    assert_eq!(transitions(&ctx).await, [moved(ids[0]), moved(ids[3])]);

    drain(&ctx).await;
    let expired = events_seen(&receiver, "coupon.expired");
    let mut grants: Vec<i64> = expired
        .iter()
        .map(|e| e["data"]["grant_id"].as_i64().unwrap())
        .collect();
    grants.sort();
    assert_eq!(grants, [ids[0], ids[3]], "one event per expired grant");
    let data = &expired[0]["data"];
    assert_eq!(data["state"], "expired");
    assert_eq!(data["coupon"], "NEW10");
    assert_eq!(data["face_value"], "10.00");
    assert!(data["expires_at"].as_str().unwrap().ends_with('Z'));
}
on_both_backends!(
    expiry_moves_only_granted_grants_past_their_expiry,
    expiry_moves_only_granted_grants_past_their_expiry
);

/// One tick of the job on the daemon of `deps`, as its scheduler runs it; whether it
/// ran.
async fn tick(
    deps: &couponsd::schedule::Deps,
    schedule: &croner::Cron,
    fired_at: chrono::DateTime<Utc>,
) -> bool {
    let job = || async { lifecycle::run(deps).await.map(|t| t.reminded) };
    schedule::run_once_per_tick(deps, "expire_grants", schedule, fired_at, job).await
}

/// Two daemons, two ticks each, and two more runs without a lease: the grants of NEW10
/// expiring within its `remind_before` get one `coupon.expiring` each, never one of
/// NEW8 (no reminder) or one expiring later.
async fn a_reminder_is_sent_once_across_ticks_and_daemons(db: TestDb) {
    let receiver = Receiver::ok().await;
    let (a, b) = (daemon(&db, &receiver).await, daemon(&db, &receiver).await);
    grant_first_visits(&a, 8).await;
    let ids = grant_ids(&a).await;
    let soon = format!("expires_at = {}", sql_time(Duration::hours(2)));
    set(&a, &soon, &[ids[0], ids[1], ids[6]]).await;

    let every_second = schedule::parse_cron("* * * * * *").unwrap();
    let now = couponsd::store::now().and_utc();
    let (deps_a, deps_b) = (a.schedule(), b.schedule());
    for fired_at in [now, now + Duration::seconds(1)] {
        let (ran_a, ran_b) = tokio::join!(
            tick(&deps_a, &every_second, fired_at),
            tick(&deps_b, &every_second, fired_at)
        );
        assert!(ran_a ^ ran_b, "one daemon runs each tick");
    }
    let (again_a, again_b) = tokio::join!(lifecycle::run(&deps_a), lifecycle::run(&deps_b));
    assert_eq!(again_a.unwrap().reminded + again_b.unwrap().reminded, 0);

    drain(&a).await;
    let reminders = events_seen(&receiver, "coupon.expiring");
    let mut grants: Vec<i64> = reminders
        .iter()
        .map(|e| e["data"]["grant_id"].as_i64().unwrap())
        .collect();
    grants.sort();
    assert_eq!(grants, [ids[0], ids[1]], "once per grant of NEW10 due");
    assert_eq!(reminders[0]["data"]["state"], "granted");
    let reminded = counts(
        &a,
        "CASE WHEN reminded_at IS NULL THEN 'no' ELSE 'yes' END",
        "grants",
    )
    .await;
    assert_eq!(reminded.get("yes"), Some(&2), "{reminded:?}");
    assert!(
        transitions(&a).await.is_empty(),
        "a reminder changes no state"
    );
}
on_both_backends!(
    a_reminder_is_sent_once_across_ticks_and_daemons,
    a_reminder_is_sent_once_across_ticks_and_daemons
);

/// 1,200 grants past their expiry, more than two batches: two daemons expiring at once
/// expire each grant once, with one transition and one event each.
async fn two_daemons_expiring_at_once_expire_each_grant_once(db: TestDb) {
    let receiver = Receiver::ok().await;
    let mut cfg = config(
        &db,
        &receiver,
        &shipped_rules(),
        &unbudgeted_campaigns(),
        EXTRA,
    );
    cfg.worker.batch_size = 200;
    let (a, b) = (context(cfg.clone()).await, context(cfg).await);
    grant_first_visits(&a, 1200).await;
    let past = format!(
        "UPDATE grants SET expires_at = {}",
        sql_time(-Duration::hours(1))
    );
    assert_eq!(execute(&a, &past).await, 1200);

    let budget = std::time::Duration::from_secs(60);
    let (deps_a, deps_b) = (a.schedule(), b.schedule());
    let (by_a, by_b) = tokio::join!(
        lifecycle::expire(&deps_a, budget),
        lifecycle::expire(&deps_b, budget)
    );
    assert_eq!(by_a.unwrap() + by_b.unwrap(), 1200);
    assert_eq!(
        counts(&a, "state", "grants").await.get("expired"),
        Some(&1200)
    );
    let per_grant = counts(&a, "CAST(grant_id AS CHAR)", "grant_transitions").await;
    assert_eq!(per_grant.len(), 1200);
    assert!(
        per_grant.values().all(|n| *n == 1),
        "one transition per grant"
    );
    let events = counts(&a, "event_type", "deliveries").await;
    assert_eq!(events.get("coupon.expired"), Some(&1200), "{events:?}");
}
on_both_backends!(
    two_daemons_expiring_at_once_expire_each_grant_once,
    two_daemons_expiring_at_once_expire_each_grant_once
);

/// While an expiry transaction holds its grant rows locked, a grant batch runs to the
/// end, and a second expiry passes over the held rows instead of waiting. (MariaDB:
/// SQLite has one writer, so any writing transaction holds up every other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_never_blocks_a_grant_batch() {
    let Some(db) = fresh_db(Backend::Mysql).await else {
        return;
    };
    let receiver = Receiver::ok().await;
    let campaigns = unbudgeted_campaigns();
    let ctx = context(config(&db, &receiver, &shipped_rules(), &campaigns, EXTRA)).await;
    grant_first_visits(&ctx, 20).await;
    let past = format!(
        "UPDATE grants SET expires_at = {}",
        sql_time(-Duration::hours(1))
    );
    execute(&ctx, &past).await;

    let (locked, held) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = ctx.db.clone();
    let hold = tokio::spawn(async move {
        let mut conn = holder.get().await.unwrap();
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            let ids = conn
                .claim_expired_grants(couponsd::store::now(), 10)
                .await?;
            locked.send(ids.len()).unwrap();
            released.await.unwrap();
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(held.await.unwrap(), 10);

    let more: Vec<String> = (0..30)
        .map(|i| format!("('later{i}', 'later{i}', 'app_open')"))
        .collect();
    let sql = format!(
        "INSERT INTO trigger_requests (request_key, user_id, event) VALUES {}",
        more.join(", ")
    );
    execute(&ctx, &sql).await;
    let within = std::time::Duration::from_secs(10);
    tokio::time::timeout(within, drain(&ctx))
        .await
        .expect("the grant batches finish while the expiry holds its rows");
    assert_eq!(grant_ids(&ctx).await.len(), 50);
    let expired = tokio::time::timeout(within, lifecycle::expire_batch(&ctx.db, 500))
        .await
        .expect("a second expiry passes over the held rows")
        .unwrap();
    assert_eq!(expired, 10, "the ten rows nobody holds");
    release.send(()).unwrap();
    hold.await.unwrap();
}

/// After the job's transitions, grant states agree with them; a grant redeemed by hand
/// (no transition) is drift, with an `inventory.drift` alert.
async fn reconcile_raises_drift_when_a_state_changes_without_a_transition(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver).await;
    grant_first_visits(&ctx, 4).await;
    let ids = grant_ids(&ctx).await;
    set(
        &ctx,
        &format!("expires_at = {}", sql_time(-Duration::hours(1))),
        &ids[..2],
    )
    .await;
    lifecycle::run(&ctx.schedule()).await.unwrap();
    assert!(reconcile::transitions(&ctx.schedule())
        .await
        .unwrap()
        .is_empty());

    set(&ctx, "state = 'redeemed'", &ids[2..3]).await;
    let drift = reconcile::transitions(&ctx.schedule()).await.unwrap();
    let found: Vec<(&str, &str, i64, i64)> = drift
        .iter()
        .map(|d| {
            (
                d.coupon.as_str(),
                d.state.as_str(),
                d.grants,
                d.by_transitions,
            )
        })
        .collect();
    assert_eq!(
        found,
        [("NEW10", "granted", 1, 2), ("NEW10", "redeemed", 1, 0)]
    );
    let alerts = counts(&ctx, "event_type", "deliveries").await;
    assert_eq!(alerts.get("inventory.drift"), Some(&2), "{alerts:?}");
}
on_both_backends!(
    reconcile_raises_drift_when_a_state_changes_without_a_transition,
    reconcile_raises_drift_when_a_state_changes_without_a_transition
);

/// Ten grants (six NEW10 at 10.00, four NEW8 at 8.00, 92.00 of a 100.00 budget), some
/// redeemed, revoked and expired by hand: every figure of `couponsd report --json`
/// and of the metrics is the hand count; `--since 7d` leaves out the NEW8 grants
/// granted ten days ago, never the budget.
async fn the_report_shows_the_hand_counted_figures(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = daemon(&db, &receiver).await;
    grant_first_visits(&ctx, 10).await;
    let ids = grant_ids(&ctx).await;
    set(&ctx, "state = 'redeemed'", &[ids[0], ids[1], ids[6]]).await;
    set(&ctx, "state = 'revoked'", &[ids[2]]).await;
    set(&ctx, "state = 'expired'", &[ids[3], ids[7]]).await;
    let dir = TempDir::new("report");
    let path = dir.0.join("couponsd.yaml");
    let yaml = config_yaml(&db, &receiver, &shipped_rules(), &campaigns(), EXTRA);
    std::fs::write(&path, yaml).unwrap();

    let report = report_json(&path, &[]);
    assert_eq!(report["since"], serde_json::Value::Null);
    let newcomer = &report["campaigns"][1];
    assert_eq!(newcomer["campaign"], "newcomer");
    assert_figures(newcomer, [10, 3, 1, 2, 9200, 2800], 0.3);
    assert_eq!(newcomer["budget_cents"], 10000);
    assert_eq!(newcomer["budget_granted_cents"], 9200);
    assert_eq!(newcomer["budget_used"], 0.92);
    let (new10, new8) = (&newcomer["coupons"][0], &newcomer["coupons"][1]);
    assert_eq!(
        (new10["coupon"].as_str(), new8["coupon"].as_str()),
        (Some("NEW10"), Some("NEW8"))
    );
    assert_figures(new10, [6, 2, 1, 1, 6000, 2000], 2.0 / 6.0);
    assert_figures(new8, [4, 1, 0, 1, 3200, 800], 0.25);
    let loyalty = &report["campaigns"][0];
    assert_figures(loyalty, [0, 0, 0, 0, 0, 0], 0.0);
    assert_eq!(loyalty["budget_used"], serde_json::Value::Null);

    set(
        &ctx,
        &format!("granted_at = {}", sql_time(-Duration::days(10))),
        &ids[6..],
    )
    .await;
    let recent = report_json(&path, &["--since", "7d"]);
    assert!(recent["since"].as_str().unwrap().ends_with('Z'));
    let newcomer = &recent["campaigns"][1];
    assert_figures(newcomer, [6, 2, 1, 1, 6000, 2000], 2.0 / 6.0);
    assert_figures(&newcomer["coupons"][1], [0, 0, 0, 0, 0, 0], 0.0);
    assert_eq!(newcomer["budget_granted_cents"], 9200);

    let table = couponsd(&path, &["report"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("newcomer     *") && l.contains("92.00 / 100.00 (92.0%)")),
        "{table}"
    );

    couponsd::metrics::refresh(&ctx.db, &ctx.metrics, &ctx.config)
        .await
        .unwrap();
    let text = ctx.metrics.encode();
    for line in [
        r#"couponsd_grants_by_state{campaign="newcomer",coupon="NEW10",state="redeemed"} 2"#,
        r#"couponsd_grants_by_state{campaign="newcomer",coupon="NEW8",state="granted"} 4"#,
        r#"couponsd_granted_face_value_cents{campaign="newcomer",coupon="NEW10"} 6000"#,
        r#"couponsd_redeemed_face_value_cents{campaign="newcomer",coupon="NEW8"} 800"#,
        r#"couponsd_campaign_budget_cents{campaign="newcomer"} 10000"#,
        r#"couponsd_campaign_budget_granted_cents{campaign="newcomer"} 9200"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}
on_both_backends!(
    the_report_shows_the_hand_counted_figures,
    the_report_shows_the_hand_counted_figures
);

fn report_json(path: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["report", "--json"];
    all.extend_from_slice(args);
    let out = couponsd(path, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// granted, redeemed, revoked, expired, face value granted and redeemed; and the rate.
fn assert_figures(figures: &serde_json::Value, expected: [i64; 6], rate: f64) {
    let keys = [
        "granted",
        "redeemed",
        "revoked",
        "expired",
        "granted_face_value_cents",
        "redeemed_face_value_cents",
    ];
    let found = keys.map(|k| figures[k].as_i64().unwrap_or(-1));
    assert_eq!(found, expected, "{keys:?} of {figures}");
    let found_rate = figures["redemption_rate"].as_f64().unwrap();
    assert!(
        (found_rate - rate).abs() < 1e-9,
        "rate {found_rate} of {figures}"
    );
}
