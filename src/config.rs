//! Configuration: a TOML file (`--config`, `BERTH_CONFIG`) whose every value a flag or an
//! environment variable may override. An invalid file is refused at start with the file, the
//! key and what was wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default broker: the local RabbitMQ with its stock account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default namespace of queue and exchange names.
pub const DEFAULT_NAMESPACE: &str = "berth";

/// The whole configuration of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// AMQP URL of the broker (`BERTH_AMQP_URL`): one node. Kept for one-node deployments;
    /// it is the one-element form of `amqp_urls`, and may also be a comma-separated list.
    /// `amqps://` connects with TLS and checks the broker's certificate against the system's
    /// roots and `amqp_ca_file`.
    pub amqp_url: String,
    /// AMQP URLs of the nodes of a RabbitMQ cluster, tried in order: every process connects
    /// to the first node that answers and, when it loses it, to the next (DESIGN §3
    /// "Cluster"). When set, `amqp_url` must be left at its default. A comma-separated
    /// `BERTH_AMQP_URL` sets this list.
    pub amqp_urls: Vec<String>,
    /// PEM file of CA certificates that an `amqps://` broker's certificate may chain to,
    /// besides the system's roots (`BERTH_AMQP_CA_FILE`).
    pub amqp_ca_file: Option<PathBuf>,
    /// AMQP heartbeat in seconds, unless the URL sets `?heartbeat=`: a stalled or cut-off
    /// process loses its connection, and a slot worker its slot lock, after about two.
    pub heartbeat_secs: u16,
    /// Prefix of every queue and exchange name (`BERTH_NAMESPACE`).
    pub namespace: String,
    /// The type of berth's durable queues: `classic` (one node) or `quorum` (replicated; for a cluster).
    #[serde(default)]
    pub queue_type: QueueType,
    /// Where the assigner listens (`BERTH_LISTEN`).
    pub listen: SocketAddr,
    /// PEM certificate chain of the assigner: with `tls_key`, it serves HTTPS instead of
    /// HTTP (`BERTH_TLS_CERT`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`; refused when others may read it (`BERTH_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// Start and watch one `berth-worker` process per configured slot.
    pub supervise: bool,
    /// Lease given when a client names none.
    pub default_lease_secs: u64,
    /// The shortest lease a client may ask for: a lease must outlast the store round trips
    /// that hand it out and take it back.
    pub min_lease_secs: u64,
    /// The longest lease a client may ask for.
    pub max_lease_secs: u64,
    /// How long an acquire waits when the client names no `wait_secs`.
    pub default_wait_secs: u64,
    /// The longest an acquire may wait.
    pub max_wait_secs: u64,
    /// How long the history stream keeps events (`x-max-age`: a number and one of `Y`, `M`,
    /// `D`, `h`, `m`, `s`; default `30D`). Every process declares the stream with it, so set
    /// it alike everywhere; an existing stream keeps the value it was declared with (change
    /// it with a RabbitMQ policy).
    pub history_max_age: String,
    /// The history stream's size cap in bytes (`x-max-length-bytes`), whichever comes first.
    pub history_max_bytes: u64,
    /// Who may ask the assigner, and how much (DESIGN §4 "Clients and roles").
    pub auth: crate::access::AuthConfig,
    /// The most messages the dead-letter queue `<ns>.dead.v2` keeps (`x-max-length`; the
    /// oldest go first). Set it alike everywhere: an existing queue keeps the bound it was
    /// declared with, and a declare with another one is refused (the log says what to run).
    pub dead_letter_max_length: u64,
    pub store: StoreConfig,
    pub worker: WorkerConfig,
    /// The pools and their slots.
    pub pools: Vec<PoolConfig>,
}

/// The type of berth's durable queues (`queue_type`), defined with the names it shapes.
pub use crate::protocol::QueueType;
use crate::protocol::valid_name;

