//! The transaction of one batch of partner updates: claim (`FOR UPDATE SKIP LOCKED`),
//! parse, resolve codes to grants and lock them in one statement, lock the grants named
//! by id in id order, apply each update in id order, write the grants' states, their
//! transitions and outbox rows and the updates' statuses; last, what revocations give
//! back. All of it commits or none.

use std::collections::{HashMap, HashSet};

use super::changes::{Changes, Step};
use super::giveback::GiveBack;
use super::parse::{parse_batch, GrantUpdate, Target};
use super::{LifecycleError, UpdatesSummary};
use crate::config::Config;
use crate::domain::lifecycle::{Cause, GrantRecord};
use crate::domain::UpdateStatus;
use crate::pipeline::grant::Outlets;
use crate::store::deliveries::NewDelivery;
use crate::store::updates::FinishedUpdate;
use crate::store::{self, Conn};

/// Where a batch's updates come from.
#[derive(Debug, Clone)]
pub(super) enum Batch {
    /// Up to this many queued updates, oldest first.
    Take(i64),
    /// Those of these ids still queued (a part of a batch that failed).
    Part(Vec<i64>),
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub(super) summary: UpdatesSummary,
    /// The ids the batch claimed, for splitting it should it fail.
    pub(super) ids: Vec<i64>,
    /// The events held for this daemon's dispatcher.
    pub(super) handed_off: Vec<NewDelivery>,
    /// The channels of the events written due at once, for the outbox.
    pub(super) outbox_channels: HashSet<String>,
}

/// Runs one batch in a write transaction (on SQLite the one writer is taken first).
pub(super) async fn update_batch(
    conn: &mut Conn,
    (config, outlets): (&Config, &Outlets),
    batch: &Batch,
) -> Result<Written, LifecycleError> {
    conn.write_transaction(async |conn| {
        let rows = match batch {
            Batch::Take(limit) => conn.take_queued_updates(*limit).await?,
            Batch::Part(ids) => conn.take_queued_updates_of(ids).await?,
        };
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let now = store::now();
        let (valid, rejected) = parse_batch(rows);
        let mut finished: Vec<FinishedUpdate> = rejected
            .into_iter()
            .map(|r| refused(r.id, r.reason))
            .collect();
        let (targets, grants) = lock_targets(conn, &valid, &channels_of(config)).await?;
        let mut changes = Changes::new(grants, now.and_utc());
        for (update, target) in valid.iter().zip(targets) {
            finished.push(
                match target.and_then(|id| apply(&mut changes, update, id)) {
                    Ok(()) => FinishedUpdate {
                        id: update.id,
                        status: UpdateStatus::Done,
                        error: None,
                    },
                    Err(why) => refused(update.id, format!("{}: {why}", update.label())),
                },
            );
        }
        let (handed_off, outbox_channels) = hold(&mut changes.deliveries, outlets);
        changes.write(conn).await?;
        conn.finish_updates(&finished, now).await?;
        // Last: the hot coupon and campaign rows, held only until the commit.
        GiveBack::of(&changes.revoked, config).write(conn).await?;
        Ok(Written {
            summary: UpdatesSummary::of(&finished),
            ids,
            handed_off,
            outbox_channels,
        })
    })
    .await
}

/// Holds the events of the channels whose hand-off has room for this daemon's
/// dispatcher; returns them, and the channels of the others (due at once).
fn hold(deliveries: &mut [NewDelivery], outlets: &Outlets) -> (Vec<NewDelivery>, HashSet<String>) {
    let (mut handed_off, mut outbox_channels) = (Vec::new(), HashSet::new());
    for delivery in deliveries {
        match outlets.hold(delivery) {
            true => handed_off.push(delivery.clone()),
            false => drop(outbox_channels.insert(delivery.channel.clone())),
        }
    }
    (handed_off, outbox_channels)
}

/// The channel of every coupon of the catalog in force, by coupon id.
fn channels_of(config: &Config) -> HashMap<String, String> {
    config
        .campaigns
        .iter()
        .flat_map(|k| &k.coupons)
        .map(|c| (c.id.to_string(), c.channel.to_string()))
        .collect()
}

fn refused(id: i64, reason: String) -> FinishedUpdate {
    FinishedUpdate {
        id,
        status: UpdateStatus::Rejected,
        error: Some(reason),
    }
}

/// Applies one update to its grant as the batch has left it.
fn apply(changes: &mut Changes, update: &GrantUpdate, grant_id: i64) -> Result<(), String> {
    if !changes.knows(grant_id) {
        return Err(format!("grant_id: no grant {grant_id}"));
    }
    changes.apply(Step {
        grant_id,
        action: update.action,
        cause: Cause::Update(update.key.clone()),
        reason: update.reason.as_deref(),
        happened: update.occurred_at,
    })
}

/// Each update's grant id (its own, or the grant that holds its code, or why none),
/// and the grants they name, locked: the grants of the codes in one statement that
/// resolves and locks them (in the order of the unique key on `code`), then those named
/// by id and not locked yet, in id order.
async fn lock_targets(
    conn: &mut Conn,
    updates: &[GrantUpdate],
    channels: &HashMap<String, String>,
) -> Result<(Vec<Result<i64, String>>, Vec<GrantRecord>), LifecycleError> {
    let codes: Vec<String> = updates
        .iter()
        .filter_map(|u| match &u.target {
            Target::Code(code) => Some(code.clone()),
            Target::Grant(_) => None,
        })
        .collect();
    let (held, mut grants) = conn.grants_by_code_locked(&codes, channels).await?;
    let held: HashMap<String, i64> = held.into_iter().collect();
    let targets: Vec<Result<i64, String>> = updates
        .iter()
        .map(|u| match &u.target {
            Target::Grant(id) => Ok(*id),
            Target::Code(code) => held
                .get(code)
                .copied()
                .ok_or_else(|| format!("code: no grant holds {code:?}")),
        })
        .collect();
    let by_code: HashSet<i64> = held.values().copied().collect();
    let mut by_id: Vec<i64> = updates
        .iter()
        .filter_map(|u| match u.target {
            Target::Grant(id) if !by_code.contains(&id) => Some(id),
            _ => None,
        })
        .collect();
    by_id.sort_unstable();
    by_id.dedup();
    grants.extend(conn.grants_by_id_with(&by_id, true, channels).await?);
    Ok((targets, grants))
}
