//! Slot records on top of the store: read a slot's record with the ETag it was read at, and
//! write a new one with compare-and-swap.

use chrono::{DateTime, Utc};

use super::{Archive, SlotStore, StoreError};
use crate::record::{SlotRecord, parse_description, render_description};

/// A slot as read from the store: the record and what is needed to write it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub archive: Archive,
    /// The human-written part of the description, kept byte for byte on every write.
    pub human: String,
    /// The record; a missing or unreadable block reads as [`SlotRecord::unknown`] (dirty).
    pub record: SlotRecord,
    /// Whether the block was missing or unreadable.
    pub unreadable: bool,
    /// The version of a record written by a newer berth, which this build must leave alone
    /// (DESIGN §2): `record` is then a stand-in, not to act on.
    pub newer: Option<u64>,
}

impl SlotView {
    /// Interprets an archive's description.
    pub fn from_archive(archive: Archive, now: DateTime<Utc>) -> SlotView {
        let parsed = parse_description(&archive.description);
        let unreadable = parsed.record.is_none() && parsed.newer.is_none();
        let record = parsed.record.unwrap_or_else(|| SlotRecord::unknown(now));
        SlotView {
            archive,
            human: parsed.human,
            record,
            unreadable,
            newer: parsed.newer,
        }
    }
}

/// Reads slot `name`.
pub async fn read_slot(store: &dyn SlotStore, name: &str) -> Result<SlotView, StoreError> {
    let archive = store.archive(name).await?;
    Ok(SlotView::from_archive(archive, Utc::now()))
}

/// Writes `record` over `view` if nobody wrote the slot since `view` was read
/// ([`StoreError::Conflict`] otherwise). Answers the slot as the store now shows it.
pub async fn write_slot(
    store: &dyn SlotStore,
    view: &SlotView,
    record: &SlotRecord,
) -> Result<SlotView, StoreError> {
    let description = render_description(&view.human, record);
    let archive = store
        .set_description(&view.archive.name, &view.archive.http_etag, &description)
        .await?;
    Ok(SlotView::from_archive(archive, Utc::now()))
}
