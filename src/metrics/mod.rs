//! Metrics in the Prometheus text format (`prometheus-client`), served on `/metrics`
//! by the runtime's listener (`runtime::http`).
//!
//! Counters and histograms are recorded where things happen (a committed batch in
//! `grant`, an attempt in `dispatch::worker`) and count this daemon's work only: sum
//! them over the daemons. Gauges that describe the shared database (queue depth, stock,
//! the outbox) are read by [`refresh`] every few seconds rather than on every scrape,
//! so that a scrape never waits for the database and many scrapers cost nothing more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::domain::{DeliveryStatus, Outcome, RequestStatus};
use crate::store::grants::NewGrant;
use crate::store::requests::Finished;
use crate::store::{self, Db, StoreError};

mod liveness;
mod report;
pub use liveness::{Heartbeat, Liveness};
pub use report::REPORT_REFRESH_INTERVAL;

/// How often [`refresh`] reads the database gauges.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CouponLabels {
    campaign: String,
    coupon: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    result: String,
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

/// 5 ms to about 10 s: one webhook attempt.
fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// What one committed batch did, by label: built inside the batch's transaction,
/// recorded only after it commits (a transaction tried again is not counted twice).
#[derive(Debug, Clone, Default)]
pub struct BatchTally {
    /// (status, outcome) of every request the batch finished.
    pub requests: Vec<(RequestStatus, Option<Outcome>)>,
    /// (campaign, coupon) of every grant.
    pub grants: Vec<(String, String)>,
    /// Time spent evaluating the rules for the batch.
    pub rule_evaluation: Duration,
}

impl BatchTally {
    /// The tally of a batch's final statuses and grants.
    pub fn of(finished: &[Finished], grants: &[NewGrant]) -> Self {
        Self {
            requests: finished.iter().map(|f| (f.status, f.outcome)).collect(),
            grants: grants
                .iter()
                .map(|g| (g.campaign_id.clone(), g.coupon_id.clone()))
                .collect(),
            rule_evaluation: Duration::ZERO,
        }
    }
}

