//! A grant's life after delivery, as the stages see it: the grant read back with its
//! state, a change of state and what made it, and the day a campaign's daily budget
//! counts a grant in.

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;

use super::GrantState;

/// A grant as the lifecycle reads it back (`grants` joined with its coupon's channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The grant id (the id of the request that earned it).
    pub id: i64,
    /// The user.
    pub user_id: String,
    /// The event.
    pub event: String,
    /// The campaign.
    pub campaign_id: String,
    /// The coupon.
    pub coupon_id: String,
    /// The coupon's channel, where its events go.
    pub channel: String,
    /// Its face value in cents.
    pub face_value_cents: i64,
    /// The code, when the coupon has codes.
    pub code: Option<String>,
    /// When it was granted.
    pub granted_at: NaiveDateTime,
    /// When its validity ends, when it has one.
    pub expires_at: Option<NaiveDateTime>,
    /// Where it is now.
    pub state: GrantState,
    /// When it was redeemed, while it is.
    pub redeemed_at: Option<NaiveDateTime>,
}

/// What made a grant change state (`grant_transitions.update_key`, `job`, `operator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A partner update, by its `update_key`.
    Update(String),
    /// A scheduled job, by its name (`expire_grants`).
    Job(String),
    /// An operator's command, by the operator's name.
    Operator(String),
}

/// One change of a grant's state: a row of `grant_transitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The grant.
    pub grant_id: i64,
    /// Its state before.
    pub from: GrantState,
    /// Its state after.
    pub to: GrantState,
    /// What made it.
    pub cause: Cause,
    /// Why, as given by the partner or operator.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The day `at` falls on in `tz`, as `campaign_days.day` stores it (`YYYY-MM-DD`).
pub fn day_in(tz: Tz, at: DateTime<Utc>) -> String {
    at.with_timezone(&tz).format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_counted_in_the_campaigns_time_zone() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T16:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(day_in(chrono_tz::UTC, at), "2026-12-03");
        assert_eq!(day_in(chrono_tz::Asia::Shanghai, at), "2026-12-04");
        assert_eq!(day_in(chrono_tz::America::New_York, at), "2026-12-03");
    }
}