/// Where the slots' state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Root of the Launchpad web service, without the version (`BERTH_STORE_URL`).
    pub api_root: String,
    /// API version segment.
    pub api_version: String,
    /// The Launchpad person or team that owns the PPAs (`BERTH_STORE_OWNER`).
    pub owner: String,
    /// launchpadlib credentials file, needed for writes (`BERTH_CREDENTIALS`).
    pub credentials_file: Option<PathBuf>,
    /// Timeout of every store call.
    pub timeout_secs: u64,
}

/// How workers behave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// How long past `lease_expires` a used slot waits before it is taken back.
    pub lease_grace_secs: u64,
    /// Pause between polls while waiting for deletions to finish.
    pub clean_poll_millis: u64,
    /// Give up one cleaning attempt after this long (then back off and retry).
    pub clean_timeout_secs: u64,
    /// First and longest pause between retries after a failure.
    pub backoff_min_millis: u64,
    pub backoff_max_millis: u64,
    /// Where each worker process serves `GET /metrics` (`BERTH_METRICS_LISTEN`); none when
    /// unset. The port is a base: a process adds the position of its first slot among the
    /// configured slots ([`Config::worker_metrics_addr`]), so that one value serves a process
    /// per slot. Port 0 takes any free port.
    pub metrics_listen: Option<SocketAddr>,
}

