//! Lease expiry: a used slot whose lease plus grace has passed, by this worker's clock, goes
//! back to dirty by itself. The lease is bounded even if its holder vanishes without a word.

use std::time::Duration;

use chrono::{DateTime, Utc};

use berth::protocol::EventKind;
use berth::record::{SlotRecord, SlotState, now};

use super::{Flow, Session, Trouble};

/// Longest wait between looks at the wall clock while a lease runs. Waits run on the
/// monotonic clock but expiry is decided by the wall clock against `lease_expires`: if the
/// wall clock jumps ahead (a step by NTP or an operator, a machine resumed from suspend while
/// the monotonic clock stood still), one wait computed at the start would take the lease back
/// as late as the whole jump, up to the lease's full length.
pub(super) const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// The lease a holder asking for `secs` seconds gets: at least one second, at most ten
/// years, so that chrono can always add it to a date. Claims and renewals both count it so.
pub(super) fn lease_length(secs: u64) -> chrono::Duration {
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    chrono::Duration::seconds(secs.clamp(1, TEN_YEARS) as i64)
}

/// How long to wait before looking at the lease of `record` again: until it has passed, but
/// never longer than [`LOOK_AGAIN`].
pub(super) fn next_look(record: &SlotRecord, grace: Duration) -> Duration {
    time_left(record, grace).min(LOOK_AGAIN)
}

/// Whether the lease of `record` plus `grace` has passed by this worker's clock, now (strictly
/// past). Only this decides; nothing else in the record
/// (`touched`, say) counts.
pub(super) fn lease_over(record: &SlotRecord, grace: Duration) -> bool {
    lease_end(record, grace).is_none_or(|end| chrono::Utc::now() > end)
}

/// When the lease of `record` plus `grace` ends; `None` for a used record without an expiry,
/// which nobody can ever renew, so it is over. A grace too long to add (a configured
/// `lease_grace_secs` of "forever") ends at the end of time instead of panicking.
fn lease_end(record: &SlotRecord, grace: Duration) -> Option<DateTime<Utc>> {
    let expires = record.lease_expires?;
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    Some(
        expires
            .checked_add_signed(grace)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// How long until the lease of `record` plus `grace` has passed (zero if it has).
fn time_left(record: &SlotRecord, grace: Duration) -> Duration {
    let Some(end) = lease_end(record, grace) else {
        return Duration::ZERO;
    };
    let left = (end - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    // `lease_over` wants strictly past: wake a moment after, not spin at the edge.
    left + Duration::from_millis(1)
}

impl Session<'_> {
    /// Takes the slot back if its lease has really passed (a renew may have won the race).
    pub(super) async fn expire(&mut self) -> Result<Flow, Trouble> {
        let grace = self.slot.options.lease_grace;
        let owner = self.view.record.owner.clone();
        let expired = self
            .transition(|current| {
                (current.state == SlotState::Used && lease_over(current, grace))
                    .then(|| current.dirty_keeping_drain(now()))
            })
            .await?;
        if expired {
            tracing::info!(
                owner = owner.as_deref().unwrap_or(""),
                "lease expired; taking the slot back"
            );
            self.slot.metrics.expired(&self.slot.spec.pool);
            self.events.emit(EventKind::Expired, owner.as_deref()).await;
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_one_second_to_ten_years() {
        assert_eq!(lease_length(0), chrono::Duration::seconds(1));
        assert_eq!(lease_length(300), chrono::Duration::seconds(300));
        assert_eq!(lease_length(u64::MAX), chrono::Duration::days(3650));
    }

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

    /// Regression: the wait used to be the whole time left, so a wall clock that jumped ahead
    /// during it delayed the expiry by as much as the jump.
    #[test]
    fn the_wall_clock_is_looked_at_again_at_least_every_second() {
        let mut record = SlotRecord::new(SlotState::Used, chrono::Utc::now());
        record.lease_expires = Some(chrono::Utc::now() + chrono::Duration::hours(1));
        assert_eq!(next_look(&record, Duration::ZERO), LOOK_AGAIN);
        assert_eq!(next_look(&record, Duration::from_secs(30)), LOOK_AGAIN);
        record.lease_expires = Some(chrono::Utc::now() + chrono::Duration::milliseconds(300));
        let soon = next_look(&record, Duration::ZERO);
        assert!(
            soon > Duration::from_millis(200) && soon <= Duration::from_millis(301),
            "{soon:?}"
        );
    }

    #[test]
    fn only_lease_expires_and_grace_decide_that_a_lease_is_over() {
        let now = chrono::Utc::now();
        let far = chrono::Duration::days(365 * 900);
        let mut record = SlotRecord::new(SlotState::Used, now + far);
        record.lease_expires = Some(now - chrono::Duration::seconds(5));
        assert!(lease_over(&record, Duration::ZERO));
        assert!(!lease_over(&record, Duration::from_secs(60)));
        record.touched = now - far;
        record.lease_expires = Some(now + chrono::Duration::seconds(5));
        assert!(!lease_over(&record, Duration::ZERO));
    }

    /// Regression: a grace too long to add to `lease_expires` (a configured
    /// `lease_grace_secs` of "forever") panicked the slot worker's task.
    #[test]
    fn a_huge_grace_means_never_and_does_not_overflow() {
        let mut record = SlotRecord::new(SlotState::Used, chrono::Utc::now());
        record.lease_expires = Some(chrono::Utc::now() - chrono::Duration::hours(1));
        let forever = Duration::from_secs(u64::MAX);
        assert!(!lease_over(&record, forever));
        assert!(!lease_over(&record, Duration::MAX));
        assert_eq!(next_look(&record, forever), LOOK_AGAIN);
        record.lease_expires = Some("9999-12-31T23:59:59Z".parse().unwrap());
        assert!(!lease_over(&record, forever));
        assert_eq!(next_look(&record, forever), LOOK_AGAIN);
    }
}
