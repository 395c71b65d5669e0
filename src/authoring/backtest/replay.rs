//! The replay: each recorded request decided twice, by the live rules and by the
//! candidate, on the history, stock and budgets reconstructed as of its time (see the
//! parent module's docs for how, and what is approximated).

use std::collections::HashMap;
use std::fmt;

use chrono::NaiveDateTime;

use super::super::SetClock;
use crate::config::CampaignConfig;
use crate::domain::chain::Chain;
use crate::domain::chain::CouponStock;
use crate::domain::lifecycle::day_in;
use crate::domain::{Budget, CouponState, PastGrantTime, PastGrants};
use crate::pipeline::decide::Histories;
use crate::pipeline::decide::{decide_one, Books, Decision, Verdict};
use crate::pipeline::intake;
use crate::rules::Rules;
use crate::store::jobs::Rotation;
use crate::store::records::{CouponTotal, GrantRecord, RequestRecord};
use crate::store::requests::QueuedRequest;

/// What the database recorded, read once before the replay.
pub(super) struct Recorded {
    /// The requests to replay, oldest first.
    pub requests: Vec<RequestRecord>,
    /// The grants of their users before the last of them.
    pub ledger: Vec<GrantRecord>,
    /// The grants of the replayed id range.
    pub window: Vec<GrantRecord>,
    /// The grants after it, by coupon.
    pub after: Vec<CouponTotal>,
    /// Today's stock.
    pub stock: Vec<CouponStock>,
    /// Every rotation (rotations are rare: one per coupon running low).
    pub rotations: Vec<Rotation>,
    /// Today's budgets.
    pub budgets: Vec<Budget>,
}

/// A decision reduced to what the backtest compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    /// User type, `-` when a rule failed first.
    pub user_type: String,
    /// Campaign, `-` for none.
    pub campaign: String,
    /// Coupon granted, `none` for none.
    pub coupon: String,
    /// A rule failed.
    pub failed: bool,
}

impl Summary {
    fn of(decision: &Decision) -> Summary {
        let user_type = decision
            .user_type
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let (campaign, coupon, failed) = match &decision.verdict {
            Verdict::Granted {
                campaign, coupon, ..
            } => (campaign.to_string(), coupon.id.to_string(), false),
            Verdict::Refused(refusal) => (
                refusal
                    .campaign()
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
                "none".to_owned(),
                false,
            ),
            Verdict::Failed { .. } => ("-".to_owned(), "none".to_owned(), true),
        };
        Summary {
            user_type,
            campaign,
            coupon,
            failed,
        }
    }

    fn recorded(record: &RequestRecord, grant: Option<&GrantRecord>) -> Summary {
        Summary {
            user_type: record.user_type.clone().unwrap_or_else(|| "-".to_owned()),
            campaign: record.campaign_id.clone().unwrap_or_else(|| "-".to_owned()),
            coupon: grant.map_or_else(|| "none".to_owned(), |g| g.coupon_id.clone()),
            failed: false,
        }
    }

    /// Same user type and coupon.
    pub fn same_as(&self, other: &Summary) -> bool {
        self.user_type == other.user_type && self.coupon == other.coupon
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failed {
            return write!(f, "{} (a rule failed)", self.user_type);
        }
        write!(f, "{} {}/{}", self.user_type, self.campaign, self.coupon)
    }
}

/// One request, as recorded and as each rule set decides it.
pub(super) struct Replayed {
    /// Row id.
    pub id: i64,
    /// The client's key.
    pub request_key: String,
    /// What the database recorded.
    pub recorded: Summary,
    /// The live rules' decision.
    pub live: Summary,
    /// The candidate's decision.
    pub candidate: Summary,
}

