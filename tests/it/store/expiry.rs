//! `store::expiry`: the grants the expiry and reminder job claims, and `reminded_at`.

use chrono::NaiveDateTime;
use couponsd::store::Conn;
use diesel::result::Error;

use super::{at, grant, queue_requests, PlainSql};

/// Grants of NEW10 for users a, b, c, … expiring at the given seconds (`None`: never);
/// returns their ids.
async fn grants_expiring(conn: &mut Conn, expiries: &[Option<i64>]) -> Vec<i64> {
    let keys: Vec<String> = (0..expiries.len()).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let ids = queue_requests(conn, &keys).await;
    let rows: Vec<_> = ids
        .iter()
        .zip(expiries)
        .map(|(id, expires)| {
            let mut g = grant(*id, &format!("u{id}"), ("newcomer", "NEW10"), at(-100));
            g.expires_at = expires.map(at);
            g
        })
        .collect();
    conn.record_grants(&rows).await.unwrap();
    ids
}

async fn claim_expired(conn: &mut Conn, now: NaiveDateTime, limit: i64) -> Vec<i64> {
    conn.write_transaction::<_, Error, _>(async |conn| conn.claim_expired_grants(now, limit).await)
        .await
        .unwrap()
}

async fn claim_expired_grants_takes_granted_grants_past_their_expiry_earliest_first(
    conn: &mut Conn,
) {
    let ids = grants_expiring(conn, &[Some(0), Some(-20), Some(1), None, Some(-30)]).await;
    conn.exec(&format!(
        "UPDATE grants SET state = 'redeemed' WHERE id = {}",
        ids[4]
    ))
    .await;
    assert_eq!(
        claim_expired(conn, at(0), 10).await,
        [ids[1], ids[0]],
        "due and still granted, earliest expiry first; never one redeemed, \
         one expiring later or one without an expiry"
    );
    assert_eq!(claim_expired(conn, at(0), 1).await, [ids[1]]);
    assert_eq!(
        claim_expired(conn, at(5), 10).await,
        [ids[1], ids[0], ids[2]]
    );
}
conformance!(claim_expired_grants_takes_granted_grants_past_their_expiry_earliest_first);

async fn claim_due_reminders_takes_one_coupons_grants_expiring_within_the_window(conn: &mut Conn) {
    let ids = grants_expiring(conn, &[Some(10), Some(-5), Some(100), Some(50), Some(20)]).await;
    conn.exec(&format!(
        "UPDATE grants SET coupon_id = 'NEW8' WHERE id = {}",
        ids[3]
    ))
    .await;
    conn.exec(&format!(
        "UPDATE grants SET reminded_at = '2026-12-01 11:00:00' WHERE id = {}",
        ids[4]
    ))
    .await;
    let claim = async |conn: &mut Conn, coupon: &str| {
        conn.write_transaction::<_, Error, _>(async |conn| {
            conn.claim_due_reminders(coupon, (at(0), at(60)), 10).await
        })
        .await
        .unwrap()
    };
    assert_eq!(
        claim(conn, "NEW10").await,
        [ids[0]],
        "in the window, of the coupon, not reminded yet; never one already expired"
    );
    assert_eq!(claim(conn, "NEW8").await, [ids[3]]);
}
conformance!(claim_due_reminders_takes_one_coupons_grants_expiring_within_the_window);

async fn mark_reminded_sets_reminded_at_once_on_granted_grants(conn: &mut Conn) {
    let ids = grants_expiring(conn, &[Some(10), Some(10), Some(10)]).await;
    conn.exec(&format!(
        "UPDATE grants SET state = 'revoked' WHERE id = {}",
        ids[2]
    ))
    .await;
    assert_eq!(conn.mark_reminded(&ids, at(1)).await.unwrap(), 2);
    assert_eq!(conn.mark_reminded(&ids, at(2)).await.unwrap(), 0, "once");
    assert_eq!(conn.mark_reminded(&[], at(2)).await.unwrap(), 0);
    #[derive(diesel::QueryableByName)]
    struct Reminded {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
        reminded_at: Option<NaiveDateTime>,
    }
    let rows: Vec<Reminded> = conn
        .rows("SELECT reminded_at FROM grants ORDER BY id")
        .await;
    assert_eq!(
        rows.iter().map(|r| r.reminded_at).collect::<Vec<_>>(),
        [Some(at(1)), Some(at(1)), None]
    );
}
conformance!(mark_reminded_sets_reminded_at_once_on_granted_grants);
