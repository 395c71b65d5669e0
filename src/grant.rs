//! Grant: the unit of work. In one transaction it claims a batch of queued requests
//! (or, after a failure, fences a batch claimed beforehand), locks the users' lock rows
//! and the campaigns' chains, decides every
//! request with the rules, takes stock with one statement per coupon, and writes the
//! grants, their outbox rows and the requests' final statuses. A crash at any point
//! loses nothing and grants nothing twice: either all of it commits or none of it does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::{debug, instrument, warn};

use crate::classify::{self, Histories};
use crate::config::{CampaignConfig, Config};
use crate::daemon::Context;
use crate::dispatch::events;
use crate::dispatch::handoff::Outgoing;
use crate::domain::{CampaignId, Outcome, TriggerRequest, UserType};
use crate::intake::{self, Rejected};
use crate::metrics::BatchTally;
use crate::rules::{RuleError, Rules};
use crate::select::{self, Chain, ChainCoupon};
use crate::store::catalog::Budget;
use crate::store::deliveries::NewDelivery;
use crate::store::grants::NewGrant;
use crate::store::prelude::*;
use crate::store::requests::{Claim, Finished};
use crate::store::schedule::AlertMark;
use crate::store::{self, StoreError};
use crate::with_conn;

/// How many times a batch transaction is tried again after a deadlock or lock-wait
/// timeout before the batch is left to lease recovery.
const MAX_TX_RETRIES: u32 = 20;

const BUDGET_REACHED: &str = "has reached its budget";

/// In debug builds only (the tests), a request whose attributes have this key makes
/// rule evaluation panic, standing in for a bug in the engine: the per-request catch
/// must hold. Release builds never look at it.
pub const PANIC_FOR_TESTS: &str = "__couponsd_test_panic";

/// What one call of [`process_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// This many requests were claimed and finished.
    Processed(BatchSummary),
    /// The queue was empty.
    Empty,
}

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Requests claimed.
    pub claimed: usize,
    /// Coupons granted.
    pub granted: usize,
    /// Requests rejected as malformed.
    pub rejected: usize,
    /// Requests failed by a rule.
    pub failed: usize,
    /// Transactions retried after a deadlock or lock-wait timeout.
    pub retries: u32,
}

/// A batch that could not be finished; its claims are recovered after the lease.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Rule evaluation panicked (a bug in couponsd, not in a rule).
    #[error("rule evaluation stopped unexpectedly: {0}")]
    Evaluation(String),
    /// Another daemon took the stock (or budget) the batch's decisions counted on
    /// between the unlocked read and the guarded update; the batch is rolled back and
    /// decided again with the chains locked.
    #[error("stock or budget changed under the batch")]
    StaleStock,
}

impl BatchError {
    /// True when the failure may be caused by one of the batch's requests rather than
    /// by the database: a statement the database refused (a duplicate key, a value it
    /// cannot store) or a panic. Lost connections, deadlocks, lock waits and statements
    /// stopped by `database.statement_timeout` are not.
    pub fn may_lie_in_a_request(&self) -> bool {
        match self {
            BatchError::Evaluation(_) => true,
            BatchError::Store(StoreError::Query(e)) => {
                !store::is_retryable(e)
                    && !store::is_connection_lost(e)
                    && !store::is_interrupted(e)
            }
            BatchError::Store(_) | BatchError::StaleStock => false,
        }
    }
}

impl BatchSummary {
    fn add(&mut self, other: BatchSummary) {
        self.claimed += other.claimed;
        self.granted += other.granted;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.retries += other.retries;
    }
}

impl From<diesel::result::Error> for BatchError {
    fn from(e: diesel::result::Error) -> Self {
        BatchError::Store(e.into())
    }
}

