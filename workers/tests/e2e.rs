//! End to end: real `berth-worker` processes, the real broker and the fake Launchpad in
//! process, each test in its own namespace (the "Must show" list).

mod common;

use std::time::Duration;

use berth::lease::token_hash;
use berth::protocol::{AssignReply, EventKind, RenewOutcome};
use berth::record::{SlotRecord, SlotState, render_description};
use common::launchpad::World;
use common::{Client, POOL};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(20);
const CRASH: (&str, &str) = (berth_worker::cli::CRASH_AFTER_CLAIM_ENV, "1");

/// Waits until the worker of `ppa-1` has settled everything before its answer to a renew.
async fn settle(client: &mut Client, token: &str) {
    assert_eq!(
        client.renew("ppa-1", token, 300).await.outcome,
        RenewOutcome::Renewed
    );
}

#[tokio::test]
async fn an_assign_request_gets_a_reply_and_the_store_shows_the_lease_hash() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    // A fresh PPA has no record: it is cleaned first, then served.
    world.wait_state("ppa-1", SlotState::Free).await;

    let reply = client.assign("ci-job-1", 300).await;
    assert_eq!((reply.slot.as_str(), reply.pool.as_str()), ("ppa-1", POOL));
    let view = world.slot("ppa-1").await;
    assert_eq!(view.record.state, SlotState::Used);
    assert_eq!(view.record.owner.as_deref(), Some("ci-job-1"));
    assert_eq!(
        view.record.lease_sha256.as_deref(),
        Some(token_hash(&reply.lease_token).as_str())
    );
    assert!(!view.archive.description.contains(&reply.lease_token));

    // SIGTERM: exit 0; every slot line names the slot; the token never reaches the log.
    let status = worker.terminate().await;
    let logs = worker.logs();
    assert!(status.success(), "exit {status:?}; log:\n{logs}");
    assert!(
        !logs.contains(&reply.lease_token),
        "lease token in the log:\n{logs}"
    );
    assert!(!logs.contains("SECRET"), "OAuth secret in the log:\n{logs}");
    for line in logs
        .lines()
        .filter(|l| l.contains("claimed") || l.contains("cleaned") || l.contains("lock"))
    {
        assert!(line.contains("slot=ppa-1"), "line without its slot: {line}");
    }
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn release_empties_the_ppa_and_a_wrong_token_changes_nothing() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    world.wait_state("ppa-1", SlotState::Free).await;
    let reply = client.assign("ci-job-1", 300).await;
    world.launchpad.add_upload("ppa-1", "hello", "1.0").await;
    world.launchpad.add_upload("ppa-1", "hello", "1.1").await;
    assert_eq!(world.live_uploads("ppa-1").await, 2);

    client.release("ppa-1", &berth::lease::new_token()).await;
    // Handled in order: once the renew behind it is answered, the stale release was seen.
    assert_eq!(
        client.renew("ppa-1", &reply.lease_token, 300).await.outcome,
        RenewOutcome::Renewed
    );
    assert_eq!(world.slot("ppa-1").await.record.state, SlotState::Used);
    assert_eq!(world.live_uploads("ppa-1").await, 2);

    client.release("ppa-1", &reply.lease_token).await;
    client
        .wait_event("ppa-1", EventKind::Released, WITHIN)
        .await;
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let view = world.wait_state("ppa-1", SlotState::Free).await;
    assert_eq!(world.live_uploads("ppa-1").await, 0);
    assert_eq!((view.record.owner, view.record.lease_sha256), (None, None));
    // The store went used → dirty → free, in that order.
    let states: Vec<SlotState> = world
        .launchpad
        .history()
        .await
        .iter()
        .filter_map(|w| {
            berth::record::parse_description(&w.description)
                .record
                .map(|r| r.state)
        })
        .collect();
    assert!(
        states.ends_with(&[
            SlotState::Used,
            SlotState::Used,
            SlotState::Dirty,
            SlotState::Free
        ]),
        "{states:?}"
    );

    assert!(worker.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn of_two_workers_for_one_slot_only_one_claims_and_the_other_takes_over() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let mut first = world.worker("first", &["ppa-1"], &[]);
    first.wait_log("holding the slot lock").await;
    let mut second = world.worker("second", &["ppa-1"], &[]);
    second.wait_log("standing by").await;
    second.wait_log("starting").await;
    world.wait_state("ppa-1", SlotState::Free).await;

    let reply = client.assign("ci-1", 300).await;
    assert_eq!(world.claims("ppa-1").await, 1);
    assert!(first.logs().contains("claimed") && !second.logs().contains("claimed"));
    // The worker acks the request after the reply; a renew answered behind it on the same
    // channel proves the ack reached the broker (else the request would be redelivered,
    // by design, and answered twice).
    settle(&mut client, &reply.lease_token).await;

    first.kill().await;
    second.wait_log("holding the slot lock").await;
    // The successor resumes from the store: the lease stands and is renewed by it.
    let renewed = client.renew("ppa-1", &reply.lease_token, 300).await;
    assert_eq!(renewed.outcome, RenewOutcome::Renewed);
    client.release("ppa-1", &reply.lease_token).await;
    world.wait_state("ppa-1", SlotState::Free).await;
    let next = client.assign("ci-2", 300).await;
    assert_eq!(next.slot, "ppa-1");
    assert!(second.logs().contains("claimed"));
    assert_eq!(world.claims("ppa-1").await, 2, "one claim per request");
    let logs = second.logs();
    assert_eq!(
        logs.matches("standing by").count(),
        1,
        "standing by logged once:\n{logs}"
    );
    assert!(
        !logs.contains("ACCESS_REFUSED"),
        "lock retries are quiet:\n{logs}"
    );

    assert!(second.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn a_crash_between_claim_and_ack_loses_no_request_and_the_slot_comes_back() {
    let world = World::start(2).await;
    let mut client = Client::new(&world.config).await;
    let mut crashing = world.worker("crashing", &["ppa-1"], &[CRASH]);
    crashing.wait_log("consuming the pool queue").await;

    let id = client.request("ci-job", 2).await;
    let status = crashing.exited().await;
    assert!(!status.success(), "the test hook aborts the process");
    // The dead claim is in the store: used, for this request.
    let orphan = world.slot("ppa-1").await;
    assert_eq!(
        (orphan.record.state, orphan.record.request),
        (SlotState::Used, Some(id))
    );

    // A process hosting both slots: ppa-1 is used (waits for its lease), ppa-2 serves the
    // redelivered request.
    let mut both = world.worker("both", &["ppa-1", "ppa-2"], &[]);
    let reply: AssignReply = client.reply_for(id, WITHIN).await;
    assert_eq!(reply.slot, "ppa-2");
    let expired = client.wait_event("ppa-1", EventKind::Expired, WITHIN).await;
    assert_eq!(expired.owner.as_deref(), Some("ci-job"));
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    world.wait_state("ppa-1", SlotState::Free).await;

    assert!(both.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn a_reply_to_a_vanished_queue_releases_the_slot_at_once() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let gone = berth::broker::connect(&world.config.amqp_url, "vanished-assigner")
        .await
        .unwrap();
    let gone_channel = gone.create_channel().await.unwrap();
    let (gone_queue, _consumer) = common::private_queue(&gone_channel).await;
    client.request_to("ci-gone", 300, Some(&gone_queue)).await;
    gone.close(200, "bye".into()).await.unwrap();

    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    client
        .wait_event("ppa-1", EventKind::Assigned, WITHIN)
        .await;
    let released = client
        .wait_event("ppa-1", EventKind::Released, WITHIN)
        .await;
    assert_eq!(released.owner.as_deref(), Some("ci-gone"));
    world.wait_state("ppa-1", SlotState::Free).await;
    assert_eq!(world.claims("ppa-1").await, 1);

    assert!(worker.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn a_restarted_worker_cleans_a_dirty_ppa_and_malformed_messages_go_to_dead() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let dirty = SlotRecord::new(SlotState::Dirty, chrono::Utc::now());
    world
        .launchpad
        .set_description("ppa-1", &render_description("Build PPA", &dirty))
        .await;
    world.launchpad.add_upload("ppa-1", "left-over", "1").await;
    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let view = world.wait_state("ppa-1", SlotState::Free).await;
    assert_eq!(view.human, "Build PPA");
    assert_eq!(world.live_uploads("ppa-1").await, 0);

    // Killed while used, released while down: the successor honours the queued release.
    let reply = client.assign("ci-1", 300).await;
    settle(&mut client, &reply.lease_token).await;
    worker.kill().await;
    world.launchpad.add_upload("ppa-1", "new", "2").await;
    client.release("ppa-1", &reply.lease_token).await;
    client
        .publish(
            &client.names.slot_queue("ppa-1"),
            b"garbage",
            berth::broker::json_properties(),
        )
        .await;
    let mut worker = world.worker("w2", &["ppa-1"], &[]);
    client
        .wait_event("ppa-1", EventKind::Released, WITHIN)
        .await;
    world.wait_state("ppa-1", SlotState::Free).await;
    assert_eq!(world.live_uploads("ppa-1").await, 0);
    let (reason, body) = client.dead_letter(WITHIN).await;
    assert_eq!(body, b"garbage");
    assert!(reason.contains("not valid JSON"), "{reason}");

    assert!(worker.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn unknown_slots_are_refused_with_the_known_ones() {
    let world = World::start(2).await;
    let mut worker = world.worker("bad", &["ppa-9"], &[]);
    assert!(!worker.exited().await.success());
    let logs = worker.logs();
    assert!(
        logs.contains("unknown slot \"ppa-9\"; configured slots: ppa-1, ppa-2"),
        "{logs}"
    );
    world.finish().await;
}

#[tokio::test]
async fn store_trouble_requeues_the_request_until_the_claim_can_be_written() {
    let world = World::start(1).await;
    let mut client = Client::new(&world.config).await;
    let mut worker = world.worker("w1", &["ppa-1"], &[]);
    world.wait_state("ppa-1", SlotState::Free).await;
    worker.wait_log("consuming the pool queue").await;

    world.launchpad.set_faults(json!({"error_rate": 1.0})).await;
    let id = client.request("ci-1", 300).await;
    worker
        .wait_log("claim failed; requeueing the request")
        .await;
    assert_eq!(world.claims("ppa-1").await, 0);
    world.launchpad.set_faults(json!({})).await;
    let reply: AssignReply = client.reply_for(id, WITHIN).await;
    assert_eq!(reply.slot, "ppa-1");

    // A 412 on the claim: re-read, still free, claim again with the new ETag.
    client.release("ppa-1", &reply.lease_token).await;
    world.wait_state("ppa-1", SlotState::Free).await;
    world
        .launchpad
        .set_faults(json!({"forced_conflicts": 1}))
        .await;
    let second = client.assign("ci-2", 300).await;
    assert_eq!(
        world.slot("ppa-1").await.record.owner.as_deref(),
        Some("ci-2")
    );
    assert_eq!(
        world.slot("ppa-1").await.record.lease_sha256,
        Some(token_hash(&second.lease_token))
    );
    assert!(worker.logs().contains("(412)"), "{}", worker.logs());
    assert_eq!(world.claims("ppa-1").await, 2);

    assert!(worker.terminate().await.success());
    client.cleanup().await;
    world.finish().await;
}

#[tokio::test]
async fn fake_mode_serves_without_launchpad() {
    let config = common::config(&["f-1"]);
    let mut client = Client::new(&config).await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth-worker"))
        .args([
            "--fake",
            "--pool",
            POOL,
            "--slot",
            "f-1",
            "--fake-claim-ms",
            "100",
        ])
        .args(["--namespace", &config.namespace, "--lease-grace-secs", "0"])
        .env_remove("BERTH_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let reply = client.assign("ci-fake", 1).await;
    assert_eq!(reply.slot, "f-1");
    assert_eq!(reply.resource["name"], "f-1");
    // The lease runs out, and the fake slot is cleaned and serves again.
    client.wait_event("f-1", EventKind::Expired, WITHIN).await;
    assert_eq!(client.assign("ci-fake-2", 60).await.slot, "f-1");

    let pid = worker.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(WITHIN, worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    client.cleanup().await;
}
