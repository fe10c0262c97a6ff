//! Cleaning a slot (DESIGN §3 "Clean (PPA)"): ask for the deletion of every live source
//! publication, poll until none is left, then mark the slot free. A failed attempt is
//! counted in the record (`clean_failures`, `last_error`) and retried after a pause that
//! grows with the count, so the backoff survives a worker restart.
//!
//! A deletion cannot be undone and is no compare-and-swap, so each one is fenced
//! ([`Fence`]): right before it, the record is read again and must still carry this worker's
//! lock epoch and say dirty, and only a publication created before that read is deleted. A
//! worker that took the slot over must have written its epoch after the read, so whatever its
//! holders upload later is newer than the read, even if this worker stalls right after it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use berth::protocol::EventKind;
use berth::record::{SlotRecord, SlotState, now};
use berth::store::slot::read_slot;
use berth::store::{LIVE_STATUSES, SlotStore, StoreError};

use super::control::Along;
use super::retry::Call;
use super::{Flow, Session, Trouble};

/// Why one cleaning attempt failed.
#[derive(Debug, thiserror::Error)]
enum CleanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{left} publication(s) still live after {waited:?}")]
    Timeout { left: usize, waited: Duration },
    /// The record carries another worker's lock epoch: the slot was taken over.
    #[error("the slot was taken over (lock epoch {found})")]
    Fenced { found: u64 },
    /// The record no longer says dirty (an operator, or this worker before a restart).
    #[error("the slot is no longer dirty")]
    NotDirty,
}

/// The check before each deletion of a cleaning: the record, read again, must still carry
/// `epoch` and say dirty.
struct Fence {
    store: Arc<dyn SlotStore>,
    slot: String,
    epoch: u64,
}

impl Fence {
    /// Reads the record and checks it. Answers the instant just before the read: a
    /// publication created before it cannot belong to anyone who got the slot from a worker
    /// that took it over, since that worker's epoch was not in the record yet.
    async fn check(&self) -> Result<DateTime<Utc>, CleanError> {
        let cutoff = Utc::now();
        let record = read_slot(&*self.store, &self.slot).await?.record;
        if record.epoch != self.epoch {
            return Err(CleanError::Fenced {
                found: record.epoch,
            });
        }
        if record.state != SlotState::Dirty {
            return Err(CleanError::NotDirty);
        }
        Ok(cutoff)
    }
}

/// Longest `last_error` kept in the record (which is public, and one line).
const MAX_ERROR_LEN: usize = 200;

