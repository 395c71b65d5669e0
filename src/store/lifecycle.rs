//! A grant's life after delivery on `grants` and `grant_transitions`: grants read back
//! (and locked) by id or code, their state changed under a guard on the state they were
//! read in, and every change recorded as a transition.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Timestamp};

use super::prepared::{case_of, in_list, padded_chunks, Cached};
use super::schema::coupons::dsl as c;
use super::schema::grant_transitions;
use super::schema::grants::dsl as g;
use super::schema::{coupons, grants};
use super::{columns, Conn, QueryResult};
use crate::domain::lifecycle::{Cause, GrantRecord, Transition};
use crate::domain::GrantState;

/// What `grants.redemption_room` holds while a grant is not redeemed (its default).
/// A redemption sets it NULL as it fills `redeemed_at` (8 bytes) and lengthens `state`
/// by one, so that on MariaDB the record keeps its size and is rewritten in its place:
/// a record that grows on a full page makes InnoDB reorganize or split the page (see
/// the migration `record_rooms`).
pub const REDEMPTION_ROOM: [u8; 9] = [0; 9];

// The room is what a redemption adds: `redeemed_at` and one more letter of state.
const _: () = assert!(
    REDEMPTION_ROOM.len()
        == 8 + GrantState::Redeemed.as_str().len() - GrantState::Granted.as_str().len()
);

/// The columns of a grant the lifecycle reads.
#[derive(Queryable, Selectable)]
#[diesel(table_name = grants)]
struct GrantRow {
    id: i64,
    user_id: String,
    event: String,
    campaign_id: String,
    coupon_id: String,
    face_value_cents: i64,
    code: Option<String>,
    granted_at: NaiveDateTime,
    expires_at: Option<NaiveDateTime>,
    state: String,
    redeemed_at: Option<NaiveDateTime>,
}

#[derive(Insertable)]
#[diesel(table_name = grant_transitions, treat_none_as_default_value = false)]
#[derive(Clone)]
struct TransitionRow {
    grant_id: i64,
    from_state: &'static str,
    to_state: &'static str,
    update_key: Option<String>,
    job: Option<String>,
    operator: Option<String>,
    reason: Option<String>,
    at: NaiveDateTime,
}

impl From<&Transition> for TransitionRow {
    fn from(t: &Transition) -> Self {
        let (update_key, job, operator) = match &t.cause {
            Cause::Update(key) => (Some(key.clone()), None, None),
            Cause::Job(name) => (None, Some(name.clone()), None),
            Cause::Operator(name) => (None, None, Some(name.clone())),
        };
        TransitionRow {
            grant_id: t.grant_id,
            from_state: t.from.as_str(),
            to_state: t.to.as_str(),
            update_key,
            job,
            operator,
            reason: t.reason.clone(),
            at: t.at.naive_utc(),
        }
    }
}

/// Rows to records. A state the daemon does not know (written by hand) is skipped: no
/// transition starts from it.
fn records(rows: Vec<GrantRow>, channels: &HashMap<String, String>) -> Vec<GrantRecord> {
    rows.into_iter()
        .filter_map(|row| {
            Some(GrantRecord {
                state: GrantState::parse(&row.state)?,
                channel: channels.get(&row.coupon_id).cloned().unwrap_or_default(),
                id: row.id,
                user_id: row.user_id,
                event: row.event,
                campaign_id: row.campaign_id,
                coupon_id: row.coupon_id,
                face_value_cents: row.face_value_cents,
                code: row.code,
                granted_at: row.granted_at,
                expires_at: row.expires_at,
                redeemed_at: row.redeemed_at,
            })
        })
        .collect()
}

/// Operations on a grant's life.
impl Conn {
    /// The grants of `ids`, in id order. With `lock`, inside the caller's transaction,
    /// they are locked in that order (`FOR UPDATE`; the coupons' channels are read
    /// without locks, so the hot coupon rows are never held here).
    pub async fn grants_by_id(&mut self, ids: &[i64], lock: bool) -> QueryResult<Vec<GrantRecord>> {
        self.grants_by_id_with(ids, lock, &HashMap::new()).await
    }

