//! The commands of the `couponsd` binary: `main.rs` parses the arguments into a
//! [`Command`], and [`run`] loads the config, opens what the command works on, calls into
//! the library, prints what it returns and tells the exit code.
//!
//! One file per group of commands: `ops.rs` (`stock`, `deliveries`, `channels`), `codes.rs`
//! (`codes import`, `codes show`), `grants.rs` (`grants show`, `grants revoke`), `report.rs` (`report`) and
//! `authoring.rs` (`check`, `rules test`, `simulate`, `backtest`, `explain`) open the
//! installation the way their commands need it; `exit.rs` holds every exit code. The
//! daemon's commands (`migrate`, `run`), `demo` and `init` open what they need themselves
//! ([`crate::app`], [`crate::init`]), so their whole command line is one call in [`run`].

mod authoring;
mod codes;
mod exit;
mod grants;
mod ops;
mod report;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use crate::authoring::{backtest, check, explain, simulate};
use crate::config::Config;
use crate::ops::codes::CodesAction;
use crate::ops::deliveries::{ChannelsAction, DeliveriesAction};
use crate::ops::grants::GrantsAction;
use crate::ops::report::ReportArgs;
use crate::ops::stock::StockAction;
use crate::{app, logging};
pub use exit::CliError;

/// What `couponsd` is asked to do.
#[derive(Subcommand)]
pub enum Command {
    /// Create or upgrade the schema and apply the config's catalog.
    Migrate,
    /// Run the daemon.
    Run {
        /// Process everything queued and every pending delivery, then exit.
        #[arg(long)]
        drain: bool,
    },
    /// Inventory: show stock, add stock, bring a retired coupon back.
    Stock {
        /// What to do.
        #[command(subcommand)]
        action: StockAction,
    },
    /// A pool coupon's codes: import a partner's file, show available and issued counts.
    Codes {
        /// What to do.
        #[command(subcommand)]
        action: CodesAction,
    },
    /// Grants after delivery: show one (by id or code) or a user's, revoke one.
    Grants {
        /// What to do.
        #[command(subcommand)]
        action: GrantsAction,
    },
    /// The outbox: list deliveries, replay dead ones with their original webhook-id.
    Deliveries {
        /// What to do.
        #[command(subcommand)]
        action: DeliveriesAction,
    },
    /// Partner channels: list them, enable one a 410 Gone disabled.
    Channels {
        /// What to do.
        #[command(subcommand)]
        action: ChannelsAction,
    },
    /// Per campaign and coupon: granted, redeemed, redemption rate, revoked, expired,
    /// face value granted and redeemed, budget used.
    Report(ReportArgs),
    /// Load the config, compile every rule and run the rule tests; needs no database.
    Check(check::RulesDirArgs),
    /// Decide one request against the live database as the daemon would; writes nothing.
    Simulate(simulate::SimulateArgs),
    /// Rule tests: the fixtures in `rules/tests/*.yaml`.
    Rules {
        /// What to do.
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Replay recorded requests through candidate rules and count changed decisions.
    Backtest(backtest::BacktestArgs),
    /// What happened to one request: decision, grant, delivery and every attempt.
    Explain(explain::ExplainArgs),
    /// Write a starter couponsd.yaml and the shipped rules with their tests into DIR;
    /// needs no config.
    Init(crate::init::InitArgs),
    /// Show the whole pipeline on a throwaway SQLite database; needs no config.
    Demo {
        /// New users to simulate (half of them come back).
        #[arg(long, default_value_t = 2000)]
        users: usize,
    },
}

/// `couponsd rules …`
#[derive(Subcommand)]
pub enum RulesAction {
    /// Run every rule test; exit 2 when one fails.
    Test(check::RulesDirArgs),
}

/// Runs `command` with the config at `config_path` (`demo` and `init` read none),
/// prints what it says, and returns the process's exit code; a failure is reported on
/// stderr first.
pub async fn run(command: Command, config_path: &Path) -> ExitCode {
    match dispatch(command, config_path).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => exit::report(&error),
    }
}

/// Runs `command`; returns what to print.
async fn dispatch(command: Command, config_path: &Path) -> Result<String, CliError> {
    let config = match command {
        Command::Demo { users } => {
            logging::init(Default::default(), "warn");
            crate::demo::run(users).await?;
            return Ok(String::new());
        }
        Command::Init(args) => return Ok(crate::init::run(&args)?),
        _ => Arc::new(Config::load(config_path)?),
    };
    logging::init(config.logging.format, "info");
    Ok(match command {
        Command::Migrate => {
            app::migrate(&config).await?;
            String::new()
        }
        Command::Run { drain } => {
            app::run(config, config_path, drain).await?;
            String::new()
        }
        Command::Stock { action } => ops::stock(config, action).await?,
        Command::Codes { action } => codes::codes(config, action).await?,
        Command::Grants { action } => grants::grants(config, action).await?,
        Command::Deliveries { action } => ops::deliveries(config, action).await?,
        Command::Channels { action } => ops::channels(config, action).await?,
        Command::Report(args) => report::report(config, &args).await?,
        Command::Check(args) => check::run(&config, config_path, &args)?,
        Command::Simulate(args) => authoring::simulate(&config, &args).await?,
        Command::Rules {
            action: RulesAction::Test(args),
        } => crate::authoring::fixtures::run(&config, &args)?,
        Command::Backtest(args) => authoring::backtest(&config, &args).await?,
        Command::Explain(args) => authoring::explain(&config, &args).await?,
        Command::Demo { .. } | Command::Init(_) => unreachable!("handled above"),
    })
}
