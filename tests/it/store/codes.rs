//! `store::codes`: the codes users redeem. A pool coupon's codes are imported, drawn
//! and issued; a generated code is written at its grant; both count, and a pool
//! coupon's stock is trued up to its unissued codes.

use std::collections::HashSet;

use chrono::NaiveDateTime;
use couponsd::config::CampaignConfig;
use couponsd::domain::codes::{CodePattern, CodeSource};
use couponsd::store::codes::import::{ChunkImport, PoolStock};
use couponsd::store::codes::{is_duplicate, CodeCounts, IssuedCode};
use couponsd::store::Conn;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};

use super::{at, campaign, grant, queue_requests, two_campaigns, PlainSql};

/// The catalog of [`two_campaigns`] and two campaigns with codes: `pools` with the pool
/// coupons POOL and OTHER (no stock until an import), `generated` with GEN (100 in
/// stock, codes `GEN-XXXX`).
async fn catalog(conn: &mut Conn) {
    let with_codes = |mut c: CampaignConfig, codes: CodeSource| {
        for coupon in &mut c.coupons {
            coupon.codes = Some(codes.clone());
        }
        c
    };
    let pools = with_codes(
        campaign("pools", None, &[("POOL", 0), ("OTHER", 0)]),
        CodeSource::Pool,
    );
    let pattern = CodePattern::parse("GEN-XXXX").unwrap();
    let generated = with_codes(
        campaign("generated", None, &[("GEN", 100)]),
        CodeSource::Generate(pattern),
    );
    let [newcomer, loyalty] = two_campaigns();
    conn.apply_catalog(&[newcomer, loyalty, pools, generated], at(0))
        .await
        .unwrap();
}

fn strings(codes: &[&str]) -> Vec<String> {
    codes.iter().map(|c| (*c).to_owned()).collect()
}

/// Imports `codes` (all new) into the pool coupon `coupon` at `at(seconds)`.
async fn import(conn: &mut Conn, coupon: &str, codes: &[&str], seconds: i64) {
    let done = conn
        .import_chunk(coupon, &strings(codes), at(seconds))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no coupon {coupon}"));
    assert_eq!(done.imported, codes.len(), "every code is new");
}

/// `draw_codes` inside a transaction, as the grant step calls it.
async fn draw(conn: &mut Conn, coupon: &str, count: i64) -> Vec<(i64, String)> {
    let mut both = Vec::new();
    for skip_locked in [true, false] {
        both.push(
            conn.transaction::<_, Error, _>(async |conn| {
                conn.draw_codes(coupon, (0, count), skip_locked).await
            })
            .await
            .unwrap(),
        );
    }
    let waiting = both.pop().unwrap();
    assert_eq!(
        both[0], waiting,
        "skipping or waiting, the same rows when none is held"
    );
    waiting
}

/// The codes of [`draw`], without their ids.
async fn draw_codes(conn: &mut Conn, coupon: &str, count: i64) -> Vec<String> {
    let drawn = draw(conn, coupon, count).await;
    drawn.into_iter().map(|(_, code)| code).collect()
}

/// Draws `count` codes of a pool coupon and issues them to the grants `first_grant`,
/// `first_grant + 1`, … at `at(seconds)`, in one write transaction, as the grant step
/// does; returns what it issued.
async fn draw_and_issue(
    conn: &mut Conn,
    coupon: &str,
    count: i64,
    first_grant: i64,
    seconds: i64,
) -> Vec<IssuedCode> {
    conn.write_transaction::<_, Error, _>(async |conn| {
        let drawn = conn.draw_codes(coupon, (0, count), true).await?;
        let issued: Vec<IssuedCode> = (first_grant..)
            .zip(drawn)
            .map(|(grant_id, (id, code))| IssuedCode {
                id: Some(id),
                coupon_id: coupon.to_owned(),
                code,
                grant_id: Some(grant_id),
                issued_at: Some(at(seconds)),
            })
            .collect();
        conn.issue_pool_codes(&issued).await?;
        Ok(issued)
    })
    .await
    .unwrap()
}

