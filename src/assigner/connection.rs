//! One broker connection of the assigner at a time, kept up by a reconnect loop: its confirm
//! channel for publishing and its reply queue.
//!
//! Each connection is a [`Connected`] with a fresh epoch. When it drops, every request
//! published on it is answered as lost (its reply would come to a reply queue that no longer
//! exists, which makes the worker release the slot, DESIGN §3) and the loop connects again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::metrics::Metrics;
use super::pending::Pending;
use crate::backoff::Backoff;
use crate::broker::{self, PERSISTENT, json_properties};
use crate::cluster::{self, Brokers};
use crate::protocol::{Control, Names, PROTOCOL_VERSION, encode};

/// How long a stopping assigner keeps its connection open for the releases it still holds,
/// and how long it gives each of them.
pub(crate) const RELEASE_FLUSH: Duration = Duration::from_secs(3);

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// One live broker connection.
pub(crate) struct Connected {
    pub(crate) epoch: u64,
    alive: AtomicBool,
    connection: Connection,
    /// In confirm mode: every publish is awaited until the broker has it.
    publisher: Channel,
    /// Where replies come: server-named, exclusive, auto-delete.
    reply_queue: String,
    /// For passive declares, which close their channel on failure; opened again as needed.
    inspector: Mutex<Option<Channel>>,
    /// Slot queues declared on this connection (declared before the first publish to them).
    declared_slots: Mutex<HashSet<String>>,
    names: Names,
    /// The broker node this connection goes to, redacted (`/readyz` says it).
    pub(crate) node: String,
    /// Fired when the broker refused a message: the connection is given up for a fresh one.
    /// A channel that published to a quorum queue while its leader was lost can go on being
    /// refused after a new leader is elected (seen on RabbitMQ 3.10, DESIGN §3 "Cluster").
    abandon: CancellationToken,
}

impl Connected {
    /// Whether this connection is still the live one. Checked after registering a request:
    /// either the check sees the loss, or the loss handler sees the request.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && self.connection.status().connected()
    }

    /// Properties of a request whose reply comes to this connection's reply queue, and
    /// which the broker drops after `expiration` unconsumed.
    pub(crate) fn request_properties(
        &self,
        request_id: Uuid,
        expiration: Duration,
    ) -> BasicProperties {
        json_properties()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(request_id.to_string().into())
            .with_expiration(expiration.as_millis().to_string().into())
    }

    /// Publishes to queue `queue` (default exchange) and waits for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), LinkError> {
        self.send(queue, body, properties).await?.await
    }

    /// Publishes to queue `queue` (default exchange); the answer is the broker's confirm
    /// still to come (`Err` if it refuses the message or the channel goes). Await it: an
    /// unawaited confirm stays with the channel until it closes.
    pub(crate) async fn send(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<impl Future<Output = Result<(), LinkError>> + Send + 'static, LinkError> {
        let confirm = self
            .publisher
            .basic_publish(
                ShortString::from(""),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        let abandon = self.abandon.clone();
        Ok(async move {
            if confirm.await?.is_nack() {
                if !abandon.is_cancelled() {
                    tracing::warn!(
                        "the broker refused a message; starting over on a fresh connection"
                    );
                    abandon.cancel();
                }
                return Err(LinkError::Nacked);
            }
            Ok(())
        })
    }

    /// Publishes a persistent `Release` of `slot` with `lease_token`, confirmed.
    pub(crate) async fn publish_release(
        &self,
        slot: &str,
        lease_token: &str,
    ) -> Result<(), LinkError> {
        let message = Control::Release {
            v: PROTOCOL_VERSION,
            lease_token: lease_token.to_owned(),
        };
        self.publish_control(slot, &message).await
    }

    /// Publishes `message` to the control queue of `slot`, persistent, and waits for the
    /// broker's confirm: a release or an operator action, never lost once confirmed.
    pub(crate) async fn publish_control(
        &self,
        slot: &str,
        message: &Control,
    ) -> Result<(), LinkError> {
        self.declare_slot(slot).await?;
        let properties = json_properties().with_delivery_mode(PERSISTENT);
        self.publish(&self.names.slot_queue(slot), &encode(message), properties)
            .await
    }

    /// Declares the control queue of `slot` once per connection, with the worker's arguments.
    pub(crate) async fn declare_slot(&self, slot: &str) -> Result<(), LinkError> {
        let mut declared = self.declared_slots.lock().await;
        if !declared.contains(slot) {
            broker::declare_slot_queue(&self.publisher, &self.names, slot).await?;
            declared.insert(slot.to_owned());
        }
        Ok(())
    }

    /// A new channel of this connection, for a task that closes it when done (a history read).
    pub(crate) async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        self.connection.create_channel().await
    }

    /// Messages ready in `queue` and its consumer count, by passive declare.
    pub(crate) async fn queue_counts(&self, queue: &str) -> Result<(u32, u32), LinkError> {
        let mut inspector = self.inspector.lock().await;
        let channel = match inspector.as_ref() {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = self.connection.create_channel().await?;
                *inspector = Some(channel.clone());
                channel
            }
        };
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        Ok((queue.message_count(), queue.consumer_count()))
    }
}

