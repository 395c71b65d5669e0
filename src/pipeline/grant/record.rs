//! What a decided batch writes: its grants, their `coupon.granted` outbox rows, every
//! request's final status; the stock and budget it takes, last, with guarded updates;
//! and `campaign.budget_reached` once per campaign. Decisions become text here, at the
//! edge: a [`Refusal`](crate::pipeline::decide::Refusal) is stored as its `detail`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, NaiveDateTime, Utc};
use tracing::warn;

use super::claim::claim_token;
use super::codes::{self, DrawCursors};
use super::tx::Ledgers;
use super::{BatchError, BatchSummary};
use crate::config::Config;
use crate::domain::{Outcome, RequestStatus};
use crate::metrics::BatchTally;
use crate::pipeline::decide::{Decision, Verdict};
use crate::pipeline::dispatch::events;
use crate::pipeline::dispatch::handoff::Handoff;
use crate::pipeline::intake::Rejected;
use crate::rules::Rules;
use crate::store::deliveries::NewDelivery;
use crate::store::grants::NewGrant;
use crate::store::jobs::AlertMark;
use crate::store::requests::{Claim, Finished};
use crate::store::{self, Conn, StoreError};

/// Where a batch's `coupon.granted` rows go, fixed before its transaction starts.
#[derive(Debug, Clone)]
pub(crate) struct Outlets {
    /// The end of the hand-off hold, on the store's clock …
    held_until: NaiveDateTime,
    /// … and on this host's monotonic clock.
    pub(crate) held_until_here: Instant,
    /// The batch's hold token, written with its handed-off rows.
    hold_token: i64,
    /// Channels whose hand-off has room: their rows are written held for this daemon's
    /// dispatcher, which gets them in memory after the commit; the others' rows are
    /// due at once, for the outbox.
    handoff: HashSet<String>,
    /// Channels a 410 Gone disabled: their coupons count as out of stock.
    pub(super) disabled: HashSet<String>,
}

impl Outlets {
    /// Holds `delivery` for this daemon's dispatcher when its channel's hand-off has
    /// room (due at the end of the hold, under the batch's token); true when held.
    pub(crate) fn hold(&self, delivery: &mut NewDelivery) -> bool {
        if !self.handoff.contains(delivery.channel.as_str()) {
            return false;
        }
        delivery.next_attempt_at = self.held_until;
        delivery.hold_token = Some(self.hold_token);
        true
    }

    pub(crate) fn of(config: &Config, handoff: &Handoff) -> Self {
        let lease = config.delivery_lease();
        Outlets {
            held_until: store::now() + lease,
            held_until_here: Instant::now() + lease.to_std().unwrap_or_default(),
            hold_token: claim_token(),
            handoff: config
                .channels
                .keys()
                .filter(|c| handoff.has_room(c.as_str()))
                .map(|c| c.to_string())
                .collect(),
            disabled: handoff.disabled(),
        }
    }
}

/// What a committed batch transaction returns.
#[derive(Default)]
pub(super) struct Written {
    pub(super) summary: BatchSummary,
    pub(super) tally: BatchTally,
    /// The `coupon.granted` rows held for this daemon's dispatcher.
    pub(super) handed_off: Vec<NewDelivery>,
    /// The channels of the rows written due at once, for the outbox.
    pub(super) outbox_channels: HashSet<String>,
}

/// The rows a batch writes.
#[derive(Default)]
struct Rows {
    grants: Vec<NewGrant>,
    /// The index in `finished` (= in the decisions) of each grant's decision.
    granted: Vec<usize>,
    deliveries: Vec<NewDelivery>,
    finished: Vec<Finished>,
}

