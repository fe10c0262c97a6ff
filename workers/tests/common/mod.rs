//! Test helpers of the worker: slot workers in-process over a memory store, and a client of
//! the test's namespace on the real broker, with a reply queue and an events queue. The test
//! configuration and polling with a deadline are shared with the root tests
//! (`berth-testkit`).
#![allow(dead_code, unreachable_pub, unused_imports)] // each test binary uses a different part of these helpers

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use uuid::Uuid;

use berth::config::Config;
use berth::protocol::{
    AssignReply, AssignRequest, Control, Event, EventKind, Names, PROTOCOL_VERSION, REASON_HEADER,
    RenewReply, decode, encode,
};
use berth::record::{SlotRecord, SlotState, render_description};
use berth::store::slot::{SlotView, read_slot};
use berth::store::{MemoryStore, SlotStore};
use berth_worker::{RunError, SlotSpec, WorkerOptions, run_slots};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use berth_testkit::{POOL, amqp_url, config, wait_for};

pub mod fake;
pub mod launchpad;
pub mod metrics;

/// Options short enough for tests.
pub fn fast_options() -> WorkerOptions {
    WorkerOptions {
        lease_grace: Duration::ZERO,
        clean_poll: Duration::from_millis(50),
        clean_timeout: Duration::from_secs(10),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        standby_retry: Duration::from_millis(200),
        disabled_poll: Duration::from_millis(200),
        connection_name: "berth-worker-test".into(),
        ..WorkerOptions::default()
    }
}

/// A memory store whose slots are all free.
pub fn free_store(slots: &[&str]) -> Arc<MemoryStore> {
    let store = MemoryStore::new("berth-ci", slots.iter().copied());
    for slot in slots {
        store.insert(
            slot,
            &render_description("test PPA", &SlotRecord::new(SlotState::Free, Utc::now())),
        );
    }
    Arc::new(store)
}

/// Waits until `slot` shows `state` in the store.
pub async fn wait_state(
    store: &dyn SlotStore,
    slot: &str,
    state: SlotState,
    within: Duration,
) -> SlotView {
    wait_for(&format!("{slot} to be {state}"), within, || async {
        let view = read_slot(store, slot).await.map_err(|e| e.to_string())?;
        if view.record.state == state {
            Ok(view)
        } else {
            Err(format!("{:?}", view.record))
        }
    })
    .await
}

/// A client of one test namespace: publishes requests and control messages, collects
/// replies, events and dead letters.
pub struct Client {
    pub names: Names,
    pub conn: Connection,
    pub channel: Channel,
    pub reply_queue: String,
    replies: Consumer,
    events: Consumer,
    pub seen_events: Vec<Event>,
    pending_replies: VecDeque<lapin::message::Delivery>,
    slots: Vec<String>,
}

impl Client {
    pub async fn new(config: &Config) -> Client {
        let names = config.names();
        let conn = berth::cluster::Brokers::new(
            config.broker_urls(),
            berth::broker::BrokerTls::system_roots(),
        )
        .connect("berth-worker-test-client")
        .await
        .unwrap()
        .connection;
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        berth::broker::declare_common(&channel, &names)
            .await
            .unwrap();
        // Declared here too (same arguments as the workers), so that nothing published
        // before a worker is up is dropped unroutable.
        for pool in &config.pools {
            berth::broker::declare_pool_queue(&channel, &names, &pool.name)
                .await
                .unwrap();
            for slot in &pool.slots {
                berth::broker::declare_slot_queue(&channel, &names, slot)
                    .await
                    .unwrap();
            }
        }
        let (reply_queue, replies) = private_queue(&channel).await;
        let (events_queue, events) = private_queue(&channel).await;
        channel
            .queue_bind(
                events_queue.into(),
                names.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let slots = config.pools.iter().flat_map(|p| p.slots.clone()).collect();
        Client {
            names,
            conn,
            channel,
            reply_queue,
            replies,
            events,
            seen_events: Vec::new(),
            pending_replies: VecDeque::new(),
            slots,
        }
    }

    /// Publishes an assign request answered to `reply_to` (this client's queue if `None`).
    pub async fn request_to(&self, owner: &str, lease_secs: u64, reply_to: Option<&str>) -> Uuid {
        let request = AssignRequest {
            v: PROTOCOL_VERSION,
            request_id: Uuid::new_v4(),
            pool: POOL.into(),
            owner: owner.into(),
            lease_secs,
            deadline: Utc::now() + chrono::Duration::seconds(60),
        };
        let properties = berth::broker::json_properties()
            .with_reply_to(reply_to.unwrap_or(&self.reply_queue).into())
            .with_correlation_id(request.request_id.to_string().into());
        self.publish(
            &self.names.assign_queue(POOL),
            &encode(&request),
            properties,
        )
        .await;
        request.request_id
    }

    pub async fn request(&self, owner: &str, lease_secs: u64) -> Uuid {
        self.request_to(owner, lease_secs, None).await
    }

    pub async fn publish(&self, queue: &str, body: &[u8], properties: lapin::BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "broker refused a test message");
    }

