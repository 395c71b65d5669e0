//! `store::updates`: the partner-update queue.

use couponsd::domain::UpdateStatus;
use couponsd::store::updates::{FinishedUpdate, NewUpdate, FINISH_ROOM_BYTES};
use couponsd::store::{Backend, Conn};
use diesel::result::Error;
use diesel::sql_types::{Nullable, Text, Timestamp};

use super::{at, PlainSql};

#[derive(Debug, diesel::QueryableByName)]
struct UpdateState {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    processed_at: Option<chrono::NaiveDateTime>,
}

async fn states(conn: &mut Conn) -> Vec<UpdateState> {
    conn.rows("SELECT status, error, processed_at FROM grant_updates ORDER BY id")
        .await
}

/// Inserts updates as a partner does: plain SQL.
async fn partner_inserts(conn: &mut Conn) {
    conn.exec(
        "INSERT INTO grant_updates (update_key, code, grant_id, action, reason, occurred_at) VALUES \
         ('u1', 'ABC', NULL, 'redeem', 'order 1', '2026-12-01 12:00:05'), \
         ('u2', NULL, 42, 'revoke', NULL, NULL), \
         ('u3', NULL, 43, 'unredeem', NULL, NULL)",
    )
    .await;
}

/// The ids of the updates `take_queued_updates` takes now, oldest first.
async fn queued_ids(conn: &mut Conn) -> Vec<i64> {
    let taken = conn.take_queued_updates(10).await.unwrap();
    taken.iter().map(|r| r.id).collect()
}

async fn take_queued_updates_locks_the_oldest_queued_updates_read_as_bytes(conn: &mut Conn) {
    partner_inserts(conn).await;
    let taken = conn
        .transaction::<_, Error, _>(async |conn| conn.take_queued_updates(2).await)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    assert_eq!(taken[0].update_key.as_deref(), Some(&b"u1"[..]));
    assert_eq!(taken[0].code.as_deref(), Some(&b"ABC"[..]));
    assert_eq!(taken[0].grant_id, None);
    assert_eq!(taken[0].action.as_deref(), Some(&b"redeem"[..]));
    assert_eq!(
        (taken[0].reason_len, taken[0].reason.as_deref()),
        (Some(7), Some(&b"order 1"[..]))
    );
    let occurred = taken[0].occurred_at.as_deref().unwrap();
    assert!(String::from_utf8_lossy(occurred).starts_with("2026-12-01 12:00:05"));
    assert_eq!(taken[1].grant_id.as_deref(), Some(&b"42"[..]));
    assert_eq!((taken[1].reason_len, &taken[1].reason), (None, &None));
    assert_eq!(conn.update_queue_depth().await.unwrap(), 3);
}
conformance!(take_queued_updates_locks_the_oldest_queued_updates_read_as_bytes);

