//! `couponsd simulate`: one request decided against the live database as the daemon
//! would decide it now, without writing anything: the user's history, the user type,
//! the campaign, its coupons with their stock, the coupon chosen and its channel.
//!
//! Read-only by construction: the caller opens the database read-only, without
//! migrating or applying the catalog, only the plain `SELECT`s of `store::records`, `Conn::history_for` and
//! `Conn::coupon_stock` run (no locking reads), and the decision is made in memory
//! by [`decide_one`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use super::{rfc3339, to_json_line, AuthoringError};
use crate::config::Config;
use crate::domain::chain::Chain;
use crate::domain::chain::CouponStock;
use crate::domain::{Budget, PastGrants};
use crate::domain::{Event, History, RequestId, RequestKey, TriggerRequest, UserId};
use crate::pipeline::decide::Histories;
use crate::pipeline::decide::{self, decide_one, Books, Verdict};
use crate::rules::{Rules, SELECT_COUPON_FILE, USER_TYPE_FILE};
use crate::store::records::GrantRecord;
use crate::store::{Db, StoreError};

/// How many of the user's grants `simulate` lists.
const RECENT_GRANTS: i64 = 10;

/// `couponsd simulate` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The user.
    #[arg(long)]
    pub user: String,
    /// The event.
    #[arg(long)]
    pub event: String,
    /// The request's attributes, a JSON object.
    #[arg(long)]
    pub attrs: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a request would come to now.
#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    /// The rules version that decided.
    pub rules_version: String,
    /// The user.
    pub user_id: String,
    /// The event.
    pub event: String,
    /// The attributes.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The user's history for the event, as the rules see it.
    pub history: HistoryView,
    /// The user type, unless `user_type.rhai` failed.
    pub user_type: Option<String>,
    /// The rule file that decided the user type.
    pub user_type_rule: String,
    /// The campaign answering the event for the user type.
    pub campaign: Option<String>,
    /// The campaign's chain before this request, in order.
    pub coupons: Vec<CandidateCoupon>,
    /// The rule file that chooses the coupon.
    pub coupon_rule: String,
    /// `granted`, `not_eligible`, `limit_reached`, `out_of_stock`, `no_campaign` or
    /// `failed` (a rule failed).
    pub outcome: String,
    /// The coupon that would be granted.
    pub coupon: Option<String>,
    /// The channel it would go to.
    pub channel: Option<String>,
    /// Why this outcome, or why another coupon than the rule's choice.
    pub detail: Option<String>,
    /// The rule error, when a rule failed.
    pub error: Option<String>,
}

/// A user's history for one event.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    /// Grants for the event, across campaigns.
    pub grants_for_event: i64,
    /// The latest of them.
    pub last_grant_at: Option<String>,
    /// Grants per campaign.
    pub grants_by_campaign: BTreeMap<String, i64>,
    /// The latest grants, newest first: `request N campaign C coupon X at TIME`.
    pub recent: Vec<String>,
}

/// One coupon of the campaign's chain.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateCoupon {
    /// Coupon id.
    pub id: String,
    /// Face value.
    pub face_value: String,
    /// Stock left.
    pub remaining: i64,
    /// Delivery channel.
    pub channel: String,
    /// Rotated out: hidden from the rule, granted only as a last resort.
    pub retired: bool,
}

/// `couponsd simulate`: `request` decided on `db` (opened read-only by the caller) with
/// the config's compiled `rules`; the simulation as text, or as one JSON line with
/// `json`.
pub async fn run(
    db: &Db,
    config: &Config,
    rules: &Rules,
    request: TriggerRequest,
    json: bool,
) -> Result<String, AuthoringError> {
    let simulation = simulate(db, config, rules, request).await?;
    if json {
        return to_json_line(&simulation);
    }
    Ok(render(&simulation))
}

