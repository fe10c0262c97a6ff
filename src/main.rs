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
    /// Run the whole stack locally: fake Launchpad, one worker per slot, the assigner.
    Dev(berth::dev::DevArgs),
    /// Serve the HTTP API that hands out slots (optionally supervising the workers).
    Assigner(berth::assigner::AssignerArgs),
    /// Take a slot from a pool; prints the slot and its lease token.
    Acquire(berth::cli::AcquireArgs),
    /// Extend the lease of a held slot.
    Renew(berth::cli::RenewArgs),
    /// Give a held slot back; it is cleaned, then free again.
    Release(berth::cli::ReleaseArgs),
    /// Show the pools and slots.
    Status(berth::cli::StatusArgs),
    /// Acquire a slot, run a command with it, release it; exits with the command's code.
    Run(berth::cli::RunArgs),
    /// Serve a fake Launchpad web service (for tests and `berth dev`).
    FakeLaunchpad(berth::fake::FakeLaunchpadArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    berth::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => berth::dev::run_cli(args).await,
        Command::Assigner(args) => berth::assigner::run_cli(args).await,
        Command::Acquire(args) => berth::cli::acquire(args).await,
        Command::Renew(args) => berth::cli::renew(args).await,
        Command::Release(args) => berth::cli::release(args).await,
        Command::Status(args) => berth::cli::status(args).await,
        Command::Run(args) => berth::cli::run(args).await,
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
