//! The `couponsd` command line: parse the arguments, then hand over to the library
//! ([`couponsd::cli`]), which loads the config, runs the command and picks the exit code.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use couponsd::cli::{self, Command};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(cli::run(cli.command, &cli.config))
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
