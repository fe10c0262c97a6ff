//! The flags of `berth-worker` and how they pick the slots to work. Every flag also reads
//! an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use berth::config::{Config, ConfigArgs};
use berth::protocol::valid_name;
use berth::telemetry::LogFormat;

use crate::fake::FakeOptions;
use crate::options::{SlotSpec, WorkerOptions};

/// Environment variable of the crash test hook (see [`WorkerOptions::crash_after_claim`]).
/// For tests only: it makes the process abort between a claim and its reply. Only a build
/// with the feature `test-hooks` (the crate's own tests) reads it.
#[cfg(feature = "test-hooks")]
pub const CRASH_AFTER_CLAIM_ENV: &str = "BERTH_WORKER_TEST_CRASH_AFTER_CLAIM";

/// berth slot workers: each holds one slot's lock, claims assign requests while the slot is
/// free, answers renew and release, takes expired leases back and cleans the slot.
#[derive(Debug, clap::Parser)]
#[command(name = "berth-worker", version, about, long_about = None)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A slot to work (repeatable, or comma-separated in the variable). Its pool comes from
    /// the config; with no pools configured, `--pool` names it.
    #[arg(
        long = "slot",
        value_name = "NAME",
        env = "BERTH_SLOTS",
        value_delimiter = ','
    )]
    pub slots: Vec<String>,
    /// Alone: every slot of this pool in the config. With `--slot`: the pool of those slots.
    #[arg(long, value_name = "POOL", env = "BERTH_POOL")]
    pub pool: Option<String>,
    /// Every slot of every pool in the config.
    #[arg(long, env = "BERTH_ALL_SLOTS", conflicts_with_all = ["slots", "pool"])]
    pub all: bool,
    /// Use an in-memory store instead of Launchpad (to exercise the assigner).
    #[arg(long, env = "BERTH_FAKE")]
    pub fake: bool,
    /// Fake mode: milliseconds a claim takes.
    #[arg(
        long,
        env = "BERTH_FAKE_CLAIM_MS",
        default_value_t = 0,
        requires = "fake"
    )]
    pub fake_claim_ms: u64,
    /// Fake mode: milliseconds a cleaning takes.
    #[arg(
        long,
        env = "BERTH_FAKE_CLEAN_MS",
        default_value_t = 0,
        requires = "fake"
    )]
    pub fake_clean_ms: u64,
    /// Fake mode: share of store calls that fail (0.0 to 1.0).
    #[arg(long, env = "BERTH_FAKE_FAILURE_RATE", default_value_t = 0.0, requires = "fake",
        value_parser = parse_rate)]
    pub fake_failure_rate: f64,
    /// Seconds past a lease's end before the slot is taken back (overrides
    /// `worker.lease_grace_secs`).
    #[arg(long, env = "BERTH_LEASE_GRACE_SECS")]
    pub lease_grace_secs: Option<u64>,
    /// Milliseconds between polls while a cleaning waits for deletions (overrides
    /// `worker.clean_poll_millis`).
    #[arg(long, env = "BERTH_CLEAN_POLL_MS")]
    pub clean_poll_ms: Option<u64>,
    /// Serve `GET /metrics` (OpenMetrics text) here (overrides `worker.metrics_listen`).
    /// The port is a base: the process adds the position of its first slot among the
    /// configured slots (ppa-1 → base, ppa-2 → base + 1, …), so one value serves a process
    /// per slot. Port 0 takes any free port (the log says which).
    #[arg(long, value_name = "ADDR", env = "BERTH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines are written: text for people, json (one object per line) for log
    /// shippers.
    #[arg(long, value_enum, env = "BERTH_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0.0 and 1.0".into())
    }
}

/// Why the flags name no usable set of slots.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("name the slots to work: --slot NAME (repeatable), --pool POOL or --all")]
    Nothing,
    #[error("--all needs pools in the configuration; none are configured")]
    NoPools,
    #[error("unknown pool {pool:?}; configured pools: {known}")]
    UnknownPool { pool: String, known: String },
    #[error("unknown slot {slot:?}; configured slots: {known}")]
    UnknownSlot { slot: String, known: String },
    #[error("slot {slot:?} belongs to pool {actual:?}, not {asked:?}")]
    WrongPool {
        slot: String,
        actual: String,
        asked: String,
    },
    #[error("--slot {0:?} needs --pool: no pools are configured")]
    NoPoolFor(String),
    #[error("invalid name {0:?}: use 1 to 100 ASCII letters, digits, '-' and '_'")]
    InvalidName(String),
    #[error(
        "--metrics-listen {0}: the port plus the first slot's position among the configured slots passes 65535"
    )]
    MetricsPort(SocketAddr),
}

impl WorkerArgs {
    /// The slots these flags name, each with its pool.
    pub fn select_slots(&self, config: &Config) -> Result<Vec<SlotSpec>, SelectError> {
        select_slots(config, &self.slots, self.pool.as_deref(), self.all)
    }

    /// Worker options: the config's `[worker]` section, then these flags (and, built with
    /// the feature `test-hooks`, the crash hook's environment variable).
    pub fn worker_options(&self, config: &Config) -> WorkerOptions {
        let mut options = WorkerOptions::from_config(&config.worker);
        if let Some(secs) = self.lease_grace_secs {
            options.lease_grace = Duration::from_secs(secs);
        }
        if let Some(ms) = self.clean_poll_ms {
            options.clean_poll = Duration::from_millis(ms);
        }
        #[cfg(feature = "test-hooks")]
        {
            options.crash_after_claim =
                std::env::var(CRASH_AFTER_CLAIM_ENV).is_ok_and(|v| v == "1");
        }
        options
    }

