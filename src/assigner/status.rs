//! `GET /v1/slots` and `GET /v1/pools`: the slots' state from ONE bulk read of the store
//! (cached for a couple of seconds and shared by concurrent requests), plus queue depth and
//! consumer count from the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::record::SlotState;
use crate::store::slot::SlotView;
use crate::store::{SlotStore, StoreError};

/// How long one bulk read serves status requests.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// One slot as `GET /v1/slots` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct SlotStatus {
    pub(crate) slot: String,
    pub(crate) pool: String,
    /// `free`, `used`, `dirty`, `disabled`, or `missing` when the store has no such resource.
    pub(crate) state: String,
    pub(crate) owner: Option<String>,
    pub(crate) lease_expires: Option<DateTime<Utc>>,
    pub(crate) touched: Option<DateTime<Utc>>,
    pub(crate) clean_failures: u32,
    pub(crate) last_error: Option<String>,
}

/// The slots of every configured pool, as of one store read.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Snapshot {
    pub(crate) as_of: DateTime<Utc>,
    pub(crate) slots: Vec<SlotStatus>,
}

/// A cached view of the store.
pub(crate) struct StatusCache {
    store: Arc<dyn SlotStore>,
    config: Arc<Config>,
    /// Held across the store read, so concurrent requests share one read.
    cached: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl StatusCache {
    pub(crate) fn new(store: Arc<dyn SlotStore>, config: Arc<Config>) -> Self {
        StatusCache {
            store,
            config,
            cached: Mutex::new(None),
        }
    }

    /// The slots, read at most [`FRESH_FOR`] ago.
    pub(crate) async fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, snapshot)) = cached.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Arc::clone(snapshot));
        }
        let archives = self.store.archives().await?;
        let now = Utc::now();
        let mut slots = Vec::new();
        for pool in &self.config.pools {
            for slot in &pool.slots {
                let status = match archives.iter().find(|a| &a.name == slot) {
                    Some(archive) => {
                        let record = SlotView::from_archive(archive.clone(), now).record;
                        SlotStatus {
                            slot: slot.clone(),
                            pool: pool.name.clone(),
                            state: record.state.as_str().to_owned(),
                            owner: record.owner,
                            lease_expires: record.lease_expires,
                            touched: Some(record.touched),
                            clean_failures: record.clean_failures,
                            last_error: record.last_error,
                        }
                    }
                    None => SlotStatus {
                        slot: slot.clone(),
                        pool: pool.name.clone(),
                        state: "missing".into(),
                        owner: None,
                        lease_expires: None,
                        touched: None,
                        clean_failures: 0,
                        last_error: Some(format!(
                            "the store has no resource named {slot:?} for owner {:?}",
                            self.config.store.owner
                        )),
                    },
                };
                slots.push(status);
            }
        }
        let snapshot = Arc::new(Snapshot { as_of: now, slots });
        *cached = Some((Instant::now(), Arc::clone(&snapshot)));
        Ok(snapshot)
    }
}

/// One pool as `GET /v1/pools` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct PoolStatus {
    pub(crate) pool: String,
    pub(crate) slots: usize,
    pub(crate) free: usize,
    pub(crate) used: usize,
    pub(crate) dirty: usize,
    pub(crate) disabled: usize,
    /// Assign requests queued for the pool (`null` when the broker could not be asked).
    pub(crate) waiting: Option<u32>,
    /// Consumers of the pool's queue: worker processes with at least one free slot.
    pub(crate) consumers: Option<u32>,
}

/// Counts the slots of `pool` by state.
pub(crate) fn pool_counts(snapshot: &Snapshot, pool: &str) -> PoolStatus {
    let mut status = PoolStatus {
        pool: pool.to_owned(),
        slots: 0,
        free: 0,
        used: 0,
        dirty: 0,
        disabled: 0,
        waiting: None,
        consumers: None,
    };
    for slot in snapshot.slots.iter().filter(|s| s.pool == pool) {
        status.slots += 1;
        match slot.state.as_str() {
            s if s == SlotState::Free.as_str() => status.free += 1,
            s if s == SlotState::Used.as_str() => status.used += 1,
            s if s == SlotState::Disabled.as_str() => status.disabled += 1,
            _ => status.dirty += 1,
        }
    }
    status
}
