//! Lease edges: renew racing expiry, renew racing release, a stale holder after the slot was
//! handed on, clock oddities, and assign requests that are stale or ask for odd leases. Slot
//! workers run in-process over a memory store that keeps the history of every record it was
//! written, so each test checks the order of transitions, not just the end state.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use berth::lease::{new_token, token_hash};
use berth::protocol::{
    AssignReply, AssignRequest, Control, EventKind, PROTOCOL_VERSION, RenewOutcome, RenewReply,
    encode,
};
use berth::record::{SlotRecord, SlotState, parse_description, render_description};
use berth::store::slot::read_slot;
use berth::store::{Archive, MemoryStore, SlotStore, SourcePublication, StoreError};
use berth_worker::WorkerOptions;
use common::{Client, POOL, config, fast_options, spawn, wait_state};

const WITHIN: Duration = Duration::from_secs(15);

/// A memory store that remembers every record written through it, in order.
struct Recording {
    inner: MemoryStore,
    writes: Mutex<Vec<(String, SlotRecord)>>,
    /// The slots of the lock-epoch writes, one entry each.
    takeovers: Mutex<Vec<String>>,
}

impl Recording {
    /// A store of `slots`, each holding `record` (`None`: free).
    fn new(slots: &[(&str, Option<SlotRecord>)]) -> Arc<Recording> {
        let inner = MemoryStore::new("berth-ci", slots.iter().map(|(s, _)| *s));
        for (slot, record) in slots {
            let record = record
                .clone()
                .unwrap_or_else(|| SlotRecord::new(SlotState::Free, Utc::now()));
            inner.insert(slot, &render_description("test PPA", &record));
        }
        Arc::new(Recording {
            inner,
            writes: Mutex::new(Vec::new()),
            takeovers: Mutex::new(Vec::new()),
        })
    }

    fn free(slots: &[&str]) -> Arc<Recording> {
        let slots: Vec<_> = slots.iter().map(|s| (*s, None)).collect();
        Recording::new(&slots)
    }

    /// Every record written to `slot` so far, but for the lock-epoch writes of takeovers
    /// (a worker taking the slot lock raises the epoch and changes nothing else).
    fn writes(&self, slot: &str) -> Vec<SlotRecord> {
        let writes = self.writes.lock().unwrap();
        writes
            .iter()
            .filter(|(s, _)| s == slot)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The records written to `slot` from the claim of `request` on.
    fn since_claim(&self, slot: &str, request: Uuid) -> Vec<SlotRecord> {
        let writes = self.writes(slot);
        let start = writes
            .iter()
            .position(|r| r.state == SlotState::Used && r.request == Some(request))
            .unwrap_or_else(|| panic!("no claim of {slot} for {request}: {writes:#?}"));
        writes[start..].to_vec()
    }

    async fn etag(&self, slot: &str) -> String {
        self.inner.archive(slot).await.unwrap().http_etag
    }

    /// How many lock-epoch writes `slot` has seen.
    fn takeovers(&self, slot: &str) -> usize {
        self.takeovers
            .lock()
            .unwrap()
            .iter()
            .filter(|s| *s == slot)
            .count()
    }
}

#[async_trait]
impl SlotStore for Recording {
    async fn archive(&self, name: &str) -> Result<Archive, StoreError> {
        self.inner.archive(name).await
    }
    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        description: &str,
    ) -> Result<Archive, StoreError> {
        let before = parse_description(&self.inner.archive(name).await?.description).record;
        let archive = self.inner.set_description(name, etag, description).await?;
        let record = parse_description(description)
            .record
            .expect("workers write readable records");
        let takeover = before.is_some_and(|before| {
            record.epoch > before.epoch && record.clone().in_epoch(before.epoch) == before
        });
        if takeover {
            self.takeovers.lock().unwrap().push(name.to_owned());
        } else {
            self.writes.lock().unwrap().push((name.to_owned(), record));
        }
        Ok(archive)
    }
    async fn archives(&self) -> Result<Vec<Archive>, StoreError> {
        self.inner.archives().await
    }
    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError> {
        self.inner.published_sources(name, status).await
    }
    async fn request_deletion(&self, link: &str) -> Result<(), StoreError> {
        self.inner.request_deletion(link).await
    }
    fn resource(&self, name: &str) -> serde_json::Value {
        self.inner.resource(name)
    }
}