    /// Where this process serves its metrics: `--metrics-listen` or `worker.metrics_listen`
    /// as a base, plus the position of the first of `slots` among the configured slots;
    /// `None` when neither is set.
    pub fn metrics_addr(
        &self,
        config: &Config,
        slots: &[SlotSpec],
    ) -> Result<Option<SocketAddr>, SelectError> {
        let Some(base) = self.metrics_listen.or(config.worker.metrics_listen) else {
            return Ok(None);
        };
        let first = slots.first().map(|s| s.slot.as_str()).unwrap_or_default();
        config
            .worker_metrics_addr(base, first)
            .map(Some)
            .ok_or(SelectError::MetricsPort(base))
    }

    pub fn fake_options(&self) -> FakeOptions {
        FakeOptions {
            claim_delay: Duration::from_millis(self.fake_claim_ms),
            clean_delay: Duration::from_millis(self.fake_clean_ms),
            failure_rate: self.fake_failure_rate,
        }
    }
}

/// Picks slots: `all` = every configured slot; `slots` = those (pool from the config, or
/// `pool` when no pools are configured); `pool` alone = every slot of it.
pub fn select_slots(
    config: &Config,
    slots: &[String],
    pool: Option<&str>,
    all: bool,
) -> Result<Vec<SlotSpec>, SelectError> {
    let every = |pools: &[berth::config::PoolConfig]| {
        pools
            .iter()
            .flat_map(|p| {
                p.slots.iter().map(|s| SlotSpec {
                    pool: p.name.clone(),
                    slot: s.clone(),
                })
            })
            .collect::<Vec<_>>()
    };
    if all {
        return if config.pools.is_empty() {
            Err(SelectError::NoPools)
        } else {
            Ok(every(&config.pools))
        };
    }
    if slots.is_empty() {
        let Some(pool) = pool else {
            return Err(SelectError::Nothing);
        };
        let found = config.pool(pool).ok_or_else(|| SelectError::UnknownPool {
            pool: pool.to_owned(),
            known: list(config.pools.iter().map(|p| p.name.as_str())),
        })?;
        return Ok(every(std::slice::from_ref(found)));
    }
    let mut chosen: Vec<SlotSpec> = Vec::new();
    for slot in slots {
        if !valid_name(slot) {
            return Err(SelectError::InvalidName(slot.clone()));
        }
        let spec = if config.pools.is_empty() {
            let pool = pool.ok_or_else(|| SelectError::NoPoolFor(slot.clone()))?;
            if !valid_name(pool) {
                return Err(SelectError::InvalidName(pool.to_owned()));
            }
            SlotSpec {
                pool: pool.to_owned(),
                slot: slot.clone(),
            }
        } else {
            let found = config
                .pool_of(slot)
                .ok_or_else(|| SelectError::UnknownSlot {
                    slot: slot.clone(),
                    known: list(
                        config
                            .pools
                            .iter()
                            .flat_map(|p| p.slots.iter().map(String::as_str)),
                    ),
                })?;
            if let Some(asked) = pool.filter(|asked| *asked != found.name) {
                return Err(SelectError::WrongPool {
                    slot: slot.clone(),
                    actual: found.name.clone(),
                    asked: asked.to_owned(),
                });
            }
            SlotSpec {
                pool: found.name.clone(),
                slot: slot.clone(),
            }
        };
        if !chosen.contains(&spec) {
            chosen.push(spec);
        }
    }
    Ok(chosen)
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pool: &str, slot: &str) -> SlotSpec {
        SlotSpec {
            pool: pool.into(),
            slot: slot.into(),
        }
    }

    #[test]
    fn picks_slots_from_config_or_pool_flag() {
        let config = Config::dev(3);
        let all = select_slots(&config, &[], None, true).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(select_slots(&config, &[], Some("ppa"), false).unwrap(), all);
        assert_eq!(
            select_slots(&config, &["ppa-2".into(), "ppa-2".into()], None, false).unwrap(),
            vec![spec("ppa", "ppa-2")]
        );
        let bare = Config::default();
        assert_eq!(
            select_slots(&bare, &["x-1".into()], Some("px"), false).unwrap(),
            vec![spec("px", "x-1")]
        );
    }

    #[test]
    fn errors_name_what_is_known() {
        let config = Config::dev(2);
        let err = select_slots(&config, &["ppa-9".into()], None, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown slot \"ppa-9\"; configured slots: ppa-1, ppa-2"
        );
        let err = select_slots(&config, &[], Some("nope"), false).unwrap_err();
        assert!(err.to_string().contains("configured pools: ppa"), "{err}");
        let err = select_slots(&config, &["ppa-1".into()], Some("other"), false).unwrap_err();
        assert!(matches!(err, SelectError::WrongPool { .. }), "{err}");
        assert_eq!(
            select_slots(&config, &[], None, false),
            Err(SelectError::Nothing)
        );
        let bare = Config::default();
        assert_eq!(
            select_slots(&bare, &[], None, true),
            Err(SelectError::NoPools)
        );
        assert!(matches!(
            select_slots(&bare, &["x".into()], None, false),
            Err(SelectError::NoPoolFor(_))
        ));
        assert!(matches!(
            select_slots(&bare, &["a b".into()], Some("p"), false),
            Err(SelectError::InvalidName(_))
        ));
    }
}
