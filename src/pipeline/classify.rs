//! The participation histories the user-type rule classifies users by: a batch's
//! users' grants, kept up to date as the batch decides.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{CampaignId, History, PastGrants, TriggerRequest};

/// The participation history of the users of one batch, by (user, event), kept up to
/// date as the batch grants so that a user's second request in a batch sees the first.
///
/// Keyed as the database compares: MariaDB's collations ignore trailing spaces, so a
/// ledger row of `'alice '` (written before such ids were refused) is `'alice'`'s
/// history. Intake refuses ids with white space at either end, so for any id it accepts
/// this key is the id itself on both backends.
#[derive(Debug, Default, Clone)]
pub struct Histories(HashMap<(String, String), History>);

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
        }
        Histories(map)
    }

    /// The history of `request`'s user for its event (empty for a newcomer).
    pub fn of(&self, request: &TriggerRequest) -> History {
        self.0
            .get(&key(request.user_id.as_str(), request.event.as_str()))
            .cloned()
            .unwrap_or_default()
    }

    /// Records a grant made in this batch.
    pub fn record(&mut self, request: &TriggerRequest, campaign: &CampaignId, at: DateTime<Utc>) {
        let history = self
            .0
            .entry(key(request.user_id.as_str(), request.event.as_str()))
            .or_default();
        history.grants_for_event += 1;
        history.last_grant_at = Some(at);
        *history
            .grants_by_campaign
            .entry(campaign.clone())
            .or_default() += 1;
    }
}