/// A generated code of `coupon` issued to `grant_id` at `at(seconds)`.
fn generated(coupon: &str, code: &str, grant_id: i64, seconds: i64) -> IssuedCode {
    IssuedCode {
        id: None,
        coupon_id: coupon.to_owned(),
        code: code.to_owned(),
        grant_id: Some(grant_id),
        issued_at: Some(at(seconds)),
    }
}

/// One row of `coupon_codes` as read back.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
struct CodeRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    coupon_id: String,
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    grant_id: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    imported_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    issued_at: Option<NaiveDateTime>,
}

/// Every row of `coupon_codes`, by id.
async fn code_rows(conn: &mut Conn) -> Vec<CodeRow> {
    conn.rows(
        "SELECT id, coupon_id, code, grant_id, imported_at, issued_at \
         FROM coupon_codes ORDER BY id",
    )
    .await
}

/// The row of `code`.
async fn row_of(conn: &mut Conn, code: &str) -> CodeRow {
    let rows = code_rows(conn).await;
    rows.into_iter()
        .find(|r| r.code == code)
        .unwrap_or_else(|| panic!("no row for {code}"))
}

/// The stock of one coupon: (stock, granted, remaining).
async fn stock_of(conn: &mut Conn, id: &str) -> (i64, i64, i64) {
    let all = conn.coupon_stock().await.unwrap();
    let c = all.iter().find(|c| c.id == id).unwrap();
    (c.stock, c.granted, c.remaining)
}

fn counts(available: i64, issued: i64) -> CodeCounts {
    CodeCounts { available, issued }
}

fn set(codes: &[&str]) -> HashSet<String> {
    codes.iter().map(|c| (*c).to_owned()).collect()
}

/// Ids in the order of insertion, codes not: the draw follows the ids, and another
/// coupon's rows in between are skipped.
async fn draw_codes_takes_the_first_unissued_codes_of_the_coupon_in_id_order(conn: &mut Conn) {
    catalog(conn).await;
    assert_eq!(draw(conn, "POOL", 5).await, [], "no codes yet");
    import(conn, "POOL", &["P-C", "P-A"], 1).await;
    import(conn, "OTHER", &["O-1", "O-2"], 2).await;
    import(conn, "POOL", &["P-B", "P-D"], 3).await;
    assert_eq!(draw_codes(conn, "POOL", 3).await, ["P-C", "P-A", "P-B"]);
    let all = draw(conn, "POOL", 10).await;
    let codes: Vec<&str> = all.iter().map(|(_, code)| code.as_str()).collect();
    assert_eq!(
        codes,
        ["P-C", "P-A", "P-B", "P-D"],
        "fewer when fewer are left"
    );
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "ids ascend: {all:?}"
    );
    for (id, code) in &all {
        assert_eq!(row_of(conn, code).await.id, *id, "the row id of {code}");
    }
    assert_eq!(draw(conn, "POOL", 0).await, []);
    assert_eq!(draw_codes(conn, "OTHER", 10).await, ["O-1", "O-2"]);
    assert_eq!(draw(conn, "NOSUCH", 10).await, []);
    assert_eq!(
        draw_codes(conn, "POOL", 2).await,
        ["P-C", "P-A"],
        "a draw alone issues nothing"
    );
}
conformance!(draw_codes_takes_the_first_unissued_codes_of_the_coupon_in_id_order);

async fn draw_codes_skips_the_codes_already_issued(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["P-1", "P-2", "P-3", "P-4"], 1).await;
    draw_and_issue(conn, "POOL", 1, 101, 5).await;
    assert_eq!(draw_codes(conn, "POOL", 2).await, ["P-2", "P-3"]);
    draw_and_issue(conn, "POOL", 2, 102, 6).await;
    assert_eq!(draw_codes(conn, "POOL", 5).await, ["P-4"]);
    draw_and_issue(conn, "POOL", 5, 104, 7).await;
    assert_eq!(draw(conn, "POOL", 5).await, [], "every code issued");
    conn.insert_generated_codes(&[generated("GEN", "GEN-AAAA", 200, 8)])
        .await
        .unwrap();
    assert_eq!(draw(conn, "GEN", 5).await, [], "a generated code is issued");
}
conformance!(draw_codes_skips_the_codes_already_issued);

