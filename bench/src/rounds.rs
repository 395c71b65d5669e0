//! `steady` and `flash` with each `--codes` source, in `--rounds` interleaved rounds:
//! every round runs each (scenario, codes) pair once, the order rotated by one place
//! per round, so that a busy neighbour or a warm cache weighs on every pair alike and
//! the ratios of one round (pool / none, generate / none) cancel the machine's noise.
//! At the end, the table of every round and the ratios' mean and median against the
//! issue's targets (pool at least 0.8 of none, generate at least 0.9).

use std::fmt::Write as _;

use super::drain::Drained;
use super::report::{number, Goal};
use super::workload::Codes;
use super::{flash, throughput, Bench, BenchError};

/// What one drain of a round measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Requests/s (steady) or grants/s (flash), end to end.
    pub rate: f64,
    /// The daemons' CPU seconds per 1,000 requests.
    pub daemon_cpu: f64,
    /// mariadbd's CPU seconds per 1,000 requests, when known.
    pub db_cpu: Option<f64>,
    /// All CPU over wall x cores, percent.
    pub busy: f64,
    /// Requests failed (the drain's check refuses any; kept for the table).
    pub failed: i64,
    /// Deliveries received twice plus codes issued twice.
    pub duplicates: u64,
}

impl Run {
    /// The figures of a checked drain whose rate was `rate`.
    pub fn of(d: &Drained, rate: f64) -> Run {
        Run {
            rate,
            daemon_cpu: d.per_k(d.daemon_cpu()),
            db_cpu: d.db_cpu.map(|cpu| d.per_k(cpu)),
            busy: d.busy_percent(),
            failed: d.count("failed", None),
            duplicates: d.duplicates + d.codes.repeated,
        }
    }
}

/// A scenario that runs in rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drain {
    /// `steady`: one daemon, requests/s.
    Steady,
    /// `flash`: several daemons, grants/s.
    Flash,
}

impl Drain {
    fn name(self) -> &'static str {
        match self {
            Drain::Steady => "steady",
            Drain::Flash => "flash",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Drain::Steady => "requests/s",
            Drain::Flash => "grants/s",
        }
    }
}

/// What to run: the scenarios, the code sources, how many rounds.
pub struct Plan {
    /// `steady`, `flash` or both.
    pub drains: Vec<Drain>,
    /// The `--codes` sources, each run for every scenario.
    pub codes: Vec<Codes>,
    /// Rounds.
    pub rounds: usize,
    /// Requests per drain.
    pub requests: usize,
    /// Daemons of `flash`.
    pub daemons: usize,
}

/// One drain of a round.
struct Done {
    round: usize,
    drain: Drain,
    codes: Codes,
    run: Run,
}

/// Runs the plan's rounds, then reports the ratios when there is more than one source.
pub async fn run(bench: &mut Bench, plan: &Plan) -> Result<(), BenchError> {
    let pairs: Vec<(Drain, Codes)> = plan
        .drains
        .iter()
        .flat_map(|&d| plan.codes.iter().map(move |&c| (d, c)))
        .collect();
    if pairs.is_empty() {
        return Ok(());
    }
    let mut done = Vec::new();
    for round in 1..=plan.rounds {
        let mut order = pairs.clone();
        order.rotate_left((round - 1) % pairs.len());
        if plan.rounds > 1 {
            let names: Vec<String> = order.iter().map(|&(d, c)| label(d, c)).collect();
            println!(
                "\n===== round {round} of {}: {}",
                plan.rounds,
                names.join(", ")
            );
        }
        for (drain, codes) in order {
            let label = label(drain, codes);
            let run = match drain {
                Drain::Steady => throughput::steady(bench, plan.requests, codes, &label).await?,
                Drain::Flash => {
                    flash::run(bench, plan.requests, plan.daemons, codes, &label).await?
                }
            };
            done.push(Done {
                round,
                drain,
                codes,
                run,
            });
        }
    }
    if plan.codes.len() > 1 && plan.codes.contains(&Codes::None) {
        report(bench, plan, &pairs, &done);
    }
    Ok(())
}

/// `steady`, `steady/pool`, `flash/generate`.
fn label(drain: Drain, codes: Codes) -> String {
    match codes {
        Codes::None => drain.name().to_owned(),
        _ => format!("{}/{}", drain.name(), codes.as_str()),
    }
}

