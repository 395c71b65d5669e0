//! Grant: the unit of work. In one transaction it claims a batch of queued requests
//! (or, after a failure, fences a batch claimed beforehand), locks the users' lock rows
//! and the campaigns' chains, decides every request ([`super::decide`]), takes stock
//! with one statement per coupon, and writes the grants, their outbox rows and the
//! requests' final statuses. A crash at any point loses nothing and grants nothing
//! twice: either all of it commits or none of it does.
//!
//! - `claim.rs`: where a batch's requests come from (taken in the transaction, or
//!   claimed beforehand and fenced), the claims in hand, halving a failed batch;
//! - `tx.rs`: the transaction: locks, reads, the decision and its lock escalation;
//! - `record.rs`: the rows a decided batch writes, the stock it takes, its alerts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, instrument, warn};

use crate::config::Config;
use crate::domain::RequestStatus;
use crate::in_force::InForce;
use crate::metrics::Metrics;
use crate::rules::Rules;
use crate::store::requests::{Claim, Finished};
use crate::store::{self, Db, StoreError};

use super::dispatch::handoff::{Handoff, Outgoing};
use super::intake;

mod claim;
mod codes;
mod record;
mod tx;

pub use claim::ClaimsInHand;
use claim::{claim_token, Batch, ClaimedBatch};
pub use codes::DrawCursors;
pub(crate) use record::Outlets;
use record::Written;

/// How many times a batch transaction is tried again after a deadlock or lock-wait
/// timeout before the batch is left to lease recovery.
const MAX_TX_RETRIES: u32 = 20;

/// What the grant step uses, built by the runtime.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Db,
    /// The config whose campaigns are in force.
    pub catalog: InForce<Config>,
    /// The rules in force.
    pub rules: InForce<Rules>,
    /// Where committed grants' deliveries go to this daemon's dispatcher.
    pub handoff: Arc<Handoff>,
    /// Signalled when a batch committed new outbox rows.
    pub outbox_ready: Arc<Notify>,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    /// Batches claimed and not finished.
    pub claims: Arc<ClaimsInHand>,
    /// Where this daemon's next draw of each pool coupon starts.
    pub draws: Arc<DrawCursors>,
}

/// What one call of [`process_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// This many requests were claimed and finished.
    Processed(BatchSummary),
    /// The queue was empty.
    Empty,
}

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Requests claimed.
    pub claimed: usize,
    /// Coupons granted.
    pub granted: usize,
    /// Requests rejected as malformed.
    pub rejected: usize,
    /// Requests failed by a rule.
    pub failed: usize,
    /// Transactions retried after a deadlock or lock-wait timeout.
    pub retries: u32,
}

impl BatchSummary {
    fn add(&mut self, other: BatchSummary) {
        self.claimed += other.claimed;
        self.granted += other.granted;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.retries += other.retries;
    }
}

/// A batch that could not be finished; its claims are recovered after the lease.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Rule evaluation panicked (a bug in couponsd, not in a rule).
    #[error("rule evaluation stopped unexpectedly: {0}")]
    Evaluation(String),
    /// Another daemon took the stock (or budget) the batch's decisions counted on
    /// between the unlocked read and the guarded update; the batch is rolled back and
    /// decided again with the chains locked.
    #[error("stock or budget changed under the batch")]
    StaleStock,
    /// A pool coupon's `remaining` counts more codes than it has unissued (the pool
    /// was changed by hand): the batch is rolled back, the coupon's stock set to its
    /// codes, ops alerted, and the batch decided again.
    #[error("pool coupon {0} has fewer unissued codes than its stock says")]
    PoolShort(String),
}

impl BatchError {
    /// True when the failure may be caused by one of the batch's requests rather than
    /// by the database: a statement the database refused (a duplicate key, a value it
    /// cannot store) or a panic. Lost connections, deadlocks, lock waits and statements
    /// stopped by `database.statement_timeout` are not.
    pub fn may_lie_in_a_request(&self) -> bool {
        match self {
            BatchError::Evaluation(_) => true,
            BatchError::Store(StoreError::Query(e)) => {
                !store::is_retryable(e)
                    && !store::is_connection_lost(e)
                    && !store::is_interrupted(e)
            }
            BatchError::Store(_) | BatchError::StaleStock | BatchError::PoolShort(_) => false,
        }
    }
}

impl From<diesel::result::Error> for BatchError {
    fn from(e: diesel::result::Error) -> Self {
        BatchError::Store(e.into())
    }
}

/// Takes one batch of queued requests and processes it to the end, claim and all, in
/// one transaction: the requests are locked (`FOR UPDATE SKIP LOCKED`) by the
/// transaction that finishes them, so a rollback, a crash or a lost connection puts
/// them back in the queue at once and nothing waits for a lease.
#[instrument(skip_all)]
pub async fn process_batch(deps: &Deps) -> Result<BatchOutcome, BatchError> {
    process(deps, None).await
}

/// Claims one batch in a short transaction of its own (`claimed`, with a token and a
/// lease), then processes it. The worker loop falls back to this after a batch failed:
/// a request that fails every transaction it is in would otherwise go back to the head
/// of the queue each time, while a claim is counted by lease recovery, which ends it
/// `failed` after `worker.max_attempts`.
#[instrument(skip_all)]
pub async fn process_claimed_batch(deps: &Deps) -> Result<BatchOutcome, BatchError> {
    let token = claim_token();
    let limit = deps.catalog.current().worker.batch_size as i64;
    let rows = deps
        .db
        .get()
        .await?
        .claim_batch(limit, token, store::now())
        .await
        .map_err(StoreError::from)?;
    if rows.is_empty() {
        return Ok(BatchOutcome::Empty);
    }
    deps.claims.hold(token);
    let (valid, rejected) = intake::validate_batch(rows);
    let claimed = ClaimedBatch {
        token,
        valid,
        rejected,
    };
    let outcome = process_isolating(deps, claimed).await;
    if outcome.is_ok() {
        deps.claims.finished(token);
    }
    outcome
}

