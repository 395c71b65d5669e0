//! Reconciliation: checks that every coupon's stock, granted and remaining agree with
//! each other and with the grants ledger, and that its codes agree with both: a pool
//! coupon's `remaining` is its unissued codes, and a coupon with codes (a pool or
//! generated) has issued exactly one code per grant in the ledger. It also checks
//! every coupon's grants by state against their transitions ([`transitions`]): a grant
//! starts `granted` and each `grant_transitions` row moves it once, so the grants in a
//! state are those that entered it minus those that left it. Any drift is reported as
//! an `inventory.drift` alert.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tracing::{error, info};

use super::Deps;
use crate::config::Config;
use crate::domain::chain::CouponStock;
use crate::pipeline::dispatch::events;
use crate::store::codes::CodeCounts;
use crate::store::report::{MoveCount, StateCount};
use crate::store::StoreError;

/// A coupon whose counters disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The coupon.
    pub coupon: String,
    /// Everything made available.
    pub stock: i64,
    /// Its granted counter.
    pub granted: i64,
    /// Its remaining counter.
    pub remaining: i64,
    /// Grants in the ledger.
    pub ledger_granted: i64,
    /// A pool coupon's codes not yet issued, which `remaining` must equal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unissued_codes: Option<i64>,
    /// A coupon with codes: the codes issued, which must equal its grants that carry a
    /// code (fewer: a code lost; more: a code issued without its grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_codes: Option<i64>,
}

/// A coupon with codes in the catalog in force, and its codes in `coupon_codes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CouponCodes {
    /// `codes.pool`: its stock is its unissued codes.
    pub pool: bool,
    /// Its codes, available and issued (zero when it has none yet).
    pub counts: CodeCounts,
    /// Its grants in the ledger that carry a code: as many as its issued codes.
    pub granted_with_code: i64,
}

/// The coupons of `config` that have codes, with their counts from `counts` (the
/// store's `code_counts`) and their grants that carry a code from `coded` (a coupon
/// given codes after it had granted without them has earlier grants without one).
pub fn coupon_codes(
    config: &Config,
    counts: Vec<(String, CodeCounts)>,
    coded: Vec<(String, i64)>,
) -> HashMap<String, CouponCodes> {
    let mut counts: HashMap<String, CodeCounts> = counts.into_iter().collect();
    let coded: HashMap<String, i64> = coded.into_iter().collect();
    config
        .campaigns
        .iter()
        .flat_map(|k| &k.coupons)
        .filter(|c| c.codes.is_some())
        .map(|c| {
            let id = c.id.to_string();
            let counts = counts.remove(&id).unwrap_or_default();
            let pool = c.is_pool();
            let granted_with_code = coded.get(&id).copied().unwrap_or(0);
            (
                id,
                CouponCodes {
                    pool,
                    counts,
                    granted_with_code,
                },
            )
        })
        .collect()
}

/// Finds the coupons whose counters disagree: with each other, with the ledger
/// (`ledger`: grants by coupon), or with their codes (`codes`: the coupons with codes).
pub fn find_drift(
    coupons: &[CouponStock],
    ledger: &HashMap<String, i64>,
    codes: &HashMap<String, CouponCodes>,
) -> Vec<Drift> {
    coupons
        .iter()
        .filter_map(|c| {
            let ledger_granted = ledger.get(&c.id).copied().unwrap_or(0);
            let codes = codes.get(&c.id);
            let unissued_codes = codes.filter(|k| k.pool).map(|k| k.counts.available);
            let issued_codes = codes.map(|k| k.counts.issued);
            let granted_with_code = codes.map(|k| k.granted_with_code);
            let agrees = c.granted == ledger_granted
                && c.stock == c.granted + c.remaining
                && unissued_codes.is_none_or(|n| n == c.remaining)
                && issued_codes == granted_with_code;
            (!agrees).then(|| Drift {
                coupon: c.id.clone(),
                stock: c.stock,
                granted: c.granted,
                remaining: c.remaining,
                ledger_granted,
                unissued_codes,
                issued_codes,
            })
        })
        .collect()
}

