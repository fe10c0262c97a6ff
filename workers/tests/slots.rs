//! Slot workers hosted in-process over a memory store and the real broker, each test in its
//! own namespace.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use berth::lease::token_hash;
use berth::protocol::{EventKind, RenewOutcome};
use berth::record::SlotState;
use berth::store::slot::read_slot;
use berth::store::{Archive, MemoryStore, SlotStore, SourcePublication, StoreError};
use common::{Client, POOL, config, fast_options, free_store, spawn, wait_for, wait_state};

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn assign_reply_names_the_slot_and_the_store_keeps_only_the_hash() {
    let config = config(&["ppa-1"]);
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let reply = client.assign("ci-job-1", 300).await;
    assert_eq!(reply.slot, "ppa-1");
    assert_eq!(reply.pool, POOL);
    assert_eq!(reply.lease_token.len(), 64);
    assert_eq!(reply.resource["name"], "ppa-1");

    let view = read_slot(&*store, "ppa-1").await.unwrap();
    assert_eq!(view.record.state, SlotState::Used);
    assert_eq!(view.record.owner.as_deref(), Some("ci-job-1"));
    assert_eq!(view.record.request, Some(reply.request_id));
    assert_eq!(
        view.record.lease_sha256.as_deref(),
        Some(token_hash(&reply.lease_token).as_str())
    );
    assert_eq!(view.record.lease_expires, Some(reply.lease_expires));
    assert!(
        !view.archive.description.contains(&reply.lease_token),
        "token leaked into the store"
    );
    assert!(
        view.human == "test PPA",
        "human text kept: {:?}",
        view.human
    );
    let event = client
        .wait_event("ppa-1", EventKind::Assigned, WITHIN)
        .await;
    assert_eq!(event.owner.as_deref(), Some("ci-job-1"));

    // Used: a second request waits in the queue, unanswered.
    client.request("ci-job-2", 300).await;
    assert!(
        client.no_reply_within(Duration::from_millis(500)).await,
        "a used slot answered"
    );

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn release_cleans_and_a_wrong_token_changes_nothing() {
    let config = config(&["ppa-1"]);
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let reply = client.assign("ci-job-1", 300).await;
    store.add_upload("ppa-1", "hello", "1.0");
    store.add_upload("ppa-1", "world", "2.0");

    // A stale token: nothing changes. The renew behind it on the same queue proves the
    // release was handled first.
    client.release("ppa-1", &berth::lease::new_token()).await;
    let wrong = client.renew("ppa-1", &berth::lease::new_token(), 60).await;
    assert_eq!(wrong.outcome, RenewOutcome::WrongToken);
    assert_eq!(wrong.lease_expires, None);
    let renewed = client.renew("ppa-1", &reply.lease_token, 600).await;
    assert_eq!(renewed.outcome, RenewOutcome::Renewed);
    let view = read_slot(&*store, "ppa-1").await.unwrap();
    assert_eq!(
        view.record.state,
        SlotState::Used,
        "stale release changed the slot"
    );
    assert_eq!(view.record.lease_expires, renewed.lease_expires);
    assert!(renewed.lease_expires.unwrap() > reply.lease_expires);
    client.wait_event("ppa-1", EventKind::Renewed, WITHIN).await;

    client.release("ppa-1", &reply.lease_token).await;
    client
        .wait_event("ppa-1", EventKind::Released, WITHIN)
        .await;
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let view = wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_eq!(view.record.owner, None);
    assert_eq!(view.record.lease_sha256, None);
    for status in ["Published", "Pending"] {
        assert!(
            store
                .published_sources("ppa-1", status)
                .await
                .unwrap()
                .is_empty()
        );
    }
    // Free again: the old token holds nothing, and the slot serves the next request.
    assert_eq!(
        client.renew("ppa-1", &reply.lease_token, 60).await.outcome,
        RenewOutcome::NotHeld
    );
    let next = client.assign("ci-job-2", 300).await;
    assert_eq!(next.slot, "ppa-1");

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn a_reply_nobody_can_receive_releases_the_slot_at_once() {
    let config = config(&["ppa-1"]);
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;

    // An assigner that asked and then vanished, taking its reply queue with it.
    let gone = berth::broker::connect(&config.amqp_url, "vanished-assigner")
        .await
        .unwrap();
    let gone_channel = gone.create_channel().await.unwrap();
    let (gone_queue, _consumer) = common::private_queue(&gone_channel).await;
    client.request_to("ci-gone", 300, Some(&gone_queue)).await;
    gone.close(200, "bye".into()).await.unwrap();

    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());
    client
        .wait_event("ppa-1", EventKind::Assigned, WITHIN)
        .await;
    let released = client
        .wait_event("ppa-1", EventKind::Released, WITHIN)
        .await;
    assert_eq!(released.owner.as_deref(), Some("ci-gone"));
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    // And it serves the next live request.
    assert_eq!(client.assign("ci-job-2", 300).await.slot, "ppa-1");

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn an_expired_lease_comes_back_by_itself() {
    let config = config(&["ppa-1"]);
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let reply = client.assign("ci-short", 1).await;
    let expired = client.wait_event("ppa-1", EventKind::Expired, WITHIN).await;
    assert_eq!(expired.owner.as_deref(), Some("ci-short"));
    assert!(
        expired.at >= reply.lease_expires,
        "expired early: {} < {}",
        expired.at,
        reply.lease_expires
    );
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_eq!(
        client.renew("ppa-1", &reply.lease_token, 60).await.outcome,
        RenewOutcome::NotHeld
    );

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn a_dirty_slot_is_cleaned_at_start_and_malformed_messages_go_to_dead() {
    let config = config(&["ppa-1"]);
    // No record block at all: unknown history, so dirty.
    let store = Arc::new(MemoryStore::new("berth-ci", ["ppa-1"]));
    store.insert("ppa-1", "left by someone");
    store.add_upload("ppa-1", "old", "0.1");
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let view = wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_eq!(view.human, "left by someone");
    assert!(
        store
            .published_sources("ppa-1", "Published")
            .await
            .unwrap()
            .is_empty()
    );

    let props = berth::broker::json_properties;
    client
        .publish(&client.names.slot_queue("ppa-1"), b"{not json", props())
        .await;
    let (reason, body) = client.dead_letter(WITHIN).await;
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(body, b"{not json");
    client
        .publish(
            &client.names.assign_queue(POOL),
            br#"{"v":9,"request_id":"x"}"#,
            props(),
        )
        .await;
    let (reason, _) = client.dead_letter(WITHIN).await;
    assert!(reason.contains("version 9"), "{reason}");
    // Still serving after both.
    assert_eq!(client.assign("ci-job", 300).await.slot, "ppa-1");

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn a_second_worker_stands_by_and_takes_over() {
    let config = config(&["ppa-1"]);
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let first = spawn(&config, &["ppa-1"], store.clone(), fast_options());
    let reply = client.assign("ci-1", 300).await;
    let second = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    // The standby must not touch the used slot; the holder answers.
    assert_eq!(
        client.renew("ppa-1", &reply.lease_token, 300).await.outcome,
        RenewOutcome::Renewed
    );
    first.stop().await;
    // The successor resumes from the store record: the lease still stands.
    assert_eq!(
        client.renew("ppa-1", &reply.lease_token, 300).await.outcome,
        RenewOutcome::Renewed
    );
    client.release("ppa-1", &reply.lease_token).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_eq!(client.assign("ci-2", 300).await.slot, "ppa-1");
    let assigned = client
        .seen_events
        .iter()
        .filter(|e| e.event == EventKind::Assigned)
        .count();
    assert!(assigned <= 2, "{assigned} assignments for 2 requests");

    second.stop().await;
    client.cleanup().await;
}

/// A memory store whose listings fail the first `failures` times.
struct Flaky {
    inner: MemoryStore,
    failures: AtomicU32,
}

#[async_trait]
impl SlotStore for Flaky {
    async fn archive(&self, name: &str) -> Result<Archive, StoreError> {
        self.inner.archive(name).await
    }
    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        d: &str,
    ) -> Result<Archive, StoreError> {
        self.inner.set_description(name, etag, d).await
    }
    async fn archives(&self) -> Result<Vec<Archive>, StoreError> {
        self.inner.archives().await
    }
    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Unavailable { status: 503 });
        }
        self.inner.published_sources(name, status).await
    }
    async fn request_deletion(&self, link: &str) -> Result<(), StoreError> {
        self.inner.request_deletion(link).await
    }
    fn resource(&self, name: &str) -> serde_json::Value {
        self.inner.resource(name)
    }
}

