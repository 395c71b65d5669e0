//! Where a batch transaction's requests come from: taken from the queue by the
//! transaction itself (`FOR UPDATE SKIP LOCKED`), or claimed beforehand in a
//! transaction of their own and fenced by their claim token; and the claims this
//! daemon holds, released at shutdown.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::domain::TriggerRequest;
use crate::pipeline::intake::{self, Rejected};
use crate::store::requests::Claim;
use crate::store::{self, Conn, StoreError};

/// The claim tokens of batches this daemon claimed and has not finished: released at
/// shutdown so that the next daemon need not wait for their lease to run out.
#[derive(Debug, Default)]
pub struct ClaimsInHand(Mutex<HashSet<i64>>);

impl ClaimsInHand {
    /// A batch was claimed under `token`.
    pub fn hold(&self, token: i64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token);
    }

    /// The batch of `token` committed: nothing of it is left claimed.
    pub fn finished(&self, token: i64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }

    /// The tokens of batches claimed and not finished (failed, or still running).
    pub fn tokens(&self) -> Vec<i64> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().copied().collect()
    }
}

/// A random claim (or hold) token.
pub(super) fn claim_token() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

/// Where a batch transaction's requests come from.
pub(super) enum Batch {
    /// Take up to `limit` queued requests in the transaction, finished under `token`.
    Take { limit: i64, token: i64 },
    /// Claimed beforehand; the transaction fences them.
    Claimed(ClaimedBatch),
}

/// A batch claimed under `token` in a transaction of its own, validated.
#[derive(Clone)]
pub(super) struct ClaimedBatch {
    pub(super) token: i64,
    pub(super) valid: Vec<TriggerRequest>,
    pub(super) rejected: Vec<Rejected>,
}

impl ClaimedBatch {
    pub(super) fn len(&self) -> usize {
        self.valid.len() + self.rejected.len()
    }

    /// Two non-empty parts of a batch of two or more requests, the valid requests
    /// split evenly (rejections ride with the first half, or alone).
    pub(super) fn halves(&self) -> Option<(ClaimedBatch, ClaimedBatch)> {
        let part = |valid: &[TriggerRequest], rejected: &[Rejected]| ClaimedBatch {
            token: self.token,
            valid: valid.to_vec(),
            rejected: rejected.to_vec(),
        };
        match (self.valid.len(), self.rejected.len()) {
            (0, 0 | 1) | (1, 0) => None,
            (0, n) => {
                let (a, b) = self.rejected.split_at(n / 2);
                Some((part(&[], a), part(&[], b)))
            }
            (1, _) => Some((part(&[], &self.rejected), part(&self.valid, &[]))),
            (n, _) => {
                let (a, b) = self.valid.split_at(n / 2);
                Some((part(a, &self.rejected), part(b, &[])))
            }
        }
    }
}

/// The requests a batch transaction owns: locked by it, and how they were claimed.
pub(super) struct Owned {
    pub(super) valid: Vec<TriggerRequest>,
    pub(super) rejected: Vec<Rejected>,
    pub(super) claim: Claim,
}

impl Batch {
    /// Takes up to `batch_size` queued requests in the transaction.
    pub(super) fn take(batch_size: usize) -> Batch {
        Batch::Take {
            limit: batch_size as i64,
            token: claim_token(),
        }
    }

    /// Locks the batch's requests: takes them from the queue, or fences the claimed ones
    /// (a request whose claim was recovered meanwhile is left out).
    pub(super) async fn lock(self, conn: &mut Conn) -> Result<Owned, StoreError> {
        match self {
            Batch::Take { limit, token } => {
                let rows = conn.take_queued(limit).await?;
                let (valid, rejected) = intake::validate_batch(rows);
                let at = store::now();
                Ok(Owned {
                    valid,
                    rejected,
                    claim: Claim::Inline { token, at },
                })
            }
            Batch::Claimed(batch) => fence(conn, batch).await,
        }
    }
}

/// The requests of a batch claimed beforehand that its token still holds.
async fn fence(conn: &mut Conn, batch: ClaimedBatch) -> Result<Owned, StoreError> {
    let ClaimedBatch {
        token,
        valid,
        rejected,
    } = batch;
    let ids: Vec<i64> = valid
        .iter()
        .map(|r| r.id.0)
        .chain(rejected.iter().map(|r| r.id.0))
        .collect();
    let owned: HashSet<i64> = conn.lock_claimed(&ids, token).await?.into_iter().collect();
    Ok(Owned {
        valid: valid
            .into_iter()
            .filter(|r| owned.contains(&r.id.0))
            .collect(),
        rejected: rejected
            .into_iter()
            .filter(|r| owned.contains(&r.id.0))
            .collect(),
        claim: Claim::Token(token),
    })
}
