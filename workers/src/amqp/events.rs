//! Lifecycle events (DESIGN §6): every transition a slot worker makes is published on
//! `<ns>.events` with routing key `<pool>.<slot>.<event>`. Events are notifications: a failed
//! publish is logged and counted (`berth_worker_events_unpublished`), and never holds up the
//! transition.

use std::sync::Arc;

use chrono::Utc;
use lapin::Channel;
use lapin::options::BasicPublishOptions;
use tracing::Instrument;

use berth::protocol::{Event, EventKind, Names, PROTOCOL_VERSION, encode};

use super::BROKER_TIMEOUT;
use crate::metrics::Metrics;

/// Publishes the events of one slot.
pub(crate) struct Events {
    channel: Channel,
    names: Names,
    pool: String,
    slot: String,
    metrics: Arc<Metrics>,
}

impl Events {
    pub(crate) fn new(
        channel: Channel,
        names: Names,
        pool: &str,
        slot: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Events {
            channel,
            names,
            pool: pool.to_owned(),
            slot: slot.to_owned(),
            metrics,
        }
    }

    /// Publishes `kind` without waiting for the broker's confirm: events are notifications
    /// and never hold up a transition (DESIGN §3), so the confirm is awaited by a task of its
    /// own, which counts a refusal. Awaiting it here would put one broker round trip on every
    /// transition (on the claim path, before the reply). The publish itself is still awaited,
    /// so events leave in the order of the transitions, ahead of any reply that follows.
    pub(crate) async fn emit(&self, kind: EventKind, owner: Option<&str>) {
        self.emit_action(kind, owner, None, None).await;
    }

    /// [`Events::emit`] for the transition of an operator action: with who asked and why.
    pub(crate) async fn emit_action(
        &self,
        kind: EventKind,
        owner: Option<&str>,
        by: Option<&str>,
        reason: Option<&str>,
    ) {
        let event = Event {
            v: PROTOCOL_VERSION,
            event: kind,
            pool: self.pool.clone(),
            slot: self.slot.clone(),
            owner: owner.map(str::to_owned),
            at: Utc::now(),
            by: by.map(str::to_owned),
            reason: reason.map(str::to_owned),
        };
        let body = encode(&event);
        let publish = self.channel.basic_publish(
            self.names.events_exchange().into(),
            event.routing_key().into(),
            BasicPublishOptions::default(),
            &body,
            berth::broker::json_properties(),
        );
        let confirm = match tokio::time::timeout(BROKER_TIMEOUT, publish).await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(err)) => return self.failed(kind, &err.to_string()),
            Err(_) => return self.failed(kind, "the broker did not take it in time"),
        };
        let metrics = Arc::clone(&self.metrics);
        let pool = self.pool.clone();
        let failed = move |why: &str| {
            metrics.event_unpublished(&pool);
            warn_unpublished(kind, why);
        };
        // The channel is in confirm mode: lapin keeps an unawaited confirm until the channel
        // closes, so it is always awaited, here off the transition's path.
        let settle = async move {
            match tokio::time::timeout(BROKER_TIMEOUT, confirm).await {
                Ok(Ok(confirmation)) if confirmation.is_ack() => {
                    tracing::debug!(event = kind.as_str(), "event published");
                }
                Ok(Ok(_)) => failed("the broker refused it"),
                Ok(Err(err)) => failed(&err.to_string()),
                Err(_) => failed("no confirm from the broker in time"),
            }
        };
        tokio::spawn(settle.in_current_span());
    }

    /// Counts and logs an event that could not be published.
    fn failed(&self, kind: EventKind, why: &str) {
        self.metrics.event_unpublished(&self.pool);
        warn_unpublished(kind, why);
    }
}

fn warn_unpublished(kind: EventKind, why: &str) {
    tracing::warn!(
        event = kind.as_str(),
        error = why,
        "could not publish an event"
    );
}
