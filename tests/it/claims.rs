//! The claim: a batch is taken from the queue inside the transaction that finishes it,
//! so a failed batch is rolled back into the queue at once; after a failure a worker
//! claims its next batch first, so that a request no batch can commit is counted by
//! lease recovery and ends `failed` instead of heading the queue for ever.

use std::time::Duration;

use chrono::TimeDelta;
use couponsd::daemon::{Context, Mode};
use couponsd::grant::{process_batch, process_claimed_batch, BatchOutcome};
use tokio_util::sync::CancellationToken;

use crate::support::*;
use crate::{on_both_backends, store};

/// A context whose worker takes one request per batch, with `poison` queued first and
/// `good` requests behind it. `poison` cannot be granted: a grant with its id is
/// already in the ledger, so every transaction that holds it fails on the insert.
async fn queue_with_a_poisoned_head(db: &TestDb, good: usize) -> (Context, Receiver) {
    let receiver = Receiver::ok().await;
    let mut cfg = config(
        db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(100),
        "",
    );
    cfg.worker.batch_size = 1;
    let ctx = context(cfg).await;
    insert(&ctx, "poison", "u-poison", "app_open", None)
        .await
        .unwrap();
    execute(
        &ctx,
        "INSERT INTO grants (id, request_id, user_id, event, campaign_id, coupon_id, \
         face_value_cents, user_type, rules_version, granted_at) \
         SELECT id, id, user_id, event, 'newcomer', 'NEW10', 1000, 'first_time', 'planted', \
         created_at FROM trigger_requests WHERE request_key = 'poison'",
    )
    .await;
    for i in 0..good {
        insert(
            &ctx,
            &format!("good-{i}"),
            &format!("u{i}"),
            "app_open",
            None,
        )
        .await
        .unwrap();
    }
    (ctx, receiver)
}

fn status_of(statuses: &std::collections::HashMap<String, i64>, status: &str) -> i64 {
    statuses.get(status).copied().unwrap_or(0)
}

async fn a_failed_batch_is_rolled_back_into_the_queue_and_its_bad_request_ends_failed(db: TestDb) {
    let (ctx, _receiver) = queue_with_a_poisoned_head(&db, 3).await;
    assert!(process_batch(&ctx).await.is_err(), "the grant insert fails");
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(
        status_of(&statuses, "queued"),
        4,
        "rolled back: nothing left claimed, nothing lost: {statuses:?}"
    );
    // Claimed first, the bad request leaves the head of the queue; the rest flows.
    assert!(process_claimed_batch(&ctx).await.is_err());
    for _ in 0..3 {
        assert!(matches!(
            process_batch(&ctx).await.unwrap(),
            BatchOutcome::Processed(_)
        ));
    }
    assert_eq!(process_batch(&ctx).await.unwrap(), BatchOutcome::Empty);
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(status_of(&statuses, "done"), 3, "{statuses:?}");
    assert_eq!(status_of(&statuses, "claimed"), 1, "{statuses:?}");
    // Each lease recovery counts an attempt; the fifth ends it.
    for _ in 0..5 {
        let expired = couponsd::store::now() + TimeDelta::seconds(1);
        store!(ctx, |c| c.reclaim_expired(expired, 5).await?);
        if status_of(&counts(&ctx, "status", "trigger_requests").await, "failed") == 1 {
            break;
        }
        assert!(process_batch(&ctx).await.is_err());
        assert!(process_claimed_batch(&ctx).await.is_err());
    }
    let failed = counts(&ctx, "error", "trigger_requests WHERE status = 'failed'").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed.keys().all(|e| e.contains("lease expired 5 times")),
        "{failed:?}"
    );
}
on_both_backends!(
    a_failed_batch_is_rolled_back_into_the_queue_and_its_bad_request_ends_failed,
    a_failed_batch_is_rolled_back_into_the_queue_and_its_bad_request_ends_failed
);

async fn a_worker_claims_first_after_a_failure_so_a_bad_request_never_blocks_the_queue(db: TestDb) {
    let (ctx, _receiver) = queue_with_a_poisoned_head(&db, 5).await;
    let shutdown = CancellationToken::new();
    let loops = tokio::spawn(couponsd::daemon::run_loops(
        ctx.clone(),
        Mode::Serve,
        shutdown.clone(),
    ));
    let mut statuses = Default::default();
    for _ in 0..300 {
        statuses = counts(&ctx, "status", "trigger_requests").await;
        if status_of(&statuses, "done") == 5 && status_of(&statuses, "claimed") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    loops.await.unwrap();
    assert_eq!(
        status_of(&statuses, "done"),
        5,
        "every good request behind the bad one was processed: {statuses:?}"
    );
    assert_eq!(
        status_of(&statuses, "claimed"),
        1,
        "the bad one waits for lease recovery: {statuses:?}"
    );
}
on_both_backends!(
    a_worker_claims_first_after_a_failure_so_a_bad_request_never_blocks_the_queue,
    a_worker_claims_first_after_a_failure_so_a_bad_request_never_blocks_the_queue
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
    process_batch(&ctx).await.unwrap();
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
