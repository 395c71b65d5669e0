//! The figures of `couponsd report` as gauges: grants by campaign, coupon and state,
//! face value granted and redeemed, and each budget's use. They are read with the
//! other database gauges ([`super::refresh`]) but at most once per
//! [`REPORT_REFRESH_INTERVAL`]: their query groups the whole grants ledger, which is
//! too much to run every five seconds on every daemon. Every daemon exposes the same
//! figures (they describe the shared database): take one, never their sum.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::CouponLabels;
use crate::domain::GrantState;
use crate::store::report::Report;

/// How often the report gauges are read from the database, at most.
pub const REPORT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    campaign: String,
    coupon: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CampaignLabels {
    campaign: String,
}

/// The report's gauges.
#[derive(Debug, Default)]
pub struct ReportGauges {
    grants: Family<StateLabels, Gauge>,
    granted_value: Family<CouponLabels, Gauge>,
    redeemed_value: Family<CouponLabels, Gauge>,
    budget: Family<CampaignLabels, Gauge>,
    budget_granted: Family<CampaignLabels, Gauge>,
    read_at: Mutex<Option<Instant>>,
}

impl ReportGauges {
    /// Registers the gauges in `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "grants_by_state",
            "Grants by campaign, coupon and state now (granted: every grant made) \
             (database, refreshed every minute)",
            self.grants.clone(),
        );
        r.register(
            "granted_face_value_cents",
            "Face value of every grant made, by campaign and coupon (database, refreshed every minute)",
            self.granted_value.clone(),
        );
        r.register(
            "redeemed_face_value_cents",
            "Face value of the grants now redeemed, by campaign and coupon (database, refreshed every minute)",
            self.redeemed_value.clone(),
        );
        r.register(
            "campaign_budget_cents",
            "A campaign's budget (database, refreshed every minute)",
            self.budget.clone(),
        );
        r.register(
            "campaign_budget_granted_cents",
            "Face value taken from a campaign's budget (database, refreshed every minute)",
            self.budget_granted.clone(),
        );
    }

    /// True when the gauges were never set or last set [`REPORT_REFRESH_INTERVAL`]
    /// ago.
    pub fn due(&self) -> bool {
        let read_at = self.read_at.lock().unwrap_or_else(|p| p.into_inner());
        read_at.is_none_or(|t| t.elapsed() >= REPORT_REFRESH_INTERVAL)
    }

    /// Sets the gauges to `report` (of every grant).
    pub fn set(&self, report: &Report) {
        *self.read_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.grants.clear();
        self.granted_value.clear();
        self.redeemed_value.clear();
        self.budget.clear();
        self.budget_granted.clear();
        for k in &report.campaigns {
            let campaign = CampaignLabels {
                campaign: k.campaign.clone(),
            };
            if let Some(b) = k.budget_cents {
                self.budget.get_or_create(&campaign).set(b);
            }
            self.budget_granted
                .get_or_create(&campaign)
                .set(k.budget_granted_cents);
            for c in &k.coupons {
                let f = &c.figures;
                let labels = CouponLabels {
                    campaign: k.campaign.clone(),
                    coupon: c.coupon.clone(),
                };
                let by_state = [
                    (GrantState::Granted, f.granted),
                    (GrantState::Redeemed, f.redeemed),
                    (GrantState::Revoked, f.revoked),
                    (GrantState::Expired, f.expired),
                ];
                for (state, n) in by_state {
                    let labels = StateLabels {
                        campaign: k.campaign.clone(),
                        coupon: c.coupon.clone(),
                        state: state.as_str().to_owned(),
                    };
                    self.grants.get_or_create(&labels).set(n);
                }
                self.granted_value
                    .get_or_create(&labels)
                    .set(f.granted_face_value_cents);
                self.redeemed_value
                    .get_or_create(&labels)
                    .set(f.redeemed_face_value_cents);
            }
        }
    }
}