/// Writes the batch's grants with their codes (drawn from a pool `locked` or not: see
/// [`codes::issue`]), their outbox rows and every request's final status. The `coupon.granted` rows of the channels in `outlets.handoff` are due
/// at the end of the hold (held for this daemon's dispatcher) and returned for the
/// hand-off; the others are due now.
pub(super) async fn write_batch(
    conn: &mut Conn,
    rules: &Rules,
    (decisions, rejected): (&[Decision], &[Rejected]),
    ((claim, outlets, draws), locked): ((Claim, &Outlets, &DrawCursors), bool),
    now: DateTime<Utc>,
) -> Result<Written, BatchError> {
    let version = rules.version().to_string();
    let mut rows = Rows::default();
    for d in decisions {
        rows.add(d, &version, now);
    }
    rows.finished.extend(rejected.iter().map(rejection));
    let at = now.naive_utc();
    let granted: Vec<&Decision> = rows.granted.iter().map(|&i| &decisions[i]).collect();
    codes::issue(conn, &mut rows.grants, (&granted, locked), (draws, now)).await?;
    rows.deliveries = rows
        .grants
        .iter()
        .zip(&granted)
        .map(|(grant, d)| delivery(grant, d, outlets, now))
        .collect();
    conn.record_grants(&rows.grants).await?;
    conn.record_deliveries(&rows.deliveries).await?;
    conn.finish_requests(&rows.finished, claim, at).await?;
    let count = |s: RequestStatus| rows.finished.iter().filter(|f| f.status == s).count();
    let summary = BatchSummary {
        granted: rows.grants.len(),
        rejected: count(RequestStatus::Rejected),
        failed: count(RequestStatus::Failed),
        ..BatchSummary::default()
    };
    let tally = BatchTally::of(&rows.finished, &rows.grants);
    let (handed_off, for_outbox): (Vec<NewDelivery>, Vec<NewDelivery>) = rows
        .deliveries
        .into_iter()
        .partition(|d| d.hold_token.is_some());
    Ok(Written {
        summary,
        tally,
        handed_off,
        outbox_channels: for_outbox.into_iter().map(|d| d.channel).collect(),
    })
}

/// The `coupon.granted` outbox row of a grant, held for this daemon's dispatcher when
/// its channel's hand-off has room.
fn delivery(grant: &NewGrant, d: &Decision, outlets: &Outlets, now: DateTime<Utc>) -> NewDelivery {
    let Verdict::Granted { coupon, .. } = &d.verdict else {
        unreachable!("only granted decisions have grants");
    };
    let mut delivery = events::coupon_granted(grant, &d.request, coupon, now);
    outlets.hold(&mut delivery);
    delivery
}

impl Rows {
    /// The rows of one decision: its final status, and its grant (whose code and
    /// outbox row come after, for the whole batch).
    fn add(&mut self, d: &Decision, version: &str, now: DateTime<Utc>) {
        let user_type = d.user_type.as_ref().map(|t| t.to_string());
        let mut row = Finished {
            id: d.request.id.0,
            status: RequestStatus::Done,
            outcome: None,
            error: None,
            detail: None,
            user_type: user_type.clone(),
            campaign_id: None,
            rules_version: Some(version.to_owned()),
        };
        match &d.verdict {
            Verdict::Granted {
                campaign,
                coupon,
                fallback,
            } => {
                let expires_at = coupon.validity.expires_at(now);
                self.granted.push(self.finished.len());
                self.grants.push(NewGrant {
                    id: d.request.id.0,
                    request_id: d.request.id.0,
                    user_id: d.request.user_id.to_string(),
                    event: d.request.event.to_string(),
                    campaign_id: campaign.to_string(),
                    coupon_id: coupon.id.to_string(),
                    face_value_cents: coupon.face_value.cents(),
                    user_type: user_type.unwrap_or_default(),
                    rules_version: version.to_owned(),
                    granted_at: now.naive_utc(),
                    code: None,
                    valid_from: expires_at.map(|_| now.naive_utc()),
                    expires_at: expires_at.map(|t| t.naive_utc()),
                });
                row.outcome = Some(Outcome::Granted);
                row.campaign_id = Some(campaign.to_string());
                row.detail = fallback.clone();
            }
            Verdict::Refused(refusal) => {
                row.outcome = Some(refusal.outcome());
                row.campaign_id = refusal.campaign().map(|c| c.to_string());
                row.detail = Some(refusal.to_string());
            }
            Verdict::Failed { error } => {
                row.status = RequestStatus::Failed;
                row.error = Some(error.clone());
            }
        }
        self.finished.push(row);
    }
}