/// Runs the reconciliation against the catalog in force and alerts on every drift
/// found.
pub async fn run(deps: &Deps) -> Result<Vec<Drift>, StoreError> {
    let now = crate::store::now().and_utc();
    let (coupons, per_coupon, counts) = {
        let conn = &mut deps.db.get().await?;
        let coupons = conn.coupon_stock().await?;
        let per_coupon = conn.grants_per_coupon().await?;
        let revoked = conn.revoked_grants_per_coupon().await?;
        let counts = (
            conn.code_counts().await?,
            conn.coded_grants_per_coupon().await?,
        );
        (coupons, (per_coupon, revoked), counts)
    };
    let (per_coupon, revoked) = per_coupon;
    let mut ledger: HashMap<String, i64> = HashMap::new();
    for (_, coupon, n) in per_coupon {
        *ledger.entry(coupon).or_default() += n;
    }
    // A revoked grant of a counted or generated coupon gave its unit back; a pool's
    // (or a coupon the config no longer names) stays taken (`pipeline::lifecycle::giveback`).
    let config = deps.catalog.current();
    for (coupon, n) in revoked {
        let gave_back = config
            .campaigns
            .iter()
            .flat_map(|k| &k.coupons)
            .any(|c| c.id.as_str() == coupon && !c.is_pool());
        if gave_back {
            *ledger.entry(coupon).or_default() -= n;
        }
    }
    let codes = coupon_codes(&deps.catalog.current(), counts.0, counts.1);
    let drift = find_drift(&coupons, &ledger, &codes);
    if drift.is_empty() {
        info!(
            coupons = coupons.len(),
            "reconciliation: stock agrees with the ledger and the codes"
        );
        return Ok(drift);
    }
    for d in &drift {
        error!(
            ?d,
            "reconciliation: stock disagrees with the ledger or the codes"
        );
    }
    alert_drift(deps, &drift, now).await?;
    Ok(drift)
}

/// Sends `inventory.drift` for each difference found, to the alerts channel.
async fn alert_drift<T: Serialize>(
    deps: &Deps,
    drift: &[T],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    let alerts: Vec<_> = drift
        .iter()
        .filter_map(|d| events::alert(&deps.config, events::INVENTORY_DRIFT, d, now))
        .collect();
    deps.db.get().await?.record_deliveries(&alerts).await?;
    deps.outbox_ready.notify_one();
    Ok(())
}

/// A coupon whose grants in one state are not what its transitions say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateDrift {
    /// The coupon.
    pub coupon: String,
    /// The state.
    pub state: String,
    /// Its grants in that state.
    pub grants: i64,
    /// What the transitions say: for `granted`, every grant of the coupon plus the
    /// transitions into `granted` minus those out of it; for any other state, the
    /// transitions into it minus those out of it.
    pub by_transitions: i64,
}

/// Finds the (coupon, state) pairs whose grants (`states`) disagree with their
/// transitions (`moves`), by coupon and state.
pub fn find_state_drift(states: &[StateCount], moves: &[MoveCount]) -> Vec<StateDrift> {
    const GRANTED: &str = "granted";
    // (coupon, state) -> (grants, by transitions)
    let mut figures: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    let mut totals: HashMap<&str, i64> = HashMap::new();
    for s in states {
        figures.entry((&s.coupon_id, &s.state)).or_default().0 += s.grants;
        *totals.entry(&s.coupon_id).or_default() += s.grants;
    }
    for (coupon, total) in totals {
        figures.entry((coupon, GRANTED)).or_default().1 += total;
    }
    for m in moves {
        figures.entry((&m.coupon_id, &m.to_state)).or_default().1 += m.transitions;
        figures.entry((&m.coupon_id, &m.from_state)).or_default().1 -= m.transitions;
    }
    figures
        .into_iter()
        .filter(|(_, (grants, by_transitions))| grants != by_transitions)
        .map(|((coupon, state), (grants, by_transitions))| StateDrift {
            coupon: coupon.to_owned(),
            state: state.to_owned(),
            grants,
            by_transitions,
        })
        .collect()
}

