//! The batch's transaction: lock the requests, the users' lock rows, read histories,
//! chains and budgets, decide, write, take stock. See ARCHITECTURE.md, "The batch
//! transaction", for why the locks are taken in this order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::debug;

use super::claim::{Batch, Owned};
use super::codes::DrawCursors;
use super::record::{self, Outlets, Written};
use super::BatchError;
use crate::config::{CampaignConfig, Config};
use crate::domain::chain::{Chain, CouponStock};
use crate::domain::lifecycle::day_in;
use crate::domain::{Budget, TriggerRequest};
use crate::pipeline::decide::{self, Books, DayBooks, Decision, Histories, Refusal, Verdict};
use crate::rules::Rules;
use crate::store::{self, Conn};

/// The batch's transaction. Its inputs are owned: a transaction future must be `Send`
/// for every lifetime of the connection it borrows.
///
/// Coupon and budget rows are the hot rows every daemon contends for, so by default
/// (`locked == false`) they are read without locks, the batch is decided and written,
/// and only then is stock taken with guarded updates (`remaining >= n`, budget not
/// passed) just before the commit: the hot rows are held for those few statements
/// only. If a guard fails, the transaction rolls back and the batch is decided again
/// with the chains locked first (`locked == true`), which cannot fail.
/// Boxed with an explicit `Send`: without it rustc cannot prove the transaction's
/// higher-ranked future `Send` where the worker task is spawned (rust-lang/rust#100013).
pub(super) fn grant_batch<'c>(
    conn: &'c mut Conn,
    (config, rules): (Arc<Config>, Arc<Rules>),
    batch: Batch,
    (outlets, draws): (Outlets, Arc<DrawCursors>),
    locked: bool,
) -> BoxFuture<'c, Result<Written, BatchError>> {
    conn.transaction(async move |conn| {
        let Owned {
            valid: requests,
            rejected,
            claim,
        } = batch.lock(conn).await?;
        let claimed = requests.len() + rejected.len();
        if claimed == 0 {
            return Ok(Written::default());
        }
        let users = lock_users(conn, &requests).await?;
        // The database's clock, like every time written next to other daemons' rows;
        // one decision time for the whole batch, so its grants fall on one day.
        let now = store::now().and_utc();
        let inputs = Inputs {
            config: &config,
            rules: &rules,
            disabled: &outlets.disabled,
            now,
            campaign_ids: campaigns_for_events(&config.campaigns, &requests),
        };
        let histories = read_histories(conn, &inputs, &users).await?;
        let (decided, ledgers) = decide_batch(conn, &inputs, requests, &histories, locked).await?;
        let decisions = &decided.decisions;
        let record = (claim, &outlets, draws.as_ref());
        let locked = decided.locked;
        let mut written =
            record::write_batch(conn, &rules, (decisions, &rejected), (record, locked), now)
                .await?;
        record::take_stock(conn, decisions, &ledgers).await?;
        record::alert_budgets(conn, &config, &decided.budget_reached, now).await?;
        written.summary.claimed = claimed;
        written.tally.rule_evaluation = decided.evaluation;
        Ok(written)
    })
    .boxed()
}

/// Takes the lock row of every (user, event) of the batch and returns its users,
/// sorted: no other daemon decides about these users until the commit.
async fn lock_users(
    conn: &mut Conn,
    requests: &[TriggerRequest],
) -> Result<Vec<String>, BatchError> {
    let participants: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.user_id.to_string(), r.event.to_string()))
        .collect();
    conn.lock_participants(&participants).await?;
    let mut users: Vec<String> = participants.into_iter().map(|(u, _)| u).collect();
    users.sort();
    users.dedup();
    Ok(users)
}

/// The users' histories; and when a campaign the batch may grant in has a rolling
/// `per_user_limit_period`, the times of their grants in those campaigns within the
/// longest such period (one more read, made only then).
async fn read_histories(
    conn: &mut Conn,
    inputs: &Inputs<'_>,
    users: &[String],
) -> Result<Histories, BatchError> {
    let histories = Histories::from_rows(conn.history_for(users).await?);
    let periodic: Vec<&CampaignConfig> = inputs
        .campaigns()
        .filter(|c| c.per_user_limit_period.is_some())
        .collect();
    let Some(longest) = periodic
        .iter()
        .filter_map(|c| c.per_user_limit_period)
        .max()
    else {
        return Ok(histories);
    };
    let ids: Vec<String> = periodic.iter().map(|c| c.id.to_string()).collect();
    let since = (inputs.now - longest).naive_utc();
    Ok(histories.with_times(conn.grant_times(users, &ids, since).await?))
}

/// What a batch is decided with.
struct Inputs<'a> {
    config: &'a Arc<Config>,
    rules: &'a Arc<Rules>,
    /// Channels a 410 Gone disabled: their coupons count as out of stock.
    disabled: &'a HashSet<String>,
    now: DateTime<Utc>,
    /// The campaigns that answer the batch's events.
    campaign_ids: Vec<String>,
}