/// The decision about one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A coupon is granted.
    Granted {
        /// The campaign.
        campaign: CampaignId,
        /// The coupon granted (its `remaining` is the stock left after this grant).
        coupon: ChainCoupon,
        /// Why it is not the coupon the rule chose, when it is not.
        fallback: Option<String>,
    },
    /// Finished without a grant.
    Done {
        /// Why not.
        outcome: Outcome,
        /// The campaign, when one answered.
        campaign: Option<CampaignId>,
        /// What decided it.
        detail: String,
    },
    /// A rule failed; the error names its file and line.
    Failed {
        /// The rule error.
        error: String,
    },
}

/// A request and what was decided about it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The request.
    pub request: TriggerRequest,
    /// The user type, when the user-type rule got that far.
    pub user_type: Option<UserType>,
    /// The verdict.
    pub verdict: Verdict,
}

/// Takes one batch of queued requests and processes it to the end, claim and all, in
/// one transaction: the requests are locked (`FOR UPDATE SKIP LOCKED`) by the
/// transaction that finishes them, so a rollback, a crash or a lost connection puts
/// them back in the queue at once and nothing waits for a lease.
#[instrument(skip_all, fields(batch_size = ctx.config.worker.batch_size))]
pub async fn process_batch(ctx: &Context) -> Result<BatchOutcome, BatchError> {
    process(ctx, None).await
}

/// Claims one batch in a short transaction of its own (`claimed`, with a token and a
/// lease), then processes it. The worker loop falls back to this after a batch failed:
/// a request that fails every transaction it is in would otherwise go back to the head
/// of the queue each time, while a claim is counted by lease recovery, which ends it
/// `failed` after `worker.max_attempts`.
#[instrument(skip_all, fields(batch_size = ctx.config.worker.batch_size))]
pub async fn process_claimed_batch(ctx: &Context) -> Result<BatchOutcome, BatchError> {
    let token = claim_token();
    let rows = with_conn!(ctx.db, |conn| store::requests::Requests::claim_batch(
        conn,
        ctx.config.worker.batch_size as i64,
        token,
        store::now()
    )
    .await
    .map_err(StoreError::from)?);
    if rows.is_empty() {
        return Ok(BatchOutcome::Empty);
    }
    ctx.claims.hold(token);
    let (valid, rejected) = intake::validate_batch(rows);
    let claimed = ClaimedBatch {
        token,
        valid,
        rejected,
    };
    let outcome = process_isolating(ctx, claimed).await;
    if outcome.is_ok() {
        ctx.claims.finished(token);
    }
    outcome
}

/// Processes a claimed batch; when its transaction fails for a reason that may lie in
/// one of its requests (a write the database refuses, a panic), the batch is split in
/// halves and each is processed on its own, down to single requests: a request that
/// fails alone ends `failed` with the error in its `error` column, and every other
/// request of the batch finishes normally. A batch with one bad request costs about
/// 2·log2(batch_size) more transactions. An error of the database itself (unreachable,
/// deadlocks past the retries) splits nothing: the claims are left to lease recovery.
async fn process_isolating(
    ctx: &Context,
    claimed: ClaimedBatch,
) -> Result<BatchOutcome, BatchError> {
    let mut total: Option<BatchSummary> = None;
    let mut parts = vec![claimed];
    while let Some(part) = parts.pop() {
        let summary = match process(ctx, Some(part.clone())).await {
            Ok(BatchOutcome::Processed(summary)) => summary,
            Ok(BatchOutcome::Empty) => continue,
            Err(e) if !e.may_lie_in_a_request() => return Err(e),
            Err(e) => match part.halves() {
                Some((first, second)) => {
                    debug!(error = %e, requests = part.len(), "batch failed: processing its halves apart");
                    parts.extend([second, first]);
                    continue;
                }
                None => fail_alone(ctx, part, &e).await?,
            },
        };
        total.get_or_insert_with(BatchSummary::default).add(summary);
    }
    Ok(total.map_or(BatchOutcome::Empty, BatchOutcome::Processed))
}

