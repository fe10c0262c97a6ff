//! The `berth` command: the assigner service, the client commands, the fake Launchpad and
//! `berth dev`. Everything it does lives in the library; this file parses flags and calls it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// berth hands out build slots (Launchpad PPAs) to CI jobs over RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a fake Launchpad web service (for tests and `berth dev`).
    FakeLaunchpad(berth::fake::FakeLaunchpadArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    berth::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FakeLaunchpad(args) => berth::fake::run_cli(args).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::FAILURE
        }
    }
}
