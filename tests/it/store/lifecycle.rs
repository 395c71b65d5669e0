//! `store::lifecycle`, and what a revocation gives back in `coupons`, `campaigns` and
//! `campaign_days`.

use chrono::NaiveDateTime;
use couponsd::domain::lifecycle::{Cause, GrantRecord, Transition};
use couponsd::domain::GrantState;
use couponsd::store::Conn;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};

use super::{at, grant, queue_requests, two_campaigns, PlainSql};

/// The catalog of `two_campaigns` and three grants: u1 NEW10 with code C1 expiring at
/// 100, u2 BACK5 without a code, u3 NEW10 with code C3. Returns their ids.
async fn three_grants(conn: &mut Conn) -> Vec<i64> {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
    let ids = queue_requests(conn, &["a", "b", "c"]).await;
    let mut first = grant(ids[0], "u1", ("newcomer", "NEW10"), at(1));
    first.code = Some("C1".into());
    first.expires_at = Some(at(100));
    let second = grant(ids[1], "u2", ("loyalty", "BACK5"), at(2));
    let mut third = grant(ids[2], "u3", ("newcomer", "NEW10"), at(3));
    third.code = Some("C3".into());
    conn.record_grants(&[first, second, third]).await.unwrap();
    ids
}

#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
struct StateRow {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Timestamp>)]
    redeemed_at: Option<NaiveDateTime>,
}

async fn states(conn: &mut Conn) -> Vec<(String, Option<NaiveDateTime>)> {
    let rows: Vec<StateRow> = conn
        .rows("SELECT state, redeemed_at FROM grants ORDER BY id")
        .await;
    rows.into_iter().map(|r| (r.state, r.redeemed_at)).collect()
}

async fn grants_by_id_reads_grants_in_id_order_with_their_channel(conn: &mut Conn) {
    let ids = three_grants(conn).await;
    let wanted = [ids[2], ids[0], 999];
    let read = conn.grants_by_id(&wanted, false).await.unwrap();
    let locked = conn
        .transaction::<_, Error, _>(async |conn| conn.grants_by_id(&wanted, true).await)
        .await
        .unwrap();
    assert_eq!(read, locked);
    assert_eq!(read.len(), 2, "an unknown id is left out");
    assert_eq!((read[0].id, read[1].id), (ids[0], ids[2]));
    let first = &read[0];
    assert_eq!(
        (
            first.user_id.as_str(),
            first.coupon_id.as_str(),
            first.channel.as_str()
        ),
        ("u1", "NEW10", "wallet")
    );
    assert_eq!(first.code.as_deref(), Some("C1"));
    assert_eq!(first.expires_at, Some(at(100)));
    assert_eq!(
        (first.state, first.redeemed_at),
        (GrantState::Granted, None)
    );
    assert!(conn.grants_by_id(&[], true).await.unwrap().is_empty());
    // A channel the caller knows is taken as given; the others are read.
    let known = std::collections::HashMap::from([("NEW10".to_owned(), "push".to_owned())]);
    let told = conn
        .grants_by_id_with(&wanted, false, &known)
        .await
        .unwrap();
    assert_eq!(told[0].channel, "push");
    let unknown: Vec<&GrantRecord> = read.iter().filter(|g| g.coupon_id != "NEW10").collect();
    for grant in unknown {
        let same = told.iter().find(|t| t.id == grant.id).unwrap();
        assert_eq!(same.channel, grant.channel);
    }
}
conformance!(grants_by_id_reads_grants_in_id_order_with_their_channel);

async fn grant_ids_by_code_finds_the_grant_holding_each_code(conn: &mut Conn) {
    let ids = three_grants(conn).await;
    let codes = ["C3", "nope", "C1"].map(String::from);
    let mut found = conn.grant_ids_by_code(&codes).await.unwrap();
    found.sort();
    assert_eq!(
        found,
        [("C1".to_owned(), ids[0]), ("C3".to_owned(), ids[2])]
    );
    assert!(conn.grant_ids_by_code(&[]).await.unwrap().is_empty());
}
conformance!(grant_ids_by_code_finds_the_grant_holding_each_code);

