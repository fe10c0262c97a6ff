//! The whole stack as separate processes, so a test can kill and restart the assigner: the
//! fake Launchpad in-process, one `berth-worker --all` process over it, and `berth assigner`
//! as a child process on a fixed port, logging to a file.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use berth::config::Config;
use berth::fake::{FakeConfig, FakeLaunchpad};

use super::namespace::{config, delete_queues};
use super::process::{Proc, berth_bin, free_port, worker_bin};
use berth_testkit::wait_for;

/// `berth-worker --all` over the configuration in `file`.
fn spawn_workers(file: &std::path::Path) -> Proc {
    Proc(
        Command::new(worker_bin())
            .args(["--all", "--config"])
            .arg(file)
            .env("RUST_LOG", "warn,lapin=error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A running stack in its own namespace.
pub struct Stack {
    pub base: String,
    pub config: Config,
    pub fake: FakeLaunchpad,
    dir: TempDir,
    file: PathBuf,
    log_format: &'static str,
    assigner: Option<Proc>,
    starts: usize,
    workers: Option<Proc>,
}

impl Stack {
    /// `slots` PPAs `ppa-1` … in pool `ppa`; leases as short as `min_lease_secs` allowed;
    /// the assigner logs in `log_format` (`text` or `json`).
    pub async fn start(slots: usize, min_lease_secs: u64, log_format: &'static str) -> Stack {
        Stack::start_tuned(slots, min_lease_secs, log_format, |_, _| {}).await
    }

    /// [`Stack::start`], with `tune` changing the fake Launchpad's and berth's configuration
    /// first.
    pub async fn start_tuned(
        slots: usize,
        min_lease_secs: u64,
        log_format: &'static str,
        tune: impl FnOnce(&mut FakeConfig, &mut Config),
    ) -> Stack {
        let names: Vec<String> = (1..=slots).map(|i| format!("ppa-{i}")).collect();
        let mut fake_config = FakeConfig {
            ppas: slots,
            ..FakeConfig::default()
        };
        let mut config = config(&names.iter().map(String::as_str).collect::<Vec<_>>());
        tune(&mut fake_config, &mut config);
        let fake = FakeLaunchpad::start("127.0.0.1:0".parse().unwrap(), fake_config)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        berth::secret_file::write_secret_file(
            &credentials,
            "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = t\naccess_secret = s\n",
        )
        .unwrap();
        config.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        config.store.api_root = fake.api_root();
        config.store.credentials_file = Some(credentials);
        config.worker.clean_poll_millis = 50;
        config.min_lease_secs = min_lease_secs;
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
        let workers = Some(spawn_workers(&file));
        // HTTPS by the name the test's certificates hold (`support::pki`).
        let base = match config.tls_cert {
            Some(_) => format!("https://localhost:{}", config.listen.port()),
            None => format!("http://{}", config.listen),
        };
        let mut stack = Stack {
            base,
            config,
            fake,
            dir,
            file,
            log_format,
            assigner: None,
            starts: 0,
            workers,
        };
        stack.start_assigner().await;
        stack.wait_all_free(&names).await;
        stack
    }

    /// Waits until the workers have cleaned every slot (new PPAs have no record yet, which
    /// reads as dirty) and freed it.
    async fn wait_all_free(&self, names: &[String]) {
        wait_for("every slot to be free", Duration::from_secs(30), || async {
            let busy: Vec<_> = names
                .iter()
                .filter(|name| {
                    !self
                        .fake
                        .description(name)
                        .is_some_and(|d| d.contains("\"state\":\"free\""))
                })
                .collect();
            if busy.is_empty() {
                Ok(())
            } else {
                Err(format!("not free yet: {busy:?}"))
            }
        })
        .await;
    }

    /// Stops the worker process (SIGTERM) and waits for it to exit, off the test's runtime
    /// (which serves the fake Launchpad the workers call meanwhile).
    pub async fn stop_workers(&mut self) {
        let mut workers = self.workers.take().expect("the workers run");
        let status = tokio::task::spawn_blocking(move || workers.signal_and_wait(Signal::SIGTERM))
            .await
            .unwrap();
        assert!(status.success(), "the workers stop cleanly: {status}");
    }

    /// Starts the worker process again.
    pub fn start_workers(&mut self) {
        assert!(self.workers.is_none(), "the workers are stopped");
        self.workers = Some(spawn_workers(&self.file));
    }

    /// Starts `berth assigner` (again) and waits until it is ready.
    pub async fn start_assigner(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.assigner_log(self.starts)).unwrap();
        let child = Command::new(berth_bin())
            .args(["assigner", "--log-format", self.log_format, "--config"])
            .arg(&self.file)
            .env("RUST_LOG", "info,lapin=warn,amq_protocol=warn")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start berth assigner");
        self.assigner = Some(Proc(child));
        let http = match &self.config.amqp_ca_file {
            // The tests' HTTPS assigners have certificates of the broker's test CA.
            Some(ca) if self.config.tls_cert.is_some() => super::http::https_client(ca),
            _ => reqwest::Client::new(),
        };
        super::http::wait_ready_with(&http, &self.base, Duration::from_secs(15)).await;
    }

    /// Kills the assigner with SIGKILL, as an operator's `kill -9` or a crash would.
    pub fn kill_assigner(&mut self) {
        let mut assigner = self.assigner.take().expect("the assigner runs");
        let status = assigner.signal_and_wait(Signal::SIGKILL);
        assert_eq!(status.code(), None, "killed by a signal");
    }

    /// The process id of the running assigner.
    pub fn assigner_pid(&self) -> Option<i32> {
        self.assigner.as_ref().map(Proc::pid)
    }

    /// The stderr of the assigner's `n`th start (1 for the first).
    pub fn assigner_log(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("assigner-{n}.log"))
    }

    /// A `berth` client command against this stack, with no holder's variables inherited.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut command = Command::new(berth_bin());
        command
            .args(args)
            .env("BERTH_URL", &self.base)
            .env("BERTH", berth_bin())
            .env("RUST_LOG", "warn")
            .env_remove("BERTH_SLOT")
            .env_remove("BERTH_LEASE_TOKEN")
            .env_remove("BERTH_LEASE_SECS")
            .env_remove("BERTH_WAIT")
            .env_remove("BERTH_FORMAT")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_TOKEN_FILE")
            .stdin(Stdio::null());
        command
    }

    /// Stops the assigner (SIGTERM) and the workers, and deletes the test's queues.
    pub async fn stop(mut self) {
        if let Some(mut assigner) = self.assigner.take() {
            let status = assigner.signal_and_wait(Signal::SIGTERM);
            assert!(status.success(), "the assigner stops cleanly: {status}");
        }
        drop(self.workers);
        delete_queues(&self.config).await;
        self.fake.shutdown().await;
    }
}
