//! `sample_stock`: records every coupon's remaining stock once per tick of
//! `schedule.sample_stock` (one daemon per tick, through `job_leases`), and prunes the
//! samples older than [`SAMPLES_KEPT`]. The ops console draws its burn-down plots from
//! them; rotations are read from `coupon_rotations`, where the inventory check audits
//! them.

use chrono::{DurationRound, TimeDelta};
use tracing::debug;

use super::Deps;
use crate::store::{self, StoreError};

/// How long samples are kept: the console plots the last hours, and at the default
/// tick (a minute) a day is 1,440 rows per coupon.
pub const SAMPLES_KEPT: TimeDelta = TimeDelta::hours(24);

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sampled {
    /// Coupons sampled.
    pub recorded: usize,
    /// Old samples deleted.
    pub pruned: usize,
}

/// Samples every coupon at the database's time now (to the second), then prunes.
pub async fn run(deps: &Deps) -> Result<Sampled, StoreError> {
    let now = store::now();
    let at = now.duration_trunc(TimeDelta::seconds(1)).unwrap_or(now);
    let mut conn = deps.db.get().await?;
    let recorded = conn.record_stock_samples(at).await?;
    let pruned = conn.prune_stock_samples(now - SAMPLES_KEPT).await?;
    debug!(recorded, pruned, "stock sampled");
    Ok(Sampled { recorded, pruned })
}
