//! `couponsd simulate`, `backtest` and `explain`: each checks its arguments and compiles
//! its rules first, then opens the configured database for reading only (nothing
//! migrated, no catalog applied, and the database itself refuses any write) and hands it
//! to its command. `check` and `rules test` need no database and are called directly.

use super::CliError;
use crate::authoring::backtest::{self, BacktestArgs, Backtester};
use crate::authoring::explain::{self, ExplainArgs};
use crate::authoring::simulate::{self, SimulateArgs};
use crate::config::Config;
use crate::installation::{load_rules, open_existing};
use crate::store::{Access, Db};

/// `couponsd simulate`: the config's rules, compiled, decide.
pub(super) async fn simulate(config: &Config, args: &SimulateArgs) -> Result<String, CliError> {
    let request = simulate::request(args)?;
    let rules = load_rules(config)?;
    let db = read_only(config).await?;
    Ok(simulate::run(&db, config, &rules, request, args.json).await?)
}

/// `couponsd backtest`.
pub(super) async fn backtest(config: &Config, args: &BacktestArgs) -> Result<String, CliError> {
    let backtester = Backtester::new(config, args)?;
    let db = read_only(config).await?;
    Ok(backtest::run(&db, config, backtester, args.json).await?)
}

/// `couponsd explain`.
pub(super) async fn explain(config: &Config, args: &ExplainArgs) -> Result<String, CliError> {
    let db = read_only(config).await?;
    Ok(explain::run(&db, args).await?)
}

async fn read_only(config: &Config) -> Result<Db, CliError> {
    Ok(open_existing(config, Access::ReadOnly).await?)
}
