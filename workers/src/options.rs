//! What a slot worker is told: which slot, and how patient to be.

use std::time::Duration;

use berth::config::WorkerConfig;

/// One slot to work, and the pool it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotSpec {
    pub pool: String,
    pub slot: String,
}

/// Tunables of slot workers. [`WorkerOptions::from_config`] takes them from the `[worker]`
/// section; tests shorten them.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How long past `lease_expires` a used slot waits before it is taken back.
    pub lease_grace: Duration,
    /// Pause between polls while waiting for deletions to finish.
    pub clean_poll: Duration,
    /// One cleaning attempt gives up after this long (then backs off and retries).
    pub clean_timeout: Duration,
    /// Shortest and longest pause between retries after broker or store trouble.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often a standby worker tries to take a slot lock that another worker holds.
    pub standby_retry: Duration,
    /// How often a disabled slot's record is re-read.
    pub disabled_poll: Duration,
    /// Name of the AMQP connection, as shown in the broker's management UI.
    pub connection_name: String,
    /// FOR TESTS ONLY (feature `test-hooks`): abort the process right after a claim is
    /// written to the store and before the reply is sent, to prove that a crash in that
    /// window loses nothing.
    #[cfg(feature = "test-hooks")]
    pub crash_after_claim: bool,
}

impl WorkerOptions {
    pub fn from_config(config: &WorkerConfig) -> Self {
        WorkerOptions {
            lease_grace: Duration::from_secs(config.lease_grace_secs),
            clean_poll: Duration::from_millis(config.clean_poll_millis),
            clean_timeout: Duration::from_secs(config.clean_timeout_secs),
            backoff_min: Duration::from_millis(config.backoff_min_millis),
            backoff_max: Duration::from_millis(config.backoff_max_millis),
            standby_retry: Duration::from_secs(1),
            disabled_poll: Duration::from_secs(10),
            connection_name: "berth-worker".into(),
            #[cfg(feature = "test-hooks")]
            crash_after_claim: false,
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions::from_config(&WorkerConfig::default())
    }
}
