//! A client's quotas (DESIGN §4 "Quotas"): `max_waiting` counts the acquire requests waiting
//! on this assigner; `max_held` counts the slots the store's view shows held with an owner
//! naming the client, so that every assigner counts the same slots. That view is the status
//! snapshot (at most 2 s old), read anew after each of this assigner's own grants and
//! releases; a grant that finds the client over `max_held` in a fresh read is given back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::error::ApiError;
use super::status::{StatusCache, held_by};
use crate::access::ClientConfig;

/// `Retry-After` of a `429` for `max_held`: a held slot does not come back at once.
const HELD_RETRY_AFTER: u64 = 10;
/// `Retry-After` of a `429` for `max_waiting`.
const WAITING_RETRY_AFTER: u64 = 5;
/// How long a slot given back for a quota is left out of the count if the store's view
/// still shows it held (its release is on its way to the worker).
const RETURNING_FOR: Duration = Duration::from_secs(60);

/// The quota state of one assigner.
#[derive(Default)]
pub(crate) struct Quotas {
    /// Acquire requests waiting here, by client.
    waiting: std::sync::Mutex<HashMap<String, u32>>,
    /// Slots given back here for `max_held`, by slot, since when.
    returning: std::sync::Mutex<HashMap<String, Instant>>,
    /// One grant check at a time, so two grants of one client do not both see the other's
    /// slot and both give theirs back.
    gate: tokio::sync::Mutex<()>,
}

/// One waiting acquire; counted until dropped.
pub(crate) struct Waiting<'a> {
    quotas: &'a Quotas,
    client: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.quotas.waiting.lock().expect("not poisoned");
        if let Some(count) = waiting.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                waiting.remove(&self.client);
            }
        }
    }
}

impl Quotas {
    /// Counts one more waiting acquire of `client`, or `429` at its `max_waiting`.
    pub(crate) fn enter(&self, client: &ClientConfig) -> Result<Waiting<'_>, ApiError> {
        let mut waiting = self.waiting.lock().expect("not poisoned");
        let count = waiting.entry(client.name.clone()).or_default();
        if let Some(max) = client.max_waiting
            && *count >= max
        {
            return Err(ApiError::QuotaExceeded {
                message: format!(
                    "client {:?} has {count} acquire requests waiting on this assigner, its max_waiting is {max}; retry when one is answered",
                    client.name
                ),
                retry_after: WAITING_RETRY_AFTER,
            });
        }
        *count += 1;
        Ok(Waiting {
            quotas: self,
            client: client.name.clone(),
        })
    }

    /// `429` when `client` holds `max_held` slots or more in the store's view.
    pub(crate) async fn check_held(
        &self,
        status: &StatusCache,
        client: &ClientConfig,
    ) -> Result<(), ApiError> {
        let Some(max) = client.max_held else {
            return Ok(());
        };
        let held = self.held(status, client).await?;
        if held >= max as usize {
            return Err(over_held(client, held, max));
        }
        Ok(())
    }

    /// After this assigner granted `slot` to `client`: reads the store's view anew and,
    /// if the client now holds more than `max_held`, `429` (the caller gives the slot back).
    /// A view that cannot be read leaves the grant alone.
    pub(crate) async fn after_grant(
        &self,
        status: &StatusCache,
        client: &ClientConfig,
        slot: &str,
    ) -> Result<(), ApiError> {
        status.invalidate();
        let Some(max) = client.max_held else {
            return Ok(());
        };
        let _gate = self.gate.lock().await;
        let held = match self.held(status, client).await {
            Ok(held) => held,
            Err(_) => return Ok(()),
        };
        if held > max as usize {
            self.returning
                .lock()
                .expect("not poisoned")
                .insert(slot.to_owned(), Instant::now());
            status.invalidate();
            return Err(over_held(client, held - 1, max));
        }
        Ok(())
    }

    /// The slots `client` holds in the store's view, less those given back here.
    async fn held(&self, status: &StatusCache, client: &ClientConfig) -> Result<usize, ApiError> {
        let snapshot = status.snapshot().await.map_err(ApiError::Store)?;
        let mut returning = self.returning.lock().expect("not poisoned");
        let held: Vec<&str> = held_by(&snapshot, &client.name)
            .map(|s| s.slot.as_str())
            .collect();
        // Forget a given-back slot once the view no longer shows it held, or after a while.
        returning
            .retain(|slot, since| since.elapsed() < RETURNING_FOR && held.contains(&slot.as_str()));
        Ok(held
            .iter()
            .filter(|slot| !returning.contains_key(**slot))
            .count())
    }
}

fn over_held(client: &ClientConfig, held: usize, max: u32) -> ApiError {
    ApiError::QuotaExceeded {
        message: format!(
            "client {:?} holds {held} slots, its max_held is {max}; release one first",
            client.name
        ),
        retry_after: HELD_RETRY_AFTER,
    }
}
