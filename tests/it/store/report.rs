//! `store::report`: grants by state, transitions by coupon, and the report's figures.

use couponsd::domain::lifecycle::{Cause, Transition};
use couponsd::domain::GrantState;
use couponsd::store::report::{MoveCount, StateCount};
use couponsd::store::Conn;

use super::{at, grant, queue_requests, two_campaigns, PlainSql};

/// Six grants: NEW10 ×3 (one redeemed, one revoked), NEW8 ×2 (one expired, 8.00 each),
/// BACK5 ×1, granted at 0, 0, 10, 10, 20, 20 seconds.
async fn six_grants(conn: &mut Conn) -> Vec<i64> {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
    let ids = queue_requests(conn, &["a", "b", "c", "d", "e", "f"]).await;
    let coupons = [
        ("newcomer", "NEW10"),
        ("newcomer", "NEW10"),
        ("newcomer", "NEW10"),
        ("newcomer", "NEW8"),
        ("newcomer", "NEW8"),
        ("loyalty", "BACK5"),
    ];
    let rows: Vec<_> = ids
        .iter()
        .zip(coupons)
        .enumerate()
        .map(|(i, (id, coupon))| {
            let mut g = grant(*id, &format!("u{i}"), coupon, at(10 * (i as i64 / 2)));
            if coupon.1 == "NEW8" {
                g.face_value_cents = 800;
            }
            g
        })
        .collect();
    conn.record_grants(&rows).await.unwrap();
    for (id, state) in [
        (ids[0], "redeemed"),
        (ids[1], "revoked"),
        (ids[3], "expired"),
    ] {
        conn.exec(&format!(
            "UPDATE grants SET state = '{state}' WHERE id = {id}"
        ))
        .await;
    }
    ids
}

async fn grants_by_state_counts_grants_by_coupon_state_and_face_value(conn: &mut Conn) {
    six_grants(conn).await;
    let count = |coupon: &str, state: &str, face: i64, n: i64| StateCount {
        campaign_id: if coupon == "BACK5" {
            "loyalty"
        } else {
            "newcomer"
        }
        .to_owned(),
        coupon_id: coupon.to_owned(),
        state: state.to_owned(),
        face_value_cents: face,
        grants: n,
    };
    let mut all = conn.grants_by_state(None).await.unwrap();
    all.sort_by(|a, b| (&a.coupon_id, &a.state).cmp(&(&b.coupon_id, &b.state)));
    assert_eq!(
        all,
        [
            count("BACK5", "granted", 1000, 1),
            count("NEW10", "granted", 1000, 1),
            count("NEW10", "redeemed", 1000, 1),
            count("NEW10", "revoked", 1000, 1),
            count("NEW8", "expired", 800, 1),
            count("NEW8", "granted", 800, 1),
        ]
    );
    let mut since = conn.grants_by_state(Some(at(10))).await.unwrap();
    since.sort_by(|a, b| (&a.coupon_id, &a.state).cmp(&(&b.coupon_id, &b.state)));
    assert_eq!(
        since,
        [
            count("BACK5", "granted", 1000, 1),
            count("NEW10", "granted", 1000, 1),
            count("NEW8", "expired", 800, 1),
            count("NEW8", "granted", 800, 1),
        ]
    );
}
conformance!(grants_by_state_counts_grants_by_coupon_state_and_face_value);

async fn transitions_by_coupon_counts_each_move_of_a_coupons_grants(conn: &mut Conn) {
    let ids = six_grants(conn).await;
    let moved = |id, (from, to)| Transition {
        grant_id: id,
        from,
        to,
        cause: Cause::Job("expire_grants".into()),
        reason: None,
        at: at(30).and_utc(),
    };
    use GrantState::*;
    conn.record_transitions(&[
        moved(ids[0], (Granted, Redeemed)),
        moved(ids[1], (Granted, Redeemed)),
        moved(ids[1], (Redeemed, Revoked)),
        moved(ids[2], (Granted, Redeemed)),
        moved(ids[3], (Granted, Expired)),
    ])
    .await
    .unwrap();
    let count = |coupon: &str, from: &str, to: &str, n| MoveCount {
        coupon_id: coupon.into(),
        from_state: from.into(),
        to_state: to.into(),
        transitions: n,
    };
    let mut moves = conn.transitions_by_coupon().await.unwrap();
    moves.sort_by(|a, b| {
        (&a.coupon_id, &a.from_state, &a.to_state).cmp(&(&b.coupon_id, &b.from_state, &b.to_state))
    });
    assert_eq!(
        moves,
        [
            count("NEW10", "granted", "redeemed", 3),
            count("NEW10", "redeemed", "revoked", 1),
            count("NEW8", "granted", "expired", 1),
        ]
    );
}
conformance!(transitions_by_coupon_counts_each_move_of_a_coupons_grants);

async fn report_puts_the_figures_together_per_campaign_and_coupon(conn: &mut Conn) {
    six_grants(conn).await;
    conn.exec("UPDATE campaigns SET granted_cents = 3800 WHERE id = 'newcomer'")
        .await;
    let report = conn.report(None).await.unwrap();
    let campaigns: Vec<&str> = report
        .campaigns
        .iter()
        .map(|k| k.campaign.as_str())
        .collect();
    assert_eq!(campaigns, ["loyalty", "newcomer"]);
    let newcomer = &report.campaigns[1];
    assert_eq!(
        (newcomer.budget_cents, newcomer.budget_granted_cents),
        (Some(5000), 3800)
    );
    let f = newcomer.figures;
    assert_eq!((f.granted, f.redeemed, f.revoked, f.expired), (5, 1, 1, 1));
    assert_eq!(
        (f.granted_face_value_cents, f.redeemed_face_value_cents),
        (4600, 1000)
    );
    let coupons: Vec<(&str, i64)> = newcomer
        .coupons
        .iter()
        .map(|c| (c.coupon.as_str(), c.figures.granted))
        .collect();
    assert_eq!(coupons, [("NEW10", 3), ("NEW8", 2)], "in chain order");
    let since = conn.report(Some(at(20))).await.unwrap();
    assert_eq!(since.campaigns[1].figures.granted, 1);
    assert_eq!(
        since.campaigns[1].budget_granted_cents, 3800,
        "the budget is the campaign's whole ledger"
    );
}
conformance!(report_puts_the_figures_together_per_campaign_and_coupon);
