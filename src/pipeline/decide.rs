//! Decide: what one request earns, in memory, synchronously. The user-type rule
//! classifies the user from their history; the user type picks the campaign; the
//! campaign's window, the user's limit, the coupon rule, the chain's stock and the
//! budget each may refuse — with a typed [`Refusal`], turned into text only where it
//! is written or shown. The batch transaction and every dry run (`simulate`,
//! `backtest`, rule tests) decide through [`decide_one`], so they cannot disagree.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tracing::warn;

use crate::config::CampaignConfig;
use crate::domain::chain::{Chain, ChainCoupon};
use crate::domain::lifecycle::day_in;
use crate::domain::{Budget, CampaignId, CampaignView, CouponId, TriggerRequest, UserType};
use crate::rules::{RuleError, Rules};

pub use super::classify::Histories;
pub use super::refusal::Refusal;

/// In debug builds only (the tests), a request whose attributes have this key makes
/// rule evaluation panic, standing in for a bug in the engine: the per-request catch
/// must hold. Release builds never look at it.
pub const PANIC_FOR_TESTS: &str = "__couponsd_test_panic";

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
    Refused(Refusal),
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

/// What a batch's decisions read and update: the users' histories, the chains' stock
/// and the campaigns' budgets (by campaign id).
pub struct Books<'a> {
    /// The users' histories, updated by every grant.
    pub histories: &'a mut Histories,
    /// The chains, whose stock every grant takes from.
    pub chains: &'a mut HashMap<String, Chain>,
    /// The budgeted campaigns, whose granted value every grant adds to.
    pub budgets: &'a mut HashMap<String, Budget>,
    /// Face value granted by (campaign id, day in its `timezone`), for the campaigns
    /// with a `daily_budget`; a day not in it has granted nothing yet.
    pub days: &'a mut DayBooks,
}

/// Face value granted by (campaign id, day `YYYY-MM-DD` in the campaign's `timezone`).
pub type DayBooks = HashMap<(String, String), i64>;