    /// The next reply with correlation id `id`, decoded.
    pub async fn reply_for<T: serde::de::DeserializeOwned>(
        &mut self,
        id: Uuid,
        within: Duration,
    ) -> T {
        let wanted = id.to_string();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.pending_replies.iter().position(|d| {
                d.properties.correlation_id().as_ref().map(|c| c.as_str()) == Some(wanted.as_str())
            }) {
                let delivery = self.pending_replies.remove(i).unwrap();
                return decode(&delivery.data).expect("a well-formed reply");
            }
            let next = tokio::time::timeout_at(deadline, self.replies.next()).await;
            match next {
                Ok(Some(Ok(delivery))) => self.pending_replies.push_back(delivery),
                other => panic!("no reply for {id} within {within:?}: {other:?}"),
            }
        }
    }

    pub async fn assign(&mut self, owner: &str, lease_secs: u64) -> AssignReply {
        let id = self.request(owner, lease_secs).await;
        let reply: AssignReply = self.reply_for(id, Duration::from_secs(15)).await;
        assert_eq!(reply.request_id, id);
        reply
    }

    /// Messages ready in the pool queue, and its consumers.
    pub async fn pool_counts(&self) -> (u32, u32) {
        let queue = self
            .channel
            .queue_declare(
                self.names.assign_queue(POOL).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (queue.message_count(), queue.consumer_count())
    }

    /// Whether any reply came (for checks that nothing answered).
    pub async fn no_reply_within(&mut self, within: Duration) -> bool {
        if !self.pending_replies.is_empty() {
            return false;
        }
        tokio::time::timeout(within, self.replies.next())
            .await
            .is_err()
    }

    pub async fn release(&self, slot: &str, token: &str) {
        let message = Control::Release {
            v: PROTOCOL_VERSION,
            lease_token: token.into(),
        };
        let properties =
            berth::broker::json_properties().with_delivery_mode(berth::broker::PERSISTENT);
        self.publish(&self.names.slot_queue(slot), &encode(&message), properties)
            .await;
    }

    /// Publishes an operator action to the slot's control queue, persistent, as the assigner
    /// does.
    pub async fn action(&self, slot: &str, message: &Control) {
        let properties =
            berth::broker::json_properties().with_delivery_mode(berth::broker::PERSISTENT);
        self.publish(&self.names.slot_queue(slot), &encode(message), properties)
            .await;
    }

    pub async fn renew(&mut self, slot: &str, token: &str, lease_secs: u64) -> RenewReply {
        let request_id = Uuid::new_v4();
        let message = Control::Renew {
            v: PROTOCOL_VERSION,
            request_id,
            lease_token: token.into(),
            lease_secs,
        };
        let properties = berth::broker::json_properties()
            .with_reply_to(self.reply_queue.clone().into())
            .with_correlation_id(request_id.to_string().into());
        self.publish(&self.names.slot_queue(slot), &encode(&message), properties)
            .await;
        self.reply_for(request_id, Duration::from_secs(15)).await
    }

    /// Waits for an event `kind` of `slot`, keeping every event seen in `seen_events`.
    pub async fn wait_event(&mut self, slot: &str, kind: EventKind, within: Duration) -> Event {
        if let Some(e) = self
            .seen_events
            .iter()
            .find(|e| e.slot == slot && e.event == kind)
        {
            return e.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(Ok(delivery))) => {
                    let event: Event = decode(&delivery.data).expect("a well-formed event");
                    assert_eq!(delivery.routing_key.as_str(), event.routing_key());
                    self.seen_events.push(event.clone());
                    if event.slot == slot && event.event == kind {
                        return event;
                    }
                }
                _ => panic!(
                    "no {} event of {slot} within {within:?}; seen: {:?}",
                    kind.as_str(),
                    self.seen_events
                        .iter()
                        .map(|e| e.routing_key())
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The `(reason, body)` of the next dead-lettered message, waiting up to `within`.
    pub async fn dead_letter(&self, within: Duration) -> (String, Vec<u8>) {
        wait_for("a dead-lettered message", within, || async {
            let got = self
                .channel
                .basic_get(
                    self.names.dead_queue().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .map_err(|e| e.to_string())?;
            let Some(message) = got else {
                return Err("dead queue empty".into());
            };
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            let reason = match headers.inner().get(REASON_HEADER) {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => format!("{other:?}"),
            };
            Ok((reason, message.delivery.data.clone()))
        })
        .await
    }

    /// Deletes the namespace's queues and exchange (best effort).
    pub async fn cleanup(self) {
        let delete = QueueDeleteOptions::default();
        let mut queues = vec![
            self.names.assign_queue(POOL),
            self.names.dead_queue(),
            self.names.history_queue(),
        ];
        queues.extend(self.slots.iter().map(|s| self.names.slot_queue(s)));
        for queue in queues {
            let _ = self.channel.queue_delete(queue.into(), delete).await;
        }
        let _ = self
            .channel
            .exchange_delete(self.names.events_exchange().into(), Default::default())
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// A server-named, exclusive, auto-delete queue and a no-ack consumer on it.
pub async fn private_queue(channel: &Channel) -> (String, Consumer) {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
        .unwrap();
    let name = queue.name().as_str().to_owned();
    let consumer = channel
        .basic_consume(
            name.clone().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (name, consumer)
}

/// Slot workers hosted in this test process, over the store the test gives them.
pub struct Workers {
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), RunError>>,
}

/// Starts slot workers for `slots` of pool [`POOL`].
pub fn spawn(
    config: &Config,
    slots: &[&str],
    store: Arc<dyn SlotStore>,
    options: WorkerOptions,
) -> Workers {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,lapin=error,lapin::channel=off")
        .with_test_writer()
        .try_init();
    let cancel = CancellationToken::new();
    let specs = slots
        .iter()
        .map(|s| SlotSpec {
            pool: POOL.into(),
            slot: s.to_string(),
        })
        .collect();
    let metrics = Arc::new(berth_worker::Metrics::new([POOL]));
    let handle = tokio::spawn(run_slots(
        Arc::new(config.clone()),
        specs,
        store,
        options,
        metrics,
        cancel.clone(),
    ));
    Workers { cancel, handle }
}

impl Workers {
    /// Stops them as SIGTERM would and checks they ended cleanly.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("workers stop in time");
        result.unwrap().unwrap();
    }
}