/// The request `args` describe, checked before anything is opened: a bad `--attrs`,
/// `--user` or `--event` is refused, naming the flag.
pub fn request(args: &SimulateArgs) -> Result<TriggerRequest, AuthoringError> {
    let bad = |what: &str, e: String| AuthoringError::Refused(format!("{what}: {e}"));
    let attributes = match args.attrs.as_deref() {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Err(bad("--attrs", "must be a JSON object".into())),
            Err(e) => return Err(bad("--attrs", format!("not valid JSON: {e}"))),
        },
    };
    Ok(TriggerRequest {
        id: RequestId(0),
        key: RequestKey::parse("simulate").map_err(|e| bad("request_key", e.to_string()))?,
        user_id: UserId::parse(&args.user).map_err(|e| bad("--user", e.reason))?,
        event: Event::parse(&args.event).map_err(|e| bad("--event", e.reason))?,
        attributes,
        created_at: Utc::now(),
    })
}

/// The live state a decision reads.
struct Live {
    history: Vec<PastGrants>,
    recent: Vec<GrantRecord>,
    chains: HashMap<String, Chain>,
    budgets: HashMap<String, Budget>,
}

async fn read_live(db: &Db, user: &str, event: &str) -> Result<Live, AuthoringError> {
    let (history, recent, stock, budgets, disabled) = {
        let conn = &mut db.get().await?;
        let history = conn.history_for(&[user.to_owned()]).await;
        let recent = conn.recent_grants_of(user, event, RECENT_GRANTS).await;
        let stock = conn.coupon_stock().await;
        let budgets = conn.campaign_budgets().await;
        let disabled = conn.disabled_channels().await;
        (
            history.map_err(StoreError::from)?,
            recent.map_err(StoreError::from)?,
            stock.map_err(StoreError::from)?,
            budgets.map_err(StoreError::from)?,
            disabled.map_err(StoreError::from)?,
        )
    };
    // As the grant step sees them: a coupon whose channel is disabled has no stock.
    let disabled: std::collections::HashSet<String> = disabled.into_iter().collect();
    let mut by_campaign: HashMap<String, Vec<CouponStock>> = HashMap::new();
    for row in stock {
        by_campaign
            .entry(row.campaign_id.clone())
            .or_default()
            .push(row);
    }
    Ok(Live {
        history,
        recent,
        chains: by_campaign
            .into_iter()
            .map(|(campaign, rows)| {
                let mut chain = Chain::from_stock(rows);
                chain.close_channels(&disabled);
                (campaign, chain)
            })
            .collect(),
        budgets: budgets
            .into_iter()
            .map(|b| (b.campaign_id.clone(), b))
            .collect(),
    })
}

/// Decides `request` against the database as it is now, writing nothing.
pub async fn simulate(
    db: &Db,
    config: &Config,
    rules: &Rules,
    request: TriggerRequest,
) -> Result<Simulation, AuthoringError> {
    let (user, event) = (request.user_id.to_string(), request.event.to_string());
    let mut live = read_live(db, &user, &event).await?;
    let mut histories = Histories::from_rows(live.history);
    let history = history_view(&histories.of(&request), &live.recent);
    let before = live.chains.clone();
    let mut books = Books {
        histories: &mut histories,
        chains: &mut live.chains,
        budgets: &mut live.budgets,
    };
    let decision = decide_one(
        rules,
        &config.campaigns,
        &mut books,
        request.clone(),
        Utc::now(),
    );
    let campaign = decision
        .user_type
        .as_ref()
        .and_then(|t| decide::campaign_for(&config.campaigns, &request, t));
    let coupons = campaign
        .and_then(|c| before.get(c.id.as_str()))
        .map(candidates)
        .unwrap_or_default();
    let rule = |file: &str| config.rules.dir.join(file).display().to_string();
    let mut simulation = Simulation {
        rules_version: rules.version().to_string(),
        user_id: user,
        event,
        attributes: request.attributes,
        history,
        user_type: decision.user_type.as_ref().map(ToString::to_string),
        user_type_rule: rule(USER_TYPE_FILE),
        campaign: campaign.map(|c| c.id.to_string()),
        coupons,
        coupon_rule: rule(SELECT_COUPON_FILE),
        outcome: String::new(),
        coupon: None,
        channel: None,
        detail: None,
        error: None,
    };
    match decision.verdict {
        Verdict::Granted {
            coupon, fallback, ..
        } => {
            simulation.outcome = "granted".into();
            simulation.coupon = Some(coupon.id.to_string());
            simulation.channel = Some(coupon.channel.to_string());
            simulation.detail = fallback;
        }
        Verdict::Refused(refusal) => {
            simulation.outcome = refusal.outcome().as_str().into();
            simulation.detail = Some(refusal.to_string());
        }
        Verdict::Failed { error } => {
            simulation.outcome = "failed".into();
            simulation.error = Some(error);
        }
    }
    Ok(simulation)
}

