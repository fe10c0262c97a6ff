//! One slot worker: take the slot lock, read the store record, act on it, and start over
//! from the store record whenever the broker goes away (DESIGN §3 "Worker start").
//!
//! The state lives only in the store. In memory a worker keeps the last [`SlotView`] it read
//! or wrote, and every write is a compare-and-swap against it: on a `412` it re-reads and
//! decides again ([`Session::transition`]).
//!
//! Fencing (DESIGN §3 "Fencing"): the slot lock is the broker's word that this worker alone
//! may act, but a process paused or cut off keeps believing it after the broker gave the lock
//! to a standby. So a worker that takes the lock first raises the record's lock epoch by
//! compare-and-swap ([`Session::take_over`]), and every later write and re-read checks that the
//! epoch is still its own: a worker that finds another one stops at once
//! ([`Trouble::Fenced`]) and goes back to waiting for the lock.
//!
//! `Session` is the state machine; its steps live in the children: the free state and the
//! claim path ([`claim`]), renew and release ([`control`]), lease expiry ([`expiry`]) and
//! cleaning ([`clean`]). Broker calls go through [`crate::amqp`].

mod claim;
mod clean;
mod control;
mod expiry;
mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::{Channel, Consumer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use berth::backoff::{Backoff, pause};
use berth::protocol::Names;
use berth::record::{SlotRecord, SlotState};
use berth::store::slot::{SlotView, read_slot, write_slot};
use berth::store::{SlotStore, StoreError};

use crate::amqp::connection::Connector;
use crate::amqp::events::Events;
use crate::amqp::feed::Feed;
use crate::amqp::{self, BROKER_TIMEOUT, bounded, lock};
use crate::metrics::{Metrics, SlotGauge};
use crate::options::{SlotSpec, WorkerOptions};
use retry::{Call, Retry};

/// What a slot worker needs, shared by all its sessions.
pub(crate) struct Slot {
    spec: SlotSpec,
    names: Names,
    store: Arc<dyn SlotStore>,
    options: Arc<WorkerOptions>,
    /// Where this slot worker waits for assign requests while its slot is free.
    feed: Arc<Feed>,
    /// The process's metrics, where this slot worker counts what it does.
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// Whether the error about a record from a newer berth was said (once, until the record
    /// reads again).
    said_newer: AtomicBool,
}

impl Slot {
    pub(crate) fn new(
        spec: SlotSpec,
        names: Names,
        store: Arc<dyn SlotStore>,
        options: Arc<WorkerOptions>,
        feed: Arc<Feed>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Self {
        Slot {
            spec,
            names,
            store,
            options,
            feed,
            metrics,
            cancel,
            said_newer: AtomicBool::new(false),
        }
    }
}

/// Why a step could not finish. Store trouble is ridden out inside a session (back off,
/// re-read the record); broker trouble ends the session, which starts over from the lock.
#[derive(Debug, thiserror::Error)]
enum Trouble {
    #[error(transparent)]
    Broker(#[from] amqp::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The record carries another worker's lock epoch: that worker took the slot over while
    /// this one was paused or cut off. Nothing more may be done to the slot.
    #[error(
        "another worker took the slot over (the record's lock epoch is {found}, ours was {ours})"
    )]
    Fenced { ours: u64, found: u64 },
    /// A newer berth wrote the record (DESIGN §2): this worker leaves the slot alone.
    #[error("a newer berth wrote the slot record (record version {0})")]
    Newer(u64),
}

/// Whether the worker goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Shutdown was asked for; the step in hand is settled.
    Stop,
}