/// One pool of interchangeable slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Slot names; for PPAs, the PPA names.
    pub slots: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_urls: Vec::new(),
            amqp_ca_file: None,
            heartbeat_secs: crate::broker::DEFAULT_HEARTBEAT_SECS,
            namespace: DEFAULT_NAMESPACE.into(),
            queue_type: QueueType::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            supervise: false,
            default_lease_secs: 3600,
            min_lease_secs: 30,
            max_lease_secs: 7 * 24 * 3600,
            default_wait_secs: 60,
            max_wait_secs: 3600,
            history_max_age: crate::protocol::DEFAULT_HISTORY_MAX_AGE.into(),
            history_max_bytes: crate::protocol::DEFAULT_HISTORY_MAX_BYTES,
            auth: crate::access::AuthConfig::default(),
            dead_letter_max_length: crate::protocol::DEFAULT_DEAD_LETTER_MAX_LENGTH,
            store: StoreConfig::default(),
            worker: WorkerConfig::default(),
            pools: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            api_root: "http://127.0.0.1:8081/".into(),
            api_version: "devel".into(),
            owner: "berth-ci".into(),
            credentials_file: None,
            timeout_secs: 10,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease_grace_secs: 30,
            clean_poll_millis: 1000,
            clean_timeout_secs: 600,
            backoff_min_millis: 200,
            backoff_max_millis: 30_000,
            metrics_listen: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration{}: key `{key}`: {message}", origin(.path))]
    Invalid {
        path: Option<PathBuf>,
        key: String,
        message: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

impl Config {
    /// Reads and checks a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: Some(path.to_owned()),
                key,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Reads the file if one is named, else starts from the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::from_file(path),
            None => Ok(Config::default()),
        }
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| {
            Err(ConfigError::Invalid {
                path: None,
                key,
                message: message.to_owned(),
            })
        };
        if !valid_name(&self.namespace) {
            return invalid("namespace".into(), NAME_RULE);
        }
        if !self.amqp_urls.is_empty() && self.amqp_url != DEFAULT_AMQP_URL {
            return invalid(
                "amqp_urls".into(),
                "set either amqp_url (one node) or amqp_urls (the nodes of a cluster), not both",
            );
        }
        let key = if self.amqp_urls.is_empty() {
            "amqp_url"
        } else {
            "amqp_urls"
        };
        let urls = self.amqp_url_list();
        if urls.is_empty() {
            return invalid(key.into(), "must name at least one broker");
        }
        for (i, url) in urls.iter().enumerate() {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                let key = if urls.len() == 1 {
                    key.to_owned()
                } else {
                    format!("{key}[{i}]")
                };
                return invalid(key, "must start with amqp:// or amqps://");
            }
        }
        if !(self.store.api_root.starts_with("http://")
            || self.store.api_root.starts_with("https://"))
        {
            return invalid(
                "store.api_root".into(),
                "must be an http:// or https:// URL",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid(
                if self.tls_cert.is_some() {
                    "tls_key"
                } else {
                    "tls_cert"
                }
                .into(),
                "tls_cert and tls_key go together (HTTPS needs both)",
            );
        }
        if self.store.owner.is_empty() {
            return invalid(
                "store.owner".into(),
                "must name the Launchpad owner of the PPAs",
            );
        }
        if self.store.timeout_secs == 0 {
            return invalid("store.timeout_secs".into(), "must be at least 1");
        }
        if self.heartbeat_secs == 0 {
            return invalid(
                "heartbeat_secs".into(),
                "must be at least 1 (without heartbeats a stalled worker keeps its slot lock)",
            );
        }
        if self.min_lease_secs == 0 || self.min_lease_secs > self.max_lease_secs {
            return invalid(
                "min_lease_secs".into(),
                "must be between 1 and max_lease_secs",
            );
        }
        if self.default_lease_secs < self.min_lease_secs
            || self.default_lease_secs > self.max_lease_secs
        {
            return invalid(
                "default_lease_secs".into(),
                "must be between min_lease_secs and max_lease_secs",
            );
        }
        if !valid_max_age(&self.history_max_age) {
            return invalid(
                "history_max_age".into(),
                "must be a number and one unit of Y, M, D, h, m, s (RabbitMQ's x-max-age), e.g. 30D",
            );
        }
        if self.history_max_bytes == 0 {
            return invalid("history_max_bytes".into(), "must be at least 1");
        }
        if self.dead_letter_max_length == 0 || i64::try_from(self.dead_letter_max_length).is_err() {
            return invalid(
                "dead_letter_max_length".into(),
                "must be between 1 and 2^63 - 1",
            );
        }
        if self.default_wait_secs > self.max_wait_secs {
            return invalid("default_wait_secs".into(), "must not exceed max_wait_secs");
        }
        if self.worker.backoff_min_millis == 0
            || self.worker.backoff_min_millis > self.worker.backoff_max_millis
        {
            return invalid(
                "worker.backoff_min_millis".into(),
                "must be at least 1 and not exceed worker.backoff_max_millis",
            );
        }
        let mut seen_slots = std::collections::HashSet::new();
        let mut seen_pools = std::collections::HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if !valid_name(&pool.name) {
                return invalid(format!("pools[{i}].name"), NAME_RULE);
            }
            if !seen_pools.insert(&pool.name) {
                return invalid(
                    format!("pools[{i}].name"),
                    "names a pool that is already defined",
                );
            }
            if pool.slots.is_empty() {
                return invalid(format!("pools[{i}].slots"), "must list at least one slot");
            }
            for (j, slot) in pool.slots.iter().enumerate() {
                if !valid_name(slot) {
                    return invalid(format!("pools[{i}].slots[{j}]"), NAME_RULE);
                }
                if !seen_slots.insert(slot) {
                    return invalid(
                        format!("pools[{i}].slots[{j}]"),
                        "names a slot that is already in a pool; a slot belongs to one pool",
                    );
                }
            }
        }
        if let Err((key, message)) = self.auth.validate(
            |pool| self.pool(pool).is_some(),
            (self.min_lease_secs, self.max_lease_secs),
        ) {
            return invalid(key, &message);
        }
        if let Some(base) = self.worker.metrics_listen
            && usize::from(base.port()) + seen_slots.len().saturating_sub(1) > 65535
        {
            return invalid(
                "worker.metrics_listen".into(),
                "its port plus the number of configured slots passes 65535 (each worker process adds its first slot's position)",
            );
        }
        Ok(())
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The pool that slot `slot` belongs to.
    pub fn pool_of(&self, slot: &str) -> Option<&PoolConfig> {
        self.pools
            .iter()
            .find(|p| p.slots.iter().any(|s| s == slot))
    }

    /// Where the worker process whose first slot is `slot` serves its metrics, given the base
    /// address `base` (`worker.metrics_listen`): the base port plus the position of `slot`
    /// among the configured slots (pools in order, from 0), so `ppa-1` … `ppa-4` of the only
    /// pool get 9400 … 9403 from `127.0.0.1:9400`. A slot not in the configuration, and port
    /// 0 (any free port), add nothing. `None` if the port would pass 65535.
    pub fn worker_metrics_addr(&self, base: SocketAddr, slot: &str) -> Option<SocketAddr> {
        if base.port() == 0 {
            return Some(base);
        }
        let position = self
            .pools
            .iter()
            .flat_map(|p| p.slots.iter())
            .position(|s| s == slot)
            .unwrap_or(0);
        let port = u16::try_from(usize::from(base.port()) + position).ok()?;
        Some(SocketAddr::new(base.ip(), port))
    }

    /// The brokers as configured: `amqp_urls`, or else `amqp_url` (one URL, or several
    /// separated by commas), without blanks.
    pub fn amqp_url_list(&self) -> Vec<String> {
        if self.amqp_urls.is_empty() {
            split_urls(&self.amqp_url)
        } else {
            self.amqp_urls
                .iter()
                .map(|url| url.trim().to_owned())
                .filter(|url| !url.is_empty())
                .collect()
        }
    }

    /// The broker URLs to connect with, in order ([`Config::amqp_url_list`]), each with
    /// `heartbeat=<heartbeat_secs>` added when the URL does not set a heartbeat itself.
    pub fn broker_urls(&self) -> Vec<String> {
        self.amqp_url_list()
            .iter()
            .map(|url| with_heartbeat(url, self.heartbeat_secs))
            .collect()
    }

    /// [`Config::broker_urls`] joined by commas: the `BERTH_AMQP_URL` of a child process.
    pub fn broker_url(&self) -> String {
        self.broker_urls().join(",")
    }

    /// How `amqps://` connections check the broker: the system's roots and `amqp_ca_file`,
    /// read now (a missing or empty CA file is refused at start).
    pub fn broker_tls(&self) -> Result<crate::broker::BrokerTls, ConfigError> {
        match &self.amqp_ca_file {
            None => Ok(crate::broker::BrokerTls::system_roots()),
            Some(path) => {
                crate::broker::BrokerTls::with_ca_file(path).map_err(|err| ConfigError::Invalid {
                    path: None,
                    key: "amqp_ca_file".into(),
                    message: err.to_string(),
                })
            }
        }
    }

    /// The names object for this deployment's namespace.
    pub fn names(&self) -> crate::protocol::Names {
        crate::protocol::Names::new(self.namespace.clone())
            .with_history(self.history_max_age.clone(), self.history_max_bytes)
            .with_dead_letter_max_length(self.dead_letter_max_length)
            .with_queue_type(self.queue_type)
    }

    /// The configuration `berth dev` runs: one pool `ppa` of `slots` PPAs.
    pub fn dev(slots: usize) -> Config {
        Config {
            pools: vec![PoolConfig {
                name: "ppa".into(),
                slots: (1..=slots).map(|i| format!("ppa-{i}")).collect(),
            }],
            ..Config::default()
        }
    }
}

