use super::*;

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
    let plan = plan_rotations(&chain);
    assert_eq!(plan.len(), 1);
    assert_eq!(
        (plan[0].from.as_str(), plan[0].to.as_str(), plan[0].reason),
        ("A", "B", Reason::LowStock)
    );
}

#[test]
fn a_high_grant_rate_forecasts_a_run_out_but_rotates_nothing() {
    let chain = [
        coupon("A", 500, 10, CouponState::Active),
        coupon("B", 5000, 10, CouponState::Active),
    ];
    assert!(plan_rotations(&chain).is_empty(), "above its watermark");
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
    let plan = plan_rotations(&chain);
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
    assert!(plan_rotations(&chain).is_empty());
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