/// `POOL`'s codes drawn past `after`, inside a transaction.
async fn draw_from(conn: &mut Conn, after: i64, count: i64) -> Vec<String> {
    let rows = conn
        .transaction::<_, Error, _>(async |conn| {
            conn.draw_codes("POOL", (after, count), true).await
        })
        .await
        .unwrap();
    rows.into_iter().map(|(_, code)| code).collect()
}

/// The grant step starts a draw past the last code it drew: the codes at or below
/// `after` are passed over, issued or not, and a start past every code draws none.
async fn draw_codes_starts_past_the_given_id(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["P-1", "P-2", "P-3", "P-4"], 1).await;
    let ids: Vec<i64> = draw(conn, "POOL", 4).await.iter().map(|r| r.0).collect();
    assert_eq!(draw_from(conn, ids[1], 5).await, ["P-3", "P-4"]);
    assert_eq!(draw_from(conn, ids[0], 1).await, ["P-2"]);
    assert_eq!(draw_from(conn, ids[3], 5).await, Vec::<String>::new());
    draw_and_issue(conn, "POOL", 3, 101, 5).await;
    assert_eq!(
        draw_from(conn, 0, 5).await,
        ["P-4"],
        "from the start: the one left"
    );
    assert_eq!(draw_from(conn, ids[3], 5).await, Vec::<String>::new());
}
conformance!(draw_codes_starts_past_the_given_id);

async fn issue_pool_codes_marks_the_drawn_rows_issued_to_their_grants(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["P-1", "P-2", "P-3"], 1).await;
    import(conn, "OTHER", &["O-1"], 2).await;
    let before = code_rows(conn).await;
    let issued = draw_and_issue(conn, "POOL", 2, 101, 5).await;
    assert_eq!(issued.len(), 2);
    let after = code_rows(conn).await;
    assert_eq!(after.len(), before.len(), "no row added");
    for (was, row) in before.iter().zip(&after) {
        let expected = match row.code.as_str() {
            "P-1" => (Some(101), Some(at(5))),
            "P-2" => (Some(102), Some(at(5))),
            _ => (None, None),
        };
        assert_eq!((row.grant_id, row.issued_at), expected, "{}", row.code);
        assert_eq!(
            (row.id, &row.coupon_id, &row.code, row.imported_at),
            (was.id, &was.coupon_id, &was.code, was.imported_at),
            "the rest of {} as imported",
            was.code
        );
    }
    assert_eq!(draw_codes(conn, "POOL", 5).await, ["P-3"]);
    conn.issue_pool_codes(&[]).await.unwrap();
    assert_eq!(
        code_rows(conn).await,
        after,
        "issuing nothing changes nothing"
    );
}
conformance!(issue_pool_codes_marks_the_drawn_rows_issued_to_their_grants);

/// The grant step issues the codes of all its pool coupons in one call, more than one
/// statement's worth (a statement takes up to 128) included; a code passed twice, in one
/// statement or in two, fails it all.
async fn issue_pool_codes_issues_the_codes_of_several_pools_at_once(conn: &mut Conn) {
    catalog(conn).await;
    let names: Vec<String> = (0..150).map(|i| format!("P-{i:03}")).collect();
    let pool: Vec<&str> = names.iter().map(String::as_str).collect();
    import(conn, "POOL", &pool, 1).await;
    import(conn, "OTHER", &["O-1", "O-2"], 2).await;
    let issue = |drawn: Vec<(i64, String)>, coupon: &str, first_grant: i64| {
        (first_grant..)
            .zip(drawn)
            .map(|(grant_id, (id, code))| IssuedCode {
                id: Some(id),
                coupon_id: coupon.to_owned(),
                code,
                grant_id: Some(grant_id),
                issued_at: Some(at(7)),
            })
            .collect::<Vec<_>>()
    };
    let mut codes = issue(draw(conn, "OTHER", 1).await, "OTHER", 1000);
    codes.extend(issue(draw(conn, "POOL", 140).await, "POOL", 2000));
    let before = code_rows(conn).await;
    let mut again = codes.clone();
    again.push(codes[0].clone());
    for refused in [again, [codes[..1].to_vec(), codes.clone()].concat()] {
        let outcome = conn
            .write_transaction::<_, Error, _>(async |conn| conn.issue_pool_codes(&refused).await)
            .await;
        assert!(outcome.is_err(), "a code issued twice in one call");
        assert_eq!(code_rows(conn).await, before, "nothing written");
    }
    conn.write_transaction::<_, Error, _>(async |conn| conn.issue_pool_codes(&codes).await)
        .await
        .unwrap();
    let issued: Vec<(String, Option<i64>)> = code_rows(conn)
        .await
        .into_iter()
        .filter(|r| r.issued_at == Some(at(7)))
        .map(|r| (r.code, r.grant_id))
        .collect();
    let expected: Vec<(String, Option<i64>)> =
        codes.iter().map(|c| (c.code.clone(), c.grant_id)).collect();
    let mut issued_sorted = issued.clone();
    issued_sorted.sort();
    let mut expected_sorted = expected;
    expected_sorted.sort();
    assert_eq!(issued_sorted, expected_sorted, "each code to its grant");
    assert_eq!(
        draw_codes(conn, "POOL", 20).await.len(),
        10,
        "P-140 to P-149 left"
    );
    assert_eq!(draw_codes(conn, "OTHER", 5).await, ["O-2"]);
}
conformance!(issue_pool_codes_issues_the_codes_of_several_pools_at_once);

