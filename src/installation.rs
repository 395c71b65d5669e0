//! An installation as a command finds it: the database its config names, opened for
//! what the command may do, and the rules its config names, compiled.
//!
//! The daemon's start-up (`app`) and the command line (`cli`) open an installation the
//! same way; the operator commands (`ops`) work on the plain [`Installation`] the
//! command line opens for them. This module sits below all three and names none of
//! them, so that the commands reach the database without the daemon's start-up.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::domain::RulesVersion;
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
    /// A command that writes was pointed at a Galera node that is not the cluster's
    /// writer node.
    #[error("{0}: run it against the writer node, or give database.url the cluster's hosts")]
    NotTheWriter(String),
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

/// What an operator command (`stock`, `deliveries`, `channels`) works on: a plain
/// handle on the database, and the config the command was run with. Nothing of a
/// running daemon: no loops, no catalog applied (an operator command run with another
/// config must not change the live campaigns; only `migrate` and `run` apply them).
#[derive(Clone)]
pub struct Installation {
    /// The database, opened for what the command may do: read-only for `list` and
    /// `show`.
    pub db: Db,
    /// The config; its campaigns and channels name what a command may touch.
    pub config: Arc<Config>,
    /// The version of the config's rules, compiled when the installation was opened
    /// (the stock table names it).
    pub rules_version: RulesVersion,
}

impl Installation {
    /// Opens the installation `config` names for an operator command: the rules
    /// compiled (a broken rule is refused here, as at the daemon's start), the database
    /// migrated and opened for `access`. A command that writes is refused on a Galera
    /// node other than the cluster's writer node.
    pub async fn open(config: Arc<Config>, access: Access) -> Result<Self, OpenError> {
        let rules = load_rules(&config)?;
        let db = open_migrated(&config, access).await?;
        if access == Access::ReadWrite {
            // Every write goes through one Galera node (docs/operations.md).
            let elsewhere = db.get().await?.writer_node_elsewhere().await;
            if let Some(why) = elsewhere.map_err(StoreError::from)? {
                return Err(OpenError::NotTheWriter(why));
            }
        }
        Ok(Self {
            db,
            config,
            rules_version: rules.version().clone(),
        })
    }
}
