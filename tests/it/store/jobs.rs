//! `store::jobs`: job leases, the rotation audit trail and the "alerted once" marks.

use chrono::NaiveDateTime;
use couponsd::store::jobs::{AlertMark, Rotation};
use couponsd::store::Conn;
use diesel::sql_types::{Nullable, Text, Timestamp};

use super::{at, campaign, PlainSql};

/// The lease row of `job`: (holder, held_until, last_tick, last_finished_at).
async fn lease(
    conn: &mut Conn,
    job: &str,
) -> (
    Option<String>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
) {
    #[derive(diesel::QueryableByName)]
    struct Lease {
        #[diesel(sql_type = Nullable<Text>)]
        holder: Option<String>,
        #[diesel(sql_type = Nullable<Timestamp>)]
        held_until: Option<NaiveDateTime>,
        #[diesel(sql_type = Nullable<Timestamp>)]
        last_tick: Option<NaiveDateTime>,
        #[diesel(sql_type = Nullable<Timestamp>)]
        last_finished_at: Option<NaiveDateTime>,
    }
    let sql = format!(
        "SELECT holder, held_until, last_tick, last_finished_at FROM job_leases WHERE job = '{job}'"
    );
    let Lease {
        holder,
        held_until,
        last_tick,
        last_finished_at,
    } = conn.rows(&sql).await.pop().unwrap();
    (holder, held_until, last_tick, last_finished_at)
}

fn rotation(from: &str, to: Option<&str>, rotated_at: NaiveDateTime) -> Rotation {
    Rotation {
        campaign_id: "newcomer".to_owned(),
        from_coupon: from.to_owned(),
        to_coupon: to.map(str::to_owned),
        reason: "low_stock".to_owned(),
        remaining: 2,
        rotated_at,
    }
}

/// Asks for the lease of `job` for `holder`, with (tick, now, held until) in seconds.
async fn acquire(conn: &mut Conn, (job, holder): (&str, &str), times: [i64; 3]) -> bool {
    let [tick, now, held_until] = times.map(at);
    conn.acquire_job(job, holder, tick, now, held_until)
        .await
        .unwrap()
}

const JOB: &str = "inventory_check";

async fn acquire_job_lets_one_holder_run_each_tick(conn: &mut Conn) {
    assert!(acquire(conn, (JOB, "a"), [0, 1, 31]).await);
    assert!(!acquire(conn, (JOB, "b"), [0, 1, 31]).await, "a holds it");
    assert_eq!(
        lease(conn, JOB).await,
        (Some("a".into()), Some(at(31)), Some(at(0)), None)
    );
    conn.release_job(JOB, "a", at(2)).await.unwrap();
    assert!(
        !acquire(conn, (JOB, "b"), [0, 3, 33]).await,
        "this tick ran"
    );
    assert!(acquire(conn, (JOB, "b"), [10, 11, 41]).await);
    let other = ("reclaim_leases", "a");
    assert!(
        acquire(conn, other, [10, 11, 41]).await,
        "each job has its own lease"
    );
}
conformance!(acquire_job_lets_one_holder_run_each_tick);

async fn acquire_job_takes_over_a_lease_that_ran_out(conn: &mut Conn) {
    assert!(acquire(conn, (JOB, "a"), [0, 1, 31]).await);
    assert!(
        !acquire(conn, (JOB, "b"), [10, 20, 50]).await,
        "a holds it until 31"
    );
    assert!(acquire(conn, (JOB, "b"), [10, 32, 62]).await);
}
conformance!(acquire_job_takes_over_a_lease_that_ran_out);

/// The daemon's ticks are whole seconds, but a tick is a tick to the nanosecond: MySQL
/// keeps microseconds, and a tick it cut short must still count as run.
async fn acquire_job_runs_a_tick_finer_than_a_microsecond_once(conn: &mut Conn) {
    let tick = at(0) + chrono::TimeDelta::nanoseconds(123_456_789);
    let first = conn.acquire_job(JOB, "a", tick, at(1), at(31)).await;
    assert!(first.unwrap());
    conn.release_job(JOB, "a", at(2)).await.unwrap();
    let again = conn.acquire_job(JOB, "b", tick, at(3), at(33)).await;
    assert!(!again.unwrap(), "this tick ran");
}
conformance!(acquire_job_runs_a_tick_finer_than_a_microsecond_once);

