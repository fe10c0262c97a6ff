//! The free state and the claim path (DESIGN §3 "Acquire"): consume the pool queue with
//! prefetch 1; on a request, check its deadline, claim the slot by compare-and-swap, reply
//! (mandatory, confirmed), stop consuming (behind the reply, see [`Session::claim`]) and ack
//! last. Whatever goes wrong before the ack, the request goes back to its queue for another
//! worker.

use chrono::Duration as ChronoDuration;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tracing::Instrument;

use berth::lease;
use berth::protocol::{AssignReply, AssignRequest, EventKind, PROTOCOL_VERSION, decode, encode};
use berth::record::{SlotRecord, SlotState};

use crate::slot::{Flow, Session, Trouble, ack, broker, now, requeue};

/// Whether the pool consumer is still running after a request was handled.
enum Handled {
    StillConsuming,
    StoppedConsuming,
}

/// How a claim ended, short of trouble.
enum Claim {
    /// The slot is the requester's, or was released at once because the reply could not
    /// be delivered; either way the request is answered.
    Answered,
    /// The slot stopped being free under us; another worker must take the request.
    NotFree,
}

/// A request this worker may serve, with the queue its reply goes to.
struct Request {
    body: AssignRequest,
    reply_to: ShortString,
}

impl Session<'_> {
    /// Consumes the pool queue until a request is claimed, shutdown, or trouble.
    pub(crate) async fn serve_free(&mut self) -> Result<Flow, Trouble> {
        let (names, pool_name) = (&self.slot.names, &self.slot.spec.pool);
        // Once per channel: a declare is a broker round trip on every return to free.
        if !self.pool_declared {
            broker(berth::broker::declare_pool_queue(
                &self.channel,
                names,
                pool_name,
            ))
            .await?;
            self.pool_declared = true;
        }
        let mut pool = broker(self.channel.basic_consume(
            names.assign_queue(pool_name).into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        tracing::info!("free; consuming the pool queue");
        let cancel = self.slot.cancel.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.stop_consuming(&pool).await?;
                    return Ok(Flow::Stop);
                }
                delivery = self.next_control() => self.on_control(delivery?).await?,
                delivery = pool.next() => {
                    let delivery = delivery.ok_or(Trouble::ConsumerGone)??;
                    match self.on_request(&pool, delivery).await? {
                        Handled::StillConsuming => {}
                        Handled::StoppedConsuming => return Ok(Flow::Continue),
                    }
                }
            }
        }
    }

    async fn stop_consuming(&self, pool: &Consumer) -> Result<(), Trouble> {
        broker(cancel_consumer(self.channel.clone(), pool.tag())).await
    }

    async fn on_request(
        &mut self,
        pool: &Consumer,
        delivery: Delivery,
    ) -> Result<Handled, Trouble> {
        let request = match self.check_request(&delivery) {
            Ok(Some(request)) => request,
            Ok(None) => {
                tracing::info!("assign request past its deadline; dropped");
                ack(&delivery).await?;
                return Ok(Handled::StillConsuming);
            }
            Err(reason) => {
                berth::broker::dead_letter(&self.channel, &self.slot.names, &delivery, &reason)
                    .await?;
                return Ok(Handled::StillConsuming);
            }
        };
        let span = tracing::info_span!("claim", request_id = %request.body.request_id);
        let mut consuming = true;
        let claimed = self
            .claim(&request, pool.tag(), &mut consuming)
            .instrument(span.clone())
            .await;
        // Whatever happened, the consumer is stopped before the request is settled: with
        // prefetch 1, nothing else is delivered while it is unacked.
        if consuming && let Err(err) = self.stop_consuming(pool).await {
            return Err(err);
        }
        match claimed {
            Ok(Claim::Answered) => ack(&delivery).await?,
            Ok(Claim::NotFree) => {
                span.in_scope(|| {
                    tracing::info!("the slot is no longer free; requeueing the request")
                });
                requeue(&delivery).await?;
            }
            Err(err) => {
                span.in_scope(
                    || tracing::warn!(error = %err, "claim failed; requeueing the request"),
                );
                requeue(&delivery).await?;
                return Err(err);
            }
        }
        Ok(Handled::StoppedConsuming)
    }

    /// The request; `None` if its deadline has passed; `Err` with the reason to refuse it for
    /// good (it goes to the dead-letter queue).
    fn check_request(&self, delivery: &Delivery) -> Result<Option<Request>, String> {
        let body: AssignRequest = decode(&delivery.data).map_err(|e| e.to_string())?;
        let reply_to = delivery
            .properties
            .reply_to()
            .clone()
            .ok_or_else(|| "assign request without reply_to".to_owned())?;
        if body.pool != self.slot.spec.pool {
            return Err(format!(
                "assign request for pool {:?} on the queue of pool {:?}",
                body.pool, self.slot.spec.pool
            ));
        }
        if body.deadline <= chrono::Utc::now() {
            return Ok(None);
        }
        Ok(Some(Request { body, reply_to }))
    }

    /// Steps 2 to 4 of DESIGN §3: write `used`, reply, and stop consuming the pool queue
    /// (consumer `pool`; `consuming` turns false once it is stopped); if the reply cannot be
    /// delivered, release the slot at once.
    ///
    /// The consumer is cancelled right behind the reply rather than before the claim: the
    /// broker handles a channel's frames in order, and a cancel costs it a pass over the
    /// queue's consumers, so a reply queued behind it would wait that long. Stopping it later
    /// is safe: prefetch 1 holds back any other request while this one is unacked, and the
    /// request is settled only once the cancel is done.
    async fn claim(
        &mut self,
        request: &Request,
        pool: ShortString,
        consuming: &mut bool,
    ) -> Result<Claim, Trouble> {
        let body = &request.body;
        let token = lease::new_token();
        let lease_sha256 = lease::token_hash(&token);
        let claimed_at = now();
        let lease_expires = claimed_at + ChronoDuration::seconds(lease_secs(body.lease_secs));
        let claimed = self
            .transition(|current| {
                (current.state == SlotState::Free).then(|| SlotRecord {
                    owner: Some(body.owner.clone()),
                    request: Some(body.request_id),
                    lease_sha256: Some(lease_sha256.clone()),
                    lease_expires: Some(lease_expires),
                    ..SlotRecord::new(SlotState::Used, claimed_at)
                })
            })
            .await?;
        if !claimed {
            return Ok(Claim::NotFree);
        }
        if self.slot.options.crash_after_claim {
            tracing::error!(
                "BERTH_WORKER_TEST_CRASH_AFTER_CLAIM is set: aborting between claim and reply"
            );
            std::process::abort();
        }
        tracing::info!(owner = %body.owner, %lease_expires, "claimed");

        let reply = AssignReply {
            v: PROTOCOL_VERSION,
            request_id: body.request_id,
            slot: self.slot.spec.slot.clone(),
            pool: self.slot.spec.pool.clone(),
            lease_token: token,
            lease_expires,
            resource: self.slot.store.resource(&self.slot.spec.slot),
        };
        let properties = berth::broker::json_properties()
            .with_correlation_id(body.request_id.to_string().into());
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = broker(self.channel.basic_publish(
            "".into(),
            request.reply_to.clone(),
            mandatory,
            &encode(&reply),
            properties,
        ))
        .await?;
        // The cancel and the event go out behind the reply, while the reply's confirm is on
        // its way: the requester waits for the reply, nobody waits for the event.
        let replied = async {
            self.events
                .emit(EventKind::Assigned, Some(&body.owner))
                .await;
            confirm.await
        };
        let (stopped, confirmed) = tokio::join!(
            broker(cancel_consumer(self.channel.clone(), pool)),
            broker(replied)
        );
        stopped?;
        *consuming = false;
        let confirmation = confirmed?;
        let delivered = confirmation.is_ack() && confirmation.take_message().is_none();
        if !delivered {
            tracing::warn!(
                "the reply could not be delivered (its queue is gone); releasing the slot"
            );
            self.release_request(body).await?;
        }
        Ok(Claim::Answered)
    }

    /// Moves the slot claimed for `request` to dirty, as if its holder had released it.
    async fn release_request(&mut self, request: &AssignRequest) -> Result<(), Trouble> {
        let released = self
            .transition(|current| {
                (current.state == SlotState::Used && current.request == Some(request.request_id))
                    .then(|| SlotRecord::new(SlotState::Dirty, now()))
            })
            .await?;
        if released {
            self.events
                .emit(EventKind::Released, Some(&request.owner))
                .await;
        }
        Ok(())
    }
}

/// Cancels the consumer `tag` on `channel` (owned, so it may run alongside the reply).
async fn cancel_consumer(channel: Channel, tag: ShortString) -> Result<(), lapin::Error> {
    channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await
}

/// A lease length chrono can add to a date: at least one second, at most ten years.
fn lease_secs(asked: u64) -> i64 {
    asked.clamp(1, 10 * 365 * 24 * 3600) as i64
}
