//! Riding out store trouble (DESIGN §3 "Trouble"): the pause before the next try, and the
//! alarm for store errors that no retry fixes.
//!
//! Most store trouble passes by itself (`5xx`, timeouts): back off and try again. Some does
//! not: the store refuses our credentials (`401`/`403`), the PPA is gone (`404`), it rejects
//! the request as such. A slot worker keeps its lock and keeps trying even then — an operator
//! may fix the credentials file or bring the PPA back, and the worker must resume by itself —
//! but it says so loudly, once per episode (not on every try), with what to do, and re-checks
//! only every `backoff_max`.

use std::sync::Arc;
use std::time::Duration;

use berth::backoff::Backoff;
use berth::store::StoreError;

use crate::metrics::Metrics;

/// The kind of store call that failed: the alarm it raised is lowered by the next success of
/// the same kind (a refused write is not fixed by a read that goes through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// Reading the slot record.
    Read,
    /// Writing the slot record.
    Write,
    /// A cleaning's listings and deletions.
    Clean,
}

/// The pauses of one slot worker between store calls that failed, and its alarm.
#[derive(Debug)]
pub(super) struct Retry {
    backoff: Backoff,
    /// The pause while the alarm is up.
    slow: Duration,
    /// The kind of call whose error no retry fixes raised the alarm, while it is up.
    alarm: Option<Call>,
    /// Where failed calls are counted (`berth_worker_store_errors`), under `pool`.
    metrics: Arc<Metrics>,
    pool: String,
}

impl Retry {
    /// Backs off from `min` to `max`; re-checks every `max` while the alarm is up. Counts
    /// failed calls in `metrics` under `pool`.
    pub(super) fn new(min: Duration, max: Duration, metrics: Arc<Metrics>, pool: &str) -> Self {
        Retry {
            backoff: Backoff::new(min, max),
            slow: max,
            alarm: None,
            metrics,
            pool: pool.to_owned(),
        }
    }

    /// Notes a store call of kind `call` that went through: it lowers the alarm that a call
    /// of that kind raised.
    pub(super) fn succeeded(&mut self, call: Call) {
        if self.alarm == Some(call) {
            tracing::info!("the store accepts this slot worker again; resuming");
            self.alarm = None;
        }
    }

    /// Notes a store call of kind `call` that failed with `err`: an error that no retry fixes
    /// raises the alarm, said once at error level until it is lowered.
    pub(super) fn failed(&mut self, call: Call, err: &StoreError) {
        self.metrics.store_error(&self.pool, err);
        if !is_fatal(err) {
            return;
        }
        if self.alarm.is_none() {
            tracing::error!(
                error = %err,
                recheck_every_ms = self.slow.as_millis() as u64,
                "the store refuses this slot worker, and retrying will not help: {}. Until \
                 then the worker keeps the slot lock and re-checks slowly",
                what_to_do(err)
            );
            self.alarm = Some(call);
        } else {
            tracing::debug!(error = %err, "the store still refuses this slot worker");
        }
    }

    /// Notes how a store call of kind `call` went (see [`Retry::succeeded`], [`Retry::failed`]).
    pub(super) fn note<T>(&mut self, call: Call, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.succeeded(call),
            Err(err) => self.failed(call, err),
        }
    }

    /// The pause before trying again after `err`, which the caller has noted: for trouble
    /// that may pass, a warning (`what`) and the next backoff; while the alarm is up, quietly
    /// the slow re-check (the alarm said it all).
    pub(super) fn delay(&mut self, err: &StoreError, what: &str) -> Duration {
        if self.alarm.is_some() && is_fatal(err) {
            return self.slow;
        }
        tracing::warn!(error = %err, "{what}");
        self.backoff.next_delay()
    }

    /// Starts the backoff again from its shortest pause, after a step that went through.
    pub(super) fn reset(&mut self) {
        self.backoff.reset();
    }
}

/// Whether no retry can fix `err` without someone changing something (`412` is no error of
/// that kind: it is answered by re-reading).
fn is_fatal(err: &StoreError) -> bool {
    !err.is_retryable() && !matches!(err, StoreError::Conflict)
}

/// What an operator should look at, for an error that no retry fixes.
fn what_to_do(err: &StoreError) -> &'static str {
    match err {
        StoreError::Unauthorized { .. } => {
            "check the credentials file (store.credentials_file or BERTH_CREDENTIALS); its \
             token must be valid and allowed to change the PPA"
        }
        StoreError::NotFound(_) => {
            "check that the PPA exists and that store.owner (BERTH_STORE_OWNER) names its owner"
        }
        _ => "check store.api_root and store.api_version: the store does not take berth's requests",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_no_retry_fixes_raise_the_alarm() {
        let metrics = Arc::new(Metrics::new(["ppa"]));
        let mut retry = Retry::new(
            Duration::from_millis(10),
            Duration::from_secs(30),
            metrics.clone(),
            "ppa",
        );
        retry.failed(Call::Write, &StoreError::Unavailable { status: 503 });
        retry.failed(Call::Write, &StoreError::Conflict);
        assert_eq!(retry.alarm, None);
        assert!(retry.delay(&StoreError::Transport("reset".into()), "t") < Duration::from_secs(1));

        let refused = StoreError::Unauthorized { status: 401 };
        retry.failed(Call::Write, &refused);
        assert_eq!(retry.alarm, Some(Call::Write));
        assert_eq!(retry.delay(&refused, "t"), Duration::from_secs(30));
        // A read that goes through does not fix a refused write; a write does.
        retry.succeeded(Call::Read);
        assert_eq!(retry.alarm, Some(Call::Write));
        retry.failed(Call::Read, &StoreError::NotFound("ppa-1".into()));
        assert_eq!(retry.alarm, Some(Call::Write), "still the same episode");
        retry.succeeded(Call::Write);
        assert_eq!(retry.alarm, None);

        // Every failed call is counted by kind; a 412 is none.
        let text = metrics.render();
        for line in [
            "berth_worker_store_errors_total{pool=\"ppa\",kind=\"retryable\"} 1",
            "berth_worker_store_errors_total{pool=\"ppa\",kind=\"fatal\"} 2",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