/// Publishes a renew without waiting for its reply; answers its request id.
async fn send_renew(client: &Client, slot: &str, token: &str, lease_secs: u64) -> Uuid {
    let request_id = Uuid::new_v4();
    let message = Control::Renew {
        v: PROTOCOL_VERSION,
        request_id,
        lease_token: token.into(),
        lease_secs,
    };
    let properties = berth::broker::json_properties()
        .with_reply_to(client.reply_queue.clone().into())
        .with_correlation_id(request_id.to_string().into());
    client
        .publish(
            &client.names.slot_queue(slot),
            &encode(&message),
            properties,
        )
        .await;
    request_id
}

/// Publishes an assign request with `deadline`; answers its request id.
async fn send_request(
    client: &Client,
    owner: &str,
    lease_secs: u64,
    deadline: DateTime<Utc>,
) -> Uuid {
    let request = AssignRequest {
        v: PROTOCOL_VERSION,
        request_id: Uuid::new_v4(),
        pool: POOL.into(),
        owner: owner.into(),
        lease_secs,
        deadline,
    };
    let properties = berth::broker::json_properties()
        .with_reply_to(client.reply_queue.clone().into())
        .with_correlation_id(request.request_id.to_string().into());
    client
        .publish(
            &client.names.assign_queue(POOL),
            &encode(&request),
            properties,
        )
        .await;
    request.request_id
}

/// A used record held by `owner` with the hash of `token`.
fn used_record(
    owner: &str,
    token: &str,
    expires: DateTime<Utc>,
    touched: DateTime<Utc>,
) -> SlotRecord {
    SlotRecord {
        owner: Some(owner.into()),
        request: Some(Uuid::new_v4()),
        lease_sha256: Some(token_hash(token)),
        lease_expires: Some(expires),
        ..SlotRecord::new(SlotState::Used, touched)
    }
}

fn states(records: &[SlotRecord]) -> Vec<SlotState> {
    records.iter().map(|r| r.state).collect()
}

/// The one write that took the slot from used to dirty, checked to come after `expires`.
fn assert_expired_after(records: &[SlotRecord], expires: DateTime<Utc>) {
    let dirty = records
        .iter()
        .find(|r| r.state == SlotState::Dirty)
        .unwrap_or_else(|| panic!("never went dirty: {records:#?}"));
    assert!(
        dirty.touched >= expires,
        "taken back at {} before its lease ran out at {expires}: {records:#?}",
        dirty.touched
    );
}

