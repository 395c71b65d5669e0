use super::*;

#[test]
fn a_committed_batch_shows_up_under_its_labels() {
    let metrics = Metrics::new();
    let tally = BatchTally {
        requests: vec![
            (RequestStatus::Done, Some(Outcome::Granted)),
            (RequestStatus::Rejected, None),
        ],
        grants: vec![("newcomer".into(), "NEW10".into())],
        rule_evaluation: Duration::from_millis(3),
    };
    metrics.record_batch(&tally, Duration::from_millis(40));
    metrics.record_delivery("wallet", DeliveryStatus::Delivered);
    metrics.observe_attempt("wallet", Duration::from_millis(12));
    let text = metrics.encode();
    for line in [
        r#"couponsd_requests_total{status="done",outcome="granted"} 1"#,
        r#"couponsd_requests_total{status="rejected",outcome="none"} 1"#,
        r#"couponsd_grants_total{campaign="newcomer",coupon="NEW10"} 1"#,
        r#"couponsd_deliveries_total{result="delivered",channel="wallet"} 1"#,
        r#"couponsd_delivery_attempt_duration_seconds_count{channel="wallet"} 1"#,
        "couponsd_batch_duration_seconds_count 1",
        "couponsd_rule_evaluation_seconds_count 1",
        "couponsd_queue_depth 0",
        "couponsd_rotations_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert_eq!(metrics.granted(), 1);
}
