//! The messages that travel over RabbitMQ (DESIGN §3) and the names of the AMQP objects.
//!
//! Every body is JSON with a `"v"` field. [`decode`] refuses unknown versions and malformed
//! bodies with a reason that goes into the `x-berth-reason` header of the dead-lettered copy.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Header that carries why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-berth-reason";

/// The default retention of the history stream (`history_max_age`): RabbitMQ's
/// `x-max-age` syntax, a number and one of `Y`, `M`, `D`, `h`, `m`, `s`.
pub const DEFAULT_HISTORY_MAX_AGE: &str = "30D";
/// The default size cap of the history stream (`history_max_bytes`, `x-max-length-bytes`).
pub const DEFAULT_HISTORY_MAX_BYTES: u64 = 1_000_000_000;

/// The default bound of the dead-letter queue (`dead_letter_max_length`, `x-max-length`):
/// past it, the oldest refused message is dropped for the newest.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u64 = 10_000;

/// The highest priority of an assign request (`"priority"` 0–9 of acquire): the pool
/// queue's `x-max-priority`, and the number of priority bands of a quorum pool, less one.
pub const MAX_PRIORITY: u8 = 9;

/// Whether `name` (a namespace, pool, slot or client name) is safe inside AMQP names,
/// routing keys and URL paths: 1–100 ASCII letters, digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The type of berth's durable queues (`queue_type`). A queue keeps the type it was declared
/// with: changing it on a running deployment is a migration (README "Upgrading").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A queue on one node: gone (durable: unavailable) while that node is down.
    #[default]
    Classic,
    /// A replicated queue (Raft) on every node of the cluster: available while a majority
    /// of the nodes is up.
    Quorum,
}

/// The names of one deployment's AMQP objects, all under one namespace, and the settings
/// their declarations need: the history stream's retention, the dead-letter queue's bound
/// and the type of the durable queues. Every process declares them with these (DESIGN §3), so
/// they travel with the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
    history_max_age: String,
    history_max_bytes: u64,
    dead_letter_max_length: u64,
    queue_type: QueueType,
}

impl Names {
    pub fn new(namespace: impl Into<String>) -> Self {
        Names {
            namespace: namespace.into(),
            history_max_age: DEFAULT_HISTORY_MAX_AGE.to_owned(),
            history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            dead_letter_max_length: DEFAULT_DEAD_LETTER_MAX_LENGTH,
            queue_type: QueueType::default(),
        }
    }

    /// These names with the dead-letter queue's bound (`x-max-length`).
    pub fn with_dead_letter_max_length(mut self, max_length: u64) -> Self {
        self.dead_letter_max_length = max_length;
        self
    }

    /// The dead-letter queue's `x-max-length`.
    pub fn dead_letter_max_length(&self) -> u64 {
        self.dead_letter_max_length
    }

    /// These names with durable queues of type `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The type of the durable queues.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// These names with the history stream's retention (`x-max-age`, `x-max-length-bytes`).
    pub fn with_history(mut self, max_age: impl Into<String>, max_bytes: u64) -> Self {
        self.history_max_age = max_age.into();
        self.history_max_bytes = max_bytes;
        self
    }

    /// The history stream's `x-max-age`.
    pub fn history_max_age(&self) -> &str {
        &self.history_max_age
    }

    /// The history stream's `x-max-length-bytes`.
    pub fn history_max_bytes(&self) -> u64 {
        self.history_max_bytes
    }

