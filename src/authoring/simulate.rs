//! `couponsd simulate`: one request decided against the live database as the daemon
//! would decide it now, without writing anything: the user's history, the user type,
//! the campaign, its coupons with their stock, the coupon chosen and its channel, where
//! its code would come from and the validity a grant made now would carry.
//!
//! Read-only by construction: the caller opens the database read-only, without
//! migrating or applying the catalog, only the plain `SELECT`s of `store::records`, `Conn::history_for` and
//! `Conn::coupon_stock` run (no locking reads), and the decision is made in memory
//! by [`decide_one`]. The chains are built as the grant step builds them: disabled
//! channels closed and the catalog in force applied, so a coupon whose validity has
//! ended or would be too short is passed over with the same detail. No code is drawn or
//! generated: the simulation says where the code would come from.

mod live;
mod render;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{rfc3339, to_json_line, AuthoringError};
use crate::config::Config;
use crate::domain::chain::{Chain, ChainCoupon};
use crate::domain::codes::CodeSource;
use crate::domain::{Event, History, RequestId, RequestKey, TriggerRequest, UserId};
use crate::pipeline::decide::Histories;
use crate::pipeline::decide::{self, decide_one, Books, Verdict};
use crate::rules::{Rules, SELECT_COUPON_FILE, USER_TYPE_FILE};
use crate::store::records::GrantRecord;
use crate::store::Db;
use live::read_live;

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
    /// Where the granted coupon's code would come from, when it has codes.
    pub code: Option<CodeFrom>,
    /// When a grant made now would become valid, when the coupon has a validity.
    pub valid_from: Option<String>,
    /// When a grant made now would stop being valid, when the coupon has a validity.
    pub expires_at: Option<String>,
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
    /// Of those, the grants the user redeemed.
    pub redeemed_for_event: i64,
    /// When the user last redeemed one, in RFC 3339.
    pub last_redeemed_at: Option<String>,
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
    /// Why it cannot be granted now for its validity (`has expired (valid until …)`),
    /// when it cannot: it counts as out of stock.
    pub unusable: Option<String>,
}

/// Where a simulated grant's code would come from. A dry run draws and generates none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum CodeFrom {
    /// `codes.generate`: a fresh code from this pattern.
    Generate {
        /// The pattern.
        pattern: String,
    },
    /// `codes.pool`: the next unissued code of the coupon's pool.
    Pool {
        /// Unissued codes: the pool coupon's stock before this request.
        available: i64,
    },
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
    Ok(render::render(&simulation))
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

/// Decides `request` against the database as it is now, writing nothing.
pub async fn simulate(
    db: &Db,
    config: &Config,
    rules: &Rules,
    request: TriggerRequest,
) -> Result<Simulation, AuthoringError> {
    let (user, event) = (request.user_id.to_string(), request.event.to_string());
    let now = Utc::now();
    let mut live = read_live(db, &config.campaigns, (&user, &event), now).await?;
    let mut histories = Histories::from_rows(live.history).with_times(live.times);
    let history = history_view(&histories.of(&request), &live.recent);
    let before = live.chains.clone();
    let mut books = Books {
        histories: &mut histories,
        chains: &mut live.chains,
        budgets: &mut live.budgets,
        days: &mut live.days,
    };
    let decision = decide_one(rules, &config.campaigns, &mut books, request.clone(), now);
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
        code: None,
        valid_from: None,
        expires_at: None,
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
            simulation.code = code_from(&coupon, &simulation.coupons);
            // As the grant step writes them (pipeline/grant/record.rs).
            if let Some(ends) = coupon.validity.expires_at(now) {
                simulation.valid_from = Some(millis(now));
                simulation.expires_at = Some(millis(ends));
            }
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

/// Where `coupon`'s code would come from; a pool's available codes are its stock
/// before this request, as `candidates` show it.
fn code_from(coupon: &ChainCoupon, candidates: &[CandidateCoupon]) -> Option<CodeFrom> {
    Some(match coupon.codes.as_ref()? {
        CodeSource::Generate(pattern) => CodeFrom::Generate {
            pattern: pattern.as_str().to_owned(),
        },
        CodeSource::Pool => CodeFrom::Pool {
            available: candidates
                .iter()
                .find(|c| c.id == coupon.id.as_str())
                .map_or(0, |c| c.remaining),
        },
    })
}

fn millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn history_view(history: &History, recent: &[GrantRecord]) -> HistoryView {
    HistoryView {
        grants_for_event: history.grants_for_event,
        last_grant_at: history.last_grant_at.map(millis),
        grants_by_campaign: history
            .grants_by_campaign
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
        redeemed_for_event: history.redeemed_for_event,
        last_redeemed_at: history.last_redeemed_at.map(millis),
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
            unusable: c.unusable.map(|u| u.describe()),
        })
        .collect()
}
