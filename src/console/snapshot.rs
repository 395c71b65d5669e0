//! What the console's pages show, read in one go through the console's own read-only
//! pool and shared by the requests of the next second ([`FRESH_FOR`]); the report's
//! figures, one `GROUP BY` over every grant, at most once per
//! [`REPORT_REFRESH_INTERVAL`], as the report's gauges are.
//!
//! Every read is bounded: the coupons and campaigns of the catalog, the samples and
//! rotations of the plotted window ([`PLOT_WINDOW`]), counts per channel, and the newest
//! [`DEAD_SHOWN`] dead deliveries through the outbox's status index. A read that takes
//! longer than [`READ_TIMEOUT`] gives the page a 503 instead of holding the request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use tokio::sync::Mutex;

use super::plot::MAX_POINTS;
use super::Deps;
use crate::domain::chain::CouponStock;
use crate::metrics::REPORT_REFRESH_INTERVAL;
use crate::schedule::inventory::{current_rates, Rates};
use crate::store::deliveries::{DeliveryRecord, DisabledChannel};
use crate::store::jobs::{CampaignMarks, Rotation};
use crate::store::report::Report;
use crate::store::{self, StoreError};

/// How far back the burn-down plots look.
pub const PLOT_WINDOW: TimeDelta = TimeDelta::hours(6);

/// How long one read serves the pages.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The longest the pages wait for the database.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The dead deliveries listed (the counts per channel are of all of them).
pub const DEAD_SHOWN: i64 = 20;

/// The rotations listed.
pub const ROTATIONS_SHOWN: i64 = 200;

/// Why the pages could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It did not answer within [`READ_TIMEOUT`].
    #[error("the database did not answer within {READ_TIMEOUT:?}")]
    TimedOut,
}

impl From<diesel::result::Error> for ReadError {
    fn from(e: diesel::result::Error) -> Self {
        ReadError::Store(e.into())
    }
}

/// The report of every grant and when it was read (the database's clock).
pub type ReportRead = Arc<(Report, DateTime<Utc>)>;

/// What the pages show, as read at `taken_at`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was read (the database's clock).
    pub taken_at: DateTime<Utc>,
    /// Every coupon still in the config, by campaign and chain position.
    pub coupons: Vec<CouponStock>,
    /// Grants per second of each coupon over the inventory check's rate window.
    pub rates: Rates,
    /// Each coupon's samples within [`PLOT_WINDOW`] at the times a plot draws
    /// (`plotted_times`), oldest first.
    pub samples: HashMap<String, Vec<(NaiveDateTime, i64)>>,
    /// The rotations within [`PLOT_WINDOW`], newest first.
    pub rotations: Vec<Rotation>,
    /// The campaigns' alert marks that are set.
    pub marks: Vec<CampaignMarks>,
    /// The coupons announced running low and not restocked since.
    pub running_low: Vec<String>,
    /// Dead deliveries per channel.
    pub dead: Vec<(String, i64)>,
    /// Pending deliveries held by a disabled channel, per channel.
    pub held: Vec<(String, i64)>,
    /// The disabled channels.
    pub disabled: Vec<DisabledChannel>,
    /// The newest dead deliveries, at most [`DEAD_SHOWN`].
    pub newest_dead: Vec<DeliveryRecord>,
    /// The report of every grant, and when it was read.
    pub report: ReportRead,
}

/// The last snapshot and the last report, shared by the requests.
#[derive(Default)]
pub struct Cache {
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    snapshot: Option<(Instant, Arc<Snapshot>)>,
    report: Option<(Instant, ReportRead)>,
}