/// The draw under the coupon's row lock never hands out an issued row; should a caller
/// pass one anyway (or a row id that is not in the pool), the operation fails and the
/// caller's transaction writes nothing, on either backend.
async fn issue_pool_codes_refuses_a_code_already_issued_or_not_in_the_pool(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["P-1", "P-2"], 1).await;
    let issued = draw_and_issue(conn, "POOL", 1, 101, 5).await;
    let unissued = draw(conn, "POOL", 1).await;
    let before = code_rows(conn).await;
    let pool_code = |(id, code): (i64, String), grant_id| IssuedCode {
        id: Some(id),
        coupon_id: "POOL".to_owned(),
        code,
        grant_id: Some(grant_id),
        issued_at: Some(at(9)),
    };
    let again = pool_code((issued[0].id.unwrap(), "P-1".to_owned()), 201);
    let fresh = pool_code(unissued[0].clone(), 202);
    let missing = pool_code((77, "GHOST".to_owned()), 203);
    let misnumbered = pool_code((77, unissued[0].1.clone()), 204);
    for codes in [
        vec![again.clone()],
        vec![fresh.clone(), again],
        vec![missing.clone()],
        vec![fresh, missing],
        vec![misnumbered],
    ] {
        let outcome = conn
            .write_transaction::<_, Error, _>(async |conn| conn.issue_pool_codes(&codes).await)
            .await;
        let asked: Vec<(&str, Option<i64>)> = codes
            .iter()
            .map(|c| (c.code.as_str(), c.grant_id))
            .collect();
        assert!(outcome.is_err(), "{asked:?} was issued");
        assert_eq!(code_rows(conn).await, before, "{asked:?}: nothing written");
    }
}
conformance!(issue_pool_codes_refuses_a_code_already_issued_or_not_in_the_pool);

async fn insert_generated_codes_writes_issued_codes(conn: &mut Conn) {
    catalog(conn).await;
    let rows = [
        generated("GEN", "GEN-AAAA", 101, 5),
        generated("GEN", "GEN-BBBB", 102, 6),
    ];
    assert_eq!(conn.insert_generated_codes(&rows).await.unwrap(), 2);
    assert_eq!(conn.insert_generated_codes(&[]).await.unwrap(), 0);
    let written: Vec<(String, String, Option<i64>, Option<NaiveDateTime>)> = code_rows(conn)
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.imported_at, None, "{} is not imported", r.code);
            (r.coupon_id, r.code, r.grant_id, r.issued_at)
        })
        .collect();
    assert_eq!(
        written,
        [
            ("GEN".into(), "GEN-AAAA".into(), Some(101), Some(at(5))),
            ("GEN".into(), "GEN-BBBB".into(), Some(102), Some(at(6))),
        ]
    );
}
conformance!(insert_generated_codes_writes_issued_codes);

