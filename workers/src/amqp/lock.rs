//! The slot lock: an exclusive consumer on the slot's lock queue `<ns>.lock.<slot>`, a
//! transient classic queue (DESIGN §3 "Slot lock"). The broker lets only one consumer have
//! it, and drops it the moment the holder's connection dies, or the queue's node does, so a
//! standby worker takes over within one retry interval. The holder alone then consumes the
//! slot's control queue `<ns>.slot.<slot>`, which may be a quorum queue: those do not refuse a
//! second exclusive consumer, so they cannot be the lock themselves.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPErrorKind;
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, ErrorKind};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use berth::protocol::Names;

use super::connection::Connector;
use super::{Error, bounded};
use crate::metrics::Raised;

/// A held slot lock: the channel every message of this slot worker goes through (in
/// confirm mode, prefetch 1 per consumer) and the consumer of the slot's control queue. The
/// lock queue's consumer is watched by a task of its own ([`watch`]): when the broker ends it
/// (the lock queue's node went), the task closes the channel, which ends the session.
pub(crate) struct Lock {
    pub(crate) channel: Channel,
    pub(crate) control: Consumer,
}

/// Declares the history stream on a channel of its own (DESIGN §3): a broker that refuses
/// it (other arguments, a broker older than 3.9) is logged, and the slot worker goes on.
async fn declare_history(connector: &Connector, names: &Names, cancel: &CancellationToken) {
    let Some(Ok(channel)) = connector.channel(cancel).await else {
        return;
    };
    if let Err(err) = bounded(berth::broker::declare_history(channel, names)).await {
        tracing::warn!(error = %err, stream = %names.history_queue(),
            "cannot declare the history stream; events are not kept in it");
    }
}

/// How many slot workers of one process may be taking their lock at once (declaring their
/// queues and consuming): the rest wait their turn without a broker timeout running. Without
/// it, a process of 10,000 slots on quorum queues never came up: the broker creates a quorum
/// queue in 15–25 ms, one after the other, so 10,000 declares at once took far longer than
/// [`super::BROKER_TIMEOUT`], every slot worker timed out, started over and declared again,
/// and after 12 minutes 160 slots held their lock (docs/scale.md). 32 at a time keep a
/// turn under a second on quorum queues and cost nothing on classic ones, whose declares
/// are answered in about a millisecond each.
pub(crate) const LOCKING_AT_ONCE: usize = 32;

/// Takes the lock of `slot`, standing by while another worker holds it (trying again every
/// `standby_retry`, and counted in `standby` meanwhile). Each try waits for one of the
/// process's `turns` ([`LOCKING_AT_ONCE`]) first. `Ok(None)` when `cancel` fires first; an
/// error for broker trouble other than the lock being taken.
pub(crate) async fn acquire(
    connector: &Connector,
    names: &Names,
    slot: &str,
    standby_retry: Duration,
    standby: &Gauge,
    turns: &Semaphore,
    cancel: &CancellationToken,
) -> Result<Option<Lock>, Error> {
    let mut standing_by: Option<Raised> = None;
    let mut history_declared = false;
    loop {
        let tried = {
            let _turn = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                turn = turns.acquire() => turn.expect("the semaphore of turns is never closed"),
            };
            // Once per call, not per standby retry: the declare is the same each time.
            if !history_declared {
                declare_history(connector, names, cancel).await;
                history_declared = true;
            }
            try_once(connector, names, slot, cancel).await
        };
        match tried? {
            Tried::Held(lock) => return Ok(Some(*lock)),
            Tried::Cancelled => return Ok(None),
            Tried::Taken => {
                if standing_by.is_none() {
                    tracing::info!("another worker holds the slot lock; standing by");
                    standing_by = Some(Raised::new(standby.clone()));
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(standby_retry) => {}
                }
            }
        }
    }
}

/// How one try for the lock ended, broker trouble aside.
enum Tried {
    Held(Box<Lock>),
    /// Another worker holds the lock. The broker closed the try's channel; the next try
    /// opens a fresh one.
    Taken,
    /// `cancel` fired while connecting.
    Cancelled,
}

/// One try for the lock of `slot` on a fresh channel: declares what the slot worker uses,
/// then consumes the lock queue and the control queue.
async fn try_once(
    connector: &Connector,
    names: &Names,
    slot: &str,
    cancel: &CancellationToken,
) -> Result<Tried, Error> {
    let Some(channel) = connector.channel(cancel).await else {
        return Ok(Tried::Cancelled);
    };
    let channel = channel?;
    bounded(berth::broker::declare_common(&channel, names)).await?;
    bounded(berth::broker::declare_slot_queue(&channel, names, slot)).await?;
    bounded(channel.basic_qos(1, BasicQosOptions::default())).await?;
    bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
    let consumed = async {
        bounded(berth::broker::declare_lock_queue(&channel, names, slot)).await?;
        let lock = bounded(channel.basic_consume(
            names.lock_queue(slot).into(),
            "".into(),
            exclusive(),
            FieldTable::default(),
        ))
        .await?;
        // Exclusive too: on a classic control queue the broker refuses it while a worker of
        // an older berth (whose lock it was) or a holder that has not yet noticed the loss of
        // its lock queue still consumes; on a quorum queue the flag does nothing.
        let control = bounded(channel.basic_consume(
            names.slot_queue(slot).into(),
            "".into(),
            exclusive(),
            FieldTable::default(),
        ))
        .await?;
        Ok::<_, Error>((lock, control))
    }
    .await;
    match consumed {
        Ok((lock, control)) => {
            tracing::info!("holding the slot lock");
            tokio::spawn(watch(lock, channel.clone()).in_current_span());
            Ok(Tried::Held(Box::new(Lock { channel, control })))
        }
        Err(err) if is_taken(&err) => Ok(Tried::Taken),
        Err(err) => Err(err),
    }
}

/// The options of the lock's consumes: exclusive, with acks (a control message is settled
/// by the slot worker).
fn exclusive() -> BasicConsumeOptions {
    BasicConsumeOptions {
        exclusive: true,
        ..BasicConsumeOptions::default()
    }
}

/// Waits until the broker ends the lock queue's consumer `lock` (nothing is ever published
/// to the queue), then closes `channel` if it is still open: the lock queue's node is gone
/// (or the queue was deleted), so this worker no longer holds the lock, and every step of
/// its session on `channel` fails from now on, which sends it back to [`acquire`].
async fn watch(mut lock: Consumer, channel: Channel) {
    while let Some(delivery) = lock.next().await {
        if let Ok(delivery) = delivery {
            // Not ours to keep: nothing should be published to a lock queue.
            let _ = delivery.ack(Default::default()).await;
        }
    }
    if channel.status().connected() {
        tracing::warn!(
            "the broker ended the slot lock (its queue or its node is gone); giving the slot up"
        );
        let closing = channel.close(200, "slot lock lost".into());
        let _ = tokio::time::timeout(super::BROKER_TIMEOUT, closing).await;
    }
}

/// Whether an exclusive consume failed because another consumer holds the queue, or the
/// lock queue was deleted between its declare and the consume (its holder let go: the queue
/// is auto-delete): either way, try again.
fn is_taken(err: &Error) -> bool {
    let Error::Broker(err) = err else {
        return false;
    };
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(
                AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::RESOURCELOCKED
                    | AMQPSoftError::NOTFOUND
            )
        ),
        _ => false,
    }
}