/// Ends the one request of `part`, which failed in a transaction of its own, `failed`
/// with `error`.
async fn fail_alone(
    ctx: &Context,
    part: ClaimedBatch,
    error: &BatchError,
) -> Result<BatchSummary, BatchError> {
    let (id, key) = match (part.valid.first(), part.rejected.first()) {
        (Some(r), _) => (r.id.0, r.key.to_string()),
        (None, Some(r)) => (r.id.0, format!("(row {})", r.id.0)),
        (None, None) => return Ok(BatchSummary::default()),
    };
    warn!(request_key = %key, error = %error, "request failed on its own: it ends failed");
    let finished = Finished {
        id,
        status: "failed",
        outcome: None,
        error: Some(format!("request {id}: {error}")),
        detail: None,
        user_type: None,
        campaign_id: None,
        rules_version: Some(ctx.rules.current().version().to_string()),
    };
    let claim = Claim::Token(part.token);
    with_conn!(ctx.db, |conn| conn
        .finish_requests(&[finished], claim, store::now())
        .await
        .map_err(StoreError::from)?);
    Ok(BatchSummary {
        claimed: 1,
        failed: 1,
        ..BatchSummary::default()
    })
}

fn claim_token() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

/// The batch's transaction, tried again after a deadlock, a lock-wait timeout or stock
/// that moved; `claimed` is a batch claimed beforehand, `None` takes one in the
/// transaction.
async fn process(ctx: &Context, claimed: Option<ClaimedBatch>) -> Result<BatchOutcome, BatchError> {
    let started = Instant::now();
    let rules = ctx.rules.current();
    let mut retries = 0;
    let mut locked = false;
    loop {
        let outlets = Outlets::of(ctx);
        let batch = match &claimed {
            Some(claimed) => Batch::Claimed(claimed.clone()),
            None => Batch::Take {
                limit: ctx.config.worker.batch_size as i64,
                token: claim_token(),
            },
        };
        let result = with_conn!(ctx.db, |conn| {
            let (config, rules) = (ctx.catalog.current(), rules.clone());
            grant_batch(conn, (config, rules), batch, outlets.clone(), locked).await
        });
        match result {
            Ok(written) if written.summary.claimed == 0 => return Ok(BatchOutcome::Empty),
            Ok(Written {
                mut summary,
                tally,
                handed_off,
                outbox_channels,
            }) => {
                summary.retries = retries;
                ctx.metrics.record_batch(&tally, started.elapsed());
                for channel in &outbox_channels {
                    ctx.handoff.outbox_rows(channel);
                }
                ctx.handoff.push(
                    handed_off
                        .into_iter()
                        .filter_map(|d| Outgoing::handed_off(d, outlets.held_until_here)),
                );
                ctx.outbox_ready.notify_one();
                return Ok(BatchOutcome::Processed(summary));
            }
            Err(BatchError::Store(e)) if e.is_retryable() && retries < MAX_TX_RETRIES => {
                retries += 1;
                warn!(error = %e, retries, "batch transaction will be tried again");
                let jitter = rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(5 * u64::from(retries) + jitter)).await;
            }
            Err(BatchError::StaleStock) if !locked => {
                debug!("stock moved under the batch: deciding it again with the chains locked");
                locked = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where a batch transaction's requests come from.
enum Batch {
    /// Take up to `limit` queued requests in the transaction, finished under `token`.
    Take { limit: i64, token: i64 },
    /// Claimed beforehand; the transaction fences them.
    Claimed(ClaimedBatch),
}

/// A batch claimed under `token` in a transaction of its own, validated.
#[derive(Clone)]
struct ClaimedBatch {
    token: i64,
    valid: Vec<TriggerRequest>,
    rejected: Vec<Rejected>,
}

impl ClaimedBatch {
    fn len(&self) -> usize {
        self.valid.len() + self.rejected.len()
    }

    /// Two non-empty parts of a batch of two or more requests, the valid requests
    /// split evenly (rejections ride with the first half, or alone).
    fn halves(&self) -> Option<(ClaimedBatch, ClaimedBatch)> {
        let part = |valid: &[TriggerRequest], rejected: &[Rejected]| ClaimedBatch {
            token: self.token,
            valid: valid.to_vec(),
            rejected: rejected.to_vec(),
        };
        match (self.valid.len(), self.rejected.len()) {
            (0, 0 | 1) | (1, 0) => None,
            (0, n) => {
                let (a, b) = self.rejected.split_at(n / 2);
                Some((part(&[], a), part(&[], b)))
            }
            (1, _) => Some((part(&[], &self.rejected), part(&self.valid, &[]))),
            (n, _) => {
                let (a, b) = self.valid.split_at(n / 2);
                Some((part(a, &self.rejected), part(b, &[])))
            }
        }
    }
}

/// The requests a batch transaction owns: locked by it, and how they were claimed.
struct Owned {
    valid: Vec<TriggerRequest>,
    rejected: Vec<Rejected>,
    claim: Claim,
}

impl Batch {
    /// Locks the batch's requests: takes them from the queue, or fences the claimed ones
    /// (a request whose claim was recovered meanwhile is left out).
    async fn lock<C: Store>(self, conn: &mut C) -> Result<Owned, StoreError> {
        match self {
            Batch::Take { limit, token } => {
                let rows = conn.take_queued(limit).await?;
                let (valid, rejected) = intake::validate_batch(rows);
                let at = store::now();
                Ok(Owned {
                    valid,
                    rejected,
                    claim: Claim::Inline { token, at },
                })
            }
            Batch::Claimed(ClaimedBatch {
                token,
                valid,
                rejected,
            }) => {
                let ids: Vec<i64> = valid
                    .iter()
                    .map(|r| r.id.0)
                    .chain(rejected.iter().map(|r| r.id.0))
                    .collect();
                let owned: HashSet<i64> =
                    conn.lock_claimed(&ids, token).await?.into_iter().collect();
                Ok(Owned {
                    valid: valid
                        .into_iter()
                        .filter(|r| owned.contains(&r.id.0))
                        .collect(),
                    rejected: rejected
                        .into_iter()
                        .filter(|r| owned.contains(&r.id.0))
                        .collect(),
                    claim: Claim::Token(token),
                })
            }
        }
    }
}

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
fn grant_batch<'c, C: Store>(
    conn: &'c mut C,
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
        let participants: Vec<(String, String)> = requests
            .iter()
            .map(|r| (r.user_id.to_string(), r.event.to_string()))
            .collect();
        conn.lock_participants(&participants).await?;
        let mut users: Vec<String> = participants.into_iter().map(|(u, _)| u).collect();
        users.sort();
        users.dedup();
        let histories = Histories::from_rows(conn.history_for(&users).await?);
        let campaign_ids = campaigns_for_events(&config.campaigns, &requests);
        // The database's clock, like every time written next to other daemons' rows.
        let now = store::now().and_utc();
        let (decisions, budgeted) = decide_batch(
            conn,
            (&config, &rules),
            requests,
            &histories,
            (&campaign_ids, &outlets.disabled),
            now,
            locked,
        )
        .await?;
        let mut written = write_batch(
            conn,
            &rules,
            (&decisions.decisions, &rejected),
            (claim, &outlets),
            now,
        )
        .await?;
        take_stock(conn, &decisions.decisions, &budgeted).await?;
        alert_budgets(conn, &config, &decisions.budget_reached, now).await?;
        written.summary.claimed = claimed;
        written.tally.rule_evaluation = decisions.evaluation;
        Ok(written)
    })
    .boxed()
}