/// The grant step inserts one power-of-two chunk per statement and draws the chunk
/// again on a duplicate: a failed statement must leave none of its rows.
async fn insert_generated_codes_refuses_a_code_that_exists_under_any_coupon(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["SHARED-1"], 1).await;
    conn.insert_generated_codes(&[generated("GEN", "GEN-AAAA", 101, 5)])
        .await
        .unwrap();
    let before = code_rows(conn).await;
    for repeated in ["SHARED-1", "GEN-AAAA"] {
        for (first, second) in [("GEN-NEW1", repeated), (repeated, "GEN-NEW1")] {
            let rows = [
                generated("GEN", first, 102, 6),
                generated("GEN", second, 103, 6),
            ];
            let error = conn.insert_generated_codes(&rows).await.unwrap_err();
            assert!(is_duplicate(&error), "{repeated}: {error:?}");
            assert_eq!(code_rows(conn).await, before, "{first}, {second}: no row");
        }
    }
    let again = [generated("NEW10", "GEN-AAAA", 104, 6)];
    let error = conn.insert_generated_codes(&again).await.unwrap_err();
    assert!(is_duplicate(&error), "under another coupon: {error:?}");
    let other_grant = [generated("GEN", "GEN-CCCC", 101, 6)];
    let error = conn.insert_generated_codes(&other_grant).await.unwrap_err();
    assert!(is_duplicate(&error), "a grant holds one code: {error:?}");
    assert_eq!(code_rows(conn).await, before);
}
conformance!(insert_generated_codes_refuses_a_code_that_exists_under_any_coupon);

async fn code_counts_counts_available_and_issued_codes_per_coupon(conn: &mut Conn) {
    catalog(conn).await;
    assert_eq!(conn.code_counts().await.unwrap(), []);
    assert_eq!(conn.code_counts_of("POOL").await.unwrap(), counts(0, 0));
    import(conn, "POOL", &["P-1", "P-2", "P-3"], 1).await;
    import(conn, "OTHER", &["O-1"], 2).await;
    draw_and_issue(conn, "POOL", 2, 101, 5).await;
    conn.insert_generated_codes(&[
        generated("GEN", "GEN-AAAA", 103, 6),
        generated("GEN", "GEN-BBBB", 104, 6),
    ])
    .await
    .unwrap();
    assert_eq!(
        conn.code_counts().await.unwrap(),
        [
            ("GEN".to_owned(), counts(0, 2)),
            ("OTHER".to_owned(), counts(1, 0)),
            ("POOL".to_owned(), counts(1, 2)),
        ],
        "by coupon id; coupons without codes left out"
    );
    for (coupon, expected) in [
        ("GEN", counts(0, 2)),
        ("OTHER", counts(1, 0)),
        ("POOL", counts(1, 2)),
        ("NEW10", counts(0, 0)),
        ("NOSUCH", counts(0, 0)),
    ] {
        assert_eq!(
            conn.code_counts_of(coupon).await.unwrap(),
            expected,
            "{coupon}"
        );
    }
}
conformance!(code_counts_counts_available_and_issued_codes_per_coupon);

async fn true_up_pool_sets_remaining_to_the_unissued_codes(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["P-1", "P-2", "P-3"], 1).await;
    assert!(conn.take_stock("POOL", 1).await.unwrap());
    draw_and_issue(conn, "POOL", 1, 101, 5).await;
    assert_eq!(stock_of(conn, "POOL").await, (3, 1, 2), "in step");
    let true_up = async |conn: &mut Conn, coupon: &str| {
        conn.write_transaction::<_, Error, _>(async |conn| conn.true_up_pool(coupon).await)
            .await
            .unwrap()
    };
    assert_eq!(
        true_up(conn, "POOL").await,
        Some((2, 2)),
        "nothing to correct"
    );
    conn.exec("UPDATE coupons SET stock = 7, remaining = 6 WHERE id = 'POOL'")
        .await;
    assert_eq!(true_up(conn, "POOL").await, Some((6, 2)));
    assert_eq!(
        stock_of(conn, "POOL").await,
        (3, 1, 2),
        "stock is granted + remaining"
    );
    conn.exec("UPDATE coupons SET stock = 1, remaining = 0 WHERE id = 'POOL'")
        .await;
    assert_eq!(true_up(conn, "POOL").await, Some((0, 2)), "short, too");
    assert_eq!(stock_of(conn, "POOL").await, (3, 1, 2));
    assert_eq!(
        true_up(conn, "OTHER").await,
        Some((0, 0)),
        "a pool with no codes"
    );
    assert_eq!(true_up(conn, "NOSUCH").await, None);
    assert_eq!(stock_of(conn, "OTHER").await, (0, 0, 0));
    assert_eq!(
        stock_of(conn, "NEW10").await,
        (10, 0, 10),
        "other coupons untouched"
    );
}
conformance!(true_up_pool_sets_remaining_to_the_unissued_codes);

