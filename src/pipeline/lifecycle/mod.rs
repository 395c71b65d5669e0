//! Lifecycle: a grant's life after delivery, as partners report it. The unit of work,
//! [`process_updates`], takes a batch of queued `grant_updates` (redeem, unredeem,
//! revoke) and applies it in one transaction: claimed with `FOR UPDATE SKIP LOCKED`,
//! each row checked ([`parse`]), the grants of its codes resolved and locked in one
//! statement, those named by id locked in id order, each update applied in id order
//! to the grant as the batch has left it ([`changes`]), transitions, `coupon.redeemed` / `coupon.revoked` outbox rows and
//! the updates' statuses written, and what revocations took given back last
//! ([`giveback`]). A crash or a rollback leaves the updates queued; a committed update
//! is never applied again, and a second insert of its `update_key` is refused by the
//! table's unique key.
//!
//! - `parse.rs`: a claimed row into a [`GrantUpdate`] or a rejection naming the column;
//! - `changes.rs`: the state machine ([`next_state`]) and a batch's writes to grants;
//! - `giveback.rs`: a revocation's stock, budget and daily budget;
//! - `tx.rs`: the batch transaction;
//! - `revoke.rs`: an operator's revocation, with the same code.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, instrument, warn};

use crate::config::Config;
use crate::domain::UpdateStatus;
use crate::in_force::InForce;
use crate::metrics::Metrics;
use crate::pipeline::dispatch::handoff::{Handoff, Outgoing};
use crate::pipeline::grant::Outlets;
use crate::store::updates::FinishedUpdate;
use crate::store::{self, Db, StoreError};

pub mod changes;
pub mod giveback;
pub mod parse;
pub mod revoke;
mod tx;

pub use changes::next_state;
pub use parse::GrantUpdate;
use tx::{Batch, Written};

/// Tries of a batch transaction after a deadlock or a lock-wait timeout.
const MAX_TX_RETRIES: u32 = 20;

/// What the lifecycle stage uses, built by the runtime.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Db,
    /// The config whose campaigns are in force (pool coupons, daily budgets).
    pub catalog: InForce<Config>,
    /// This daemon's dispatcher in memory: a batch's events are handed to it after
    /// the commit, as the grant step hands over `coupon.granted`.
    pub handoff: Arc<Handoff>,
    /// Signalled when a batch committed outbox rows.
    pub outbox_ready: Arc<Notify>,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
}

/// What one call of [`process_updates`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatesOutcome {
    /// Updates were claimed and finished.
    Processed(UpdatesSummary),
    /// The queue was empty.
    Empty,
}

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdatesSummary {
    /// Updates applied.
    pub done: usize,
    /// Updates rejected, with their reasons.
    pub rejected: usize,
    /// Transactions tried again after a deadlock or lock-wait timeout.
    pub retries: u32,
}

impl UpdatesSummary {
    fn of(finished: &[FinishedUpdate]) -> Self {
        let done = finished
            .iter()
            .filter(|f| f.status == UpdateStatus::Done)
            .count();
        UpdatesSummary {
            done,
            rejected: finished.len() - done,
            retries: 0,
        }
    }

    fn add(&mut self, other: UpdatesSummary) {
        self.done += other.done;
        self.rejected += other.rejected;
        self.retries += other.retries;
    }
}

/// A batch that could not be finished; its updates are still queued.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A locked grant was not in the state it was read in.
    #[error("{0}")]
    Moved(String),
}

impl From<diesel::result::Error> for LifecycleError {
    fn from(e: diesel::result::Error) -> Self {
        LifecycleError::Store(e.into())
    }
}

impl LifecycleError {
    /// True when the failure may lie in one of the batch's rows (a statement the
    /// database refused) rather than in the database (lost, deadlocked, interrupted),
    /// as the grant step tells them apart.
    fn may_lie_in_a_row(&self) -> bool {
        match self {
            LifecycleError::Store(StoreError::Query(e)) => {
                !store::is_retryable(e)
                    && !store::is_connection_lost(e)
                    && !store::is_interrupted(e)
            }
            LifecycleError::Store(_) | LifecycleError::Moved(_) => false,
        }
    }
}

