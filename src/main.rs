//! The `couponsd` command line: parse arguments, set up logging, load the config, and
//! hand over to the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use couponsd::app::{self, AppError};
use couponsd::authoring::{self, backtest, check, explain, simulate};
use couponsd::config::Config;
use couponsd::ops::deliveries::{self, ChannelsAction, DeliveriesAction};
use couponsd::ops::stock::{self, StockAction};

/// Coupon-dispatch daemon: trigger requests in, signed coupon webhooks out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        env = "COUPONSD_CONFIG",
        default_value = "couponsd.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[command(subcommand)]
        action: StockAction,
    },
    /// The outbox: list deliveries, replay dead ones with their original webhook-id.
    Deliveries {
        #[command(subcommand)]
        action: DeliveriesAction,
    },
    /// Partner channels: list them, enable one a 410 Gone disabled.
    Channels {
        #[command(subcommand)]
        action: ChannelsAction,
    },
    /// Load the config, compile every rule and run the rule tests; needs no database.
    Check(check::RulesDirArgs),
    /// Decide one request against the live database as the daemon would; writes nothing.
    Simulate(simulate::SimulateArgs),
    /// Rule tests: the fixtures in `rules/tests/*.yaml`.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Replay recorded requests through candidate rules and count changed decisions.
    Backtest(backtest::BacktestArgs),
    /// What happened to one request: decision, grant, delivery and every attempt.
    Explain(explain::ExplainArgs),
    /// Show the whole pipeline on a throwaway SQLite database; needs no config.
    Demo {
        /// New users to simulate (half of them come back).
        #[arg(long, default_value_t = 2000)]
        users: usize,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Run every rule test; exit 2 when one fails.
    Test(check::RulesDirArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { users } => {
                couponsd::logging::init(Default::default(), "warn");
                couponsd::demo::run(users).await
            }
            command => {
                let config = Arc::new(Config::load(&cli.config)?);
                couponsd::logging::init(config.logging.format, "info");
                match command {
                    Command::Migrate => app::migrate(&config).await,
                    Command::Run { drain } => app::run(config, &cli.config, drain).await,
                    // Operator commands never apply the catalog; `list` and `show` only read.
                    Command::Stock { action } => {
                        let ctx = app::connect(config, action.access()).await?;
                        print(stock::run(&ctx, action).await)
                    }
                    Command::Deliveries { action } => {
                        let ctx = app::connect(config, action.access()).await?;
                        print(deliveries::deliveries(&ctx, action).await)
                    }
                    Command::Channels { action } => {
                        let ctx = app::connect(config, action.access()).await?;
                        print(deliveries::channels(&ctx, action).await)
                    }
                    Command::Check(args) => print(check::run(&config, &cli.config, &args)),
                    Command::Simulate(args) => print(simulate::run(&config, &args).await),
                    Command::Rules {
                        action: RulesAction::Test(args),
                    } => print(authoring::fixtures::run(&config, &args)),
                    Command::Backtest(args) => print(backtest::run(&config, &args).await),
                    Command::Explain(args) => print(explain::run(&config, &args).await),
                    Command::Demo { .. } => unreachable!("handled above"),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn print(out: Result<String, AppError>) -> Result<(), AppError> {
    print!("{}", out?);
    Ok(())
}

fn report(error: &AppError) -> ExitCode {
    match error {
        // One problem per line, each `file:line:column: message`, for editors and CI.
        AppError::Rules(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            eprintln!("couponsd: {} problem(s) in the rules", problems.len());
        }
        _ => eprintln!("couponsd: {error}"),
    }
    ExitCode::from(error.exit_code())
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