/// Reads the chains and budgets (locked or not), decides every request, and returns the
/// decisions with the campaigns that have a budget. Near the end of a coupon or a
/// budget, concurrent batches would take the same last units and all but one would be
/// rolled back at the guard: there it decides again with the rows locked (no other
/// batch can then interleave), which costs one more evaluation and no rollback.
async fn decide_batch<C: Store>(
    conn: &mut C,
    (config, rules): (&Arc<Config>, &Arc<Rules>),
    mut requests: Vec<TriggerRequest>,
    histories: &Histories,
    (campaign_ids, disabled): (&[String], &HashSet<String>),
    now: DateTime<Utc>,
    mut locked: bool,
) -> Result<(Decided, HashSet<String>), BatchError> {
    // One batch's worth: closer to the end than this, the batches in flight are likely
    // to want the same last units. A wider margin locks more batches than it saves
    // (BENCHMARKS.md: at batch_size x concurrency, 42% of the steady batches locked).
    let margin = config.worker.batch_size as i64;
    loop {
        let chains = conn.chains(campaign_ids, locked).await?;
        // The catalog in force says which campaigns have a budget; without one there
        // is no budget row to read (or lock).
        let budgets = if any_budget(&config.campaigns, campaign_ids) {
            conn.budgets(campaign_ids, locked).await?
        } else {
            Vec::new()
        };
        let before = budgets.clone();
        let mut chains = chains_by_campaign(chains);
        for chain in chains.values_mut() {
            chain.close_channels(disabled);
        }
        let decided = decide_off_runtime(
            rules.clone(),
            config.clone(),
            requests,
            histories.clone(),
            chains,
            budgets,
            now,
        )
        .await?;
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

fn chains_by_campaign(rows: Vec<store::coupons::CouponStock>) -> HashMap<String, Chain> {
    let mut grouped: HashMap<String, Vec<store::coupons::CouponStock>> = HashMap::new();
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
    rules: Arc<Rules>,
    config: Arc<Config>,
    requests: Vec<TriggerRequest>,
    mut histories: Histories,
    mut chains: HashMap<String, Chain>,
    budgets: Vec<Budget>,
    now: DateTime<Utc>,
) -> Result<Decided, BatchError> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut budgets: HashMap<String, Budget> = budgets
            .into_iter()
            .map(|b| (b.campaign_id.clone(), b))
            .collect();
        let decisions: Vec<Decision> = requests
            .into_iter()
            .map(|request| {
                let mut state = BatchState {
                    histories: &mut histories,
                    chains: &mut chains,
                    budgets: &mut budgets,
                };
                decide_caught(&rules, &config.campaigns, &mut state, request, now)
            })
            .collect();
        let mut budget_reached: Vec<String> = decisions
            .iter()
            .filter(|d| matches!(&d.verdict, Verdict::Done { detail, .. } if detail.ends_with(BUDGET_REACHED)))
            .filter_map(|d| match &d.verdict {
                Verdict::Done { campaign, .. } => campaign.as_ref().map(|c| c.to_string()),
                _ => None,
            })
            .collect();
        budget_reached.sort();
        budget_reached.dedup();
        let evaluation = started.elapsed();
        Decided { decisions, budget_reached, evaluation }
    })
    .await
    .map_err(|e| BatchError::Evaluation(e.to_string()))
}

