//! The assigner's link to the workers, over the broker: the verbs the HTTP handlers call
//! (`assign`, `renew`, `release`, `queue_counts`), each one whole request/reply exchange.
//! Below it, [`connection`](super::connection) keeps one broker connection up and
//! [`pending`](super::pending) matches replies to their requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::abandoned::release_loop;
use super::connection::{Connected, LinkConfig, connection_loop};
use super::history::{HistoryError, Query};
use super::metrics::Metrics;
use super::pending::Pending;
use crate::protocol::{
    AssignReply, AssignRequest, Control, Event, Names, PROTOCOL_VERSION, RenewReply, encode,
};

/// The shortest time an assign request stays in the queue, so that a wait of zero still
/// gets a slot that is free right now.
const MIN_WINDOW: Duration = Duration::from_millis(500);
/// How long past its window an assign waits for a reply from a worker that took the request
/// in time but is still claiming.
const REPLY_GRACE: Duration = Duration::from_millis(500);
/// How long a renew waits for the slot's worker.
const RENEW_WAIT: Duration = Duration::from_secs(5);

/// Why an exchange gave no answer. The cause of a broker failure is logged where it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// No live broker connection, the broker did not take the message, or the connection
    /// the request went out on was lost before its reply came.
    #[error("the broker is not reachable")]
    BrokerDown,
    /// Nobody answered in time: no slot came free, or the slot's worker is not running.
    #[error("no answer in time")]
    NoAnswer,
    /// The assigner began to stop while the request waited.
    #[error("the assigner is stopping")]
    Stopping,
}

/// The link, shared by the handlers.
#[derive(Clone)]
pub(crate) struct Link {
    current: watch::Receiver<Option<Arc<Connected>>>,
    pending: Arc<Pending>,
    /// The assigner's names (queues of pools and slots).
    names: Names,
    /// Fires when the assigner begins to stop: waiting requests give up at once.
    stopping: CancellationToken,
}

