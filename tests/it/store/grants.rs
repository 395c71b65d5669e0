//! `store::grants`: the ledger and the per-user lock rows.

use couponsd::domain::{GrantState, PastGrantTime, PastGrants};
use couponsd::store::Conn;
use diesel::result::Error;

use super::{at, grant, queue_requests};

/// Lock rows exist only on MySQL: SQLite has one writer, so a transaction that writes
/// already keeps every other decision out. The shared contract: inside the grant
/// transaction, any list of participants (repeated, unsorted, empty) is taken without
/// error, and the transaction goes on to write.
async fn lock_participants_takes_any_list_inside_the_grant_transaction(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a"]).await;
    let participants = [("u2", "app_open"), ("u1", "app_open"), ("u2", "app_open")]
        .map(|(u, e)| (u.to_owned(), e.to_owned()));
    conn.transaction::<_, Error, _>(async |conn| {
        conn.lock_participants(&participants).await?;
        conn.lock_participants(&participants[..1]).await?;
        conn.lock_participants(&[]).await?;
        conn.record_grants(&[grant(ids[0], "u1", ("c", "C1"), at(0))])
            .await
    })
    .await
    .unwrap();
    assert_eq!(conn.grants_per_coupon().await.unwrap().len(), 1);
}
conformance!(lock_participants_takes_any_list_inside_the_grant_transaction);

async fn record_grants_writes_the_grants_as_given(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b"]).await;
    let rows = [
        grant(ids[0], "u1", ("newcomer", "NEW10"), at(0)),
        grant(ids[1], "u2", ("loyalty", "BACK5"), at(1)),
    ];
    assert_eq!(conn.record_grants(&rows).await.unwrap(), 2);
    assert_eq!(conn.record_grants(&[]).await.unwrap(), 0);
    for row in &rows {
        assert_eq!(
            conn.grant_of_request(row.id).await.unwrap().as_ref(),
            Some(row)
        );
    }
}
conformance!(record_grants_writes_the_grants_as_given);

async fn record_grants_refuses_a_second_grant_for_one_request(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a"]).await;
    let first = grant(ids[0], "u1", ("newcomer", "NEW10"), at(0));
    conn.record_grants(std::slice::from_ref(&first))
        .await
        .unwrap();
    let again = grant(ids[0], "u1", ("newcomer", "NEW8"), at(1));
    assert!(conn.record_grants(&[again]).await.is_err());
    assert_eq!(conn.grant_of_request(ids[0]).await.unwrap(), Some(first));
}
conformance!(record_grants_refuses_a_second_grant_for_one_request);

async fn history_for_counts_each_users_grants_by_event_and_campaign(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b", "c", "d", "e"]).await;
    let rows = [
        grant(ids[0], "u1", ("newcomer", "NEW10"), at(0)),
        grant(ids[1], "u1", ("newcomer", "NEW8"), at(30)),
        grant(ids[2], "u1", ("loyalty", "BACK5"), at(10)),
        grant(ids[3], "u2", ("newcomer", "NEW10"), at(20)),
        grant(ids[4], "u3", ("newcomer", "NEW10"), at(20)),
    ];
    conn.record_grants(&rows).await.unwrap();
    let mut history = conn
        .history_for(&["u1".to_owned(), "u2".to_owned(), "nobody".to_owned()])
        .await
        .unwrap();
    history.sort_by(|a, b| (&a.user_id, &a.campaign_id).cmp(&(&b.user_id, &b.campaign_id)));
    let row = |user: &str, campaign: &str, grants, last| PastGrants {
        user_id: user.to_owned(),
        event: "app_open".to_owned(),
        campaign_id: campaign.to_owned(),
        grants,
        last_grant_at: Some(last),
        ..PastGrants::default()
    };
    assert_eq!(
        history,
        [
            row("u1", "loyalty", 1, at(10)),
            row("u1", "newcomer", 2, at(30)),
            row("u2", "newcomer", 1, at(20)),
        ]
    );
}
conformance!(history_for_counts_each_users_grants_by_event_and_campaign);

