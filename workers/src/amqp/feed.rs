//! The pool feed: one consumer of a pool's queue per worker process, shared by the
//! process's slot workers of that pool (DESIGN §3 "Acquire", steps 1–2).
//!
//! A free slot worker does not consume the pool queue itself: it queues up here
//! ([`Feed::offer`]) and waits. The feed consumes while at least one slot worker waits, with
//! a prefetch of as many as wait, and hands each request to the one that started waiting last
//! ([`Feed::hand_over`]).
//! That slot worker claims, replies and settles the request exactly as if it had consumed it
//! (the ack goes through the feed's channel). When nobody waits any more the feed stops
//! consuming; a request the broker had already sent on its way goes back to the queue for
//! another process.
//!
//! With one slot per process this is the design's picture (consume while free, prefetch 1).
//! With many slots per process the broker sees one consumer instead of one per free slot,
//! so a claim costs no consumer cancel and re-consume — with thousands of consumers on one
//! queue, each of those costs the broker a pass over all of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use berth::backoff::{Backoff, pause};
use berth::protocol::Names;

use super::connection::Connector;
use super::{Error, bounded, next_delivery, requeue};

/// The feed of one pool in one worker process.
pub(crate) struct Feed {
    pool: String,
    names: Names,
    connector: Arc<Connector>,
    /// Free slot workers waiting for a request, in the order they started waiting. A slot
    /// worker that stops waiting drops its receiver; its sender is skipped from then on.
    waiting: Mutex<VecDeque<oneshot::Sender<Offered>>>,
    /// Rung when a slot worker starts waiting.
    arrived: Notify,
}

/// A request handed to a slot worker, with the feed's channel it came on. Until the slot
/// worker takes them out ([`Offered::take`]) the feed answers for the request: dropped
/// unread (the slot worker stopped waiting just as it arrived), it goes back to its queue.
pub(crate) struct Offered {
    delivery: Option<Delivery>,
    channel: Channel,
}

impl Offered {
    /// The delivery, from now on settled by the caller, and the channel it came on (in
    /// confirm mode): the reply goes out there, through the connection that brought the
    /// request, rather than through the slot worker's own, which may be another one.
    pub(crate) fn take(mut self) -> (Delivery, Channel) {
        let delivery = self
            .delivery
            .take()
            .expect("an offered delivery is taken once");
        (delivery, self.channel.clone())
    }
}

impl Drop for Offered {
    fn drop(&mut self) {
        if let Some(delivery) = self.delivery.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let options = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = delivery.nack(options).await;
            });
        }
    }
}

/// How a round of consuming ended.
enum Round {
    /// Nobody waits any more, or more wait than the prefetch serves: decide again.
    Again,
    /// Shutdown: the consumer is stopped.
    Stop,
}

impl Feed {
    pub(crate) fn new(pool: &str, names: Names, connector: Arc<Connector>) -> Self {
        Feed {
            pool: pool.to_owned(),
            names,
            connector,
            waiting: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
        }
    }

    /// Queues a free slot worker up for the next request. Dropping the receiver withdraws.
    pub(crate) fn offer(&self) -> oneshot::Receiver<Offered> {
        let (sender, receiver) = oneshot::channel();
        self.lock().push_back(sender);
        self.arrived.notify_one();
        receiver
    }

    /// How many slot workers wait (a pass over the queue, dropping those that left).
    fn takers(&self) -> usize {
        let mut waiting = self.lock();
        waiting.retain(|sender| !sender.is_closed());
        waiting.len()
    }

    /// Whether any slot worker waits. Cheap: it drops those that left from the end, where
    /// [`Feed::hand_over`] takes from, and stops at the first that still waits.
    fn anybody_waits(&self) -> bool {
        let mut waiting = self.lock();
        while waiting.back().is_some_and(|sender| sender.is_closed()) {
            waiting.pop_back();
        }
        !waiting.is_empty()
    }

    /// Whether at least `n` slot workers wait; counts only when the queue, those that left
    /// included, is that long.
    fn at_least(&self, n: usize) -> bool {
        self.lock().len() >= n && self.takers() >= n
    }

