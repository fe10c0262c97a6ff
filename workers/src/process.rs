//! A worker process: any number of slot workers as independent tasks over its broker
//! connections (one per [`crate::connection::MAX_CHANNELS_PER_CONNECTION`] slots), stopped
//! together by one cancellation token.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use berth::config::Config;
use berth::store::SlotStore;

use crate::connection;
use crate::options::{SlotSpec, WorkerOptions};
use crate::slot::{self, Slot};

/// Why [`run_slots`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no slots to work")]
    NoSlots,
    #[error("slot {0:?} is named twice")]
    DuplicateSlot(String),
}

/// Runs one slot worker per entry of `slots` until `cancel` fires, then lets each finish the
/// step in hand, settle its messages and close its channel, and returns.
///
/// Broker and store trouble never end it: each slot worker reconnects with backoff and
/// resumes from the store record.
pub async fn run_slots(
    config: Arc<Config>,
    slots: Vec<SlotSpec>,
    store: Arc<dyn SlotStore>,
    options: WorkerOptions,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    if slots.is_empty() {
        return Err(RunError::NoSlots);
    }
    let mut seen = HashSet::new();
    if let Some(twice) = slots.iter().find(|s| !seen.insert(&s.slot)) {
        return Err(RunError::DuplicateSlot(twice.slot.clone()));
    }
    let connectors =
        connection::connectors(&config.amqp_url, &options.connection_name, slots.len());
    let count = slots.len();
    let options = Arc::new(options);
    let tracker = TaskTracker::new();
    for (index, spec) in slots.into_iter().enumerate() {
        let shard = connection::shard_of(index, count, connection::MAX_CHANNELS_PER_CONNECTION);
        let span = tracing::info_span!("slot", pool = %spec.pool, slot = %spec.slot);
        let slot = Slot {
            spec,
            names: config.names(),
            store: store.clone(),
            options: options.clone(),
            cancel: cancel.clone(),
        };
        tracker.spawn(slot::run(slot, connectors[shard].clone()).instrument(span));
    }
    tracker.close();
    tracker.wait().await;
    for connector in &connectors {
        connector.close().await;
    }
    Ok(())
}
