//! The `expire_grants` job: grants whose validity ended move from `granted` to
//! `expired`, then grants of a coupon with `remind_before` get their `coupon.expiring`
//! reminder. One job, so that a tick expires first and never reminds of a grant it
//! could expire instead.
//!
//! Each batch is one transaction: up to [`BATCH`] grants claimed `FOR UPDATE SKIP
//! LOCKED` (`store::expiry`), their new state (or `reminded_at`), a `grant_transitions`
//! row each (job `expire_grants`) and their events in the outbox, committed together,
//! so a grant expires once and is reminded of once however many daemons run the job.
//! The job runs once per tick through `job_leases` like the others; a tick goes on with
//! batches until one comes back short or half of `worker.lease` has passed (the rest
//! waits for the next tick, and the lease never runs out under a running job). It
//! locks grant rows only, which the grant step never locks: it never holds up a grant.

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use tracing::info;

use super::{Deps, EXPIRE_GRANTS};
use crate::domain::lifecycle::{Cause, GrantRecord, Transition};
use crate::domain::GrantState;
use crate::pipeline::dispatch::events::{self, COUPON_EXPIRED, COUPON_EXPIRING};
use crate::store::{self, Conn, Db, StoreError};

/// Grants per transaction.
pub const BATCH: i64 = 500;

/// What one run of the job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Grants moved to `expired`.
    pub expired: usize,
    /// `coupon.expiring` reminders written.
    pub reminded: usize,
}

/// Runs the job once: expiry, then reminders.
pub async fn run(deps: &Deps) -> Result<Tick, StoreError> {
    let budget = deps.config.worker.lease / 2;
    let started = Instant::now();
    let expired = expire(deps, budget).await?;
    let left = budget.saturating_sub(started.elapsed());
    let reminded = remind(deps, left).await?;
    if expired + reminded > 0 {
        info!(expired, reminded, "grants expired and reminded");
    }
    Ok(Tick { expired, reminded })
}

/// Expires grants in batches for up to `budget` (at least one batch); returns how many.
pub async fn expire(deps: &Deps, budget: Duration) -> Result<usize, StoreError> {
    let started = Instant::now();
    let mut total = 0;
    loop {
        let n = expire_batch(&deps.db, BATCH).await?;
        total += n;
        if n > 0 {
            deps.outbox_ready.notify_one();
        }
        if (n as i64) < BATCH || started.elapsed() >= budget {
            return Ok(total);
        }
    }
}

/// One transaction: up to `limit` grants past their `expires_at` become `expired`,
/// each with its transition and its `coupon.expired` event.
pub async fn expire_batch(db: &Db, limit: i64) -> Result<usize, StoreError> {
    let now = store::now();
    let mut conn = db.get().await?;
    let expired = conn
        .write_transaction(async |conn: &mut Conn| {
            let ids = conn.claim_expired_grants(now, limit).await?;
            let grants = conn.grants_by_id(&ids, false).await?;
            let ids: Vec<i64> = grants.iter().map(|g| g.id).collect();
            conn.set_grant_states(&ids, (GrantState::Granted, GrantState::Expired), now)
                .await?;
            let expired = (COUPON_EXPIRED, GrantState::Expired, true);
            record(conn, &grants, expired, now).await?;
            Ok::<_, StoreError>(grants.len())
        })
        .await?;
    Ok(expired)
}

/// Writes the event `kind` of each of `grants`, now in `state`, and with `moved` (the
/// grants changed state, to `state`) their transitions; a reminder changes no state.
async fn record(
    conn: &mut Conn,
    grants: &[GrantRecord],
    (kind, state, moved): (&str, GrantState, bool),
    now: chrono::NaiveDateTime,
) -> Result<(), StoreError> {
    let at = now.and_utc();
    if moved {
        let transitions: Vec<Transition> = grants
            .iter()
            .map(|g| Transition {
                grant_id: g.id,
                from: g.state,
                to: state,
                cause: Cause::Job(EXPIRE_GRANTS.to_owned()),
                reason: None,
                at,
            })
            .collect();
        conn.record_transitions(&transitions).await?;
    }
    let deliveries: Vec<_> = grants
        .iter()
        .map(|g| events::coupon_lifecycle(kind, g, (state, None), at))
        .collect();
    conn.record_deliveries(&deliveries).await?;
    Ok(())
}

/// Writes the reminders due for every coupon of the catalog in force with
/// `remind_before`, in batches, for up to `budget` (at least one batch per coupon);
/// returns how many.
pub async fn remind(deps: &Deps, budget: Duration) -> Result<usize, StoreError> {
    let started = Instant::now();
    let catalog = deps.catalog.current();
    let coupons = catalog
        .campaigns
        .iter()
        .flat_map(|k| &k.coupons)
        .filter_map(|c| Some((c.id.to_string(), c.remind_before?)));
    let mut total = 0;
    for (coupon, ahead) in coupons {
        loop {
            let n = remind_batch(&deps.db, &coupon, ahead, BATCH).await?;
            total += n;
            if n > 0 {
                deps.outbox_ready.notify_one();
            }
            if (n as i64) < BATCH || started.elapsed() >= budget {
                break;
            }
        }
    }
    Ok(total)
}

/// One transaction: up to `limit` grants of `coupon` that expire within `ahead` and
/// were not reminded of get `reminded_at` and their `coupon.expiring` event.
pub async fn remind_batch(
    db: &Db,
    coupon: &str,
    ahead: TimeDelta,
    limit: i64,
) -> Result<usize, StoreError> {
    let now = store::now();
    let until = now.checked_add_signed(ahead).unwrap_or(now);
    let mut conn = db.get().await?;
    let reminded = conn
        .write_transaction(async |conn: &mut Conn| {
            let ids = conn
                .claim_due_reminders(coupon, (now, until), limit)
                .await?;
            let grants = conn.grants_by_id(&ids, false).await?;
            let ids: Vec<i64> = grants.iter().map(|g| g.id).collect();
            conn.mark_reminded(&ids, now).await?;
            let expiring = (COUPON_EXPIRING, GrantState::Granted, false);
            record(conn, &grants, expiring, now).await?;
            Ok::<_, StoreError>(grants.len())
        })
        .await?;
    Ok(reminded)
}
