//! `couponsd rules test`: the rule tests in `rules/tests/*.yaml`. Each case is a
//! request, the user's history and optionally the campaign's coupons with their stock;
//! it is decided by [`crate::pipeline::decide::decide_one`], the batch's own decision, with the config's
//! campaigns, and the user type, campaign, coupon and outcome are compared with what
//! the case expects. `check` and hot reload run the same tests.

mod case;
mod history;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::check::RulesDirArgs;
use super::{problem, AuthoringError, SetClock};
use crate::config::{CampaignConfig, Config, RuleLimits};
use crate::domain::RulesVersion;
use crate::rules::{RuleError, Rules};
use case::{run_case, Case};

/// The folder, under the rules folder, that holds the rule tests.
pub const TESTS_DIR: &str = "tests";

/// One fixture file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    /// What `now()` returns in every case that does not set its own [the real time].
    now: Option<DateTime<Utc>>,
    cases: Vec<Case>,
}

/// A fixture file, parsed, with the line of each case's `name:`.
#[derive(Debug, Clone)]
pub struct Fixture {
    file: PathBuf,
    fixture: FixtureFile,
    lines: Vec<(usize, usize)>,
}

/// The rule tests passed.
#[derive(Debug, Clone)]
pub struct Passed {
    /// The version of the rules tested.
    pub version: RulesVersion,
    /// One line per case: `ok  FILE: NAME`.
    pub cases: Vec<String>,
    /// Fixture files run.
    pub files: usize,
}

/// Reads every `*.yaml`/`*.yml` under `dir/tests`, by file name; a missing folder means
/// no tests. Files that do not parse are returned as problems, with their line.
pub fn load(dir: &Path) -> (Vec<Fixture>, Vec<RuleError>) {
    let folder = dir.join(TESTS_DIR);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return (Vec::new(), Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let (mut fixtures, mut problems) = (Vec::new(), Vec::new());
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(problem(&file, 0, 0, format!("cannot read: {e}")));
                continue;
            }
        };
        match serde_yaml::from_str::<FixtureFile>(&text) {
            Ok(fixture) => {
                let lines = fixture.cases.iter().map(|c| name_line(&text, &c.name));
                fixtures.push(Fixture {
                    lines: lines.collect(),
                    file,
                    fixture,
                });
            }
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                // serde_yaml ends its message with the position, which the problem says.
                let message = e.to_string();
                let suffix = format!(" at line {line} column {column}");
                let message = message.strip_suffix(&suffix).unwrap_or(&message);
                problems.push(problem(&file, line, column, message));
            }
        }
    }
    (fixtures, problems)
}

/// Where the case named `name` starts: the line and column of its `name:` key. serde
/// keeps no positions, so the text is searched; (0, 0) when it cannot be found.
fn name_line(text: &str, name: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(value) = trimmed.strip_prefix("name:") else {
            continue;
        };
        let value = value.trim();
        let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
        if unquoted == name {
            return (i + 1, line.len() - trimmed.len() + 1);
        }
    }
    (0, 0)
}

/// Compiles the rules in `dir` with a test clock and runs every rule test with
/// `campaigns`. Every problem is returned: compile errors, fixture files that do not
/// parse, and failed cases.
pub fn test_dir(
    dir: &Path,
    limits: &RuleLimits,
    campaigns: &[CampaignConfig],
) -> Result<Passed, Vec<RuleError>> {
    let clock = SetClock::new(Utc::now());
    let compiled = Rules::load_with_clock(dir, limits, clock.clock());
    let (fixtures, mut problems) = load(dir);
    let rules = match compiled {
        Ok(rules) => rules,
        Err(mut errors) => {
            errors.append(&mut problems);
            return Err(errors);
        }
    };
    let mut cases = Vec::new();
    for fixture in &fixtures {
        for (case, place) in fixture.fixture.cases.iter().zip(&fixture.lines) {
            let now = case.now.or(fixture.fixture.now).unwrap_or_else(Utc::now);
            clock.set(now);
            match run_case(&rules, campaigns, case, now) {
                Ok(()) => cases.push(format!("ok  {}: {}", fixture.file.display(), case.name)),
                Err(why) => problems.push(problem(
                    &fixture.file,
                    place.0,
                    place.1,
                    format!("case {:?}: {why}", case.name),
                )),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Passed {
        version: rules.version().clone(),
        cases,
        files: fixtures.len(),
    })
}

/// `couponsd rules test`: exit 0 with one line per case, or exit 2 listing every failure
/// as `file:line:column: case "NAME": expected …, got …`. Tests `rules.dir`, or the
/// folder in `args.rules`.
pub fn run(config: &Config, args: &RulesDirArgs) -> Result<String, AuthoringError> {
    let dir = args.rules.as_ref().unwrap_or(&config.rules.dir);
    let passed =
        test_dir(dir, &config.rules.limits, &config.campaigns).map_err(AuthoringError::Rules)?;
    let mut out = passed.cases.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!(
        "{} rule test(s) in {} file(s) under {} passed (rules version {})\n",
        passed.cases.len(),
        passed.files,
        dir.join(TESTS_DIR).display(),
        passed.version
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_found_by_its_name_line() {
        let text = "cases:\n  - name: first\n    request: {}\n  - name: \"second one\"\n";
        assert_eq!(name_line(text, "first"), (2, 5));
        assert_eq!(name_line(text, "second one"), (4, 5));
        assert_eq!(name_line(text, "third"), (0, 0));
    }
}
