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
//! Priorities (DESIGN §3 "Priority"): a classic pool queue orders its requests itself (a
//! priority queue). A quorum pool has a queue per priority: a round first takes the waiting
//! requests with `basic.get` from the highest queue down ([`Feed::take_by_priority`]), and
//! consumes all of them only once they are empty. The pool queue of a berth before
//! priorities is drained the same way and deleted once empty ([`Feed::drain_retired`]).
//!
//! With one slot per process this is the design's picture (consume while free, prefetch 1).
//! With many slots per process the broker sees one consumer instead of one per free slot,
//! so a claim costs no consumer cancel and re-consume — with thousands of consumers on one
//! queue, each of those costs the broker a pass over all of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use berth::backoff::{Backoff, pause};
use berth::protocol::Names;

use super::connection::Connector;
use super::{Error, bounded, requeue};

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
    /// What this feed knows of the pool queue of an older berth.
    retired: Mutex<Retired>,
}

/// How often a feed looks again at the pool queue of an older berth while it is there.
const RETIRED_CHECK: Duration = Duration::from_secs(5);

/// The pool queue of an older berth, as a feed last saw it.
enum Retired {
    /// Not looked at yet.
    Unknown,
    /// There when last looked at (then).
    There(Instant),
    /// Deleted, or not there: not looked at again.
    Gone,
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
            retired: Mutex::new(Retired::Unknown),
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

    /// One round: first the requests left in the pool queue of an older berth, then on a
    /// quorum pool the waiting requests highest priority first (one `basic.get` per band),
    /// then consume every queue of the pool with a prefetch of as many as wait now, hand
    /// requests over while anybody waits, and stop consuming when nobody does (or when twice
    /// as many wait as the prefetch serves: the next round serves them all).
    async fn consume(
        &self,
        channel: &Channel,
        fresh: bool,
        cancel: &CancellationToken,
    ) -> Result<Round, Error> {
        self.drain_retired(channel, cancel).await?;
        let queues = self.names.assign_queues(&self.pool);
        if queues.len() > 1 {
            self.take_by_priority(channel, &queues).await?;
        }
        if !self.anybody_waits() {
            return Ok(Round::Again);
        }
        let prefetch = self.takers().clamp(1, usize::from(u16::MAX));
        bounded(channel.basic_qos(prefetch as u16, BasicQosOptions::default())).await?;
        let mut tags = Vec::with_capacity(queues.len());
        let mut consumers = Vec::with_capacity(queues.len());
        for queue in &queues {
            let consumer = bounded(channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await?;
            tags.push(consumer.tag());
            consumers.push(consumer);
        }
        // While consuming, a request is handed over as it comes: a slot waits, so there is
        // no queue of requests to order (DESIGN §3 "Priority").
        let mut deliveries = futures::stream::select_all(consumers);
        // While the older pool queue is there, a round ends now and then to look at it.
        let retired_there = !matches!(*self.retired_lock(), Retired::Gone);
        let look_again = tokio::time::sleep(RETIRED_CHECK);
        tokio::pin!(look_again);
        if fresh {
            tracing::info!(prefetch, "consuming the pool queue");
        } else {
            tracing::debug!(prefetch, "consuming the pool queue");
        }
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.stop(channel, &tags, deliveries).await?;
                    return Ok(Round::Stop);
                }
                delivery = deliveries.next() => {
                    // The stream ends when the broker has ended every consumer.
                    let delivery = delivery.ok_or(Error::ConsumerGone)??;
                    if let Some(delivery) = self.hand_over(channel, delivery) {
                        requeue(&delivery).await?;
                    }
                    if !self.anybody_waits() {
                        self.stop(channel, &tags, deliveries).await?;
                        return Ok(Round::Again);
                    }
                }
                _ = self.arrived.notified() => {
                    if self.at_least(2 * prefetch) {
                        self.stop(channel, &tags, deliveries).await?;
                        return Ok(Round::Again);
                    }
                }
                _ = &mut look_again, if retired_there => {
                    self.stop(channel, &tags, deliveries).await?;
                    return Ok(Round::Again);
                }
            }
        }
    }

    /// Hands the waiting requests of a quorum pool over, highest priority first and the
    /// oldest first within one: a `basic.get` of each band from the highest down, from the
    /// top again after each request, until nobody waits or every band is empty.
    async fn take_by_priority(&self, channel: &Channel, queues: &[String]) -> Result<(), Error> {
        'scan: while self.anybody_waits() {
            for queue in queues {
                let got =
                    bounded(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
                        .await?;
                if let Some(message) = got {
                    if let Some(delivery) = self.hand_over(channel, message.delivery) {
                        requeue(&delivery).await?;
                        return Ok(());
                    }
                    continue 'scan;
                }
            }
            return Ok(());
        }
        Ok(())
    }

    /// While the pool queue of an older berth is there ([`Names::retired_assign_queue`]):
    /// deletes it if it is empty and unused, else hands over what it holds while anybody
    /// waits and tries again once it is empty. Looked at once per [`RETIRED_CHECK`] at most,
    /// and never again once it is gone (DESIGN §3 "Priority").
    async fn drain_retired(
        &self,
        channel: &Channel,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let due = match *self.retired_lock() {
            Retired::Gone => false,
            Retired::Unknown => true,
            Retired::There(checked) => checked.elapsed() >= RETIRED_CHECK,
        };
        if !due {
            return Ok(());
        }
        let queue = self.names.retired_assign_queue(&self.pool);
        let mut gone = self.delete_retired(cancel).await?;
        if !gone {
            tracing::info!(queue = %queue, "taking the requests left in the pool queue of an older berth");
        }
        while !gone && self.anybody_waits() {
            let got = bounded(channel.basic_get(queue.as_str().into(), BasicGetOptions::default()))
                .await?;
            match got {
                Some(message) => {
                    if let Some(delivery) = self.hand_over(channel, message.delivery) {
                        requeue(&delivery).await?;
                    }
                }
                None => {
                    gone = self.delete_retired(cancel).await?;
                    break;
                }
            }
        }
        *self.retired_lock() = if gone {
            tracing::info!(queue = %queue, "the pool queue of an older berth is gone");
            Retired::Gone
        } else {
            Retired::There(Instant::now())
        };
        Ok(())
    }

    /// Deletes the retired queue if it is empty and unused; whether it is gone.
    async fn delete_retired(&self, cancel: &CancellationToken) -> Result<bool, Error> {
        let Some(scratch) = self.connector.channel(cancel).await else {
            return Ok(false);
        };
        bounded(berth::broker::delete_retired_pool_queue(
            scratch?,
            &self.names,
            &self.pool,
        ))
        .await
    }

    fn retired_lock(&self) -> std::sync::MutexGuard<'_, Retired> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancels the consumers `tags` and settles what the broker sent before the cancels
    /// took effect: handed over if somebody waits, back to the queue if not.
    async fn stop(
        &self,
        channel: &Channel,
        tags: &[ShortString],
        mut deliveries: SelectAll<Consumer>,
    ) -> Result<(), Error> {
        for tag in tags {
            bounded(channel.basic_cancel(tag.clone(), BasicCancelOptions::default())).await?;
        }
        // After the cancel-oks the streams yield what they still hold, then end.
        while let Some(delivery) =
            bounded(async { Ok::<_, Error>(deliveries.next().await) }).await?
        {
            if let Some(delivery) = self.hand_over(channel, delivery?) {
                requeue(&delivery).await?;
            }
        }
        Ok(())
    }
}
