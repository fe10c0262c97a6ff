//! The control queue (DESIGN §3 "Renew", "Release"): consumed in every state, since the
//! consumer is the slot lock. Only a token whose hash matches the record of a used slot, with
//! a lease not yet over by this worker's clock, renews or releases it; anything else is
//! answered and changes nothing.

use std::future::Future;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use uuid::Uuid;

use berth::lease;
use berth::protocol::{
    Control, EventKind, PROTOCOL_VERSION, RenewOutcome, RenewReply, decode, encode,
};
use berth::record::{SlotRecord, SlotState, now};

use super::expiry::{lease_length, lease_over};
use super::{Session, Trouble};
use crate::amqp::{ack, bounded, requeue};

/// What `token` may do with the slot whose record is `record`. A lease past its end plus
/// `grace` by this worker's clock is over even while the record still says used (the expiry
/// has not been written yet, e.g. a renew was waiting when the worker started): nobody holds
/// it, so it can no longer be renewed.
fn standing(record: &SlotRecord, token: &str, grace: Duration) -> RenewOutcome {
    match (&record.state, &record.lease_sha256) {
        (SlotState::Used, _) if lease_over(record, grace) => RenewOutcome::NotHeld,
        (SlotState::Used, Some(hash)) if lease::token_matches(token, hash) => RenewOutcome::Renewed,
        (SlotState::Used, _) => RenewOutcome::WrongToken,
        _ => RenewOutcome::NotHeld,
    }
}

impl Session<'_> {
    /// Handles one control message; acks it only once its work is done, and requeues it on
    /// store trouble so it is handled again after the worker has re-read the record.
    pub(super) async fn on_control(&mut self, delivery: Delivery) -> Result<(), Trouble> {
        let message: Control = match decode(&delivery.data) {
            Ok(message) => message,
            Err(err) => {
                self.dead_letter(&delivery, &err.to_string()).await?;
                return Ok(());
            }
        };
        let result = match message {
            Control::Release { lease_token, .. } => self.release(&lease_token).await,
            Control::Renew {
                request_id,
                lease_token,
                lease_secs,
                ..
            } => {
                self.renew(&delivery, request_id, &lease_token, lease_secs)
                    .await
            }
        };
        match result {
            Ok(()) => Ok(ack(&delivery).await?),
            Err(err) => {
                requeue(&delivery).await?;
                Err(err)
            }
        }
    }

    /// Release: a holder's token moves the slot to dirty (cleaning follows); any other
    /// token changes nothing.
    async fn release(&mut self, token: &str) -> Result<(), Trouble> {
        let owner = self.view.record.owner.clone();
        let grace = self.slot.options.lease_grace;
        let released = self
            .transition(|current| {
                (standing(current, token, grace) == RenewOutcome::Renewed)
                    .then(|| SlotRecord::new(SlotState::Dirty, now()))
            })
            .await?;
        if released {
            tracing::info!(
                owner = owner.as_deref().unwrap_or(""),
                "released by its holder"
            );
            self.slot.metrics.released(&self.slot.spec.pool);
            self.events
                .emit(EventKind::Released, owner.as_deref())
                .await;
        } else {
            tracing::info!(state = %self.view.record.state, "release with a token that does not hold the slot; ignored");
        }
        Ok(())
    }

    /// Renew: extends the lease of the holder and answers how it went.
    async fn renew(
        &mut self,
        delivery: &Delivery,
        request_id: Uuid,
        token: &str,
        lease_secs: u64,
    ) -> Result<(), Trouble> {
        let lease_expires = now() + lease_length(lease_secs);
        let grace = self.slot.options.lease_grace;
        let renewed = self
            .transition(|current| {
                (standing(current, token, grace) == RenewOutcome::Renewed).then(|| SlotRecord {
                    lease_expires: Some(lease_expires),
                    touched: now(),
                    ..current.clone()
                })
            })
            .await?;
        let outcome = if renewed {
            RenewOutcome::Renewed
        } else {
            standing(&self.view.record, token, grace)
        };
        tracing::info!(outcome = ?outcome, %request_id, "renew");
        if renewed {
            let owner = self.view.record.owner.clone();
            self.events.emit(EventKind::Renewed, owner.as_deref()).await;
        }
        let reply = RenewReply {
            v: PROTOCOL_VERSION,
            request_id,
            outcome,
            lease_expires: renewed.then_some(lease_expires),
        };
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            tracing::warn!("renew without reply_to; nobody to answer");
            return Ok(());
        };
        let correlation = delivery
            .properties
            .correlation_id()
            .clone()
            .unwrap_or_else(|| request_id.to_string().into());
        let properties = berth::broker::json_properties().with_correlation_id(correlation);
        // Not mandatory: if the asker is gone there is nothing to undo, the lease stands.
        let confirm = bounded(self.channel.basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &encode(&reply),
            properties,
        ))
        .await?;
        bounded(confirm).await?;
        Ok(())
    }

    /// Runs `work` to its end while answering control messages, for the states in which the
    /// slot is held by nobody (dirty, disabled): renew answers `not_held`, release is
    /// ignored. `None` when shutdown was asked for first (`work` is dropped).
    pub(super) async fn alongside_control<F: Future>(
        &mut self,
        work: F,
    ) -> Result<Option<F::Output>, Trouble> {
        let cancel = self.slot.cancel.clone();
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                out = &mut work => return Ok(Some(out)),
                delivery = self.next_control() => self.on_control(delivery?).await?,
            }
        }
    }
}