async fn grants_by_code_locked_resolves_and_reads_the_grants_of_the_codes(conn: &mut Conn) {
    let ids = three_grants(conn).await;
    let codes = ["C3", "nope", "C1"].map(String::from);
    let none = std::collections::HashMap::new();
    let (mut held, mut locked) = conn
        .transaction::<_, Error, _>(async |conn| conn.grants_by_code_locked(&codes, &none).await)
        .await
        .unwrap();
    held.sort();
    assert_eq!(held, [("C1".to_owned(), ids[0]), ("C3".to_owned(), ids[2])]);
    locked.sort_by_key(|g| g.id);
    let by_id = conn.grants_by_id(&[ids[0], ids[2]], false).await.unwrap();
    assert_eq!(locked, by_id, "the same records, channels included");
    let (held, locked) = conn.grants_by_code_locked(&[], &none).await.unwrap();
    assert!(held.is_empty() && locked.is_empty());
}
conformance!(grants_by_code_locked_resolves_and_reads_the_grants_of_the_codes);

async fn set_grant_states_moves_only_the_grants_still_in_the_state_named(conn: &mut Conn) {
    use GrantState::*;
    let ids = three_grants(conn).await;
    let moved = conn
        .set_grant_states(&ids[..2], (Granted, Redeemed), at(10))
        .await
        .unwrap();
    assert_eq!(moved, 2);
    // Guarded: the first is no longer granted.
    let again = conn
        .set_grant_states(&[ids[0]], (Granted, Revoked), at(11))
        .await
        .unwrap();
    assert_eq!(again, 0);
    conn.set_grant_states(&[ids[0]], (Redeemed, Granted), at(12))
        .await
        .unwrap();
    conn.set_grant_states(&[ids[1]], (Redeemed, Revoked), at(13))
        .await
        .unwrap();
    conn.set_grant_states(&[ids[2]], (Granted, Expired), at(14))
        .await
        .unwrap();
    let s = |state: &str, at| (state.to_owned(), at);
    assert_eq!(
        states(conn).await,
        [
            s("granted", None),
            s("revoked", Some(at(10))),
            s("expired", None)
        ]
    );
    assert_eq!(
        conn.set_grant_states(&[], (Granted, Redeemed), at(0))
            .await
            .unwrap(),
        0
    );
}
conformance!(set_grant_states_moves_only_the_grants_still_in_the_state_named);

async fn redeem_grants_gives_each_grant_its_own_time_in_one_statement(conn: &mut Conn) {
    use GrantState::*;
    let ids = three_grants(conn).await;
    conn.set_grant_states(&[ids[2]], (Granted, Revoked), at(5))
        .await
        .unwrap();
    // Three times, one grant no longer granted (guarded, not counted), one repeated.
    let redeemed = [(ids[0], at(21)), (ids[1], at(22)), (ids[2], at(23))];
    assert_eq!(conn.redeem_grants(&redeemed, Granted).await.unwrap(), 2);
    let s = |state: &str, at| (state.to_owned(), at);
    assert_eq!(
        states(conn).await,
        [
            s("redeemed", Some(at(21))),
            s("redeemed", Some(at(22))),
            s("revoked", None)
        ]
    );
    // Two chunks (129 pairs): the first WHEN of a grant wins within its chunk.
    let mut many: Vec<(i64, NaiveDateTime)> = (0..128).map(|i| (ids[0], at(30 + i))).collect();
    many.push((ids[1], at(199)));
    assert_eq!(conn.redeem_grants(&many, Redeemed).await.unwrap(), 2);
    assert_eq!(states(conn).await[0], s("redeemed", Some(at(30))));
    assert_eq!(states(conn).await[1], s("redeemed", Some(at(199))));
    assert_eq!(conn.redeem_grants(&[], Granted).await.unwrap(), 0);
}
conformance!(redeem_grants_gives_each_grant_its_own_time_in_one_statement);

