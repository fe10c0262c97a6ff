//! The assigner's link to the broker: one connection at a time, its confirm channel for
//! publishing and its reply queue, kept up by a reconnect loop.
//!
//! Each connection is a [`Session`] with a fresh epoch. When it drops, every request
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
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::pending::Pending;
use crate::backoff::Backoff;
use crate::broker::{self, PERSISTENT, json_properties};
use crate::protocol::{AssignReply, Control, Names, PROTOCOL_VERSION, encode};

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// One live broker connection.
pub(crate) struct Session {
    pub(crate) epoch: u64,
    alive: AtomicBool,
    connection: Connection,
    /// In confirm mode: every publish is awaited until the broker has it.
    publisher: Channel,
    /// Where replies come: server-named, exclusive, auto-delete.
    pub(crate) reply_queue: String,
    /// For passive declares, which close their channel on failure; opened again as needed.
    inspector: Mutex<Option<Channel>>,
    /// Slot queues declared on this connection (declared before the first publish to them).
    declared_slots: Mutex<HashSet<String>>,
    names: Names,
}

impl Session {
    /// Whether this connection is still the live one. Checked after registering a request:
    /// either the check sees the loss, or the loss handler sees the request.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && self.connection.status().connected()
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
        Ok(async move {
            if confirm.await?.is_nack() {
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
        self.declare_slot(slot).await?;
        let message = Control::Release {
            v: PROTOCOL_VERSION,
            lease_token: lease_token.to_owned(),
        };
        let properties = json_properties().with_delivery_mode(PERSISTENT);
        self.publish(&self.names.slot_queue(slot), &encode(&message), properties)
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

/// The current session, if any, shared by the handlers.
#[derive(Clone)]
pub(crate) struct Link {
    current: watch::Receiver<Option<Arc<Session>>>,
}

impl Link {
    /// The live session, or `None` while disconnected.
    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.current.borrow().clone().filter(|s| s.is_alive())
    }

    /// Waits for a live session; `None` once `cancel` fires.
    pub(crate) async fn wait_session(&self, cancel: &CancellationToken) -> Option<Arc<Session>> {
        let mut current = self.current.clone();
        loop {
            if let Some(session) = self.session() {
                return Some(session);
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                changed = current.changed() => if changed.is_err() { return None },
                // A session may die without the watch changing yet; look again soon.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// What the connection loop needs.
pub(crate) struct LinkConfig {
    pub(crate) amqp_url: String,
    pub(crate) names: Names,
    pub(crate) pools: Vec<String>,
}

/// Starts the connection loop and the release task; they stop when `cancel` fires.
pub(crate) fn start(
    config: LinkConfig,
    pending: Arc<Pending>,
    releases: mpsc::UnboundedReceiver<AssignReply>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Link {
    let (tx, rx) = watch::channel(None);
    let link = Link { current: rx };
    // The connection stays open until the release task has sent what it still holds.
    let releases_done = CancellationToken::new();
    tracker.spawn(connection_loop(
        config,
        pending,
        tx,
        cancel.clone(),
        releases_done.clone(),
    ));
    tracker.spawn(release_loop(
        link.clone(),
        releases,
        metrics,
        cancel,
        releases_done,
    ));
    link
}

async fn connection_loop(
    config: LinkConfig,
    pending: Arc<Pending>,
    current: watch::Sender<Option<Arc<Session>>>,
    cancel: CancellationToken,
    releases_done: CancellationToken,
) {
    let mut epoch = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), broker::RECONNECT_MAX);
    loop {
        let name = format!(
            "berth-assigner-{}-{}",
            config.names.namespace(),
            std::process::id()
        );
        let Some(connection) = broker::connect_with_backoff(&config.amqp_url, &name, &cancel).await
        else {
            break;
        };
        epoch += 1;
        match open_session(&config, connection, epoch).await {
            Ok((session, replies)) => {
                backoff.reset();
                tracing::info!(epoch, "connected to the broker");
                current.send_replace(Some(Arc::clone(&session)));
                serve_replies(&session, replies, &pending, &cancel).await;
                if cancel.is_cancelled() {
                    let _ = tokio::time::timeout(DRAIN, releases_done.cancelled()).await;
                }
                session.alive.store(false, Ordering::SeqCst);
                current.send_replace(None);
                pending.fail_through(epoch);
                if cancel.is_cancelled() {
                    let _ = session
                        .connection
                        .close(200, "assigner stopping".into())
                        .await;
                    break;
                }
                tracing::warn!(epoch, "lost the broker connection; reconnecting");
            }
            Err(err) => tracing::warn!(error = %err, "cannot set up the broker session; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn open_session(
    config: &LinkConfig,
    connection: Connection,
    epoch: u64,
) -> Result<(Arc<Session>, lapin::Consumer), LinkError> {
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    broker::declare_common(&publisher, &config.names).await?;
    for pool in &config.pools {
        broker::declare_pool_queue(&publisher, &config.names, pool).await?;
    }
    let reply_channel = connection.create_channel().await?;
    // No acks: a reply is acted on (handed out or released) as soon as it arrives, and if
    // this process dies the exclusive queue goes with it.
    let (reply_queue, replies) = broker::private_queue(&reply_channel).await?;
    let session = Session {
        epoch,
        alive: AtomicBool::new(true),
        connection,
        publisher,
        reply_queue,
        inspector: Mutex::new(None),
        declared_slots: Mutex::new(HashSet::new()),
        names: config.names.clone(),
    };
    Ok((Arc::new(session), replies))
}

/// Hands replies to their requests until the connection drops or `cancel` fires.
async fn serve_replies(
    session: &Session,
    mut replies: lapin::Consumer,
    pending: &Pending,
    cancel: &CancellationToken,
) {
    let mut events = session.connection.events_listener();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => {
                if let Some(lapin::Event::Error(err)) = event {
                    tracing::warn!(error = %err, "broker connection error");
                    return;
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

/// Releases the slots of replies nobody could take, retrying across reconnects. On shutdown
/// it sends what it still holds (each try bounded) before the connection closes; a release
/// lost even so is bounded by the slot's lease.
async fn release_loop(
    link: Link,
    mut releases: mpsc::UnboundedReceiver<AssignReply>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    done: CancellationToken,
) {
    let _done = done.drop_guard();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut unsent = Vec::new();
    'replies: loop {
        let reply = tokio::select! {
            _ = cancel.cancelled() => break,
            reply = releases.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
        };
        metrics.abandoned_reply();
        loop {
            let Some(session) = link.wait_session(&cancel).await else {
                unsent.push(reply);
                break 'replies;
            };
            match release(&session, &reply).await {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(err) => {
                    tracing::warn!(slot = %reply.slot, error = %err, "could not release; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            unsent.push(reply);
                            break 'replies;
                        }
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
    while let Ok(reply) = releases.try_recv() {
        unsent.push(reply);
    }
    for reply in unsent {
        match link.session() {
            Some(session) => {
                let _ = tokio::time::timeout(DRAIN, release(&session, &reply)).await;
            }
            None => tracing::warn!(slot = %reply.slot,
                "stopping without the broker; this slot comes back when its lease expires"),
        }
    }
}

async fn release(session: &Session, reply: &AssignReply) -> Result<(), LinkError> {
    session
        .publish_release(&reply.slot, &reply.lease_token)
        .await?;
    tracing::info!(slot = %reply.slot, request_id = %reply.request_id,
        "released a slot that could not be handed out");
    Ok(())
}

/// How long shutdown waits for outstanding releases.
const DRAIN: Duration = Duration::from_secs(3);