struct BatchState<'a> {
    histories: &'a mut Histories,
    chains: &'a mut HashMap<String, Chain>,
    budgets: &'a mut HashMap<String, Budget>,
}

/// The decisions of a batch and the campaigns whose budget stopped a grant.
struct Decided {
    decisions: Vec<Decision>,
    budget_reached: Vec<String>,
    /// Time spent evaluating the rules.
    evaluation: Duration,
}

fn done(
    user_type: Option<UserType>,
    outcome: Outcome,
    campaign: Option<&CampaignId>,
    detail: String,
) -> (Option<UserType>, Verdict) {
    let verdict = Verdict::Done {
        outcome,
        campaign: campaign.cloned(),
        detail,
    };
    (user_type, verdict)
}

fn failed(user_type: Option<UserType>, error: &RuleError) -> (Option<UserType>, Verdict) {
    let error = error.to_string();
    (user_type, Verdict::Failed { error })
}

/// Decides one request in memory exactly as the batch transaction does, reading and
/// updating only the state passed in (a grant is recorded in `histories`, its stock
/// taken from `chains` and its value from `budgets`); writes nothing. For dry runs:
/// `simulate`, `backtest` and rule tests.
pub fn decide_one(
    rules: &Rules,
    campaigns: &[CampaignConfig],
    histories: &mut Histories,
    chains: &mut HashMap<String, Chain>,
    budgets: &mut HashMap<String, Budget>,
    request: TriggerRequest,
    now: DateTime<Utc>,
) -> Decision {
    let mut state = BatchState {
        histories,
        chains,
        budgets,
    };
    decide_caught(rules, campaigns, &mut state, request, now)
}

