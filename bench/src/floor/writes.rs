//! The floor's statements: what the daemon's batch transaction and its dispatcher do
//! to rows, in plain SQL through diesel-async on one MariaDB connection. Per batch
//! (200 requests by default), as `--trace-sql` of steady shows them, and `grant.rs`
//! with `store/` writes them:
//!
//! - `BEGIN`; `SELECT … FROM trigger_requests WHERE status = 'queued' ORDER BY id LIMIT
//!   200 FOR UPDATE SKIP LOCKED` (1);
//! - `INSERT INTO participations … ON DUPLICATE KEY UPDATE requests = requests + 1`, the
//!   (user, event) pairs sorted, in power-of-two chunks (3 for 200: 128 + 64 + 8): the
//!   store's `Conn::lock_participants` itself, the one statement taken as it is;
//! - `INSERT INTO grants` and `INSERT INTO deliveries` (held for the dispatcher), the
//!   same chunks (up to 3 each);
//! - `UPDATE trigger_requests SET status = 'done', outcome = …` per distinct result
//!   (1 to 3);
//! - `UPDATE coupons SET remaining = remaining - n, granted = granted + n WHERE id = ?
//!   AND remaining >= n` per coupon granted, in id order (1 to 3); `COMMIT`;
//! - then, as the dispatcher records a flush, `UPDATE deliveries SET status =
//!   'delivered', … WHERE webhook_id IN (…) AND hold_token = ?` per 128 rows (2).
//!
//! Left out: the daemon's reads that only serve its decisions (the users' grant
//! history, the coupon chains, the disabled channels), which the floor makes in memory
//! from the catalog and the users it has seen (`super::decide`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{NaiveDateTime, Utc};
use couponsd::pipeline::dispatch::events::{self, COUPON_GRANTED};
use couponsd::store::deliveries::NewDelivery;
use couponsd::store::grants::NewGrant;
use couponsd::store::prepared::{in_list, padded_chunks, pow2_chunks, Cached};
use couponsd::store::schema::{coupons, deliveries, grants, trigger_requests};
use couponsd::store::{Conn, MysqlConn, QueryResult};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{decide, Decided, Plan};

/// The rules version the floor writes beside its decisions.
const VERSION: &str = "floor";

/// The batch's transaction: claims, decides in memory, writes. `None` when the queue
/// was empty; else the requests claimed and the webhook ids of the deliveries written.
pub(super) async fn write_batch(
    store: &mut Conn,
    plan: &Mutex<Plan>,
    batch: i64,
    token: i64,
) -> QueryResult<Option<(usize, Vec<String>)>> {
    use trigger_requests::dsl as tr;
    let conn = mysql(store);
    let claimed: Vec<(i64, String, String, String)> = Cached(
        tr::trigger_requests
            .filter(tr::status.eq("queued"))
            .order(tr::id.asc())
            .limit(batch)
            .select((tr::id, tr::request_key, tr::user_id, tr::event))
            .for_update()
            .skip_locked(),
    )
    .load(conn)
    .await?;
    if claimed.is_empty() {
        return Ok(None);
    }
    let decided = decide(plan, claimed);
    let at = Utc::now().naive_utc();
    // The store's own statement, called rather than copied: sorted pairs, one upsert
    // per power-of-two chunk.
    let pairs: Vec<(String, String)> = decided
        .iter()
        .map(|d| (d.user_id.clone(), d.event.clone()))
        .collect();
    store.lock_participants(&pairs).await?;
    let conn = mysql(store);
    let webhook_ids = insert_grants(conn, &decided, at, token).await?;
    finish_requests(conn, &decided, at, token).await?;
    take_stock(conn, &decided).await?;
    Ok(Some((decided.len(), webhook_ids)))
}

/// The MariaDB connection under `store` (the floor runs on MariaDB only).
pub(super) fn mysql(store: &mut Conn) -> &mut MysqlConn {
    match store {
        Conn::Mysql(conn) => conn,
        Conn::Sqlite(_) => unreachable!("the floor runs on MariaDB"),
    }
}

