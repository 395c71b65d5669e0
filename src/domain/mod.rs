//! Domain types shared by every pipeline stage.
//!
//! Each value that crosses a boundary (a request from a client app, a coupon from the
//! config, an amount of money) is parsed once into a newtype here, so that an invalid
//! value cannot exist past the boundary. Stages hand each other these types, never
//! database rows.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod campaign;
pub mod chain;
pub mod codes;
pub mod lifecycle;
pub mod status;

pub use status::{
    CouponState, DeliveryStatus, GrantState, RequestStatus, UpdateAction, UpdateStatus,
};

/// Longest accepted `request_key`, `user_id` and identifiers (bytes): the width of the
/// indexed `VARCHAR` columns.
pub const MAX_KEY_LEN: usize = 191;
/// Longest accepted `event` name (bytes).
pub const MAX_EVENT_LEN: usize = 64;
/// Largest accepted `attributes` document (bytes of JSON text).
pub const MAX_ATTRIBUTES_LEN: usize = 16 * 1024;

/// Why a value from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    /// The field that carried the bad value (`user_id`, `attributes`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidValue {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

fn parse_name(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidValue> {
    if raw.trim().is_empty() {
        return Err(InvalidValue::new(field, "is empty"));
    }
    if raw.len() > max {
        return Err(InvalidValue::new(
            field,
            format!("is {} bytes, longer than the limit of {max}", raw.len()),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidValue::new(field, "contains a control character"));
    }
    // MariaDB's collations pad with spaces ('alice ' = 'alice'), SQLite's do not: a
    // value that starts or ends with white space would be one user to the database and
    // another to the daemon.
    if raw.trim() != raw {
        return Err(InvalidValue::new(
            field,
            "starts or ends with white space (the database would compare it equal to the value without it)",
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a raw value, refusing empty, oversized or control-character values
            /// and values with white space at either end.
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                parse_name($field, raw, $max).map(Self)
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(raw: String) -> Result<Self, InvalidValue> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The client's idempotency key for one trigger request.
    RequestKey, "request_key", MAX_KEY_LEN
);
name_type!(
    /// The client app's identifier of a user.
    UserId, "user_id", MAX_KEY_LEN
);
name_type!(
    /// The name of the event a user did (`app_open`, `first_deposit`, …).
    Event, "event", MAX_EVENT_LEN
);
name_type!(
    /// A campaign's identifier from the config.
    CampaignId, "campaign id", MAX_EVENT_LEN
);
name_type!(
    /// A coupon's identifier from the config; unique across all campaigns.
    CouponId, "coupon id", MAX_EVENT_LEN
);
name_type!(
    /// A channel's name: the partner webhook a coupon is delivered through.
    ChannelName, "channel", MAX_EVENT_LEN
);
name_type!(
    /// The user type a rule decided (`first_time`, `returning`, or a segment ops define).
    UserType, "user type", MAX_EVENT_LEN
);

/// The id of a row in `trigger_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub i64);

/// The digest of the rule scripts that made a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RulesVersion(pub String);

impl fmt::Display for RulesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money in integer cents; never a float.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Money(i64);

impl Money {
    /// An amount from a count of cents.
    pub const fn from_cents(cents: i64) -> Self {
        Self(cents)
    }

    /// The amount in cents.
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// Parses `"10"`, `"10.5"` or `"10.00"`; refuses negatives, more than two decimals
    /// and anything that is not a plain decimal number.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let bad =
            || InvalidValue::new("amount", format!("{raw:?} is not an amount like \"10.00\""));
        let (whole, frac) = match raw.trim().split_once('.') {
            Some((whole, frac)) => (whole, Some(frac)),
            None => (raw.trim(), None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || frac.is_some_and(|f| !digits(f) || f.len() > 2) {
            return Err(bad());
        }
        let whole: i64 = whole.parse().map_err(|_| bad())?;
        let frac: i64 = format!("{:0<2}", frac.unwrap_or(""))
            .parse()
            .map_err(|_| bad())?;
        whole
            .checked_mul(100)
            .and_then(|c| c.checked_add(frac))
            .map(Self)
            .ok_or_else(bad)
    }
}

impl TryFrom<String> for Money {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, InvalidValue> {
        Self::parse(&raw)
    }
}

impl From<Money> for String {
    fn from(value: Money) -> String {
        value.to_string()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// A validated trigger request: user `user_id` did `event`, with `attributes`.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerRequest {
    /// Row id in `trigger_requests`.
    pub id: RequestId,
    /// The client's idempotency key.
    pub key: RequestKey,
    /// Who did the event.
    pub user_id: UserId,
    /// What they did.
    pub event: Event,
    /// Free-form attributes from the client (an empty map when NULL).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// When the client inserted it.
    pub created_at: DateTime<Utc>,
}

/// What a user did before this request, as the rules see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The user's earlier grants for this event, across campaigns.
    pub grants_for_event: i64,
    /// When the user last received a grant for this event.
    pub last_grant_at: Option<DateTime<Utc>>,
    /// The user's earlier grants per campaign.
    pub grants_by_campaign: HashMap<CampaignId, i64>,
    /// Of those grants for this event, the ones the user redeemed (state `redeemed`).
    pub redeemed_for_event: i64,
    /// When the user last redeemed a grant for this event.
    pub last_redeemed_at: Option<DateTime<Utc>>,
}

/// A campaign's budget as the grant step reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Campaign id.
    pub campaign_id: String,
    /// The cap, in cents.
    pub budget_cents: Option<i64>,
    /// Face value granted so far, in cents.
    pub granted_cents: i64,
}

/// One user's grants for one event in one campaign, counted from the ledger: the
/// grants that count (every state but `revoked`, which was given back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PastGrants {
    /// The user.
    pub user_id: String,
    /// The event.
    pub event: String,
    /// The campaign.
    pub campaign_id: String,
    /// Grants.
    pub grants: i64,
    /// The latest.
    pub last_grant_at: Option<chrono::NaiveDateTime>,
    /// Of these, the grants in state `redeemed`.
    pub redeemed: i64,
    /// The latest redemption among them.
    pub last_redeemed_at: Option<chrono::NaiveDateTime>,
}

/// When a user got one grant that counts, for an event in a campaign: what a rolling
/// `per_user_limit_period` counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastGrantTime {
    /// The user.
    pub user_id: String,
    /// The event.
    pub event: String,
    /// The campaign.
    pub campaign_id: String,
    /// When it was granted.
    pub granted_at: chrono::NaiveDateTime,
}

/// How a request that was processed ended (`trigger_requests.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A coupon was granted.
    Granted,
    /// The rules (or the campaign's window or budget) said no.
    NotEligible,
    /// The user already had `per_user_limit` grants in the campaign.
    LimitReached,
    /// Every coupon of the campaign's chain is out of stock.
    OutOfStock,
    /// No campaign answers this event for this user type.
    NoCampaign,
}

impl Outcome {
    /// The value stored in `trigger_requests.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::NotEligible => "not_eligible",
            Outcome::LimitReached => "limit_reached",
            Outcome::OutOfStock => "out_of_stock",
            Outcome::NoCampaign => "no_campaign",
        }
    }
}

