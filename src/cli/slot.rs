//! `berth slot`: the operator actions on one slot (DESIGN §2 "Operator actions") and
//! `berth slot show`, over [`crate::client::Client`].

use std::process::ExitCode;

use super::output;
use super::{ClientArgs, FormatArgs, default_owner, fail};

/// Flags of `berth slot`.
#[derive(Debug, Clone, clap::Args)]
pub struct SlotArgs {
    #[command(subcommand)]
    pub command: SlotCommand,
}

/// What to do to the slot.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SlotCommand {
    /// Take the slot out of service: a free one at once, a held one once its holder is done
    /// (or at once with --now, revoking the lease); it is cleaned first.
    Disable(ActionArgs),
    /// Put a disabled slot back (cleaned, then free), or cancel a pending disable.
    Enable(ActionArgs),
    /// Revoke the lease of a held slot now: it is cleaned and free again.
    Reclaim(ActionArgs),
    /// Retry the cleaning of a dirty slot now.
    Clean(ActionArgs),
    /// Show one slot: state, holder, since when, lease, cleaning trouble, why disabled.
    Show(ShowArgs),
}

/// Flags of the actions.
#[derive(Debug, Clone, clap::Args)]
pub struct ActionArgs {
    /// The slot.
    pub slot: String,
    /// Why (up to 500 characters); required by disable and reclaim.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who asks, kept in the record and the events (default: USER@HOST).
    #[arg(long, env = "BERTH_BY")]
    pub by: Option<String>,
    /// disable only: revoke the holder's lease at once instead of waiting for it.
    #[arg(long)]
    pub now: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: FormatArgs,
}

/// Flags of `berth slot show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The slot.
    pub slot: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: FormatArgs,
}

/// `berth slot …`.
pub async fn slot(args: SlotArgs) -> anyhow::Result<ExitCode> {
    let (name, action) = match args.command {
        SlotCommand::Show(show) => return Ok(shown(show).await),
        SlotCommand::Disable(a) => ("disable", a),
        SlotCommand::Enable(a) => ("enable", a),
        SlotCommand::Reclaim(a) => ("reclaim", a),
        SlotCommand::Clean(a) => ("clean", a),
    };
    if action.now && name != "disable" {
        eprintln!("berth: --now is for `berth slot disable` only");
        return Ok(ExitCode::from(2));
    }
    let by = action.by.clone().unwrap_or_else(default_owner);
    let client = match action.client.client() {
        Ok(client) => client,
        Err(err) => return Ok(fail(&err)),
    };
    match client
        .slot_action(
            &action.slot,
            name,
            action.reason.as_deref(),
            Some(&by),
            action.now,
        )
        .await
    {
        Ok(()) => {
            print!(
                "{}",
                output::action(&action.slot, name, action.output.format)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

async fn shown(args: ShowArgs) -> ExitCode {
    let client = match args.client.client() {
        Ok(client) => client,
        Err(err) => return fail(&err),
    };
    match client.slot(&args.slot).await {
        Ok(slot) => {
            print!("{}", output::slot(&slot, args.output.format));
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}
