//! The slot lock: an exclusive consumer on `<ns>.slot.<slot>` (DESIGN §3). The broker lets
//! only one consumer have it, and drops it the moment the holder's connection dies, so a
//! standby worker takes over within one retry interval.

use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPErrorKind;
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, ErrorKind};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use berth::protocol::Names;

use super::connection::Connector;
use super::{Error, bounded};
use crate::metrics::Raised;

/// A held slot lock: the channel every message of this slot worker goes through (in
/// confirm mode, prefetch 1 per consumer) and the consumer of the slot's control queue.
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

/// Takes the lock of `slot`, standing by while another worker holds it (trying again every
/// `standby_retry`, and counted in `standby` meanwhile). `Ok(None)` when `cancel` fires first;
/// an error for broker trouble other than the lock being taken.
pub(crate) async fn acquire(
    connector: &Connector,
    names: &Names,
    slot: &str,
    standby_retry: Duration,
    standby: &Gauge,
    cancel: &CancellationToken,
) -> Result<Option<Lock>, Error> {
    let mut standing_by: Option<Raised> = None;
    // Once per try for the lock, not per standby retry: the declare is the same each time.
    declare_history(connector, names, cancel).await;
    loop {
        let Some(channel) = connector.channel(cancel).await else {
            return Ok(None);
        };
        let channel = channel?;
        bounded(berth::broker::declare_common(&channel, names)).await?;
        bounded(berth::broker::declare_slot_queue(&channel, names, slot)).await?;
        bounded(channel.basic_qos(1, BasicQosOptions::default())).await?;
        bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
        let consume = BasicConsumeOptions {
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumed = bounded(channel.basic_consume(
            names.slot_queue(slot).into(),
            "".into(),
            consume,
            FieldTable::default(),
        ))
        .await;
        match consumed {
            Ok(control) => {
                tracing::info!("holding the slot lock");
                return Ok(Some(Lock { channel, control }));
            }
            // The broker closed this channel; the next try opens a fresh one.
            Err(err) if is_taken(&err) => {
                if standing_by.is_none() {
                    tracing::info!("another worker holds the slot lock; standing by");
                    standing_by = Some(Raised::new(standby.clone()));
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(standby_retry) => {}
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether an exclusive consume failed because another consumer holds the queue.
fn is_taken(err: &Error) -> bool {
    let Error::Broker(err) = err else {
        return false;
    };
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED)
        ),
        _ => false,
    }
}
