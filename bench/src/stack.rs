//! The stack under test: the fake Launchpad in the bench process (deletions at once), the
//! assigner as a separate `berth assigner` process and the slot workers as `berth-worker`
//! processes, all on one generated configuration in a fresh namespace.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use berth::config::{Config, PoolConfig, QueueType};
use berth::fake::{FakeConfig, FakeLaunchpad};

/// The pools of a bench run: two of PPAs on the fake Launchpad (real worker mode) and two
/// of in-memory slots (fake worker mode).
#[derive(Debug, Clone)]
pub(crate) struct Pools {
    pub(crate) small: usize,
    pub(crate) large: usize,
    pub(crate) scale_base: usize,
    pub(crate) scale: usize,
}

pub(crate) const SMALL: &str = "small";
pub(crate) const LARGE: &str = "large";
pub(crate) const SCALE_BASE: &str = "scalebase";
pub(crate) const SCALE: &str = "scale";
/// PPAs of the fake Launchpad that the floor writes to, past the slots' PPAs.
pub(crate) const FLOOR_PPAS: usize = 16;

impl Pools {
    /// The PPA slots: `ppa-1` … of the small pool, then those of the large pool.
    pub(crate) fn ppa_slots(&self) -> usize {
        self.small + self.large
    }

    fn config(&self) -> Vec<PoolConfig> {
        let ppas = |from: usize, n: usize| (from..from + n).map(|i| format!("ppa-{i}")).collect();
        let named = |prefix: &str, n: usize| (1..=n).map(|i| format!("{prefix}-{i}")).collect();
        let pools = vec![
            PoolConfig {
                name: SMALL.into(),
                slots: ppas(1, self.small),
            },
            PoolConfig {
                name: LARGE.into(),
                slots: ppas(1 + self.small, self.large),
            },
            PoolConfig {
                name: SCALE_BASE.into(),
                slots: named("sb", self.scale_base),
            },
            PoolConfig {
                name: SCALE.into(),
                slots: named("sc", self.scale),
            },
        ];
        // A run that needs only some pools sets the others to 0 slots.
        pools.into_iter().filter(|p| !p.slots.is_empty()).collect()
    }
}

/// A child process, killed (SIGKILL) when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) started: Instant,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails if the process has exited already (it logged why).
    pub(crate) fn check_alive(&mut self, what: &str, log: &Path) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            anyhow::bail!("{what} exited with {status}; see {}", log.display());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident and peak resident memory of a process, in MiB (Linux `/proc`).
pub(crate) fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The broker a stack runs on: the URL (or a comma-separated list of a cluster's nodes), the
/// CA file of an `amqps://` broker, and the type of berth's durable queues.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Broker<'a> {
    pub(crate) url: &'a str,
    pub(crate) ca_file: Option<&'a Path>,
    pub(crate) queue_type: QueueType,
}

impl<'a> Broker<'a> {
    /// A broker of classic queues, without a CA file of its own.
    pub(crate) fn classic(url: &'a str) -> Self {
        Broker {
            url,
            ca_file: None,
            queue_type: QueueType::Classic,
        }
    }

    /// A connection to the first node of the list that answers, named `name`.
    pub(crate) async fn connect(&self, name: &str) -> anyhow::Result<lapin::Connection> {
        let tls = match self.ca_file {
            Some(path) => berth::broker::BrokerTls::with_ca_file(path)?,
            None => berth::broker::BrokerTls::system_roots(),
        };
        let connected = berth::cluster::Brokers::from_list(self.url, tls)
            .connect(name)
            .await
            .context("cannot connect to the broker")?;
        Ok(connected.connection)
    }
}

/// The fake Launchpad and the configuration the processes share.
pub(crate) struct Stack {
    pub(crate) fake: FakeLaunchpad,
    pub(crate) config: Config,
    pub(crate) dir: PathBuf,
    config_file: PathBuf,
    bin_dir: PathBuf,
    pub(crate) base: String,
}

