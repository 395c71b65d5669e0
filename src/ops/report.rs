//! `couponsd report [--since 7d] [--json]`: per campaign and coupon, the grants made,
//! redeemed, revoked and expired, the redemption rate, the face value granted and
//! redeemed, and the campaign's budget used.
//!
//! `--since` counts only the grants granted within that span before now (the
//! database's clock), whatever happened to them since; without it, every grant. A
//! grant is counted under `granted` whatever its state now, and under `redeemed`,
//! `revoked` or `expired` when that is its state now; the redemption rate is redeemed
//! over granted. The budget columns are the campaign's whole ledger
//! (`campaigns.granted_cents` against its `budget`), never filtered by `--since`.

use std::fmt::Write as _;

use serde::Serialize;

use super::OpsError;
use crate::domain::Money;
use crate::installation::Installation;
use crate::pipeline::dispatch::events::rfc3339;
use crate::store::report::{CampaignFigures, Figures, Report};
use crate::store::StoreError;

/// `couponsd report`
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Count only the grants granted within this span before now (`7d`, `12h`);
    /// default: every grant.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Print JSON (stable keys) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `couponsd report` and returns what to print.
pub async fn run(installation: &Installation, args: &ReportArgs) -> Result<String, OpsError> {
    let since = match args.since {
        None => None,
        Some(span) => {
            let span = chrono::TimeDelta::from_std(span)
                .map_err(|_| OpsError::Refused(format!("--since {span:?} is too long")))?;
            Some(crate::store::now() - span)
        }
    };
    let report = installation
        .db
        .get()
        .await?
        .report(since)
        .await
        .map_err(StoreError::from)?;
    Ok(match args.json {
        true => json(&report),
        false => table(&report),
    })
}

/// Redeemed over granted; 0 without grants.
pub fn redemption_rate(f: &Figures) -> f64 {
    match f.granted {
        0 => 0.0,
        n => f.redeemed as f64 / n as f64,
    }
}

/// The campaign's granted face value over its budget; `None` without a budget.
pub fn budget_used(k: &CampaignFigures) -> Option<f64> {
    k.budget_cents
        .map(|b| k.budget_granted_cents as f64 / b.max(1) as f64)
}

/// The budget used as the report and the console show it: `granted / budget (x.y%)`,
/// or `-` without a budget.
pub fn budget_text(k: &CampaignFigures) -> String {
    match (k.budget_cents, budget_used(k)) {
        (Some(b), Some(used)) => format!(
            "{} / {} ({:.1}%)",
            Money::from_cents(k.budget_granted_cents),
            Money::from_cents(b),
            used * 100.0
        ),
        _ => "-".to_owned(),
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    since: Option<String>,
    campaigns: Vec<JsonCampaign<'a>>,
}

#[derive(Serialize)]
struct JsonCampaign<'a> {
    campaign: &'a str,
    #[serde(flatten)]
    figures: JsonFigures,
    budget_cents: Option<i64>,
    budget_granted_cents: i64,
    budget_used: Option<f64>,
    coupons: Vec<JsonCoupon<'a>>,
}

#[derive(Serialize)]
struct JsonCoupon<'a> {
    coupon: &'a str,
    #[serde(flatten)]
    figures: JsonFigures,
}

#[derive(Serialize)]
struct JsonFigures {
    granted: i64,
    redeemed: i64,
    redemption_rate: f64,
    revoked: i64,
    expired: i64,
    granted_face_value_cents: i64,
    redeemed_face_value_cents: i64,
}

impl From<&Figures> for JsonFigures {
    fn from(f: &Figures) -> Self {
        JsonFigures {
            granted: f.granted,
            redeemed: f.redeemed,
            redemption_rate: redemption_rate(f),
            revoked: f.revoked,
            expired: f.expired,
            granted_face_value_cents: f.granted_face_value_cents,
            redeemed_face_value_cents: f.redeemed_face_value_cents,
        }
    }
}

/// The report as JSON: `{"since", "campaigns": [{"campaign", figures…, "budget_cents",
/// "budget_granted_cents", "budget_used", "coupons": [{"coupon", figures…}]}]}`.
pub fn json(report: &Report) -> String {
    let body = JsonReport {
        since: report.since.map(rfc3339),
        campaigns: report
            .campaigns
            .iter()
            .map(|k| JsonCampaign {
                campaign: &k.campaign,
                figures: (&k.figures).into(),
                budget_cents: k.budget_cents,
                budget_granted_cents: k.budget_granted_cents,
                budget_used: budget_used(k),
                coupons: k
                    .coupons
                    .iter()
                    .map(|c| JsonCoupon {
                        coupon: &c.coupon,
                        figures: (&c.figures).into(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut out = serde_json::to_string_pretty(&body).expect("the report always serialises");
    out.push('\n');
    out
}

/// The report as a table: one line per campaign (coupon `*`, with its budget) and one
/// per coupon.
pub fn table(report: &Report) -> String {
    let mut out = match report.since {
        Some(since) => format!("grants granted since {}\n", rfc3339(since)),
        None => "every grant\n".to_owned(),
    };
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:>8} {:>8} {:>6} {:>8} {:>8} {:>12} {:>12}  BUDGET USED",
        "CAMPAIGN",
        "COUPON",
        "GRANTED",
        "REDEEMED",
        "RATE",
        "REVOKED",
        "EXPIRED",
        "VALUE",
        "REDEEMED VAL"
    );
    for k in &report.campaigns {
        let budget = budget_text(k);
        line(&mut out, (&k.campaign, "*"), &k.figures, &budget);
        for c in &k.coupons {
            line(&mut out, (&k.campaign, &c.coupon), &c.figures, "");
        }
    }
    out
}

fn line(out: &mut String, (campaign, coupon): (&str, &str), f: &Figures, budget: &str) {
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:>8} {:>8} {:>5.1}% {:>8} {:>8} {:>12} {:>12}  {}",
        campaign,
        coupon,
        f.granted,
        f.redeemed,
        redemption_rate(f) * 100.0,
        f.revoked,
        f.expired,
        Money::from_cents(f.granted_face_value_cents).to_string(),
        Money::from_cents(f.redeemed_face_value_cents).to_string(),
        budget
    );
}
