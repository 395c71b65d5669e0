//! The claim: a batch is taken from the queue inside the transaction that finishes it,
//! so a failed batch is rolled back into the queue at once; after a failure a worker
//! claims its next batch first and splits it until the request at fault is alone, so
//! that it alone ends `failed`, with the real error, and its batch finishes.

use std::time::Duration;

use couponsd::pipeline::grant::{process_batch, process_claimed_batch, BatchOutcome};
use couponsd::runtime::{Daemon, Mode};
use tokio_util::sync::CancellationToken;

use crate::on_both_backends;
use crate::support::*;

/// A context at the shipped batch size with `good` requests queued, and `poison`
/// among them after the first `before`. `poison` cannot be granted: a grant with its id
/// is already in the ledger, so every transaction that holds it fails on the insert.
async fn queue_with_a_poisoned_request(
    db: &TestDb,
    before: usize,
    good: usize,
) -> (Daemon, Receiver) {
    let receiver = Receiver::ok().await;
    let mut cfg = config(
        db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(1000),
        "",
    );
    cfg.worker.batch_size = 200; // the shipped default
    let ctx = context(cfg).await;
    let good_one = async |i: usize| {
        let (key, user) = (format!("good-{i}"), format!("u{i}"));
        insert(&ctx, &key, &user, "app_open", None).await.unwrap();
    };
    for i in 0..before {
        good_one(i).await;
    }
    insert(&ctx, "poison", "u-poison", "app_open", None)
        .await
        .unwrap();
    plant_grant(&ctx, "poison").await;
    for i in before..good {
        good_one(i).await;
    }
    (ctx, receiver)
}

async fn good_batch_of_200(ctx: &Daemon) {
    for i in 0..200 {
        let (key, user) = (format!("clean-{i}"), format!("clean-u{i}"));
        insert(ctx, &key, &user, "app_open", None).await.unwrap();
    }
}

fn status_of(statuses: &std::collections::HashMap<String, i64>, status: &str) -> i64 {
    statuses.get(status).copied().unwrap_or(0)
}

async fn the_error_of_the_poisoned_request(ctx: &Daemon) -> String {
    let failed = counts(ctx, "error", "trigger_requests WHERE status = 'failed'").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    failed.into_keys().next().unwrap()
}

async fn one_bad_request_fails_alone_and_the_rest_of_its_batch_finishes(db: TestDb) {
    let (ctx, _receiver) = queue_with_a_poisoned_request(&db, 57, 199).await;
    assert!(
        process_batch(&ctx.grant()).await.is_err(),
        "the grant insert fails"
    );
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(
        status_of(&statuses, "queued"),
        200,
        "rolled back: nothing left claimed, nothing lost: {statuses:?}"
    );
    // Claimed first after a failure, the batch is split until the bad request is
    // alone; it alone fails, with the database's own words.
    let started = std::time::Instant::now();
    let BatchOutcome::Processed(summary) = process_claimed_batch(&ctx.grant()).await.unwrap()
    else {
        panic!("the claimed batch is processed");
    };
    // Not asserted (machines differ): what splitting costs against one clean batch.
    let split = started.elapsed();
    good_batch_of_200(&ctx).await;
    let started = std::time::Instant::now();
    process_batch(&ctx.grant()).await.unwrap();
    eprintln!(
        "a batch of 200 with one bad request, split: {split:?}; a clean batch of 200: {:?}",
        started.elapsed()
    );
    assert_eq!((summary.claimed, summary.failed), (200, 1), "{summary:?}");
    assert_eq!(summary.granted, 199);
    assert_eq!(
        process_batch(&ctx.grant()).await.unwrap(),
        BatchOutcome::Empty
    );
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(status_of(&statuses, "done"), 399, "{statuses:?}");
    let error = the_error_of_the_poisoned_request(&ctx).await;
    assert!(
        error.contains("Duplicate entry") || error.contains("UNIQUE constraint failed"),
        "the real cause, not a lease count: {error}"
    );
}
on_both_backends!(
    one_bad_request_fails_alone_and_the_rest_of_its_batch_finishes,
    one_bad_request_fails_alone_and_the_rest_of_its_batch_finishes
);

async fn a_running_daemon_finishes_every_request_around_a_bad_one(db: TestDb) {
    let (ctx, _receiver) = queue_with_a_poisoned_request(&db, 120, 399).await;
    let shutdown = CancellationToken::new();
    let loops = tokio::spawn(couponsd::runtime::run_loops(
        ctx.clone(),
        Mode::Serve,
        shutdown.clone(),
    ));
    let mut statuses = Default::default();
    for _ in 0..300 {
        statuses = counts(&ctx, "status", "trigger_requests").await;
        if status_of(&statuses, "done") == 399 && status_of(&statuses, "failed") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    loops.await.unwrap();
    assert_eq!(
        (status_of(&statuses, "done"), status_of(&statuses, "failed")),
        (399, 1),
        "every good request of the bad one's batch was processed: {statuses:?}"
    );
    assert!(!the_error_of_the_poisoned_request(&ctx)
        .await
        .contains("lease expired"));
}
on_both_backends!(
    a_running_daemon_finishes_every_request_around_a_bad_one,
    a_running_daemon_finishes_every_request_around_a_bad_one
);

async fn a_batch_claimed_in_its_transaction_records_its_claim(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(10),
        "",
    ))
    .await;
    insert(&ctx, "one", "u1", "app_open", None).await.unwrap();
    process_batch(&ctx.grant()).await.unwrap();
    let claimed = counts(
        &ctx,
        "status",
        "trigger_requests WHERE claim_token IS NOT NULL AND claimed_at IS NOT NULL \
         AND claimed_at <= processed_at AND attempts = 0",
    )
    .await;
    assert_eq!(claimed.get("done"), Some(&1), "{claimed:?}");
}
on_both_backends!(
    a_batch_claimed_in_its_transaction_records_its_claim,
    a_batch_claimed_in_its_transaction_records_its_claim
);
