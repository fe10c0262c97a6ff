//! End-to-end helpers: a fake Launchpad process, a config file naming it, and
//! `berth-worker` processes with their logs in files.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use berth::config::Config;
use berth::record::SlotState;
use berth::store::slot::{SlotView, read_slot};
use berth::store::{LaunchpadStore, SlotStore};

use super::fake::FakeLaunchpad;
use super::{wait_for, wait_state};

/// One test's world: a fake Launchpad, a namespace, a config file, a scratch directory.
pub struct World {
    pub launchpad: FakeLaunchpad,
    pub config: Config,
    pub config_path: PathBuf,
    /// The credentials, the config file and the workers' logs; removed with the world.
    pub dir: TempDir,
    /// A read-only client of the fake, to look at records as anyone would.
    pub store: Arc<dyn SlotStore>,
}

impl World {
    /// A fake Launchpad with `ppas` PPAs (`ppa-1`…) in pool `ppa`, deletions taking 100 ms.
    pub async fn start(ppas: usize) -> World {
        World::start_with(ppas, Duration::from_millis(100)).await
    }

    /// The same, with deletions taking `deletion_delay`.
    pub async fn start_with(ppas: usize, deletion_delay: Duration) -> World {
        let slots: Vec<String> = (1..=ppas).map(|i| format!("ppa-{i}")).collect();
        let slot_refs: Vec<&str> = slots.iter().map(String::as_str).collect();
        let mut config = super::config(&slot_refs);
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-worker-{}-", config.namespace))
            .tempdir()
            .unwrap();
        let credentials = dir.path().join("credentials");
        berth::secret_file::write_secret_file(
            &credentials,
            "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = TOKEN\naccess_secret = SECRET\n",
        )
        .unwrap();
        let launchpad = FakeLaunchpad::start(ppas, deletion_delay, &credentials).await;
        config.store.api_root = launchpad.api_root();
        config.store.credentials_file = Some(credentials);
        config.store.timeout_secs = 5;
        config.worker.lease_grace_secs = 0;
        config.worker.clean_poll_millis = 100;
        config.worker.backoff_min_millis = 50;
        config.worker.backoff_max_millis = 1000;
        let config_path = dir.path().join("berth.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let store = Arc::new(
            LaunchpadStore::new(
                &launchpad.api_root(),
                "devel",
                "berth-ci",
                None,
                Duration::from_secs(5),
            )
            .unwrap(),
        );
        World {
            launchpad,
            config,
            config_path,
            dir,
            store,
        }
    }

    /// Starts `berth-worker --slot …` with `env` added.
    pub fn worker(&self, name: &str, slots: &[&str], env: &[(&str, &str)]) -> Worker {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth-worker"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        for slot in slots {
            command.args(["--slot", slot]);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("berth-worker starts");
        Worker {
            child,
            log,
            name: name.to_owned(),
        }
    }

    pub async fn slot(&self, slot: &str) -> SlotView {
        read_slot(&*self.store, slot).await.unwrap()
    }

    pub async fn wait_state(&self, slot: &str, state: SlotState) -> SlotView {
        wait_state(&*self.store, slot, state, Duration::from_secs(20)).await
    }

    /// Live (`Pending`/`Published`) uploads of `ppa`.
    pub async fn live_uploads(&self, ppa: &str) -> usize {
        let mut n = 0;
        for status in berth::store::LIVE_STATUSES {
            n += self
                .store
                .published_sources(ppa, status)
                .await
                .unwrap()
                .len();
        }
        n
    }

    /// How many times `ppa` went into `used` (renewals rewrite a used record; not counted).
    pub async fn claims(&self, ppa: &str) -> usize {
        let states = self
            .launchpad
            .history()
            .await
            .into_iter()
            .filter(|w| w.ppa == ppa)
            .map(|w| {
                berth::record::parse_description(&w.description)
                    .record
                    .map(|r| r.state)
            });
        let mut previous = None;
        let mut claims = 0;
        for state in states {
            if state == Some(SlotState::Used) && previous != Some(SlotState::Used) {
                claims += 1;
            }
            previous = state;
        }
        claims
    }

    pub async fn finish(self) {
        self.launchpad.shutdown().await;
    }
}

/// A running `berth-worker` process.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Worker {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    pub async fn wait_log(&self, needle: &str) {
        wait_for(
            &format!("{:?} in the log of {}", needle, self.name),
            Duration::from_secs(20),
            || async {
                let logs = self.logs();
                if logs.contains(needle) {
                    Ok(())
                } else {
                    Err(format!("log so far:\n{logs}"))
                }
            },
        )
        .await
    }

    /// Sends `signal` (`STOP`, `CONT`, …) with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("worker still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, and the exit status (within 20 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit after SIGTERM; log:\n{}",
                    self.name,
                    self.logs()
                )
            })
            .unwrap()
    }

    /// Waits for the process to end by itself.
    pub async fn exited(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} is still running; log:\n{}", self.name, self.logs()))
            .unwrap()
    }
}
