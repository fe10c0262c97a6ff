//! A worker process: any number of slot workers as independent tasks over its broker
//! connections (one per [`connection::MAX_CHANNELS_PER_CONNECTION`] slots), one pool
//! feed per pool ([`crate::amqp::feed`]), all stopped together by one cancellation token.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use berth::backoff::Backoff;
use berth::config::Config;
use berth::store::SlotStore;

use crate::amqp::feed::Feed;
use crate::amqp::{connection, lock};
use crate::metrics::Metrics;
use crate::options::{SlotSpec, WorkerOptions};
use crate::slot::{self, Slot};

/// Why [`run_slots`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no slots to work")]
    NoSlots,
    #[error("slot {0:?} is named twice")]
    DuplicateSlot(String),
    #[error(transparent)]
    Config(#[from] berth::config::ConfigError),
}

/// Runs one slot worker per entry of `slots` until `cancel` fires, then lets each finish the
/// step in hand, settle its messages and close its channel, and returns. What they do is
/// counted in `metrics` (see [`Metrics::new`]: make it for the pools of `slots`).
///
/// Broker and store trouble never end it: each slot worker reconnects with backoff and
/// resumes from the store record.
pub async fn run_slots(
    config: Arc<Config>,
    slots: Vec<SlotSpec>,
    store: Arc<dyn SlotStore>,
    options: WorkerOptions,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    if slots.is_empty() {
        return Err(RunError::NoSlots);
    }
    let mut seen = HashSet::new();
    if let Some(twice) = slots.iter().find(|s| !seen.insert(&s.slot)) {
        return Err(RunError::DuplicateSlot(twice.slot.clone()));
    }
    let tls = config.broker_tls()?;
    let connectors = connection::connectors(
        &config.broker_urls(),
        &tls,
        &options.connection_name,
        slots.len(),
        &metrics,
    );
    let count = slots.len();
    let options = Arc::new(options);
    let names = config.names();
    // One feed per pool, on the connection of the pool's first slot worker.
    let mut feeds: HashMap<String, Arc<Feed>> = HashMap::new();
    for (index, spec) in slots.iter().enumerate() {
        let shard = connection::shard_of(index, count, connection::MAX_CHANNELS_PER_CONNECTION);
        feeds.entry(spec.pool.clone()).or_insert_with(|| {
            Arc::new(Feed::new(
                &spec.pool,
                names.clone(),
                connectors[shard].clone(),
            ))
        });
    }
    // The feeds stop consuming with `cancel`, and close their channels only once every slot
    // worker is done (`closing`): a slot worker settles its request through them.
    let closing = CancellationToken::new();
    let feed_tasks = TaskTracker::new();
    for (pool, feed) in &feeds {
        let span = tracing::info_span!("feed", pool = %pool);
        let backoff = Backoff::new(options.backoff_min, options.backoff_max);
        let run = feed.clone().run(backoff, cancel.clone(), closing.clone());
        feed_tasks.spawn(run.instrument(span));
    }
    feed_tasks.close();
    let tracker = TaskTracker::new();
    let lock_turns = Arc::new(Semaphore::new(lock::LOCKING_AT_ONCE));
    for (index, spec) in slots.into_iter().enumerate() {
        let shard = connection::shard_of(index, count, connection::MAX_CHANNELS_PER_CONNECTION);
        let span = tracing::info_span!("slot", pool = %spec.pool, slot = %spec.slot);
        let feed = feeds[&spec.pool].clone();
        let slot = Slot::new(
            spec,
            names.clone(),
            store.clone(),
            options.clone(),
            feed,
            metrics.clone(),
            cancel.clone(),
        );
        let run = slot::run(slot, connectors[shard].clone(), lock_turns.clone());
        tracker.spawn(run.instrument(span));
    }
    tracker.close();
    tracker.wait().await;
    closing.cancel();
    feed_tasks.wait().await;
    for connector in &connectors {
        connector.close().await;
    }
    Ok(())
}
