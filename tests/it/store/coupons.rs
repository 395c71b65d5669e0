//! `store::coupons`: the rotation chains' stock.

use couponsd::domain::chain::CouponStock;
use couponsd::domain::CouponState;
use couponsd::store::Conn;
use diesel::result::Error;

use super::{at, two_campaigns};

/// The catalog of [`two_campaigns`], applied.
async fn catalog(conn: &mut Conn) {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
}

/// The stock of one coupon: (stock, granted, remaining).
async fn stock_of(conn: &mut Conn, id: &str) -> (i64, i64, i64) {
    let all = conn.coupon_stock().await.unwrap();
    let c = all.iter().find(|c| c.id == id).unwrap();
    (c.stock, c.granted, c.remaining)
}

fn ids(coupons: &[CouponStock]) -> Vec<&str> {
    coupons.iter().map(|c| c.id.as_str()).collect()
}

async fn coupon_stock_lists_the_coupons_in_the_config_by_campaign_and_position(conn: &mut Conn) {
    catalog(conn).await;
    let all = conn.coupon_stock().await.unwrap();
    assert_eq!(ids(&all), ["BACK5", "NEW10", "NEW8"]);
    assert_eq!(
        all[1],
        CouponStock {
            id: "NEW10".into(),
            campaign_id: "newcomer".into(),
            position: 0,
            face_value_cents: 1000,
            channel: "wallet".into(),
            stock: 10,
            granted: 0,
            remaining: 10,
            low_stock: 2,
            state: CouponState::Active,
        }
    );
    assert!(conn
        .set_coupon_state("NEW10", CouponState::Removed, at(1))
        .await
        .unwrap());
    assert_eq!(ids(&conn.coupon_stock().await.unwrap()), ["BACK5", "NEW8"]);
}
conformance!(coupon_stock_lists_the_coupons_in_the_config_by_campaign_and_position);

/// Locked (inside the grant transaction) or not, the same rows; the locks themselves
/// exist only on MySQL.
async fn chains_reads_the_coupons_of_the_campaigns_asked_in_id_order(conn: &mut Conn) {
    catalog(conn).await;
    conn.set_coupon_state("BACK5", CouponState::Retired, at(1))
        .await
        .unwrap();
    let asked = ["newcomer".to_owned(), "loyalty".to_owned()];
    let snapshot = conn.chains(&asked, false).await.unwrap();
    assert_eq!(ids(&snapshot), ["BACK5", "NEW10", "NEW8"]);
    assert_eq!(snapshot[0].state, CouponState::Retired);
    let locked = conn
        .transaction::<_, Error, _>(async |conn| conn.chains(&asked, true).await)
        .await
        .unwrap();
    assert_eq!(locked, snapshot);
    conn.set_coupon_state("NEW8", CouponState::Removed, at(2))
        .await
        .unwrap();
    let one = conn.chains(&asked[..1], false).await.unwrap();
    assert_eq!(ids(&one), ["NEW10"]);
}
conformance!(chains_reads_the_coupons_of_the_campaigns_asked_in_id_order);

async fn take_stock_moves_stock_from_remaining_to_granted(conn: &mut Conn) {
    catalog(conn).await;
    assert!(conn.take_stock("NEW10", 3).await.unwrap());
    assert!(
        conn.take_stock("NEW10", 7).await.unwrap(),
        "all that remains"
    );
    assert_eq!(stock_of(conn, "NEW10").await, (10, 10, 0));
    assert_eq!(stock_of(conn, "NEW8").await, (100, 0, 100));
}
conformance!(take_stock_moves_stock_from_remaining_to_granted);

async fn take_stock_never_takes_more_than_remains(conn: &mut Conn) {
    catalog(conn).await;
    assert!(conn.take_stock("NEW10", 8).await.unwrap());
    assert!(!conn.take_stock("NEW10", 3).await.unwrap());
    assert_eq!(stock_of(conn, "NEW10").await, (10, 8, 2), "nothing taken");
    assert!(!conn.take_stock("NOSUCH", 1).await.unwrap());
    // A statement that changes no value still counts its row (CLIENT_FOUND_ROWS).
    assert!(
        conn.take_stock("NEW10", 0).await.unwrap(),
        "taking nothing is no refusal"
    );
}
conformance!(take_stock_never_takes_more_than_remains);

async fn add_stock_raises_stock_and_remaining(conn: &mut Conn) {
    catalog(conn).await;
    conn.take_stock("NEW10", 4).await.unwrap();
    assert!(conn.add_stock("NEW10", 5).await.unwrap());
    assert_eq!(stock_of(conn, "NEW10").await, (15, 4, 11));
    assert!(!conn.add_stock("NOSUCH", 5).await.unwrap());
}
conformance!(add_stock_raises_stock_and_remaining);

async fn set_coupon_state_changes_a_known_coupons_state(conn: &mut Conn) {
    catalog(conn).await;
    assert!(conn
        .set_coupon_state("NEW10", CouponState::Retired, at(1))
        .await
        .unwrap());
    assert!(
        conn.set_coupon_state("NEW10", CouponState::Retired, at(1))
            .await
            .unwrap(),
        "a row whose values do not change is still found"
    );
    let all = conn.coupon_stock().await.unwrap();
    let states: Vec<(&str, &str)> = all
        .iter()
        .map(|c| (c.id.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("BACK5", "active"),
            ("NEW10", "retired"),
            ("NEW8", "active")
        ]
    );
    assert!(!conn
        .set_coupon_state("NOSUCH", CouponState::Retired, at(1))
        .await
        .unwrap());
}
conformance!(set_coupon_state_changes_a_known_coupons_state);
