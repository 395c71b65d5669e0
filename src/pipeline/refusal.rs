//! Why a request earns no coupon: a typed [`Refusal`], made text (`Display`, what
//! `trigger_requests.detail` stores) only where it is written or shown.

use std::fmt;

use chrono::{DateTime, Duration, Utc};

use crate::domain::{CampaignId, Event, Money, Outcome, UserType};

/// Why a request earns no coupon. Its text (`Display`) is what `detail` stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No campaign answers the event for the user type.
    NoCampaign {
        /// The request's event.
        event: Event,
        /// The user type decided.
        user_type: UserType,
    },
    /// The campaign's window has not opened.
    NotStarted(CampaignId, DateTime<Utc>),
    /// The campaign's window has closed.
    Ended(CampaignId, DateTime<Utc>),
    /// The user already has `limit` grants in the campaign (within its period).
    LimitReached {
        /// The campaign.
        campaign: CampaignId,
        /// The user's grants in it that count (within the period).
        granted: i64,
        /// `per_user_limit`.
        limit: i64,
        /// `per_user_limit_period`, when the limit is rolling.
        period: Option<Duration>,
    },
    /// `select_coupon.rhai` returned `()` while an active coupon had stock.
    RuleDeclined(CampaignId),
    /// The campaign has no coupons at all.
    NoCoupons(CampaignId),
    /// No coupon of the chain can be granted; the second field says why beyond stock
    /// (a disabled channel), when it is more than that.
    OutOfStock(CampaignId, Option<String>),
    /// The grant would pass the campaign's budget.
    BudgetReached(CampaignId),
    /// The grant would pass the campaign's `daily_budget` for the day (in its
    /// `timezone`) the batch is decided on.
    DailyBudgetReached {
        /// The campaign.
        campaign: CampaignId,
        /// `daily_budget`.
        limit: Money,
        /// The day, `YYYY-MM-DD` in `timezone`.
        day: String,
        /// The campaign's `timezone`.
        timezone: chrono_tz::Tz,
    },
}

impl Refusal {
    /// The outcome stored for it.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::NoCampaign { .. } => Outcome::NoCampaign,
            Refusal::NotStarted(..)
            | Refusal::Ended(..)
            | Refusal::RuleDeclined(_)
            | Refusal::BudgetReached(_)
            | Refusal::DailyBudgetReached { .. } => Outcome::NotEligible,
            Refusal::LimitReached { .. } => Outcome::LimitReached,
            Refusal::NoCoupons(_) | Refusal::OutOfStock(..) => Outcome::OutOfStock,
        }
    }

    /// The campaign that refused, when one answered.
    pub fn campaign(&self) -> Option<&CampaignId> {
        match self {
            Refusal::NoCampaign { .. } => None,
            Refusal::NotStarted(c, _)
            | Refusal::Ended(c, _)
            | Refusal::RuleDeclined(c)
            | Refusal::NoCoupons(c)
            | Refusal::OutOfStock(c, _)
            | Refusal::BudgetReached(c)
            | Refusal::DailyBudgetReached { campaign: c, .. }
            | Refusal::LimitReached { campaign: c, .. } => Some(c),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoCampaign { event, user_type } => {
                write!(
                    f,
                    "no campaign answers event {event} for user type {user_type}"
                )
            }
            Refusal::NotStarted(c, at) => write!(f, "campaign {c} starts at {}", at.to_rfc3339()),
            Refusal::Ended(c, at) => write!(f, "campaign {c} ended at {}", at.to_rfc3339()),
            Refusal::LimitReached {
                campaign,
                granted,
                limit,
                period: None,
            } => write!(
                f,
                "user has {granted} grant(s) in campaign {campaign}, the limit is {limit}"
            ),
            Refusal::LimitReached {
                campaign,
                granted,
                limit,
                period: Some(period),
            } => {
                let period = humantime::format_duration(period.to_std().unwrap_or_default());
                write!(
                    f,
                    "user has {granted} grant(s) in campaign {campaign} within the last {period}, the limit is {limit}"
                )
            }
            Refusal::RuleDeclined(_) => {
                f.write_str("select_coupon.rhai returned () (not eligible)")
            }
            Refusal::NoCoupons(c) => write!(f, "campaign {c} has no coupons"),
            Refusal::OutOfStock(c, Some(why)) => write!(
                f,
                "no coupon of campaign {c} can be granted: the others are out of stock and {why}"
            ),
            Refusal::OutOfStock(c, None) => {
                write!(f, "every coupon of campaign {c} is out of stock")
            }
            Refusal::BudgetReached(c) => write!(f, "campaign {c} has reached its budget"),
            Refusal::DailyBudgetReached {
                campaign,
                limit,
                day,
                timezone,
            } => write!(
                f,
                "campaign {campaign} has reached its daily budget {limit} for {day} ({timezone})"
            ),
        }
    }
}
