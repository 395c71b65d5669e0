//! Scenario `lifecycle`: the grant path and the partner-update path in one run. `n`
//! queued triggers drained by one daemon (requests/s), then one `redeem` per grant
//! queued in `grant_updates`, each with its own `occurred_at`, and drained by one
//! daemon (updates/s); the per-row ratio
//! is the "at least as fast per row as trigger requests".

use std::time::{Duration, Instant};

use super::drain::{prepare, supervise};
use super::latency::server_load;
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
    let before_grants = server_load(bench).await?;
    let started = Instant::now();
    let (grants_exit, _) = supervise(&bench.daemon, &dir, &path, 1, limit).await?;
    let grants_wall = started.elapsed();
    let after_grants = server_load(bench).await?;
    // Each redeem says when it happened, a millisecond apart, as a partner's would.
    let queue = match db.is_mysql() {
        true => "INSERT INTO grant_updates (update_key, grant_id, action, occurred_at) \
                 SELECT CONCAT('r-', id), id, 'redeem', TIMESTAMPADD(MICROSECOND, 1000 * (id % 1000), granted_at) FROM grants",
        false => "INSERT INTO grant_updates (update_key, grant_id, action, occurred_at) \
                  SELECT 'r-' || id, id, 'redeem', strftime('%Y-%m-%d %H:%M:%f', granted_at, '+' || ((id % 1000) / 1000.0) || ' seconds') FROM grants",
    };
    let mut conn = db.get().await?;
    let updates = conn
        .execute(diesel::sql_query(queue))
        .await
        .map_err(StoreError::from)?;
    drop(conn);
    let before_updates = server_load(bench).await?;
    let started = Instant::now();
    let (updates_exit, _) = supervise(&bench.daemon, &dir, &path, 2, limit).await?;
    let updates_wall = started.elapsed();
    let after_updates = server_load(bench).await?;
    let mut conn = db.get().await?;
    let left = conn.update_queue_depth().await.map_err(StoreError::from)?;
    let by_status = conn.count_updates().await.map_err(StoreError::from)?;
    drop(conn);
    scratch.drop_now().await?;
    if left != 0 {
        return Err(BenchError::Setup(format!(
            "lifecycle: {left} updates left queued"
        )));
    }
    if by_status.iter().any(|(status, _)| status != "done") {
        return Err(BenchError::Check {
            scenario: "lifecycle".into(),
            message: format!("every redeem should be done: {by_status:?}"),
        });
    }
    let requests_rate = n as f64 / grants_wall.as_secs_f64();
    let updates_rate = updates as f64 / updates_wall.as_secs_f64();
    bench
        .figures
        .note("lifecycle", "requests/s (grant path)", requests_rate, "/s");
    bench
        .figures
        .note("lifecycle", "updates/s (redeem)", updates_rate, "/s");
    // Where each path spends: the daemon's CPU per row, and the server's.
    for (phase, exit, rows) in [
        ("grant path", &grants_exit, n),
        ("redeem", &updates_exit, updates),
    ] {
        let cpu = (exit.user + exit.system).as_secs_f64() * 1000.0 / rows.max(1) as f64;
        bench.figures.note(
            "lifecycle",
            &format!("CPU s per 1,000 rows (daemon, {phase})"),
            cpu,
            "s",
        );
    }
    for (phase, load, rows) in [
        ("grant path", (before_grants, after_grants), n),
        ("redeem", (before_updates, after_updates), updates),
    ] {
        let (Some(before), Some(after)) = load else {
            continue;
        };
        let per_k = |spent: f64| spent * 1000.0 / rows.max(1) as f64;
        let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
        let commits = (after.commits - before.commits) as f64;
        let figures = &mut bench.figures;
        let name = |what: &str| format!("{what} ({phase})");
        figures.note(
            "lifecycle",
            &name("CPU s per 1,000 rows (mariadbd)"),
            per_k(cpu),
            "s",
        );
        figures.note(
            "lifecycle",
            &name("COMMITs per 1,000 rows"),
            per_k(commits),
            "",
        );
        // A record that grows on a full page costs the server a page rewrite, which
        // shows here first (see the migration `record_rooms`).
        let redo = (after.redo - before.redo) as f64 / rows.max(1) as f64;
        figures.note("lifecycle", &name("redo bytes per row"), redo, "B");
    }
    bench.figures.target(
        "lifecycle",
        "per row: updates/s / requests/s",
        updates_rate / requests_rate,
        "x",
        Goal::AtLeast(1.0),
    );
    Ok(())
}
