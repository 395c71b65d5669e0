//! The participation histories the user-type rule classifies users by: a batch's
//! users' grants, kept up to date as the batch decides; and, for the campaigns with a
//! rolling `per_user_limit_period`, when each of those grants was made.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{CampaignId, History, PastGrantTime, PastGrants, TriggerRequest};

/// The participation history of the users of one batch, by (user, event), kept up to
/// date as the batch grants so that a user's second request in a batch sees the first.
///
/// Keyed as the database compares: MariaDB's collations ignore trailing spaces, so a
/// ledger row of `'alice '` (written before such ids were refused) is `'alice'`'s
/// history. Intake refuses ids with white space at either end, so for any id it accepts
/// this key is the id itself on both backends.
///
/// Revoked grants are not in it: they gave back what they took, the user's count
/// toward `per_user_limit` included, so for the rules too they were never made.
#[derive(Debug, Default, Clone)]
pub struct Histories {
    by_user: HashMap<(String, String), History>,
    /// Grant times by (user, event) and campaign: only the recent grants of campaigns
    /// with a `per_user_limit_period` are loaded, and every grant of the batch.
    times: HashMap<(String, String), GrantTimes>,
}

/// A user's grant times for an event, by campaign.
type GrantTimes = HashMap<CampaignId, Vec<DateTime<Utc>>>;

/// The key under which the database finds `user` and `event` equal to other values.
fn key(user: &str, event: &str) -> (String, String) {
    (
        user.trim_end_matches(' ').to_owned(),
        event.trim_end_matches(' ').to_owned(),
    )
}

impl Histories {
    /// Builds histories from the ledger's rows; a row whose campaign no longer parses
    /// is skipped.
    pub fn from_rows(rows: Vec<PastGrants>) -> Self {
        let mut map: HashMap<(String, String), History> = HashMap::new();
        for row in rows {
            let Ok(campaign) = CampaignId::parse(&row.campaign_id) else {
                continue;
            };
            let history = map.entry(key(&row.user_id, &row.event)).or_default();
            history.grants_for_event += row.grants;
            let last = row.last_grant_at.map(|t| t.and_utc());
            history.last_grant_at = history.last_grant_at.max(last);
            *history.grants_by_campaign.entry(campaign).or_default() += row.grants;
            history.redeemed_for_event += row.redeemed;
            let redeemed = row.last_redeemed_at.map(|t| t.and_utc());
            history.last_redeemed_at = history.last_redeemed_at.max(redeemed);
        }
        Histories {
            by_user: map,
            times: HashMap::new(),
        }
    }

    /// Adds the ledger's grant times (of the campaigns with a rolling period).
    pub fn with_times(mut self, rows: Vec<PastGrantTime>) -> Self {
        for row in rows {
            let Ok(campaign) = CampaignId::parse(&row.campaign_id) else {
                continue;
            };
            self.times
                .entry(key(&row.user_id, &row.event))
                .or_default()
                .entry(campaign)
                .or_default()
                .push(row.granted_at.and_utc());
        }
        self
    }

    /// How many grants `request`'s user got in `campaign` for its event after `since`
    /// (as loaded by [`Histories::with_times`], and made in this batch).
    pub fn granted_since(
        &self,
        request: &TriggerRequest,
        campaign: &CampaignId,
        since: DateTime<Utc>,
    ) -> i64 {
        self.times
            .get(&key(request.user_id.as_str(), request.event.as_str()))
            .and_then(|by_campaign| by_campaign.get(campaign))
            .map_or(0, |times| {
                times.iter().filter(|t| **t > since).count() as i64
            })
    }

    /// The history of `request`'s user for its event (empty for a newcomer).
    pub fn of(&self, request: &TriggerRequest) -> History {
        self.by_user
            .get(&key(request.user_id.as_str(), request.event.as_str()))
            .cloned()
            .unwrap_or_default()
    }

    /// Records a grant made in this batch.
    pub fn record(&mut self, request: &TriggerRequest, campaign: &CampaignId, at: DateTime<Utc>) {
        let key = key(request.user_id.as_str(), request.event.as_str());
        self.times
            .entry(key.clone())
            .or_default()
            .entry(campaign.clone())
            .or_default()
            .push(at);
        let history = self.by_user.entry(key).or_default();
        history.grants_for_event += 1;
        history.last_grant_at = Some(at);
        *history
            .grants_by_campaign
            .entry(campaign.clone())
            .or_default() += 1;
    }
}
