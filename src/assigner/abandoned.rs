//! Giving back the slots of assign replies nobody could take (duplicates, late replies,
//! replies whose client went away): [`Pending`](super::pending::Pending) queues them, this
//! loop releases them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{Connected, LinkError, RELEASE_FLUSH};
use super::link::Link;
use super::metrics::Metrics;
use crate::backoff::Backoff;
use crate::protocol::AssignReply;

/// Releases the slots of replies nobody could take, retrying across reconnects. On shutdown
/// it sends what it still holds (each try bounded) before the connection closes; a release
/// lost even so is bounded by the slot's lease. `done` fires when it has finished.
pub(crate) async fn release_loop(
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
            let Some(connected) = link.wait_connected(&cancel).await else {
                unsent.push(reply);
                break 'replies;
            };
            match release(&connected, &reply).await {
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
        match link.connected() {
            Some(connected) => {
                let _ = tokio::time::timeout(RELEASE_FLUSH, release(&connected, &reply)).await;
            }
            None => tracing::warn!(slot = %reply.slot,
                "stopping without the broker; this slot comes back when its lease expires"),
        }
    }
}

async fn release(connected: &Connected, reply: &AssignReply) -> Result<(), LinkError> {
    connected
        .publish_release(&reply.slot, &reply.lease_token)
        .await?;
    tracing::info!(slot = %reply.slot, request_id = %reply.request_id,
        "released a slot that could not be handed out");
    Ok(())
}