/// The campaign as the coupon-selection rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignView {
    /// Campaign id.
    pub id: CampaignId,
    /// The event it answers.
    pub event: Event,
    /// The user type it serves.
    pub audience: UserType,
    /// Grants per user in this campaign.
    pub per_user_limit: i64,
}

/// One coupon of a rotation chain as the coupon-selection rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CouponView {
    /// Coupon id.
    pub id: CouponId,
    /// Face value.
    pub face_value: Money,
    /// Stock left when the batch was read.
    pub remaining: i64,
    /// The channel it is delivered through.
    pub channel: ChannelName,
    /// `valid_until`, when the coupon has a fixed end.
    pub valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_and_prints_in_cents() {
        assert_eq!(Money::parse("10.00").unwrap().cents(), 1000);
        assert_eq!(Money::parse("10").unwrap().cents(), 1000);
        assert_eq!(Money::parse("0.5").unwrap().cents(), 50);
        assert_eq!(Money::parse("8.05").unwrap().to_string(), "8.05");
        for bad in ["", "-1", "1.234", "abc", "1.", ".5", "1e3"] {
            assert!(Money::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn names_refuse_empty_oversized_and_control_values() {
        assert!(UserId::parse("u-1").is_ok());
        assert_eq!(UserId::parse("  ").unwrap_err().field, "user_id");
        assert!(UserId::parse(&"x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(Event::parse("app\nopen").is_err());
        for padded in ["alice ", " alice", "alice\u{a0}", "\u{3000}alice"] {
            let err = UserId::parse(padded).unwrap_err();
            assert!(err.reason.contains("white space"), "{padded:?}: {err}");
        }
    }
}
