//! Fake worker mode (`berth-worker --fake`): the same slot workers over an in-memory store,
//! with claims and cleanings that take a configurable time and store calls that fail at a
//! configurable rate, so the assigner can be exercised without any Launchpad.
//!
//! Each fake worker process has its own memory: its slots start with no record (dirty), are
//! cleaned at once and then serve. Everything a worker does goes through [`FakeStore`], so
//! the worker code has no fake branches.

use std::time::Duration;

use async_trait::async_trait;
use rand::RngExt;

use berth::record::{SlotState, parse_description};
use berth::store::{Archive, MemoryStore, SlotStore, SourcePublication, StoreError};

/// How a fake store behaves.
#[derive(Debug, Clone, Default)]
pub struct FakeOptions {
    /// Time a claim (a write of a `used` record) takes.
    pub claim_delay: Duration,
    /// Time a cleaning takes (spent on the write that marks the slot free).
    pub clean_delay: Duration,
    /// Share of writes and listings that fail with a retryable `503`, from 0.0 to 1.0.
    pub failure_rate: f64,
}

/// A [`MemoryStore`] with delays and injected failures.
#[derive(Debug)]
pub struct FakeStore {
    inner: MemoryStore,
    options: FakeOptions,
}

impl FakeStore {
    pub fn new(inner: MemoryStore, options: FakeOptions) -> Self {
        FakeStore { inner, options }
    }

    /// The memory store underneath, to add uploads or look at records.
    pub fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    fn maybe_fail(&self) -> Result<(), StoreError> {
        if self.options.failure_rate > 0.0
            && rand::rng().random_bool(self.options.failure_rate.min(1.0))
        {
            return Err(StoreError::Unavailable { status: 503 });
        }
        Ok(())
    }
}

#[async_trait]
impl SlotStore for FakeStore {
    async fn archive(&self, name: &str) -> Result<Archive, StoreError> {
        self.inner.archive(name).await
    }

    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        description: &str,
    ) -> Result<Archive, StoreError> {
        let delay = match parse_description(description).record.map(|r| r.state) {
            Some(SlotState::Used) => self.options.claim_delay,
            Some(SlotState::Free) => self.options.clean_delay,
            _ => Duration::ZERO,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.maybe_fail()?;
        self.inner.set_description(name, etag, description).await
    }

    async fn archives(&self) -> Result<Vec<Archive>, StoreError> {
        self.inner.archives().await
    }

    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError> {
        self.maybe_fail()?;
        self.inner.published_sources(name, status).await
    }

    async fn request_deletion(&self, source_self_link: &str) -> Result<(), StoreError> {
        self.inner.request_deletion(source_self_link).await
    }

    fn resource(&self, name: &str) -> serde_json::Value {
        self.inner.resource(name)
    }
}
