//! A batch's changes to its locked grants: each update is applied to the grant as the
//! batch has left it so far (two updates of one grant in one batch: the second sees the
//! first), making transitions and outbox rows; then each grant's state is written once,
//! from the state it was locked in to the one it ends in, under that guard.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDateTime, Utc};

use super::LifecycleError;
use crate::domain::lifecycle::{Cause, GrantRecord, Transition};
use crate::domain::{GrantState, UpdateAction};
use crate::pipeline::dispatch::events::{self, rfc3339};
use crate::store::deliveries::NewDelivery;
use crate::store::Conn;

/// What one action does to a grant in `state` (`expires_at` at `expires_at`): its new
/// state, or why it is refused. `happened` is when the partner says it happened (a
/// redemption after the validity ended is refused), `now` the time it is processed (an
/// unredeemed grant whose validity ended meanwhile goes to `expired`, not back to
/// `granted`: it can no longer be used).
pub fn next_state(
    (state, expires_at): (GrantState, Option<NaiveDateTime>),
    action: UpdateAction,
    happened: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<GrantState, String> {
    use GrantState::*;
    let ended_by = |at: DateTime<Utc>| expires_at.filter(|e| *e <= at.naive_utc());
    match (action, state) {
        (UpdateAction::Redeem, Granted) => match ended_by(happened) {
            Some(end) => Err(format!("expired at {}", rfc3339(end))),
            None => Ok(Redeemed),
        },
        (UpdateAction::Redeem, Redeemed) => Err("already redeemed".into()),
        (UpdateAction::Unredeem, Redeemed) => match ended_by(now) {
            Some(_) => Ok(Expired),
            None => Ok(Granted),
        },
        (UpdateAction::Unredeem, other) => Err(format!("not redeemed (it is {other})")),
        (UpdateAction::Revoke, Granted | Redeemed) => Ok(Revoked),
        (UpdateAction::Revoke, Revoked) => Err("already revoked".into()),
        (_, Expired) => Err("expired".into()),
        (_, Revoked) => Err("revoked".into()),
    }
}

/// The event a change into `to` sends, if any (back to `granted` sends none).
fn event_of(to: GrantState) -> Option<&'static str> {
    match to {
        GrantState::Redeemed => Some(events::COUPON_REDEEMED),
        GrantState::Revoked => Some(events::COUPON_REVOKED),
        GrantState::Expired => Some(events::COUPON_EXPIRED),
        GrantState::Granted => None,
    }
}

/// The changes a transaction makes to the grants it locked.
pub struct Changes {
    /// Each locked grant as it was read.
    locked: HashMap<i64, GrantState>,
    /// Each locked grant as the batch has left it so far.
    grants: BTreeMap<i64, GrantRecord>,
    /// The transitions, in the order they were applied.
    pub transitions: Vec<Transition>,
    /// Their outbox rows.
    pub deliveries: Vec<NewDelivery>,
    /// Grants revoked by this transaction, as they were locked: what they took is given
    /// back.
    pub revoked: Vec<GrantRecord>,
    now: DateTime<Utc>,
}

/// One action on one grant, and what made it.
pub struct Step<'a> {
    /// The grant.
    pub grant_id: i64,
    /// What to do.
    pub action: UpdateAction,
    /// What made it.
    pub cause: Cause,
    /// Why.
    pub reason: Option<&'a str>,
    /// When the partner says it happened (`now` when not said).
    pub happened: Option<DateTime<Utc>>,
}

impl Changes {
    /// Changes to `grants`, read locked, processed at `now`.
    pub fn new(grants: Vec<GrantRecord>, now: DateTime<Utc>) -> Self {
        Changes {
            locked: grants.iter().map(|g| (g.id, g.state)).collect(),
            grants: grants.into_iter().map(|g| (g.id, g)).collect(),
            transitions: Vec::new(),
            deliveries: Vec::new(),
            revoked: Vec::new(),
            now,
        }
    }

    /// True when the grant was locked (it exists, in a state the daemon knows).
    pub fn knows(&self, grant_id: i64) -> bool {
        self.grants.contains_key(&grant_id)
    }

    /// Applies `step` to its grant as it stands; returns why not when it is refused.
    pub fn apply(&mut self, step: Step<'_>) -> Result<(), String> {
        let now = self.now;
        let grant = self
            .grants
            .get_mut(&step.grant_id)
            .ok_or_else(|| format!("no grant {}", step.grant_id))?;
        let happened = step.happened.unwrap_or(now);
        let to = next_state((grant.state, grant.expires_at), step.action, happened, now)
            .map_err(|why| format!("grant {}: {why}", grant.id))?;
        if to == GrantState::Revoked {
            self.revoked.push(grant.clone());
        }
        self.transitions.push(Transition {
            grant_id: grant.id,
            from: grant.state,
            to,
            cause: step.cause,
            reason: step.reason.map(str::to_owned),
            at: now,
        });
        grant.state = to;
        grant.redeemed_at = match to {
            GrantState::Redeemed => Some(happened.naive_utc()),
            GrantState::Granted => None,
            _ => grant.redeemed_at,
        };
        if let Some(kind) = event_of(to) {
            let row = events::coupon_lifecycle(kind, grant, (to, step.reason), now);
            self.deliveries.push(row);
        }
        Ok(())
    }

    /// Writes every grant's new state (one guarded UPDATE per pair of states, each
    /// redemption at its own time), the transitions and the outbox rows. A guard that
    /// fails means a grant moved under its lock, which the transaction cannot explain:
    /// it is rolled back.
    pub async fn write(&self, conn: &mut Conn) -> Result<(), LifecycleError> {
        let mut redeemed: BTreeMap<GrantState, Vec<(i64, NaiveDateTime)>> = BTreeMap::new();
        let mut moves: BTreeMap<(GrantState, GrantState), Vec<i64>> = BTreeMap::new();
        let touched: std::collections::BTreeSet<i64> =
            self.transitions.iter().map(|t| t.grant_id).collect();
        for id in touched {
            let (from, grant) = (self.locked[&id], &self.grants[&id]);
            match grant.state {
                GrantState::Granted if from == GrantState::Granted => continue,
                GrantState::Redeemed => {
                    let at = grant.redeemed_at.unwrap_or(self.now.naive_utc());
                    redeemed.entry(from).or_default().push((id, at));
                }
                to => moves.entry((from, to)).or_default().push(id),
            }
        }
        let now = self.now.naive_utc();
        for (from, grants) in &redeemed {
            let moved = conn.redeem_grants(grants, *from).await?;
            check_moved(moved, grants.len(), (*from, GrantState::Redeemed))?;
        }
        for ((from, to), ids) in &moves {
            let moved = conn.set_grant_states(ids, (*from, *to), now).await?;
            check_moved(moved, ids.len(), (*from, *to))?;
        }
        conn.record_transitions(&self.transitions).await?;
        conn.record_deliveries(&self.deliveries).await?;
        Ok(())
    }
}

/// Fails the transaction when fewer than `expected` grants moved from `from` to `to`.
fn check_moved(
    moved: usize,
    expected: usize,
    (from, to): (GrantState, GrantState),
) -> Result<(), LifecycleError> {
    match moved == expected {
        true => Ok(()),
        false => Err(LifecycleError::Moved(format!(
            "{} of {expected} grants in {from} moved to {to} under their locks",
            expected - moved
        ))),
    }
}