fn history_view(history: &History, recent: &[GrantRecord]) -> HistoryView {
    HistoryView {
        grants_for_event: history.grants_for_event,
        last_grant_at: history
            .last_grant_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        grants_by_campaign: history
            .grants_by_campaign
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
        recent: recent
            .iter()
            .map(|g| {
                format!(
                    "request {} campaign {} coupon {} at {}",
                    g.request_id,
                    g.campaign_id,
                    g.coupon_id,
                    rfc3339(g.granted_at)
                )
            })
            .collect(),
    }
}

fn candidates(chain: &Chain) -> Vec<CandidateCoupon> {
    chain
        .0
        .iter()
        .map(|c| CandidateCoupon {
            id: c.id.to_string(),
            face_value: c.face_value.to_string(),
            remaining: c.remaining,
            channel: c.channel.to_string(),
            retired: c.retired,
        })
        .collect()
}

fn render(s: &Simulation) -> String {
    let mut out = String::new();
    let attributes = serde_json::Value::Object(s.attributes.clone());
    let _ = writeln!(
        out,
        "simulate  user {} event {} attributes {attributes}  (dry run: nothing is written)",
        s.user_id, s.event
    );
    let _ = writeln!(out, "rules     version {}", s.rules_version);
    let h = &s.history;
    let by_campaign: Vec<String> = h
        .grants_by_campaign
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "history   {} grant(s) for {}; last {}; by campaign: {}",
        h.grants_for_event,
        s.event,
        h.last_grant_at.as_deref().unwrap_or("never"),
        if by_campaign.is_empty() {
            "none".to_owned()
        } else {
            by_campaign.join(", ")
        }
    );
    for line in &h.recent {
        let _ = writeln!(out, "          {line}");
    }
    let user_type = s.user_type.as_deref().unwrap_or("(none: the rule failed)");
    let _ = writeln!(
        out,
        "user type {user_type}  (decided by {})",
        s.user_type_rule
    );
    let campaign = s.campaign.as_deref().unwrap_or("(none)");
    let _ = writeln!(out, "campaign  {campaign}");
    if !s.coupons.is_empty() {
        let _ = writeln!(
            out,
            "coupons   {:<12} {:>10} {:>10}  {:<10} STATE",
            "COUPON", "FACE", "REMAINING", "CHANNEL"
        );
        for c in &s.coupons {
            let state = if c.retired { "retired" } else { "active" };
            let _ = writeln!(
                out,
                "          {:<12} {:>10} {:>10}  {:<10} {state}",
                c.id, c.face_value, c.remaining, c.channel
            );
        }
    }
    match (&s.coupon, &s.channel) {
        (Some(coupon), Some(channel)) => {
            let _ = writeln!(
                out,
                "outcome   granted: coupon {coupon} via channel {channel}  (chosen by {})",
                s.coupon_rule
            );
        }
        _ => {
            let _ = writeln!(out, "outcome   {}", s.outcome);
        }
    }
    if let Some(detail) = &s.detail {
        let _ = writeln!(out, "detail    {detail}");
    }
    if let Some(error) = &s.error {
        let _ = writeln!(out, "error     {error}");
    }
    out
}
