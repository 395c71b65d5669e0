//! Reads of a grant's recorded life: a user's grants and the `grant_transitions` of
//! grants, oldest first (`couponsd grants show`); revoked grants by coupon
//! (reconciliation).

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::prepared::in_list;
use super::schema::grant_transitions::dsl as t;
use super::schema::grants::dsl as g;
use super::schema::{grant_transitions, grants};
use super::{columns, Conn, QueryResult};

/// One row of `grant_transitions`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = grant_transitions)]
pub struct TransitionRecord {
    /// The grant.
    pub grant_id: i64,
    /// The state before.
    pub from_state: String,
    /// The state after.
    pub to_state: String,
    /// The partner update that made it.
    pub update_key: Option<String>,
    /// The job that made it.
    pub job: Option<String>,
    /// The operator who made it.
    pub operator: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: NaiveDateTime,
}

/// Operations on a grant's recorded life.
impl Conn {
    /// The ids of `user`'s grants, oldest first (at most `limit`).
    pub async fn grant_ids_of_user(&mut self, user: &str, limit: i64) -> QueryResult<Vec<i64>> {
        let query = grants::table
            .filter(g::user_id.eq(user))
            .order(g::id)
            .limit(limit)
            .select(g::id);
        self.load(query).await
    }

    /// Revoked grants by coupon (coupons without any are left out): reconciliation
    /// takes them out of the ledger of a coupon that got their stock back.
    pub async fn revoked_grants_per_coupon(&mut self) -> QueryResult<Vec<(String, i64)>> {
        let query = grants::table
            .filter(g::state.eq(crate::domain::GrantState::Revoked.as_str()))
            .group_by(g::coupon_id)
            .select((g::coupon_id, diesel::dsl::count_star()))
            .order(g::coupon_id);
        self.load(query).await
    }

    /// The transitions of `grant_ids`, by grant and in the order they happened.
    pub async fn transitions_of(
        &mut self,
        grant_ids: &[i64],
    ) -> QueryResult<Vec<TransitionRecord>> {
        if grant_ids.is_empty() {
            return Ok(Vec::new());
        }
        let query = grant_transitions::table
            .filter(in_list(t::grant_id, grant_ids.iter().copied()))
            .order((t::grant_id, t::id))
            .select(columns::<TransitionRecord>());
        self.load(query).await
    }
}
