//! Everything the fake Launchpad remembers: archives with their descriptions and ETags,
//! source publications, the history of description writes and the faults in force.
//!
//! One [`FakeState`] sits behind a std `Mutex`; every method is short and synchronous, so the
//! lock is never held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::faults::Faults;
use super::{FakeConfig, FakeCredentials};

/// The state shared by the server's handlers and the in-process handle.
pub(crate) type Shared = Arc<Mutex<FakeState>>;

/// Locks the state. A handler that panicked while holding the lock left nothing half-done
/// that matters to a test fake, so a poisoned lock is used as is.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, FakeState> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The publication statuses Launchpad uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Status {
    Pending,
    Published,
    Superseded,
    Deleted,
    Obsolete,
}

impl Status {
    /// Parses Launchpad's spelling (`Published`), the only one accepted.
    pub(crate) fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "Pending" => Status::Pending,
            "Published" => Status::Published,
            "Superseded" => Status::Superseded,
            "Deleted" => Status::Deleted,
            "Obsolete" => Status::Obsolete,
            _ => return None,
        })
    }
}

/// One successful description write, as `GET /_fake/history` shows it. Admin writes
/// ([`super::FakeLaunchpad::set_description`]) are included, so that for every PPA each
/// record's `old_etag` is the previous record's `new_etag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// 1, 2, 3, … in the order the writes happened, across all PPAs.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub ppa: String,
    pub old_etag: String,
    pub new_etag: String,
    /// The description written.
    pub description: String,
}

/// One `requestDeletion` call that named an existing publication, as `GET /_fake/deletions`
/// shows it: tests check that no deletion ever reaches a slot while a client holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRecord {
    /// 1, 2, 3, … in the order the requests arrived, across all PPAs.
    pub seq: u64,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    pub ppa: String,
    /// The publication's id (the last segment of its `self_link`).
    pub source: u64,
    pub package: String,
    pub version: String,
    /// When the publication was created (its upload).
    pub date_created: DateTime<Utc>,
}

/// One archive (PPA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArchiveState {
    pub(crate) name: String,
    pub(crate) description: String,
    /// Quoted, as sent in `http_etag` and `ETag`.
    pub(crate) etag: String,
}

/// One source package publication.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) id: u64,
    pub(crate) ppa: String,
    pub(crate) package: String,
    pub(crate) version: String,
    status: Status,
    pub(crate) date_created: DateTime<Utc>,
    pub(crate) date_published: Option<DateTime<Utc>>,
    /// When a requested deletion takes effect. Computed lazily from this instant instead of
    /// a timer, so nothing runs in the background.
    deletion_due: Option<Instant>,
}

impl Source {
    /// The status as of `now`: `Deleted` once a requested deletion is due.
    pub(crate) fn status(&self, now: Instant) -> Status {
        match self.deletion_due {
            Some(due) if due <= now => Status::Deleted,
            _ => self.status,
        }
    }
}

/// Why a description write was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteError {
    NotFound,
    /// `If-Match` named an older ETag.
    Stale,
}

/// The fake's whole memory.
#[derive(Debug)]
pub(crate) struct FakeState {
    pub(crate) owner: String,
    pub(crate) page_size: usize,
    pub(crate) credentials: Option<FakeCredentials>,
    pub(crate) faults: Faults,
    deletion_delay: Duration,
    /// Random per server, so a restarted fake never hands out an ETag seen before.
    etag_prefix: String,
    etag_counter: u64,
    archives: Vec<ArchiveState>,
    sources: Vec<Source>,
    history: Vec<WriteRecord>,
    deletions: Vec<DeletionRecord>,
    /// Requests received by the Launchpad routes, see `tally`.
    pub(crate) requests: std::collections::BTreeMap<String, u64>,
}

impl FakeState {
    /// PPAs `ppa-1` … `ppa-N` of the configured owner, empty descriptions, no sources.
    pub(crate) fn new(config: FakeConfig) -> FakeState {
        let mut state = FakeState {
            owner: config.owner,
            page_size: config.page_size.clamp(1, super::wire::MAX_PAGE_SIZE),
            credentials: config.credentials,
            faults: Faults::default(),
            deletion_delay: config.deletion_delay,
            etag_prefix: format!("{:08x}", rand::random::<u32>()),
            etag_counter: 0,
            archives: Vec::new(),
            sources: Vec::new(),
            history: Vec::new(),
            deletions: Vec::new(),
            requests: std::collections::BTreeMap::new(),
        };
        for n in 1..=config.ppas {
            let etag = state.next_etag();
            state.archives.push(ArchiveState {
                name: format!("ppa-{n}"),
                description: String::new(),
                etag,
            });
        }
        state
    }

    fn next_etag(&mut self) -> String {
        self.etag_counter += 1;
        format!("\"{}-{}\"", self.etag_prefix, self.etag_counter)
    }

    pub(crate) fn archives(&self) -> &[ArchiveState] {
        &self.archives
    }

    pub(crate) fn archive(&self, name: &str) -> Option<&ArchiveState> {
        self.archives.iter().find(|a| a.name == name)
    }

