//! An in-memory [`SlotStore`]: the same compare-and-swap semantics as Launchpad, for unit
//! tests and for fake workers that exercise the assigner without any Launchpad.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::{Archive, SlotStore, SourcePublication, StoreError};

#[derive(Debug, Default)]
struct Inner {
    archives: BTreeMap<String, Archive>,
    sources: BTreeMap<String, Vec<SourcePublication>>,
    next_etag: u64,
    next_source: u64,
}

/// Archives and publications kept in memory; deletions take effect at once.
#[derive(Debug)]
pub struct MemoryStore {
    owner: String,
    inner: Mutex<Inner>,
    /// Added to every call, to imitate a slow store.
    latency: Duration,
}

impl MemoryStore {
    /// A store holding PPAs `names` of `owner`, all with an empty description.
    pub fn new(owner: &str, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let store = MemoryStore {
            owner: owner.to_owned(),
            inner: Mutex::new(Inner::default()),
            latency: Duration::ZERO,
        };
        for name in names {
            store.insert(&name.into(), "");
        }
        store
    }

    /// The state. A panic while it was held leaves it as consistent as any single step
    /// does, so a poisoned lock is taken over rather than failing every later call.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every call take `latency` first.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Adds (or replaces) PPA `name` with `description`.
    pub fn insert(&self, name: &str, description: &str) {
        let mut inner = self.lock();
        inner.next_etag += 1;
        let archive = Archive {
            name: name.to_owned(),
            self_link: self.link(name),
            description: description.to_owned(),
            http_etag: format!("\"mem-{}\"", inner.next_etag),
        };
        inner.archives.insert(name.to_owned(), archive);
    }

    /// Adds a published source to PPA `name`, as an upload would.
    pub fn add_upload(&self, name: &str, package: &str, version: &str) {
        let mut inner = self.lock();
        inner.next_source += 1;
        let source = SourcePublication {
            self_link: format!("{}/+sourcepub/{}", self.link(name), inner.next_source),
            source_package_name: package.to_owned(),
            source_package_version: version.to_owned(),
            status: "Published".into(),
            date_created: Some(chrono::Utc::now()),
        };
        inner
            .sources
            .entry(name.to_owned())
            .or_default()
            .push(source);
    }

    fn link(&self, name: &str) -> String {
        format!("memory:/~{}/+archive/ubuntu/{name}", self.owner)
    }

    async fn delay(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[async_trait]
impl SlotStore for MemoryStore {
    async fn archive(&self, name: &str) -> Result<Archive, StoreError> {
        self.delay().await;
        let inner = self.lock();
        inner
            .archives
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        description: &str,
    ) -> Result<Archive, StoreError> {
        self.delay().await;
        let mut inner = self.lock();
        inner.next_etag += 1;
        let next = format!("\"mem-{}\"", inner.next_etag);
        let archive = inner
            .archives
            .get_mut(name)
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        if archive.http_etag != etag {
            return Err(StoreError::Conflict);
        }
        archive.description = description.to_owned();
        archive.http_etag = next;
        Ok(archive.clone())
    }

    async fn archives(&self) -> Result<Vec<Archive>, StoreError> {
        self.delay().await;
        Ok(self.lock().archives.values().cloned().collect())
    }

    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError> {
        self.delay().await;
        let inner = self.lock();
        if !inner.archives.contains_key(name) {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        let sources = inner
            .sources
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(sources
            .iter()
            .filter(|s| s.status == status)
            .cloned()
            .collect())
    }

    async fn request_deletion(&self, source_self_link: &str) -> Result<(), StoreError> {
        self.delay().await;
        let mut inner = self.lock();
        let source = inner
            .sources
            .values_mut()
            .flatten()
            .find(|s| s.self_link == source_self_link)
            .ok_or_else(|| StoreError::NotFound(source_self_link.to_owned()))?;
        source.status = "Deleted".into();
        Ok(())
    }

    fn resource(&self, name: &str) -> serde_json::Value {
        super::ppa_resource(&self.owner, name, &self.link(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{SlotRecord, SlotState};
    use crate::store::slot::{read_slot, write_slot};

    #[tokio::test]
    async fn compare_and_swap_rejects_stale_etag() {
        let store = MemoryStore::new("berth-ci", ["ppa-1"]);
        let first = read_slot(&store, "ppa-1").await.unwrap();
        assert_eq!(
            first.record.state,
            SlotState::Dirty,
            "no block reads as dirty"
        );
        let free = SlotRecord::new(SlotState::Free, chrono::Utc::now());
        let second = write_slot(&store, &first, &free).await.unwrap();
        assert_eq!(second.record, free);
        let err = write_slot(&store, &first, &free).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");
    }

    #[tokio::test]
    async fn deletion_empties_live_sources() {
        let store = MemoryStore::new("berth-ci", ["ppa-1"]);
        store.add_upload("ppa-1", "hello", "1.0");
        let live = store.published_sources("ppa-1", "Published").await.unwrap();
        assert_eq!(live.len(), 1);
        store.request_deletion(&live[0].self_link).await.unwrap();
        assert!(
            store
                .published_sources("ppa-1", "Published")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