/// Every metric couponsd exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    grants: Family<CouponLabels, Counter>,
    granted: AtomicU64,
    batch_duration: Histogram,
    rule_evaluation: Histogram,
    deliveries: Family<DeliveryLabels, Counter>,
    attempt_duration: Family<ChannelLabels, Histogram, fn() -> Histogram>,
    rotations: Counter,
    grant_updates: Family<UpdateLabels, Counter>,
    stock_remaining: Family<CouponLabels, Gauge>,
    queue_depth: Gauge,
    queue_oldest_age: Gauge<f64, AtomicU64>,
    deliveries_pending: Gauge,
    deliveries_dead: Gauge,
    channel_disabled: Family<ChannelLabels, Gauge>,
    database_up: Gauge,
    refreshed: AtomicBool,
    report: report::ReportGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered under the `couponsd_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("couponsd");
        let m = Self {
            requests: Family::default(),
            grants: Family::default(),
            granted: AtomicU64::new(0),
            batch_duration: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            rule_evaluation: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            deliveries: Family::default(),
            attempt_duration: Family::new_with_constructor(attempt_histogram),
            rotations: Counter::default(),
            grant_updates: Family::default(),
            stock_remaining: Family::default(),
            queue_depth: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            deliveries_pending: Gauge::default(),
            deliveries_dead: Gauge::default(),
            channel_disabled: Family::default(),
            database_up: Gauge::default(),
            refreshed: AtomicBool::new(false),
            report: report::ReportGauges::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Trigger requests this daemon finished, by final status and outcome",
            m.requests.clone(),
        );
        r.register(
            "grants",
            "Coupons this daemon granted, by campaign and coupon",
            m.grants.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "From claiming a batch to committing it",
            m.batch_duration.clone(),
        );
        r.register(
            "rule_evaluation_seconds",
            "Time spent evaluating the rules for one batch",
            m.rule_evaluation.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts this daemon made, by result (delivered, retry, dead) and channel",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_attempt_duration_seconds",
            "Latency of one webhook attempt, by channel",
            m.attempt_duration.clone(),
        );
        r.register(
            "rotations",
            "Coupons rotated out by this daemon's inventory checks",
            m.rotations.clone(),
        );
        r.register(
            "grant_updates",
            "Partner updates of grants this daemon finished, by final status (done, rejected)",
            m.grant_updates.clone(),
        );
        r.register(
            "coupon_stock_remaining",
            "Stock left per coupon (database, refreshed every 5s)",
            m.stock_remaining.clone(),
        );
        r.register(
            "queue_depth",
            "Queued trigger requests (database, refreshed every 5s)",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued trigger request (database, refreshed every 5s)",
            m.queue_oldest_age.clone(),
        );
        r.register(
            "deliveries_pending",
            "Deliveries waiting to be sent or retried (database, refreshed every 5s)",
            m.deliveries_pending.clone(),
        );
        r.register(
            "deliveries_dead",
            "Dead deliveries kept for replay (database, refreshed every 5s)",
            m.deliveries_dead.clone(),
        );
        r.register(
            "channel_disabled",
            "1 for a channel disabled by a 410 Gone (database, refreshed every 5s)",
            m.channel_disabled.clone(),
        );
        r.register(
            "database_up",
            "1 when the database answered its last probe (once a second)",
            m.database_up.clone(),
        );
        m.report.register(r);
        Self { registry, ..m }
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records a committed batch.
    pub fn record_batch(&self, tally: &BatchTally, took: Duration) {
        for (status, outcome) in &tally.requests {
            let labels = RequestLabels {
                status: status.as_str().to_owned(),
                outcome: outcome.map_or("none", Outcome::as_str).to_owned(),
            };
            self.requests.get_or_create(&labels).inc();
        }
        for (campaign, coupon) in &tally.grants {
            let labels = CouponLabels {
                campaign: campaign.clone(),
                coupon: coupon.clone(),
            };
            self.grants.get_or_create(&labels).inc();
        }
        self.granted
            .fetch_add(tally.grants.len() as u64, Ordering::Relaxed);
        self.batch_duration.observe(took.as_secs_f64());
        self.rule_evaluation
            .observe(tally.rule_evaluation.as_secs_f64());
    }

    /// Records the latency of one HTTP attempt.
    pub fn observe_attempt(&self, channel: &str, took: Duration) {
        let labels = ChannelLabels {
            channel: channel.to_owned(),
        };
        self.attempt_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records the result of one attempt: the delivery's new status.
    pub fn record_delivery(&self, channel: &str, status: DeliveryStatus) {
        let result = match status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Pending => "retry",
            DeliveryStatus::Dead => "dead",
        };
        let labels = DeliveryLabels {
            result: result.to_owned(),
            channel: channel.to_owned(),
        };
        self.deliveries.get_or_create(&labels).inc();
    }

    /// Records coupons rotated by an inventory check.
    pub fn record_rotations(&self, count: usize) {
        self.rotations.inc_by(count as u64);
    }

    /// Records a committed batch of partner updates: `done` applied, `rejected`.
    pub fn record_updates(&self, done: usize, rejected: usize) {
        for (status, n) in [("done", done), ("rejected", rejected)] {
            let labels = UpdateLabels {
                status: status.to_owned(),
            };
            self.grant_updates.get_or_create(&labels).inc_by(n as u64);
        }
    }

    /// Sets `database_up`: whether the database answered its last probe.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// Coupons this daemon granted since it started.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// The database gauges as last refreshed, for the systemd status line.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            refreshed: self.refreshed.load(Ordering::Relaxed),
            database_up: self.database_up.get() == 1,
            queue_depth: self.queue_depth.get(),
            oldest_age: self.queue_oldest_age.get(),
            pending: self.deliveries_pending.get(),
            dead: self.deliveries_dead.get(),
        }
    }
}

/// The database gauges at the last refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// False until the first refresh ran.
    pub refreshed: bool,
    /// Whether the database answered its last probe.
    pub database_up: bool,
    /// Queued requests.
    pub queue_depth: i64,
    /// Age of the oldest queued request, in seconds.
    pub oldest_age: f64,
    /// Pending deliveries.
    pub pending: i64,
    /// Dead deliveries.
    pub dead: i64,
}

/// Reads the database gauges: queue depth and oldest age, stock per coupon, pending
/// and dead deliveries, disabled channels, and at most once a minute the report's
/// figures (`report.rs`). On failure nothing changes: whether the
/// database answers is `database_up`, which the daemon's probe keeps
/// ([`crate::store::health`]).
pub async fn refresh(db: &Db, metrics: &Metrics, config: &Config) -> Result<(), StoreError> {
    metrics.refreshed.store(true, Ordering::Relaxed);
    let read = async {
        let mut conn = db.get().await?;
        let queue = conn.queue_depth().await?;
        let stock = conn.coupon_stock().await?;
        let outbox = conn.count_deliveries().await?;
        let disabled = conn.disabled_channels().await?;
        Ok::<_, StoreError>((queue, stock, outbox, disabled))
    };
    let ((depth, oldest), stock, outbox, disabled) = read.await?;
    if metrics.report.due() {
        let report = db.get().await?.report(None).await?;
        metrics.report.set(&report);
    }
    metrics.queue_depth.set(depth);
    let age = oldest
        .map(|t| (store::now() - t).as_seconds_f64().max(0.0))
        .unwrap_or(0.0);
    metrics.queue_oldest_age.set(age);
    metrics.stock_remaining.clear();
    for c in stock {
        let labels = CouponLabels {
            campaign: c.campaign_id,
            coupon: c.id,
        };
        metrics
            .stock_remaining
            .get_or_create(&labels)
            .set(c.remaining);
    }
    let count = |status: DeliveryStatus| {
        outbox
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .sum()
    };
    metrics
        .deliveries_pending
        .set(count(DeliveryStatus::Pending));
    metrics.deliveries_dead.set(count(DeliveryStatus::Dead));
    for name in config.channels.keys() {
        let labels = ChannelLabels {
            channel: name.to_string(),
        };
        let off = disabled.iter().any(|d| d == name.as_str());
        metrics
            .channel_disabled
            .get_or_create(&labels)
            .set(i64::from(off));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
