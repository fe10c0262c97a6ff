//! Cleaning a slot (DESIGN §3 "Clean (PPA)"): ask for the deletion of every live source
//! publication, poll until none is left, then mark the slot free. A failed attempt is
//! counted in the record (`clean_failures`, `last_error`) and retried after a pause that
//! grows with the count, so the backoff survives a worker restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth::protocol::EventKind;
use berth::record::{SlotRecord, SlotState};
use berth::store::{LIVE_STATUSES, SlotStore, StoreError};

use crate::slot::{Flow, Session, Trouble, now};

/// Why one cleaning attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CleanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{left} publication(s) still live after {waited:?}")]
    Timeout { left: usize, waited: Duration },
}

/// Longest `last_error` kept in the record (which is public, and one line).
const MAX_ERROR_LEN: usize = 200;

/// Deletes every live publication of archive `name` and waits until the store shows none.
/// Answers how many deletions were asked for.
pub(crate) async fn empty_archive(
    store: Arc<dyn SlotStore>,
    name: String,
    poll: Duration,
    timeout: Duration,
) -> Result<usize, CleanError> {
    let started = tokio::time::Instant::now();
    let mut requested = HashSet::new();
    loop {
        let mut live = Vec::new();
        for status in LIVE_STATUSES {
            live.extend(store.published_sources(&name, status).await?);
        }
        if live.is_empty() {
            return Ok(requested.len());
        }
        for source in &live {
            if requested.insert(source.self_link.clone()) {
                tracing::debug!(package = %source.source_package_name,
                    version = %source.source_package_version, "requesting deletion");
                store.request_deletion(&source.self_link).await?;
            }
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
pub(crate) fn retry_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    min.saturating_mul(1 << doublings).min(max)
}

impl Session<'_> {
    /// One cleaning attempt of a dirty slot, answering control messages meanwhile.
    pub(crate) async fn clean(&mut self) -> Result<Flow, Trouble> {
        let options = &self.slot.options;
        tracing::info!(
            failures = self.view.record.clean_failures,
            "dirty; cleaning"
        );
        let work = empty_archive(
            self.slot.store.clone(),
            self.slot.spec.slot.clone(),
            options.clean_poll,
            options.clean_timeout,
        );
        let Some(result) = self.alongside_control(work).await? else {
            return Ok(Flow::Stop);
        };
        match result {
            Ok(deleted) => {
                let freed = self
                    .transition(|current| {
                        (current.state == SlotState::Dirty)
                            .then(|| SlotRecord::new(SlotState::Free, now()))
                    })
                    .await?;
                if freed {
                    tracing::info!(deleted, "cleaned; the slot is free");
                    self.events.emit(EventKind::Cleaned, None).await;
                }
                Ok(Flow::Continue)
            }
            Err(err) => self.clean_failed(&err).await,
        }
    }

    async fn clean_failed(&mut self, err: &CleanError) -> Result<Flow, Trouble> {
        let mut message = err.to_string();
        if message.len() > MAX_ERROR_LEN {
            let cut = (0..=MAX_ERROR_LEN)
                .rev()
                .find(|&i| message.is_char_boundary(i))
                .unwrap_or(0);
            message.truncate(cut);
        }
        let message = message.replace('\n', " ");
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
        let failures = self.view.record.clean_failures;
        let options = &self.slot.options;
        let delay = retry_delay(failures, options.backoff_min, options.backoff_max);
        tracing::warn!(error = %message, failures, retry_in_ms = delay.as_millis() as u64, "cleaning failed");
        self.events.emit(EventKind::CleanFailed, None).await;
        match self.alongside_control(tokio::time::sleep(delay)).await? {
            Some(()) => Ok(Flow::Continue),
            None => Ok(Flow::Stop),
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
        let deleted = empty_archive(
            store.clone(),
            "ppa-1".into(),
            Duration::from_millis(1),
            Duration::from_secs(5),
        )
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
}
