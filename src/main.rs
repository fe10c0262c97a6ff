//! The `berth` command: the assigner service, the client commands, the fake Launchpad and
//! `berth dev`. Everything it does lives in the library; this file parses flags and calls it.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use berth::telemetry::LogFormat;

/// berth hands out build slots (Launchpad PPAs) to CI jobs over RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    /// Log lines on stderr: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
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
    /// Extend the lease of a held slot (for its own length unless --lease says).
    Renew(berth::cli::RenewArgs),
    /// Give a held slot back; it is cleaned, then free again.
    Release(berth::cli::ReleaseArgs),
    /// Show the pools and slots.
    Status(berth::cli::StatusArgs),
    /// Operator actions on one slot (disable, enable, reclaim, clean) and `slot show`.
    Slot(berth::cli::SlotArgs),
    /// Show the slots' past events (from the history stream): who held what, and when.
    History(berth::cli::HistoryArgs),
    /// Follow the live events until Ctrl-C, a line each.
    Events(berth::cli::EventsArgs),
    /// Acquire a slot, run a command with it, release it. Exits with the command's code;
    /// 75 when no slot came free within the wait, 76 when the lease was lost while the
    /// command ran, 70 when berth itself failed.
    Run(berth::cli::RunArgs),
    /// API tokens: `berth token new --name N --role client` prints one and its config lines.
    Token(berth::cli::TokenArgs),
    /// Serve a fake Launchpad web service (for tests and `berth dev`).
    FakeLaunchpad(berth::fake::FakeLaunchpadArgs),
    /// Print a shell completion script: `berth completions bash > /etc/bash_completion.d/berth`.
    Completions(berth::cli::generate::CompletionsArgs),
    /// Print the man page (roff): `berth man | man -l -`, `berth man run`.
    Man(berth::cli::generate::ManArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    berth::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Dev(args) => berth::dev::run_cli(args).await,
        Command::Assigner(args) => berth::assigner::run_cli(args).await,
        Command::Acquire(args) => berth::cli::acquire(args).await,
        Command::Renew(args) => berth::cli::renew(args).await,
        Command::Release(args) => berth::cli::release(args).await,
        Command::Status(args) => berth::cli::status(args).await,
        Command::Slot(args) => berth::cli::slot(args).await,
        Command::History(args) => berth::cli::history(args).await,
        Command::Events(args) => berth::cli::events(args).await,
        Command::Run(args) => berth::cli::run(args).await,
        Command::Token(args) => berth::cli::token(args),
        Command::FakeLaunchpad(args) => berth::fake::run_cli(args).await,
        Command::Completions(args) => {
            berth::cli::generate::completions(
                args.shell,
                &mut Cli::command(),
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(args) => berth::cli::generate::man(
            Cli::command(),
            args.command.as_deref(),
            &mut std::io::stdout(),
        )
        .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::FAILURE
        }
    }
}