async fn pool_stock_reads_a_coupons_stock_and_remaining(conn: &mut Conn) {
    catalog(conn).await;
    let stock = |stock, remaining| Some(PoolStock { stock, remaining });
    assert_eq!(conn.pool_stock("POOL").await.unwrap(), stock(0, 0));
    assert_eq!(conn.pool_stock("NEW10").await.unwrap(), stock(10, 10));
    import(conn, "POOL", &["P-1", "P-2"], 1).await;
    assert!(conn.take_stock("POOL", 1).await.unwrap());
    assert_eq!(conn.pool_stock("POOL").await.unwrap(), stock(2, 1));
    assert_eq!(conn.pool_stock("NOSUCH").await.unwrap(), None);
}
conformance!(pool_stock_reads_a_coupons_stock_and_remaining);

/// Codes compare byte for byte on both backends (MariaDB's table is `utf8mb4_bin`).
async fn present_codes_finds_the_codes_held_under_any_coupon(conn: &mut Conn) {
    catalog(conn).await;
    assert_eq!(conn.present_codes(&[]).await.unwrap(), set(&[]));
    import(conn, "POOL", &["P-A", "Ünï-☃"], 1).await;
    conn.insert_generated_codes(&[generated("GEN", "GEN-AAAA", 101, 5)])
        .await
        .unwrap();
    let asked = strings(&["P-A", "p-a", "GEN-AAAA", "Ünï-☃", "Uni-☃", "NOPE", "P-A"]);
    assert_eq!(
        conn.present_codes(&asked).await.unwrap(),
        set(&["P-A", "GEN-AAAA", "Ünï-☃"])
    );
    assert_eq!(
        conn.present_codes(&strings(&["NOPE"])).await.unwrap(),
        set(&[])
    );
}
conformance!(present_codes_finds_the_codes_held_under_any_coupon);