/// Takes one batch of queued updates (up to `worker.batch_size`) and applies it in one
/// transaction. When that fails for a reason that may lie in one row, the batch is
/// split in halves, each its own transaction, down to single updates: the one at fault
/// is rejected with the error, the rest are applied. The queue never stops behind a
/// bad row.
#[instrument(skip_all)]
pub async fn process_updates(deps: &Deps) -> Result<UpdatesOutcome, LifecycleError> {
    let limit = deps.catalog.current().worker.batch_size as i64;
    let ids = match process(deps, Batch::Take(limit)).await {
        Ok(written) if written.ids.is_empty() => return Ok(UpdatesOutcome::Empty),
        Ok(written) => return Ok(UpdatesOutcome::Processed(written.summary)),
        Err((e, _)) if !e.may_lie_in_a_row() => return Err(e),
        Err((e, ids)) => {
            debug!(error = %e, updates = ids.len(), "update batch failed: processing its halves apart");
            ids
        }
    };
    let mut total = UpdatesSummary::default();
    let mut parts = vec![ids];
    while let Some(part) = parts.pop() {
        match process(deps, Batch::Part(part.clone())).await {
            Ok(written) => total.add(written.summary),
            Err((e, _)) if !e.may_lie_in_a_row() => return Err(e),
            Err(_) if part.len() > 1 => {
                let (first, second) = part.split_at(part.len() / 2);
                parts.extend([second.to_vec(), first.to_vec()]);
            }
            Err((e, _)) => total.add(reject_alone(deps, part[0], &e).await?),
        }
    }
    Ok(UpdatesOutcome::Processed(total))
}

/// The batch's transaction, tried again after a deadlock or a lock-wait timeout. On
/// failure, the ids it had claimed (none when the claim itself failed).
async fn process(deps: &Deps, batch: Batch) -> Result<Written, (LifecycleError, Vec<i64>)> {
    let mut retries = 0;
    loop {
        let config = deps.catalog.current();
        let outlets = Outlets::of(&config, &deps.handoff);
        let result = match deps.db.get().await {
            Ok(mut conn) => tx::update_batch(&mut conn, (&config, &outlets), &batch).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(mut written) => {
                written.summary.retries = retries;
                deps.metrics
                    .record_updates(written.summary.done, written.summary.rejected);
                hand_over(deps, &mut written, &outlets);
                return Ok(written);
            }
            Err(LifecycleError::Store(e)) if e.is_retryable() && retries < MAX_TX_RETRIES => {
                retries += 1;
                warn!(error = %e, retries, "update batch transaction will be tried again");
                let jitter = rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(5 * u64::from(retries) + jitter)).await;
            }
            Err(e) => {
                let ids = match &batch {
                    Batch::Part(ids) => ids.clone(),
                    Batch::Take(_) => claimed_ids(deps, &batch).await,
                };
                return Err((e, ids));
            }
        }
    }
}

/// After the commit: hands the batch's held events to this daemon's dispatcher and
/// wakes it (the others wait in the outbox for its next claim).
fn hand_over(deps: &Deps, written: &mut Written, outlets: &Outlets) {
    for channel in &written.outbox_channels {
        deps.handoff.outbox_rows(channel);
    }
    // Events were written: some held for this daemon, or some due in the outbox.
    let wrote_events = !written.handed_off.is_empty() || !written.outbox_channels.is_empty();
    let held = std::mem::take(&mut written.handed_off);
    deps.handoff.push(
        held.into_iter()
            .filter_map(|d| Outgoing::handed_off(d, outlets.held_until_here)),
    );
    if wrote_events {
        deps.outbox_ready.notify_one();
    }
}

/// The ids a failed `Take` batch would claim again now (its transaction rolled back,
/// so they are queued again): the batch to split.
async fn claimed_ids(deps: &Deps, batch: &Batch) -> Vec<i64> {
    let Batch::Take(limit) = batch else {
        return Vec::new();
    };
    let Ok(mut conn) = deps.db.get().await else {
        return Vec::new();
    };
    let rows = conn.take_queued_updates(*limit).await.unwrap_or_default();
    rows.into_iter().map(|r| r.id).collect()
}

/// Rejects the one update `id`, which failed in a transaction of its own, with `error`.
async fn reject_alone(
    deps: &Deps,
    id: i64,
    error: &LifecycleError,
) -> Result<UpdatesSummary, LifecycleError> {
    warn!(update = id, error = %error, "update failed on its own: it is rejected");
    let finished = FinishedUpdate {
        id,
        status: UpdateStatus::Rejected,
        error: Some(format!("update {id}: {error}")),
    };
    let mut conn = deps.db.get().await?;
    let rejected = conn
        .write_transaction(async |conn| {
            // Only while it is still queued: another daemon may have finished it.
            if conn.take_queued_updates_of(&[id]).await?.is_empty() {
                return Ok::<_, LifecycleError>(0);
            }
            Ok(conn.finish_updates(&[finished], store::now()).await?)
        })
        .await?;
    Ok(UpdatesSummary {
        rejected,
        ..UpdatesSummary::default()
    })
}
