//! The slot lock: an exclusive consumer on `<ns>.slot.<slot>` (DESIGN §3). The broker lets
//! only one consumer have it, and drops it the moment the holder's connection dies, so a
//! standby worker takes over within one retry interval.

use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPErrorKind;
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::connection::Connector;
use crate::options::WorkerOptions;
use crate::slot::{Trouble, broker};
use berth::protocol::Names;

/// A held slot lock: the channel every message of this slot worker goes through (in
/// confirm mode, prefetch 1 per consumer) and the consumer of the slot's control queue.
pub(crate) struct Lock {
    pub(crate) channel: Channel,
    pub(crate) control: Consumer,
}

/// Takes the lock of `slot`, standing by while another worker holds it. `Ok(None)` when
/// `cancel` fires first; an error for broker trouble other than the lock being taken.
pub(crate) async fn acquire(
    connector: &Connector,
    names: &Names,
    slot: &str,
    options: &WorkerOptions,
    cancel: &CancellationToken,
) -> Result<Option<Lock>, Trouble> {
    let mut standing_by = false;
    loop {
        let Some(channel) = connector.channel(cancel).await else {
            return Ok(None);
        };
        let channel = channel?;
        broker(berth::broker::declare_common(&channel, names)).await?;
        broker(berth::broker::declare_slot_queue(&channel, names, slot)).await?;
        broker(channel.basic_qos(1, BasicQosOptions::default())).await?;
        broker(channel.confirm_select(ConfirmSelectOptions::default())).await?;
        let consume = BasicConsumeOptions {
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumed = broker(channel.basic_consume(
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
                if !standing_by {
                    tracing::info!("another worker holds the slot lock; standing by");
                    standing_by = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(options.standby_retry) => {}
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether an exclusive consume failed because another consumer holds the queue.
fn is_taken(err: &Trouble) -> bool {
    let Trouble::Broker(err) = err else {
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
