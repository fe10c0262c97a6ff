//! The client commands of `berth` (DESIGN §4): `acquire`, `renew`, `release`, `status` and
//! `run`. Every flag also reads an environment variable, so a CI job can `eval` the output of
//! `berth acquire --format env` and call `berth renew` / `berth release` without flags.
//!
//! Exit codes: 0 ok, 3 no slot came free within the wait, 4 wrong token or slot not held,
//! 1 anything else. `berth run` exits with its command's code.

pub mod client;
pub mod duration;
pub mod output;
mod run;

use std::process::ExitCode;

use client::{Client, ClientError};
use output::Format;

pub use run::run;

/// Where the assigner is and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the assigner.
    #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Output: `text` for people, `json` for programs, `env` for `eval` in a shell.
    #[arg(long, env = "BERTH_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// What `acquire` and `run` ask for.
#[derive(Debug, Clone, clap::Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pool to take a slot from.
    #[arg(long, env = "BERTH_POOL")]
    pub pool: String,
    /// Who holds the slot, shown in status (default: USER@HOST).
    #[arg(long, env = "BERTH_OWNER")]
    pub owner: Option<String>,
    /// How long to wait for a free slot (seconds, or 30s, 5m, 1h); default: the server's.
    #[arg(long, env = "BERTH_WAIT", value_parser = duration::parse_secs)]
    pub wait: Option<u64>,
    /// How long the lease lasts without renewing (seconds, or 30m, 2h); default: the server's.
    #[arg(long, env = "BERTH_LEASE", value_parser = duration::parse_secs)]
    pub lease: Option<u64>,
}

/// Flags of `berth renew`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub held: HeldArgs,
    /// The new lease length from now (seconds, or 30m, 2h); default: the server's.
    #[arg(long, env = "BERTH_LEASE", value_parser = duration::parse_secs)]
    pub lease: Option<u64>,
}

/// Flags of `berth release`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub held: HeldArgs,
}

/// The slot held and its lease token, as acquire printed them.
#[derive(Debug, Clone, clap::Args)]
pub struct HeldArgs {
    /// The slot held.
    #[arg(long, env = "BERTH_SLOT")]
    pub slot: String,
    /// Its lease token.
    #[arg(long, env = "BERTH_LEASE_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Flags of `berth status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags of `berth run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub acquire: AcquireArgs,
    /// The command to run with the slot, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `USER@HOST`, the owner named when none is given.
pub fn default_owner() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// Prints a failed call's message and what to do, and gives its exit code.
pub(crate) fn fail(err: &ClientError) -> ExitCode {
    eprintln!("berth: {err}");
    if let ClientError::Api {
        retry_after: Some(secs),
        ..
    } = err
    {
        eprintln!("berth: the assigner suggests retrying in {secs} s");
    }
    ExitCode::from(err.exit_code())
}

/// `berth acquire`.
pub async fn acquire(args: AcquireArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client.url);
    let owner = args.owner.clone().unwrap_or_else(default_owner);
    match client
        .acquire(&args.pool, &owner, args.lease, args.wait)
        .await
    {
        Ok(lease) => {
            print!("{}", output::acquired(&lease, args.client.format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth renew`.
pub async fn renew(args: RenewArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client.url);
    match client
        .renew(&args.held.slot, &args.held.token, args.lease)
        .await
    {
        Ok(expires) => {
            print!(
                "{}",
                output::renewed(&args.held.slot, expires, args.client.format)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth release`.
pub async fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client.url);
    match client.release(&args.held.slot, &args.held.token).await {
        Ok(()) => {
            print!("{}", output::released(&args.held.slot, args.client.format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client.url);
    let result = async {
        Ok::<_, ClientError>((client.status("pools").await?, client.status("slots").await?))
    };
    match result.await {
        Ok((pools, slots)) => {
            print!("{}", output::status(&pools, &slots, args.client.format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}