/// What the connection loop needs.
pub(crate) struct LinkConfig {
    /// The broker nodes, tried in order ([`Brokers`]).
    pub(crate) amqp_urls: Vec<String>,
    /// How `amqps://` nodes' certificates are checked.
    pub(crate) tls: broker::BrokerTls,
    pub(crate) names: Names,
    pub(crate) pools: Vec<String>,
}

/// Connects, serves replies until the connection drops, connects again; publishes the live
/// connection in `current`. Stops when `cancel` fires, once `releases_done` has (or after
/// [`RELEASE_FLUSH`]).
pub(crate) async fn connection_loop(
    config: LinkConfig,
    metrics: Arc<Metrics>,
    pending: Arc<Pending>,
    current: watch::Sender<Option<Arc<Connected>>>,
    cancel: CancellationToken,
    releases_done: CancellationToken,
) {
    let mut epoch = 0;
    let mut connected_once = false;
    let mut backoff = Backoff::new(Duration::from_millis(100), broker::RECONNECT_MAX);
    let brokers = Brokers::new(config.amqp_urls.clone(), config.tls.clone());
    loop {
        let name = format!(
            "berth-assigner-{}-{}",
            config.names.namespace(),
            std::process::id()
        );
        let Some(cluster::Connected { connection, node }) =
            brokers.connect_with_backoff(&name, &cancel).await
        else {
            break;
        };
        epoch += 1;
        match open(&config, connection, node, epoch).await {
            Ok((connected, replies)) => {
                backoff.reset();
                tracing::info!(epoch, node = %connected.node, "connected to the broker");
                if std::mem::replace(&mut connected_once, true) {
                    metrics.broker_reconnected();
                }
                current.send_replace(Some(Arc::clone(&connected)));
                serve_replies(&connected, replies, &pending, &cancel).await;
                if cancel.is_cancelled() {
                    let _ = tokio::time::timeout(RELEASE_FLUSH, releases_done.cancelled()).await;
                }
                connected.alive.store(false, Ordering::SeqCst);
                current.send_replace(None);
                pending.fail_through(epoch);
                if connected.abandon.is_cancelled() && !cancel.is_cancelled() {
                    let _ = connected
                        .connection
                        .close(200, "refused a message; starting over".into())
                        .await;
                }
                if cancel.is_cancelled() {
                    let _ = connected
                        .connection
                        .close(200, "assigner stopping".into())
                        .await;
                    break;
                }
                tracing::warn!(epoch, node = %connected.node, "lost the broker connection; reconnecting");
            }
            Err(err) => tracing::warn!(error = %err, "cannot set up the broker session; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn open(
    config: &LinkConfig,
    connection: Connection,
    node: String,
    epoch: u64,
) -> Result<(Arc<Connected>, lapin::Consumer), LinkError> {
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    broker::declare_common(&publisher, &config.names).await?;
    let history = connection.create_channel().await?;
    if let Err(err) = broker::declare_history(history, &config.names).await {
        tracing::warn!(error = %err, stream = %config.names.history_queue(),
            "cannot declare the history stream; GET /v1/history answers 503 until it exists");
    }
    for pool in &config.pools {
        broker::declare_pool_queue(&publisher, &config.names, pool).await?;
        // The queue of berth before priorities: nothing is published to it any more; the
        // worker feeds take what is left and delete it, or this does once it is empty.
        let scratch = connection.create_channel().await?;
        match broker::delete_retired_pool_queue(scratch, &config.names, pool).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(pool = %pool,
                queue = %config.names.retired_assign_queue(pool),
                "the pool queue of an older berth still holds requests or is consumed; worker processes drain it and delete it"),
            Err(err) => {
                tracing::warn!(pool = %pool, error = %err, "cannot delete the older pool queue")
            }
        }
    }
    let reply_channel = connection.create_channel().await?;
    // No acks: a reply is acted on (handed out or released) as soon as it arrives, and if
    // this process dies the exclusive queue goes with it.
    let (reply_queue, replies) = broker::private_queue(&reply_channel).await?;
    let connected = Connected {
        epoch,
        alive: AtomicBool::new(true),
        connection,
        publisher,
        reply_queue,
        inspector: Mutex::new(None),
        declared_slots: Mutex::new(HashSet::new()),
        names: config.names.clone(),
        node,
        abandon: CancellationToken::new(),
    };
    Ok((Arc::new(connected), replies))
}

/// Hands replies to their requests until the connection drops or `cancel` fires.
async fn serve_replies(
    connected: &Connected,
    mut replies: lapin::Consumer,
    pending: &Pending,
    cancel: &CancellationToken,
) {
    let mut events = connected.connection.events_listener();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = connected.abandon.cancelled() => return,
            event = events.next() => {
                if let Some(lapin::Event::Error(err)) = event {
                    // lapin says here also when the broker closes one channel (a passive
                    // declare of a queue that is missing, a history read of a deleted
                    // stream): only a connection that is no longer up is lost.
                    if connected.connection.status().connected() {
                        tracing::debug!(error = %err, "the broker closed a channel");
                    } else {
                        tracing::warn!(error = %err, "broker connection error");
                        return;
                    }
                }
            }
            delivery = replies.next() => match delivery {
                Some(Ok(delivery)) => {
                    let correlation = delivery.properties.correlation_id().as_ref().map(|c| c.as_str());
                    pending.deliver(correlation, &delivery.data);
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "reply consumer failed");
                    return;
                }
                None => return,
            }
        }
    }
}