impl Inputs<'_> {
    /// The configs of the campaigns that answer the batch's events.
    fn campaigns(&self) -> impl Iterator<Item = &CampaignConfig> {
        let ids = &self.campaign_ids;
        self.config
            .campaigns
            .iter()
            .filter(move |c| ids.iter().any(|id| id == c.id.as_str()))
    }

    /// The daily-budgeted campaigns' (campaign, day) the batch is decided on, with
    /// their limits, in campaign id order.
    fn days(&self) -> BTreeMap<String, (String, i64)> {
        self.campaigns()
            .filter_map(|c| {
                let limit = c.daily_budget?.cents();
                Some((c.id.to_string(), (day_in(c.timezone, self.now), limit)))
            })
            .collect()
    }
}

/// The ledgers a batch's grants take value from besides stock: the campaigns with a
/// budget, and those with a daily budget, with the day and the limit.
pub(super) struct Ledgers {
    pub(super) budgeted: HashSet<String>,
    pub(super) daily: BTreeMap<String, (String, i64)>,
}

/// The decisions of a batch and the campaigns whose budget stopped a grant.
pub(super) struct Decided {
    pub(super) decisions: Vec<Decision>,
    budget_reached: Vec<String>,
    /// A daily budget stopped a grant.
    daily_reached: bool,
    /// Time spent evaluating the rules.
    evaluation: Duration,
    /// Decided with the chains and budgets locked.
    locked: bool,
}

/// Reads the chains, budgets and daily budgets (locked or not), decides every
/// request, and returns the decisions with the ledgers they take value from. Near the
/// end of a coupon or a budget, concurrent batches would take the same last units and
/// all but one would be rolled back at the guard: there it decides again with the rows
/// locked (no other batch can then interleave), which costs one more evaluation and no
/// rollback.
async fn decide_batch(
    conn: &mut Conn,
    inputs: &Inputs<'_>,
    mut requests: Vec<TriggerRequest>,
    histories: &Histories,
    mut locked: bool,
) -> Result<(Decided, Ledgers), BatchError> {
    // One batch's worth: closer to the end than this, the batches in flight are likely
    // to want the same last units. A wider margin locks more batches than it saves
    // (BENCHMARKS.md: at batch_size x concurrency, 42% of the steady batches locked).
    let margin = inputs.config.worker.batch_size as i64;
    let daily = inputs.days();
    loop {
        let (chains, budgets, days) = read_books(conn, inputs, &daily, locked).await?;
        let before = (budgets.clone(), days.clone());
        let books = (histories.clone(), (chains, budgets, days));
        let mut decided = decide_off_runtime(inputs, requests, books).await?;
        decided.locked = locked;
        if locked || !near_the_end(&decided, ((&before.0, &before.1), &daily), margin) {
            let budgeted = before.0.into_iter().map(|b| b.campaign_id).collect();
            return Ok((decided, Ledgers { budgeted, daily }));
        }
        debug!(
            margin,
            "stock or budget near its end: deciding with the rows locked"
        );
        requests = decided.decisions.into_iter().map(|d| d.request).collect();
        locked = true;
    }
}

/// A batch's books as read: chains, budgets, and value granted by (campaign, day).
type ReadBooks = (HashMap<String, Chain>, Vec<Budget>, DayBooks);

/// The chains (with disabled channels closed), the budgets of the batch's campaigns
/// and what the daily-budgeted ones granted on the batch's day. Locked, the days' rows
/// are locked too (after the coupons and campaigns: the one lock order).
async fn read_books(
    conn: &mut Conn,
    inputs: &Inputs<'_>,
    daily: &BTreeMap<String, (String, i64)>,
    locked: bool,
) -> Result<ReadBooks, BatchError> {
    let campaign_ids = &inputs.campaign_ids;
    let chains = conn.chains(campaign_ids, locked).await?;
    // The catalog in force says which campaigns have a budget; without one there is
    // no budget row to read (or lock).
    let budgets = if any_budget(&inputs.config.campaigns, campaign_ids) {
        conn.budgets(campaign_ids, locked).await?
    } else {
        Vec::new()
    };
    let days = read_days(conn, daily, locked).await?;
    let mut chains = chains_by_campaign(chains);
    for (id, chain) in chains.iter_mut() {
        chain.close_channels(inputs.disabled);
        if let Some(campaign) = inputs.config.campaigns.iter().find(|c| c.id.as_str() == id) {
            chain.apply_catalog(campaign, inputs.now);
        }
    }
    Ok((chains, budgets, days))
}

/// What the daily-budgeted campaigns granted on the batch's day (nothing to read
/// without one); locked, their rows are locked first.
async fn read_days(
    conn: &mut Conn,
    daily: &BTreeMap<String, (String, i64)>,
    locked: bool,
) -> Result<DayBooks, BatchError> {
    if daily.is_empty() {
        return Ok(HashMap::new());
    }
    let wanted: Vec<(String, String)> = daily
        .iter()
        .map(|(campaign, (day, _))| (campaign.clone(), day.clone()))
        .collect();
    if locked {
        conn.lock_days(&wanted).await?;
    }
    let rows = conn.granted_on_days(&wanted).await?;
    Ok(rows
        .into_iter()
        .map(|(campaign, day, cents)| ((campaign, day), cents))
        .collect())
}

