//! The slot record: the one line of JSON that holds a slot's state, and how it lives inside a
//! PPA description next to the human-written text.
//!
//! The record is always the last three lines of the description:
//!
//! ```text
//! <human text, kept byte for byte>
//!
//! -----BEGIN BERTH SLOT STATE (managed by berth, do not edit)-----
//! {"v":1,"state":"free",...}
//! -----END BERTH SLOT STATE-----
//! ```
//!
//! Compact JSON never contains a newline, so the block is exactly three lines and can always
//! be cut off the end, whatever the human text above it looks like (even if it imitates the
//! markers). A description without a well-formed block parses as `dirty`: a slot whose
//! history is unknown is cleaned before anyone gets it.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// First line of the block.
pub const BEGIN_MARKER: &str = "-----BEGIN BERTH SLOT STATE (managed by berth, do not edit)-----";
/// Last line of the block.
pub const END_MARKER: &str = "-----END BERTH SLOT STATE-----";
/// What separates the human text from the block; always written, always cut.
const SEPARATOR: &str = "\n\n";

/// The record version this build writes and understands.
pub const RECORD_VERSION: u32 = 1;

/// Where a slot is in its life (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Free,
    Used,
    Dirty,
    Disabled,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Used => "used",
            SlotState::Dirty => "dirty",
            SlotState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Now, at the precision records keep (milliseconds, DESIGN §2), so a value written and read
/// back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// The state record of one slot, as stored in the store (DESIGN §2).
///
/// Never holds a lease token, only its SHA-256: PPA descriptions are public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub v: u32,
    pub state: SlotState,
    pub owner: Option<String>,
    pub request: Option<Uuid>,
    pub lease_sha256: Option<String>,
    pub lease_expires: Option<DateTime<Utc>>,
    pub touched: DateTime<Utc>,
    #[serde(default)]
    pub clean_failures: u32,
    pub last_error: Option<String>,
    /// The lock epoch of the worker that holds the slot (DESIGN §3 "Fencing"): each worker
    /// that takes the slot lock raises it by one, by compare-and-swap, before it does anything
    /// else, and checks it is still its own before every side effect. Absent in records
    /// written before fencing existed, which read as 0.
    #[serde(default)]
    pub epoch: u64,
    /// When the current holder got the slot: set by the claim, kept by renewals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<DateTime<Utc>>,
    /// Who disabled the slot (an operator's name, as the action said), while disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_by: Option<String>,
    /// Why the slot is disabled, while disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Since when the slot is disabled, while disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_since: Option<DateTime<Utc>>,
    /// A disable waiting for the slot to come back: set on a used or dirty slot, it makes the
    /// next successful cleaning write `disabled` instead of `free` (DESIGN §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

/// A pending disable (DESIGN §2 "Operator actions"): who asked, why, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Drain {
    pub reason: String,
    pub by: Option<String>,
    pub since: DateTime<Utc>,
}

impl SlotRecord {
    /// A record in `state` with no holder, touched `now`.
    pub fn new(state: SlotState, now: DateTime<Utc>) -> Self {
        SlotRecord {
            v: RECORD_VERSION,
            state,
            owner: None,
            request: None,
            lease_sha256: None,
            lease_expires: None,
            touched: now.trunc_subsecs(3),
            clean_failures: 0,
            last_error: None,
            epoch: 0,
            held_since: None,
            disabled_by: None,
            disabled_reason: None,
            disabled_since: None,
            drain: None,
        }
    }

    /// A `disabled` record that `drain` asked for (or an immediate disable with the same
    /// fields), touched `now`.
    pub fn disabled(drain: &Drain, now: DateTime<Utc>) -> Self {
        SlotRecord {
            disabled_by: drain.by.clone(),
            disabled_reason: Some(drain.reason.clone()),
            disabled_since: Some(drain.since),
            ..SlotRecord::new(SlotState::Disabled, now)
        }
    }

    /// A `dirty` record that keeps this one's pending drain, if any: what a release, an
    /// expiry or a reclaim leaves behind.
    pub fn dirty_keeping_drain(&self, now: DateTime<Utc>) -> Self {
        SlotRecord {
            drain: self.drain.clone(),
            ..SlotRecord::new(SlotState::Dirty, now)
        }
    }

