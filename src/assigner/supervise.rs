//! Supervision (`supervise = true`, and `berth dev`): one `berth-worker` child process per
//! configured slot, restarted with backoff when it exits, stopped with SIGTERM when the
//! assigner stops.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::Config;

/// How long a worker may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A worker that ran this long is considered healthy: its next restart starts from the
/// shortest backoff again.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The running worker processes.
pub struct Supervisor {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Where the worker binary is: `BERTH_WORKER_BIN`, else `berth-worker` next to this binary.
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BERTH_WORKER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::current_exe()?.with_file_name("berth-worker");
    if !path.exists() {
        anyhow::bail!(
            "cannot supervise workers: {} does not exist; build it (`cargo build --workspace --bins`) \
             or name it with BERTH_WORKER_BIN",
            path.display()
        );
    }
    Ok(path)
}

impl Supervisor {
    /// Starts one worker per slot of `config`. Each is given `config_file` (if any) and, through
    /// the environment, the values of `config` that flags may have overridden.
    pub fn start(config: &Config, config_file: Option<PathBuf>) -> anyhow::Result<Supervisor> {
        let binary = worker_binary()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        for pool in &config.pools {
            for slot in &pool.slots {
                let mut command = Command::new(&binary);
                if let Some(file) = &config_file {
                    command.arg("--config").arg(file);
                }
                command
                    .arg("--slot")
                    .arg(slot)
                    .env("BERTH_AMQP_URL", config.broker_url())
                    .env("BERTH_NAMESPACE", &config.namespace)
                    .env("BERTH_STORE_URL", &config.store.api_root)
                    .env("BERTH_STORE_OWNER", &config.store.owner)
                    // Selection variables of the worker that the assigner's environment
                    // might carry (e.g. `BERTH_POOL` of a CI job); the flags above decide.
                    .env_remove("BERTH_POOL")
                    .env_remove("BERTH_SLOTS")
                    .env_remove("BERTH_ALL_SLOTS")
                    .env_remove("BERTH_FAKE")
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                if let Some(ca_file) = &config.amqp_ca_file {
                    command.env("BERTH_AMQP_CA_FILE", ca_file);
                }
                if let Some(credentials) = &config.store.credentials_file {
                    command.env("BERTH_CREDENTIALS", credentials);
                }
                tracker.spawn(watch(slot.clone(), command, cancel.clone()));
            }
        }
        tracker.close();
        Ok(Supervisor { cancel, tracker })
    }

    /// Stops every worker (SIGTERM, then SIGKILL after a grace period) and waits for them.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

/// Keeps one worker running until `cancel` fires.
async fn watch(slot: String, mut command: Command, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !cancel.is_cancelled() {
        let started = tokio::time::Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                tracing::error!(slot, error = %err, "cannot start the worker");
                if pause(&mut backoff, &cancel).await {
                    continue;
                }
                return;
            }
        };
        tracing::info!(slot, pid = child.id(), "worker started");
        tokio::select! {
            status = child.wait() => {
                match status {
                    Ok(status) => tracing::warn!(slot, %status, "worker exited; restarting it"),
                    Err(err) => tracing::warn!(slot, error = %err, "lost track of the worker; restarting it"),
                }
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                if !pause(&mut backoff, &cancel).await {
                    return;
                }
            }
            _ = cancel.cancelled() => {
                stop_child(&slot, &mut child).await;
                return;
            }
        }
    }
}

/// Waits for the next backoff delay; `false` if cancelled meanwhile.
async fn pause(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

/// SIGTERM, a grace period, then SIGKILL.
pub(crate) async fn stop_child(slot: &str, child: &mut Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(slot, %status, "worker stopped"),
        _ => {
            tracing::warn!(slot, "worker did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}