fn any_budget(campaigns: &[CampaignConfig], ids: &[String]) -> bool {
    campaigns
        .iter()
        .any(|c| c.budget.is_some() && ids.iter().any(|id| id == c.id.as_str()))
}

/// True when the batch's decisions leave a coupon they grant with fewer than `margin`
/// units, or a budgeted (or daily-budgeted) campaign with room for fewer than `margin`
/// grants of the largest face value granted in it, or when a budget already stopped a
/// grant.
fn near_the_end(decided: &Decided, ((budgets, days), daily): BooksBefore<'_>, margin: i64) -> bool {
    if !decided.budget_reached.is_empty() || decided.daily_reached {
        return true;
    }
    // campaign -> (value granted in this batch, largest face value granted)
    let mut value: HashMap<&str, (i64, i64)> = HashMap::new();
    for d in &decided.decisions {
        if let Verdict::Granted {
            campaign, coupon, ..
        } = &d.verdict
        {
            if coupon.remaining < margin {
                return true;
            }
            let (taken, largest) = value.entry(campaign.as_str()).or_default();
            *taken += coupon.face_value.cents();
            *largest = (*largest).max(coupon.face_value.cents());
        }
    }
    let short = |cap: i64, granted: i64, campaign: &str| match value.get(campaign) {
        Some((taken, largest)) => cap - granted - taken < margin.saturating_mul(*largest),
        None => false,
    };
    let budget_short = budgets.iter().any(|b| match b.budget_cents {
        Some(cap) => short(cap, b.granted_cents, &b.campaign_id),
        None => false,
    });
    budget_short
        || daily.iter().any(|(campaign, (day, cap))| {
            let key = (campaign.clone(), day.clone());
            short(*cap, days.get(&key).copied().unwrap_or(0), campaign)
        })
}

/// The budgets and days as read before deciding, and the batch's daily budgets.
type BooksBefore<'a> = (
    (&'a Vec<Budget>, &'a DayBooks),
    &'a BTreeMap<String, (String, i64)>,
);

fn campaigns_for_events(campaigns: &[CampaignConfig], requests: &[TriggerRequest]) -> Vec<String> {
    let events: HashSet<&str> = requests.iter().map(|r| r.event.as_str()).collect();
    campaigns
        .iter()
        .filter(|c| events.contains(c.event.as_str()))
        .map(|c| c.id.to_string())
        .collect()
}

/// The stored coupons grouped into chains, by campaign.
pub fn chains_by_campaign(rows: Vec<CouponStock>) -> HashMap<String, Chain> {
    let mut grouped: HashMap<String, Vec<CouponStock>> = HashMap::new();
    for row in rows {
        grouped
            .entry(row.campaign_id.clone())
            .or_default()
            .push(row);
    }
    grouped
        .into_iter()
        .map(|(campaign, rows)| (campaign, Chain::from_stock(rows)))
        .collect()
}

/// Rule evaluation is CPU work with a wall-clock limit per evaluation: run it on a
/// blocking thread so that it never stalls the runtime's workers.
async fn decide_off_runtime(
    inputs: &Inputs<'_>,
    requests: Vec<TriggerRequest>,
    (mut histories, (mut chains, budgets, mut days)): (Histories, ReadBooks),
) -> Result<Decided, BatchError> {
    let (rules, config, now) = (inputs.rules.clone(), inputs.config.clone(), inputs.now);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut budgets: HashMap<String, Budget> = budgets
            .into_iter()
            .map(|b| (b.campaign_id.clone(), b))
            .collect();
        let mut books = Books {
            histories: &mut histories,
            chains: &mut chains,
            budgets: &mut budgets,
            days: &mut days,
        };
        let decisions: Vec<Decision> = requests
            .into_iter()
            .map(|request| decide::decide_one(&rules, &config.campaigns, &mut books, request, now))
            .collect();
        let budget_reached = budgets_reached(&decisions);
        let daily_reached = decisions.iter().any(|d| {
            matches!(
                d.verdict,
                Verdict::Refused(Refusal::DailyBudgetReached { .. })
            )
        });
        let evaluation = started.elapsed();
        Decided {
            decisions,
            budget_reached,
            daily_reached,
            evaluation,
            locked: false,
        }
    })
    .await
    .map_err(|e| BatchError::Evaluation(e.to_string()))
}

/// The campaigns whose budget refused a request of the batch, sorted.
fn budgets_reached(decisions: &[Decision]) -> Vec<String> {
    let mut reached: Vec<String> = decisions
        .iter()
        .filter_map(|d| match &d.verdict {
            Verdict::Refused(Refusal::BudgetReached(campaign)) => Some(campaign.to_string()),
            _ => None,
        })
        .collect();
    reached.sort();
    reached.dedup();
    reached
}
