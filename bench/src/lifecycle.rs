//! Scenario `lifecycle`: the grant path and the partner-update path in one run. `n`
//! queued triggers drained by one daemon (requests/s), then one `redeem` per grant
//! queued in `grant_updates` and drained by one daemon (updates/s); the per-row ratio
//! is the "at least as fast per row as trigger requests".

use std::time::{Duration, Instant};

use super::drain::{prepare, supervise};
use super::report::Goal;
use super::workload::{self, Catalog, Codes};
use super::{Bench, BenchError};
use couponsd::store::StoreError;

/// Runs the scenario on `n` triggers.
pub async fn run(bench: &mut Bench, n: usize) -> Result<(), BenchError> {
    println!(
        "\n[lifecycle] {n} triggers drained, then one redeem per grant drained, one daemon each"
    );
    let dir = bench.dir.join("lifecycle");
    let catalog = Catalog::Steady {
        requests: n,
        codes: Codes::None,
    };
    let scratch = bench.target.create("lifecycle").await?;
    let (path, db) = prepare(bench, &scratch, &dir, catalog, bench.knobs).await?;
    workload::bulk_load(&db, workload::steady_triggers("l", n)).await?;
    let limit = Duration::from_secs(60) + Duration::from_millis(5 * n as u64);
    let started = Instant::now();
    supervise(&bench.daemon, &dir, &path, 1, limit).await?;
    let grants_wall = started.elapsed();
    let queue = match db.is_mysql() {
        true => "INSERT INTO grant_updates (update_key, grant_id, action) SELECT CONCAT('r-', id), id, 'redeem' FROM grants",
        false => "INSERT INTO grant_updates (update_key, grant_id, action) SELECT 'r-' || id, id, 'redeem' FROM grants",
    };
    let mut conn = db.get().await?;
    let updates = conn
        .execute(diesel::sql_query(queue))
        .await
        .map_err(StoreError::from)?;
    drop(conn);
    let started = Instant::now();
    supervise(&bench.daemon, &dir, &path, 2, limit).await?;
    let updates_wall = started.elapsed();
    let mut conn = db.get().await?;
    let left = conn.update_queue_depth().await.map_err(StoreError::from)?;
    drop(conn);
    scratch.drop_now().await?;
    if left != 0 {
        return Err(BenchError::Setup(format!(
            "lifecycle: {left} updates left queued"
        )));
    }
    let requests_rate = n as f64 / grants_wall.as_secs_f64();
    let updates_rate = updates as f64 / updates_wall.as_secs_f64();
    bench
        .figures
        .note("lifecycle", "requests/s (grant path)", requests_rate, "/s");
    bench
        .figures
        .note("lifecycle", "updates/s (redeem)", updates_rate, "/s");
    bench.figures.target(
        "lifecycle",
        "per row: updates/s / requests/s",
        updates_rate / requests_rate,
        "x",
        Goal::AtLeast(1.0),
    );
    Ok(())
}
