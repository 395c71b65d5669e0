//! Every exit code of `couponsd`, in one place: [`code`] gives each error the code the
//! README promises:
//!
//! | code | when |
//! |------|------|
//! | 0 | the command did what it was asked |
//! | 1 | any other failure: the database failed, is missing or not migrated; a command refused what it was asked (an unknown coupon, request key or channel, a bad argument) |
//! | 2 | the config or the rules are at fault: a bad config or `database.url` (the message names the key path), a rule that does not compile or a rule test that fails (each problem as `file:line:column: message`); clap's usage errors also exit 2 |
//!
//! Two more are the running daemon's own, as it stops (`app::run`): 1 at a second stop
//! signal, 0 when `worker.shutdown_grace` ran out with work still in flight.

use std::process::ExitCode;

use crate::app::AppError;
use crate::store::StoreError;

/// The config or the rules are at fault.
const CONFIG_OR_RULES: u8 = 2;
/// Any other failure.
const FAILED: u8 = 1;

/// The exit code `error` deserves. No arm is a catch-all, so that a new error variant
/// has to be given its code here.
fn code(error: &AppError) -> u8 {
    match error {
        AppError::Config(_) | AppError::Rules(_) => CONFIG_OR_RULES,
        AppError::Store(e) => store(e),
        AppError::Other(_) => FAILED,
    }
}

/// A bad `database.url` is the config's fault; every other database failure is not.
fn store(error: &StoreError) -> u8 {
    match error {
        StoreError::Url(_) => CONFIG_OR_RULES,
        _ => FAILED,
    }
}

/// Reports `error` on stderr and returns its exit code. Rule problems go one per line,
/// each `file:line:column: message`, for editors and CI.
pub(super) fn report(error: &AppError) -> ExitCode {
    match error {
        AppError::Rules(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            eprintln!("couponsd: {} problem(s) in the rules", problems.len());
        }
        _ => eprintln!("couponsd: {error}"),
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
            (AppError::Rules(Vec::new()), 2),
            (AppError::Store(StoreError::Url(refused())), 2),
            (AppError::Store(StoreError::Connect(refused())), 1),
            (AppError::Other(refused()), 1),
        ];
        for (error, expected) in cases {
            assert_eq!(code(&error), expected, "{error:?}");
        }
    }
}