    /// Replaces the description of `name` if `if_match` is absent (Launchpad then writes
    /// unconditionally), `*`, or the current ETag; records the write.
    pub(crate) fn write_description(
        &mut self,
        name: &str,
        if_match: Option<&str>,
        description: &str,
    ) -> Result<ArchiveState, WriteError> {
        let current = self.archive(name).ok_or(WriteError::NotFound)?;
        if let Some(expected) = if_match
            && expected != "*"
            && expected != current.etag
        {
            return Err(WriteError::Stale);
        }
        let old_etag = current.etag.clone();
        let new_etag = self.next_etag();
        self.history.push(WriteRecord {
            seq: self.history.len() as u64 + 1,
            at: Utc::now(),
            ppa: name.to_owned(),
            old_etag,
            new_etag: new_etag.clone(),
            description: description.to_owned(),
        });
        // Found above; nothing removes archives.
        let archive = self
            .archives
            .iter_mut()
            .find(|a| a.name == name)
            .expect("archive exists");
        archive.description = description.to_owned();
        archive.etag = new_etag;
        Ok(archive.clone())
    }

    /// Adds a publication to `ppa`; `None` when there is no such PPA.
    pub(crate) fn add_source(
        &mut self,
        ppa: &str,
        package: &str,
        version: &str,
        status: Status,
    ) -> Option<Source> {
        self.archive(ppa)?;
        let source = Source {
            id: self.sources.len() as u64 + 1,
            ppa: ppa.to_owned(),
            package: package.to_owned(),
            version: version.to_owned(),
            status,
            date_created: Utc::now(),
            date_published: (status != Status::Pending).then(Utc::now),
            deletion_due: None,
        };
        self.sources.push(source.clone());
        Some(source)
    }

    /// Publications of `ppa` (in `status` as of `now`, when given), newest first as on
    /// Launchpad.
    pub(crate) fn sources(&self, ppa: &str, status: Option<Status>, now: Instant) -> Vec<&Source> {
        self.sources
            .iter()
            .rev()
            .filter(|s| s.ppa == ppa && status.is_none_or(|wanted| s.status(now) == wanted))
            .collect()
    }

    pub(crate) fn all_sources(&self) -> &[Source] {
        &self.sources
    }

    pub(crate) fn source(&self, ppa: &str, id: u64) -> Option<&Source> {
        self.sources.iter().find(|s| s.id == id && s.ppa == ppa)
    }

    /// Marks a publication for deletion after the configured delay, and logs the request.
    /// Asking again does not postpone an earlier request. `None` when there is no such
    /// publication.
    pub(crate) fn request_deletion(&mut self, ppa: &str, id: u64, now: Instant) -> Option<()> {
        let due = now + self.deletion_delay;
        let source = self
            .sources
            .iter_mut()
            .find(|s| s.id == id && s.ppa == ppa)?;
        if source.deletion_due.is_none() {
            source.deletion_due = Some(due);
        }
        let record = DeletionRecord {
            seq: self.deletions.len() as u64 + 1,
            at: Utc::now(),
            ppa: ppa.to_owned(),
            source: id,
            package: source.package.clone(),
            version: source.version.clone(),
            date_created: source.date_created,
        };
        self.deletions.push(record);
        Some(())
    }

    pub(crate) fn deletions(&self) -> &[DeletionRecord] {
        &self.deletions
    }

    pub(crate) fn history(&self) -> &[WriteRecord] {
        &self.history
    }

    /// Whether the next write must fail with `412` whatever its ETag: a forced conflict is
    /// used up first, then `conflict_rate` is drawn.
    pub(crate) fn take_conflict(&mut self) -> bool {
        if self.faults.forced_conflicts > 0 {
            self.faults.forced_conflicts -= 1;
            return true;
        }
        super::faults::draw(self.faults.conflict_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> FakeState {
        FakeState::new(FakeConfig {
            ppas: 2,
            ..FakeConfig::default()
        })
    }

    #[test]
    fn writes_check_the_etag_and_chain_history() {
        let mut state = state();
        let first = state.archive("ppa-1").unwrap().etag.clone();
        let written = state
            .write_description("ppa-1", Some(&first), "one")
            .unwrap();
        assert_ne!(written.etag, first);
        assert_eq!(
            state.write_description("ppa-1", Some(&first), "two"),
            Err(WriteError::Stale)
        );
        let again = state.write_description("ppa-1", None, "three").unwrap();
        let history = state.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].old_etag, first);
        assert_eq!(history[1].old_etag, written.etag);
        assert_eq!(history[1].new_etag, again.etag);
        assert_eq!(
            state.write_description("ppa-9", None, "x"),
            Err(WriteError::NotFound)
        );
    }

    #[test]
    fn etags_differ_between_servers() {
        assert_ne!(
            state().archive("ppa-1").unwrap().etag,
            state().archive("ppa-1").unwrap().etag
        );
    }

    #[test]
    fn deletion_takes_effect_after_the_delay() {
        let mut state = FakeState::new(FakeConfig {
            deletion_delay: Duration::from_secs(60),
            ..FakeConfig::default()
        });
        let id = state
            .add_source("ppa-1", "hello", "1.0", Status::Published)
            .unwrap()
            .id;
        let now = Instant::now();
        state.request_deletion("ppa-1", id, now).unwrap();
        assert_eq!(
            state.sources("ppa-1", Some(Status::Published), now).len(),
            1
        );
        assert_eq!(state.deletions().len(), 1);
        assert_eq!(
            (
                state.deletions()[0].ppa.as_str(),
                state.deletions()[0].source
            ),
            ("ppa-1", id)
        );
        let later = now + Duration::from_secs(61);
        assert!(
            state
                .sources("ppa-1", Some(Status::Published), later)
                .is_empty()
        );
        assert_eq!(
            state.sources("ppa-1", Some(Status::Deleted), later).len(),
            1
        );
    }
}
