//! The ops console on the health listener, against a real daemon context and database
//! over real HTTP: its pages (chains, burn-down plots with rotations marked, alerts,
//! deliveries dead or held, lifecycle figures), its actions and what refuses them
//! (no token, a wrong one, a stale form, a cross-site request), and the
//! `sample_stock` job the plots are drawn from.

use std::path::Path;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta};
use couponsd::config::Config;
use couponsd::runtime::Daemon;
use couponsd::schedule::{inventory, parse_cron, run_once_per_tick, samples, SAMPLE_STOCK};
use tokio_util::sync::CancellationToken;

use crate::on_both_backends;
use crate::support::*;

/// The console token of these tests' configs.
pub const TOKEN: &str = "console-token-for-tests-0123456789";

/// NEW10 with 6 in stock ahead of NEW8, with alerts on `ops`, the console token set
/// when `token`.
pub fn console_config(db: &TestDb, receiver: &Receiver, token: bool) -> Config {
    let mut extra = "alerts:\n  channel: ops\n".to_owned();
    if token {
        extra.push_str(&format!("http:\n  console_token: \"{TOKEN}\"\n"));
    }
    config(
        db,
        receiver,
        &shipped_rules(),
        &standard_campaigns(6),
        &extra,
    )
}

/// A daemon context with history: grants in rounds with a stock sample taken after
/// each (at times an hour apart, the last one now), NEW10 exhausted and rotated to
/// NEW8 by the inventory check, and one `coupon.granted` delivery dead.
pub async fn busy(config: Config) -> Daemon {
    let ctx = context(config).await;
    let now = couponsd::store::now()
        .duration_trunc(TimeDelta::seconds(1))
        .unwrap();
    for round in 0..4i64 {
        for i in 0..3 {
            let key = format!("r{round}-{i}");
            insert(&ctx, &key, &format!("user-{key}"), "app_open", None)
                .await
                .unwrap();
        }
        drain(&ctx).await;
        let at = now - TimeDelta::hours(4 - round);
        store(&ctx, async |c| c.record_stock_samples(at).await).await;
    }
    let rotated = inventory::check(&ctx.schedule()).await.unwrap();
    assert_eq!(rotated.rotations.len(), 1, "NEW10 ran out and was rotated");
    samples::run(&ctx.schedule()).await.unwrap();
    let dead = "UPDATE deliveries SET status = 'dead', last_status = 500, \
                last_error = 'HTTP 500 from the partner' \
                WHERE id = (SELECT id FROM (SELECT MIN(id) AS id FROM deliveries \
                WHERE event_type = 'coupon.granted') AS t)";
    assert_eq!(execute(&ctx, dead).await, 1);
    ctx
}