async fn take_queued_updates_reads_any_value_a_partner_writes(conn: &mut Conn) {
    let long = "x".repeat(5000);
    conn.exec(&format!(
        "INSERT INTO grant_updates (update_key, grant_id, action, reason) \
         VALUES ('long', 1, 'revoke', '{long}')"
    ))
    .await;
    if conn.backend() == Backend::Sqlite {
        // SQLite stores whatever it is given: text in an integer column, a long key.
        let key = "k".repeat(300);
        conn.exec(&format!(
            "INSERT INTO grant_updates (update_key, grant_id, action, occurred_at) \
             VALUES ('{key}', 'abc', 'redeem', 'yesterday')"
        ))
        .await;
    }
    let taken = conn.take_queued_updates(10).await.unwrap();
    assert_eq!((taken[0].reason_len, &taken[0].reason), (Some(5000), &None));
    if let Some(odd) = taken.get(1) {
        assert_eq!(odd.update_key.as_ref().map(Vec::len), Some(256));
        assert_eq!(odd.grant_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(odd.occurred_at.as_deref(), Some(&b"yesterday"[..]));
    }
}
conformance!(take_queued_updates_reads_any_value_a_partner_writes);

async fn take_queued_updates_of_takes_those_of_the_ids_still_queued(conn: &mut Conn) {
    partner_inserts(conn).await;
    conn.exec("UPDATE grant_updates SET status = 'done' WHERE update_key = 'u2'")
        .await;
    let ids = queued_ids(conn).await;
    assert_eq!(ids.len(), 2, "done updates are not queued");
    let part = conn
        .take_queued_updates_of(&[ids[1], ids[1] - 1, 999])
        .await
        .unwrap();
    assert_eq!(part.len(), 1);
    assert_eq!(part[0].id, ids[1]);
}
conformance!(take_queued_updates_of_takes_those_of_the_ids_still_queued);

async fn finish_updates_writes_each_status_with_its_error_and_time(conn: &mut Conn) {
    partner_inserts(conn).await;
    let ids = queued_ids(conn).await;
    let done = |id| FinishedUpdate {
        id,
        status: UpdateStatus::Done,
        error: None,
    };
    let finished = [
        done(ids[0]),
        FinishedUpdate {
            id: ids[1],
            status: UpdateStatus::Rejected,
            error: Some("grant 42: already revoked".into()),
        },
        done(ids[2]),
    ];
    assert_eq!(conn.finish_updates(&finished, at(9)).await.unwrap(), 3);
    let rows = states(conn).await;
    let seen: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.status.as_str(), r.error.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("done", None),
            ("rejected", Some("grant 42: already revoked")),
            ("done", None)
        ]
    );
    assert!(rows.iter().all(|r| r.processed_at == Some(at(9))));
    assert_eq!(conn.update_queue_depth().await.unwrap(), 0);
    assert_eq!(
        conn.count_updates().await.unwrap(),
        [("done".to_owned(), 2), ("rejected".to_owned(), 1)]
    );
    assert!(conn.take_queued_updates(10).await.unwrap().is_empty());
}
conformance!(finish_updates_writes_each_status_with_its_error_and_time);

#[derive(Debug, diesel::QueryableByName)]
struct UpdateSize {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes: i64,
}

async fn a_done_update_keeps_its_records_size(conn: &mut Conn) {
    // What `status`, `processed_at` (8 when set) and `finish_room` take together.
    async fn sizes(conn: &mut Conn) -> Vec<(String, i64)> {
        let rows: Vec<UpdateSize> = conn
            .rows(
                "SELECT status, LENGTH(status) + CASE WHEN processed_at IS NULL THEN 0 \
                 ELSE 8 END + COALESCE(LENGTH(finish_room), 0) AS bytes \
                 FROM grant_updates ORDER BY id",
            )
            .await;
        rows.into_iter().map(|r| (r.status, r.bytes)).collect()
    }
    partner_inserts(conn).await;
    let s = |status: &str, bytes| (status.to_owned(), bytes);
    let queued = 6 + FINISH_ROOM_BYTES as i64;
    assert_eq!(
        sizes(conn).await,
        [
            s("queued", queued),
            s("queued", queued),
            s("queued", queued)
        ],
        "a partner's insert gets the room its finish fills"
    );
    let ids = queued_ids(conn).await;
    let done = FinishedUpdate {
        id: ids[0],
        status: UpdateStatus::Done,
        error: None,
    };
    conn.finish_updates(&[done], at(9)).await.unwrap();
    assert_eq!(
        sizes(conn).await,
        [s("done", queued), s("queued", queued), s("queued", queued)]
    );
}
conformance!(a_done_update_keeps_its_records_size);

async fn enqueue_updates_refuses_an_update_key_seen_before(conn: &mut Conn) {
    let update = NewUpdate {
        update_key: "once".into(),
        code: Some("ABC".into()),
        grant_id: None,
        action: "redeem".into(),
        reason: None,
        occurred_at: Some(at(1)),
    };
    assert_eq!(
        conn.enqueue_updates(std::slice::from_ref(&update))
            .await
            .unwrap(),
        1
    );
    assert!(conn.enqueue_updates(&[update]).await.is_err());
    assert_eq!(conn.update_queue_depth().await.unwrap(), 1);
}
conformance!(enqueue_updates_refuses_an_update_key_seen_before);