#[tokio::test]
async fn failed_cleanings_are_counted_and_retried() {
    let config = config(&["ppa-1"]);
    let inner = MemoryStore::new("berth-ci", ["ppa-1"]);
    inner.add_upload("ppa-1", "pkg", "1");
    let store = Arc::new(Flaky {
        inner,
        failures: AtomicU32::new(2),
    });
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    client
        .wait_event("ppa-1", EventKind::CleanFailed, WITHIN)
        .await;
    let view = wait_for("two counted failures", WITHIN, || async {
        let view = read_slot(&*store, "ppa-1")
            .await
            .map_err(|e| e.to_string())?;
        if view.record.clean_failures == 2 {
            Ok(view)
        } else {
            Err(format!("{:?}", view.record))
        }
    })
    .await;
    assert_eq!(view.record.state, SlotState::Dirty);
    assert!(
        view.record.last_error.as_deref().unwrap().contains("503"),
        "{:?}",
        view.record.last_error
    );
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let view = wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_eq!(
        (view.record.clean_failures, view.record.last_error),
        (0, None)
    );

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn a_disabled_slot_serves_nobody_until_enabled() {
    let config = config(&["ppa-1"]);
    let store = Arc::new(MemoryStore::new("berth-ci", ["ppa-1"]));
    let disabled = berth::record::SlotRecord::new(SlotState::Disabled, chrono::Utc::now());
    store.insert(
        "ppa-1",
        &berth::record::render_description("ops", &disabled),
    );
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let token = berth::lease::new_token();
    assert_eq!(
        client.renew("ppa-1", &token, 60).await.outcome,
        RenewOutcome::NotHeld
    );
    let id = client.request("ci-1", 60).await;
    assert!(
        client.no_reply_within(Duration::from_millis(600)).await,
        "a disabled slot answered"
    );
    assert_eq!(
        read_slot(&*store, "ppa-1").await.unwrap().record.state,
        SlotState::Disabled
    );

    // An operator enables it (writes free): the waiting request is served.
    let free = berth::record::SlotRecord::new(SlotState::Free, chrono::Utc::now());
    store.insert("ppa-1", &berth::record::render_description("ops", &free));
    let reply: berth::protocol::AssignReply = client.reply_for(id, WITHIN).await;
    assert_eq!(reply.slot, "ppa-1");

    workers.stop().await;
    client.cleanup().await;
}

#[tokio::test]
async fn a_worker_whose_consumer_is_dropped_takes_the_lock_again_and_resumes_from_the_store() {
    let config = config(&["ppa-1"]);
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());
    let reply = client.assign("ci-1", 300).await;

    // Deleting the control queue makes the broker cancel the worker's lock consumer, as a
    // lost connection would end it: the worker must start over from lock and store record.
    let queue = client.names.slot_queue("ppa-1");
    client
        .channel
        .queue_delete(queue.clone().into(), Default::default())
        .await
        .unwrap();
    berth::broker::declare_slot_queue(&client.channel, &client.names, "ppa-1")
        .await
        .unwrap();
    let renewed = client.renew("ppa-1", &reply.lease_token, 300).await;
    assert_eq!(renewed.outcome, RenewOutcome::Renewed);
    client.release("ppa-1", &reply.lease_token).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;

    workers.stop().await;
    client.cleanup().await;
}