/// Decides one request exactly as the batch transaction does, reading and updating
/// only `books` (a grant is recorded in the histories, its stock taken from the chain
/// and its value from the budget); writes nothing. A panic inside it (a bug in couponsd
/// or in the Rhai engine, never a rule's fault) becomes a failed verdict for this one
/// request: the batch and the worker go on.
pub fn decide_one(
    rules: &Rules,
    campaigns: &[CampaignConfig],
    books: &mut Books<'_>,
    request: TriggerRequest,
    now: DateTime<Utc>,
) -> Decision {
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decide(rules, campaigns, books, &request, now)
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

fn failed(user_type: Option<UserType>, error: &RuleError) -> (Option<UserType>, Verdict) {
    let error = error.to_string();
    (user_type, Verdict::Failed { error })
}

fn decide(
    rules: &Rules,
    campaigns: &[CampaignConfig],
    books: &mut Books<'_>,
    request: &TriggerRequest,
    now: DateTime<Utc>,
) -> (Option<UserType>, Verdict) {
    if cfg!(debug_assertions) && request.attributes.contains_key(PANIC_FOR_TESTS) {
        panic!("{PANIC_FOR_TESTS} asked for a panic");
    }
    let history = books.histories.of(request);
    let user_type = match rules.user_type(request, &history) {
        Ok(t) => t,
        Err(e) => return failed(None, &e),
    };
    let Some(campaign) = campaign_for(campaigns, request, &user_type) else {
        let event = request.event.clone();
        let refusal = Refusal::NoCampaign {
            event,
            user_type: user_type.clone(),
        };
        return (Some(user_type), Verdict::Refused(refusal));
    };
    let granted = match campaign.per_user_limit_period {
        None => history.grants_by_campaign.get(&campaign.id).copied(),
        Some(period) => Some(
            books
                .histories
                .granted_since(request, &campaign.id, now - period),
        ),
    };
    let verdict = match grant_in(rules, campaign, books, request, &user_type, granted, now) {
        Ok(verdict) => verdict,
        Err(e) => return failed(Some(user_type), &e),
    };
    if matches!(verdict, Verdict::Granted { .. }) {
        books.histories.record(request, &campaign.id, now);
    }
    (Some(user_type), verdict)
}

/// The verdict of `campaign` for a user with `granted` grants in it so far.
fn grant_in(
    rules: &Rules,
    campaign: &CampaignConfig,
    books: &mut Books<'_>,
    request: &TriggerRequest,
    user_type: &UserType,
    granted: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Verdict, RuleError> {
    if let Some(refusal) = window_refusal(campaign, now) {
        return Ok(Verdict::Refused(refusal));
    }
    let granted = granted.unwrap_or(0);
    if granted >= campaign.per_user_limit {
        let refusal = Refusal::LimitReached {
            campaign: campaign.id.clone(),
            granted,
            limit: campaign.per_user_limit,
            period: campaign.per_user_limit_period,
        };
        return Ok(Verdict::Refused(refusal));
    }
    let chain = books.chains.entry(campaign.id.to_string()).or_default();
    let chosen = match choose(rules, request, user_type, campaign, chain)? {
        Ok(chosen) => chosen,
        Err(refusal) => return Ok(Verdict::Refused(refusal)),
    };
    let ledgers = (&mut *books.budgets, &mut *books.days);
    Ok(allocate(campaign, chain, ledgers, &chosen, now))
}

/// The coupon to start from: the rule's choice, or — with no active coupon in stock,
/// when the rule had nothing to pick and said `()` — the head of the chain, whose
/// retired reserve (if any) is the last resort.
fn choose(
    rules: &Rules,
    request: &TriggerRequest,
    user_type: &UserType,
    campaign: &CampaignConfig,
    chain: &Chain,
) -> Result<Result<CouponId, Refusal>, RuleError> {
    let view = campaign_view(campaign);
    Ok(
        match rules.select_coupon(request, user_type, &view, &chain.views())? {
            Some(coupon) => Ok(coupon),
            None if chain.has_active_stock() => Err(Refusal::RuleDeclined(campaign.id.clone())),
            None => match chain.0.first() {
                Some(first) => Ok(first.id.clone()),
                None => Err(Refusal::NoCoupons(campaign.id.clone())),
            },
        },
    )
}

/// Takes one coupon from the chain, starting at `chosen`, and its face value from the
/// campaign's budget and from its daily budget of the day `now` falls on.
fn allocate(
    campaign: &CampaignConfig,
    chain: &mut Chain,
    (budgets, days): (&mut HashMap<String, Budget>, &mut DayBooks),
    chosen: &CouponId,
    now: DateTime<Utc>,
) -> Verdict {
    let id = &campaign.id;
    let Some(allocation) = chain.allocate(chosen) else {
        return Verdict::Refused(Refusal::OutOfStock(id.clone(), chain.why_none()));
    };
    let coupon = chain.0[allocation.index].clone();
    let face = coupon.face_value.cents();
    let budget = budgets.get_mut(id.as_str());
    let refusal = match &budget {
        Some(b) if b.granted_cents + face > b.budget_cents.unwrap_or(i64::MAX) => {
            Some(Refusal::BudgetReached(id.clone()))
        }
        _ => daily_refusal(campaign, days, face, now),
    };
    if let Some(refusal) = refusal {
        chain.0[allocation.index].remaining += 1;
        return Verdict::Refused(refusal);
    }
    if let Some(budget) = budget {
        budget.granted_cents += face;
    }
    if campaign.daily_budget.is_some() {
        let day = day_in(campaign.timezone, now);
        *days.entry((id.to_string(), day)).or_default() += face;
    }
    Verdict::Granted {
        campaign: id.clone(),
        coupon,
        fallback: allocation.fallback,
    }
}

/// Why `campaign`'s daily budget refuses `face` more cents on the day `now` falls on.
fn daily_refusal(
    campaign: &CampaignConfig,
    days: &DayBooks,
    face: i64,
    now: DateTime<Utc>,
) -> Option<Refusal> {
    let limit = campaign.daily_budget?;
    let day = day_in(campaign.timezone, now);
    let key = (campaign.id.to_string(), day);
    let granted = days.get(&key).copied().unwrap_or(0);
    (granted + face > limit.cents()).then(|| Refusal::DailyBudgetReached {
        campaign: campaign.id.clone(),
        limit,
        day: key.1,
        timezone: campaign.timezone,
    })
}

/// The first campaign, in config order, that answers the request's event for the
/// user type.
pub fn campaign_for<'a>(
    campaigns: &'a [CampaignConfig],
    request: &TriggerRequest,
    user_type: &UserType,
) -> Option<&'a CampaignConfig> {
    campaigns
        .iter()
        .find(|c| c.event == request.event && &c.audience == user_type)
}

/// Why the campaign's window refuses a grant at `now`, if it does.
fn window_refusal(campaign: &CampaignConfig, now: DateTime<Utc>) -> Option<Refusal> {
    match (campaign.starts_at, campaign.ends_at) {
        (Some(start), _) if now < start => Some(Refusal::NotStarted(campaign.id.clone(), start)),
        (_, Some(end)) if now > end => Some(Refusal::Ended(campaign.id.clone(), end)),
        _ => None,
    }
}

/// The campaign as the selection rule sees it.
fn campaign_view(campaign: &CampaignConfig) -> CampaignView {
    CampaignView {
        id: campaign.id.clone(),
        event: campaign.event.clone(),
        audience: campaign.audience.clone(),
        per_user_limit: campaign.per_user_limit,
    }
}