/// More codes than one lookup asks about (1024), present ones on both sides of the cut.
async fn present_codes_asks_about_a_long_list_in_parts(conn: &mut Conn) {
    catalog(conn).await;
    let held: Vec<String> = (0..1100).map(|i| format!("P-{i:04}")).collect();
    let done = conn
        .import_chunk("POOL", &held, at(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.imported, 1100);
    let mut asked: Vec<String> = (0..1500).map(|i| format!("X-{i:04}")).collect();
    asked[3] = held[0].clone();
    asked[1023] = held[1].clone();
    asked[1024] = held[2].clone();
    asked[1499] = held[1099].clone();
    let found = conn.present_codes(&asked).await.unwrap();
    let expected: HashSet<String> = [0, 1, 2, 1099].map(|i| held[i].clone()).into();
    assert_eq!(found, expected);
    assert_eq!(conn.present_codes(&held).await.unwrap().len(), 1100);
}
conformance!(present_codes_asks_about_a_long_list_in_parts);

async fn import_chunk_inserts_the_new_codes_and_raises_the_stock_by_as_many(conn: &mut Conn) {
    catalog(conn).await;
    let first = conn
        .import_chunk("POOL", &strings(&["A", "B", "C"]), at(1))
        .await
        .unwrap();
    let after = |stock, remaining| PoolStock { stock, remaining };
    assert_eq!(
        first,
        Some(ChunkImport {
            imported: 3,
            present: set(&[]),
            after: after(3, 3),
        })
    );
    import(conn, "OTHER", &["X"], 2).await;
    assert!(conn.take_stock("POOL", 1).await.unwrap());
    draw_and_issue(conn, "POOL", 1, 101, 3).await;
    let second = conn
        .import_chunk("POOL", &strings(&["B", "D", "X", "A", "E"]), at(4))
        .await
        .unwrap();
    assert_eq!(
        second,
        Some(ChunkImport {
            imported: 2,
            present: set(&["A", "B", "X"]),
            after: after(5, 4),
        }),
        "an issued code and another coupon's are present too"
    );
    assert_eq!(stock_of(conn, "POOL").await, (5, 1, 4), "as committed");
    assert_eq!(conn.pool_stock("POOL").await.unwrap(), Some(after(5, 4)));
    let rows: Vec<(String, String, Option<NaiveDateTime>, Option<i64>)> = code_rows(conn)
        .await
        .into_iter()
        .map(|r| (r.code, r.coupon_id, r.imported_at, r.grant_id))
        .collect();
    let row = |code: &str, coupon: &str, seconds, grant| {
        (code.to_owned(), coupon.to_owned(), Some(at(seconds)), grant)
    };
    assert_eq!(
        rows,
        [
            row("A", "POOL", 1, Some(101)),
            row("B", "POOL", 1, None),
            row("C", "POOL", 1, None),
            row("X", "OTHER", 2, None),
            row("D", "POOL", 4, None),
            row("E", "POOL", 4, None),
        ]
    );
    assert_eq!(stock_of(conn, "OTHER").await, (1, 0, 1));
}
conformance!(import_chunk_inserts_the_new_codes_and_raises_the_stock_by_as_many);

async fn import_chunk_of_codes_all_present_or_none_changes_nothing(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["A", "B"], 1).await;
    let before = code_rows(conn).await;
    let again = conn
        .import_chunk("POOL", &strings(&["A", "B"]), at(2))
        .await
        .unwrap();
    let unchanged = PoolStock {
        stock: 2,
        remaining: 2,
    };
    assert_eq!(
        again,
        Some(ChunkImport {
            imported: 0,
            present: set(&["A", "B"]),
            after: unchanged,
        })
    );
    let empty = conn.import_chunk("POOL", &[], at(3)).await.unwrap();
    assert_eq!(
        empty,
        Some(ChunkImport {
            imported: 0,
            present: set(&[]),
            after: unchanged,
        })
    );
    assert_eq!(code_rows(conn).await, before);
    assert_eq!(stock_of(conn, "POOL").await, (2, 0, 2));
}
conformance!(import_chunk_of_codes_all_present_or_none_changes_nothing);

async fn import_chunk_into_an_unknown_coupon_writes_nothing(conn: &mut Conn) {
    catalog(conn).await;
    import(conn, "POOL", &["A"], 1).await;
    let before = code_rows(conn).await;
    let stock = conn.coupon_stock().await.unwrap();
    let none = conn
        .import_chunk("NOSUCH", &strings(&["A", "N-1", "N-2"]), at(2))
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(code_rows(conn).await, before);
    assert_eq!(conn.coupon_stock().await.unwrap(), stock);
    assert_eq!(conn.code_counts_of("NOSUCH").await.unwrap(), counts(0, 0));
}
conformance!(import_chunk_into_an_unknown_coupon_writes_nothing);

async fn coded_grants_per_coupon_counts_the_grants_with_a_code(conn: &mut Conn) {
    let ids = queue_requests(conn, &["a", "b", "c", "d", "e"]).await;
    assert_eq!(conn.coded_grants_per_coupon().await.unwrap(), []);
    let coded = |i: usize, coupon: &str, code: &str| {
        let mut g = grant(ids[i], &format!("u{i}"), ("c", coupon), at(i as i64));
        g.code = Some(code.to_owned());
        g.valid_from = Some(at(i as i64));
        g.expires_at = Some(at(3600));
        g
    };
    let rows = [
        coded(0, "POOL", "P-1"),
        coded(1, "GEN", "GEN-AAAA"),
        coded(2, "POOL", "P-2"),
        grant(ids[3], "u3", ("c", "POOL"), at(3)),
        grant(ids[4], "u4", ("c", "NEW10"), at(4)),
    ];
    assert_eq!(conn.record_grants(&rows).await.unwrap(), 5);
    assert_eq!(
        conn.coded_grants_per_coupon().await.unwrap(),
        [("GEN".to_owned(), 1), ("POOL".to_owned(), 2)],
        "by coupon id; grants without a code left out"
    );
}
conformance!(coded_grants_per_coupon_counts_the_grants_with_a_code);