    /// What a successful cleaning leaves: `disabled` if a drain is pending, else `free`.
    pub fn after_clean(&self, now: DateTime<Utc>) -> Self {
        match &self.drain {
            Some(drain) => SlotRecord::disabled(drain, now),
            None => SlotRecord::new(SlotState::Free, now),
        }
    }

    /// This record with its holder's lock epoch set to `epoch`.
    pub fn in_epoch(self, epoch: u64) -> Self {
        SlotRecord { epoch, ..self }
    }

    /// The record that stands for a slot whose block is missing or unreadable.
    pub fn unknown(now: DateTime<Utc>) -> Self {
        let mut record = SlotRecord::new(SlotState::Dirty, now);
        record.last_error = Some("no readable berth state block; cleaning first".into());
        record
    }
}

/// A description split into its human part and the record found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDescription {
    /// The human-written text, exactly as it was before berth appended its block.
    pub human: String,
    /// The record, or `None` when the block is missing or unreadable (treat as dirty), or
    /// written by a newer berth (`newer`).
    pub record: Option<SlotRecord>,
    /// The record's version when it is higher than [`RECORD_VERSION`]: a newer berth wrote
    /// it (a rolling upgrade), and this build leaves the slot alone.
    pub newer: Option<u64>,
}

/// Splits a description into its human text and the berth record.
pub fn parse_description(description: &str) -> ParsedDescription {
    match split_block(description) {
        Some((human, json)) => {
            let newer = serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|value| value.get("v").and_then(serde_json::Value::as_u64))
                .filter(|&v| v > u64::from(RECORD_VERSION));
            let record = serde_json::from_str::<SlotRecord>(json)
                .ok()
                .filter(|r| r.v == RECORD_VERSION);
            ParsedDescription {
                human: human.to_owned(),
                record,
                newer,
            }
        }
        None => ParsedDescription {
            human: description.to_owned(),
            record: None,
            newer: None,
        },
    }
}

/// Writes `record` into a description after `human`, the inverse of [`parse_description`].
pub fn render_description(human: &str, record: &SlotRecord) -> String {
    // Serialising a struct of strings, numbers and timestamps cannot fail.
    let json = serde_json::to_string(record).expect("slot record serialises");
    format!("{human}{SEPARATOR}{BEGIN_MARKER}\n{json}\n{END_MARKER}")
}