/// Checks every coupon's grants by state against their transitions and alerts
/// (`inventory.drift`) on every difference found.
pub async fn transitions(deps: &Deps) -> Result<Vec<StateDrift>, StoreError> {
    let now = crate::store::now().and_utc();
    let (states, moves) = {
        let conn = &mut deps.db.get().await?;
        (
            conn.grants_by_state(None).await?,
            conn.transitions_by_coupon().await?,
        )
    };
    let drift = find_state_drift(&states, &moves);
    if drift.is_empty() {
        info!("reconciliation: grant states agree with their transitions");
        return Ok(drift);
    }
    for d in &drift {
        error!(
            ?d,
            "reconciliation: grant states disagree with their transitions"
        );
    }
    alert_drift(deps, &drift, now).await?;
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(granted: i64, remaining: i64) -> CouponStock {
        CouponStock {
            id: "A".into(),
            campaign_id: "c".into(),
            position: 0,
            face_value_cents: 100,
            channel: "wallet".into(),
            stock: 10,
            granted,
            remaining,
            low_stock: 0,
            state: crate::domain::CouponState::Active,
        }
    }

    fn codes(pool: bool, available: i64, issued: i64) -> HashMap<String, CouponCodes> {
        let counts = CodeCounts { available, issued };
        let granted_with_code = 4;
        let codes = CouponCodes {
            pool,
            counts,
            granted_with_code,
        };
        HashMap::from([("A".to_owned(), codes)])
    }

    #[test]
    fn grants_made_before_the_coupon_had_codes_are_not_drift() {
        let ledger = HashMap::from([("A".to_owned(), 4)]);
        let mut codes = codes(false, 0, 2);
        codes.get_mut("A").unwrap().granted_with_code = 2;
        assert!(find_drift(&[coupon(4, 6)], &ledger, &codes).is_empty());
    }

    #[test]
    fn counters_that_disagree_with_the_ledger_are_drift() {
        let ledger = HashMap::from([("A".to_owned(), 4)]);
        let none = HashMap::new();
        assert!(find_drift(&[coupon(4, 6)], &ledger, &none).is_empty());
        assert_eq!(
            find_drift(&[coupon(5, 5)], &ledger, &none)[0].ledger_granted,
            4
        );
        assert_eq!(find_drift(&[coupon(4, 5)], &ledger, &none).len(), 1);
    }

    #[test]
    fn a_pool_whose_remaining_is_not_its_unissued_codes_is_drift() {
        let ledger = HashMap::from([("A".to_owned(), 4)]);
        assert!(find_drift(&[coupon(4, 6)], &ledger, &codes(true, 6, 4)).is_empty());
        let drift = find_drift(&[coupon(4, 6)], &ledger, &codes(true, 5, 4));
        assert_eq!(
            drift.iter().map(|d| d.unissued_codes).collect::<Vec<_>>(),
            [Some(5)]
        );
        let body = serde_json::to_value(&drift[0]).unwrap();
        assert_eq!(
            (body["unissued_codes"].as_i64(), body["remaining"].as_i64()),
            (Some(5), Some(6))
        );
        assert!(
            find_drift(&[coupon(4, 6)], &ledger, &codes(false, 5, 4)).is_empty(),
            "a generated coupon's stock is not its codes"
        );
    }

    #[test]
    fn a_grant_without_its_code_or_a_code_without_its_grant_is_drift() {
        let ledger = HashMap::from([("A".to_owned(), 4)]);
        for (pool, available) in [(true, 6), (false, 0)] {
            let missing = find_drift(&[coupon(4, 6)], &ledger, &codes(pool, available, 3));
            assert_eq!(missing.len(), 1, "pool: {pool}");
            assert_eq!(missing[0].issued_codes, Some(3));
            let extra = find_drift(&[coupon(4, 6)], &ledger, &codes(pool, available, 5));
            assert_eq!(extra.len(), 1, "pool: {pool}");
        }
        let plain = find_drift(
            &[coupon(5, 5)],
            &HashMap::from([("A".to_owned(), 4)]),
            &HashMap::new(),
        );
        let body = serde_json::to_value(&plain[0]).unwrap();
        assert!(
            body.get("unissued_codes").is_none() && body.get("issued_codes").is_none(),
            "a coupon without codes is reported as before: {body}"
        );
    }

    fn state(coupon: &str, state: &str, grants: i64) -> StateCount {
        StateCount {
            campaign_id: "c".into(),
            coupon_id: coupon.into(),
            state: state.into(),
            face_value_cents: 100,
            grants,
        }
    }

    fn moved(from_state: &str, to_state: &str, transitions: i64) -> MoveCount {
        MoveCount {
            coupon_id: "A".into(),
            from_state: from_state.into(),
            to_state: to_state.into(),
            transitions,
        }
    }

    #[test]
    fn grant_states_are_checked_against_their_transitions() {
        let states = [
            state("A", "granted", 5),
            state("A", "redeemed", 2),
            state("A", "revoked", 1),
            state("B", "granted", 3),
        ];
        let moves = [
            moved("granted", "redeemed", 3),
            moved("redeemed", "granted", 1),
            moved("redeemed", "revoked", 1),
            moved("granted", "expired", 1),
            moved("expired", "granted", 0),
        ];
        let drift = find_state_drift(&states, &moves);
        assert_eq!(
            drift
                .iter()
                .map(|d| (d.state.as_str(), d.grants, d.by_transitions))
                .collect::<Vec<_>>(),
            [("expired", 0, 1), ("redeemed", 2, 1)],
        );
        let agreeing = [
            moved("granted", "redeemed", 2),
            moved("granted", "revoked", 1),
        ];
        assert!(find_state_drift(&states, &agreeing).is_empty());
    }
}