/// The rounds' table, then per scenario and source the mean and median of the
/// per-round ratios against `none`, as figures with the targets.
fn report(bench: &mut Bench, plan: &Plan, pairs: &[(Drain, Codes)], done: &[Done]) {
    let find = |round: usize, drain: Drain, codes: Codes| {
        done.iter()
            .find(|d| d.round == round && d.drain == drain && d.codes == codes)
            .map(|d| d.run)
    };
    println!("\n{}", table(plan, pairs, &find));
    for &drain in &plan.drains {
        for &codes in plan.codes.iter().filter(|&&c| c != Codes::None) {
            let ratio = |f: fn(&Run) -> f64| -> Vec<f64> {
                (1..=plan.rounds)
                    .filter_map(|r| {
                        Some(f(&find(r, drain, codes)?) / f(&find(r, drain, Codes::None)?))
                    })
                    .collect()
            };
            let rates = ratio(|r| r.rate);
            let cpu = ratio(|r| r.daemon_cpu);
            let goal = match codes {
                Codes::Pool => 0.8,
                _ => 0.9,
            };
            let scenario = drain.name();
            let what = format!("{} / none {}", codes.as_str(), drain.unit());
            let n = rates.len();
            let figures = &mut bench.figures;
            figures.target(
                scenario,
                &format!("{what}, mean of {n} rounds"),
                mean(&rates),
                "x",
                Goal::AtLeast(goal),
            );
            figures.target(
                scenario,
                &format!("{what}, median of {n} rounds"),
                median(&rates),
                "x",
                Goal::AtLeast(goal),
            );
            figures.note(
                scenario,
                &format!(
                    "{} / none daemon CPU per request, mean of {n} rounds",
                    codes.as_str()
                ),
                mean(&cpu),
                "x",
            );
        }
    }
}

/// Markdown: a row per round (each pair's rate, the ratios against none, daemon CPU s
/// per 1,000 requests, machine busy %), then the means and medians.
fn table(
    plan: &Plan,
    pairs: &[(Drain, Codes)],
    find: &dyn Fn(usize, Drain, Codes) -> Option<Run>,
) -> String {
    let mut head = String::from("| round | first |");
    for &(drain, codes) in pairs {
        let _ = write!(head, " {} |", label(drain, codes));
        if codes != Codes::None && plan.codes.contains(&Codes::None) {
            let _ = write!(head, " {} / none |", codes.as_str());
        }
    }
    head.push_str(" daemon CPU s / 1,000 | busy % | failed · duplicates |");
    let mut out = head.clone();
    out.push('\n');
    let columns = head.matches('|').count() - 1;
    out.push_str(&"|---".repeat(columns));
    out.push_str("|\n");
    let cell = |run: Option<Run>, f: fn(&Run) -> f64| run.map_or("?".to_owned(), |r| number(f(&r)));
    for round in 1..=plan.rounds {
        let first = pairs[(round - 1) % pairs.len()];
        let _ = write!(out, "| {round} | {} |", label(first.0, first.1));
        let (mut cpu, mut busy, mut bad) = (Vec::new(), Vec::new(), (0, 0));
        for &(drain, codes) in pairs {
            let run = find(round, drain, codes);
            let _ = write!(out, " {} |", cell(run, |r| r.rate));
            if codes != Codes::None && plan.codes.contains(&Codes::None) {
                let none = find(round, drain, Codes::None);
                let ratio = run.zip(none).map(|(r, n)| r.rate / n.rate);
                let _ = write!(
                    out,
                    " {} |",
                    ratio.map_or("?".to_owned(), |v| format!("{v:.3}"))
                );
            }
            cpu.push(cell(run, |r| r.daemon_cpu));
            busy.push(cell(run, |r| r.busy));
            if let Some(r) = run {
                bad = (bad.0 + r.failed, bad.1 + r.duplicates);
            }
        }
        let _ = writeln!(
            out,
            " {} | {} | {} · {} |",
            cpu.join(" · "),
            busy.join(" · "),
            bad.0,
            bad.1
        );
    }
    let _ = writeln!(out, "\nmean / median over {} rounds:", plan.rounds);
    for &(drain, codes) in pairs {
        let runs: Vec<Run> = (1..=plan.rounds)
            .filter_map(|r| find(r, drain, codes))
            .collect();
        let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        let cpu: Vec<f64> = runs.iter().map(|r| r.daemon_cpu).collect();
        let db: Vec<f64> = runs.iter().filter_map(|r| r.db_cpu).collect();
        let _ = writeln!(
            out,
            "  {:<16} {:>8} / {:>8} {:<11} daemon CPU s per 1,000 {} / {}, mariadbd {}",
            label(drain, codes),
            number(mean(&rates)),
            number(median(&rates)),
            drain.unit(),
            number(mean(&cpu)),
            number(median(&cpu)),
            if db.is_empty() {
                "?".to_owned()
            } else {
                number(mean(&db))
            },
        );
    }
    out
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
    }

    #[test]
    fn labels_name_the_source_unless_there_is_none() {
        assert_eq!(label(Drain::Steady, Codes::None), "steady");
        assert_eq!(label(Drain::Flash, Codes::Pool), "flash/pool");
    }
}
