//! The broker plumbing of a worker process: its connections ([`connection`]), the slot lock
//! ([`lock`]), the pool feeds ([`feed`]), lifecycle events ([`events`]), and the bounded
//! broker call every one of them goes through ([`bounded`]).
//!
//! It knows nothing of slot states or the store: the slot workers use it, never the other
//! way round.

pub(crate) mod connection;
pub(crate) mod events;
pub(crate) mod feed;
pub(crate) mod lock;

use std::time::Duration;

use futures::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

/// Broker trouble. Whoever meets it ends what it was doing on that channel and starts over
/// on a fresh one (DESIGN §3 "Trouble").
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended one of our consumers")]
    ConsumerGone,
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
pub(crate) async fn bounded<T, E: Into<Error>>(
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(BROKER_TIMEOUT, op).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Stalled(BROKER_TIMEOUT)),
    }
}

/// The next message of `consumer`; the stream's end means the broker ended the consumer
/// (its channel or connection is gone).
pub(crate) async fn next_delivery(consumer: &mut Consumer) -> Result<Delivery, Error> {
    Ok(consumer.next().await.ok_or(Error::ConsumerGone)??)
}

/// Acks `delivery`; a channel that is gone is broker trouble (the broker requeues it).
pub(crate) async fn ack(delivery: &Delivery) -> Result<(), Error> {
    if bounded(delivery.ack(BasicAckOptions::default())).await? {
        Ok(())
    } else {
        Err(Error::Unsettled)
    }
}

/// Gives `delivery` back to its queue, for this or another worker to handle again.
pub(crate) async fn requeue(delivery: &Delivery) -> Result<(), Error> {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if bounded(delivery.nack(options)).await? {
        Ok(())
    } else {
        Err(Error::Unsettled)
    }
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
        let result = bounded(never).await;
        assert!(matches!(result, Err(Error::Stalled(_))), "{result:?}");
        assert_eq!(started.elapsed(), BROKER_TIMEOUT);
    }
}