async fn release_job_frees_the_lease_of_its_holder_only(conn: &mut Conn) {
    acquire(conn, (JOB, "a"), [0, 1, 31]).await;
    conn.release_job(JOB, "b", at(2)).await.unwrap();
    assert_eq!(lease(conn, JOB).await.1, Some(at(31)), "b holds nothing");
    conn.release_job(JOB, "a", at(3)).await.unwrap();
    assert_eq!(
        lease(conn, JOB).await,
        (Some("a".into()), None, Some(at(0)), Some(at(3)))
    );
}
conformance!(release_job_frees_the_lease_of_its_holder_only);

async fn record_rotation_appends_a_rotation_as_given(conn: &mut Conn) {
    let rotated = rotation("NEW10", Some("NEW8"), at(5));
    let last = Rotation {
        reason: "exhausted".to_owned(),
        remaining: 0,
        ..rotation("NEW8", None, at(6))
    };
    conn.record_rotation(&rotated).await.unwrap();
    conn.record_rotation(&last).await.unwrap();
    assert_eq!(conn.rotations().await.unwrap(), [rotated, last]);
}
conformance!(record_rotation_appends_a_rotation_as_given);

/// In the order they were recorded, whatever times they carry.
async fn rotations_lists_the_audit_trail_oldest_first(conn: &mut Conn) {
    assert_eq!(conn.rotations().await.unwrap(), []);
    let trail = [
        rotation("A", Some("B"), at(30)),
        rotation("B", Some("C"), at(10)),
        rotation("C", None, at(20)),
    ];
    for r in &trail {
        conn.record_rotation(r).await.unwrap();
    }
    assert_eq!(conn.rotations().await.unwrap(), trail);
}
conformance!(rotations_lists_the_audit_trail_oldest_first);

async fn mark_alerted_sets_each_mark_once(conn: &mut Conn) {
    let campaigns = [campaign("newcomer", Some(100), &[("NEW10", 10)])];
    conn.apply_catalog(&campaigns, at(0)).await.unwrap();
    let exhausted = AlertMark::Exhausted;
    assert!(conn
        .mark_alerted("newcomer", exhausted, at(1))
        .await
        .unwrap());
    assert!(!conn
        .mark_alerted("newcomer", exhausted, at(2))
        .await
        .unwrap());
    let budget = AlertMark::BudgetReached;
    assert!(conn.mark_alerted("newcomer", budget, at(3)).await.unwrap());
    assert!(!conn.mark_alerted("newcomer", budget, at(4)).await.unwrap());
    assert!(!conn.mark_alerted("nosuch", exhausted, at(5)).await.unwrap());
}
conformance!(mark_alerted_sets_each_mark_once);

async fn clear_alerted_arms_one_mark_again(conn: &mut Conn) {
    let campaigns = [campaign("newcomer", Some(100), &[("NEW10", 10)])];
    conn.apply_catalog(&campaigns, at(0)).await.unwrap();
    for mark in [AlertMark::Exhausted, AlertMark::BudgetReached] {
        conn.mark_alerted("newcomer", mark, at(1)).await.unwrap();
    }
    conn.clear_alerted("newcomer", AlertMark::Exhausted)
        .await
        .unwrap();
    assert!(conn
        .mark_alerted("newcomer", AlertMark::Exhausted, at(2))
        .await
        .unwrap());
    assert!(
        !conn
            .mark_alerted("newcomer", AlertMark::BudgetReached, at(2))
            .await
            .unwrap(),
        "the other mark stays set"
    );
}
conformance!(clear_alerted_arms_one_mark_again);

async fn mark_running_low_marks_once_until_the_stock_grows(conn: &mut Conn) {
    let campaigns = [campaign("newcomer", None, &[("NEW10", 10)])];
    conn.apply_catalog(&campaigns, at(0)).await.unwrap();
    assert!(conn.mark_running_low("NEW10").await.unwrap());
    assert!(!conn.mark_running_low("NEW10").await.unwrap());
    conn.take_stock("NEW10", 9).await.unwrap();
    assert!(
        !conn.mark_running_low("NEW10").await.unwrap(),
        "granting re-arms nothing"
    );
    conn.add_stock("NEW10", 5).await.unwrap();
    assert!(conn.mark_running_low("NEW10").await.unwrap(), "restocked");
    assert!(!conn.mark_running_low("NOSUCH").await.unwrap());
}
conformance!(mark_running_low_marks_once_until_the_stock_grows);