/// Processes a claimed batch; when its transaction fails for a reason that may lie in
/// one of its requests (a write the database refuses, a panic), the batch is split in
/// halves and each is processed on its own, down to single requests: a request that
/// fails alone ends `failed` with the error in its `error` column, and every other
/// request of the batch finishes normally. A batch with one bad request costs about
/// 2·log2(batch_size) more transactions. An error of the database itself (unreachable,
/// deadlocks past the retries) splits nothing: the claims are left to lease recovery.
async fn process_isolating(deps: &Deps, claimed: ClaimedBatch) -> Result<BatchOutcome, BatchError> {
    let mut total: Option<BatchSummary> = None;
    let mut parts = vec![claimed];
    while let Some(part) = parts.pop() {
        let summary = match process(deps, Some(part.clone())).await {
            Ok(BatchOutcome::Processed(summary)) => summary,
            Ok(BatchOutcome::Empty) => continue,
            Err(e) if !e.may_lie_in_a_request() => return Err(e),
            Err(e) => match part.halves() {
                Some((first, second)) => {
                    debug!(error = %e, requests = part.len(), "batch failed: processing its halves apart");
                    parts.extend([second, first]);
                    continue;
                }
                None => fail_alone(deps, part, &e).await?,
            },
        };
        total.get_or_insert_with(BatchSummary::default).add(summary);
    }
    Ok(total.map_or(BatchOutcome::Empty, BatchOutcome::Processed))
}

/// Ends the one request of `part`, which failed in a transaction of its own, `failed`
/// with `error`.
async fn fail_alone(
    deps: &Deps,
    part: ClaimedBatch,
    error: &BatchError,
) -> Result<BatchSummary, BatchError> {
    let (id, key) = match (part.valid.first(), part.rejected.first()) {
        (Some(r), _) => (r.id.0, r.key.to_string()),
        (None, Some(r)) => (r.id.0, format!("(row {})", r.id.0)),
        (None, None) => return Ok(BatchSummary::default()),
    };
    warn!(request_key = %key, error = %error, "request failed on its own: it ends failed");
    let finished = Finished {
        id,
        status: RequestStatus::Failed,
        outcome: None,
        error: Some(format!("request {id}: {error}")),
        detail: None,
        user_type: None,
        campaign_id: None,
        rules_version: Some(deps.rules.current().version().to_string()),
    };
    let claim = Claim::Token(part.token);
    deps.db
        .get()
        .await?
        .finish_requests(&[finished], claim, store::now())
        .await
        .map_err(StoreError::from)?;
    Ok(BatchSummary {
        claimed: 1,
        failed: 1,
        ..BatchSummary::default()
    })
}

/// The batch's transaction, tried again after a deadlock, a lock-wait timeout or stock
/// that moved; `claimed` is a batch claimed beforehand, `None` takes one in the
/// transaction.
async fn process(deps: &Deps, claimed: Option<ClaimedBatch>) -> Result<BatchOutcome, BatchError> {
    let started = Instant::now();
    let rules = deps.rules.current();
    let mut retries = 0;
    let mut locked = false;
    let mut trued_up = false;
    loop {
        let config = deps.catalog.current();
        let outlets = Outlets::of(&config, &deps.handoff);
        let batch = match &claimed {
            Some(claimed) => Batch::Claimed(claimed.clone()),
            None => Batch::take(config.worker.batch_size),
        };
        let result = {
            let conn = &mut deps.db.get().await?;
            let inputs = (config, rules.clone());
            let outlets = (outlets.clone(), deps.draws.clone());
            tx::grant_batch(conn, inputs, batch, outlets, locked).await
        };
        match result {
            Ok(written) if written.summary.claimed == 0 => return Ok(BatchOutcome::Empty),
            Ok(written) => return Ok(hand_over(deps, written, &outlets, retries, started)),
            Err(BatchError::Store(e)) if e.is_retryable() && retries < MAX_TX_RETRIES => {
                retries += 1;
                warn!(error = %e, retries, "batch transaction will be tried again");
                let jitter = rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(5 * u64::from(retries) + jitter)).await;
            }
            Err(BatchError::StaleStock) if !locked => {
                debug!("stock moved under the batch: deciding it again with the chains locked");
                locked = true;
            }
            Err(BatchError::PoolShort(coupon)) if !trued_up => {
                codes::true_up(deps, &coupon).await?;
                trued_up = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// After the commit: counts the batch, hands its held deliveries to this daemon's
/// dispatcher and wakes it.
fn hand_over(
    deps: &Deps,
    written: Written,
    outlets: &Outlets,
    retries: u32,
    started: Instant,
) -> BatchOutcome {
    let Written {
        mut summary,
        tally,
        handed_off,
        outbox_channels,
    } = written;
    summary.retries = retries;
    deps.metrics.record_batch(&tally, started.elapsed());
    for channel in &outbox_channels {
        deps.handoff.outbox_rows(channel);
    }
    deps.handoff.push(
        handed_off
            .into_iter()
            .filter_map(|d| Outgoing::handed_off(d, outlets.held_until_here)),
    );
    deps.outbox_ready.notify_one();
    BatchOutcome::Processed(summary)
}
