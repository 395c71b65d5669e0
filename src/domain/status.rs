//! The states a request, a delivery and a coupon pass through.
//!
//! Stages handle these enums; the words they stand for (`queued`, `delivered`,
//! `retired`, …) are the contract of the tables' `status` and `state` columns and of
//! the metrics' labels, written and read only by `store/` (and `metrics` for labels)
//! through [`RequestStatus::as_str`] and its kin.

use std::fmt;

/// Where a trigger request is (`trigger_requests.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestStatus {
    /// Waiting to be claimed (what a client inserts).
    Queued,
    /// Claimed by a daemon in a transaction of its own, with a lease.
    Claimed,
    /// Decided: `outcome` says how.
    Done,
    /// Malformed: `error` names the column.
    Rejected,
    /// A rule or the database failed it: `error` says why.
    Failed,
}

impl RequestStatus {
    /// Every status, in the order the daemon reports them.
    pub const ALL: [RequestStatus; 5] = [
        RequestStatus::Queued,
        RequestStatus::Claimed,
        RequestStatus::Done,
        RequestStatus::Rejected,
        RequestStatus::Failed,
    ];

    /// The word stored in `trigger_requests.status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Queued => "queued",
            RequestStatus::Claimed => "claimed",
            RequestStatus::Done => "done",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Failed => "failed",
        }
    }

    /// The status a stored word stands for.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// Where a delivery is (`deliveries.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryStatus {
    /// To be sent (due, held by a dispatcher, retrying, or held by its disabled channel).
    Pending,
    /// The partner answered 2xx.
    Delivered,
    /// Given up: a permanent refusal or `dispatch.max_attempts` spent.
    Dead,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
    ];

    /// The word stored in `deliveries.status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// The status a stored word stands for.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// A coupon's place in its chain (`coupons.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CouponState {
    /// Selectable.
    Active,
    /// Rotated out by the inventory check; its stock is a last-resort reserve.
    Retired,
    /// No longer in the config; never granted.
    Removed,
}

impl CouponState {
    /// Every state.
    pub const ALL: [CouponState; 3] = [
        CouponState::Active,
        CouponState::Retired,
        CouponState::Removed,
    ];

    /// The word stored in `coupons.state`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CouponState::Active => "active",
            CouponState::Retired => "retired",
            CouponState::Removed => "removed",
        }
    }

    /// The state a stored word stands for.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// Where a grant is in its life after delivery (`grants.state`).
///
/// `granted` → `redeemed` (→ `granted` again on `unredeem`, unless expired meanwhile);
/// `granted` → `expired` (the expiry job, after `expires_at`); `granted` | `redeemed`
/// → `revoked`. Every change is one row of `grant_transitions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantState {
    /// Sent to (or on its way to) the user, not used yet.
    Granted,
    /// Used: a partner reported the redemption.
    Redeemed,
    /// Its validity ended unused.
    Expired,
    /// Taken back: what it took (stock, budget, the user's count) was given back.
    Revoked,
}

impl GrantState {
    /// Every state.
    pub const ALL: [GrantState; 4] = [
        GrantState::Granted,
        GrantState::Redeemed,
        GrantState::Expired,
        GrantState::Revoked,
    ];

    /// The word stored in `grants.state` and `grant_transitions`.
    pub const fn as_str(self) -> &'static str {
        match self {
            GrantState::Granted => "granted",
            GrantState::Redeemed => "redeemed",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
        }
    }

    /// The state a stored word stands for.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }

    /// True while the grant counts toward the user's `per_user_limit` and the
    /// campaign's budget: every state but `revoked`, which gave them back.
    pub const fn counts(self) -> bool {
        !matches!(self, GrantState::Revoked)
    }
}

/// What a partner update asks (`grant_updates.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// `granted` → `redeemed`.
    Redeem,
    /// `redeemed` → `granted` (a refunded order), unless the grant expired meanwhile.
    Unredeem,
    /// `granted` | `redeemed` → `revoked`.
    Revoke,
}

impl UpdateAction {
    /// Every action.
    pub const ALL: [UpdateAction; 3] = [
        UpdateAction::Redeem,
        UpdateAction::Unredeem,
        UpdateAction::Revoke,
    ];

    /// The word a partner writes.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpdateAction::Redeem => "redeem",
            UpdateAction::Unredeem => "unredeem",
            UpdateAction::Revoke => "revoke",
        }
    }

    /// The action a written word stands for.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// Where a partner update is (`grant_updates.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateStatus {
    /// Waiting to be claimed (what a partner inserts).
    Queued,
    /// Applied: the grant changed state.
    Done,
    /// Refused: `error` says why (malformed row, unknown grant, a change its state
    /// does not allow).
    Rejected,
}

impl UpdateStatus {
    /// Every status.
    pub const ALL: [UpdateStatus; 3] = [
        UpdateStatus::Queued,
        UpdateStatus::Done,
        UpdateStatus::Rejected,
    ];

    /// The word stored in `grant_updates.status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Queued => "queued",
            UpdateStatus::Done => "done",
            UpdateStatus::Rejected => "rejected",
        }
    }

    /// The status a stored word stands for.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for UpdateAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for CouponState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_the_word_it_is_stored_as() {
        for s in RequestStatus::ALL {
            assert_eq!(RequestStatus::parse(s.as_str()), Some(s));
        }
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        for s in CouponState::ALL {
            assert_eq!(CouponState::parse(s.as_str()), Some(s));
        }
        for s in GrantState::ALL {
            assert_eq!(GrantState::parse(s.as_str()), Some(s));
        }
        for s in UpdateAction::ALL {
            assert_eq!(UpdateAction::parse(s.as_str()), Some(s));
        }
        for s in UpdateStatus::ALL {
            assert_eq!(UpdateStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CouponState::parse("Active"), None);
        assert_eq!(UpdateAction::parse("Redeem"), None);
    }
}
