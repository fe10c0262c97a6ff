//! The store: the external Launchpad-like API that holds every slot's state (DESIGN §1).
//!
//! [`SlotStore`] is what workers and the assigner need from it; [`LaunchpadStore`] speaks the
//! Launchpad web service, [`MemoryStore`] keeps everything in memory for tests and fake
//! workers. [`slot`] builds the compare-and-swap record operations on top.

mod collection;
mod error;
pub mod launchpad;
pub mod memory;
pub mod oauth;
pub mod slot;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use launchpad::LaunchpadStore;
pub use memory::MemoryStore;
pub use oauth::Credentials;

/// One archive (PPA) as the store shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    /// The PPA name, which is also the slot name (`ppa-1`).
    pub name: String,
    /// The canonical API address of the archive.
    pub self_link: String,
    /// The full description, human text and berth block together.
    pub description: String,
    /// The version tag to send back in `If-Match` for a compare-and-swap write.
    pub http_etag: String,
}

/// One source package publication in an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePublication {
    /// The API address of the publication (`…/+sourcepub/ID`), target of `requestDeletion`.
    pub self_link: String,
    pub source_package_name: String,
    pub source_package_version: String,
    /// `Pending`, `Published`, `Superseded`, `Deleted` or `Obsolete`.
    pub status: String,
    /// When the store created the publication (the upload was accepted). A cleaning deletes
    /// only publications created before its fencing check (DESIGN §3 "Fencing"), so even a
    /// stale cleaner cannot remove a newer holder's upload; one without a date is not deleted.
    #[serde(default)]
    pub date_created: Option<chrono::DateTime<chrono::Utc>>,
}

/// Publication statuses that still occupy a PPA and must be deleted by cleaning.
pub const LIVE_STATUSES: [&str; 2] = ["Pending", "Published"];

/// What workers and the assigner need from the store. Every call is one round trip (or one
/// paged walk) with a timeout; errors say whether trying again may help.
#[async_trait]
pub trait SlotStore: Send + Sync + 'static {
    /// Reads one archive by slot (PPA) name.
    async fn archive(&self, name: &str) -> Result<Archive, StoreError>;

    /// Replaces an archive's description if its ETag is still `etag`; answers the new
    /// representation. A changed ETag answers [`StoreError::Conflict`].
    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        description: &str,
    ) -> Result<Archive, StoreError>;

    /// All archives of the configured owner, walking every page.
    async fn archives(&self) -> Result<Vec<Archive>, StoreError>;

    /// Source publications of archive `name` in `status`, walking every page.
    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError>;

    /// Asks for the deletion of one publication (by its `self_link`).
    async fn request_deletion(&self, source_self_link: &str) -> Result<(), StoreError>;

    /// What a client is told about the resource it was handed (DESIGN §3 `resource`).
    fn resource(&self, name: &str) -> serde_json::Value;
}

/// What a client is told about a PPA it was handed: enough to upload to it
/// (`dput ppa:OWNER/NAME`) and to find it in the API.
pub fn ppa_resource(owner: &str, name: &str, self_link: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "ppa",
        "owner": owner,
        "name": name,
        "reference": format!("ppa:{owner}/{name}"),
        "self_link": self_link,
    })
}
