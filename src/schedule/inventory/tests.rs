use std::collections::HashSet;

use chrono::TimeDelta;

use super::*;
use crate::domain::chain::CouponStock;

fn none() -> HashSet<String> {
    HashSet::new()
}

fn ids(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|&s| s.to_owned()).collect()
}

fn coupon(id: &str, remaining: i64, low: i64, state: CouponState) -> CouponStock {
    CouponStock {
        id: id.into(),
        campaign_id: "c".into(),
        position: 0,
        face_value_cents: 100,
        channel: "wallet".into(),
        stock: 1000,
        granted: 1000 - remaining,
        remaining,
        low_stock: low,
        state,
    }
}

#[test]
fn a_coupon_at_its_watermark_rotates_to_the_next() {
    let chain = [
        coupon("A", 100, 100, CouponState::Active),
        coupon("B", 500, 10, CouponState::Active),
    ];
    let plan = plan_rotations(&chain, &none());
    assert_eq!(plan.len(), 1);
    assert_eq!(
        (plan[0].from.as_str(), plan[0].to.as_deref(), plan[0].reason),
        ("A", Some("B"), Reason::LowStock)
    );
}

#[test]
fn a_high_grant_rate_forecasts_a_run_out_but_rotates_nothing() {
    let chain = [
        coupon("A", 500, 10, CouponState::Active),
        coupon("B", 5000, 10, CouponState::Active),
    ];
    assert!(
        plan_rotations(&chain, &none()).is_empty(),
        "above its watermark"
    );
    let now = Utc::now();
    let horizon = forecast_horizon(Duration::from_secs(10));
    assert_eq!(
        horizon,
        Duration::from_secs(120),
        "the rate window's length"
    );
    let rates = Rates::from([("A".to_owned(), 60.0)]);
    let low = forecast_running_low(&chain, &[], &rates, horizon, now);
    assert_eq!(
        low,
        [RunningLow {
            coupon: "A".into(),
            remaining: 500,
            rate_per_sec: 60.0,
            run_out_at: predicted_run_out(500, 60.0, now).unwrap(),
        }]
    );
    let slow = Rates::from([("A".to_owned(), 1.0)]);
    assert!(forecast_running_low(&chain, &[], &slow, horizon, now).is_empty());
    let hourly = forecast_horizon(Duration::from_secs(3600));
    assert_eq!(
        forecast_running_low(&chain, &[], &slow, hourly, now).len(),
        1,
        "with a check every hour, the forecast looks to the next check"
    );
}

#[test]
fn coupons_rotated_or_retired_are_not_forecast() {
    let chain = [
        coupon("A", 0, 0, CouponState::Retired),
        coupon("B", 10, 10, CouponState::Active),
        coupon("C", 500, 10, CouponState::Active),
    ];
    let rates = Rates::from([("A", 5.0), ("B", 5.0), ("C", 5.0)].map(|(c, r)| (c.to_owned(), r)));
    let plan = plan_rotations(&chain, &none());
    assert_eq!(plan.len(), 1);
    let horizon = forecast_horizon(Duration::from_secs(10));
    let low = forecast_running_low(&chain, &plan, &rates, horizon, Utc::now());
    assert_eq!(
        low.iter().map(|l| l.coupon.as_str()).collect::<Vec<_>>(),
        ["C"]
    );
}

#[test]
fn the_last_coupon_is_never_rotated_and_retired_ones_are_left_alone() {
    let chain = [
        coupon("A", 0, 10, CouponState::Retired),
        coupon("B", 5, 10, CouponState::Active),
    ];
    assert!(plan_rotations(&chain, &none()).is_empty());
}

#[test]
fn a_run_out_is_predicted_from_the_rate() {
    let now = Utc::now();
    assert_eq!(
        predicted_run_out(100, 10.0, now),
        Some(now + TimeDelta::seconds(10))
    );
    assert_eq!(predicted_run_out(100, 0.0, now), None);
    assert_eq!(
        predicted_run_out(i64::MAX, 1e-9, now),
        None,
        "past any date"
    );
}