    /// Hands `delivery` to the slot worker that started waiting last; gives it back if none
    /// waits (`Some`). Last in, first out, as connection pools do: the slot used most
    /// recently has its channel and its memory warm, while one idle for long is slow to wake
    /// (the broker hibernates idle channel processes). Which free slot a request gets is
    /// otherwise all the same.
    fn hand_over(&self, channel: &Channel, delivery: Delivery) -> Option<Delivery> {
        let mut delivery = delivery;
        let mut waiting = self.lock();
        while let Some(sender) = waiting.pop_back() {
            let offered = Offered {
                delivery: Some(delivery),
                channel: channel.clone(),
            };
            match sender.send(offered) {
                Ok(()) => return None,
                Err(mut refused) => delivery = refused.delivery.take().expect("just offered"),
            }
        }
        Some(delivery)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<Offered>>> {
        // A panic while holding this lock leaves the queue consistent (a push or a pop).
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Consumes the pool queue whenever a slot worker waits, until `cancel` fires; then stops
    /// consuming but keeps the channel open until `closing` fires, so the slot workers can
    /// still settle the requests they hold. After broker trouble it pauses by `backoff`.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut backoff: Backoff,
        cancel: CancellationToken,
        closing: CancellationToken,
    ) {
        let mut channel: Option<Channel> = None;
        loop {
            if !self.wait_for_takers(&cancel).await {
                break;
            }
            // `fresh`: a channel of its own first round (logged at info).
            let (open, fresh) = match channel.take() {
                Some(open) if open.status().connected() => (open, false),
                _ => match self.open_channel(&cancel).await {
                    Some(Ok(open)) => (open, true),
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "cannot open a channel for the pool queue");
                        if !pause(&cancel, backoff.next_delay()).await {
                            break;
                        }
                        continue;
                    }
                    None => break,
                },
            };
            match self.consume(&open, fresh, &cancel).await {
                Ok(Round::Again) => {
                    backoff.reset();
                    channel = Some(open);
                }
                Ok(Round::Stop) => {
                    channel = Some(open);
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lost the pool queue; consuming again");
                    if !pause(&cancel, backoff.next_delay()).await {
                        break;
                    }
                }
            }
        }
        closing.cancelled().await;
        drop(channel);
    }

    /// Waits until a slot worker waits; `false` when `cancel` fires first.
    async fn wait_for_takers(&self, cancel: &CancellationToken) -> bool {
        loop {
            if self.anybody_waits() {
                return true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = self.arrived.notified() => {}
            }
        }
    }

    async fn open_channel(&self, cancel: &CancellationToken) -> Option<Result<Channel, Error>> {
        let channel = match self.connector.channel(cancel).await? {
            Ok(channel) => channel,
            Err(err) => return Some(Err(err)),
        };
        let ready = async {
            bounded(berth::broker::declare_pool_queue(
                &channel,
                &self.names,
                &self.pool,
            ))
            .await?;
            bounded(channel.confirm_select(ConfirmSelectOptions::default())).await
        };
        Some(ready.await.map(|()| channel))
    }

    /// One round: consume with a prefetch of as many as wait now, hand requests over while
    /// anybody waits, and stop consuming when nobody does (or when twice as many wait as
    /// the prefetch serves: the next round serves them all).
    async fn consume(
        &self,
        channel: &Channel,
        fresh: bool,
        cancel: &CancellationToken,
    ) -> Result<Round, Error> {
        let prefetch = self.takers().clamp(1, usize::from(u16::MAX));
        bounded(channel.basic_qos(prefetch as u16, BasicQosOptions::default())).await?;
        let mut consumer = bounded(channel.basic_consume(
            self.names.assign_queue(&self.pool).into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        if fresh {
            tracing::info!(prefetch, "consuming the pool queue");
        } else {
            tracing::debug!(prefetch, "consuming the pool queue");
        }
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.stop(channel, consumer).await?;
                    return Ok(Round::Stop);
                }
                delivery = next_delivery(&mut consumer) => {
                    let delivery = delivery?;
                    if let Some(delivery) = self.hand_over(channel, delivery) {
                        requeue(&delivery).await?;
                    }
                    if !self.anybody_waits() {
                        self.stop(channel, consumer).await?;
                        return Ok(Round::Again);
                    }
                }
                _ = self.arrived.notified() => {
                    if self.at_least(2 * prefetch) {
                        self.stop(channel, consumer).await?;
                        return Ok(Round::Again);
                    }
                }
            }
        }
    }

    /// Cancels `consumer` and settles what the broker sent before the cancel took effect:
    /// handed over if somebody waits, back to the queue if not.
    async fn stop(&self, channel: &Channel, mut consumer: Consumer) -> Result<(), Error> {
        bounded(channel.basic_cancel(consumer.tag(), BasicCancelOptions::default())).await?;
        // After the cancel-ok the stream yields what it still holds, then ends.
        while let Some(delivery) = bounded(async { Ok::<_, Error>(consumer.next().await) }).await? {
            if let Some(delivery) = self.hand_over(channel, delivery?) {
                requeue(&delivery).await?;
            }
        }
        Ok(())
    }
}