/// Inserts the grants and their deliveries, held under `token` as the daemon holds a
/// batch's rows for its own dispatcher; returns their webhook ids.
async fn insert_grants(
    conn: &mut MysqlConn,
    decided: &[Decided],
    at: NaiveDateTime,
    token: i64,
) -> QueryResult<Vec<String>> {
    let mut grants = Vec::new();
    let mut outbox = Vec::new();
    for d in decided {
        let Some(grant) = &d.grant else {
            continue;
        };
        let cents = grant.face_value_cents;
        let body = serde_json::json!({
            "grant_id": d.id,
            "request_key": d.key,
            "user_id": d.user_id,
            "campaign": grant.campaign,
            "coupon": grant.coupon,
            "face_value": format!("{}.{:02}", cents / 100, cents % 100),
            "user_type": d.user_type,
        });
        outbox.push(NewDelivery {
            webhook_id: format!("msg_floor_{}", d.id),
            channel: grant.channel.clone(),
            event_type: COUPON_GRANTED.into(),
            grant_id: Some(d.id),
            payload: events::body(COUPON_GRANTED, at.and_utc(), body),
            next_attempt_at: at + chrono::Duration::seconds(30),
            created_at: at,
            hold_token: Some(token),
        });
        grants.push(NewGrant {
            id: d.id,
            request_id: d.id,
            user_id: d.user_id.clone(),
            event: d.event.clone(),
            campaign_id: grant.campaign.clone(),
            coupon_id: grant.coupon.clone(),
            face_value_cents: cents,
            user_type: d.user_type.into(),
            rules_version: VERSION.into(),
            granted_at: at,
            code: None,
            valid_from: None,
            expires_at: None,
        });
    }
    for chunk in pow2_chunks(&grants) {
        let insert = diesel::insert_into(grants::table).values(chunk);
        Cached(insert).execute(&mut *conn).await?;
    }
    for chunk in pow2_chunks(&outbox) {
        let insert = diesel::insert_into(deliveries::table).values(chunk);
        Cached(insert).execute(&mut *conn).await?;
    }
    Ok(outbox.into_iter().map(|d| d.webhook_id).collect())
}

/// One UPDATE per distinct result, as the daemon groups them.
async fn finish_requests(
    conn: &mut MysqlConn,
    decided: &[Decided],
    at: NaiveDateTime,
    token: i64,
) -> QueryResult<()> {
    use trigger_requests::dsl as tr;
    let mut groups: BTreeMap<(&str, &str, Option<&str>), Vec<i64>> = BTreeMap::new();
    for d in decided {
        let campaign = d.grant.as_ref().map(|g| g.campaign.as_str());
        groups
            .entry((d.outcome, d.user_type, campaign))
            .or_default()
            .push(d.id);
    }
    for ((outcome, user_type, campaign), ids) in groups {
        let update = diesel::update(tr::trigger_requests.filter(in_list(tr::id, ids))).set((
            tr::status.eq("done"),
            tr::outcome.eq(outcome),
            tr::error.eq(None::<String>),
            tr::detail.eq(None::<String>),
            tr::user_type.eq(user_type),
            tr::campaign_id.eq(campaign),
            tr::rules_version.eq(VERSION),
            tr::processed_at.eq(at),
            tr::claim_token.eq(token),
            tr::claimed_at.eq(at),
        ));
        Cached(update).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The guarded stock UPDATE per coupon, in id order; a guard cannot fail here (the
/// plan never hands out more than the stock), and a failed one is an error.
async fn take_stock(conn: &mut MysqlConn, decided: &[Decided]) -> QueryResult<()> {
    use coupons::dsl as c;
    let mut taken: BTreeMap<&str, i64> = BTreeMap::new();
    for d in decided {
        if let Some(grant) = &d.grant {
            *taken.entry(grant.coupon.as_str()).or_default() += 1;
        }
    }
    for (coupon, n) in taken {
        let take = diesel::update(
            c::coupons
                .filter(c::id.eq(coupon))
                .filter(c::remaining.ge(n)),
        )
        .set((
            c::remaining.eq(c::remaining - n),
            c::granted.eq(c::granted + n),
        ));
        if Cached(take).execute(&mut *conn).await? != 1 {
            return Err(diesel::result::Error::RollbackTransaction);
        }
    }
    Ok(())
}

/// Marks the batch's deliveries delivered after its commit, as the dispatcher records a
/// flush of first attempts: one statement per 128 rows, outside any transaction.
pub(super) async fn mark_delivered(
    conn: &mut MysqlConn,
    webhook_ids: &[String],
    token: i64,
) -> QueryResult<()> {
    use deliveries::dsl as d;
    let ids: Vec<&str> = webhook_ids.iter().map(String::as_str).collect();
    let at = Utc::now().naive_utc();
    for chunk in padded_chunks(&ids) {
        let rows = d::deliveries
            .filter(in_list(d::webhook_id, chunk))
            .filter(d::hold_token.eq(token));
        let update = diesel::update(rows).set((
            d::status.eq("delivered"),
            d::attempts.eq(d::attempts + 1),
            d::last_error.eq(None::<String>),
            d::hold_token.eq(None::<i64>),
            d::last_status.eq(Some(204)),
            d::delivered_at.eq(Some(at)),
        ));
        Cached(update).execute(&mut *conn).await?;
    }
    Ok(())
}
