//! One slot worker: take the slot lock, read the store record, act on it, and start over
//! from the store record whenever the broker goes away (DESIGN §3 "Worker start").
//!
//! The state lives only in the store. In memory a worker keeps the last [`SlotView`] it read
//! or wrote, and every write is a compare-and-swap against it: on a `412` it re-reads and
//! decides again ([`Session::transition`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Channel, Consumer};
use tokio_util::sync::CancellationToken;

use berth::backoff::Backoff;
use berth::protocol::Names;
use berth::record::{SlotRecord, SlotState};
use berth::store::slot::{SlotView, read_slot, write_slot};
use berth::store::{SlotStore, StoreError};

use crate::connection::Connector;
use crate::events::Events;
use crate::feed::Feed;
use crate::lock;
use crate::options::{SlotSpec, WorkerOptions};

/// What a slot worker needs, shared by all its sessions.
pub(crate) struct Slot {
    pub(crate) spec: SlotSpec,
    pub(crate) names: Names,
    pub(crate) store: Arc<dyn SlotStore>,
    pub(crate) options: Arc<WorkerOptions>,
    /// Where this slot worker waits for assign requests while its slot is free.
    pub(crate) feed: Arc<Feed>,
    pub(crate) cancel: CancellationToken,
}

/// Why a step could not finish. Store trouble is ridden out inside a session (back off,
/// re-read the record); broker trouble ends the session, which starts over from the lock.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Trouble {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended one of our consumers")]
    ConsumerGone,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("could not settle a message: its channel is gone")]
    Unsettled,
    #[error("the broker did not answer within {0:?}; starting over on a fresh connection")]
    Stalled(Duration),
}

/// The longest a slot worker waits for the broker on one operation (a publish, its confirm,
/// an ack, a cancel). A connection that died without lapin noticing, or a broker that stopped
/// answering, would otherwise hold the slot worker forever; past this the session ends and
/// the worker starts over from the lock and the store record, as after any broker trouble.
pub(crate) const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// Awaits the broker operation `op`, at most [`BROKER_TIMEOUT`].
pub(crate) async fn broker<T, E: Into<Trouble>>(
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Trouble> {
    match tokio::time::timeout(BROKER_TIMEOUT, op).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Trouble::Stalled(BROKER_TIMEOUT)),
    }
}

/// Acks `delivery`; a channel that is gone is broker trouble (the broker requeues it).
pub(crate) async fn ack(delivery: &Delivery) -> Result<(), Trouble> {
    if broker(delivery.ack(BasicAckOptions::default())).await? {
        Ok(())
    } else {
        Err(Trouble::Unsettled)
    }
}

/// Gives `delivery` back to its queue, for this or another worker to handle again.
pub(crate) async fn requeue(delivery: &Delivery) -> Result<(), Trouble> {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if broker(delivery.nack(options)).await? {
        Ok(())
    } else {
        Err(Trouble::Unsettled)
    }
}

/// Whether the worker goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Shutdown was asked for; the step in hand is settled.
    Stop,
}

/// The part of a slot worker's life spent holding the slot lock on one channel.
pub(crate) struct Session<'a> {
    pub(crate) slot: &'a Slot,
    pub(crate) channel: Channel,
    pub(crate) control: Consumer,
    pub(crate) events: Events,
    /// The record as last read or written, with the ETag to write it back.
    pub(crate) view: SlotView,
}