/// Replays every recorded request, newest first internally (so that "granted since"
/// only grows), returned oldest first.
pub(super) fn replay(
    campaigns: &[CampaignConfig],
    live: &Rules,
    candidate: &Rules,
    clock: &SetClock,
    data: &Recorded,
) -> Vec<Replayed> {
    let mut ledger: HashMap<(&str, &str), Vec<&GrantRecord>> = HashMap::new();
    for g in &data.ledger {
        ledger.entry((&g.user_id, &g.event)).or_default().push(g);
    }
    let granted: HashMap<i64, &GrantRecord> =
        data.window.iter().map(|g| (g.request_id, g)).collect();
    let mut since = Since::default();
    for t in &data.after {
        since.add(&t.coupon_id, &t.campaign_id, t.grants, t.face_value_cents);
    }
    let mut retired_at: HashMap<&str, NaiveDateTime> = HashMap::new();
    for r in &data.rotations {
        let at = retired_at.entry(&r.from_coupon).or_insert(r.rotated_at);
        *at = (*at).max(r.rotated_at);
    }
    let mut window: Vec<&GrantRecord> = data.window.iter().collect();
    window.sort_by_key(|g| g.request_id);
    let mut days = DaysBefore::of(campaigns, &window);
    let mut out = Vec::with_capacity(data.requests.len());
    for record in data.requests.iter().rev() {
        while let Some(g) = window.last().filter(|g| g.request_id >= record.id) {
            since.add(&g.coupon_id, &g.campaign_id, 1, g.face_value_cents);
            days.remove(campaigns, g);
            window.pop();
        }
        let Ok(request) = intake::validate(queued(record)) else {
            continue;
        };
        let at = record.processed_at.unwrap_or(record.created_at);
        let now = at.and_utc();
        clock.set(now);
        let earlier = ledger
            .get(&(record.user_id.as_str(), record.event.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let rows = history_rows(earlier, record.id);
        let times = history_times(earlier, record.id);
        let chains = since.chains(&data.stock, &retired_at, at, campaigns);
        let budgets = since.budgets(&data.budgets);
        let decide = |rules: &Rules| {
            let mut books = Books {
                histories: &mut Histories::from_rows(rows.clone()).with_times(times.clone()),
                chains: &mut chains.clone(),
                budgets: &mut budgets.clone(),
                days: &mut days.0.clone(),
            };
            Summary::of(&decide_one(
                rules,
                campaigns,
                &mut books,
                request.clone(),
                now,
            ))
        };
        out.push(Replayed {
            id: record.id,
            request_key: record.request_key.clone(),
            recorded: Summary::recorded(record, granted.get(&record.id).copied()),
            live: decide(live),
            candidate: decide(candidate),
        });
    }
    out.reverse();
    out
}

fn queued(record: &RequestRecord) -> QueuedRequest {
    QueuedRequest::from_text(
        record.id,
        (&record.request_key, &record.user_id, &record.event),
        record.attributes.as_deref(),
        record.created_at,
    )
}

/// The user's ledger rows for the event from requests before `id`, by campaign.
fn history_rows(earlier: &[&GrantRecord], id: i64) -> Vec<PastGrants> {
    let mut by_campaign: HashMap<&str, (i64, Option<NaiveDateTime>)> = HashMap::new();
    for g in earlier.iter().filter(|g| g.request_id < id) {
        let entry = by_campaign.entry(&g.campaign_id).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(Some(g.granted_at));
    }
    let Some(first) = earlier.first() else {
        return Vec::new();
    };
    by_campaign
        .into_iter()
        .map(|(campaign, (grants, last))| PastGrants {
            user_id: first.user_id.clone(),
            event: first.event.clone(),
            campaign_id: campaign.to_owned(),
            grants,
            last_grant_at: last,
            ..PastGrants::default()
        })
        .collect()
}

/// When the user got each grant for the event before request `id` (what a rolling
/// `per_user_limit_period` counts).
fn history_times(earlier: &[&GrantRecord], id: i64) -> Vec<PastGrantTime> {
    earlier
        .iter()
        .filter(|g| g.request_id < id)
        .map(|g| PastGrantTime {
            user_id: g.user_id.clone(),
            event: g.event.clone(),
            campaign_id: g.campaign_id.clone(),
            granted_at: g.granted_at,
        })
        .collect()
}

/// Face value granted by (campaign, day in its time zone) by the replayed window's
/// grants before the request being replayed, for the campaigns with a daily budget.
struct DaysBefore(HashMap<(String, String), i64>);

impl DaysBefore {
    fn of(campaigns: &[CampaignConfig], window: &[&GrantRecord]) -> Self {
        let mut days = DaysBefore(HashMap::new());
        for g in window {
            if let Some(key) = Self::key(campaigns, g) {
                *days.0.entry(key).or_default() += g.face_value_cents;
            }
        }
        days
    }

    fn remove(&mut self, campaigns: &[CampaignConfig], g: &GrantRecord) {
        if let Some(key) = Self::key(campaigns, g) {
            *self.0.entry(key).or_default() -= g.face_value_cents;
        }
    }

    fn key(campaigns: &[CampaignConfig], g: &GrantRecord) -> Option<(String, String)> {
        let campaign = campaigns
            .iter()
            .find(|c| c.id.as_str() == g.campaign_id && c.daily_budget.is_some())?;
        let day = day_in(campaign.timezone, g.granted_at.and_utc());
        Some((g.campaign_id.clone(), day))
    }
}

/// Grants made since the request being replayed: count by coupon, value by campaign.
#[derive(Default)]
struct Since {
    grants: HashMap<String, i64>,
    cents: HashMap<String, i64>,
}

impl Since {
    fn add(&mut self, coupon: &str, campaign: &str, grants: i64, face_value_cents: i64) {
        *self.grants.entry(coupon.to_owned()).or_default() += grants;
        *self.cents.entry(campaign.to_owned()).or_default() += grants * face_value_cents;
    }

    /// The chains as they were at `at`: today's stock plus what was granted since, a
    /// coupon retired by a rotation after `at` still active, and the catalog applied as
    /// the grant step applies it at `at` (a coupon whose validity had ended by then, or
    /// would have been too short, counts as out of stock).
    fn chains(
        &self,
        stock: &[CouponStock],
        retired_at: &HashMap<&str, NaiveDateTime>,
        at: NaiveDateTime,
        campaigns: &[CampaignConfig],
    ) -> HashMap<String, Chain> {
        let mut by_campaign: HashMap<String, Vec<CouponStock>> = HashMap::new();
        for coupon in stock {
            let mut then = coupon.clone();
            then.remaining += self.grants.get(&coupon.id).copied().unwrap_or(0);
            if then.state == CouponState::Retired && retired_at.get(coupon.id.as_str()) > Some(&at)
            {
                then.state = CouponState::Active;
            }
            by_campaign
                .entry(coupon.campaign_id.clone())
                .or_default()
                .push(then);
        }
        by_campaign
            .into_iter()
            .map(|(campaign, rows)| {
                let mut chain = Chain::from_stock(rows);
                if let Some(config) = campaigns.iter().find(|c| c.id.as_str() == campaign) {
                    chain.apply_catalog(config, at.and_utc());
                }
                (campaign, chain)
            })
            .collect()
    }

    /// The budgets as they stood: today's granted value minus what was granted since.
    fn budgets(&self, budgets: &[Budget]) -> HashMap<String, Budget> {
        budgets
            .iter()
            .map(|b| {
                let mut then = b.clone();
                then.granted_cents -= self.cents.get(&b.campaign_id).copied().unwrap_or(0);
                (b.campaign_id.clone(), then)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CouponConfig;
    use crate::domain::codes::Validity;
    use crate::domain::{CampaignId, ChannelName, CouponId, Event, Money, UserType};

    #[test]
    fn a_coupon_counts_as_out_of_stock_in_requests_after_its_validity_ended() {
        let ends = "2026-12-10T00:00:00Z".parse().unwrap();
        let coupon = CouponConfig {
            id: CouponId::parse("NEW10").unwrap(),
            face_value: Money::from_cents(1000),
            stock: 5,
            low_stock: 0,
            channel: ChannelName::parse("wallet").unwrap(),
            codes: None,
            remind_before: None,
            validity: Validity {
                valid_until: Some(ends),
                ..Validity::default()
            },
        };
        let campaign = CampaignConfig {
            id: CampaignId::parse("newcomer").unwrap(),
            event: Event::parse("app_open").unwrap(),
            audience: UserType::parse("first_time").unwrap(),
            per_user_limit: 1,
            per_user_limit_period: None,
            daily_budget: None,
            timezone: chrono_tz::Tz::UTC,
            starts_at: None,
            ends_at: None,
            budget: None,
            coupons: vec![coupon],
        };
        let stock = CouponStock {
            id: "NEW10".into(),
            campaign_id: "newcomer".into(),
            position: 0,
            face_value_cents: 1000,
            channel: "wallet".into(),
            stock: 5,
            granted: 0,
            remaining: 5,
            low_stock: 0,
            state: CouponState::Active,
        };
        let usable = |at: &str| {
            let at = at.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
            let chains = Since::default().chains(
                std::slice::from_ref(&stock),
                &HashMap::new(),
                at.naive_utc(),
                std::slice::from_ref(&campaign),
            );
            chains["newcomer"].0[0].usable()
        };
        assert_eq!(usable("2026-12-09T23:59:59Z"), 5);
        assert_eq!(usable("2026-12-10T00:00:01Z"), 0);
    }
}