/// The dead-letter queue is bounded (`dead_letter_max_length`: the newest stay) and a
/// refused control message keeps no lease token in clear, only its hash.
#[tokio::test]
async fn the_dead_letter_queue_keeps_the_newest_refused_messages_and_no_lease_token() {
    let mut config = config(&["ppa-1"]);
    config.dead_letter_max_length = 2;
    let store = free_store(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());
    let slot_queue = client.names.slot_queue("ppa-1");
    let props = berth::broker::json_properties;
    for n in 1..=4 {
        let body = format!(r#"{{"v":9,"kind":"release","lease_token":"secret-token-{n}"}}"#);
        client.publish(&slot_queue, body.as_bytes(), props()).await;
    }
    // The slot's control queue is FIFO with one message in hand: once this renew is
    // answered, the four before it have been dead-lettered.
    let reply = client.renew("ppa-1", "not-the-token", 300).await;
    assert_eq!(reply.outcome, RenewOutcome::NotHeld);

    let mut kept = Vec::new();
    while let Ok(Some(message)) = client
        .channel
        .basic_get(
            client.names.dead_queue().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
    {
        kept.push(String::from_utf8(message.delivery.data.clone()).unwrap());
    }
    assert_eq!(kept.len(), 2, "{kept:?}");
    for (body, n) in kept.iter().zip([3, 4]) {
        let hash = token_hash(&format!("secret-token-{n}"));
        assert!(body.contains(&format!("sha256:{hash}")), "{body}");
        assert!(!body.contains("secret-token"), "{body}");
    }

    workers.stop().await;
    client.cleanup().await;
}
