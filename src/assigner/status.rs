//! `GET /v1/slots` and `GET /v1/pools`: the slots' state from ONE bulk read of the store
//! (cached for a couple of seconds and shared by concurrent requests), plus queue depth and
//! consumer count from the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::record::{Drain, SlotState};
use crate::store::slot::SlotView;
use crate::store::{SlotStore, StoreError};

/// How long one bulk read serves status requests.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// One slot as `GET /v1/slots` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct SlotStatus {
    pub(crate) slot: String,
    pub(crate) pool: String,
    /// `free`, `used`, `dirty`, `disabled`, `missing` when the store has no such resource,
    /// or `unknown` when a newer berth wrote the record (left alone).
    pub(crate) state: String,
    pub(crate) owner: Option<String>,
    /// When the current holder got the slot.
    pub(crate) held_since: Option<DateTime<Utc>>,
    pub(crate) lease_expires: Option<DateTime<Utc>>,
    /// A disable waits for the slot to come back (drain).
    pub(crate) draining: bool,
    pub(crate) touched: Option<DateTime<Utc>>,
    pub(crate) clean_failures: u32,
    pub(crate) last_error: Option<String>,
    /// Why the slot is disabled or draining, as the operator said.
    pub(crate) disabled_reason: Option<String>,
}

impl SlotStatus {
    /// A row of `slot` in `pool` said to be in `state` with nothing else known: a slot the
    /// store has no resource for (`missing`), or whose state is not shown (`unknown`).
    pub(crate) fn bare(slot: &str, pool: &str, state: &str) -> SlotStatus {
        SlotStatus {
            slot: slot.to_owned(),
            pool: pool.to_owned(),
            state: state.to_owned(),
            owner: None,
            held_since: None,
            lease_expires: None,
            draining: false,
            touched: None,
            clean_failures: 0,
            last_error: None,
            disabled_reason: None,
        }
    }
}

/// One slot as `GET /v1/slots/{slot}` shows it, read from the store for the request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct SlotDetail {
    pub(crate) slot: String,
    pub(crate) pool: String,
    /// `free`, `used`, `dirty`, `disabled`, or `unknown` when a newer berth wrote the record.
    pub(crate) state: String,
    pub(crate) owner: Option<String>,
    pub(crate) held_since: Option<DateTime<Utc>>,
    pub(crate) lease_expires: Option<DateTime<Utc>>,
    pub(crate) touched: Option<DateTime<Utc>>,
    pub(crate) clean_failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) disabled_reason: Option<String>,
    pub(crate) disabled_by: Option<String>,
    pub(crate) disabled_since: Option<DateTime<Utc>>,
    /// A pending disable (drain): the slot becomes `disabled` after its next cleaning.
    pub(crate) drain: Option<Drain>,
    /// The version of a record a newer berth wrote (`state` is then `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record_version: Option<u64>,
}

impl SlotDetail {
    pub(crate) fn new(slot: &str, pool: &str, view: SlotView) -> SlotDetail {
        let record = view.record;
        let base = SlotDetail {
            slot: slot.to_owned(),
            pool: pool.to_owned(),
            state: "unknown".into(),
            owner: None,
            held_since: None,
            lease_expires: None,
            touched: None,
            clean_failures: 0,
            last_error: None,
            disabled_reason: None,
            disabled_by: None,
            disabled_since: None,
            drain: None,
            record_version: view.newer,
        };
        if let Some(version) = view.newer {
            return SlotDetail {
                last_error: Some(format!(
                    "the record was written by a newer berth (version {version}); this one leaves the slot alone"
                )),
                ..base
            };
        }
        SlotDetail {
            state: record.state.as_str().to_owned(),
            owner: record.owner,
            held_since: record.held_since,
            lease_expires: record.lease_expires,
            touched: Some(record.touched),
            clean_failures: record.clean_failures,
            last_error: record.last_error,
            disabled_reason: record.disabled_reason,
            disabled_by: record.disabled_by,
            disabled_since: record.disabled_since,
            drain: record.drain,
            ..base
        }
    }
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
    /// Held across the store read, so concurrent requests share one read. The instant is
    /// when the read began.
    cached: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// A read begun before this instant is stale: this assigner changed a slot since
    /// (a grant, a release), and its quotas must see it.
    stale_before: std::sync::Mutex<Option<Instant>>,
}

