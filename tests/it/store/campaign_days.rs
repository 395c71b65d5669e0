//! `store::campaign_days`: the daily budget's ledger.

use couponsd::store::Conn;
use diesel::result::Error;

fn day(campaign: &str, day: &str) -> (String, String) {
    (campaign.to_owned(), day.to_owned())
}

async fn take_daily_budget_adds_up_to_the_limit_and_no_further(conn: &mut Conn) {
    let today = ("newcomer", "2026-12-03");
    assert!(conn.take_daily_budget(today, 1500, 2000).await.unwrap());
    assert!(!conn.take_daily_budget(today, 1000, 2000).await.unwrap());
    assert!(conn.take_daily_budget(today, 500, 2000).await.unwrap());
    assert!(conn
        .take_daily_budget(("newcomer", "2026-12-04"), 2000, 2000)
        .await
        .unwrap());
    assert!(!conn
        .take_daily_budget(("loyalty", "2026-12-03"), 2001, 2000)
        .await
        .unwrap());
    let wanted = [
        day("newcomer", "2026-12-03"),
        day("loyalty", "2026-12-03"),
        day("newcomer", "2026-12-05"),
    ];
    let mut got = conn.granted_on_days(&wanted).await.unwrap();
    got.sort();
    assert_eq!(
        got,
        [
            ("loyalty".to_owned(), "2026-12-03".to_owned(), 0),
            ("newcomer".to_owned(), "2026-12-03".to_owned(), 2000),
        ],
        "a day never taken from has no row; a refused first take leaves an empty one"
    );
    assert!(conn.granted_on_days(&[]).await.unwrap().is_empty());
}
conformance!(take_daily_budget_adds_up_to_the_limit_and_no_further);

/// On MySQL the rows are locked (made when missing); SQLite, with one writer, needs no
/// lock. The shared contract: inside the grant transaction, any list (repeated,
/// unsorted, empty) is taken without error and changes no day's value.
async fn lock_days_takes_any_list_inside_the_grant_transaction(conn: &mut Conn) {
    assert!(conn
        .take_daily_budget(("newcomer", "2026-12-03"), 700, 2000)
        .await
        .unwrap());
    let wanted = [
        day("newcomer", "2026-12-04"),
        day("newcomer", "2026-12-03"),
        day("newcomer", "2026-12-04"),
    ];
    conn.transaction::<_, Error, _>(async |conn| {
        conn.lock_days(&wanted).await?;
        conn.lock_days(&[]).await?;
        conn.take_daily_budget(("newcomer", "2026-12-03"), 300, 2000)
            .await
    })
    .await
    .unwrap();
    let got = conn.granted_on_days(&wanted[1..2]).await.unwrap();
    assert_eq!(
        got,
        [("newcomer".to_owned(), "2026-12-03".to_owned(), 1000)]
    );
}
conformance!(lock_days_takes_any_list_inside_the_grant_transaction);
