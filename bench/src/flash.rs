//! Scenario 2, the flash sale: new users all after one campaign whose first coupon
//! (HOT50) has a fifth of them in stock, several daemons draining at once. Proves that
//! exactly the stock was granted and everyone else fell back to the next coupon, with
//! no request failed, then reports how fast.

use super::drain;
use super::report::Goal;
use super::workload::{self, Catalog};
use super::{Bench, BenchError};

pub async fn run(bench: &mut Bench, n: usize, daemons: usize) -> Result<(), BenchError> {
    let knobs = bench.knobs;
    let hot = n / 5;
    println!("\n[flash] {n} triggers for one campaign, hot coupon HOT50 with {hot} in stock, {daemons} daemons at once");
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Flash { hot, requests: n };
    let drained = drain::drain(
        bench,
        "flash",
        catalog,
        knobs,
        workload::flash_triggers("f", n),
        daemons,
    )
    .await?;
    drain::check_common("flash", &drained)?;
    let hot_granted = drained.coupon_grants("HOT50");
    let hot_row = drained.stock.iter().find(|c| c.id == "HOT50");
    let oversold = hot_granted > hot as i64
        || hot_row
            .is_none_or(|c| c.granted != hot_granted || c.remaining < 0 || c.granted > c.stock);
    if oversold {
        return Err(BenchError::Check {
            scenario: "flash".into(),
            message: format!(
                "HOT50 has {hot} in stock and {hot_granted} grants; stock row {hot_row:?}"
            ),
        });
    }
    let figures = &mut bench.figures;
    let wall = drained.wall.as_secs_f64();
    figures.target(
        "flash",
        "grants/s (end to end, all daemons)",
        drained.granted() as f64 / wall,
        "grants/s",
        Goal::AtLeast(5_000.0),
    );
    figures.target(
        "flash",
        "HOT50 granted",
        hot_granted as f64,
        "grants",
        Goal::Exactly(hot as f64),
    );
    figures.note(
        "flash",
        "HOT50 remaining",
        hot_row.map_or(0, |c| c.remaining) as f64,
        "coupons",
    );
    figures.target(
        "flash",
        "fell back to SORRY5",
        drained.coupon_grants("SORRY5") as f64,
        "grants",
        Goal::Exactly((n - hot) as f64),
    );
    figures.target(
        "flash",
        "requests failed",
        drained.count("failed", None) as f64,
        "requests",
        Goal::Exactly(0.0),
    );
    figures.note("flash", "wall time", wall, "s");
    for (i, exit) in drained.exits.iter().enumerate() {
        let name = format!("daemon {} CPU", i + 1);
        figures.note("flash", &name, exit.cpu().as_secs_f64(), "s");
        let name = format!("daemon {} wall time", i + 1);
        figures.note("flash", &name, exit.wall.as_secs_f64(), "s");
    }
    bench.figures.note(
        "flash",
        "daemon start-ups failed (catalog deadlock) and retried",
        drained.restarts as f64,
        "start-ups",
    );
    drain::report_resources(bench, "flash", &drained);
    drain::memory(bench, "flash", &drained);
    Ok(())
}