/// Serves the health listener (and so the console) of `ctx` on 127.0.0.1:0; returns
/// its base URL.
pub async fn serve(ctx: &Daemon) -> String {
    let listener = couponsd::runtime::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    couponsd::runtime::http::serve(ctx.clone(), listener, CancellationToken::new());
    format!("http://{address}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(url: &str) -> (u16, String) {
    let answer = client().get(url).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// The value of the hidden `form_token` in the form with id `form`.
fn form_token(page: &str, form: &str) -> String {
    let at = page
        .find(&format!("id=\"{form}\""))
        .unwrap_or_else(|| panic!("no form {form}"));
    let rest = &page[at..];
    let value = rest.split("name=\"form_token\" value=\"").nth(1).unwrap();
    value[..value.find('"').unwrap()].to_owned()
}

/// The `d` of every `path.remaining` of the page's plots, by coupon.
fn plotted(page: &str) -> Vec<(String, String)> {
    page.split("<svg class=\"burn\"")
        .skip(1)
        .map(|svg| {
            let svg = &svg[..svg.find("</svg>").unwrap()];
            let coupon = svg.split("data-coupon=\"").nth(1).unwrap();
            let coupon = coupon[..coupon.find('"').unwrap()].to_owned();
            let d = svg
                .split("class=\"remaining\" d=\"")
                .nth(1)
                .map(|d| d[..d.find('"').unwrap()].to_owned())
                .unwrap_or_default();
            (coupon, d)
        })
        .collect()
}

async fn the_console_shows_chains_plots_rotations_alerts_and_dead_deliveries(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = busy(console_config(&db, &receiver, false)).await;
    let base = serve(&ctx).await;

    let (status, page) = get(&format!("{base}/")).await;
    assert_eq!(status, 200, "{page}");
    for campaign in ["newcomer", "loyalty"] {
        assert!(
            page.contains(&format!("id=\"campaign-{campaign}\"")),
            "{campaign}"
        );
    }
    // The chain: NEW10 granted its 6 and retired, NEW8 serving the rest.
    let new10 = page
        .split("<tr class=\"coupon\" data-coupon=\"NEW10\">")
        .nth(1)
        .unwrap();
    let new10 = &new10[..new10.find("</tr>").unwrap()];
    assert!(
        new10.contains("<span class=\"badge s-retired\">retired</span>"),
        "{new10}"
    );
    assert!(
        new10.contains("<td class=\"n\">6</td><td class=\"n\">6</td><td class=\"n\">0</td>"),
        "{new10}"
    );
    assert!(
        new10.contains("<span class=\"bad\">out of stock</span>"),
        "{new10}"
    );
    // Every coupon has a plot; NEW10's line falls over the samples, one point each.
    let plots = plotted(&page);
    assert_eq!(plots.len(), 3, "{plots:?}");
    let new10 = &plots.iter().find(|(c, _)| c == "NEW10").unwrap().1;
    let points: Vec<f64> = new10
        .split(['M', 'L'])
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once(',').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(points.len(), 5, "four rounds and the job's sample: {new10}");
    assert!(
        points.windows(2).all(|w| w[1] >= w[0]),
        "never rising: {new10}"
    );
    assert!(points[4] > points[0], "down to nothing: {new10}");
    // The rotation is marked on both coupons' plots and listed.
    assert_eq!(page.matches("<line class=\"rotation\"").count(), 2);
    assert!(page.contains("<td>NEW10 → NEW8</td><td>exhausted</td>"));
    // The dead delivery counted on its channel and listed; the lifecycle figures.
    assert!(page.contains(
        "<tr data-channel=\"wallet\"><td>wallet</td><td><span class=\"badge s-active\">enabled</span></td>\
         <td class=\"n\">0</td><td class=\"n\">1</td></tr>"
    ));
    assert!(page.contains("HTTP 500 from the partner"));
    assert!(page.contains("<td>newcomer</td><td>all</td><td class=\"n\">12</td>"));
    // Read-only without a token, and it says so.
    assert!(page.contains("read-only (no http.console_token)"));
    assert!(page.contains("<fieldset disabled"));

    let (status, coupon) = get(&format!("{base}/coupons/NEW10")).await;
    assert_eq!(status, 200);
    assert!(coupon.contains("width=\"900\"") && coupon.contains("NEW10 → NEW8"));
    assert_eq!(get(&format!("{base}/coupons/NOPE")).await.0, 404);
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));
}

on_both_backends!(
    the_console_shows_chains_plots_rotations_alerts_and_dead_deliveries,
    the_console_shows_chains_plots_rotations_alerts_and_dead_deliveries
);

async fn stock_of(ctx: &Daemon, coupon: &str) -> (i64, i64) {
    let all = store(ctx, async |c| c.coupon_stock().await).await;
    let c = all.iter().find(|c| c.id == coupon).unwrap();
    (c.stock, c.remaining)
}