async fn history_for_leaves_revoked_grants_out_and_counts_the_redeemed(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b", "c", "d"]).await;
    let rows = [
        grant(ids[0], "u1", ("newcomer", "NEW10"), at(0)),
        grant(ids[1], "u1", ("newcomer", "NEW10"), at(10)),
        grant(ids[2], "u1", ("newcomer", "NEW10"), at(20)),
        grant(ids[3], "u1", ("loyalty", "BACK5"), at(30)),
    ];
    conn.record_grants(&rows).await.unwrap();
    let (granted, redeemed, revoked) = (
        GrantState::Granted,
        GrantState::Redeemed,
        GrantState::Revoked,
    );
    conn.set_grant_states(&ids[..2], (granted, redeemed), at(40))
        .await
        .unwrap();
    conn.set_grant_states(&ids[2..], (granted, revoked), at(50))
        .await
        .unwrap();
    let history = conn.history_for(&["u1".to_owned()]).await.unwrap();
    assert_eq!(
        history,
        [PastGrants {
            user_id: "u1".to_owned(),
            event: "app_open".to_owned(),
            campaign_id: "newcomer".to_owned(),
            grants: 2,
            last_grant_at: Some(at(10)),
            redeemed: 2,
            last_redeemed_at: Some(at(40)),
        }],
        "the revoked grants (newcomer's third, loyalty's only one) are not there"
    );
}
conformance!(history_for_leaves_revoked_grants_out_and_counts_the_redeemed);

async fn grant_times_lists_the_grants_that_count_after_a_time(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b", "c", "d", "e"]).await;
    let rows = [
        grant(ids[0], "u1", ("loyalty", "BACK5"), at(0)),
        grant(ids[1], "u1", ("loyalty", "BACK5"), at(10)),
        grant(ids[2], "u1", ("loyalty", "BACK5"), at(20)),
        grant(ids[3], "u1", ("newcomer", "NEW10"), at(30)),
        grant(ids[4], "u2", ("loyalty", "BACK5"), at(30)),
    ];
    conn.record_grants(&rows).await.unwrap();
    conn.set_grant_states(
        &ids[2..3],
        (GrantState::Granted, GrantState::Revoked),
        at(40),
    )
    .await
    .unwrap();
    let users = ["u1".to_owned(), "nobody".to_owned()];
    let times = conn
        .grant_times(&users, &["loyalty".to_owned()], at(0))
        .await
        .unwrap();
    assert_eq!(
        times,
        [PastGrantTime {
            user_id: "u1".to_owned(),
            event: "app_open".to_owned(),
            campaign_id: "loyalty".to_owned(),
            granted_at: at(10),
        }],
        "after at(0), not at it; not revoked; only the campaigns and users asked for"
    );
    assert!(conn
        .grant_times(&users, &[], at(0))
        .await
        .unwrap()
        .is_empty());
}
conformance!(grant_times_lists_the_grants_that_count_after_a_time);

async fn grants_per_coupon_counts_grants_by_campaign_and_coupon(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b", "c"]).await;
    let rows = [
        grant(ids[0], "u1", ("newcomer", "NEW8"), at(0)),
        grant(ids[1], "u2", ("newcomer", "NEW10"), at(0)),
        grant(ids[2], "u3", ("newcomer", "NEW8"), at(0)),
    ];
    conn.record_grants(&rows).await.unwrap();
    let coupon = |coupon: &str, n| ("newcomer".to_owned(), coupon.to_owned(), n);
    assert_eq!(
        conn.grants_per_coupon().await.unwrap(),
        [coupon("NEW10", 1), coupon("NEW8", 2)]
    );
}
conformance!(grants_per_coupon_counts_grants_by_campaign_and_coupon);

async fn grants_since_counts_grants_from_a_time_on_with_the_first(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b", "c", "d"]).await;
    let rows = [
        grant(ids[0], "u1", ("newcomer", "NEW10"), at(0)),
        grant(ids[1], "u2", ("newcomer", "NEW10"), at(10)),
        grant(ids[2], "u3", ("newcomer", "NEW10"), at(20)),
        grant(ids[3], "u4", ("newcomer", "NEW8"), at(5)),
    ];
    conn.record_grants(&rows).await.unwrap();
    assert_eq!(
        conn.grants_since(at(10)).await.unwrap(),
        [("NEW10".to_owned(), 2, Some(at(10)))]
    );
}
conformance!(grants_since_counts_grants_from_a_time_on_with_the_first);
