//! `store::catalog`: the config's campaigns and chains, and the campaign budgets.

use couponsd::domain::{Budget, CouponState};
use couponsd::store::catalog::CatalogChanges;
use couponsd::store::Conn;
use diesel::result::Error;

use super::{at, campaign, grant, migrated, queue_requests, two_campaigns, while_a_client_commits};

fn owned(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn budget(campaign_id: &str, budget_cents: Option<i64>, granted_cents: i64) -> Budget {
    Budget {
        campaign_id: campaign_id.to_owned(),
        budget_cents,
        granted_cents,
    }
}

/// (id, stock, granted, remaining, state) of every coupon still in the config.
async fn chain(conn: &mut Conn) -> Vec<(String, i64, i64, i64, String)> {
    let all = conn.coupon_stock().await.unwrap();
    all.into_iter()
        .map(|c| {
            (
                c.id,
                c.stock,
                c.granted,
                c.remaining,
                c.state.as_str().to_owned(),
            )
        })
        .collect()
}

async fn apply_catalog_inserts_new_campaigns_and_coupons(conn: &mut Conn) {
    let wanted = two_campaigns();
    let changes = conn.apply_catalog(&wanted, at(0)).await.unwrap();
    assert_eq!(
        changes,
        CatalogChanges {
            campaigns_added: owned(&["newcomer", "loyalty"]),
            coupons_added: owned(&["NEW10", "NEW8", "BACK5"]),
            restocked: vec![],
            removed: vec![],
        }
    );
    let active = |id: &str, n| (id.to_owned(), n, 0, n, "active".to_owned());
    assert_eq!(
        chain(conn).await,
        [
            active("BACK5", 50),
            active("NEW10", 10),
            active("NEW8", 100)
        ]
    );
    assert_eq!(
        conn.campaign_budgets().await.unwrap(),
        [
            budget("loyalty", None, 0),
            budget("newcomer", Some(5000), 0)
        ]
    );
    let again = conn.apply_catalog(&wanted, at(1)).await.unwrap();
    assert_eq!(again, CatalogChanges::default(), "nothing changed");
}
conformance!(apply_catalog_inserts_new_campaigns_and_coupons);

/// It reads the coupons, then writes; a client committing in between (a reload while
/// requests come in) must not fail it.
async fn apply_catalog_completes_while_a_client_commits_a_request(url: &str) {
    let daemon = migrated(url).await;
    let wanted = two_campaigns();
    let changes = while_a_client_commits(&daemon, url, async |conn| {
        conn.apply_catalog(&wanted, at(0)).await
    })
    .await;
    assert_eq!(changes.unwrap().campaigns_added.len(), 2);
}
conformance!(url: apply_catalog_completes_while_a_client_commits_a_request);

async fn apply_catalog_moves_stock_by_the_config_change_and_never_below_zero(conn: &mut Conn) {
    let with_stock = |n| [campaign("newcomer", None, &[("NEW10", n)])];
    conn.apply_catalog(&with_stock(10), at(0)).await.unwrap();
    conn.take_stock("NEW10", 4).await.unwrap();
    let raised = conn.apply_catalog(&with_stock(15), at(1)).await.unwrap();
    assert_eq!(raised.restocked, [("NEW10".to_owned(), 5)]);
    let new10 = |stock, remaining| ("NEW10".to_owned(), stock, 4, remaining, "active".to_owned());
    assert_eq!(chain(conn).await, [new10(15, 11)]);
    // 13 fewer than the 11 that remain: remaining stops at zero, and what was granted
    // stays granted.
    let cut = conn.apply_catalog(&with_stock(2), at(2)).await.unwrap();
    assert_eq!(cut.restocked, [("NEW10".to_owned(), -13)]);
    assert_eq!(chain(conn).await, [new10(4, 0)]);
}
conformance!(apply_catalog_moves_stock_by_the_config_change_and_never_below_zero);

async fn apply_catalog_removes_coupons_left_out_and_brings_them_back_active(conn: &mut Conn) {
    let both = [campaign("newcomer", None, &[("NEW10", 10), ("NEW8", 20)])];
    let one = [campaign("newcomer", None, &[("NEW8", 20)])];
    conn.apply_catalog(&both, at(0)).await.unwrap();
    let dropped = conn.apply_catalog(&one, at(1)).await.unwrap();
    assert_eq!(dropped.removed, owned(&["NEW10"]));
    assert_eq!(conn.coupon_stock().await.unwrap().len(), 1);
    assert!(conn
        .apply_catalog(&one, at(2))
        .await
        .unwrap()
        .removed
        .is_empty());
    conn.set_coupon_state("NEW8", CouponState::Retired, at(3))
        .await
        .unwrap();
    conn.apply_catalog(&both, at(4)).await.unwrap();
    let states: Vec<String> = chain(conn).await.into_iter().map(|c| c.4).collect();
    assert_eq!(
        states,
        ["active", "retired"],
        "NEW10 back, NEW8 still retired"
    );
}
conformance!(apply_catalog_removes_coupons_left_out_and_brings_them_back_active);

async fn apply_catalog_recounts_a_budgets_granted_value_from_the_ledger(conn: &mut Conn) {
    conn.apply_catalog(&[campaign("newcomer", None, &[("NEW10", 10)])], at(0))
        .await
        .unwrap();
    let ids = queue_requests(conn, &["a", "b"]).await;
    let grants = [
        grant(ids[0], "u1", ("newcomer", "NEW10"), at(1)),
        grant(ids[1], "u2", ("newcomer", "NEW10"), at(2)),
    ];
    conn.record_grants(&grants).await.unwrap();
    let budgeted = [campaign("newcomer", Some(10_000), &[("NEW10", 10)])];
    conn.apply_catalog(&budgeted, at(3)).await.unwrap();
    assert_eq!(
        conn.campaign_budgets().await.unwrap(),
        [budget("newcomer", Some(10_000), 2000)]
    );
}
conformance!(apply_catalog_recounts_a_budgets_granted_value_from_the_ledger);

/// Locked (inside the grant transaction) or not, the same rows; the locks themselves
/// exist only on MySQL.
async fn budgets_reads_the_campaigns_asked_that_have_a_budget(conn: &mut Conn) {
    let wanted = [
        campaign("newcomer", Some(5000), &[("NEW10", 10)]),
        campaign("loyalty", None, &[("BACK5", 30)]),
        campaign("autumn", Some(900), &[("FALL3", 30)]),
        campaign("winter", Some(100), &[("SNOW1", 30)]),
    ];
    conn.apply_catalog(&wanted, at(0)).await.unwrap();
    let asked = owned(&["newcomer", "loyalty", "autumn"]);
    let snapshot = conn.budgets(&asked, false).await.unwrap();
    assert_eq!(
        snapshot,
        [
            budget("autumn", Some(900), 0),
            budget("newcomer", Some(5000), 0)
        ]
    );
    let locked = conn
        .transaction::<_, Error, _>(async |conn| conn.budgets(&asked, true).await)
        .await
        .unwrap();
    assert_eq!(locked, snapshot);
}
conformance!(budgets_reads_the_campaigns_asked_that_have_a_budget);

async fn add_granted_value_adds_up_to_the_budget_and_no_further(conn: &mut Conn) {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
    assert!(conn.add_granted_value("newcomer", 3000).await.unwrap());
    assert!(
        conn.add_granted_value("newcomer", 2000).await.unwrap(),
        "up to the cap"
    );
    assert!(!conn.add_granted_value("newcomer", 1).await.unwrap());
    assert!(
        conn.add_granted_value("loyalty", 1_000_000).await.unwrap(),
        "no budget, no cap"
    );
    assert!(!conn.add_granted_value("nosuch", 1).await.unwrap());
    assert_eq!(
        conn.campaign_budgets().await.unwrap(),
        [
            budget("loyalty", None, 1_000_000),
            budget("newcomer", Some(5000), 5000)
        ]
    );
}
conformance!(add_granted_value_adds_up_to_the_budget_and_no_further);
