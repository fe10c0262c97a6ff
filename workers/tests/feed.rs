//! The pool feed: a worker process consumes its pool's queue once for all its free slots,
//! hands each request to one of them, and stops consuming when none is free, so waiting
//! requests stay in the queue for other processes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use berth::protocol::AssignReply;
use berth::record::SlotState;
use common::{Client, config, fast_options, free_store, spawn, wait_for, wait_state};

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn one_process_consumes_its_pool_once_and_leaves_what_it_cannot_serve_to_others() {
    let slots = ["ppa-1", "ppa-2", "ppa-3", "ppa-4", "ppa-5", "ppa-6"];
    let config = config(&slots);
    let store = free_store(&slots);
    let mut client = Client::new(&config).await;
    let first = spawn(&config, &slots[..5], store.clone(), fast_options());
    for slot in &slots[..5] {
        wait_state(&*store, slot, SlotState::Free, WITHIN).await;
    }
    // Five free slots, one consumer.
    wait_for("the process to consume the pool queue", WITHIN, || async {
        match client.pool_counts().await {
            (_, 1) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;

    // Five requests at once: five distinct slots.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(client.request(&format!("ci-{i}"), 300).await);
    }
    let mut held: Vec<AssignReply> = Vec::new();
    for id in ids {
        held.push(client.reply_for(id, WITHIN).await);
    }
    let distinct: HashSet<&str> = held.iter().map(|r| r.slot.as_str()).collect();
    assert_eq!(distinct.len(), 5, "{distinct:?}");

    // No slot free: the process stops consuming, and a sixth request waits in the queue
    // rather than in the process.
    wait_for("the process to stop consuming", WITHIN, || async {
        match client.pool_counts().await {
            (_, 0) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;
    let sixth = client.request("ci-5", 300).await;
    assert!(client.no_reply_within(Duration::from_millis(500)).await);
    assert_eq!(client.pool_counts().await, (1, 0));

    // Another process with a free slot takes it.
    let second = spawn(&config, &slots[5..], store.clone(), fast_options());
    let sixth: AssignReply = client.reply_for(sixth, WITHIN).await;
    assert_eq!(sixth.slot, "ppa-6");

    // A release frees a slot of the first process; it consumes again and serves the next.
    let back = &held[0];
    client.release(&back.slot, &back.lease_token).await;
    wait_state(&*store, &back.slot, SlotState::Free, WITHIN).await;
    let seventh = client.request("ci-6", 300).await;
    let seventh: AssignReply = client.reply_for(seventh, WITHIN).await;
    assert_eq!(seventh.slot, back.slot);

    first.stop().await;
    second.stop().await;
    client.cleanup().await;
}