/// The part of a slot worker's life spent holding the slot lock on one channel.
struct Session<'a> {
    slot: &'a Slot,
    channel: Channel,
    control: Consumer,
    events: Events,
    /// The record as last read or written, with the ETag to write it back.
    view: SlotView,
    /// This session's lock epoch, written into the record when it took the slot over.
    epoch: u64,
    /// This slot worker in `berth_worker_slots`, under the state of `view`; it leaves the
    /// count when the session ends.
    gauge: SlotGauge,
    /// Pauses after store trouble, and the alarm for store errors no retry fixes; the slot
    /// worker's, kept from one session to the next so that an alarm is said once.
    retry: &'a mut Retry,
    /// Set by an operator action that changed the record or asked for a cleaning now: the
    /// work in hand alongside the control queue stops, and the worker decides again.
    interrupt: bool,
}

/// The pause before reconnecting after broker trouble starts here and doubles up to
/// [`berth::broker::RECONNECT_MAX`], so a worker is back within a second of the broker
/// accepting connections again.
const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// Runs one slot worker until `slot.cancel` fires.
pub(crate) async fn run(slot: Slot, connector: Arc<Connector>, lock_turns: Arc<Semaphore>) {
    let options = &slot.options;
    let mut backoff = Backoff::new(RECONNECT_MIN, berth::broker::RECONNECT_MAX);
    let mut retry = Retry::new(
        options.backoff_min,
        options.backoff_max,
        slot.metrics.clone(),
        &slot.spec.pool,
    );
    let standby = slot.metrics.standby(&slot.spec.pool);
    loop {
        let lock = match lock::acquire(
            &connector,
            &slot.names,
            &slot.spec.slot,
            options.standby_retry,
            &standby,
            &lock_turns,
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
        let result = Session::start(&slot, lock, &mut retry).await;
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
            Err(err @ Trouble::Fenced { .. }) => {
                // Said once: the session is over and the worker waits for the lock again, which
                // the broker will not give it while the worker that fenced it lives.
                tracing::warn!(error = %err, "fenced: doing nothing more to the slot; waiting for the slot lock again");
                backoff.reset();
            }
            Err(err @ Trouble::Newer(_)) => {
                // The next session finds the record as it is and leaves it alone
                // (`Session::wait_newer`), saying so at error level.
                tracing::warn!(error = %err, "doing nothing more to the slot; starting over from the record");
                backoff.reset();
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

/// Reads the slot's record, retrying store trouble with `retry`'s pauses until it works;
/// `None` when shutdown was asked for first.
async fn read_retrying(slot: &Slot, retry: &mut Retry) -> Option<SlotView> {
    loop {
        let read = read_slot(&*slot.store, &slot.spec.slot).await;
        retry.note(Call::Read, &read);
        match read {
            Ok(view) => return Some(view),
            Err(err) => {
                let delay = retry.delay(&err, "cannot read the slot record; retrying");
                if !pause(&slot.cancel, delay).await {
                    return None;
                }
            }
        }
    }
}

impl<'a> Session<'a> {
    /// Reads the record under the lock and acts on it until shutdown (`Ok`) or broker
    /// trouble (`Err`).
    async fn start(slot: &'a Slot, lock: lock::Lock, retry: &'a mut Retry) -> Result<(), Trouble> {
        retry.reset();
        let Some(view) = read_retrying(slot, retry).await else {
            return Ok(());
        };
        let events = Events::new(
            lock.channel.clone(),
            slot.names.clone(),
            &slot.spec.pool,
            &slot.spec.slot,
            slot.metrics.clone(),
        );
        let mut gauge = slot.metrics.slot_gauge(&slot.spec.pool);
        gauge.set(view.record.state);
        let mut session = Session {
            slot,
            channel: lock.channel,
            control: lock.control,
            events,
            epoch: view.record.epoch,
            view,
            gauge,
            retry,
            interrupt: false,
        };
        if !session.take_over().await? {
            return Ok(());
        }
        tracing::info!(state = %session.view.record.state, epoch = session.epoch, "recovered the slot record; took the slot over");
        session.run().await
    }

    /// Raises the record's lock epoch by one, by compare-and-swap, and makes it this
    /// session's: from then on a worker that held the slot before and still believes it does
    /// fails its next write or fencing check. A record that was unreadable is written back
    /// readable (dirty). A record from a newer berth is not written: the worker waits until
    /// it reads again ([`Session::wait_newer`]). Retries until written; `false` when shutdown
    /// was asked for first.
    async fn take_over(&mut self) -> Result<bool, Trouble> {
        loop {
            if !self.wait_newer().await? {
                return Ok(false);
            }
            let epoch = self.view.record.epoch.saturating_add(1);
            let record = self.view.record.clone().in_epoch(epoch);
            let written = write_slot(&*self.slot.store, &self.view, &record).await;
            self.retry.note(Call::Write, &written);
            match written {
                Ok(view) => {
                    self.seen(view);
                    self.epoch = epoch;
                    return Ok(true);
                }
                // The worker before us wrote meanwhile (it has not noticed it lost the lock
                // yet): read its write and raise the epoch over it.
                Err(StoreError::Conflict) => {}
                Err(err) => {
                    let delay = self
                        .retry
                        .delay(&err, "cannot write the lock epoch; retrying");
                    if !pause(&self.slot.cancel, delay).await {
                        return Ok(false);
                    }
                }
            }
            let Some(view) = read_retrying(self.slot, self.retry).await else {
                return Ok(false);
            };
            self.seen(view);
        }
    }

    /// While the record is one a newer berth wrote (a rolling upgrade), leaves the slot
    /// alone: writes nothing, answers control messages as for a slot nobody holds, says so
    /// once at error level, and reads the record again every `disabled_poll`. `Ok(true)` once
    /// the record reads; `false` when shutdown was asked for first.
    async fn wait_newer(&mut self) -> Result<bool, Trouble> {
        while let Some(version) = self.view.newer {
            if !self.slot.said_newer.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    version,
                    "the slot record was written by a newer berth (record version {version}); \
                     leaving the slot alone (not cleaned, not claimed) until this worker is \
                     upgraded or the record is written again in version {}",
                    berth::record::RECORD_VERSION
                );
            }
            let poll = tokio::time::sleep(self.slot.options.disabled_poll);
            if let control::Along::Stopped = self.alongside_control(poll).await? {
                return Ok(false);
            }
            // A plain read: nothing is this worker's until it has taken the slot over.
            let read = read_slot(&*self.slot.store, &self.slot.spec.slot).await;
            self.retry.note(Call::Read, &read);
            match read {
                Ok(view) => {
                    self.epoch = view.record.epoch;
                    self.seen(view);
                }
                Err(err) => {
                    let delay = self
                        .retry
                        .delay(&err, "cannot read the slot record; retrying");
                    if !pause(&self.slot.cancel, delay).await {
                        return Ok(false);
                    }
                }
            }
        }
        if self.slot.said_newer.swap(false, Ordering::Relaxed) {
            tracing::info!("the slot record reads again; taking the slot over");
        }
        Ok(true)
    }

    async fn run(mut self) -> Result<(), Trouble> {
        loop {
            let step = match self.view.record.state {
                SlotState::Free => self.serve_free().await,
                SlotState::Used => self.serve_used().await,
                SlotState::Dirty => self.clean().await,
                SlotState::Disabled => self.wait_disabled().await,
            };
            match step {
                Ok(Flow::Continue) => self.retry.reset(),
                Ok(Flow::Stop) => return Ok(()),
                Err(Trouble::Store(err)) => {
                    // Keep the lock; back off and decide again from a fresh read.
                    let what = "store trouble; will re-read the slot record";
                    let mut delay = self.retry.delay(&err, what);
                    loop {
                        if !pause(&self.slot.cancel, delay).await {
                            return Ok(());
                        }
                        match self.reread().await {
                            Ok(()) => break,
                            Err(Trouble::Store(err)) => {
                                delay = self.retry.delay(&err, "cannot read the slot record");
                            }
                            // Fenced: another worker has the slot.
                            Err(other) => return Err(other),
                        }
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Replaces the view with the store's current one; [`Trouble::Fenced`] (and the view left
    /// as it was) if another worker has taken the slot over.
    async fn reread(&mut self) -> Result<(), Trouble> {
        let read = read_slot(&*self.slot.store, &self.slot.spec.slot).await;
        self.retry.note(Call::Read, &read);
        let view = read?;
        if let Some(version) = view.newer {
            return Err(Trouble::Newer(version));
        }
        fence(self.epoch, &view.record)?;
        self.seen(view);
        Ok(())
    }

    /// Makes `view` the one this worker acts on, and counts the slot under its state.
    fn seen(&mut self, view: SlotView) {
        self.gauge.set(view.record.state);
        self.view = view;
    }

    /// Writes the record that `next` makes of the current one, by compare-and-swap, in this
    /// session's lock epoch. On a `412` it re-reads (which fences) and asks `next` again;
    /// `next` answers `None` when the record it is shown no longer allows the transition.
    /// `Ok(true)` when written.
    ///
    /// The write itself is fenced by its `If-Match`: the ETag is the one of this worker's own
    /// last read or write, and a worker that took the slot over since has written its epoch,
    /// which changed the ETag.
    async fn transition(
        &mut self,
        next: impl Fn(&SlotRecord) -> Option<SlotRecord>,
    ) -> Result<bool, Trouble> {
        loop {
            fence(self.epoch, &self.view.record)?;
            let Some(record) = next(&self.view.record) else {
                return Ok(false);
            };
            let record = record.in_epoch(self.epoch);
            let written = write_slot(&*self.slot.store, &self.view, &record).await;
            self.retry.note(Call::Write, &written);
            match written {
                Ok(view) => {
                    // Each transition also has a line of its own, at info, saying why.
                    if view.record.state != self.view.record.state {
                        tracing::debug!(from = %self.view.record.state, to = %view.record.state, "slot state changed");
                    }
                    self.seen(view);
                    return Ok(true);
                }
                Err(StoreError::Conflict) => {
                    tracing::info!("the slot record changed since it was read (412); re-reading");
                    self.reread().await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Refuses `delivery` for good: a copy goes to the dead-letter queue with `reason`, and
    /// the original is acked.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), Trouble> {
        let refused = berth::broker::dead_letter(&self.channel, &self.slot.names, delivery, reason);
        Ok(bounded(refused).await?)
    }

    /// The next message of the control queue; its end means the broker dropped us.
    async fn next_control(&mut self) -> Result<Delivery, Trouble> {
        Ok(amqp::next_delivery(&mut self.control).await?)
    }

    /// Waits for a release, a renew or the end of the lease (looking at the clock again now
    /// and then: [`expiry::LOOK_AGAIN`]).
    async fn serve_used(&mut self) -> Result<Flow, Trouble> {
        let wait = expiry::next_look(&self.view.record, self.slot.options.lease_grace);
        let cancel = self.slot.cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(Flow::Stop),
            delivery = self.next_control() => {
                self.on_control(delivery?).await?;
                self.interrupt = false;
                Ok(Flow::Continue)
            }
            _ = tokio::time::sleep(wait) => self.expire().await,
        }
    }

    /// A disabled slot does nothing but answer control messages (as not held) and look at
    /// its record again now and then, until an operator sets another state.
    async fn wait_disabled(&mut self) -> Result<Flow, Trouble> {
        let poll = self.slot.options.disabled_poll;
        match self.alongside_control(tokio::time::sleep(poll)).await? {
            control::Along::Stopped => Ok(Flow::Stop),
            // An action moved the slot on (enable): the view is already the record written.
            control::Along::Interrupted => Ok(Flow::Continue),
            control::Along::Done(()) => {
                self.reread().await?;
                Ok(Flow::Continue)
            }
        }
    }
}

/// `Ok` if `record` carries lock epoch `ours`; otherwise the slot was taken over.
fn fence(ours: u64, record: &SlotRecord) -> Result<(), Trouble> {
    if record.epoch == ours {
        Ok(())
    } else {
        Err(Trouble::Fenced {
            ours,
            found: record.epoch,
        })
    }
}