#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
struct SizeRow {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

/// Each grant's state and the bytes its record gives `state`, `redeemed_at` (8 when
/// set) and `redemption_room` together.
async fn sizes(conn: &mut Conn) -> Vec<(String, i64)> {
    let rows: Vec<SizeRow> = conn
        .rows(
            "SELECT state, LENGTH(state) + CASE WHEN redeemed_at IS NULL THEN 0 ELSE 8 END \
             + COALESCE(LENGTH(redemption_room), 0) AS bytes FROM grants ORDER BY id",
        )
        .await;
    rows.into_iter().map(|r| (r.state, r.bytes)).collect()
}

async fn a_redemption_and_its_return_keep_a_grants_record_its_size(conn: &mut Conn) {
    use GrantState::*;
    let ids = three_grants(conn).await;
    let s = |state: &str, bytes| (state.to_owned(), bytes);
    assert_eq!(
        sizes(conn).await,
        [s("granted", 16), s("granted", 16), s("granted", 16)],
        "a grant is written with the room its redemption fills"
    );
    conn.redeem_grants(&[(ids[0], at(20))], Granted)
        .await
        .unwrap();
    conn.set_grant_states(&[ids[1]], (Granted, Redeemed), at(21))
        .await
        .unwrap();
    assert_eq!(
        sizes(conn).await,
        [s("redeemed", 16), s("redeemed", 16), s("granted", 16)]
    );
    conn.set_grant_states(&ids[..2], (Redeemed, Granted), at(22))
        .await
        .unwrap();
    assert_eq!(
        sizes(conn).await,
        [s("granted", 16), s("granted", 16), s("granted", 16)],
        "the way back to granted gives the room back"
    );
    // Revoked and expired are as long as granted: nothing grows.
    conn.set_grant_states(&[ids[0]], (Granted, Revoked), at(23))
        .await
        .unwrap();
    conn.set_grant_states(&[ids[1]], (Granted, Expired), at(24))
        .await
        .unwrap();
    assert_eq!(
        sizes(conn).await,
        [s("revoked", 16), s("expired", 16), s("granted", 16)]
    );
}
conformance!(a_redemption_and_its_return_keep_a_grants_record_its_size);

#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
struct TransitionRow {
    #[diesel(sql_type = BigInt)]
    grant_id: i64,
    #[diesel(sql_type = Text)]
    from_state: String,
    #[diesel(sql_type = Text)]
    to_state: String,
    #[diesel(sql_type = Nullable<Text>)]
    update_key: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    job: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    operator: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
    #[diesel(sql_type = Timestamp)]
    at: NaiveDateTime,
}

async fn record_transitions_writes_one_row_per_transition_with_its_cause(conn: &mut Conn) {
    let t = |grant_id, (from, to), cause, reason: Option<&str>| Transition {
        grant_id,
        from,
        to,
        cause,
        reason: reason.map(str::to_owned),
        at: at(5).and_utc(),
    };
    use GrantState::*;
    let rows = [
        t(7, (Granted, Redeemed), Cause::Update("u1".into()), None),
        t(
            7,
            (Redeemed, Revoked),
            Cause::Operator("ana".into()),
            Some("fraud"),
        ),
        t(
            8,
            (Granted, Expired),
            Cause::Job("expire_grants".into()),
            None,
        ),
    ];
    assert_eq!(conn.record_transitions(&rows).await.unwrap(), 3);
    assert_eq!(conn.record_transitions(&[]).await.unwrap(), 0);
    let read: Vec<TransitionRow> = conn
        .rows(
            "SELECT grant_id, from_state, to_state, update_key, job, operator, reason, at \
             FROM grant_transitions ORDER BY id",
        )
        .await;
    let row =
        |grant_id, (from, to): (&str, &str), cause: [Option<&str>; 3], reason: Option<&str>| {
            TransitionRow {
                grant_id,
                from_state: from.into(),
                to_state: to.into(),
                update_key: cause[0].map(Into::into),
                job: cause[1].map(Into::into),
                operator: cause[2].map(Into::into),
                reason: reason.map(Into::into),
                at: at(5),
            }
        };
    assert_eq!(
        read,
        [
            row(7, ("granted", "redeemed"), [Some("u1"), None, None], None),
            row(
                7,
                ("redeemed", "revoked"),
                [None, None, Some("ana")],
                Some("fraud")
            ),
            row(
                8,
                ("granted", "expired"),
                [None, Some("expire_grants"), None],
                None
            ),
        ]
    );
}
conformance!(record_transitions_writes_one_row_per_transition_with_its_cause);

async fn give_back_daily_budget_returns_what_a_day_took(conn: &mut Conn) {
    let day = ("newcomer", "2026-12-01");
    assert!(conn.take_daily_budget(day, 1000, 1500).await.unwrap());
    assert!(!conn.take_daily_budget(day, 1000, 1500).await.unwrap());
    assert!(conn.give_back_daily_budget(day, 1000).await.unwrap());
    assert!(conn.take_daily_budget(day, 1000, 1500).await.unwrap());
    // Never below zero: a grant made before the daily budget was never counted.
    assert!(!conn.give_back_daily_budget(day, 1001).await.unwrap());
    // A day that granted nothing has nothing to give back, and no row appears.
    assert!(!conn
        .give_back_daily_budget(("newcomer", "2026-12-02"), 500)
        .await
        .unwrap());
    let wanted = [day, ("newcomer", "2026-12-02")].map(|(c, d)| (c.to_owned(), d.to_owned()));
    assert_eq!(
        conn.granted_on_days(&wanted).await.unwrap(),
        [("newcomer".to_owned(), "2026-12-01".to_owned(), 1000)]
    );
}
conformance!(give_back_daily_budget_returns_what_a_day_took);

async fn stock_of(conn: &mut Conn, id: &str) -> (i64, i64, i64) {
    let all = conn.coupon_stock().await.unwrap();
    let c = all.iter().find(|c| c.id == id).unwrap();
    (c.stock, c.granted, c.remaining)
}

async fn give_back_stock_returns_units_a_coupon_granted(conn: &mut Conn) {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
    assert!(conn.take_stock("NEW10", 3).await.unwrap());
    assert!(conn.give_back_stock("NEW10", 2).await.unwrap());
    assert_eq!(stock_of(conn, "NEW10").await, (10, 1, 9));
    // Guarded: never more than it granted, never an unknown coupon.
    assert!(!conn.give_back_stock("NEW10", 2).await.unwrap());
    assert!(!conn.give_back_stock("NOPE", 1).await.unwrap());
    assert_eq!(stock_of(conn, "NEW10").await, (10, 1, 9));
}
conformance!(give_back_stock_returns_units_a_coupon_granted);

async fn give_back_granted_value_returns_budget_to_a_budgeted_campaign(conn: &mut Conn) {
    conn.apply_catalog(&two_campaigns(), at(0)).await.unwrap();
    assert!(conn.add_granted_value("newcomer", 3000).await.unwrap());
    assert!(conn
        .give_back_granted_value("newcomer", 1000)
        .await
        .unwrap());
    let budgets = conn.budgets(&["newcomer".to_owned()], false).await.unwrap();
    assert_eq!(budgets[0].granted_cents, 2000);
    assert!(!conn
        .give_back_granted_value("newcomer", 2500)
        .await
        .unwrap());
    // `loyalty` has no budget and counts nothing.
    assert!(!conn.give_back_granted_value("loyalty", 1000).await.unwrap());
}
conformance!(give_back_granted_value_returns_budget_to_a_budgeted_campaign);

async fn a_grants_recorded_life_is_read_back_by_user_and_grant(conn: &mut Conn) {
    use GrantState::*;
    let ids = three_grants(conn).await;
    assert_eq!(conn.grant_ids_of_user("u1", 10).await.unwrap(), [ids[0]]);
    assert!(conn
        .grant_ids_of_user("nobody", 10)
        .await
        .unwrap()
        .is_empty());
    conn.set_grant_states(&[ids[0], ids[2]], (Granted, Revoked), at(5))
        .await
        .unwrap();
    assert_eq!(
        conn.revoked_grants_per_coupon().await.unwrap(),
        [("NEW10".to_owned(), 2)]
    );
    let t = |grant_id, to, cause| Transition {
        grant_id,
        from: Granted,
        to,
        cause,
        reason: None,
        at: at(5).and_utc(),
    };
    let rows = [
        t(ids[2], Revoked, Cause::Operator("ana".into())),
        t(ids[0], Revoked, Cause::Update("v".into())),
        t(ids[1], Redeemed, Cause::Update("r".into())),
    ];
    conn.record_transitions(&rows).await.unwrap();
    let read = conn.transitions_of(&[ids[2], ids[0]]).await.unwrap();
    let seen: Vec<(i64, Option<&str>, Option<&str>)> = read
        .iter()
        .map(|r| (r.grant_id, r.update_key.as_deref(), r.operator.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [(ids[0], Some("v"), None), (ids[2], None, Some("ana"))]
    );
    assert_eq!((read[0].to_state.as_str(), read[0].at), ("revoked", at(5)));
    assert!(conn.transitions_of(&[]).await.unwrap().is_empty());
}
conformance!(a_grants_recorded_life_is_read_back_by_user_and_grant);
