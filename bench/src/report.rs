//! Figures, targets and the summary table the bench prints at the end.

use std::fmt::Write as _;
use std::time::Duration;

/// What a figure must be to meet its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// At least this much.
    AtLeast(f64),
    /// Less than this.
    Below(f64),
    /// Exactly this.
    Exactly(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(t) => value >= t,
            Goal::Below(t) => value < t,
            Goal::Exactly(t) => value == t,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtLeast(t) => format!(">= {}", number(t)),
            Goal::Below(t) => format!("< {}", number(t)),
            Goal::Exactly(t) => format!("= {}", number(t)),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The scenario that measured it.
    pub scenario: String,
    /// What it is.
    pub name: String,
    /// Its value, in `unit`.
    pub value: f64,
    /// The unit.
    pub unit: &'static str,
    /// The target, if it has one.
    pub goal: Option<Goal>,
}

/// The figures of a run, printed as they come and summed up at the end.
#[derive(Default)]
pub struct Figures(pub Vec<Figure>);

impl Figures {
    /// Records and prints a figure without a target.
    pub fn note(&mut self, scenario: &str, name: &str, value: f64, unit: &'static str) {
        self.push(scenario, name, value, unit, None);
    }

    /// Records and prints a figure with a target.
    pub fn target(
        &mut self,
        scenario: &str,
        name: &str,
        value: f64,
        unit: &'static str,
        goal: Goal,
    ) {
        self.push(scenario, name, value, unit, Some(goal));
    }

    fn push(
        &mut self,
        scenario: &str,
        name: &str,
        value: f64,
        unit: &'static str,
        goal: Option<Goal>,
    ) {
        let figure = Figure {
            scenario: scenario.to_owned(),
            name: name.to_owned(),
            value,
            unit,
            goal,
        };
        println!("  {}", line(&figure));
        self.0.push(figure);
    }

    /// The summary: every figure that has a target, and whether it was met; then the
    /// ratios of this run (unit `x`: steady against baseline and against the floor).
    pub fn summary(&self) -> String {
        let mut out = String::from("\nsummary (targets)\n");
        let with_goal: Vec<&Figure> = self.0.iter().filter(|f| f.goal.is_some()).collect();
        if with_goal.is_empty() {
            out.push_str("  (no figure with a target was measured)\n");
        }
        for f in with_goal {
            let goal = f.goal.expect("filtered on goal");
            let verdict = if goal.met(f.value) { "met" } else { "MISSED" };
            let _ = writeln!(
                out,
                "  {:<15} {:<56} {:>12} {:<12} target {:<10} {verdict}",
                f.scenario,
                f.name,
                number(f.value),
                f.unit,
                goal.describe(),
            );
        }
        let ratios: Vec<&Figure> = self.0.iter().filter(|f| f.unit == "x").collect();
        if !ratios.is_empty() {
            out.push_str("\nratios (this run)\n");
        }
        for f in ratios {
            let _ = writeln!(
                out,
                "  {:<15} {:<56} {:>12} x",
                f.scenario,
                f.name,
                number(f.value)
            );
        }
        out
    }

    /// True when every figure with a target met it.
    pub fn all_met(&self) -> bool {
        self.0
            .iter()
            .all(|f| f.goal.is_none_or(|goal| goal.met(f.value)))
    }
}

fn line(f: &Figure) -> String {
    let mut text = format!("{:<58} {:>12} {}", f.name, number(f.value), f.unit);
    if let Some(goal) = f.goal {
        let verdict = if goal.met(f.value) { "met" } else { "MISSED" };
        let _ = write!(text, "  (target {} {verdict})", goal.describe());
    }
    text
}

/// A number with as many decimals as it deserves.
pub fn number(value: f64) -> String {
    let a = value.abs();
    if (a == a.trunc() && a < 1e15) || a >= 100.0 {
        format!("{value:.0}")
    } else if a >= 10.0 {
        format!("{value:.1}")
    } else if a >= 0.1 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Mebibytes, as a float.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&values, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn goals_say_whether_they_are_met() {
        assert!(Goal::AtLeast(10.0).met(10.0));
        assert!(!Goal::Below(250.0).met(250.0));
        assert!(Goal::Exactly(0.0).met(0.0));
    }
}