/// Runs one slot worker until `slot.cancel` fires.
pub(crate) async fn run(slot: Slot, connector: Arc<Connector>) {
    let options = &slot.options;
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    loop {
        let lock = match lock::acquire(
            &connector,
            &slot.names,
            &slot.spec.slot,
            options,
            &slot.cancel,
        )
        .await
        {
            Ok(Some(lock)) => lock,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot take the slot lock");
                if !pause(&slot.cancel, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let channel = lock.channel.clone();
        let result = Session::start(&slot, lock).await;
        if channel.status().connected() {
            // Closing the channel requeues anything unacked and frees the slot lock.
            let closing = channel.close(200, "slot worker stopping".into());
            let _ = tokio::time::timeout(BROKER_TIMEOUT, closing).await;
        }
        match result {
            Ok(()) => {
                tracing::info!("stopped");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "lost the broker; will recover from the store record");
                if !pause(&slot.cancel, backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps for `delay`; `false` when `cancel` fired first.
pub(crate) async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

impl<'a> Session<'a> {
    /// Reads the record under the lock and acts on it until shutdown (`Ok`) or broker
    /// trouble (`Err`).
    async fn start(slot: &'a Slot, lock: lock::Lock) -> Result<(), Trouble> {
        let mut backoff = Backoff::new(slot.options.backoff_min, slot.options.backoff_max);
        let view = loop {
            match read_slot(&*slot.store, &slot.spec.slot).await {
                Ok(view) => break view,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the slot record; retrying");
                    if !pause(&slot.cancel, backoff.next_delay()).await {
                        return Ok(());
                    }
                }
            }
        };
        tracing::info!(state = %view.record.state, "recovered the slot record");
        let events = Events::new(
            lock.channel.clone(),
            slot.names.clone(),
            &slot.spec.pool,
            &slot.spec.slot,
        );
        let session = Session {
            slot,
            channel: lock.channel,
            control: lock.control,
            events,
            view,
        };
        session.run(backoff).await
    }

    async fn run(mut self, mut backoff: Backoff) -> Result<(), Trouble> {
        loop {
            let step = match self.view.record.state {
                SlotState::Free => self.serve_free().await,
                SlotState::Used => self.serve_used().await,
                SlotState::Dirty => self.clean().await,
                SlotState::Disabled => self.wait_disabled().await,
            };
            match step {
                Ok(Flow::Continue) => backoff.reset(),
                Ok(Flow::Stop) => return Ok(()),
                Err(Trouble::Store(err)) => {
                    // Keep the lock; back off and decide again from a fresh read.
                    tracing::warn!(error = %err, "store trouble; will re-read the slot record");
                    loop {
                        if !pause(&self.slot.cancel, backoff.next_delay()).await {
                            return Ok(());
                        }
                        match self.reread().await {
                            Ok(()) => break,
                            Err(err) => tracing::warn!(error = %err, "cannot read the slot record"),
                        }
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Replaces the view with the store's current one.
    pub(crate) async fn reread(&mut self) -> Result<(), StoreError> {
        self.view = read_slot(&*self.slot.store, &self.slot.spec.slot).await?;
        Ok(())
    }

    /// Writes the record that `next` makes of the current one, by compare-and-swap. On a
    /// `412` it re-reads and asks `next` again; `next` answers `None` when the record it is
    /// shown no longer allows the transition. `Ok(true)` when written.
    pub(crate) async fn transition(
        &mut self,
        next: impl Fn(&SlotRecord) -> Option<SlotRecord>,
    ) -> Result<bool, StoreError> {
        loop {
            let Some(record) = next(&self.view.record) else {
                return Ok(false);
            };
            match write_slot(&*self.slot.store, &self.view, &record).await {
                Ok(view) => {
                    // Each transition also has a line of its own, at info, saying why.
                    if view.record.state != self.view.record.state {
                        tracing::debug!(from = %self.view.record.state, to = %view.record.state, "slot state changed");
                    }
                    self.view = view;
                    return Ok(true);
                }
                Err(StoreError::Conflict) => {
                    tracing::info!("the slot record changed since it was read (412); re-reading");
                    self.reread().await?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Refuses `delivery` for good: a copy goes to the dead-letter queue with `reason`, and
    /// the original is acked.
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), Trouble> {
        broker(berth::broker::dead_letter(
            &self.channel,
            &self.slot.names,
            delivery,
            reason,
        ))
        .await
    }

    /// The next message of the control queue; its end means the broker dropped us.
    pub(crate) async fn next_control(&mut self) -> Result<Delivery, Trouble> {
        Ok(self.control.next().await.ok_or(Trouble::ConsumerGone)??)
    }

    /// Waits for a release, a renew or the end of the lease (looking at the clock again now
    /// and then: [`crate::expiry::LOOK_AGAIN`]).
    async fn serve_used(&mut self) -> Result<Flow, Trouble> {
        let wait = crate::expiry::next_look(&self.view.record, self.slot.options.lease_grace);
        let cancel = self.slot.cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(Flow::Stop),
            delivery = self.next_control() => {
                self.on_control(delivery?).await?;
                Ok(Flow::Continue)
            }
            _ = tokio::time::sleep(wait) => self.expire().await,
        }
    }

    /// A disabled slot does nothing but answer control messages (as not held) and look at
    /// its record again now and then, until an operator sets another state.
    async fn wait_disabled(&mut self) -> Result<Flow, Trouble> {
        let poll = self.slot.options.disabled_poll;
        if self
            .alongside_control(tokio::time::sleep(poll))
            .await?
            .is_none()
        {
            return Ok(Flow::Stop);
        }
        self.reread().await?;
        Ok(Flow::Continue)
    }
}

/// Now, at the precision records keep (milliseconds), so a value written and read back
/// compares equal.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (chaos run): a connection cut while a renew's reply awaited its confirm left
    /// the confirm pending forever, and the slot worker with it; its slot stayed `used` long
    /// past its lease. Every broker wait is now bounded.
    #[tokio::test(start_paused = true)]
    async fn a_broker_wait_that_never_ends_is_cut_off() {
        let never = std::future::pending::<Result<(), lapin::Error>>();
        let started = tokio::time::Instant::now();
        let result = broker(never).await;
        assert!(matches!(result, Err(Trouble::Stalled(_))), "{result:?}");
        assert_eq!(started.elapsed(), BROKER_TIMEOUT);
    }
}