    /// [`Conn::grants_by_id`], with the channels of the coupons the caller knows (the
    /// catalog in force): only the others' are read, a round trip a batch saves when
    /// it knows them all.
    pub async fn grants_by_id_with(
        &mut self,
        ids: &[i64],
        lock: bool,
        known: &HashMap<String, String>,
    ) -> QueryResult<Vec<GrantRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let query = grants::table
            .filter(in_list(g::id, ids.iter().copied()))
            .order(g::id)
            .select(columns::<GrantRow>());
        let rows: Vec<GrantRow> = match lock {
            true => self.load_either(query.clone().for_update(), query).await?,
            false => self.load(query).await?,
        };
        self.with_channels(rows, known).await
    }

    /// The grants holding `codes`, locked (`FOR UPDATE`) inside the caller's
    /// transaction, and the grant id of each code found: resolving a batch's codes and
    /// locking their grants is one statement. The locks are taken in the order of the
    /// unique key on `code`, the same for every batch, as [`Conn::grants_by_id_with`]
    /// takes them in id order.
    pub async fn grants_by_code_locked(
        &mut self,
        codes: &[String],
        known: &HashMap<String, String>,
    ) -> QueryResult<(Vec<(String, i64)>, Vec<GrantRecord>)> {
        if codes.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let query = grants::table
            .filter(in_list(g::code, codes.iter().map(|c| Some(c.as_str()))))
            .select(columns::<GrantRow>());
        let rows: Vec<GrantRow> = self.load_either(query.clone().for_update(), query).await?;
        let held = rows
            .iter()
            .filter_map(|r| Some((r.code.clone()?, r.id)))
            .collect();
        Ok((held, self.with_channels(rows, known).await?))
    }

    /// `rows` as records, each with its coupon's channel: from `known` (the catalog
    /// in force), else read (a round trip a batch saves when it knows them all).
    async fn with_channels(
        &mut self,
        rows: Vec<GrantRow>,
        known: &HashMap<String, String>,
    ) -> QueryResult<Vec<GrantRecord>> {
        let unknown: Vec<String> = rows
            .iter()
            .filter(|r| !known.contains_key(&r.coupon_id))
            .map(|r| r.coupon_id.clone())
            .collect();
        let mut channels = match unknown.is_empty() {
            true => HashMap::new(),
            false => self.coupon_channels(&unknown).await?,
        };
        for row in &rows {
            if let Some(channel) = known.get(&row.coupon_id) {
                channels.insert(row.coupon_id.clone(), channel.clone());
            }
        }
        Ok(records(rows, &channels))
    }

    /// The grant id holding each of `codes` (codes no grant holds are left out).
    pub async fn grant_ids_by_code(&mut self, codes: &[String]) -> QueryResult<Vec<(String, i64)>> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        let query = grants::table
            .filter(in_list(g::code, codes.iter().map(|c| Some(c.as_str()))))
            .select((g::code.assume_not_null(), g::id));
        self.load(query).await
    }

    /// The channel of each of `coupon_ids`.
    async fn coupon_channels(
        &mut self,
        coupon_ids: &[String],
    ) -> QueryResult<HashMap<String, String>> {
        let mut ids = coupon_ids.to_vec();
        ids.sort();
        ids.dedup();
        let query = coupons::table
            .filter(in_list(c::id, ids))
            .select((c::id, c::channel));
        let rows: Vec<(String, String)> = self.load(query).await?;
        Ok(rows.into_iter().collect())
    }

    /// Moves the grants of `ids` that are still in `from` to `to` (setting
    /// `redeemed_at` on a redemption, clearing it on the way back to `granted`, and
    /// taking or giving back [`REDEMPTION_ROOM`] with it);
    /// returns how many moved. The caller holds their locks or accepts that a grant
    /// another daemon moved first is left as it is.
    pub async fn set_grant_states(
        &mut self,
        ids: &[i64],
        (from, to): (GrantState, GrantState),
        at: NaiveDateTime,
    ) -> QueryResult<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let target = grants::table
            .filter(in_list(g::id, ids.iter().copied()))
            .filter(g::state.eq(from.as_str()));
        let (redeemed_at, room) = match to {
            GrantState::Redeemed => (Some(at), None),
            GrantState::Granted => (None, Some(REDEMPTION_ROOM.as_slice())),
            GrantState::Expired | GrantState::Revoked => {
                let set = diesel::update(target).set(g::state.eq(to.as_str()));
                return self.execute(set).await;
            }
        };
        let set = diesel::update(target).set((
            g::state.eq(to.as_str()),
            g::redeemed_at.eq(redeemed_at),
            g::redemption_room.eq(room),
        ));
        self.execute(set).await
    }

    /// Redeems the grants of `redeemed` that are still in `from`, each at its own
    /// time, in one `UPDATE` per [`super::prepared::MAX_CHUNK`] grants
    /// (`redeemed_at = CASE id WHEN ? THEN ? … END`), where a time per statement would
    /// send one per grant: partners report when each redemption happened. Returns how
    /// many moved.
    pub async fn redeem_grants(
        &mut self,
        redeemed: &[(i64, NaiveDateTime)],
        from: GrantState,
    ) -> QueryResult<usize> {
        let mut moved = 0;
        for chunk in padded_chunks(redeemed) {
            let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            let target = grants::table
                .filter(in_list(g::id, ids))
                .filter(g::state.eq(from.as_str()));
            let at = case_of::<Nullable<Timestamp>, _, _, _>(g::id, chunk);
            let set = diesel::update(target).set((
                g::state.eq(GrantState::Redeemed.as_str()),
                g::redeemed_at.eq(at),
                g::redemption_room.eq(None::<&[u8]>),
            ));
            moved += self.execute(Cached(set)).await?;
        }
        Ok(moved)
    }

    /// Records transitions in one statement.
    pub async fn record_transitions(&mut self, transitions: &[Transition]) -> QueryResult<usize> {
        let rows: Vec<TransitionRow> = transitions.iter().map(TransitionRow::from).collect();
        self.insert_all::<_, TransitionRow>(grant_transitions::table, &rows)
            .await
    }
}