impl Stack {
    pub(crate) async fn start(
        broker: Broker<'_>,
        namespace: &str,
        pools: &Pools,
        bin_dir: &Path,
    ) -> anyhow::Result<Stack> {
        for bin in ["berth", "berth-worker"] {
            let path = bin_dir.join(bin);
            anyhow::ensure!(
                path.exists(),
                "{} is missing: build with `cargo build --release --workspace --bins`",
                path.display()
            );
        }
        let fake = FakeLaunchpad::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            FakeConfig {
                ppas: pools.ppa_slots() + FLOOR_PPAS,
                ..FakeConfig::default()
            },
        )
        .await?;
        let dir = std::env::temp_dir().join(format!("berth-bench-{namespace}"));
        std::fs::create_dir_all(&dir)?;
        let credentials = dir.join("credentials");
        berth::secret_file::write_secret_file(
            &credentials,
            "[1]\nconsumer_key = berth-bench\nconsumer_secret =\naccess_token = bench-token\naccess_secret = bench-secret\n",
        )?;
        let listen = free_port()?;
        let mut config = Config {
            amqp_url: broker.url.to_owned(),
            amqp_ca_file: broker.ca_file.map(Path::to_path_buf),
            queue_type: broker.queue_type,
            namespace: namespace.to_owned(),
            listen,
            pools: pools.config(),
            ..Config::default()
        };
        config.store.api_root = fake.api_root();
        config.store.credentials_file = Some(credentials);
        config.worker.clean_poll_millis = 100;
        config.worker.lease_grace_secs = 0;
        config.validate()?;
        let config_file = dir.join("berth.toml");
        std::fs::write(&config_file, toml::to_string(&config)?)?;
        Ok(Stack {
            fake,
            base: format!("http://{listen}"),
            config,
            dir,
            config_file,
            bin_dir: bin_dir.to_owned(),
        })
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn spawn(
        &self,
        bin: &str,
        args: &[&str],
        log: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Proc> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(log))?;
        let mut command = Command::new(self.bin_dir.join(bin));
        command
            .args(args)
            .env("BERTH_CONFIG", &self.config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The generated file says it all: no override from the bench's own environment.
        for (key, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("BERTH_") && k != "BERTH_CONFIG")
        {
            command.env_remove(key);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        Ok(Proc { child, started })
    }

    /// `berth assigner` on the configured address.
    pub(crate) fn assigner(&self) -> anyhow::Result<Proc> {
        self.spawn("berth", &["assigner"], "assigner", &[])
    }

    /// One `berth-worker` process working every PPA slot (real store mode, on the fake
    /// Launchpad).
    pub(crate) fn ppa_workers(&self) -> anyhow::Result<Proc> {
        let slots: Vec<&str> = [SMALL, LARGE]
            .iter()
            .filter_map(|p| self.config.pool(p))
            .flat_map(|p| p.slots.iter().map(String::as_str))
            .collect();
        self.spawn(
            "berth-worker",
            &[],
            "workers-ppa",
            &[("BERTH_SLOTS", slots.join(","))],
        )
    }

    /// One `berth-worker --fake` process working every slot of `pool`.
    pub(crate) fn fake_workers(&self, pool: &str) -> anyhow::Result<Proc> {
        self.fake_workers_env(pool, &[])
    }

    /// [`Stack::fake_workers`] with `env` set on the process (over the configuration).
    pub(crate) fn fake_workers_env(
        &self,
        pool: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Proc> {
        self.spawn(
            "berth-worker",
            &["--fake", "--pool", pool],
            &format!("workers-{pool}"),
            env,
        )
    }

    /// Every slot name of the configuration.
    pub(crate) fn all_slots(&self) -> impl Iterator<Item = &str> {
        self.config
            .pools
            .iter()
            .flat_map(|p| p.slots.iter().map(String::as_str))
    }
}

/// A port free right now on 127.0.0.1 (the assigner binds it again on every restart).
fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}

/// How long to wait for a process to come up.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(120);
