//! The figures of `couponsd report`, the report's Prometheus gauges and the
//! reconciliation of grant states: grants counted by coupon and state, transitions
//! counted by coupon and move (the budgets are `Conn::campaign_budgets` of
//! `records.rs`). Each is one `GROUP BY` query; nothing here locks.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use diesel::sql_types::{BigInt, Text};

use super::schema::grants;
use super::schema::grants::dsl as g;
use super::{Conn, QueryResult};

/// Grants of one coupon in one state, with one face value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    /// The campaign.
    pub campaign_id: String,
    /// The coupon.
    pub coupon_id: String,
    /// The state as stored (a word written by hand is kept as it is).
    pub state: String,
    /// The face value of each of these grants, in cents.
    pub face_value_cents: i64,
    /// How many.
    pub grants: i64,
}

/// Transitions of one coupon's grants from one state to another.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct MoveCount {
    /// The coupon.
    #[diesel(sql_type = Text)]
    pub coupon_id: String,
    /// The state left.
    #[diesel(sql_type = Text)]
    pub from_state: String,
    /// The state entered.
    #[diesel(sql_type = Text)]
    pub to_state: String,
    /// How many.
    #[diesel(sql_type = BigInt)]
    pub transitions: i64,
}

/// Reads for the report and the reconciliation.
impl Conn {
    /// Grants counted by campaign, coupon, state and face value (the face value is
    /// grouped rather than summed: `SUM` of a BIGINT is a DECIMAL on MySQL). With
    /// `since`, only the grants granted at or after it.
    pub async fn grants_by_state(
        &mut self,
        since: Option<NaiveDateTime>,
    ) -> QueryResult<Vec<StateCount>> {
        let columns = (g::campaign_id, g::coupon_id, g::state, g::face_value_cents);
        let select = (
            g::campaign_id,
            g::coupon_id,
            g::state,
            g::face_value_cents,
            diesel::dsl::count_star(),
        );
        let rows: Vec<(String, String, String, i64, i64)> = match since {
            Some(since) => {
                let query = grants::table
                    .filter(g::granted_at.ge(since))
                    .group_by(columns)
                    .select(select);
                self.load(query).await?
            }
            None => {
                let query = grants::table.group_by(columns).select(select);
                self.load(query).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(campaign_id, coupon_id, state, face_value_cents, grants)| StateCount {
                    campaign_id,
                    coupon_id,
                    state,
                    face_value_cents,
                    grants,
                },
            )
            .collect())
    }

    /// Transitions counted by the coupon of their grant and by move (a join grouped on
    /// both tables' columns, which diesel's query builder cannot say).
    pub async fn transitions_by_coupon(&mut self) -> QueryResult<Vec<MoveCount>> {
        let query = diesel::sql_query(
            "SELECT g.coupon_id AS coupon_id, t.from_state AS from_state, \
             t.to_state AS to_state, COUNT(*) AS transitions \
             FROM grant_transitions t JOIN grants g ON g.id = t.grant_id \
             GROUP BY g.coupon_id, t.from_state, t.to_state",
        );
        self.load(query).await
    }
}
