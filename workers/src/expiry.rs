//! Lease expiry: a used slot whose lease plus grace has passed, by this worker's clock, goes
//! back to dirty by itself. The lease is bounded even if its holder vanishes without a word.

use std::time::Duration;

use berth::protocol::EventKind;
use berth::record::{SlotRecord, SlotState};

use crate::slot::{Flow, Session, Trouble, now};

/// How long until the lease of `record` plus `grace` has passed (zero if it has).
pub(crate) fn time_left(record: &SlotRecord, grace: Duration) -> Duration {
    let Some(expires) = record.lease_expires else {
        return Duration::ZERO;
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let left = (expires + grace - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    // `lease_expired` wants strictly past: wake a moment after, not spin at the edge.
    left + Duration::from_millis(1)
}

impl Session<'_> {
    /// Takes the slot back if its lease has really passed (a renew may have won the race).
    pub(crate) async fn expire(&mut self) -> Result<Flow, Trouble> {
        let grace = chrono::Duration::from_std(self.slot.options.lease_grace)
            .unwrap_or(chrono::Duration::MAX);
        let owner = self.view.record.owner.clone();
        let expired = self
            .transition(|current| {
                (current.state == SlotState::Used
                    && current.lease_expired(chrono::Utc::now(), grace))
                .then(|| SlotRecord::new(SlotState::Dirty, now()))
            })
            .await?;
        if expired {
            tracing::info!(
                owner = owner.as_deref().unwrap_or(""),
                "lease expired; taking the slot back"
            );
            self.events.emit(EventKind::Expired, owner.as_deref()).await;
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_counts_grace_and_never_goes_negative() {
        let mut record = SlotRecord::new(SlotState::Used, chrono::Utc::now());
        assert!(
            time_left(&record, Duration::ZERO) <= Duration::from_millis(1),
            "no expiry = expired"
        );
        record.lease_expires = Some(chrono::Utc::now() + chrono::Duration::seconds(10));
        let left = time_left(&record, Duration::from_secs(5));
        assert!(
            left > Duration::from_secs(14) && left <= Duration::from_millis(15_001),
            "{left:?}"
        );
        record.lease_expires = Some(chrono::Utc::now() - chrono::Duration::seconds(10));
        assert!(time_left(&record, Duration::from_secs(5)) <= Duration::from_millis(1));
    }
}
