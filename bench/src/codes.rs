//! `--codes pool` and `--codes generate`: the pools a pool run imports before its timed
//! drain, and the checks of a codes run's result (every grant delivered with a code of
//! its own, pool codes only from the pool, the pool's stock equal to its unissued
//! codes).
//!
//! The pools are written here, not through `couponsd codes import`, so that seeding
//! 360,000 codes takes seconds: multi-row INSERTs of 1,000 through the store's
//! `insert_all`, and the coupon's stock raised by as many in the same transaction, as
//! an import does.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::drain::Drained;
use super::receiver::CodeTally;
use super::workload::Codes;
use super::BenchError;
use couponsd::store::schema::coupon_codes;
use couponsd::store::Db;

/// Codes per multi-row INSERT when seeding a pool.
const SEED_CHUNK: usize = 1000;

/// A pool code as an import writes it: not yet issued.
#[derive(Clone, Insertable)]
#[diesel(table_name = coupon_codes)]
struct SeedCode {
    coupon_id: String,
    code: String,
    imported_at: Option<NaiveDateTime>,
}

/// Pool code `i` of `coupon`: unique across coupons, as `coupon_codes.code` must be.
pub fn pool_code(coupon: &str, i: usize) -> String {
    format!("{coupon}-P{i:07}")
}

/// Imports `count` codes into each pool coupon of `pools` (one transaction per coupon,
/// two coupons at a time on MariaDB) and raises its stock by as many. Returns every
/// code seeded and how long it took.
pub async fn seed_pools(
    db: &Db,
    pools: &[(&'static str, usize)],
) -> Result<(HashSet<String>, Duration), BenchError> {
    let started = Instant::now();
    let lanes = if db.is_mysql() { 2 } else { 1 };
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let db = db.clone();
        let mine: Vec<(&'static str, usize)> =
            pools.iter().skip(lane).step_by(lanes).copied().collect();
        tasks.spawn(async move {
            for (coupon, count) in mine {
                seed_pool(&db, coupon, count).await?;
            }
            Ok::<_, BenchError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| BenchError::Setup(format!("seeding pools: {e}")))??;
    }
    let seeded = pools
        .iter()
        .flat_map(|&(coupon, count)| (0..count).map(move |i| pool_code(coupon, i)))
        .collect();
    Ok((seeded, started.elapsed()))
}

async fn seed_pool(db: &Db, coupon: &'static str, count: usize) -> Result<(), BenchError> {
    let now = chrono::Utc::now().naive_utc();
    let mut conn = db.get().await?;
    conn.write_transaction(async |conn| {
        for start in (0..count).step_by(SEED_CHUNK) {
            let rows: Vec<SeedCode> = (start..count.min(start + SEED_CHUNK))
                .map(|i| SeedCode {
                    coupon_id: coupon.to_owned(),
                    code: pool_code(coupon, i),
                    imported_at: Some(now),
                })
                .collect();
            conn.insert_all::<_, SeedCode>(coupon_codes::table, &rows)
                .await?;
        }
        if !conn.add_stock(coupon, count as i64).await? {
            return Err(BenchError::Setup(format!(
                "seeding pool {coupon}: the catalog has no such coupon"
            )));
        }
        Ok(())
    })
    .await
    .map_err(|e| match e {
        BenchError::Setup(_) => e,
        other => BenchError::Setup(format!("seeding pool {coupon}: {other}")),
    })
}

/// The codes of a drain, checked: for a codes run, every grant delivered with a code
/// (and an `expires_at`, as `valid_for` is set), no code twice, a pool's codes only
/// from its pool, and every pool coupon's remaining stock equal to its unissued codes
/// and its grants to its issued codes; for a run without codes, no code at all.
pub fn check(scenario: &str, codes: Codes, d: &Drained) -> Result<(), BenchError> {
    let fail = |message: String| {
        Err(BenchError::Check {
            scenario: scenario.into(),
            message,
        })
    };
    let CodeTally {
        granted,
        with_code,
        with_expiry,
        repeated,
        unknown,
    } = d.codes;
    if codes == Codes::None {
        if with_code > 0 {
            return fail(format!(
                "{with_code} grants of a run without codes had a code"
            ));
        }
        return Ok(());
    }
    if granted < d.granted() as u64 || with_code != granted || with_expiry != granted {
        return fail(format!(
            "{} grants; the receiver had {granted} coupon.granted bodies, {with_code} with a \
             code, {with_expiry} with expires_at",
            d.granted()
        ));
    }
    if repeated > 0 || unknown > 0 {
        return fail(format!(
            "{repeated} codes were issued twice, {unknown} were not seeded"
        ));
    }
    if codes == Codes::Pool {
        check_pools(d).map_err(|message| BenchError::Check {
            scenario: scenario.into(),
            message,
        })?;
    }
    let issued: i64 = d.code_counts.iter().map(|(_, c)| c.issued).sum();
    if issued != d.granted() {
        return fail(format!(
            "{} grants and {issued} codes issued in coupon_codes",
            d.granted()
        ));
    }
    println!(
        "  checked codes: {with_code} grants delivered with a code and an expiry, 0 repeated{}",
        if codes == Codes::Pool {
            ", every one seeded; each pool's remaining = its unissued codes"
        } else {
            ""
        }
    );
    Ok(())
}

/// Each pool coupon: remaining = unissued codes, grants = issued codes.
fn check_pools(d: &Drained) -> Result<(), String> {
    let counts: BTreeMap<&str, _> = d
        .code_counts
        .iter()
        .map(|(id, c)| (id.as_str(), *c))
        .collect();
    for coupon in &d.stock {
        let c = counts.get(coupon.id.as_str()).copied().unwrap_or_default();
        let grants = d.coupon_grants(&coupon.id);
        if c.available != coupon.remaining || c.issued != grants {
            return Err(format!(
                "pool {}: remaining {} with {} unissued codes; {grants} grants with {} issued",
                coupon.id, coupon.remaining, c.available, c.issued
            ));
        }
    }
    Ok(())
}
