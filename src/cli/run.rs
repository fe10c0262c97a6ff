//! `berth run --pool P -- CMD…`: acquire a slot, keep its lease renewed, run CMD with the slot
//! in its environment, forward SIGINT/SIGTERM to it, release the slot on every way out.
//!
//! Exit codes: CMD's own (128 + signal when a signal killed it; 127 when it cannot be found,
//! 126 when it cannot run); [`EXIT_NO_SLOT_IN_TIME`] (75) when no slot came free within the
//! wait; [`EXIT_LEASE_LOST`] (76) when the lease was lost while CMD ran (CMD gets SIGTERM,
//! then SIGKILL after `--kill-after`, unless `--on-lease-lost warn`); [`EXIT_BERTH_FAILED`]
//! (70) when berth itself failed (the assigner unreachable for the whole wait, a refused
//! request).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::output::lease_env;
use super::{RunArgs, default_owner};
use crate::client::{Client, ClientError, Lease};

/// `berth run`: no slot came free within the wait (sysexits' `EX_TEMPFAIL`).
pub const EXIT_NO_SLOT_IN_TIME: u8 = 75;
/// `berth run`: the lease was lost while the command ran (sysexits' `EX_PROTOCOL`).
pub const EXIT_LEASE_LOST: u8 = 76;
/// `berth run`: berth itself failed (sysexits' `EX_SOFTWARE`).
pub const EXIT_BERTH_FAILED: u8 = 70;

/// Renewals that fail for now are retried until this long before the lease runs out (a
/// tenth of the lease, at least 2 s), so a renew that finally goes through still finds it.
fn renew_margin(lease_secs: u64) -> Duration {
    Duration::from_secs(lease_secs / 10).max(Duration::from_secs(2))
}

/// What `berth run` does when the lease is lost while the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLeaseLost {
    /// SIGTERM to the command, SIGKILL after `--kill-after`; exit 76.
    Kill,
    /// Say so on stderr and let the command finish; exit with its code.
    Warn,
}

/// `berth run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let request = &args.request;
    let client = match request.client.client() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("berth: {err:#}");
            return Ok(ExitCode::from(EXIT_BERTH_FAILED));
        }
    };
    let owner = request.owner.clone().unwrap_or_else(default_owner);
    let lease = match client
        .acquire_with(&request.pool, &owner, request.options())
        .await
    {
        Ok(lease) => lease,
        Err(err) => {
            eprintln!("berth: {err}");
            let code = if err.is_no_slot() {
                EXIT_NO_SLOT_IN_TIME
            } else {
                EXIT_BERTH_FAILED
            };
            return Ok(ExitCode::from(code));
        }
    };
    eprintln!(
        "berth: holding {} (pool {}) for `{}`",
        lease.slot,
        lease.pool,
        args.command.join(" ")
    );

    let stop_renewing = CancellationToken::new();
    let (lost_tx, lost_rx) = oneshot::channel();
    let renewer = tokio::spawn(keep_renewed(
        client.clone(),
        lease.clone(),
        stop_renewing.clone(),
        lost_tx,
    ));
    let outcome = run_command(&args, &lease, lost_rx).await;
    stop_renewing.cancel();
    let expires = renewer.await.unwrap_or(lease.lease_expires);

    let (status, lost) = match outcome {
        Ok(done) => done,
        Err(err) => {
            release(&client, &lease, expires).await;
            eprintln!("berth: cannot run `{}`: {err}", args.command[0]);
            // As shells do: 127 when the command is not found, 126 when it cannot run.
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitCode::from(code));
        }
    };
    if lost {
        eprintln!(
            "berth: not releasing {}: its lease is no longer ours",
            lease.slot
        );
        if args.on_lease_lost == OnLeaseLost::Kill {
            return Ok(ExitCode::from(EXIT_LEASE_LOST));
        }
    } else {
        release(&client, &lease, expires).await;
    }
    Ok(ExitCode::from(exit_code(status)))
}

/// Releases the slot, retrying until shortly before the lease would run out anyway.
async fn release(client: &Client, lease: &Lease, expires: DateTime<Utc>) {
    let left = (expires - Utc::now()).to_std().unwrap_or_default();
    let client = client
        .clone()
        .retry_for(left.saturating_sub(renew_margin(lease.lease_secs)));
    match client.release(&lease.slot, &lease.lease_token).await {
        Ok(()) => eprintln!("berth: released {}", lease.slot),
        Err(err) => eprintln!(
            "berth: could not release {} ({err}); it comes back when its lease expires at {}",
            lease.slot,
            expires.to_rfc3339()
        ),
    }
}

/// Runs the command with the lease in its environment, forwarding SIGINT and SIGTERM; when
/// `lost` fires, acts as `--on-lease-lost` says. Answers the command's status and whether
/// the lease was lost.
async fn run_command(
    args: &RunArgs,
    lease: &Lease,
    mut lost: oneshot::Receiver<ClientError>,
) -> std::io::Result<(ExitStatus, bool)> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .envs(lease_env(lease))
        .spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let send = |signal: Signal| {
        if let Some(pid) = pid {
            let _ = kill(pid, signal);
        }
    };
    let mut was_lost = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            status = child.wait() => return Ok((status?, was_lost)),
            _ = interrupt.recv() => send(Signal::SIGINT),
            _ = terminate.recv() => send(Signal::SIGTERM),
            err = &mut lost, if !was_lost => {
                was_lost = true;
                let why = err.map(|e| e.to_string()).unwrap_or_else(|_| "renewing stopped".into());
                match args.on_lease_lost {
                    OnLeaseLost::Kill => {
                        eprintln!(
                            "berth: lost the lease of {} ({why}); stopping `{}` (SIGTERM, SIGKILL after {} s)",
                            lease.slot, args.command[0], args.kill_after
                        );
                        send(Signal::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(args.kill_after));
                    }
                    OnLeaseLost::Warn => eprintln!(
                        "berth: lost the lease of {} ({why}); `{}` runs on (--on-lease-lost warn)",
                        lease.slot, args.command[0]
                    ),
                }
            }
            _ = async { tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)).await }, if kill_at.is_some() => {
                eprintln!("berth: `{}` did not stop within {} s; SIGKILL", args.command[0], args.kill_after);
                send(Signal::SIGKILL);
                kill_at = None;
            }
        }
    }
}

/// The code to exit with for the command's status.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

/// Renews the lease every third of its length, for its own length, until `stop`; answers
/// the last `lease_expires`. A renew that fails for now is retried (by the client) until
/// [`renew_margin`] before the lease runs out; a lease found lost (wrong token, not held),
/// or not renewed in time, is reported on `lost` and renewing stops.
async fn keep_renewed(
    client: Client,
    lease: Lease,
    stop: CancellationToken,
    lost: oneshot::Sender<ClientError>,
) -> DateTime<Utc> {
    let period = Duration::from_secs(lease.lease_secs.max(3) / 3);
    let margin = renew_margin(lease.lease_secs);
    let mut expires = lease.lease_expires;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return expires,
            _ = tokio::time::sleep(period) => {}
        }
        let left = (expires - Utc::now()).to_std().unwrap_or_default();
        let renewing = client.clone().retry_for(left.saturating_sub(margin));
        let result = tokio::select! {
            _ = stop.cancelled() => return expires,
            result = renewing.renew(&lease.slot, &lease.lease_token, Some(lease.lease_secs)) => result,
        };
        match result {
            Ok(new_expiry) => expires = new_expiry,
            Err(err) => {
                let _ = lost.send(err);
                return expires;
            }
        }
    }
}
