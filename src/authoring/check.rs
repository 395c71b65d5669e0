//! `couponsd check`: is this config and this rules folder fit to run? Loads the config
//! (already done by the caller: a bad config exits 2 naming the key path), compiles
//! both rules and runs the rule tests. No database is opened, so it is fast enough for a
//! pre-commit hook or a CI step.

use std::path::{Path, PathBuf};

use super::fixtures::{self, TESTS_DIR};
use super::AuthoringError;
use crate::config::Config;
use crate::rules::{SELECT_COUPON_FILE, USER_TYPE_FILE};

/// `couponsd check` and `couponsd rules test` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RulesDirArgs {
    /// Check this rules folder instead of `rules.dir` (a candidate, before it goes live).
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// Checks the rules of `config`, loaded from `config_path`, or those in `args.rules`.
/// Every problem is returned at once, each as `file:line:column: message` (exit 2):
/// compile errors in both rule files, rule test files that do not parse, and failed
/// rule tests.
pub fn run(
    config: &Config,
    config_path: &Path,
    args: &RulesDirArgs,
) -> Result<String, AuthoringError> {
    let dir = args.rules.as_ref().unwrap_or(&config.rules.dir);
    let passed = fixtures::test_dir(dir, &config.rules.limits, &config.campaigns)
        .map_err(AuthoringError::Rules)?;
    Ok(format!(
        "ok  config {}: {} campaign(s), {} channel(s)\n\
         ok  rules {}, {} compile (rules version {})\n\
         ok  {} rule test(s) in {} file(s) under {} pass\n",
        config_path.display(),
        config.campaigns.len(),
        config.channels.len(),
        dir.join(USER_TYPE_FILE).display(),
        dir.join(SELECT_COUPON_FILE).display(),
        passed.version,
        passed.cases.len(),
        passed.files,
        dir.join(TESTS_DIR).display(),
    ))
}
