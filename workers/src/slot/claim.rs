//! The free state and the claim path (DESIGN §3 "Acquire"): wait for a request from the
//! process's pool feed ([`crate::amqp::feed`]); on a request, check its deadline, claim the slot by
//! compare-and-swap, reply (mandatory, confirmed) and ack last. Whatever goes wrong before
//! the ack, the request goes back to its queue for another worker.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tracing::Instrument;

use berth::lease;
use berth::protocol::{AssignReply, AssignRequest, EventKind, PROTOCOL_VERSION, decode, encode};
use berth::record::{SlotRecord, SlotState, now};

use super::expiry::lease_length;
use super::{Flow, Session, Trouble};
use crate::amqp::{ack, bounded, requeue};

/// How a claim ended, short of trouble.
enum Claim {
    /// The slot is the requester's, or was released at once because the reply could not
    /// be delivered; either way the request is answered.
    Answered,
    /// The slot stopped being free under us, or the claim's lease ran out before its reply
    /// could go out; another worker must take the request.
    NotFree,
}

/// A claim write slower than this is followed by a second write that restarts the lease, so
/// that a slow store does not eat into the lease the holder gets.
const TOP_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A request this worker may serve, with the queue its reply goes to.
struct Request {
    body: AssignRequest,
    reply_to: ShortString,
}

impl Session<'_> {
    /// Waits for requests from the pool feed until one is claimed, shutdown, or trouble.
    pub(super) async fn serve_free(&mut self) -> Result<Flow, Trouble> {
        tracing::debug!("free; waiting for an assign request");
        let cancel = self.slot.cancel.clone();
        let feed = self.slot.feed.clone();
        loop {
            let mut offer = feed.offer();
            let (delivery, via) = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(Flow::Stop),
                    delivery = self.next_control() => {
                        self.on_control(delivery?).await?;
                        self.interrupt = false;
                        // An operator action may have taken the slot out (disabled): the
                        // offer is dropped, and a request it brought meanwhile is requeued.
                        if self.view.record.state != SlotState::Free {
                            return Ok(Flow::Continue);
                        }
                    }
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
        let lease = lease_length(body.lease_secs);
        let mut lease_expires = claimed_at + lease;
        let claimed = self
            .transition(|current| {
                (current.state == SlotState::Free).then(|| SlotRecord {
                    owner: Some(body.owner.clone()),
                    request: Some(body.request_id),
                    lease_sha256: Some(lease_sha256.clone()),
                    lease_expires: Some(lease_expires),
                    held_since: Some(claimed_at),
                    ..SlotRecord::new(SlotState::Used, claimed_at)
                })
            })
            .await?;
        if !claimed {
            return Ok(Claim::NotFree);
        }
        self.slot.metrics.claimed(&self.slot.spec.pool);
        #[cfg(feature = "test-hooks")]
        if self.slot.options.crash_after_claim {
            tracing::error!(
                "BERTH_WORKER_TEST_CRASH_AFTER_CLAIM is set: aborting between claim and reply"
            );
            std::process::abort();
        }
        if let Some(topped) = self.top_up(body, claimed_at, lease).await? {
            lease_expires = topped;
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
        // The reply hands the slot out, and cannot be taken back: fenced by the clock. Until
        // the lease is over nobody else may have the slot (a worker that took the slot over
        // honours the lease in the record), so a reply sent before then is good; past it (this
        // worker stalled since the claim), the lease may have been taken back and the slot
        // handed on, and the request goes back to its queue instead.
        if chrono::Utc::now() >= lease_expires {
            tracing::warn!(%lease_expires, "the lease ran out before its reply could go out (was this worker stalled?); not handing it out");
            return Ok(Claim::NotFree);
        }
        let confirm = bounded(via.basic_publish(
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
        let confirmation = bounded(confirm).await?;
        let delivered = confirmation.is_ack() && confirmation.take_message().is_none();
        if !delivered {
            tracing::warn!(
                "the reply could not be delivered (its queue is gone); releasing the slot"
            );
            self.release_request(body).await?;
        }
        Ok(Claim::Answered)
    }

    /// Restarts the lease of the claim just written for `request` if the write took longer
    /// than [`TOP_UP_AFTER`]: the lease is to count from when the claim reached the store,
    /// so the new end is now + `lease` + the claim write's own duration (as good a guess as
    /// any of how long this write takes). Answers the new end, if written.
    async fn top_up(
        &mut self,
        request: &AssignRequest,
        claimed_at: DateTime<Utc>,
        lease: ChronoDuration,
    ) -> Result<Option<DateTime<Utc>>, Trouble> {
        let took = now() - claimed_at;
        if took.to_std().is_ok_and(|took| took <= TOP_UP_AFTER) {
            return Ok(None);
        }
        let lease_expires = now() + lease + took;
        tracing::info!(
            took_ms = took.num_milliseconds(),
            "the claim write was slow; restarting the lease"
        );
        let extended = self
            .transition(|current| {
                (current.state == SlotState::Used && current.request == Some(request.request_id))
                    .then(|| SlotRecord {
                        lease_expires: Some(lease_expires),
                        ..current.clone()
                    })
            })
            .await?;
        Ok(extended.then_some(lease_expires))
    }

    /// Moves the slot claimed for `request` to dirty, as if its holder had released it.
    async fn release_request(&mut self, request: &AssignRequest) -> Result<(), Trouble> {
        let released = self
            .transition(|current| {
                (current.state == SlotState::Used && current.request == Some(request.request_id))
                    .then(|| current.dirty_keeping_drain(now()))
            })
            .await?;
        if released {
            self.slot.metrics.released(&self.slot.spec.pool);
            self.events
                .emit(EventKind::Released, Some(&request.owner))
                .await;
        }
        Ok(())
    }
}