/// Deletes every live publication of the fenced slot's archive and waits until the store
/// shows none. Each deletion is preceded by a [`Fence::check`], and a publication created
/// after that check is left for the next round. Answers how many deletions were asked for.
async fn empty_archive(
    fence: Fence,
    poll: Duration,
    timeout: Duration,
) -> Result<usize, CleanError> {
    let store = &fence.store;
    let name = &fence.slot;
    let started = tokio::time::Instant::now();
    let mut requested = HashSet::new();
    loop {
        let mut live = Vec::new();
        for status in LIVE_STATUSES {
            live.extend(store.published_sources(name, status).await?);
        }
        if live.is_empty() {
            return Ok(requested.len());
        }
        for source in &live {
            if requested.contains(&source.self_link) {
                continue;
            }
            let cutoff = fence.check().await?;
            if source.date_created.is_none_or(|created| created >= cutoff) {
                tracing::info!(package = %source.source_package_name,
                    version = %source.source_package_version,
                    created = ?source.date_created,
                    "a publication newer than this cleaning's check; not deleting it in this round");
                continue;
            }
            tracing::debug!(package = %source.source_package_name,
                version = %source.source_package_version, "requesting deletion");
            store.request_deletion(&source.self_link).await?;
            requested.insert(source.self_link.clone());
        }
        if started.elapsed() >= timeout {
            return Err(CleanError::Timeout {
                left: live.len(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// The pause after the `failures`-th failed attempt: doubling from `min`, capped at `max`.
fn retry_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    min.saturating_mul(1 << doublings).min(max)
}

impl Session<'_> {
    /// One cleaning attempt of a dirty slot, answering control messages meanwhile.
    pub(super) async fn clean(&mut self) -> Result<Flow, Trouble> {
        let started = tokio::time::Instant::now();
        let options = &self.slot.options;
        tracing::info!(
            failures = self.view.record.clean_failures,
            "dirty; cleaning"
        );
        let fence = Fence {
            store: self.slot.store.clone(),
            slot: self.slot.spec.slot.clone(),
            epoch: self.epoch,
        };
        let work = empty_archive(fence, options.clean_poll, options.clean_timeout);
        let result = match self.alongside_control(work).await? {
            Along::Done(result) => result,
            Along::Stopped => return Ok(Flow::Stop),
            // An action changed the record or asked to clean again: decide afresh.
            Along::Interrupted => return Ok(Flow::Continue),
        };
        match &result {
            Ok(_) => self.retry.succeeded(Call::Clean),
            Err(CleanError::Store(err)) => self.retry.failed(Call::Clean, err),
            Err(_) => {}
        }
        match result {
            Err(CleanError::Fenced { found }) => Err(Trouble::Fenced {
                ours: self.epoch,
                found,
            }),
            Err(CleanError::NotDirty) => {
                self.reread().await?;
                Ok(Flow::Continue)
            }
            Ok(deleted) => {
                let drain = self.view.record.drain.clone();
                let freed = self
                    .transition(|current| {
                        (current.state == SlotState::Dirty).then(|| current.after_clean(now()))
                    })
                    .await?;
                if freed {
                    let took = started.elapsed();
                    self.slot.metrics.cleaned(&self.slot.spec.pool, took);
                    self.events.emit(EventKind::Cleaned, None).await;
                    if self.view.record.state == SlotState::Disabled {
                        tracing::info!(deleted, "cleaned; the slot is disabled, as a drain asked");
                        let drain = self.view.record.drain.clone().or(drain);
                        self.events
                            .emit_action(
                                EventKind::Disabled,
                                None,
                                self.view.record.disabled_by.as_deref(),
                                drain.as_ref().map(|d| d.reason.as_str()),
                            )
                            .await;
                    } else {
                        tracing::info!(deleted, "cleaned; the slot is free");
                    }
                }
                Ok(Flow::Continue)
            }
            Err(err) => self.clean_failed(&err).await,
        }
    }

    async fn clean_failed(&mut self, err: &CleanError) -> Result<Flow, Trouble> {
        // The record is public (a PPA description): no credentials, and short.
        let message = berth::redact::public_error(&err.to_string(), MAX_ERROR_LEN);
        let counted = self
            .transition(|current| {
                (current.state == SlotState::Dirty).then(|| SlotRecord {
                    clean_failures: current.clean_failures.saturating_add(1),
                    last_error: Some(message.clone()),
                    touched: now(),
                    ..current.clone()
                })
            })
            .await?;
        if !counted {
            return Ok(Flow::Continue);
        }
        self.slot.metrics.clean_failed(&self.slot.spec.pool);
        let failures = self.view.record.clean_failures;
        let options = &self.slot.options;
        let delay = retry_delay(failures, options.backoff_min, options.backoff_max);
        tracing::warn!(error = %message, failures, retry_in_ms = delay.as_millis() as u64, "cleaning failed");
        self.events.emit(EventKind::CleanFailed, None).await;
        match self.alongside_control(tokio::time::sleep(delay)).await? {
            Along::Done(()) | Along::Interrupted => Ok(Flow::Continue),
            Along::Stopped => Ok(Flow::Stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth::store::MemoryStore;

    #[test]
    fn retry_delay_doubles_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(retry_delay(1, min, max), min);
        assert_eq!(retry_delay(2, min, max), Duration::from_millis(200));
        assert_eq!(retry_delay(5, min, max), max);
        assert_eq!(retry_delay(u32::MAX, min, max), max);
    }

    #[tokio::test]
    async fn empties_every_live_publication() {
        let store = Arc::new(MemoryStore::new("o", ["ppa-1", "ppa-2"]));
        store.add_upload("ppa-1", "a", "1");
        store.add_upload("ppa-1", "b", "2");
        store.add_upload("ppa-2", "c", "3");
        let fence = Fence {
            store: store.clone(),
            slot: "ppa-1".into(),
            epoch: 0,
        };
        let deleted = empty_archive(fence, Duration::from_millis(1), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(
            store
                .published_sources("ppa-1", "Published")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .published_sources("ppa-2", "Published")
                .await
                .unwrap()
                .len(),
            1
        );
    }

    fn dirty_in_epoch(store: &MemoryStore, slot: &str, epoch: u64) {
        let record = SlotRecord::new(SlotState::Dirty, chrono::Utc::now()).in_epoch(epoch);
        store.insert(slot, &berth::record::render_description("", &record));
    }

    /// A cleaner whose epoch is no longer the record's deletes nothing, even a publication
    /// from before the takeover.
    #[tokio::test]
    async fn a_fenced_cleaner_deletes_nothing() {
        let store = Arc::new(MemoryStore::new("o", ["ppa-1"]));
        dirty_in_epoch(&store, "ppa-1", 5);
        store.add_upload("ppa-1", "a", "1");
        let stale = Fence {
            store: store.clone(),
            slot: "ppa-1".into(),
            epoch: 4,
        };
        let result = empty_archive(stale, Duration::from_millis(1), Duration::from_secs(5)).await;
        assert!(
            matches!(result, Err(CleanError::Fenced { found: 5 })),
            "{result:?}"
        );
        let live = store.published_sources("ppa-1", "Published").await.unwrap();
        assert_eq!(live.len(), 1);

        let current = Fence {
            store: store.clone(),
            slot: "ppa-1".into(),
            epoch: 5,
        };
        let deleted = empty_archive(current, Duration::from_millis(1), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(deleted, 1);
    }

    /// A cleaner stops deleting as soon as the record stops saying dirty.
    #[tokio::test]
    async fn a_cleaner_stops_when_the_slot_is_no_longer_dirty() {
        let store = Arc::new(MemoryStore::new("o", ["ppa-1"]));
        let record = SlotRecord::new(SlotState::Free, chrono::Utc::now()).in_epoch(1);
        store.insert("ppa-1", &berth::record::render_description("", &record));
        store.add_upload("ppa-1", "a", "1");
        let fence = Fence {
            store: store.clone(),
            slot: "ppa-1".into(),
            epoch: 1,
        };
        let result = empty_archive(fence, Duration::from_millis(1), Duration::from_secs(5)).await;
        assert!(matches!(result, Err(CleanError::NotDirty)), "{result:?}");
        let live = store.published_sources("ppa-1", "Published").await.unwrap();
        assert_eq!(live.len(), 1);
    }
}
