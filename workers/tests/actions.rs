//! Operator actions (DESIGN §2 "Operator actions") as the slot worker sees them: control
//! messages on the slot's queue, applied by compare-and-swap in the worker's epoch, each with
//! its event carrying who asked and why; and a record from a newer berth, left alone even
//! when actions come for it.

mod common;

use std::time::Duration;

use berth::protocol::{Control, EventKind, PROTOCOL_VERSION, RenewOutcome};
use berth::record::{BEGIN_MARKER, END_MARKER, SlotState};
use common::Client;
use common::launchpad::World;

const WITHIN: Duration = Duration::from_secs(20);

fn disable(reason: &str, now: bool) -> Control {
    Control::Disable {
        v: PROTOCOL_VERSION,
        reason: reason.into(),
        by: Some("ops-bob".into()),
        now,
    }
}

#[tokio::test]
async fn actions_write_the_record_and_their_events_say_who_and_why() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    world.wait_state("ppa-1", SlotState::Free).await;

    client.action("ppa-1", &disable("flaky", false)).await;
    let event = client
        .wait_event("ppa-1", EventKind::Disabled, WITHIN)
        .await;
    assert_eq!(
        (event.by.as_deref(), event.reason.as_deref()),
        (Some("ops-bob"), Some("flaky"))
    );
    let view = world.wait_state("ppa-1", SlotState::Disabled).await;
    assert_eq!(view.record.disabled_by.as_deref(), Some("ops-bob"));
    assert_eq!(view.record.disabled_reason.as_deref(), Some("flaky"));
    assert!(view.record.disabled_since.is_some());

    client
        .action(
            "ppa-1",
            &Control::Enable {
                v: PROTOCOL_VERSION,
                reason: Some("fixed".into()),
                by: Some("ops-bob".into()),
            },
        )
        .await;
    let event = client.wait_event("ppa-1", EventKind::Enabled, WITHIN).await;
    assert_eq!(event.reason.as_deref(), Some("fixed"));
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let view = world.wait_state("ppa-1", SlotState::Free).await;
    assert_eq!(view.record.disabled_reason, None);

    // Reclaim a held slot: the event names the holder, the operator and why.
    let reply = client.assign("ci-job-9", 300).await;
    let view = world.slot("ppa-1").await;
    assert!(
        view.record.held_since.is_some(),
        "the claim sets held_since"
    );
    let renewed = client.renew("ppa-1", &reply.lease_token, 300).await;
    assert_eq!(renewed.outcome, RenewOutcome::Renewed);
    assert_eq!(
        world.slot("ppa-1").await.record.held_since,
        view.record.held_since,
        "a renew keeps held_since"
    );
    client
        .action(
            "ppa-1",
            &Control::Reclaim {
                v: PROTOCOL_VERSION,
                reason: "job died".into(),
                by: Some("ops-bob".into()),
            },
        )
        .await;
    let event = client
        .wait_event("ppa-1", EventKind::Reclaimed, WITHIN)
        .await;
    assert_eq!(event.owner.as_deref(), Some("ci-job-9"));
    assert_eq!(event.reason.as_deref(), Some("job died"));
    let renew = client.renew("ppa-1", &reply.lease_token, 300).await;
    assert_eq!(renew.outcome, RenewOutcome::NotHeld);
    world.wait_state("ppa-1", SlotState::Free).await;

    // An action the record no longer allows (reclaim of a free slot) changes nothing.
    client
        .action(
            "ppa-1",
            &Control::Reclaim {
                v: PROTOCOL_VERSION,
                reason: "late".into(),
                by: None,
            },
        )
        .await;
    let reply = client.assign("ci-job-10", 300).await;
    assert_eq!(reply.slot, "ppa-1", "still free after the late reclaim");
    assert!(worker.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn a_record_from_a_newer_berth_is_not_touched_and_said_once() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let line = r#"{"v":2,"state":"free","epoch":40}"#;
    let description = format!("keep me\n\n{BEGIN_MARKER}\n{line}\n{END_MARKER}");
    world.launchpad.set_description("ppa-1", &description).await;
    world.launchpad.add_upload("ppa-1", "future", "1").await;
    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    worker.wait_log("newer berth").await;
    // Actions and control messages are answered, and change nothing.
    client.action("ppa-1", &disable("x", true)).await;
    let renew = client.renew("ppa-1", "whatever", 300).await;
    assert_eq!(renew.outcome, RenewOutcome::NotHeld);
    assert_eq!(world.slot("ppa-1").await.archive.description, description);
    assert_eq!(world.live_uploads("ppa-1").await, 1);
    let said = worker
        .logs()
        .lines()
        .filter(|l| l.contains("written by a newer berth"))
        .count();
    assert_eq!(said, 1, "said once:\n{}", worker.logs());
    assert!(worker.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}
