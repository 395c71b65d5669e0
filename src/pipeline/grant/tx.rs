//! The batch's transaction: lock the requests, the users' lock rows, read histories,
//! chains and budgets, decide, write, take stock. See ARCHITECTURE.md, "The batch
//! transaction", for why the locks are taken in this order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::debug;

use super::claim::{Batch, Owned};
use super::record::{self, Outlets, Written};
use super::BatchError;
use crate::config::{CampaignConfig, Config};
use crate::domain::chain::{Chain, CouponStock};
use crate::domain::{Budget, TriggerRequest};
use crate::pipeline::decide::{self, Books, Decision, Histories, Refusal, Verdict};
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
    outlets: Outlets,
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
        let histories = lock_users(conn, &requests).await?;
        // The database's clock, like every time written next to other daemons' rows.
        let now = store::now().and_utc();
        let inputs = Inputs {
            config: &config,
            rules: &rules,
            disabled: &outlets.disabled,
            now,
        };
        let (decided, budgeted) = decide_batch(conn, &inputs, requests, &histories, locked).await?;
        let decisions = &decided.decisions;
        let record = (claim, &outlets);
        let locked = decided.locked;
        let mut written =
            record::write_batch(conn, &rules, (decisions, &rejected), (record, locked), now)
                .await?;
        record::take_stock(conn, decisions, &budgeted).await?;
        record::alert_budgets(conn, &config, &decided.budget_reached, now).await?;
        written.summary.claimed = claimed;
        written.tally.rule_evaluation = decided.evaluation;
        Ok(written)
    })
    .boxed()
}

/// Takes the lock row of every (user, event) of the batch, then reads the users'
/// histories: no other daemon decides about these users until the commit.
async fn lock_users(conn: &mut Conn, requests: &[TriggerRequest]) -> Result<Histories, BatchError> {
    let participants: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.user_id.to_string(), r.event.to_string()))
        .collect();
    conn.lock_participants(&participants).await?;
    let mut users: Vec<String> = participants.into_iter().map(|(u, _)| u).collect();
    users.sort();
    users.dedup();
    Ok(Histories::from_rows(conn.history_for(&users).await?))
}

/// What a batch is decided with.
struct Inputs<'a> {
    config: &'a Arc<Config>,
    rules: &'a Arc<Rules>,
    /// Channels a 410 Gone disabled: their coupons count as out of stock.
    disabled: &'a HashSet<String>,
    now: DateTime<Utc>,
}

/// The decisions of a batch and the campaigns whose budget stopped a grant.
pub(super) struct Decided {
    pub(super) decisions: Vec<Decision>,
    budget_reached: Vec<String>,
    /// Time spent evaluating the rules.
    evaluation: Duration,
    /// Decided with the chains and budgets locked.
    locked: bool,
}

/// Reads the chains and budgets (locked or not), decides every request, and returns the
/// decisions with the campaigns that have a budget. Near the end of a coupon or a
/// budget, concurrent batches would take the same last units and all but one would be
/// rolled back at the guard: there it decides again with the rows locked (no other
/// batch can then interleave), which costs one more evaluation and no rollback.
async fn decide_batch(
    conn: &mut Conn,
    inputs: &Inputs<'_>,
    mut requests: Vec<TriggerRequest>,
    histories: &Histories,
    mut locked: bool,
) -> Result<(Decided, HashSet<String>), BatchError> {
    // One batch's worth: closer to the end than this, the batches in flight are likely
    // to want the same last units. A wider margin locks more batches than it saves
    // (BENCHMARKS.md: at batch_size x concurrency, 42% of the steady batches locked).
    let margin = inputs.config.worker.batch_size as i64;
    let campaign_ids = campaigns_for_events(&inputs.config.campaigns, &requests);
    loop {
        let (chains, budgets) = read_books(conn, inputs, &campaign_ids, locked).await?;
        let before = budgets.clone();
        let books = (histories.clone(), chains, budgets);
        let mut decided = decide_off_runtime(inputs, requests, books).await?;
        decided.locked = locked;
        if locked || !near_the_end(&decided, &before, margin) {
            let budgeted = before.into_iter().map(|b| b.campaign_id).collect();
            return Ok((decided, budgeted));
        }
        debug!(
            margin,
            "stock or budget near its end: deciding with the rows locked"
        );
        requests = decided.decisions.into_iter().map(|d| d.request).collect();
        locked = true;
    }
}

/// The chains (with disabled channels closed) and the budgets of `campaign_ids`.
async fn read_books(
    conn: &mut Conn,
    inputs: &Inputs<'_>,
    campaign_ids: &[String],
    locked: bool,
) -> Result<(HashMap<String, Chain>, Vec<Budget>), BatchError> {
    let chains = conn.chains(campaign_ids, locked).await?;
    // The catalog in force says which campaigns have a budget; without one there is
    // no budget row to read (or lock).
    let budgets = if any_budget(&inputs.config.campaigns, campaign_ids) {
        conn.budgets(campaign_ids, locked).await?
    } else {
        Vec::new()
    };
    let mut chains = chains_by_campaign(chains);
    for (id, chain) in chains.iter_mut() {
        chain.close_channels(inputs.disabled);
        if let Some(campaign) = inputs.config.campaigns.iter().find(|c| c.id.as_str() == id) {
            chain.apply_catalog(campaign, inputs.now);
        }
    }
    Ok((chains, budgets))
}

fn any_budget(campaigns: &[CampaignConfig], ids: &[String]) -> bool {
    campaigns
        .iter()
        .any(|c| c.budget.is_some() && ids.iter().any(|id| id == c.id.as_str()))
}

/// True when the batch's decisions leave a coupon they grant with fewer than `margin`
/// units, or a budgeted campaign with room for fewer than `margin` grants of the
/// largest face value granted in it, or when a budget already stopped a grant.
fn near_the_end(decided: &Decided, budgets: &[Budget], margin: i64) -> bool {
    if !decided.budget_reached.is_empty() {
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
    budgets.iter().any(
        |b| match (b.budget_cents, value.get(b.campaign_id.as_str())) {
            (Some(cap), Some((taken, largest))) => {
                cap - b.granted_cents - taken < margin.saturating_mul(*largest)
            }
            _ => false,
        },
    )
}

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
    (mut histories, mut chains, budgets): (Histories, HashMap<String, Chain>, Vec<Budget>),
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
        };
        let decisions: Vec<Decision> = requests
            .into_iter()
            .map(|request| decide::decide_one(&rules, &config.campaigns, &mut books, request, now))
            .collect();
        let budget_reached = budgets_reached(&decisions);
        let evaluation = started.elapsed();
        Decided {
            decisions,
            budget_reached,
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