    /// `<ns>.history`: a stream queue bound to the events exchange with `#`, every event.
    pub fn history_queue(&self) -> String {
        format!("{}.history", self.namespace)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The queue an assign request of `priority` for `pool` goes to (DESIGN §3 "Priority"):
    /// on `classic`, `<ns>.assign.<pool>.v2`, one priority queue (`x-max-priority`) for every
    /// priority; on `quorum`, `<ns>.assign.<pool>.q<priority>`, one quorum queue per priority
    /// (quorum queues have no message priorities on RabbitMQ 3.x). A priority above
    /// [`MAX_PRIORITY`] counts as [`MAX_PRIORITY`].
    pub fn assign_queue_for(&self, pool: &str, priority: u8) -> String {
        match self.queue_type {
            QueueType::Classic => format!("{}.assign.{pool}.v2", self.namespace),
            QueueType::Quorum => format!(
                "{}.assign.{pool}.q{}",
                self.namespace,
                priority.min(MAX_PRIORITY)
            ),
        }
    }

    /// The pool's queue of priority 0: on `classic` its only one.
    pub fn assign_queue(&self, pool: &str) -> String {
        self.assign_queue_for(pool, 0)
    }

    /// Every queue of the pool, highest priority first: the order a quorum pool's feed reads
    /// its bands in.
    pub fn assign_queues(&self, pool: &str) -> Vec<String> {
        match self.queue_type {
            QueueType::Classic => vec![self.assign_queue(pool)],
            QueueType::Quorum => (0..=MAX_PRIORITY)
                .rev()
                .map(|p| self.assign_queue_for(pool, p))
                .collect(),
        }
    }

    /// `<ns>.assign.<pool>`: the pool queue of berth before priorities, a plain classic queue
    /// whose arguments cannot change. Nobody publishes to it any more; worker feeds take
    /// what is left in it, and whoever finds it empty deletes it (DESIGN §3 "Priority").
    pub fn retired_assign_queue(&self, pool: &str) -> String {
        format!("{}.assign.{pool}", self.namespace)
    }

    /// `<ns>.slot.<slot>`: a slot's control queue (releases, renews, operator actions),
    /// consumed by the holder of the slot lock alone.
    pub fn slot_queue(&self, slot: &str) -> String {
        format!("{}.slot.{slot}", self.namespace)
    }

    /// `<ns>.lock.<slot>`: a slot's lock queue, transient and classic; its exclusive consumer
    /// holds the slot lock (DESIGN §3 "Slot lock").
    pub fn lock_queue(&self, slot: &str) -> String {
        format!("{}.lock.{slot}", self.namespace)
    }

    /// `<ns>.events`: topic exchange of lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// `<ns>.live.<id>`: one assigner's own queue of every event, for its live page feed
    /// (exclusive, gone with the assigner's connection).
    pub fn live_queue(&self, id: &str) -> String {
        format!("{}.live.{id}", self.namespace)
    }

    /// `<ns>.dead.v2`: where rejected messages go, with the reason in a header; bounded by
    /// `x-max-length`. The `v2` because queue arguments cannot change on an existing queue:
    /// `<ns>.dead` of berth before the bound is left alone ([`Names::legacy_dead_queue`]).
    pub fn dead_queue(&self) -> String {
        format!("{}.dead.v2", self.namespace)
    }

    /// `<ns>.dead`: the unbounded dead-letter queue of berth before `dead.v2`; nothing
    /// writes to it any more (the upgrade note says how to drain and delete it).
    pub fn legacy_dead_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }
}

/// Ask a free worker of `pool` for a slot. Sent with `reply_to` and `correlation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignRequest {
    pub v: u32,
    pub request_id: Uuid,
    pub pool: String,
    pub owner: String,
    pub lease_secs: u64,
    /// After this instant nobody is waiting any more: drop the request.
    pub deadline: DateTime<Utc>,
}

/// A worker's answer to an [`AssignRequest`]: the slot and its lease token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignReply {
    pub v: u32,
    pub request_id: Uuid,
    pub slot: String,
    pub pool: String,
    /// The secret that proves the holder; the store keeps only its SHA-256.
    pub lease_token: String,
    pub lease_expires: DateTime<Utc>,
    pub resource: serde_json::Value,
}

/// A message on a slot's control queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// Give the slot back. Persistent; needs no reply.
    Release { v: u32, lease_token: String },
    /// Extend the lease. An RPC: the answer is a [`RenewReply`] to `reply_to`.
    Renew {
        v: u32,
        request_id: Uuid,
        lease_token: String,
        lease_secs: u64,
    },
    /// An operator takes the slot out of service (DESIGN §2 "Operator actions"): a free or
    /// dirty slot at once (a dirty one after its cleaning), a held one when its holder is done
    /// (a drain), or at once with `now`, revoking the lease. Persistent; needs no reply.
    Disable {
        v: u32,
        reason: String,
        #[serde(default)]
        by: Option<String>,
        #[serde(default)]
        now: bool,
    },
    /// An operator puts a disabled slot back (it is cleaned first), or cancels a drain.
    Enable {
        v: u32,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        by: Option<String>,
    },
    /// An operator revokes the lease of a held slot now: it is cleaned and free again.
    Reclaim {
        v: u32,
        reason: String,
        #[serde(default)]
        by: Option<String>,
    },
    /// An operator asks for a dirty slot's cleaning to be tried again now.
    Clean {
        v: u32,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        by: Option<String>,
    },
}