/// Starts the connection loop and the release loop; they stop when `cancel` fires.
/// Waiting requests give up when `stopping` fires.
pub(crate) fn start(
    config: LinkConfig,
    metrics: Arc<Metrics>,
    stopping: CancellationToken,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Link {
    let (pending, releases) = Pending::new();
    let (tx, rx) = watch::channel(None);
    let link = Link {
        current: rx,
        pending: Arc::clone(&pending),
        names: config.names.clone(),
        stopping,
    };
    // The connection stays open until the release loop has sent what it still holds.
    let releases_done = CancellationToken::new();
    tracker.spawn(connection_loop(
        config,
        Arc::clone(&metrics),
        pending,
        tx,
        cancel.clone(),
        releases_done.clone(),
    ));
    tracker.spawn(release_loop(
        link.clone(),
        releases,
        metrics,
        cancel,
        releases_done,
    ));
    link
}

impl Link {
    /// The live connection, or `None` while disconnected.
    pub(crate) fn connected(&self) -> Option<Arc<Connected>> {
        self.current.borrow().clone().filter(|c| c.is_alive())
    }

    /// Whether a broker connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.connected().is_some()
    }

    /// The broker node of the live connection (redacted), if one is up.
    pub(crate) fn node(&self) -> Option<String> {
        self.connected().map(|connected| connected.node.clone())
    }

    /// Waits for a live connection; `None` once `cancel` fires.
    pub(crate) async fn wait_connected(
        &self,
        cancel: &CancellationToken,
    ) -> Option<Arc<Connected>> {
        let mut current = self.current.clone();
        loop {
            if let Some(connected) = self.connected() {
                return Some(connected);
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                changed = current.changed() => if changed.is_err() { return None },
                // A connection may die without the watch changing yet; look again soon.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Asks a free worker of `pool` for a slot for `owner`, waiting up to `wait` for one
    /// to come free (at least [`MIN_WINDOW`]), behind the waiting requests of a higher
    /// `priority` and those of the same one that came earlier; the first reply is the
    /// answer, any other one is released.
    pub(crate) async fn assign(
        &self,
        request_id: Uuid,
        pool: &str,
        owner: &str,
        lease_secs: u64,
        wait: Duration,
        priority: u8,
    ) -> Result<AssignReply, ExchangeError> {
        if self.stopping.is_cancelled() {
            return Err(ExchangeError::Stopping);
        }
        let connected = self.connected().ok_or(ExchangeError::BrokerDown)?;
        let window = wait.max(MIN_WINDOW);
        let give_up = tokio::time::Instant::now() + window + REPLY_GRACE;
        // Registered before publishing: the reply may come back before the confirm does.
        let mut ticket = self
            .pending
            .register::<AssignReply>(request_id, connected.epoch);
        if !connected.is_alive() {
            return Err(ExchangeError::BrokerDown);
        }
        let message = AssignRequest {
            v: PROTOCOL_VERSION,
            request_id,
            pool: pool.to_owned(),
            owner: owner.to_owned(),
            lease_secs,
            deadline: chrono::Utc::now() + window,
        };
        // Not persistent: a request lives only as long as its assigner's connection, which
        // is also where its reply would come; after a broker restart the client hears `503`
        // and asks again, and a request kept on disk would only claim a slot for nobody.
        // The priority both ways: the property orders a classic pool queue, the queue name
        // picks a quorum pool's band (DESIGN §3 "Priority").
        let confirm = connected
            .send(
                &self.names.assign_queue_for(pool, priority),
                &encode(&message),
                connected
                    .request_properties(request_id, window)
                    .with_priority(priority),
            )
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "could not publish the assign request");
                ExchangeError::BrokerDown
            })?;
        // The confirm and the reply are awaited together: a reply proves the broker had the
        // request, so the client need not wait for the confirm as well.
        let mut confirm = Box::pin(confirm);
        // Whether the confirm has come (an ack or a refusal): a finished future is not
        // polled again.
        let mut confirmed = false;
        let outcome = loop {
            tokio::select! {
                reply = ticket.reply() => break reply.map_err(|_| ExchangeError::BrokerDown),
                result = &mut confirm, if !confirmed => {
                    confirmed = true;
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "the broker did not take the assign request");
                        break Err(ExchangeError::BrokerDown);
                    }
                },
                _ = tokio::time::sleep_until(give_up) => break Err(ExchangeError::NoAnswer),
                _ = self.stopping.cancelled() => break Err(ExchangeError::Stopping),
            }
        };
        if !confirmed {
            tokio::spawn(async move {
                let _ = confirm.await;
            });
        }
        outcome
    }

    /// Gives back the slot of a reply that will not be handed out (over a quota), through
    /// the release loop, which retries across reconnects.
    pub(crate) fn give_back(&self, reply: AssignReply) {
        self.pending.release(reply);
    }

    /// Asks the worker of `slot` to extend the lease of `lease_token` to `lease_secs` from
    /// now; [`ExchangeError::NoAnswer`] when it does not answer within [`RENEW_WAIT`].
    pub(crate) async fn renew(
        &self,
        slot: &str,
        lease_token: String,
        lease_secs: u64,
    ) -> Result<RenewReply, ExchangeError> {
        let connected = self.connected().ok_or(ExchangeError::BrokerDown)?;
        let request_id = Uuid::new_v4();
        let mut ticket = self
            .pending
            .register::<RenewReply>(request_id, connected.epoch);
        if !connected.is_alive() {
            return Err(ExchangeError::BrokerDown);
        }
        let broker_down = |err| {
            tracing::warn!(error = %err, "could not publish the renew request");
            ExchangeError::BrokerDown
        };
        connected.declare_slot(slot).await.map_err(broker_down)?;
        let message = Control::Renew {
            v: PROTOCOL_VERSION,
            request_id,
            lease_token,
            lease_secs,
        };
        connected
            .publish(
                &self.names.slot_queue(slot),
                &encode(&message),
                connected.request_properties(request_id, RENEW_WAIT),
            )
            .await
            .map_err(broker_down)?;
        tokio::select! {
            reply = ticket.reply() => reply.map_err(|_| ExchangeError::BrokerDown),
            _ = tokio::time::sleep(RENEW_WAIT) => Err(ExchangeError::NoAnswer),
            _ = self.stopping.cancelled() => Err(ExchangeError::Stopping),
        }
    }

    /// Hands a release of `slot` with `lease_token` to the broker, persistent and confirmed:
    /// once this answers `Ok` it is never lost, even while the slot's worker is down.
    pub(crate) async fn release(&self, slot: &str, lease_token: &str) -> Result<(), ExchangeError> {
        let connected = self.connected().ok_or(ExchangeError::BrokerDown)?;
        connected
            .publish_release(slot, lease_token)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "could not publish the release");
                ExchangeError::BrokerDown
            })
    }

    /// Hands an operator action for `slot` to the broker, persistent and confirmed, like a
    /// release: applied by the slot's worker, even one that is down now, once it runs.
    pub(crate) async fn action(&self, slot: &str, message: &Control) -> Result<(), ExchangeError> {
        let connected = self.connected().ok_or(ExchangeError::BrokerDown)?;
        connected
            .publish_control(slot, message)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "could not publish the operator action");
                ExchangeError::BrokerDown
            })
    }

    /// Requests waiting in the assign queues of `pool` (all its priorities), and its
    /// consumers (the most of any of its queues); `None` while disconnected or when the
    /// broker does not say (logged).
    pub(crate) async fn queue_counts(&self, pool: &str) -> Option<(u32, u32)> {
        let connected = self.connected()?;
        let (mut waiting, mut consumers) = (0, 0);
        for queue in self.names.assign_queues(pool) {
            match connected.queue_counts(&queue).await {
                Ok((ready, consuming)) => {
                    waiting += ready;
                    consumers = consumers.max(consuming);
                }
                Err(err) => {
                    tracing::warn!(pool = %pool, error = %err, "could not inspect the pool queue");
                    return None;
                }
            }
        }
        Some((waiting, consumers))
    }

    /// The events `query` asks for, oldest first, read from the history stream on a channel
    /// of this connection opened for the read.
    pub(crate) async fn history(&self, query: &Query) -> Result<Vec<Event>, HistoryError> {
        let connected = self.connected().ok_or(HistoryError::NoBroker)?;
        let channel = connected.open_channel().await?;
        super::history::read(channel, &self.names, query).await
    }
}