/// `url` with `heartbeat=<secs>` added unless it sets a heartbeat itself.
fn with_heartbeat(url: &str, secs: u16) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.split('&').any(|pair| pair.starts_with("heartbeat=")) {
        return url.to_owned();
    }
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}heartbeat={secs}")
}

/// The URLs of a comma-separated list (`BERTH_AMQP_URL`), without blanks. A comma inside a
/// URL (a password) is written `%2C`.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

const NAME_RULE: &str = "must be 1 to 100 characters of ASCII letters, digits, '-' and '_' (it becomes part of AMQP names)";

/// Whether `value` is an `x-max-age` RabbitMQ accepts: digits, then one unit letter.
fn valid_max_age(value: &str) -> bool {
    let Some(unit) = value.chars().last() else {
        return false;
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    "YMDhms".contains(unit)
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn full_file_parses() {
        let (_d, path) = write(
            r#"
            namespace = "ci"
            listen = "0.0.0.0:9000"
            [store]
            owner = "team"
            [[pools]]
            name = "ppa"
            slots = ["ppa-1", "ppa-2"]
            "#,
        );
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.namespace, "ci");
        assert_eq!(c.pool("ppa").unwrap().slots.len(), 2);
        assert_eq!(c.pool_of("ppa-2").unwrap().name, "ppa");
        assert_eq!(c.store.api_version, "devel");
    }

    #[test]
    fn errors_name_file_and_key() {
        let (_d, path) = write("[[pools]]\nname = \"p\"\nslots = [\"a b\"]\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(
            msg.contains("berth.toml") && msg.contains("pools[0].slots[0]"),
            "{msg}"
        );

        let (_d, path) = write("namespce = \"x\"\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(
            msg.contains("berth.toml") && msg.contains("namespce"),
            "{msg}"
        );

        let (_d, path) = write("max_wait_secs = \"long\"\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("max_wait_secs"), "{msg}");
    }

    #[test]
    fn the_heartbeat_goes_into_the_url_unless_it_sets_one() {
        let mut c = Config::default();
        assert_eq!(
            c.broker_url(),
            format!(
                "{DEFAULT_AMQP_URL}?heartbeat={}",
                crate::broker::DEFAULT_HEARTBEAT_SECS
            )
        );
        c.heartbeat_secs = 3;
        c.amqp_url = "amqp://h:5672/%2f?frame_max=8192".into();
        assert_eq!(
            c.broker_url(),
            "amqp://h:5672/%2f?frame_max=8192&heartbeat=3"
        );
        c.amqp_url = "amqp://h:5672/%2f?heartbeat=1".into();
        assert_eq!(c.broker_url(), c.amqp_url);
        c.heartbeat_secs = 0;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("heartbeat_secs"), "{msg}");
    }

    #[test]
    fn a_broker_list_comes_from_amqp_urls_or_a_comma_separated_amqp_url() {
        let one = Config::default();
        assert_eq!(one.amqp_url_list(), vec![DEFAULT_AMQP_URL.to_owned()]);
        let (_d, path) = write(
            "amqp_urls = [\"amqp://a:5672/%2f\", \"amqp://b:5672/%2f?heartbeat=2\"]\nqueue_type = \"quorum\"\n",
        );
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(
            c.broker_urls(),
            vec![
                "amqp://a:5672/%2f?heartbeat=10".to_owned(),
                "amqp://b:5672/%2f?heartbeat=2".to_owned()
            ]
        );
        assert_eq!(
            c.broker_url(),
            "amqp://a:5672/%2f?heartbeat=10,amqp://b:5672/%2f?heartbeat=2"
        );
        // The environment's list replaces the file's.
        let mut env = c.clone();
        ConfigArgs {
            amqp_url: Some("amqp://x/%2f, amqp://y/%2f".into()),
            ..ConfigArgs::default()
        }
        .apply(&mut env);
        assert_eq!(env.amqp_url_list(), vec!["amqp://x/%2f", "amqp://y/%2f"]);
        env.validate().unwrap();
        // A child's BERTH_AMQP_URL reads back as the same list.
        let mut child = Config::default();
        ConfigArgs {
            amqp_url: Some(c.broker_url()),
            ..ConfigArgs::default()
        }
        .apply(&mut child);
        assert_eq!(child.broker_urls(), c.broker_urls());

        let (_d, path) = write("amqp_url = \"amqp://a/%2f\"\namqp_urls = [\"amqp://b/%2f\"]\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("amqp_urls"), "{msg}");
        let (_d, path) = write("amqp_urls = [\"amqp://a/%2f\", \"http://b/\"]\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("amqp_urls[1]"), "{msg}");
        let (_d, path) = write("queue_type = \"mirrored\"\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("queue_type"), "{msg}");
        assert_eq!(Config::default().queue_type, QueueType::Classic);
    }

    #[test]
    fn leases_below_the_minimum_are_refused_as_defaults() {
        let mut c = Config::default();
        c.default_lease_secs = c.min_lease_secs - 1;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("default_lease_secs"), "{msg}");
        c.min_lease_secs = 1;
        c.validate().unwrap();
    }

    #[test]
    fn history_max_age_takes_rabbitmqs_syntax() {
        for good in ["30D", "1Y", "12h", "90s", "2M"] {
            assert!(valid_max_age(good), "{good}");
        }
        for bad in ["", "D", "30", "30d ", "-1D", "0D", "30 D", "1.5D", "30Dx"] {
            assert!(!valid_max_age(bad), "{bad:?}");
        }
        let config = Config {
            history_max_age: "thirty days".into(),
            ..Config::dev(1)
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("history_max_age"), "{err}");
        assert_eq!(Config::dev(1).names().history_max_age(), "30D");
    }

    #[test]
    fn queue_type_is_classic_unless_the_file_says_quorum() {
        assert_eq!(Config::default().queue_type, QueueType::Classic);
        let (_d, path) = write("queue_type = \"quorum\"\n");
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.names().queue_type(), QueueType::Quorum);
        let (_d, path) = write("queue_type = \"fast\"\n");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains("queue_type"), "{msg}");
    }

    #[test]
    fn duplicate_slot_is_refused() {
        let mut c = Config::dev(2);
        c.pools.push(PoolConfig {
            name: "other".into(),
            slots: vec!["ppa-1".into()],
        });
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("pools[1].slots[0]"), "{msg}");
    }

    #[test]
    fn each_worker_process_adds_its_first_slots_position_to_the_metrics_port() {
        let mut c = Config::dev(3);
        let base: SocketAddr = "127.0.0.1:9400".parse().unwrap();
        let port = |slot| c.worker_metrics_addr(base, slot).unwrap().port();
        assert_eq!(
            (port("ppa-1"), port("ppa-3"), port("other")),
            (9400, 9402, 9400)
        );
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(c.worker_metrics_addr(any, "ppa-3"), Some(any));
        c.worker.metrics_listen = Some("127.0.0.1:65534".parse().unwrap());
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("worker.metrics_listen"), "{msg}");
        c.worker.metrics_listen = Some(base);
        c.validate().unwrap();
    }
}