impl StatusCache {
    pub(crate) fn new(store: Arc<dyn SlotStore>, config: Arc<Config>) -> Self {
        StatusCache {
            store,
            config,
            cached: Mutex::new(None),
            stale_before: std::sync::Mutex::new(None),
        }
    }

    /// The slots, read at most [`FRESH_FOR`] ago.
    pub(crate) async fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        self.read(|_| true).await
    }

    /// Makes the next snapshot a new read: this assigner has just changed a slot.
    pub(crate) fn invalidate(&self) {
        *self.stale_before.lock().expect("not poisoned") = Some(Instant::now());
    }

    /// The slots, from a read begun at or after `since`: it sees every write made before
    /// `since`. Concurrent callers share one read.
    pub(crate) async fn snapshot_since(&self, since: Instant) -> Result<Arc<Snapshot>, StoreError> {
        self.read(|started| started >= since).await
    }

    /// The cached snapshot if it is younger than [`FRESH_FOR`], begun after the last
    /// [`Self::invalidate`] and `good` for the caller; else a new read.
    async fn read(&self, good: impl Fn(Instant) -> bool) -> Result<Arc<Snapshot>, StoreError> {
        let mut cached = self.cached.lock().await;
        let stale_before = *self.stale_before.lock().expect("not poisoned");
        if let Some((at, snapshot)) = cached.as_ref()
            && at.elapsed() < FRESH_FOR
            && stale_before.is_none_or(|stale| *at > stale)
            && good(*at)
        {
            return Ok(Arc::clone(snapshot));
        }
        let started = Instant::now();
        let archives = self.store.archives().await?;
        let now = Utc::now();
        let mut slots = Vec::new();
        for pool in &self.config.pools {
            for slot in &pool.slots {
                let status = match archives.iter().find(|a| &a.name == slot) {
                    Some(archive) => {
                        let view = SlotView::from_archive(archive.clone(), now);
                        let detail = SlotDetail::new(slot, &pool.name, view);
                        SlotStatus {
                            slot: slot.clone(),
                            pool: pool.name.clone(),
                            state: detail.state,
                            owner: detail.owner,
                            held_since: detail.held_since,
                            lease_expires: detail.lease_expires,
                            draining: detail.drain.is_some(),
                            touched: detail.touched,
                            clean_failures: detail.clean_failures,
                            last_error: detail.last_error,
                            disabled_reason: detail
                                .disabled_reason
                                .or(detail.drain.map(|drain| drain.reason)),
                        }
                    }
                    None => SlotStatus {
                        last_error: Some(format!(
                            "the store has no resource named {slot:?} for owner {:?}",
                            self.config.store.owner
                        )),
                        ..SlotStatus::bare(slot, &pool.name, "missing")
                    },
                };
                slots.push(status);
            }
        }
        let snapshot = Arc::new(Snapshot { as_of: now, slots });
        *cached = Some((started, Arc::clone(&snapshot)));
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
    /// Slots whose record a newer berth wrote (left alone by this one).
    pub(crate) unknown: usize,
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
        unknown: 0,
        waiting: None,
        consumers: None,
    };
    for slot in snapshot.slots.iter().filter(|s| s.pool == pool) {
        status.slots += 1;
        match slot.state.as_str() {
            s if s == SlotState::Free.as_str() => status.free += 1,
            s if s == SlotState::Used.as_str() => status.used += 1,
            s if s == SlotState::Disabled.as_str() => status.disabled += 1,
            s if s == SlotState::Dirty.as_str() || s == "missing" => status.dirty += 1,
            _ => status.unknown += 1,
        }
    }
    status
}

/// The slots `client` holds in `snapshot`: used, with a recorded owner naming it.
pub(crate) fn held_by<'a>(
    snapshot: &'a Snapshot,
    client: &'a str,
) -> impl Iterator<Item = &'a SlotStatus> {
    snapshot.slots.iter().filter(move |s| {
        s.state == SlotState::Used.as_str()
            && s.owner
                .as_deref()
                .is_some_and(|owner| crate::access::client_of_owner(owner) == client)
    })
}
