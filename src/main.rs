//! The `couponsd` command line: parse arguments, set up logging, load the config, and
//! hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use couponsd::app::{self, AppError};
use couponsd::config::Config;

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
    /// Show the whole pipeline on a throwaway SQLite database; needs no config.
    Demo {
        /// New users to simulate (half of them come back).
        #[arg(long, default_value_t = 2000)]
        users: usize,
    },
    /// Benchmarks against MariaDB (or `--sqlite`) and a verifying loopback receiver.
    Bench(couponsd::bench::BenchArgs),
}

#[derive(Subcommand)]
enum StockAction {
    /// A table of every coupon: state, stock, granted, remaining, rate, run-out.
    Show,
    /// Add N to a coupon's stock (a retired coupon stays retired).
    Add { coupon: String, count: i64 },
    /// Bring a retired coupon back into selection.
    Activate { coupon: String },
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
            Command::Bench(args) => couponsd::bench::run(args).await,
            command => {
                let config = Arc::new(Config::load(&cli.config)?);
                couponsd::logging::init(config.logging.format, "info");
                match command {
                    Command::Migrate => app::migrate(&config).await,
                    Command::Run { drain } => app::run(config, &cli.config, drain).await,
                    Command::Stock { action } => {
                        let ctx = app::start(config).await?;
                        let out = match action {
                            StockAction::Show => couponsd::ops::stock::show(&ctx).await,
                            StockAction::Add { coupon, count } => {
                                couponsd::ops::stock::add(&ctx, &coupon, count).await
                            }
                            StockAction::Activate { coupon } => {
                                couponsd::ops::stock::activate(&ctx, &coupon).await
                            }
                        }?;
                        print!("{out}");
                        Ok(())
                    }
                    Command::Demo { .. } | Command::Bench(_) => unreachable!("handled above"),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn report(error: &AppError) -> ExitCode {
    eprintln!("couponsd: {error}");
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
