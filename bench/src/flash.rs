//! Scenario 2, the flash sale: new users all after one campaign whose first coupon
//! (HOT50) has a fifth of them in stock, several daemons draining at once. Proves that
//! exactly the stock was granted and everyone else fell back to the next coupon, with
//! no request failed, then reports how fast.

use super::drain;
use super::report::Goal;
use super::rounds::Run;
use super::workload::{self, Catalog, Codes};
use super::{codes, Bench, BenchError};

/// `n` new users, `daemons` daemons; the coupons' codes from `codes` (`label` names the
/// run: `flash`, or `flash/pool` and the like in rounds).
pub async fn run(
    bench: &mut Bench,
    n: usize,
    daemons: usize,
    codes: Codes,
    label: &str,
) -> Result<Run, BenchError> {
    let knobs = bench.knobs;
    let hot = n / 5;
    println!("\n[{label}] {n} triggers for one campaign, hot coupon HOT50 with {hot} in stock, {daemons} daemons at once, codes: {}", codes.as_str());
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Flash {
        hot,
        requests: n,
        codes,
    };
    let drained = drain::drain(
        bench,
        &label.replace('/', "_"),
        catalog,
        knobs,
        workload::flash_triggers("f", n),
        daemons,
    )
    .await?;
    drain::check_common(label, &drained)?;
    codes::check(label, codes, &drained)?;
    let hot_granted = drained.coupon_grants("HOT50");
    let hot_row = drained.stock.iter().find(|c| c.id == "HOT50");
    let oversold = hot_granted > hot as i64
        || hot_row
            .is_none_or(|c| c.granted != hot_granted || c.remaining < 0 || c.granted > c.stock);
    if oversold {
        return Err(BenchError::Check {
            scenario: label.into(),
            message: format!(
                "HOT50 has {hot} in stock and {hot_granted} grants; stock row {hot_row:?}"
            ),
        });
    }
    let figures = &mut bench.figures;
    let wall = drained.wall.as_secs_f64();
    figures.target(
        label,
        "grants/s (end to end, all daemons)",
        drained.granted() as f64 / wall,
        "grants/s",
        Goal::AtLeast(5_000.0),
    );
    figures.target(
        label,
        "HOT50 granted",
        hot_granted as f64,
        "grants",
        Goal::Exactly(hot as f64),
    );
    figures.note(
        label,
        "HOT50 remaining",
        hot_row.map_or(0, |c| c.remaining) as f64,
        "coupons",
    );
    figures.target(
        label,
        "fell back to SORRY5",
        drained.coupon_grants("SORRY5") as f64,
        "grants",
        Goal::Exactly((n - hot) as f64),
    );
    figures.target(
        label,
        "requests failed",
        drained.count("failed", None) as f64,
        "requests",
        Goal::Exactly(0.0),
    );
    figures.note(label, "wall time", wall, "s");
    for (i, exit) in drained.exits.iter().enumerate() {
        let name = format!("daemon {} CPU", i + 1);
        figures.note(label, &name, exit.cpu().as_secs_f64(), "s");
        let name = format!("daemon {} wall time", i + 1);
        figures.note(label, &name, exit.wall.as_secs_f64(), "s");
    }
    bench.figures.note(
        label,
        "daemon start-ups failed (catalog deadlock) and retried",
        drained.restarts as f64,
        "start-ups",
    );
    drain::report_resources(bench, label, &drained);
    drain::memory(bench, label, &drained);
    Ok(Run::of(&drained, drained.granted() as f64 / wall))
}