/// [`decide`], with a panic inside it (a bug in couponsd or in the Rhai engine, never a
/// rule's fault) turned into a failed verdict for this one request: the batch and the
/// worker go on.
fn decide_caught(
    rules: &Rules,
    campaigns: &[CampaignConfig],
    state: &mut BatchState<'_>,
    request: TriggerRequest,
    now: DateTime<Utc>,
) -> Decision {
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decide(rules, campaigns, state, &request, now)
    }));
    let (user_type, verdict) = decided.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        warn!(request_key = %request.key, panic = %what, "rule evaluation panicked; the request fails");
        let error = format!("rule evaluation stopped unexpectedly (a bug, not the rule's fault): {what}");
        (None, Verdict::Failed { error })
    });
    Decision {
        request,
        user_type,
        verdict,
    }
}

fn decide(
    rules: &Rules,
    campaigns: &[CampaignConfig],
    state: &mut BatchState<'_>,
    request: &TriggerRequest,
    now: DateTime<Utc>,
) -> (Option<UserType>, Verdict) {
    if cfg!(debug_assertions) && request.attributes.contains_key(PANIC_FOR_TESTS) {
        panic!("{PANIC_FOR_TESTS} asked for a panic");
    }
    let history = state.histories.of(request);
    let user_type = match classify::user_type(rules, request, &history) {
        Ok(t) => t,
        Err(e) => return failed(None, &e),
    };
    let Some(campaign) = select::campaign_for(campaigns, request, &user_type) else {
        let detail = format!(
            "no campaign answers event {} for user type {user_type}",
            request.event
        );
        return done(Some(user_type), Outcome::NoCampaign, None, detail);
    };
    let ut = Some(user_type.clone());
    if let Some(why) = select::window_refusal(campaign, now) {
        return done(ut, Outcome::NotEligible, Some(&campaign.id), why);
    }
    let granted_before = history
        .grants_by_campaign
        .get(&campaign.id)
        .copied()
        .unwrap_or(0);
    if granted_before >= campaign.per_user_limit {
        let detail = format!(
            "user has {granted_before} grant(s) in campaign {}, the limit is {}",
            campaign.id, campaign.per_user_limit
        );
        return done(ut, Outcome::LimitReached, Some(&campaign.id), detail);
    }
    let chain = state.chains.entry(campaign.id.to_string()).or_default();
    let chosen = match select::coupon_for(rules, request, &user_type, campaign, chain) {
        Ok(Some(coupon)) => coupon,
        // With no active coupon in stock the rule had nothing to pick: `()` then means
        // "none left", and the chain's retired reserve (if any) is the last resort.
        Ok(None) if chain.has_active_stock() => {
            let detail = "select_coupon.rhai returned () (not eligible)".to_owned();
            return done(ut, Outcome::NotEligible, Some(&campaign.id), detail);
        }
        Ok(None) => match chain.0.first() {
            Some(first) => first.id.clone(),
            None => {
                let detail = format!("campaign {} has no coupons", campaign.id);
                return done(ut, Outcome::OutOfStock, Some(&campaign.id), detail);
            }
        },
        Err(e) => return failed(ut, &e),
    };
    let Some(allocation) = chain.allocate(&chosen) else {
        let detail = match chain.why_none() {
            Some(why) => format!(
                "no coupon of campaign {} can be granted: the others are out of stock and {why}",
                campaign.id
            ),
            None => format!("every coupon of campaign {} is out of stock", campaign.id),
        };
        return done(ut, Outcome::OutOfStock, Some(&campaign.id), detail);
    };
    let coupon = chain.0[allocation.index].clone();
    if let Some(budget) = state.budgets.get_mut(campaign.id.as_str()) {
        let cap = budget.budget_cents.unwrap_or(i64::MAX);
        if budget.granted_cents + coupon.face_value.cents() > cap {
            chain.0[allocation.index].remaining += 1;
            let detail = format!("campaign {} {BUDGET_REACHED}", campaign.id);
            return done(ut, Outcome::NotEligible, Some(&campaign.id), detail);
        }
        budget.granted_cents += coupon.face_value.cents();
    }
    state.histories.record(request, &campaign.id, now);
    let verdict = Verdict::Granted {
        campaign: campaign.id.clone(),
        coupon,
        fallback: allocation.fallback,
    };
    (ut, verdict)
}

