//! Scenario 5, rules: the time of one evaluation of each shipped rule, in process,
//! through the same `Rules::user_type` / `Rules::select_coupon` calls the grant stage
//! makes (inputs built, sandbox deadline set, output checked). Each case is warmed up,
//! then timed one evaluation at a time, for at most 20,000 evaluations or one second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::report::{percentile, Goal};
use super::{Bench, BenchError};
use couponsd::config::RuleLimits;
use couponsd::demo::{SHIPPED_SELECT_COUPON, SHIPPED_USER_TYPE};
use couponsd::domain::{
    CampaignId, CampaignView, ChannelName, CouponId, CouponView, Event, History, InvalidValue,
    Money, RequestId, RequestKey, TriggerRequest, UserId, UserType,
};
use couponsd::rules::Rules;

const WARM_UP: usize = 1_000;
const SAMPLES: usize = 20_000;
const TIME_LIMIT: Duration = Duration::from_secs(1);
/// Target for one evaluation.
const TARGET_MICROS: f64 = 10.0;

/// One rule call to time.
type Case = Box<dyn Fn(&Rules) -> bool + Send>;

/// Times each shipped rule.
pub async fn run(bench: &mut Bench) -> Result<(), BenchError> {
    println!(
        "\n[rules] one evaluation of each shipped rule, in process (median of up to {SAMPLES})"
    );
    let dir = bench.dir.join("rules-bench");
    let io = |e: std::io::Error| BenchError::Setup(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(dir.join("user_type.rhai"), SHIPPED_USER_TYPE).map_err(io)?;
    std::fs::write(dir.join("select_coupon.rhai"), SHIPPED_SELECT_COUPON).map_err(io)?;
    let rules = Rules::load(&dir, &RuleLimits::default()).map_err(|errors| {
        BenchError::Setup(format!("the shipped rules do not compile: {errors:?}"))
    })?;
    let cases = cases().map_err(|e| BenchError::Setup(format!("rule inputs: {e}")))?;
    let timed = tokio::task::spawn_blocking(move || {
        cases
            .into_iter()
            .map(|(name, case)| (name, time(&rules, &case)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| BenchError::Setup(format!("rule timing: {e}")))?;
    for (name, samples) in timed {
        let Some(samples) = samples else {
            return Err(BenchError::Check {
                scenario: "rules".into(),
                message: format!("{name}: the rule returned an error"),
            });
        };
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let median = micros(percentile(&samples, 50.0));
        bench.figures.target(
            "rules",
            &format!("{name} median"),
            median,
            "µs",
            Goal::Below(TARGET_MICROS),
        );
        bench.figures.note(
            "rules",
            &format!("{name} p99"),
            micros(percentile(&samples, 99.0)),
            "µs",
        );
    }
    Ok(())
}

/// Sorted durations of single evaluations, or `None` if the rule failed.
fn time(rules: &Rules, case: &Case) -> Option<Vec<Duration>> {
    for _ in 0..WARM_UP {
        if !case(rules) {
            return None;
        }
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(SAMPLES);
    while samples.len() < SAMPLES && started.elapsed() < TIME_LIMIT {
        let t = Instant::now();
        let ok = case(rules);
        samples.push(t.elapsed());
        if !ok {
            return None;
        }
    }
    samples.sort();
    Some(samples)
}

fn cases() -> Result<Vec<(&'static str, Case)>, InvalidValue> {
    let request = TriggerRequest {
        id: RequestId(1),
        key: RequestKey::parse("bench-1")?,
        user_id: UserId::parse("bench-user-1")?,
        event: Event::parse("app_open")?,
        attributes: serde_json::from_str(r#"{"platform":"ios","app_version":"4.2.1"}"#)
            .unwrap_or_default(),
        created_at: Utc::now(),
    };
    let newcomer = History::default();
    let returning = History {
        grants_for_event: 1,
        last_grant_at: Some(Utc::now()),
        grants_by_campaign: HashMap::from([(CampaignId::parse("newcomer")?, 1)]),
        ..History::default()
    };
    let campaign = CampaignView {
        id: CampaignId::parse("newcomer")?,
        event: Event::parse("app_open")?,
        audience: UserType::parse("first_time")?,
        per_user_limit: 1,
    };
    let chain = |remaining: [i64; 4]| -> Result<Vec<CouponView>, InvalidValue> {
        [
            ("NEW10", "10.00"),
            ("NEW8", "8.00"),
            ("NEW5", "5.00"),
            ("NEW3", "3.00"),
        ]
        .iter()
        .zip(remaining)
        .map(|((id, value), remaining)| {
            Ok(CouponView {
                id: CouponId::parse(id)?,
                face_value: Money::parse(value)?,
                remaining,
                valid_until: None,
                channel: ChannelName::parse("wallet")?,
            })
        })
        .collect()
    };
    let first_has_stock = chain([100, 100, 100, 100])?;
    let fourth_has_stock = chain([0, 0, 0, 100])?;
    let user_type = UserType::parse("first_time")?;
    let (r1, r2, r3, r4) = (request.clone(), request.clone(), request.clone(), request);
    let (u3, u4, c3, c4) = (user_type.clone(), user_type, campaign.clone(), campaign);
    Ok(vec![
        (
            "user_type.rhai, new user",
            Box::new(move |rules: &Rules| rules.user_type(&r1, &newcomer).is_ok()),
        ),
        (
            "user_type.rhai, returning user",
            Box::new(move |rules: &Rules| rules.user_type(&r2, &returning).is_ok()),
        ),
        (
            "select_coupon.rhai, 1st of 4 coupons has stock",
            Box::new(move |rules: &Rules| {
                matches!(
                    rules.select_coupon(&r3, &u3, &c3, &first_has_stock),
                    Ok(Some(_))
                )
            }),
        ),
        (
            "select_coupon.rhai, only the 4th has stock",
            Box::new(move |rules: &Rules| {
                matches!(
                    rules.select_coupon(&r4, &u4, &c4, &fourth_has_stock),
                    Ok(Some(_))
                )
            }),
        ),
    ])
}
