//! The figures of `couponsd report`, the report's Prometheus gauges and the
//! reconciliation of grant states: grants counted by coupon and state, transitions
//! counted by coupon and move (the budgets are `Conn::campaign_budgets` of
//! `records.rs`). Each is one `GROUP BY` query; nothing here locks. [`Conn::report`]
//! puts them together per campaign and coupon ([`Report`]).

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::Serialize;

use super::schema::grants;
use super::schema::grants::dsl as g;
use super::{Conn, QueryResult};
use crate::domain::GrantState;

/// Grants of one coupon in one state, with one face value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    /// The campaign.
    pub campaign_id: String,
    /// The coupon.
    pub coupon_id: String,
    /// The state as stored (a word written by hand is kept as it is).
    pub state: String,
    /// The face value of each of these grants, in cents.
    pub face_value_cents: i64,
    /// How many.
    pub grants: i64,
}

/// Transitions of one coupon's grants from one state to another.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct MoveCount {
    /// The coupon.
    #[diesel(sql_type = Text)]
    pub coupon_id: String,
    /// The state left.
    #[diesel(sql_type = Text)]
    pub from_state: String,
    /// The state entered.
    #[diesel(sql_type = Text)]
    pub to_state: String,
    /// How many.
    #[diesel(sql_type = BigInt)]
    pub transitions: i64,
}

/// Reads for the report and the reconciliation.
impl Conn {
    /// Grants counted by campaign, coupon, state and face value (the face value is
    /// grouped rather than summed: `SUM` of a BIGINT is a DECIMAL on MySQL). With
    /// `since`, only the grants granted at or after it.
    pub async fn grants_by_state(
        &mut self,
        since: Option<NaiveDateTime>,
    ) -> QueryResult<Vec<StateCount>> {
        let columns = (g::campaign_id, g::coupon_id, g::state, g::face_value_cents);
        let select = (
            g::campaign_id,
            g::coupon_id,
            g::state,
            g::face_value_cents,
            diesel::dsl::count_star(),
        );
        let rows: Vec<(String, String, String, i64, i64)> = match since {
            Some(since) => {
                let query = grants::table
                    .filter(g::granted_at.ge(since))
                    .group_by(columns)
                    .select(select);
                self.load(query).await?
            }
            None => {
                let query = grants::table.group_by(columns).select(select);
                self.load(query).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(campaign_id, coupon_id, state, face_value_cents, grants)| StateCount {
                    campaign_id,
                    coupon_id,
                    state,
                    face_value_cents,
                    grants,
                },
            )
            .collect())
    }

    /// Transitions counted by the coupon of their grant and by move (a join grouped on
    /// both tables' columns, which diesel's query builder cannot say).
    pub async fn transitions_by_coupon(&mut self) -> QueryResult<Vec<MoveCount>> {
        let query = diesel::sql_query(
            "SELECT g.coupon_id AS coupon_id, t.from_state AS from_state, \
             t.to_state AS to_state, COUNT(*) AS transitions \
             FROM grant_transitions t JOIN grants g ON g.id = t.grant_id \
             GROUP BY g.coupon_id, t.from_state, t.to_state",
        );
        self.load(query).await
    }

    /// The report's figures per campaign and coupon: every campaign and every coupon
    /// still in the config (coupons removed from it only when they have grants), with
    /// `since`, of the grants granted at or after it; the budgets are the campaigns'
    /// whole ledgers either way.
    pub async fn report(&mut self, since: Option<NaiveDateTime>) -> QueryResult<Report> {
        let coupons = self.coupon_stock().await?;
        let budgets = self.campaign_budgets().await?;
        let states = self.grants_by_state(since).await?;
        let mut campaigns: BTreeMap<String, CampaignFigures> = budgets
            .into_iter()
            .map(|b| {
                let figures = CampaignFigures {
                    campaign: b.campaign_id.clone(),
                    budget_cents: b.budget_cents,
                    budget_granted_cents: b.granted_cents,
                    ..CampaignFigures::default()
                };
                (b.campaign_id, figures)
            })
            .collect();
        let listed = coupons.into_iter().map(|c| (c.campaign_id, c.id));
        let granted = states
            .iter()
            .map(|s| (s.campaign_id.clone(), s.coupon_id.clone()));
        for (campaign, coupon) in listed.chain(granted) {
            let k = campaigns.entry(campaign.clone()).or_default();
            k.campaign = campaign;
            if !k.coupons.iter().any(|c| c.coupon == coupon) {
                let figures = Figures::default();
                k.coupons.push(CouponFigures { coupon, figures });
            }
        }
        for s in &states {
            let k = campaigns.entry(s.campaign_id.clone()).or_default();
            k.figures.add(s);
            if let Some(c) = k.coupons.iter_mut().find(|c| c.coupon == s.coupon_id) {
                c.figures.add(s);
            }
        }
        Ok(Report {
            since,
            campaigns: campaigns.into_values().collect(),
        })
    }
}

/// The figures of `couponsd report`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Only the grants granted at or after this time were counted (`None`: all).
    pub since: Option<NaiveDateTime>,
    /// Every campaign, in id order.
    pub campaigns: Vec<CampaignFigures>,
}

/// One campaign's figures: its grants' and its budget's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CampaignFigures {
    /// The campaign.
    pub campaign: String,
    /// Its grants, every coupon together.
    pub figures: Figures,
    /// Its budget, if it has one.
    pub budget_cents: Option<i64>,
    /// Face value taken from its budget (`campaigns.granted_cents`).
    pub budget_granted_cents: i64,
    /// Its coupons, in chain order.
    pub coupons: Vec<CouponFigures>,
}

/// One coupon's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CouponFigures {
    /// The coupon.
    pub coupon: String,
    /// Its grants.
    pub figures: Figures,
}

/// Grants counted: all of them, and those now in each state after `granted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    /// Every grant, whatever its state now.
    pub granted: i64,
    /// Grants now `redeemed`.
    pub redeemed: i64,
    /// Grants now `revoked`.
    pub revoked: i64,
    /// Grants now `expired`.
    pub expired: i64,
    /// The face value of every grant.
    pub granted_face_value_cents: i64,
    /// The face value of the grants now `redeemed`.
    pub redeemed_face_value_cents: i64,
}

impl Figures {
    fn add(&mut self, s: &StateCount) {
        let value = s.grants * s.face_value_cents;
        self.granted += s.grants;
        self.granted_face_value_cents += value;
        match GrantState::parse(&s.state) {
            Some(GrantState::Redeemed) => {
                self.redeemed += s.grants;
                self.redeemed_face_value_cents += value;
            }
            Some(GrantState::Revoked) => self.revoked += s.grants,
            Some(GrantState::Expired) => self.expired += s.grants,
            Some(GrantState::Granted) | None => {}
        }
    }
}