/// Announces `campaign.budget_reached` once per campaign, in the grant transaction.
async fn alert_budgets<C: Store>(
    conn: &mut C,
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

/// Takes the batch's stock, one guarded statement per coupon in id order, then adds the
/// granted value to each campaign that has a budget, in id order (the order every
/// transaction locks these rows in). Campaigns without a budget are not touched: their
/// rows would be a second hot spot for nothing (the catalog recounts a budget's granted
/// value from the ledger when it is applied). A guard that fails means the unlocked
/// read was stale.
async fn take_stock<C: Store>(
    conn: &mut C,
    decisions: &[Decision],
    budgeted: &HashSet<String>,
) -> Result<(), BatchError> {
    let mut taken: BTreeMap<&str, i64> = BTreeMap::new();
    let mut value: BTreeMap<&str, i64> = BTreeMap::new();
    for d in decisions {
        if let Verdict::Granted {
            campaign, coupon, ..
        } = &d.verdict
        {
            *taken.entry(coupon.id.as_str()).or_default() += 1;
            if budgeted.contains(campaign.as_str()) {
                *value.entry(campaign.as_str()).or_default() += coupon.face_value.cents();
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
    Ok(())
}

/// Where a batch's `coupon.granted` rows go, fixed before its transaction starts.
#[derive(Debug, Clone)]
struct Outlets {
    /// The end of the hand-off hold, on the store's clock …
    held_until: NaiveDateTime,
    /// … and on this host's monotonic clock.
    held_until_here: Instant,
    /// The batch's hold token, written with its handed-off rows.
    hold_token: i64,
    /// Channels whose hand-off has room: their rows are written held for this daemon's
    /// dispatcher, which gets them in memory after the commit; the others' rows are
    /// due at once, for the outbox.
    handoff: HashSet<String>,
    /// Channels a 410 Gone disabled: their coupons count as out of stock.
    disabled: HashSet<String>,
}

impl Outlets {
    fn of(ctx: &Context) -> Self {
        let lease = ctx.delivery_lease();
        Outlets {
            held_until: store::now() + lease,
            held_until_here: Instant::now() + lease.to_std().unwrap_or_default(),
            hold_token: claim_token(),
            handoff: ctx
                .config
                .channels
                .keys()
                .filter(|c| ctx.handoff.has_room(c.as_str()))
                .map(|c| c.to_string())
                .collect(),
            disabled: ctx.handoff.disabled(),
        }
    }
}

/// What a committed batch transaction returns.
#[derive(Default)]
struct Written {
    summary: BatchSummary,
    tally: BatchTally,
    /// The `coupon.granted` rows held for this daemon's dispatcher.
    handed_off: Vec<NewDelivery>,
    /// The channels of the rows written due at once, for the outbox.
    outbox_channels: HashSet<String>,
}

/// Writes the batch's grants, their outbox rows and every request's final status.
/// The `coupon.granted` rows of the channels in `outlets.handoff` are due at the end of
/// the hold (held for this daemon's dispatcher) and returned for the hand-off; the
/// others are due now.
async fn write_batch<C: Store>(
    conn: &mut C,
    rules: &Rules,
    (decisions, rejected): (&[Decision], &[Rejected]),
    (claim, outlets): (Claim, &Outlets),
    now: DateTime<Utc>,
) -> Result<Written, StoreError> {
    let version = rules.version().to_string();
    let at = now.naive_utc();
    let mut grants = Vec::new();
    let mut deliveries = Vec::new();
    let mut finished = Vec::with_capacity(decisions.len() + rejected.len());
    let mut summary = BatchSummary::default();
    for d in decisions {
        let user_type = d.user_type.as_ref().map(|t| t.to_string());
        let mut row = Finished {
            id: d.request.id.0,
            status: "done",
            outcome: None,
            error: None,
            detail: None,
            user_type: user_type.clone(),
            campaign_id: None,
            rules_version: Some(version.clone()),
        };
        match &d.verdict {
            Verdict::Granted {
                campaign,
                coupon,
                fallback,
            } => {
                let grant = NewGrant {
                    id: d.request.id.0,
                    request_id: d.request.id.0,
                    user_id: d.request.user_id.to_string(),
                    event: d.request.event.to_string(),
                    campaign_id: campaign.to_string(),
                    coupon_id: coupon.id.to_string(),
                    face_value_cents: coupon.face_value.cents(),
                    user_type: user_type.clone().unwrap_or_default(),
                    rules_version: version.clone(),
                    granted_at: at,
                };
                let mut delivery = events::coupon_granted(&grant, &d.request, coupon, now);
                if outlets.handoff.contains(delivery.channel.as_str()) {
                    delivery.next_attempt_at = outlets.held_until;
                    delivery.hold_token = Some(outlets.hold_token);
                }
                deliveries.push(delivery);
                grants.push(grant);
                row.outcome = Some(Outcome::Granted.as_str());
                row.campaign_id = Some(campaign.to_string());
                row.detail = fallback.clone();
            }
            Verdict::Done {
                outcome,
                campaign,
                detail,
            } => {
                row.outcome = Some(outcome.as_str());
                row.campaign_id = campaign.as_ref().map(|c| c.to_string());
                row.detail = Some(detail.clone());
            }
            Verdict::Failed { error } => {
                summary.failed += 1;
                row.status = "failed";
                row.error = Some(error.clone());
            }
        }
        finished.push(row);
    }
    for r in rejected {
        summary.rejected += 1;
        finished.push(Finished {
            id: r.id.0,
            status: "rejected",
            outcome: None,
            error: Some(r.reason.clone()),
            detail: None,
            user_type: None,
            campaign_id: None,
            rules_version: None,
        });
    }
    summary.granted = grants.len();
    conn.record_grants(&grants).await?;
    conn.record_deliveries(&deliveries).await?;
    conn.finish_requests(&finished, claim, at).await?;
    let (handed_off, for_outbox): (Vec<NewDelivery>, Vec<NewDelivery>) =
        deliveries.into_iter().partition(|d| d.hold_token.is_some());
    Ok(Written {
        summary,
        tally: BatchTally::of(&finished, &grants),
        handed_off,
        outbox_channels: for_outbox.into_iter().map(|d| d.channel).collect(),
    })
}