impl Cache {
    /// The snapshot of the last second, or a new one. One request reads while the
    /// others wait for it and then share it.
    pub async fn get(&self, deps: &Deps) -> Result<Arc<Snapshot>, ReadError> {
        let mut last = self.last.lock().await;
        if let Some((at, snapshot)) = &last.snapshot {
            if at.elapsed() < FRESH_FOR {
                return Ok(snapshot.clone());
            }
        }
        let report = match &last.report {
            Some((at, report)) if at.elapsed() < REPORT_REFRESH_INTERVAL => Some(report.clone()),
            _ => None,
        };
        let read = tokio::time::timeout(READ_TIMEOUT, read(deps, report));
        let snapshot = Arc::new(read.await.map_err(|_| ReadError::TimedOut)??);
        if !last
            .report
            .as_ref()
            .is_some_and(|(_, r)| Arc::ptr_eq(r, &snapshot.report))
        {
            last.report = Some((Instant::now(), snapshot.report.clone()));
        }
        last.snapshot = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// Drops the snapshot (not the report), so that the next page reads again.
    pub async fn forget(&self) {
        self.last.lock().await.snapshot = None;
    }
}

/// Of `times` (oldest first, from `since` on), the last of each of [`MAX_POINTS`] equal
/// slices of the plotted window up to `now`: no plot draws more points than that, and
/// each draws the last sample of a slice of its width. Reading only these takes the
/// rows read from one per sample to one per point of a line.
fn plotted_times(
    times: &[NaiveDateTime],
    since: NaiveDateTime,
    now: DateTime<Utc>,
) -> Vec<NaiveDateTime> {
    let window = (now.naive_utc() - since).num_milliseconds().max(1) as f64;
    let slice = |t: &NaiveDateTime| {
        let offset = (*t - since).num_milliseconds() as f64;
        (offset / window * MAX_POINTS)
            .floor()
            .clamp(0.0, MAX_POINTS) as i64
    };
    let mut picked: Vec<NaiveDateTime> = Vec::new();
    for t in times {
        match picked.last_mut() {
            Some(last) if slice(last) == slice(t) => *last = *t,
            _ => picked.push(*t),
        }
    }
    picked
}

/// Reads a snapshot; `report` is the last report while it is fresh.
async fn read(deps: &Deps, report: Option<ReportRead>) -> Result<Snapshot, ReadError> {
    let now = store::now().and_utc();
    // Its own connection of the console's pool: taken before ours.
    let rates = current_rates(&deps.reads).await?;
    let since = (now - PLOT_WINDOW).naive_utc();
    let conn = &mut deps.reads.get().await?;
    let coupons = conn.coupon_stock().await?;
    // Only the samples a plot draws: the sample times first, then the rows of at most
    // one time per point of a line.
    let times = plotted_times(&conn.stock_sample_times_since(since).await?, since, now);
    let mut samples: HashMap<String, Vec<(NaiveDateTime, i64)>> = HashMap::new();
    for s in conn.stock_samples_at(&times).await? {
        samples
            .entry(s.coupon_id)
            .or_default()
            .push((s.sampled_at, s.remaining));
    }
    for line in samples.values_mut() {
        line.sort_unstable();
    }
    let report = match report {
        Some(report) => report,
        None => Arc::new((conn.report(None).await?, now)),
    };
    Ok(Snapshot {
        taken_at: now,
        coupons,
        rates,
        samples,
        rotations: conn.rotations_since(since, ROTATIONS_SHOWN).await?,
        marks: conn.alert_marks().await?,
        running_low: conn.running_low_coupons().await?,
        dead: conn.dead_by_channel().await?,
        held: conn.held_deliveries().await?,
        disabled: conn.disabled_channel_states().await?,
        newest_dead: conn.newest_dead(DEAD_SHOWN).await?,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> NaiveDateTime {
        DateTime::from_timestamp(1_790_000_000, 0)
            .unwrap()
            .naive_utc()
            + TimeDelta::minutes(minutes)
    }

    #[test]
    fn one_time_per_point_of_a_line_the_last_of_its_slice() {
        // Six hours at one sample a minute: 360 times, 120 slices of three minutes.
        let times: Vec<NaiveDateTime> = (0..360).map(at).collect();
        let picked = plotted_times(&times, at(0), at(360).and_utc());
        assert_eq!(picked.len(), MAX_POINTS as usize);
        assert_eq!(picked[0], at(2), "the last of the first slice");
        assert_eq!(
            picked[picked.len() - 1],
            at(359),
            "the newest sample is drawn"
        );
        assert!(picked
            .windows(2)
            .all(|w| w[1] - w[0] == TimeDelta::minutes(3)));
    }

    #[test]
    fn sparse_times_are_all_kept() {
        let times = [at(0), at(100), at(200), at(359)];
        assert_eq!(plotted_times(&times, at(0), at(360).and_utc()), times);
        assert!(plotted_times(&[], at(0), at(360).and_utc()).is_empty());
    }
}
