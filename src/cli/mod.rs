//! The client commands of `berth` (DESIGN §4): `acquire`, `renew`, `release`, `status` and
//! `run`, over [`crate::client::Client`], which retries what is temporary within `--wait`.
//! Every flag also reads an environment variable, so a CI job can `eval` the output of
//! `berth acquire --format env` and call `berth renew` / `berth release` without flags.
//!
//! Exit codes: 0 ok, 3 no slot came free within the wait, 4 wrong token or slot not held,
//! 1 anything else. `berth run` has its own ([`run`]).

pub mod duration;
pub mod generate;
mod history;
pub mod output;
mod run;
mod slot;
pub mod token;

use std::process::ExitCode;
use std::time::Duration;

use crate::client::{AcquireOptions, Client, ClientError, DEFAULT_RETRY_BUDGET, Retrying};
use output::Format;

pub use history::{EventFormat, EventsArgs, HistoryArgs, events, history};
pub use run::{EXIT_BERTH_FAILED, EXIT_LEASE_LOST, EXIT_NO_SLOT_IN_TIME, OnLeaseLost, run};
pub use slot::{ActionArgs, ShowArgs, SlotArgs, SlotCommand, slot};
pub use token::{TokenArgs, token};

/// Where the assigner is, and how long to keep trying.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the assigner.
    #[arg(
        long,
        env = "BERTH_URL",
        default_value = "http://127.0.0.1:8080",
        hide_env_values = true
    )]
    pub url: String,
    /// How long to wait (seconds, or 30s, 5m, 1h): for `acquire` and `run`, for a free slot
    /// (default: the server's, 60 s); for every command, for an assigner that is restarting,
    /// unreachable or busy: temporary failures are retried within it (default 30 s).
    #[arg(long, env = "BERTH_WAIT", value_parser = duration::parse_secs)]
    pub wait: Option<u64>,
    /// A file holding the API token (for an assigner with `[auth] mode = "tokens"`); the
    /// token may also come in the environment variable BERTH_TOKEN, which this file overrides.
    /// Like every secret file it must not be readable by group or others.
    #[arg(long, env = "BERTH_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM file of CA certificates that an `https://` assigner's certificate may chain to
    /// (besides the system's roots).
    #[arg(long, env = "BERTH_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl ClientArgs {
    /// The client, retrying within `--wait` and saying so on stderr once per call, trusting
    /// `--ca-file` too, with the API token of `--token-file` or `BERTH_TOKEN` when there is one.
    pub fn client(&self) -> anyhow::Result<Client> {
        let budget = self
            .wait
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RETRY_BUDGET);
        let client = match &self.ca_file {
            Some(ca_file) => Client::with_ca_file(&self.url, ca_file)?,
            None => Client::new(&self.url),
        };
        let client = client.retry_for(budget).on_retry(say_retrying);
        Ok(match self.token()? {
            Some(token) => client.with_token(&token),
            None => client,
        })
    }

    /// The API token: the first line of `--token-file`, else `BERTH_TOKEN`.
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let text = crate::secret_file::read_secret_file(path)?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty", path.display());
            }
            return Ok(Some(token));
        }
        Ok(std::env::var("BERTH_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()))
    }
}

/// One stderr line when a call first retries.
fn say_retrying(retry: &Retrying) {
    if retry.attempt == 1 {
        eprintln!(
            "berth: {} failed for now ({}); retrying for up to {} s",
            retry.call,
            retry.reason,
            retry.remaining.as_secs()
        );
    }
}

