//! Lifecycle events (DESIGN §6): every transition a slot worker makes is published on
//! `<ns>.events` with routing key `<pool>.<slot>.<event>`. Events are notifications: a failed
//! publish is logged and counted, and never holds up the transition.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use lapin::Channel;
use lapin::options::BasicPublishOptions;

use berth::protocol::{Event, EventKind, Names, PROTOCOL_VERSION, encode};

static PUBLISH_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many events this process could not publish.
pub fn event_publish_failures() -> u64 {
    PUBLISH_FAILURES.load(Ordering::Relaxed)
}

/// Publishes the events of one slot.
pub(crate) struct Events {
    channel: Channel,
    names: Names,
    pool: String,
    slot: String,
}

impl Events {
    pub(crate) fn new(channel: Channel, names: Names, pool: &str, slot: &str) -> Self {
        Events {
            channel,
            names,
            pool: pool.to_owned(),
            slot: slot.to_owned(),
        }
    }

    /// Publishes `kind` and waits for the broker's confirm. The channel is in confirm mode,
    /// and an unawaited confirm would be kept by lapin until the channel closes.
    pub(crate) async fn emit(&self, kind: EventKind, owner: Option<&str>) {
        let event = Event {
            v: PROTOCOL_VERSION,
            event: kind,
            pool: self.pool.clone(),
            slot: self.slot.clone(),
            owner: owner.map(str::to_owned),
            at: Utc::now(),
        };
        let published = async {
            self.channel
                .basic_publish(
                    self.names.events_exchange().into(),
                    event.routing_key().into(),
                    BasicPublishOptions::default(),
                    &encode(&event),
                    berth::broker::json_properties(),
                )
                .await?
                .await
        };
        match published.await {
            Ok(confirmation) if confirmation.is_ack() => {
                tracing::debug!(event = kind.as_str(), "event published");
            }
            Ok(_) => self.failed(kind, "the broker refused it"),
            Err(err) => self.failed(kind, &err.to_string()),
        }
    }

    fn failed(&self, kind: EventKind, why: &str) {
        PUBLISH_FAILURES.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event = kind.as_str(),
            error = why,
            "could not publish an event"
        );
    }
}