/// The flags (and environment variables) that every command reading the configuration takes.
/// Each one overrides the same value of the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "BERTH_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// AMQP URL of the RabbitMQ broker (`amqps://` for TLS), or the comma-separated URLs of a
    /// cluster's nodes. Passwords are never shown.
    #[arg(long, env = "BERTH_AMQP_URL", global = true, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// PEM file of CA certificates an `amqps://` broker's certificate may chain to (besides
    /// the system's roots).
    #[arg(long, env = "BERTH_AMQP_CA_FILE", global = true)]
    pub amqp_ca_file: Option<PathBuf>,
    /// Prefix of every queue and exchange name; lets several deployments share a broker.
    #[arg(long, env = "BERTH_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// Root URL of the Launchpad web service (without the `devel/` version).
    #[arg(long, env = "BERTH_STORE_URL", global = true, hide_env_values = true)]
    pub store_url: Option<String>,
    /// Launchpad person or team owning the PPAs.
    #[arg(long, env = "BERTH_STORE_OWNER", global = true)]
    pub store_owner: Option<String>,
    /// launchpadlib credentials file used to sign writes.
    #[arg(long, env = "BERTH_CREDENTIALS", global = true)]
    pub credentials: Option<PathBuf>,
}

impl ConfigArgs {
    /// Reads the file (or the defaults), applies the overrides and checks the result.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        self.apply(&mut config);
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: self.config.clone(),
                key,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Applies the overrides to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.amqp_url {
            // One URL or a comma-separated list: either way it replaces the file's brokers.
            config.amqp_url = DEFAULT_AMQP_URL.into();
            config.amqp_urls = split_urls(v);
        }
        if let Some(v) = &self.amqp_ca_file {
            config.amqp_ca_file = Some(v.clone());
        }
        if let Some(v) = &self.namespace {
            config.namespace = v.clone();
        }
        if let Some(v) = &self.store_url {
            config.store.api_root = v.clone();
        }
        if let Some(v) = &self.store_owner {
            config.store.owner = v.clone();
        }
        if let Some(v) = &self.credentials {
            config.store.credentials_file = Some(v.clone());
        }
    }
}