async fn post(
    base: &str,
    action: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = client().post(format!("{base}/actions/{action}")).form(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

async fn actions_need_the_token_a_fresh_form_and_the_same_origin(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = busy(console_config(&db, &receiver, true)).await;
    let base = serve(&ctx).await;
    let (_, page) = get(&format!("{base}/")).await;
    assert!(page.contains("actions need the console token"));
    let stock_form = form_token(&page, "stock-add");
    let before = stock_of(&ctx, "BACK5").await;
    let add = |token: &'static str, form: String| {
        vec![
            ("coupon", "BACK5".to_owned()),
            ("count", "25".into()),
            ("token", token.into()),
            ("form_token", form),
        ]
    };
    let refusals = [
        (
            add("", stock_form.clone()),
            vec![],
            "the console token is missing or wrong",
        ),
        (
            add("console-token-for-tests-0123456788", stock_form.clone()),
            vec![],
            "the console token is missing or wrong",
        ),
        (add(TOKEN, "0".repeat(64)), vec![], "the form is stale"),
        (
            add(TOKEN, form_token(&page, "replay")),
            vec![],
            "the form is stale",
        ),
        (
            add(TOKEN, stock_form.clone()),
            vec![("sec-fetch-site", "cross-site")],
            "another site",
        ),
        (
            add(TOKEN, stock_form.clone()),
            vec![("origin", "http://evil.example")],
            "another origin",
        ),
    ];
    for (form, headers, why) in refusals {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = post(&base, "stock-add", &form, &headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(
            body.contains(why) && body.contains("Nothing was changed"),
            "{body}"
        );
        assert!(!body.contains(TOKEN), "the token is never echoed");
    }
    assert_eq!(
        stock_of(&ctx, "BACK5").await,
        before,
        "nothing refused changed stock"
    );

    let host = base.trim_start_matches("http://").to_owned();
    let good = add(TOKEN, stock_form.clone());
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let origin = format!("http://{host}");
    let same = [
        ("origin", origin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    let (status, body) = post(&base, "stock-add", &good, &same).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("added 25 to BACK5"), "{body}");
    assert_eq!(
        stock_of(&ctx, "BACK5").await,
        (before.0 + 25, before.1 + 25)
    );
    let (_, page) = get(&format!("{base}/")).await;
    assert!(
        page.contains(&format!("<td class=\"n\">{}</td>", before.0 + 25)),
        "the page reads again after an action"
    );

    let unknown = [
        ("coupon", "NOPE"),
        ("count", "1"),
        ("token", TOKEN),
        ("form_token", stock_form.as_str()),
    ];
    let (status, body) = post(&base, "stock-add", &unknown, &[]).await;
    assert_eq!(status, 409, "the ops command's refusal: {body}");
    assert!(body.contains("unknown coupon"), "{body}");

    // Replay the dead delivery by id; then enable a channel a 410 disabled.
    let dead: Vec<KeyCount> = query_rows(
        &ctx,
        "SELECT channel AS k, id AS n FROM deliveries WHERE status = 'dead'",
    )
    .await;
    let id = dead[0].n.to_string();
    let (replay_form, enable_form) = (
        form_token(&page, "replay"),
        form_token(&page, "channels-enable"),
    );
    let replay = [
        ("id", id.as_str()),
        ("channel", ""),
        ("token", TOKEN),
        ("form_token", replay_form.as_str()),
    ];
    let (status, body) = post(&base, "replay", &replay, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        counts(&ctx, "status", &format!("deliveries WHERE id = {id}"))
            .await
            .get("pending"),
        Some(&1)
    );
    let at = couponsd::store::now();
    store(&ctx, async |c| {
        c.disable_channel("sms", "410 Gone", at, None).await
    })
    .await;
    let enable = [
        ("channel", "sms"),
        ("token", TOKEN),
        ("form_token", enable_form.as_str()),
    ];
    let (status, body) = post(&base, "channels-enable", &enable, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("channel sms is enabled"), "{body}");
    assert!(store(&ctx, async |c| c.disabled_channels().await)
        .await
        .is_empty());
}

on_both_backends!(
    actions_need_the_token_a_fresh_form_and_the_same_origin,
    actions_need_the_token_a_fresh_form_and_the_same_origin
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_console_token_every_action_is_refused() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::ok().await;
    let ctx = context(console_config(&db, &receiver, false)).await;
    let base = serve(&ctx).await;
    let before = stock_of(&ctx, "BACK5").await;
    for action in ["stock-add", "replay", "channels-enable"] {
        let form = [
            ("coupon", "BACK5"),
            ("count", "5"),
            ("channel", "sms"),
            ("token", TOKEN),
            ("form_token", "x"),
        ];
        let (status, body) = post(&base, action, &form, &[]).await;
        assert_eq!(status, 403, "{action}: {body}");
        assert!(body.contains("actions are off"), "{body}");
    }
    assert_eq!(stock_of(&ctx, "BACK5").await, before);
}

async fn sample_stock_runs_once_per_tick_and_prunes_what_is_older_than_a_day(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(console_config(&db, &receiver, false)).await;
    let deps = ctx.schedule();
    let schedule = parse_cron(&ctx.config.schedule.sample_stock).unwrap();
    assert_eq!(
        ctx.config.schedule.sample_stock, "0 * * * * *",
        "the default"
    );
    let old = couponsd::store::now() - samples::SAMPLES_KEPT - TimeDelta::minutes(1);
    store(&ctx, async |c| c.record_stock_samples(old).await).await;
    let fired = couponsd::store::now().and_utc();
    let job = || async {
        samples::run(&deps)
            .await
            .map(|s| s.recorded + 1000 * s.pruned)
    };
    assert!(run_once_per_tick(&deps, SAMPLE_STOCK, &schedule, fired, job).await);
    assert!(
        !run_once_per_tick(&deps, SAMPLE_STOCK, &schedule, fired, job).await,
        "a second daemon firing for the same tick does not sample again"
    );
    let kept = store(&ctx, async |c| c.stock_samples_since(old).await).await;
    assert_eq!(
        kept.len(),
        3,
        "one row per coupon, the day-old ones pruned: {kept:?}"
    );
    assert!(kept.iter().all(|s| s.sampled_at > old));
    let new8 = kept.iter().find(|s| s.coupon_id == "NEW8").unwrap();
    assert_eq!(new8.remaining, 100000);
}

on_both_backends!(
    sample_stock_runs_once_per_tick_and_prunes_what_is_older_than_a_day,
    sample_stock_runs_once_per_tick_and_prunes_what_is_older_than_a_day
);

fn refusal(yaml_http: &str) -> String {
    let yaml = format!("database:\n  url: sqlite://x.db\n{yaml_http}");
    Config::from_yaml_with_env(&yaml, Path::new("c.yaml"), &|_| None)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_bad_console_token_or_sample_schedule_is_refused_by_key_without_repeating_it() {
    let e = refusal("http:\n  console_token: short-token\n");
    assert!(
        e.contains("c.yaml: http.console_token: the token is 11 characters long; at least 24"),
        "{e}"
    );
    assert!(!e.contains("short-token"));
    let e = refusal("http:\n  console_token: \"a token with spaces in it 0123\"\n");
    assert!(
        e.contains("http.console_token: the token holds a space"),
        "{e}"
    );
    let e = refusal("schedule:\n  sample_stock: \"* * *\"\n");
    assert!(
        e.contains("schedule.sample_stock: \"* * *\" has 3 field(s)"),
        "{e}"
    );
    let yaml = format!("database:\n  url: sqlite://x.db\nhttp:\n  console_token: {TOKEN}\n");
    let config = Config::from_yaml_with_env(&yaml, Path::new("c.yaml"), &|_| None).unwrap();
    assert!(
        !format!("{config:?}").contains(TOKEN),
        "the token does not print"
    );
}