/// Finds a well-formed block at the end of `description`: returns the human part and the
/// JSON line. A block that is present but whose JSON is unreadable still counts as a block,
/// so rewriting the description replaces it instead of stacking a second one.
fn split_block(description: &str) -> Option<(&str, &str)> {
    let rest = description.strip_suffix(END_MARKER)?;
    let rest = rest.strip_suffix('\n')?;
    let (before_json, json) = rest.rsplit_once('\n')?;
    let before_marker = before_json.strip_suffix(BEGIN_MARKER)?;
    let human = before_marker.strip_suffix(SEPARATOR).or_else(|| {
        // Someone trimmed our separator; accept what is left rather than lose the block.
        before_marker.strip_suffix('\n').or(Some(before_marker))
    })?;
    Some((human, json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(state: SlotState) -> SlotRecord {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut r = SlotRecord::new(state, now);
        if state == SlotState::Used {
            r.owner = Some("ci-job-1".into());
            r.request = Some(Uuid::nil());
            r.lease_sha256 = Some("ab".repeat(32));
            r.lease_expires = Some(now + chrono::Duration::seconds(60));
        }
        r
    }

    #[test]
    fn no_block_is_dirty_and_keeps_text() {
        let p = parse_description("My PPA for builds");
        assert_eq!(p.human, "My PPA for builds");
        assert_eq!(p.record, None);
    }

    #[test]
    fn unreadable_block_is_replaced_not_stacked() {
        let d = format!("hello\n\n{BEGIN_MARKER}\n{{not json\n{END_MARKER}");
        let p = parse_description(&d);
        assert_eq!(p.human, "hello");
        assert_eq!(p.record, None);
        let again = render_description(&p.human, &sample(SlotState::Free));
        assert_eq!(again.matches(BEGIN_MARKER).count(), 1);
    }

    #[test]
    fn a_newer_version_is_named_not_read() {
        let mut r = sample(SlotState::Free);
        r.v = 2;
        let d = render_description("x", &r);
        let parsed = parse_description(&d);
        assert_eq!((parsed.record, parsed.newer), (None, Some(2)));
        // Even one whose shape this build does not know.
        let d = format!("x\n\n{BEGIN_MARKER}\n{{\"v\":3,\"state\":\"parked\"}}\n{END_MARKER}");
        assert_eq!(parse_description(&d).newer, Some(3));
        // An older or broken one is unreadable, as before (dirty).
        let d = format!("x\n\n{BEGIN_MARKER}\n{{\"v\":0}}\n{END_MARKER}");
        assert_eq!(parse_description(&d).newer, None);
    }

    /// The fields the operator actions add are optional: a record without them reads, and
    /// one with them round-trips.
    #[test]
    fn action_fields_are_optional_and_round_trip() {
        let json = serde_json::to_value(sample(SlotState::Free)).unwrap();
        assert!(json.get("drain").is_none() && json.get("held_since").is_none());
        let now = now();
        let drain = Drain {
            reason: "broken".into(),
            by: Some("ops".into()),
            since: now,
        };
        let mut used = sample(SlotState::Used);
        used.held_since = Some(now);
        used.drain = Some(drain.clone());
        let d = render_description("x", &used);
        assert_eq!(parse_description(&d).record.as_ref(), Some(&used));
        let dirty = used.dirty_keeping_drain(now);
        assert_eq!(
            (dirty.state, dirty.drain.as_ref()),
            (SlotState::Dirty, Some(&drain))
        );
        assert_eq!(dirty.held_since, None);
        let after = dirty.after_clean(now);
        assert_eq!(after.state, SlotState::Disabled);
        assert_eq!(after.disabled_reason.as_deref(), Some("broken"));
        assert_eq!(after.drain, None);
        assert_eq!(
            SlotRecord::new(SlotState::Dirty, now)
                .after_clean(now)
                .state,
            SlotState::Free
        );
    }

    #[test]
    fn record_line_has_design_shape() {
        let json = serde_json::to_value(sample(SlotState::Used)).unwrap();
        for key in [
            "v",
            "state",
            "owner",
            "request",
            "lease_sha256",
            "lease_expires",
            "touched",
            "clean_failures",
            "last_error",
            "epoch",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["state"], "used");
    }

    /// Records written before lock epochs existed still read, as epoch 0.
    #[test]
    fn a_record_without_an_epoch_reads_as_epoch_zero() {
        let line = r#"{"v":1,"state":"free","owner":null,"request":null,"lease_sha256":null,"lease_expires":null,"touched":"2026-11-22T10:00:00Z","clean_failures":0,"last_error":null}"#;
        let d = format!("x\n\n{BEGIN_MARKER}\n{line}\n{END_MARKER}");
        let record = parse_description(&d).record.unwrap();
        assert_eq!((record.state, record.epoch), (SlotState::Free, 0));
    }

    fn any_state() -> impl Strategy<Value = SlotState> {
        prop_oneof![
            Just(SlotState::Free),
            Just(SlotState::Used),
            Just(SlotState::Dirty),
            Just(SlotState::Disabled)
        ]
    }

    fn human_text() -> impl Strategy<Value = String> {
        // Arbitrary text, and text built from pieces of our own markers and JSON.
        let piece = prop_oneof![
            any::<String>(),
            Just(BEGIN_MARKER.to_string()),
            Just(END_MARKER.to_string()),
            Just("\n".to_string()),
            Just("\n\n".to_string()),
            Just(r#"{"v":1,"state":"free"}"#.to_string()),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn round_trip_keeps_human_text_byte_for_byte(
            human in human_text(),
            state in any_state(),
            owner in proptest::option::of(any::<String>()),
            error in proptest::option::of(any::<String>()),
            failures in any::<u32>(),
            epoch in any::<u64>(),
        ) {
            let mut record = sample(state);
            record.owner = owner;
            record.last_error = error;
            record.clean_failures = failures;
            record.epoch = epoch;
            let description = render_description(&human, &record);
            let parsed = parse_description(&description);
            prop_assert_eq!(&parsed.human, &human);
            prop_assert_eq!(parsed.record.as_ref(), Some(&record));
            // Rewriting never grows the description by more than one block.
            let again = render_description(&parsed.human, &record);
            prop_assert_eq!(again, description);
        }

        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = parse_description(&text);
        }
    }
}
