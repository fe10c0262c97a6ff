//! The free state and the claim path (DESIGN §3 "Acquire"): wait for a request from the
//! process's pool feed ([`crate::feed`]); on a request, check its deadline, claim the slot by
//! compare-and-swap, reply (mandatory, confirmed) and ack last. Whatever goes wrong before
//! the ack, the request goes back to its queue for another worker.

use chrono::Duration as ChronoDuration;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tracing::Instrument;

use berth::lease;
use berth::protocol::{AssignReply, AssignRequest, EventKind, PROTOCOL_VERSION, decode, encode};
use berth::record::{SlotRecord, SlotState};

use crate::slot::{Flow, Session, Trouble, ack, broker, now, requeue};

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
    /// Waits for requests from the pool feed until one is claimed, shutdown, or trouble.
    pub(crate) async fn serve_free(&mut self) -> Result<Flow, Trouble> {
        tracing::debug!("free; waiting for an assign request");
        let cancel = self.slot.cancel.clone();
        let feed = self.slot.feed.clone();
        loop {
            let mut offer = feed.offer();
            let (delivery, via) = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(Flow::Stop),
                    delivery = self.next_control() => self.on_control(delivery?).await?,
                    offered = &mut offer => match offered {
                        Ok(offered) => break offered.take(),
                        // The feed let go of us without a request: queue up again.
                        Err(_) => offer = feed.offer(),
                    },
                }
            };
            if self.on_request(delivery, &via).await? {
                return Ok(Flow::Continue);
            }
        }
    }

    /// Serves one request; `true` once it is settled by a claim attempt (the slot may no
    /// longer be free), `false` if it was refused and the slot is still free.
    /// The reply goes out on `via`, the feed's channel the request came on.
    async fn on_request(&mut self, delivery: Delivery, via: &Channel) -> Result<bool, Trouble> {
        let request = match self.check_request(&delivery) {
            Ok(Some(request)) => request,
            Ok(None) => {
                tracing::info!("assign request past its deadline; dropped");
                ack(&delivery).await?;
                return Ok(false);
            }
            Err(reason) => {
                self.dead_letter(&delivery, &reason).await?;
                return Ok(false);
            }
        };
        let span = tracing::info_span!("claim", request_id = %request.body.request_id);
        match self.claim(&request, via).instrument(span.clone()).await {
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
        Ok(true)
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

    /// Steps 3 and 4 of DESIGN §3: write `used` and reply; if the reply cannot be
    /// delivered, release the slot at once. (Step 2, no longer taking requests, is the
    /// feed's: this worker stopped waiting on it when the request arrived.)
    async fn claim(&mut self, request: &Request, via: &Channel) -> Result<Claim, Trouble> {
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
        let confirm = broker(via.basic_publish(
            "".into(),
            request.reply_to.clone(),
            mandatory,
            &encode(&reply),
            properties,
        ))
        .await?;
        // The event goes out behind the reply, while the reply's confirm is on its way: the
        // requester waits for the reply, nobody waits for the event.
        self.events
            .emit(EventKind::Assigned, Some(&body.owner))
            .await;
        let confirmation = broker(confirm).await?;
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

/// A lease length chrono can add to a date: at least one second, at most ten years.
fn lease_secs(asked: u64) -> i64 {
    asked.clamp(1, 10 * 365 * 24 * 3600) as i64
}
