//! The live feed of the web page (DESIGN §4 "The web page"): ONE consumer per assigner on
//! the events exchange, whatever the number of open pages. Its events go into a broadcast
//! channel that every `GET /v1/events/stream` reads; the channel keeps the last
//! [`CAPACITY`] items, so a page too slow to keep up lags (and is told to re-read the
//! slots) instead of making the assigner hold more.
//!
//! The consumer's queue `<ns>.live.<id>` is exclusive and auto-delete: it lives as long as
//! the assigner's broker connection, and a restarted assigner makes a new one. The feed
//! follows the link's connection: when it drops, the feed says it is down and starts again
//! on the next one.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::link::Link;
use crate::backoff::Backoff;
use crate::protocol::{Event, Names, decode};

/// Items the broadcast channel keeps for its slowest reader: the most a page may fall
/// behind before it is told to re-read the slots.
pub(crate) const CAPACITY: usize = 256;
/// Messages the broker keeps in the feed's queue when the assigner does not read them fast
/// enough (the oldest go first): the feed is a hint, the store is the truth.
const QUEUE_MAX: i64 = 1_000;
/// How often the consumer checks that its connection is still the link's live one.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// What the feed hands to the streams.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// One event, as JSON (shared by every reader, never copied per page).
    Event(Arc<str>),
    /// The feed went up (`true`) or down.
    Up(bool),
}

/// The feed, shared by the stream handlers.
#[derive(Clone)]
pub(crate) struct Feed {
    items: broadcast::Sender<Item>,
    up: watch::Receiver<bool>,
}

impl Feed {
    /// A new reader of the items from now on, and whether the feed is up now.
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Item>, bool) {
        let receiver = self.items.subscribe();
        (receiver, *self.up.borrow())
    }
}

/// Starts the feed's consumer loop on the link's connections; it stops when `cancel` fires.
pub(crate) fn start(
    link: Link,
    names: Names,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Feed {
    let (items, _) = broadcast::channel(CAPACITY);
    let (up_tx, up) = watch::channel(false);
    let feed = Feed {
        items: items.clone(),
        up,
    };
    tracker.spawn(feed_loop(link, names, items, up_tx, cancel));
    feed
}

async fn feed_loop(
    link: Link,
    names: Names,
    items: broadcast::Sender<Item>,
    up: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    while let Some(connected) = link.wait_connected(&cancel).await {
        let queue = names.live_queue(&Uuid::new_v4().simple().to_string());
        match connected.open_channel().await {
            Ok(channel) => {
                match consume(&channel, &names, &queue).await {
                    Ok(consumer) => {
                        backoff.reset();
                        tracing::info!(queue = %queue, "live feed up");
                        up.send_replace(true);
                        let _ = items.send(Item::Up(true));
                        forward(consumer, &items, &cancel, || connected.is_alive()).await;
                        up.send_replace(false);
                        let _ = items.send(Item::Up(false));
                        if !cancel.is_cancelled() {
                            tracing::warn!("live feed down; starting it again");
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot start the live feed"),
                }
                if channel.status().connected() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        channel.close(200, "live feed done".into()),
                    )
                    .await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot open the live feed's channel"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Declares the feed's queue, binds it to every event and consumes it without acks.
async fn consume(
    channel: &lapin::Channel,
    names: &Names,
    queue: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(QUEUE_MAX));
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            names.events_exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let options = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
}

/// Hands each event to the readers until the consumer ends, the connection is no longer
/// the live one, or `cancel` fires.
async fn forward(
    mut consumer: lapin::Consumer,
    items: &broadcast::Sender<Item>,
    cancel: &CancellationToken,
    alive: impl Fn() -> bool,
) {
    let mut check = tokio::time::interval(ALIVE_CHECK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = check.tick() => if !alive() { return },
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => match decode::<Event>(&delivery.data) {
                    // Re-encoded: only what berth's own type holds reaches a page.
                    Ok(event) => {
                        // An event holds strings and timestamps only: this cannot fail.
                        let json = serde_json::to_string(&event).expect("an event serialises");
                        // No reader is no error: nobody has the page open.
                        let _ = items.send(Item::Event(json.into()));
                    }
                    Err(err) => tracing::debug!(error = %err, "live feed: skipped a message that is no event"),
                },
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "live feed consumer failed");
                    return;
                }
                None => return,
            }
        }
    }
}