/// How a command prints what it got.
#[derive(Debug, Clone, clap::Args)]
pub struct FormatArgs {
    /// Output: `text` for people, `json` for programs, `env` for `eval` in a shell.
    #[arg(long, env = "BERTH_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// What `acquire` and `run` ask for.
#[derive(Debug, Clone, clap::Args)]
pub struct SlotRequestArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pool to take a slot from.
    #[arg(long, env = "BERTH_POOL")]
    pub pool: String,
    /// Who holds the slot, shown in status (default: USER@HOST).
    #[arg(long, env = "BERTH_OWNER")]
    pub owner: Option<String>,
    /// How long the lease lasts without renewing (seconds, or 30m, 2h); default: the server's.
    #[arg(long, env = "BERTH_LEASE", value_parser = duration::parse_secs)]
    pub lease: Option<u64>,
    /// 0–9: among the requests waiting for a slot of the pool, a higher one is served first
    /// (default: 0, the lowest).
    #[arg(long, env = "BERTH_PRIORITY", value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,
}

impl SlotRequestArgs {
    /// What acquire asks for besides the pool and the owner.
    pub fn options(&self) -> AcquireOptions {
        AcquireOptions {
            lease_secs: self.lease,
            wait_secs: self.client.wait,
            priority: self.priority,
        }
    }
}

/// Flags of `berth acquire`.
#[derive(Debug, Clone, clap::Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub request: SlotRequestArgs,
    #[command(flatten)]
    pub output: FormatArgs,
}

/// Flags of `berth renew`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub held: HeldArgs,
    /// The new lease length from now (seconds, or 30m, 2h); default: the holder's lease
    /// length (`BERTH_LEASE_SECS`, as acquire printed it), else the server's.
    #[arg(long, env = "BERTH_LEASE", value_parser = duration::parse_secs)]
    pub lease: Option<u64>,
    /// The holder's lease length, as `acquire --format env` and `berth run` set it.
    #[arg(long, env = "BERTH_LEASE_SECS", hide = true)]
    pub lease_secs: Option<u64>,
    #[command(flatten)]
    pub output: FormatArgs,
}

/// Flags of `berth release`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub held: HeldArgs,
    #[command(flatten)]
    pub output: FormatArgs,
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
    #[command(flatten)]
    pub output: FormatArgs,
}

/// Flags of `berth run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub request: SlotRequestArgs,
    /// What to do when the lease is lost while the command runs (taken back, expired after
    /// a network split): `kill` sends the command SIGTERM (SIGKILL after --kill-after) and
    /// exits 76; `warn` only says so and lets it finish.
    #[arg(long, env = "BERTH_ON_LEASE_LOST", value_enum, default_value_t = OnLeaseLost::Kill)]
    pub on_lease_lost: OnLeaseLost,
    /// How long the command has after SIGTERM before SIGKILL (seconds, or 30s, 2m).
    #[arg(long, env = "BERTH_KILL_AFTER", value_parser = duration::parse_secs, default_value = "30")]
    pub kill_after: u64,
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

/// Prints a failed call's message and gives its exit code.
pub(crate) fn fail(err: &ClientError) -> ExitCode {
    eprintln!("berth: {err}");
    ExitCode::from(err.exit_code())
}

/// `berth acquire`.
pub async fn acquire(args: AcquireArgs) -> anyhow::Result<ExitCode> {
    let request = &args.request;
    let owner = request.owner.clone().unwrap_or_else(default_owner);
    match request
        .client
        .client()?
        .acquire_with(&request.pool, &owner, request.options())
        .await
    {
        Ok(lease) => {
            print!("{}", output::acquired(&lease, args.output.format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth renew`: for `--lease`, else for the holder's lease length.
pub async fn renew(args: RenewArgs) -> anyhow::Result<ExitCode> {
    let lease_secs = args.lease.or(args.lease_secs);
    match args
        .client
        .client()?
        .renew(&args.held.slot, &args.held.token, lease_secs)
        .await
    {
        Ok(expires) => {
            print!(
                "{}",
                output::renewed(&args.held.slot, expires, lease_secs, args.output.format)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth release`.
pub async fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    match args
        .client
        .client()?
        .release(&args.held.slot, &args.held.token)
        .await
    {
        Ok(()) => {
            print!("{}", output::released(&args.held.slot, args.output.format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    match args.client.client()?.status().await {
        Ok(status) => {
            print!("{}", output::status(&status, args.output.format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}
