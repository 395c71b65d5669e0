//! Rule authoring for ops: the commands people run while they edit the Rhai scripts in
//! `rules/`, and hot reload of those scripts in a running daemon.
//!
//! - `check` (`check.rs`): config, rule compilation and rule tests, without a database;
//! - `rules test` (`fixtures.rs`): the rule tests in `rules/tests/*.yaml`;
//! - `simulate` (`simulate.rs`): one request decided against the live database, read-only;
//! - `backtest` (`backtest.rs`): recorded requests replayed through candidate rules;
//! - `explain` (`explain.rs`): what happened to one request, delivery included;
//! - hot reload (`reload.rs`): SIGHUP or a change in the rules folder recompiles the
//!   rules and runs their tests before anything is swapped in.
//!
//! Every decision here is made by [`crate::pipeline::decide::decide_one`], the function the batch
//! transaction uses, so a dry run cannot drift from what the daemon does. Nothing in
//! this module writes to the database; the commands read it through the plain handle
//! their caller opened (read-only), never through a running daemon's context.

pub mod backtest;
pub mod check;
pub mod explain;
pub mod fixtures;
pub mod reload;
pub mod simulate;

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::rules::{self, Clock, RuleError};
use crate::store::StoreError;

/// Why an authoring command failed. The module's own rather than one error shared by
/// every command: it says only what can go wrong here, and it keeps `authoring` free of
/// the modules above it (the daemon's start-up, the command line). The command line maps
/// it to an exit code (`cli/exit.rs`); hot reload has its own [`reload::ReloadError`].
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// Rules that do not compile, rule test files that do not parse, rule tests that
    /// fail: every problem, each as `file:line:column: message`.
    #[error("{}", rules::one_per_line(.0))]
    Rules(Vec<RuleError>),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An argument or a request key the command cannot use; the message names it.
    #[error("{0}")]
    Refused(String),
    /// The work stopped unexpectedly (a bug in couponsd).
    #[error("{0}")]
    Stopped(String),
}

/// A clock the caller sets: rule tests and replays evaluate the rules "as of" a time of
/// their choosing, so `now()` and `days_since` see that time.
#[derive(Clone)]
pub struct SetClock(Arc<Mutex<DateTime<Utc>>>);

impl SetClock {
    /// A clock stopped at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// The clock to compile rules with.
    pub fn clock(&self) -> Clock {
        let time = self.0.clone();
        Arc::new(move || *time.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A problem located in a file of the rules folder (a rule or a rule test), reported as
/// `file:line:column: message`; line and column are 0 when unknown.
pub(crate) fn problem(
    file: &Path,
    line: usize,
    column: usize,
    message: impl Into<String>,
) -> RuleError {
    RuleError {
        file: file.to_owned(),
        line,
        column,
        message: message.into(),
    }
}

/// A stored time (UTC without a zone) as RFC 3339, to the millisecond.
pub(crate) fn rfc3339(at: NaiveDateTime) -> String {
    at.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One JSON object on one line.
pub(crate) fn to_json_line<T: Serialize>(value: &T) -> Result<String, AuthoringError> {
    serde_json::to_string(value)
        .map(|text| text + "\n")
        .map_err(|e| AuthoringError::Stopped(format!("cannot render JSON: {e}")))
}
