//! The codes of a batch's grants. A pool coupon's codes are drawn with their rows
//! locked, skipping rows another batch holds, so concurrent batches draw different
//! codes without waiting for each other; its stock is taken at the end with the guarded
//! update of every coupon, so the coupon's `remaining` still equals its unissued codes
//! at every commit, and its hot row is held no longer than a counted coupon's. A draw
//! that comes back short (the codes left are held by batches in flight) is stale stock:
//! the batch is decided again with the chains locked, and then, should skipping come
//! back short again, it waits for the codes; short then means the pool has fewer codes
//! than its stock says. The drawn codes of all the batch's pool coupons are issued in
//! one statement. A generated code is written beside its grant; one that exists
//! already, under any coupon, fails the statement on the unique key, and its codes are
//! drawn again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::BatchError;
use crate::domain::codes::{CodePattern, CodeSource};
use crate::pipeline::decide::{Decision, Verdict};
use crate::pipeline::dispatch::events;
use crate::store::codes::{is_duplicate, IssuedCode};
use crate::store::grants::NewGrant;
use crate::store::prepared::pow2_chunks;
use crate::store::Conn;

/// Fresh draws of a batch's generated codes before giving up: with the pattern sizes
/// `check` allows (a million codes per unit of stock), one repeat is already rare.
const GENERATE_ATTEMPTS: u32 = 8;

/// Where this daemon's next draw of each pool coupon starts: past the last code id it
/// drew. A hint, not a record: starting at 0 is always right, only slower.
#[derive(Debug, Default)]
pub struct DrawCursors(Mutex<HashMap<String, i64>>);

impl DrawCursors {
    fn start(&self, coupon: &str) -> i64 {
        let cursors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cursors.get(coupon).copied().unwrap_or(0)
    }

    fn advance(&self, coupon: &str, to: i64) {
        let mut cursors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = cursors.entry(coupon.to_owned()).or_insert(0);
        *at = (*at).max(to);
    }

    fn rewind(&self, coupon: &str) {
        let mut cursors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cursors.remove(coupon);
    }
}

/// Gives each grant of a coupon with codes its code (`grants[i]` was earned by
/// `granted[i]`); `locked`: the batch was decided with its chains locked.
pub(super) async fn issue(
    conn: &mut Conn,
    grants: &mut [NewGrant],
    (granted, locked): (&[&Decision], bool),
    (cursors, now): (&DrawCursors, DateTime<Utc>),
) -> Result<(), BatchError> {
    let mut pools: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut generated: Vec<(usize, CodePattern)> = Vec::new();
    for (i, d) in granted.iter().enumerate() {
        let Verdict::Granted { coupon, .. } = &d.verdict else {
            continue;
        };
        match &coupon.codes {
            Some(CodeSource::Pool) => pools.entry(coupon.id.to_string()).or_default().push(i),
            Some(CodeSource::Generate(pattern)) => generated.push((i, pattern.clone())),
            None => {}
        }
    }
    let mut issued = Vec::new();
    for (coupon, members) in &pools {
        let draw = draw(conn, (coupon, cursors), (members, locked), grants, now).await?;
        issued.extend(draw);
    }
    conn.issue_pool_codes(&issued).await?;
    if !generated.is_empty() {
        generate(conn, &generated, grants, now).await?;
    }
    Ok(())
}

