//! The drain scenarios of one daemon: `steady` (a mixed catalog, the batched design as
//! configured) and `baseline` (the same with `worker.batch_size: 1`, one transaction
//! per request: the naive design the batching is measured against).

use super::drain::{self, Drained};
use super::report::Goal;
use super::rounds::Run;
use super::workload::{self, Catalog, Codes, Knobs};
use super::{codes, Bench, BenchError};

/// Scenario 1: `n` queued triggers, one daemon; its coupons' codes from `codes`
/// (`label` names the run: `steady`, or `steady/pool` and the like in rounds).
pub async fn steady(
    bench: &mut Bench,
    n: usize,
    codes: Codes,
    label: &str,
) -> Result<Run, BenchError> {
    let knobs = bench.knobs;
    println!("\n[{label}] {n} queued triggers (half new, half returning users; 3 campaigns, 10 coupons), one daemon, codes: {}", codes.as_str());
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Steady { requests: n, codes };
    let drained = drain::drain(
        bench,
        &label.replace('/', "_"),
        catalog,
        knobs,
        workload::steady_triggers("s", n),
        1,
    )
    .await?;
    drain::check_common(label, &drained)?;
    codes::check(label, codes, &drained)?;
    let rate = report_drain(bench, label, &drained, Some(10_000.0));
    if codes == Codes::None {
        bench.steady_rate = Some(rate);
    }
    drain::memory(bench, label, &drained);
    Ok(Run::of(&drained, rate))
}

/// Scenario 6: `steady` with `worker.batch_size: 1`, one transaction per request.
pub async fn baseline(bench: &mut Bench, n: usize) -> Result<(), BenchError> {
    let knobs = Knobs {
        batch_size: 1,
        ..bench.knobs
    };
    println!("\n[baseline] naive design: {n} queued triggers, worker.batch_size 1 (one transaction per request), one daemon");
    println!("  knobs: {}", knobs.describe());
    let catalog = Catalog::Steady {
        requests: n,
        codes: Codes::None,
    };
    let drained = drain::drain(
        bench,
        "baseline",
        catalog,
        knobs,
        workload::steady_triggers("b", n),
        1,
    )
    .await?;
    drain::check_common("baseline", &drained)?;
    let rate = report_drain(bench, "baseline", &drained, None);
    match bench.steady_rate {
        Some(steady) => bench.figures.target(
            "baseline",
            "gain: steady requests/s / baseline requests/s",
            steady / rate,
            "x",
            Goal::AtLeast(8.0),
        ),
        None => println!("  (run `steady` in the same invocation for the ratio)"),
    }
    Ok(())
}

/// Scenario 2: a flash sale. `n` new users, one campaign whose first coupon has `n / 5`
/// in stock, `daemons` daemons at once.
fn report_drain(bench: &mut Bench, scenario: &str, d: &Drained, target: Option<f64>) -> f64 {
    let wall = d.wall.as_secs_f64();
    let rate = d.requests as f64 / wall;
    let figures = &mut bench.figures;
    match target {
        Some(t) => figures.target(
            scenario,
            "requests/s (end to end: spawn to exit)",
            rate,
            "requests/s",
            Goal::AtLeast(t),
        ),
        None => figures.note(
            scenario,
            "requests/s (end to end: spawn to exit)",
            rate,
            "requests/s",
        ),
    }
    figures.note(
        scenario,
        "grants/s (end to end)",
        d.granted() as f64 / wall,
        "grants/s",
    );
    figures.note(
        scenario,
        "deliveries/s (end to end)",
        d.verified as f64 / wall,
        "deliveries/s",
    );
    if let Some(span) = d.grant_span {
        figures.note(
            scenario,
            "requests/s (first claim to last decision)",
            d.requests as f64 / span.as_secs_f64(),
            "requests/s",
        );
    }
    if let Some(span) = d.receive_span {
        figures.note(
            scenario,
            "deliveries/s (first to last received)",
            d.verified as f64 / span.as_secs_f64(),
            "deliveries/s",
        );
    }
    figures.note(scenario, "wall time", wall, "s");
    figures.note(
        scenario,
        "load rate (bulk INSERT, not timed above)",
        d.requests as f64 / d.load.as_secs_f64(),
        "rows/s",
    );
    drain::report_resources(bench, scenario, d);
    rate
}
