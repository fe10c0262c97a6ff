//! `berth run --pool P -- CMD…`: acquire a slot, keep its lease renewed, run CMD with the slot
//! in its environment, forward SIGINT/SIGTERM to it, release the slot on every way out, and
//! exit with CMD's code (128 + signal when a signal killed it).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientError, Lease};
use super::output::lease_env;
use super::{RunArgs, default_owner, fail};

/// `berth run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let acquire = &args.acquire;
    let client = Client::new(&acquire.client.url);
    let owner = acquire.owner.clone().unwrap_or_else(default_owner);
    let lease = match client
        .acquire(&acquire.pool, &owner, acquire.lease, acquire.wait)
        .await
    {
        Ok(lease) => lease,
        Err(err) => return Ok(fail(&err)),
    };
    eprintln!(
        "berth: holding {} (pool {}) for `{}`",
        lease.slot,
        lease.pool,
        args.command.join(" ")
    );
    let lease_secs = acquire
        .lease
        .unwrap_or_else(|| (lease.lease_expires - Utc::now()).num_seconds().max(1) as u64);

    let stop_renewing = CancellationToken::new();
    let renewer = tokio::spawn(keep_renewed(
        client.clone(),
        lease.clone(),
        lease_secs,
        stop_renewing.clone(),
    ));
    let outcome = run_command(&args.command, &lease).await;
    stop_renewing.cancel();
    let _ = renewer.await;

    match client.release(&lease.slot, &lease.lease_token).await {
        Ok(()) => eprintln!("berth: released {}", lease.slot),
        Err(err) => eprintln!(
            "berth: could not release {} ({err}); it comes back when its lease expires at {}",
            lease.slot,
            lease.lease_expires.to_rfc3339()
        ),
    }
    match outcome {
        Ok(status) => Ok(ExitCode::from(exit_code(status))),
        Err(err) => {
            eprintln!("berth: cannot run `{}`: {err}", args.command[0]);
            // As shells do: 127 when the command is not found, 126 when it cannot run.
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            Ok(ExitCode::from(code))
        }
    }
}

/// Runs the command with the lease in its environment, forwarding SIGINT and SIGTERM.
async fn run_command(command: &[String], lease: &Lease) -> std::io::Result<ExitStatus> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .envs(lease_env(lease))
        .spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    loop {
        let forward = tokio::select! {
            status = child.wait() => return status,
            _ = interrupt.recv() => Signal::SIGINT,
            _ = terminate.recv() => Signal::SIGTERM,
        };
        if let Some(pid) = pid {
            let _ = kill(pid, forward);
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

/// Renews the lease every third of its length until `stop`. A failed renew is retried
/// sooner; a lost lease (wrong token, not held) is reported once and renewing stops.
async fn keep_renewed(client: Client, lease: Lease, lease_secs: u64, stop: CancellationToken) {
    let period = Duration::from_secs(lease_secs.max(3) / 3);
    let mut next = period;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        match client
            .renew(&lease.slot, &lease.lease_token, Some(lease_secs))
            .await
        {
            Ok(_) => next = period,
            Err(
                err @ ClientError::Api {
                    status: 403 | 409, ..
                },
            ) => {
                eprintln!("berth: lost the lease of {}: {err}", lease.slot);
                return;
            }
            Err(err) => {
                eprintln!(
                    "berth: could not renew the lease of {} ({err}); retrying",
                    lease.slot
                );
                next = (period / 4).max(Duration::from_secs(1));
            }
        }
    }
}