/// Draws `members.len()` codes of a pool coupon for those grants, to be issued with
/// the batch's other pool codes, starting past this daemon's last draw and again from
/// the pool's first code when that comes back short. Under the chains' locks too, the
/// draw first skips the codes other batches hold: those batches wait for this one's
/// coupon rows to take their stock, so waiting for their codes would deadlock. Only
/// when that comes back short (the pool's end is near) does it wait for them.
async fn draw(
    conn: &mut Conn,
    (coupon, cursors): (&str, &DrawCursors),
    (members, locked): (&[usize], bool),
    grants: &mut [NewGrant],
    now: DateTime<Utc>,
) -> Result<Vec<IssuedCode>, BatchError> {
    let wanted = members.len() as i64;
    let after = cursors.start(coupon);
    let mut drawn = conn.draw_codes(coupon, (after, wanted), true).await?;
    if after > 0 && (drawn.len() as i64) < wanted {
        cursors.rewind(coupon);
        drawn = conn.draw_codes(coupon, (0, wanted), true).await?;
    }
    if locked && (drawn.len() as i64) < wanted {
        drawn = conn.draw_codes(coupon, (0, wanted), false).await?;
    }
    if let Some(&(last, _)) = drawn.last() {
        cursors.advance(coupon, last);
    }
    if (drawn.len() as i64) < wanted {
        return Err(match locked {
            true => BatchError::PoolShort(coupon.to_owned()),
            false => BatchError::StaleStock,
        });
    }
    Ok(members
        .iter()
        .zip(drawn)
        .map(|(&i, (id, code))| {
            grants[i].code = Some(code.clone());
            IssuedCode {
                id: Some(id),
                coupon_id: coupon.to_owned(),
                code,
                grant_id: Some(grants[i].id),
                issued_at: Some(now.naive_utc()),
            }
        })
        .collect())
}

/// Writes a fresh code for each generated grant, one statement per power-of-two
/// chunk (as the store inserts them), drawing a chunk's codes again when one repeats a
/// code that exists: a failed statement writes none of its rows.
async fn generate(
    conn: &mut Conn,
    members: &[(usize, CodePattern)],
    grants: &mut [NewGrant],
    now: DateTime<Utc>,
) -> Result<(), BatchError> {
    for chunk in pow2_chunks(members) {
        let mut attempt = 1;
        loop {
            let rows: Vec<IssuedCode> = chunk
                .iter()
                .map(|(i, pattern)| IssuedCode {
                    id: None,
                    coupon_id: grants[*i].coupon_id.clone(),
                    code: pattern.generate(),
                    grant_id: Some(grants[*i].id),
                    issued_at: Some(now.naive_utc()),
                })
                .collect();
            match conn.insert_generated_codes(&rows).await {
                Ok(_) => {
                    for ((i, _), row) in chunk.iter().zip(rows) {
                        grants[*i].code = Some(row.code);
                    }
                    break;
                }
                Err(e) if is_duplicate(&e) && attempt < GENERATE_ATTEMPTS => {
                    tracing::debug!(attempt, "a generated code exists already: drawing again");
                    attempt += 1;
                }
                Err(e) => return Err(BatchError::Store(e.into())),
            }
        }
    }
    Ok(())
}

/// After [`BatchError::PoolShort`]: sets the pool coupon's stock to its unissued codes
/// (the codes are the truth of a pool) and raises `inventory.drift`, in one
/// transaction, so that the batch can be decided again against the true stock.
pub(super) async fn true_up(deps: &super::Deps, coupon: &str) -> Result<(), BatchError> {
    #[derive(serde::Serialize)]
    struct PoolDrift<'a> {
        coupon: &'a str,
        remaining: i64,
        unissued_codes: i64,
        corrected: bool,
    }
    let config = deps.catalog.current();
    let now = crate::store::now().and_utc();
    let mut conn = deps.db.get().await?;
    conn.write_transaction(async |conn| {
        let Some((remaining, unissued_codes)) = conn.true_up_pool(coupon).await? else {
            return Ok(());
        };
        tracing::error!(
            coupon,
            remaining,
            unissued_codes,
            "pool coupon had fewer unissued codes than its stock said: stock set to its codes"
        );
        let drift = PoolDrift {
            coupon,
            remaining,
            unissued_codes,
            corrected: true,
        };
        let alert = events::alert(&config, events::INVENTORY_DRIFT, drift, now);
        conn.record_deliveries(&alert.into_iter().collect::<Vec<_>>())
            .await?;
        Ok::<_, BatchError>(())
    })
    .await?;
    deps.outbox_ready.notify_one();
    Ok(())
}