/// Renews sent from 50 ms before to 50 ms after the expiry instant, 20 times over four
/// namespaces in parallel (one slot each, so that a lost slot is never handed straight to
/// another lane). A renew either wins (and the slot then stays used until the new expiry) or
/// loses (not held, and the slot comes back); never both, never neither.
#[tokio::test]
async fn renew_racing_expiry_is_answered_consistently() {
    const LANES: usize = 4;
    const ROUNDS: usize = 5;
    let mut tasks = Vec::new();
    for lane in 0..LANES {
        tasks.push(tokio::spawn(async move {
            let config = config(&["ppa-1"]);
            let store = Recording::free(&["ppa-1"]);
            let mut client = Client::new(&config).await;
            let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());
            let mut outcomes = Vec::new();
            for round in 0..ROUNDS {
                let k = (lane * ROUNDS + round) as i64;
                let offset = chrono::Duration::milliseconds(-50 + k * 100 / 19);
                let reply = client.assign(&format!("ci-{lane}-{round}"), 1).await;
                let send_at = reply.lease_expires + offset;
                let wait = (send_at - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await; // schedules the send; waits for nothing
                let answer = client.renew(&reply.slot, &reply.lease_token, 1).await;
                wait_state(&*store, &reply.slot, SlotState::Free, WITHIN).await;

                let records = store.since_claim(&reply.slot, reply.request_id);
                assert_eq!(records[0].lease_expires, Some(reply.lease_expires));
                match answer.outcome {
                    RenewOutcome::Renewed => {
                        let renewed = answer.lease_expires.expect("a renewed lease has an end");
                        assert!(renewed > reply.lease_expires, "{answer:?}");
                        assert_eq!(
                            states(&records),
                            [
                                SlotState::Used,
                                SlotState::Used,
                                SlotState::Dirty,
                                SlotState::Free
                            ],
                            "{records:#?}"
                        );
                        assert_eq!(records[1].lease_expires, Some(renewed));
                        assert_eq!(records[1].lease_sha256, records[0].lease_sha256);
                        assert_expired_after(&records, renewed);
                    }
                    RenewOutcome::NotHeld => {
                        assert_eq!(answer.lease_expires, None);
                        assert_eq!(
                            states(&records),
                            [SlotState::Used, SlotState::Dirty, SlotState::Free],
                            "{records:#?}"
                        );
                        assert_expired_after(&records, reply.lease_expires);
                    }
                    RenewOutcome::WrongToken => panic!("the holder's own token: {answer:?}"),
                }
                outcomes.push((offset.num_milliseconds(), answer.outcome));
            }
            workers.stop().await;
            client.cleanup().await;
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("a lane passed"));
    }
    outcomes.sort_by_key(|(offset, _)| *offset);
    eprintln!("renew offset from expiry (ms) -> outcome: {outcomes:?}");
}

/// Renew and release with one token, back to back in both orders: the slot always comes
/// back, and a renew handled after the release is not held.
#[tokio::test]
async fn renew_and_release_back_to_back_in_either_order() {
    let config = config(&["ppa-1"]);
    let store = Recording::free(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    for renew_first in [true, false, true, false] {
        let reply = client.assign("ci-job", 300).await;
        let renew = if renew_first {
            let id = send_renew(&client, "ppa-1", &reply.lease_token, 600).await;
            client.release("ppa-1", &reply.lease_token).await;
            id
        } else {
            client.release("ppa-1", &reply.lease_token).await;
            send_renew(&client, "ppa-1", &reply.lease_token, 600).await
        };
        let answer: RenewReply = client.reply_for(renew, WITHIN).await;
        wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
        let records = store.since_claim("ppa-1", reply.request_id);
        if renew_first {
            assert_eq!(answer.outcome, RenewOutcome::Renewed, "{answer:?}");
            assert_eq!(
                states(&records),
                [
                    SlotState::Used,
                    SlotState::Used,
                    SlotState::Dirty,
                    SlotState::Free
                ]
            );
            assert_eq!(records[1].lease_expires, answer.lease_expires);
        } else {
            assert_eq!(answer.outcome, RenewOutcome::NotHeld, "{answer:?}");
            assert_eq!(answer.lease_expires, None);
            assert_eq!(
                states(&records),
                [SlotState::Used, SlotState::Dirty, SlotState::Free]
            );
        }
        let released = client
            .wait_event("ppa-1", EventKind::Released, WITHIN)
            .await;
        assert_eq!(released.owner.as_deref(), Some("ci-job"));
        client.seen_events.clear();
    }
    // Once released, the token is worth nothing, whatever comes later.
    let reply = client.assign("ci-last", 300).await;
    client.release("ppa-1", &reply.lease_token).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    let late = client.renew("ppa-1", &reply.lease_token, 600).await;
    assert_eq!(late.outcome, RenewOutcome::NotHeld);

    workers.stop().await;
    client.cleanup().await;
}

/// A's release and renew, sent after the slot went back (by release, then by expiry) and
/// on to B, change nothing: no write at all, B holds on.
#[tokio::test]
async fn a_stale_holder_cannot_touch_the_next_holders_slot() {
    let config = config(&["ppa-1"]);
    let store = Recording::free(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    for a_releases in [true, false] {
        let a = client
            .assign("ci-a", if a_releases { 300 } else { 1 })
            .await;
        if a_releases {
            client.release("ppa-1", &a.lease_token).await;
        }
        wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
        // A's token while the slot is free: not held, and no write.
        let etag = store.etag("ppa-1").await;
        client.release("ppa-1", &a.lease_token).await;
        let free = client.renew("ppa-1", &a.lease_token, 300).await;
        assert_eq!(free.outcome, RenewOutcome::NotHeld);
        assert_eq!(
            store.etag("ppa-1").await,
            etag,
            "A's token wrote a free slot"
        );

        let b = client.assign("ci-b", 300).await;
        assert_eq!(b.slot, "ppa-1");
        let etag = store.etag("ppa-1").await;
        client.release("ppa-1", &a.lease_token).await;
        let stale = client.renew("ppa-1", &a.lease_token, 300).await;
        assert_eq!(stale.outcome, RenewOutcome::WrongToken, "{stale:?}");
        assert_eq!(stale.lease_expires, None);
        // The renew came after the release on the same queue: both were handled.
        let view = read_slot(&*store, "ppa-1").await.unwrap();
        assert_eq!(view.archive.http_etag, etag, "A's token wrote B's slot");
        assert_eq!(view.record.state, SlotState::Used);
        assert_eq!(view.record.owner.as_deref(), Some("ci-b"));
        assert_eq!(view.record.request, Some(b.request_id));
        let b_hash = token_hash(&b.lease_token);
        assert_eq!(view.record.lease_sha256.as_deref(), Some(b_hash.as_str()));
        assert_eq!(view.record.lease_expires, Some(b.lease_expires));
        // B still holds it and can give it back.
        let renewed = client.renew("ppa-1", &b.lease_token, 300).await;
        assert_eq!(renewed.outcome, RenewOutcome::Renewed);
        client.release("ppa-1", &b.lease_token).await;
        wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    }

    workers.stop().await;
    client.cleanup().await;
}

/// Records written by someone else: only `lease_expires` against the worker's own clock
/// decides; `touched`, however far in the past or future, decides nothing.
#[tokio::test]
async fn only_lease_expires_against_the_workers_clock_decides_expiry() {
    let now = Utc::now();
    let centuries = chrono::Duration::days(9 * 36_525);
    let far_future = "9999-12-31T23:59:59.999Z".parse::<DateTime<Utc>>().unwrap();
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    let token = new_token();
    // (slot, lease_expires, touched, should expire)
    let cases = [
        ("ppa-1", far_future, epoch, false),
        (
            "ppa-2",
            now + chrono::Duration::minutes(10),
            now + centuries,
            false,
        ),
        (
            "ppa-3",
            now - chrono::Duration::hours(1),
            now + centuries,
            true,
        ),
        ("ppa-4", epoch, epoch, true),
    ];
    let slots: Vec<_> = cases.iter().map(|c| c.0).collect();
    let records: Vec<_> = cases
        .iter()
        .map(|(slot, expires, touched, _)| {
            (
                *slot,
                Some(used_record("someone-else", &token, *expires, *touched)),
            )
        })
        .collect();
    let config = config(&slots);
    let store = Recording::new(&records);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &slots, store.clone(), fast_options());

    for (slot, ..) in cases.iter().filter(|c| c.3) {
        let expired = client.wait_event(slot, EventKind::Expired, WITHIN).await;
        assert_eq!(expired.owner.as_deref(), Some("someone-else"));
        wait_state(&*store, slot, SlotState::Free, WITHIN).await;
        assert_eq!(
            states(&store.writes(slot)),
            [SlotState::Dirty, SlotState::Free]
        );
    }
    for (slot, expires, _, _) in cases.iter().filter(|c| !c.3) {
        // An answer from the worker proves it has read the record and judged it.
        let wrong = client.renew(slot, &new_token(), 60).await;
        assert_eq!(wrong.outcome, RenewOutcome::WrongToken, "{slot}");
        let view = read_slot(&*store, slot).await.unwrap();
        // Written once, by the worker taking it over (its lock epoch), and never since.
        assert_eq!(store.takeovers(slot), 1, "{slot}");
        assert_eq!(view.record.lease_expires, Some(*expires));
        assert!(store.writes(slot).is_empty(), "{slot}");
        assert!(
            !client.seen_events.iter().any(|e| e.slot == **slot),
            "{slot}: {:?}",
            client.seen_events
        );
    }
    // The holder of the far-future lease can still give it back.
    client.release("ppa-1", &token).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;

    workers.stop().await;
    client.cleanup().await;
}

/// Regression: a renew already waiting when the worker starts must not revive a lease that
/// ran out (by the worker's clock, grace included) while no worker was looking; one still
/// within its grace is renewed.
#[tokio::test]
async fn a_renew_waiting_at_start_does_not_revive_an_expired_lease() {
    let now = Utc::now();
    let token = new_token();
    let config = config(&["ppa-1", "ppa-2"]);
    let store = Recording::new(&[
        (
            "ppa-1",
            Some(used_record(
                "ci-gone",
                &token,
                now - chrono::Duration::hours(1),
                now,
            )),
        ),
        (
            "ppa-2",
            Some(used_record(
                "ci-late",
                &token,
                now - chrono::Duration::seconds(1),
                now,
            )),
        ),
    ]);
    let mut client = Client::new(&config).await;
    let expired = send_renew(&client, "ppa-1", &token, 300).await;
    let in_grace = send_renew(&client, "ppa-2", &token, 300).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());
    let graceful = WorkerOptions {
        lease_grace: Duration::from_secs(60),
        ..fast_options()
    };
    let graceful_workers = spawn(&config, &["ppa-2"], store.clone(), graceful);

    let answer: RenewReply = client.reply_for(expired, WITHIN).await;
    assert_eq!(answer.outcome, RenewOutcome::NotHeld, "{answer:?}");
    assert_eq!(answer.lease_expires, None);
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_eq!(
        states(&store.writes("ppa-1")),
        [SlotState::Dirty, SlotState::Free]
    );
    let expired = client.wait_event("ppa-1", EventKind::Expired, WITHIN).await;
    assert_eq!(expired.owner.as_deref(), Some("ci-gone"));

    let answer: RenewReply = client.reply_for(in_grace, WITHIN).await;
    assert_eq!(answer.outcome, RenewOutcome::Renewed, "{answer:?}");
    let view = read_slot(&*store, "ppa-2").await.unwrap();
    assert_eq!(view.record.state, SlotState::Used);
    assert_eq!(view.record.lease_expires, answer.lease_expires);

    workers.stop().await;
    graceful_workers.stop().await;
    client.cleanup().await;
}

/// An assign request whose deadline has passed is acked and dropped: no claim, no reply, not
/// requeued; the request behind it is served.
#[tokio::test]
async fn an_assign_request_past_its_deadline_is_dropped_without_a_claim() {
    let config = config(&["ppa-1"]);
    let store = Recording::free(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let stale = send_request(
        &client,
        "ci-stale",
        300,
        Utc::now() - chrono::Duration::seconds(1),
    )
    .await;
    let fresh = send_request(
        &client,
        "ci-fresh",
        300,
        Utc::now() + chrono::Duration::seconds(60),
    )
    .await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let reply: AssignReply = client.reply_for(fresh, WITHIN).await;
    assert_eq!(reply.slot, "ppa-1");
    let writes = store.writes("ppa-1");
    assert_eq!(states(&writes), [SlotState::Used], "{writes:#?}");
    assert_eq!(writes[0].request, Some(fresh));
    assert_eq!(writes[0].owner.as_deref(), Some("ci-fresh"));
    // With prefetch 1 the fresh request could only come after the stale one was settled;
    // nothing is left in the queue, so it was acked, not requeued.
    let (ready, _) = client.pool_counts().await;
    assert_eq!(ready, 0, "the stale request is still queued");
    assert!(
        client.no_reply_within(Duration::from_millis(300)).await,
        "the stale request {stale} was answered"
    );

    workers.stop().await;
    client.cleanup().await;
}

/// A lease of 0 s is taken as 1 s, a huge one as 10 years, on assign and on renew alike.
#[tokio::test]
async fn zero_and_huge_lease_lengths_are_clamped() {
    let ten_years = chrono::Duration::seconds(10 * 365 * 24 * 3600);
    let config = config(&["ppa-1"]);
    let store = Recording::free(&["ppa-1"]);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let huge = client.assign("ci-huge", u64::MAX).await;
    let claim = store.since_claim("ppa-1", huge.request_id)[0].clone();
    assert_eq!(huge.lease_expires - claim.touched, ten_years);
    let shortened = client.renew("ppa-1", &huge.lease_token, 0).await;
    assert_eq!(shortened.outcome, RenewOutcome::Renewed);
    let left = shortened.lease_expires.unwrap() - Utc::now();
    assert!(left <= chrono::Duration::seconds(1), "{left}");
    let stretched = client.renew("ppa-1", &huge.lease_token, u64::MAX).await;
    let left = stretched.lease_expires.unwrap() - Utc::now();
    assert!(
        left <= ten_years && left > ten_years - chrono::Duration::seconds(10),
        "{left}"
    );
    client.release("ppa-1", &huge.lease_token).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;

    let zero = client.assign("ci-zero", 0).await;
    let records = store.since_claim("ppa-1", zero.request_id);
    assert_eq!(
        zero.lease_expires - records[0].touched,
        chrono::Duration::seconds(1)
    );
    // A one-second lease really runs out, and not before its end.
    client.wait_event("ppa-1", EventKind::Expired, WITHIN).await;
    wait_state(&*store, "ppa-1", SlotState::Free, WITHIN).await;
    assert_expired_after(
        &store.since_claim("ppa-1", zero.request_id),
        zero.lease_expires,
    );

    workers.stop().await;
    client.cleanup().await;
}

/// Leases are given whole: a store that takes 1.5 s for every call made a claim write eat
/// 1.5 s of the lease before its reply went out. A slow claim write is now followed by one
/// that restarts the lease, so the holder gets the length it asked for, from the reply on.
#[tokio::test]
async fn a_slow_store_does_not_eat_into_the_lease_handed_out() {
    let config = config(&["ppa-1"]);
    let store = MemoryStore::new("berth-ci", ["ppa-1"]).with_latency(Duration::from_millis(1500));
    store.insert(
        "ppa-1",
        &render_description("test PPA", &SlotRecord::new(SlotState::Free, Utc::now())),
    );
    let store = Arc::new(store);
    let mut client = Client::new(&config).await;
    let workers = spawn(&config, &["ppa-1"], store.clone(), fast_options());

    let lease = 30;
    let reply = client.assign("ci-slow-store", lease).await;
    let left = reply.lease_expires - Utc::now();
    assert!(
        left >= chrono::Duration::milliseconds(lease as i64 * 1000 - 500),
        "a {lease} s lease arrived with {left} left"
    );
    let record = read_slot(&*store, "ppa-1").await.unwrap().record;
    assert_eq!(record.lease_expires, Some(reply.lease_expires));

    workers.stop().await;
    client.cleanup().await;
}