/// How a renew went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewOutcome {
    Renewed,
    /// The token is not the current holder's.
    WrongToken,
    /// The slot is not in use.
    NotHeld,
}

/// A worker's answer to [`Control::Renew`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewReply {
    pub v: u32,
    pub request_id: Uuid,
    pub outcome: RenewOutcome,
    pub lease_expires: Option<DateTime<Utc>>,
}

/// Lifecycle event kinds (DESIGN §6); the last part of the routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Assigned,
    Renewed,
    Released,
    Expired,
    Cleaned,
    CleanFailed,
    Disabled,
    Enabled,
    Reclaimed,
    CleanRequested,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Assigned => "assigned",
            EventKind::Renewed => "renewed",
            EventKind::Released => "released",
            EventKind::Expired => "expired",
            EventKind::Cleaned => "cleaned",
            EventKind::CleanFailed => "clean_failed",
            EventKind::Disabled => "disabled",
            EventKind::Enabled => "enabled",
            EventKind::Reclaimed => "reclaimed",
            EventKind::CleanRequested => "clean_requested",
        }
    }
}

/// A lifecycle event, published to `<ns>.events` with key `<pool>.<slot>.<event>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub event: EventKind,
    pub pool: String,
    pub slot: String,
    pub owner: Option<String>,
    pub at: DateTime<Utc>,
    /// Who asked for an operator action's transition, as the action said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why, for an operator action's transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    pub fn routing_key(&self) -> String {
        format!("{}.{}.{}", self.pool, self.slot, self.event.as_str())
    }
}

/// Why a message body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    #[error("body has no numeric \"v\" field")]
    MissingVersion,
    #[error("unsupported message version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u64),
    #[error("body does not match the message shape: {0}")]
    Shape(String),
}

/// Decodes a message body, checking its version first so that a future version's message is
/// refused as such rather than as a shape error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let v = value
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .ok_or(DecodeError::MissingVersion)?;
    if v != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnknownVersion(v));
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Shape(e.to_string()))
}

/// Encodes a message body.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Our message types hold only strings, numbers, ids and timestamps: this cannot fail.
    serde_json::to_vec(message).expect("protocol message serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_round_trips_with_kind_tag() {
        let m = Control::Release {
            v: 1,
            lease_token: "t".into(),
        };
        let body = encode(&m);
        assert!(String::from_utf8_lossy(&body).contains(r#""kind":"release""#));
        assert_eq!(decode::<Control>(&body).unwrap(), m);
    }

    #[test]
    fn actions_round_trip_and_optional_fields_default() {
        let m = Control::Disable {
            v: 1,
            reason: "broken".into(),
            by: Some("ops".into()),
            now: true,
        };
        assert_eq!(decode::<Control>(&encode(&m)).unwrap(), m);
        let d: Control = decode(br#"{"v":1,"kind":"disable","reason":"r"}"#).unwrap();
        assert_eq!(
            d,
            Control::Disable {
                v: 1,
                reason: "r".into(),
                by: None,
                now: false
            }
        );
        for body in [
            &br#"{"v":1,"kind":"enable"}"#[..],
            br#"{"v":1,"kind":"reclaim","reason":"r"}"#,
            br#"{"v":1,"kind":"clean"}"#,
        ] {
            assert!(decode::<Control>(body).is_ok());
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let err = decode::<Control>(br#"{"v":7,"kind":"release","lease_token":"x"}"#).unwrap_err();
        assert_eq!(err, DecodeError::UnknownVersion(7));
        assert!(matches!(
            decode::<Control>(b"{"),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode::<Control>(b"{}"), Err(DecodeError::MissingVersion));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<AssignRequest>(&body);
            let _ = decode::<AssignReply>(&body);
            let _ = decode::<Control>(&body);
            let _ = decode::<RenewReply>(&body);
        }
    }
}