#[test]
fn an_expired_coupon_rotates_to_the_next_that_serves_and_is_not_expired() {
    let chain = [
        coupon("A", 900, 10, CouponState::Active),
        coupon("B", 900, 10, CouponState::Active),
        coupon("C", 900, 10, CouponState::Active),
    ];
    let plan = plan_rotations(&chain, &ids(&["A", "B"]));
    let got: Vec<_> = plan
        .iter()
        .map(|p| (p.from.as_str(), p.to.as_deref(), p.reason, p.remaining))
        .collect();
    assert_eq!(
        got,
        [
            ("A", Some("C"), Reason::Expired, 900),
            ("B", Some("C"), Reason::Expired, 900)
        ],
        "well above its watermark, yet it can never be granted again"
    );
    assert_eq!(Reason::Expired.as_str(), "expired");
    assert!(!nothing_serves(&chain, &ids(&["A", "B"])));
}

#[test]
fn an_expired_coupon_rotates_even_when_nothing_takes_over_and_the_chain_is_exhausted() {
    let chain = [
        coupon("A", 0, 0, CouponState::Retired),
        coupon("B", 40, 10, CouponState::Active),
    ];
    let plan = plan_rotations(&chain, &ids(&["B"]));
    assert_eq!(
        plan,
        [Planned {
            from: "B".into(),
            to: None,
            reason: Reason::Expired,
            remaining: 40
        }]
    );
    assert!(
        nothing_serves(&chain, &ids(&["B"])),
        "stock left on an expired coupon serves nobody"
    );
    assert!(!nothing_serves(&chain, &none()));
}

#[test]
fn a_coupon_at_its_watermark_never_hands_over_to_an_expired_one() {
    let chain = [
        coupon("A", 5, 10, CouponState::Active),
        coupon("B", 900, 10, CouponState::Active),
    ];
    let plan = plan_rotations(&chain, &ids(&["B"]));
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(
        (plan[0].from.as_str(), plan[0].reason),
        ("B", Reason::Expired),
        "A keeps serving: nothing usable can take over"
    );
    let retired_expired = [
        coupon("A", 5, 10, CouponState::Active),
        coupon("B", 900, 10, CouponState::Retired),
    ];
    assert!(plan_rotations(&retired_expired, &ids(&["B"])).is_empty());
}

#[test]
fn the_catalog_says_which_coupons_are_unusable_now() {
    use crate::domain::campaign::{CampaignConfig, CouponConfig};
    use crate::domain::codes::Validity;
    use crate::domain::{CampaignId, ChannelName, CouponId, Event, Money, UserType};
    let now = Utc::now();
    let with = |id: &str, validity: Validity| CouponConfig {
        id: CouponId::parse(id).unwrap(),
        face_value: Money::from_cents(100),
        stock: 10,
        low_stock: 0,
        channel: ChannelName::parse("wallet").unwrap(),
        codes: None,
        remind_before: None,
        validity,
    };
    let until = |d: TimeDelta| Validity {
        valid_until: Some(now + d),
        min_validity: TimeDelta::hours(24),
        ..Validity::default()
    };
    let campaign = CampaignConfig {
        id: CampaignId::parse("c").unwrap(),
        event: Event::parse("app_open").unwrap(),
        audience: UserType::parse("first_time").unwrap(),
        per_user_limit: 1,
        per_user_limit_period: None,
        daily_budget: None,
        timezone: chrono_tz::Tz::UTC,
        starts_at: None,
        ends_at: None,
        budget: None,
        coupons: vec![
            with("ENDED", until(TimeDelta::hours(-1))),
            with("SHORT", until(TimeDelta::hours(2))),
            with("FINE", until(TimeDelta::days(3))),
            with("PLAIN", Validity::default()),
        ],
    };
    assert_eq!(unusable_now(&campaign, now), ids(&["ENDED", "SHORT"]));
}