/// The final status of a request intake refused.
fn rejection(r: &Rejected) -> Finished {
    Finished {
        id: r.id.0,
        status: RequestStatus::Rejected,
        outcome: None,
        error: Some(r.reason.clone()),
        detail: None,
        user_type: None,
        campaign_id: None,
        rules_version: None,
    }
}

/// Takes the batch's stock, one guarded statement per coupon in id order, then adds the
/// granted value to each campaign that has a budget, in id order, then to the batch's
/// day of each campaign that has a daily budget, in campaign id order (the order every
/// transaction locks these rows in). Campaigns without a budget are not touched: their
/// rows would be a second hot spot for nothing (the catalog recounts a budget's granted
/// value from the ledger when it is applied). A guard that fails means the unlocked
/// read was stale.
pub(super) async fn take_stock(
    conn: &mut Conn,
    decisions: &[Decision],
    ledgers: &Ledgers,
) -> Result<(), BatchError> {
    let mut taken: BTreeMap<&str, i64> = BTreeMap::new();
    let mut value: BTreeMap<&str, i64> = BTreeMap::new();
    let mut daily: BTreeMap<&str, i64> = BTreeMap::new();
    for d in decisions {
        if let Verdict::Granted {
            campaign, coupon, ..
        } = &d.verdict
        {
            *taken.entry(coupon.id.as_str()).or_default() += 1;
            let face = coupon.face_value.cents();
            if ledgers.budgeted.contains(campaign.as_str()) {
                *value.entry(campaign.as_str()).or_default() += face;
            }
            if ledgers.daily.contains_key(campaign.as_str()) {
                *daily.entry(campaign.as_str()).or_default() += face;
            }
        }
    }
    for (coupon, count) in &taken {
        if !conn.take_stock(coupon, *count).await? {
            return Err(BatchError::StaleStock);
        }
    }
    for (campaign, cents) in &value {
        if !conn.add_granted_value(campaign, *cents).await? {
            return Err(BatchError::StaleStock);
        }
    }
    for (campaign, cents) in &daily {
        let (day, limit) = &ledgers.daily[*campaign];
        if !conn
            .take_daily_budget((campaign, day), *cents, *limit)
            .await?
        {
            return Err(BatchError::StaleStock);
        }
    }
    Ok(())
}

/// Announces `campaign.budget_reached` once per campaign, in the grant transaction.
pub(super) async fn alert_budgets(
    conn: &mut Conn,
    config: &Config,
    campaigns: &[String],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    #[derive(serde::Serialize)]
    struct BudgetReached<'a> {
        campaign: &'a str,
        budget: String,
    }
    for id in campaigns {
        if !conn
            .mark_alerted(id, AlertMark::BudgetReached, now.naive_utc())
            .await?
        {
            continue;
        }
        warn!(campaign = %id, "campaign reached its budget: it grants nothing more");
        let budget = config
            .campaigns
            .iter()
            .find(|c| c.id.as_str() == id)
            .and_then(|c| c.budget)
            .map(|b| b.to_string())
            .unwrap_or_default();
        let event = BudgetReached {
            campaign: id,
            budget,
        };
        let alert = events::alert(config, events::CAMPAIGN_BUDGET_REACHED, event, now);
        conn.record_deliveries(&alert.into_iter().collect::<Vec<_>>())
            .await?;
    }
    Ok(())
}
