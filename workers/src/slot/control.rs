//! The control queue (DESIGN §3 "Renew", "Release"): consumed in every state, since the
//! consumer is the slot lock. Only a token whose hash matches the record of a used slot, with
//! a lease not yet over by this worker's clock, renews or releases it; anything else is
//! answered and changes nothing.
//!
//! The operator actions (DESIGN §2 "Operator actions": disable, enable, reclaim, clean) come
//! the same way, persistent like a release, and this worker, the only writer of its record,
//! applies them by compare-and-swap in its lock epoch ([`Session::transition`]), re-checking
//! that the record still allows them: an action the record no longer allows (the assigner
//! checked an older record, or another action won) is acked and changes nothing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use uuid::Uuid;

use berth::lease;
use berth::protocol::{
    Control, EventKind, PROTOCOL_VERSION, RenewOutcome, RenewReply, decode, encode,
};
use berth::record::{Drain, SlotRecord, SlotState, now};

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
            action => self.action(action).await,
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
                    .then(|| current.dirty_keeping_drain(now()))
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

    /// What follows a lease revoked by an operator (reclaim, or disable now of a held slot),
    /// once the record says dirty: counted, announced (`reclaimed`), and the work in hand
    /// stops so the worker cleans.
    async fn revoked(&mut self, owner: Option<&str>, by: Option<&str>, reason: &str) {
        self.slot.metrics.action(&self.slot.spec.pool, "reclaim");
        self.events
            .emit_action(EventKind::Reclaimed, owner, by, Some(reason))
            .await;
        self.interrupt = true;
    }

    /// Applies an operator action (DESIGN §2 "Operator actions") if the record allows it, and
    /// sets `interrupt` when the work in hand must stop for the worker to decide again.
    async fn action(&mut self, action: Control) -> Result<(), Trouble> {
        if let Some(version) = self.view.newer {
            tracing::warn!(
                version,
                ?action,
                "operator action on a slot whose record a newer berth wrote; ignored"
            );
            return Ok(());
        }
        let owner = self.view.record.owner.clone();
        let at = now();
        match action {
            Control::Disable {
                reason,
                by,
                now: at_once,
                ..
            } => {
                let drain = Drain {
                    reason: reason.clone(),
                    by: by.clone(),
                    since: at,
                };
                let written = self
                    .transition(|current| match current.state {
                        SlotState::Free => Some(SlotRecord::disabled(&drain, at)),
                        // Revoked now: cleaned, then disabled.
                        SlotState::Used if at_once => Some(SlotRecord {
                            drain: Some(drain.clone()),
                            ..current.dirty_keeping_drain(at)
                        }),
                        // A drain: disabled after the next cleaning. A lease already over is
                        // the expiry's to take back, which keeps the drain like a release.
                        SlotState::Used | SlotState::Dirty if current.drain.is_none() => {
                            Some(SlotRecord {
                                drain: Some(drain.clone()),
                                ..current.clone()
                            })
                        }
                        _ => None,
                    })
                    .await?;
                if !written {
                    tracing::info!(state = %self.view.record.state, "disable: the slot is already disabled or draining; nothing to do");
                    return Ok(());
                }
                self.slot.metrics.action(&self.slot.spec.pool, "disable");
                let record = &self.view.record;
                match record.state {
                    SlotState::Disabled => {
                        tracing::info!(reason, by = by.as_deref().unwrap_or(""), "disabled");
                        self.events
                            .emit_action(EventKind::Disabled, None, by.as_deref(), Some(&reason))
                            .await;
                        self.interrupt = true;
                    }
                    SlotState::Dirty if at_once && owner.is_some() => {
                        tracing::info!(
                            reason,
                            owner = owner.as_deref().unwrap_or(""),
                            "disable now: the lease is revoked; cleaning, then disabled"
                        );
                        self.revoked(owner.as_deref(), by.as_deref(), &reason).await;
                    }
                    state => {
                        tracing::info!(reason, %state, "disable: draining; disabled after the next cleaning");
                    }
                }
            }
            Control::Enable { reason, by, .. } => {
                // Whether the record written was a disabled one (the transition may re-read).
                // Atomic, not a `Cell`: the closure is borrowed across the write's await, and
                // the slot worker's future must be `Send`.
                let was_disabled = AtomicBool::new(false);
                let written = self
                    .transition(|current| match current.state {
                        // Someone may have used it meanwhile: cleaned before anyone gets it.
                        SlotState::Disabled => {
                            was_disabled.store(true, Ordering::Relaxed);
                            Some(SlotRecord::new(SlotState::Dirty, at))
                        }
                        _ if current.drain.is_some() => {
                            was_disabled.store(false, Ordering::Relaxed);
                            Some(SlotRecord {
                                drain: None,
                                ..current.clone()
                            })
                        }
                        _ => None,
                    })
                    .await?;
                if !written {
                    tracing::info!(state = %self.view.record.state, "enable: the slot is neither disabled nor draining; nothing to do");
                    return Ok(());
                }
                tracing::info!(reason = reason.as_deref().unwrap_or(""), state = %self.view.record.state, "enabled");
                self.slot.metrics.action(&self.slot.spec.pool, "enable");
                self.events
                    .emit_action(EventKind::Enabled, None, by.as_deref(), reason.as_deref())
                    .await;
                // A disabled slot's wait ends (it is dirty now, to be cleaned); a cancelled drain
                // changes nothing in the work in hand.
                self.interrupt = was_disabled.load(Ordering::Relaxed);
            }
            Control::Reclaim { reason, by, .. } => {
                let written = self
                    .transition(|current| {
                        (current.state == SlotState::Used).then(|| current.dirty_keeping_drain(at))
                    })
                    .await?;
                if !written {
                    tracing::info!(state = %self.view.record.state, "reclaim: the slot is not held; nothing to do");
                    return Ok(());
                }
                tracing::info!(
                    reason,
                    owner = owner.as_deref().unwrap_or(""),
                    "reclaimed: the lease is revoked; cleaning"
                );
                self.revoked(owner.as_deref(), by.as_deref(), &reason).await;
            }
            Control::Clean { reason, by, .. } => {
                let written = self
                    .transition(|current| {
                        (current.state == SlotState::Dirty).then(|| SlotRecord {
                            clean_failures: 0,
                            touched: at,
                            ..current.clone()
                        })
                    })
                    .await?;
                if !written {
                    tracing::info!(state = %self.view.record.state, "clean: the slot is not dirty; nothing to do");
                    return Ok(());
                }
                tracing::info!("clean requested: cleaning again now");
                self.slot.metrics.action(&self.slot.spec.pool, "clean");
                self.events
                    .emit_action(
                        EventKind::CleanRequested,
                        None,
                        by.as_deref(),
                        reason.as_deref(),
                    )
                    .await;
                self.interrupt = true;
            }
            Control::Release { .. } | Control::Renew { .. } => {
                unreachable!("release and renew are handled by on_control")
            }
        }
        Ok(())
    }

    /// Runs `work` to its end while answering control messages, for the states in which the
    /// slot is held by nobody (dirty, disabled): renew answers `not_held`, release is
    /// ignored. [`Along::Stopped`] when shutdown was asked for first, [`Along::Interrupted`]
    /// when an operator action asks the worker to decide again (`work` is dropped).
    pub(super) async fn alongside_control<F: Future>(
        &mut self,
        work: F,
    ) -> Result<Along<F::Output>, Trouble> {
        let cancel = self.slot.cancel.clone();
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(Along::Stopped),
                out = &mut work => return Ok(Along::Done(out)),
                delivery = self.next_control() => {
                    self.on_control(delivery?).await?;
                    if std::mem::take(&mut self.interrupt) {
                        return Ok(Along::Interrupted);
                    }
                }
            }
        }
    }
}

/// How work run alongside the control queue ended.
pub(super) enum Along<T> {
    Done(T),
    /// Shutdown was asked for.
    Stopped,
    /// An operator action changed the record or asked for something now.
    Interrupted,
}
