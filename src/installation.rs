//! An installation as a command finds it: the database its config names, opened for
//! what the command may do, and the rules its config names, compiled.
//!
//! The daemon's start-up (`app`) and the command line (`cli`) open an installation the
//! same way. This module sits below both and names neither, so that the commands reach
//! the database without the daemon's start-up.

use std::path::Path;

use crate::config::Config;
use crate::rules::{self, RuleError, Rules};
use crate::store::{Access, Db, StoreError};

/// Why an installation cannot be opened. Its own type, not the command line's: the
/// daemon's start-up opens installations too, and the command line, which sits above
/// both, maps this to an exit code (`cli/exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A rule does not compile: every problem, each naming its file and line.
    #[error("{}", rules::one_per_line(.0))]
    Rules(Vec<RuleError>),
    /// `database.url` is bad, or the database does not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database is not there yet, or its schema is behind: `couponsd migrate`
    /// comes first. The message says which.
    #[error("{0}")]
    NotMigrated(String),
}

/// Compiles the rules the config names.
pub fn load_rules(config: &Config) -> Result<Rules, OpenError> {
    Rules::load(&config.rules.dir, &config.rules.limits).map_err(OpenError::Rules)
}

/// Opens the database the config names for reading and writing, creating a SQLite file
/// that does not exist yet: for `migrate`, which installs.
pub fn open_db(config: &Config) -> Result<Db, OpenError> {
    Ok(Db::open(
        config.database.url.expose(),
        config.database.settings(Access::ReadWrite),
    )?)
}

/// Opens the database of an installation for a command other than `migrate`: a SQLite
/// file that does not exist is refused rather than created, and the database must
/// answer. With [`Access::ReadOnly`] the database itself refuses any write, so that an
/// inspection (`explain`, `simulate`, `backtest`, `list`, `show`) cannot change
/// anything.
pub async fn open_existing(config: &Config, access: Access) -> Result<Db, OpenError> {
    let url = config.database.url.expose();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if !Path::new(path).exists() {
            return Err(OpenError::NotMigrated(format!(
                "database.url: the SQLite file {path} does not exist (run `couponsd migrate` first)"
            )));
        }
    }
    let db = Db::open(url, config.database.settings(access))?;
    // Proves the database answers, and sets the clock leases and holds are read from.
    db.sync_clock().await?;
    Ok(db)
}

/// [`open_existing`], then a schema that is not up to date is refused: the daemon and
/// the operator commands work only on a migrated database.
pub async fn open_migrated(config: &Config, access: Access) -> Result<Db, OpenError> {
    let db = open_existing(config, access).await?;
    if !db.is_migrated().await? {
        return Err(OpenError::NotMigrated(
            "the database schema is not up to date: run `couponsd migrate` first".into(),
        ));
    }
    Ok(db)
}
