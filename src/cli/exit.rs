//! Every exit code of `couponsd`, in one place. Each command returns its own module's
//! error; [`CliError`] gathers them and [`code`] gives each the code the README
//! promises:
//!
//! | code | when |
//! |------|------|
//! | 0 | the command did what it was asked |
//! | 1 | any other failure: the database failed, is missing or not migrated; a command refused what it was asked (an unknown coupon, request key or channel, a bad argument; `codes import` into a coupon that is not a pool, or of a file it cannot read; `init` over existing files without `--force`, or where it cannot write). `codes import` exits 0 when it ran, even if it skipped duplicates and invalid lines |
//! | 2 | the config or the rules are at fault: a bad config or `database.url` (the message names the key path), a rule that does not compile or a rule test that fails (each problem as `file:line:column: message`); clap's usage errors also exit 2 |
//!
//! Two more are the running daemon's own, as it stops (`app::run`): 1 at a second stop
//! signal, 0 when `worker.shutdown_grace` ran out with work still in flight.

use std::process::ExitCode;

use crate::app::AppError;
use crate::authoring::AuthoringError;
use crate::config::ConfigError;
use crate::init::InitError;
use crate::installation::OpenError;
use crate::ops::OpsError;
use crate::rules::RuleError;
use crate::store::StoreError;

/// The config or the rules are at fault.
const CONFIG_OR_RULES: u8 = 2;
/// Any other failure.
const FAILED: u8 = 1;

/// Why a command failed: the error of the module that failed, as it said it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The installation cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An operator command failed.
    #[error(transparent)]
    Ops(#[from] OpsError),
    /// An authoring command failed.
    #[error(transparent)]
    Authoring(#[from] AuthoringError),
    /// `migrate`, the daemon, the demo or a benchmark failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// `init` wrote nothing (its files exist) or could not write.
    #[error(transparent)]
    Init(#[from] InitError),
}

/// The exit code `error` deserves. No arm is a catch-all, so that a new error variant
/// has to be given its code here.
fn code(error: &CliError) -> u8 {
    match error {
        CliError::Config(_) | CliError::App(AppError::Config(_)) => CONFIG_OR_RULES,
        CliError::Open(e) | CliError::App(AppError::Open(e)) => open(e),
        CliError::Authoring(AuthoringError::Rules(_)) => CONFIG_OR_RULES,
        CliError::Ops(OpsError::Store(e))
        | CliError::Authoring(AuthoringError::Store(e))
        | CliError::App(AppError::Store(e)) => store(e),
        CliError::Ops(OpsError::Refused(_))
        | CliError::Authoring(AuthoringError::Refused(_) | AuthoringError::Stopped(_))
        | CliError::App(AppError::Other(_))
        | CliError::Init(InitError::Exists(_) | InitError::Write { .. }) => FAILED,
    }
}

fn open(error: &OpenError) -> u8 {
    match error {
        OpenError::Rules(_) => CONFIG_OR_RULES,
        OpenError::Store(e) => store(e),
        OpenError::NotMigrated(_) | OpenError::NotTheWriter(_) => FAILED,
    }
}

/// A bad `database.url` is the config's fault; every other database failure is not.
fn store(error: &StoreError) -> u8 {
    match error {
        StoreError::Url(_) => CONFIG_OR_RULES,
        _ => FAILED,
    }
}

/// The rule problems `error` carries, if it is about the rules.
fn rule_problems(error: &CliError) -> Option<&[RuleError]> {
    match error {
        CliError::Open(OpenError::Rules(problems))
        | CliError::App(AppError::Open(OpenError::Rules(problems)))
        | CliError::Authoring(AuthoringError::Rules(problems)) => Some(problems),
        _ => None,
    }
}

/// Reports `error` on stderr and returns its exit code. Rule problems go one per line,
/// each `file:line:column: message`, for editors and CI.
pub(super) fn report(error: &CliError) -> ExitCode {
    match rule_problems(error) {
        Some(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            eprintln!("couponsd: {} problem(s) in the rules", problems.len());
        }
        None => eprintln!("couponsd: {error}"),
    }
    ExitCode::from(code(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_and_the_rules_exit_2_every_other_failure_1() {
        let refused = || "refused".to_owned();
        let cases = [
            (CliError::Open(OpenError::Rules(Vec::new())), 2),
            (
                CliError::Ops(OpsError::Store(StoreError::Url(refused()))),
                2,
            ),
            (
                CliError::Open(OpenError::Store(StoreError::Url(refused()))),
                2,
            ),
            (CliError::Authoring(AuthoringError::Rules(Vec::new())), 2),
            (CliError::Open(OpenError::NotMigrated(refused())), 1),
            (
                CliError::App(AppError::Store(StoreError::Connect(refused()))),
                1,
            ),
            (CliError::Ops(OpsError::Refused(refused())), 1),
            (CliError::Authoring(AuthoringError::Refused(refused())), 1),
            (CliError::App(AppError::Other(refused())), 1),
            (
                CliError::Init(InitError::Exists(vec!["couponsd.yaml".into()])),
                1,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(code(&error), expected, "{error:?}");
        }
    }
}
