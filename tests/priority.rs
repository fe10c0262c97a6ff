//! Priorities of acquire (DESIGN §3 "Priority"), end to end with real processes (the fake
//! Launchpad, `berth-worker --all`, `berth assigner`) on the shared broker: with one slot
//! held and requests waiting, each release hands the slot to the highest priority waiting,
//! the oldest first within one; on a `classic` pool queue (one priority queue) and on a
//! `quorum` one (a queue per priority). And the upgrade: the pool queue of a berth before
//! priorities (no `x-max-priority`), found with a request in it, is drained and deleted.

mod support;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use berth::config::QueueType;
use berth::protocol::{AssignReply, AssignRequest, PROTOCOL_VERSION, decode, encode};
use support::stack::Stack;
use support::*;

/// How long a waiting acquire may wait: long enough for every release and cleaning before
/// it under a loaded machine.
const WAIT_SECS: u64 = 120;

/// Requests waiting in the pool, as `GET /v1/pools` says.
async fn waiting(http: &reqwest::Client, base: &str) -> Result<u64, String> {
    let answer = get(http, &format!("{base}/v1/pools")).await;
    answer.json["pools"][0]["waiting"]
        .as_u64()
        .ok_or_else(|| format!("no waiting count: {}", answer.text))
}

async fn release(http: &reqwest::Client, base: &str, lease: &Value) {
    let slot = lease["slot"].as_str().unwrap();
    let answer = post(
        http,
        &format!("{base}/v1/slots/{slot}/release"),
        json!({"lease_token": lease["lease_token"]}),
    )
    .await;
    assert_eq!(answer.status, 202, "release of {slot}: {}", answer.text);
}

/// Holds the stack's only slot, queues an acquire for each of `requests` (owner, priority)
/// in that order (each one waiting in the pool queue before the next is sent), then releases
/// the slot and each slot handed out next; answers the owners in the order they got it.
async fn served_order(stack: &Stack, requests: &[(&str, u8)]) -> Vec<String> {
    let http = reqwest::Client::new();
    let base = stack.base.clone();
    let holder = acquire_ok(&http, &base, "holder", 30).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (i, (owner, priority)) in requests.iter().enumerate() {
        let (client, url, tx) = (
            http.clone(),
            format!("{base}/v1/pools/{POOL}/acquire"),
            tx.clone(),
        );
        let owner = owner.to_string();
        let priority = *priority;
        tokio::spawn(async move {
            let answer = post(
                &client,
                &url,
                json!({"owner": owner, "priority": priority, "wait_secs": WAIT_SECS}),
            )
            .await;
            let _ = tx.send((owner, answer));
        });
        let queued = i as u64 + 1;
        wait_for(
            &format!("{queued} requests waiting"),
            Duration::from_secs(30),
            || async {
                match waiting(&http, &base).await? {
                    n if n == queued => Ok(()),
                    n => Err(format!("{n} waiting")),
                }
            },
        )
        .await;
    }
    release(&http, &base, &holder).await;
    let mut order = Vec::new();
    for _ in requests {
        let (owner, answer) = tokio::time::timeout(Duration::from_secs(WAIT_SECS), rx.recv())
            .await
            .expect("the next waiting request is served")
            .unwrap();
        assert_eq!(answer.status, 200, "acquire for {owner}: {}", answer.text);
        release(&http, &base, &answer.json).await;
        order.push(owner);
    }
    order
}

/// The required case and a mix: 9, then 5, then 0; the oldest first within one priority.
async fn check_order(stack: &Stack) {
    assert_eq!(
        served_order(stack, &[("p0", 0), ("p5", 5), ("p9", 9)]).await,
        ["p9", "p5", "p0"]
    );
    assert_eq!(
        served_order(
            stack,
            &[("a0", 0), ("b5", 5), ("c0", 0), ("d9", 9), ("e5", 5)]
        )
        .await,
        ["d9", "b5", "e5", "a0", "c0"]
    );
}

#[tokio::test]
async fn a_release_hands_the_slot_to_the_highest_priority_waiting_on_a_classic_pool() {
    let stack = Stack::start(1, 30, "text").await;
    check_order(&stack).await;

    // The CLI's flag: refused out of range, taken in range. Run off the test's runtime,
    // which serves the fake Launchpad the workers call meanwhile.
    let run = |args: &[&str]| {
        let mut command = stack.berth(args);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let out = run(&["acquire", "--pool", POOL, "--priority", "10"])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--priority"));
    let out = run(&[
        "acquire",
        "--pool",
        POOL,
        "--priority",
        "9",
        "--format",
        "json",
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lease["slot"], "ppa-1");
    stack.stop().await;
}

#[tokio::test]
async fn a_quorum_pool_serves_acquires_by_priority_too() {
    let stack = Stack::start_tuned(1, 30, "text", |_, config| {
        config.queue_type = QueueType::Quorum;
    })
    .await;
    // The pool's queues are quorum queues (a declare with other arguments is refused).
    let names = stack.config.names();
    let conn = berth::broker::connect(&stack.config.amqp_url, "priority-test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = berth::broker::declare_pool_queue(&channel, &names, POOL).await;
    assert!(queue.is_ok(), "{queue:?}");
    let classic = channel
        .queue_declare(
            names.assign_queue_for(POOL, 5).into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(classic.is_err(), "a band is a quorum queue, not classic");
    let _ = conn.close(200, "done".into()).await;

    check_order(&stack).await;
    stack.stop().await;
}

#[tokio::test]
async fn the_pool_queue_of_an_older_berth_is_drained_then_deleted() {
    // Before the new berth starts: the old pool queue as berth before priorities declared
    // it (durable, no arguments), holding a request whose client waits on its reply queue.
    let namespace = format!("t-{}", Uuid::new_v4().simple());
    let mut names_config = config(&["ppa-1"]);
    names_config.namespace = namespace.clone();
    let names = names_config.names();
    let old_queue = names.retired_assign_queue(POOL);
    assert_eq!(old_queue, format!("{namespace}.assign.{POOL}"));
    let conn = berth::broker::connect(&amqp_url(), "priority-old-berth")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            old_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (reply_queue, mut replies) = berth::broker::private_queue(&channel).await.unwrap();
    let request = AssignRequest {
        v: PROTOCOL_VERSION,
        request_id: Uuid::new_v4(),
        pool: POOL.into(),
        owner: "old-client".into(),
        lease_secs: 60,
        deadline: chrono::Utc::now() + chrono::Duration::seconds(120),
    };
    channel
        .basic_publish(
            "".into(),
            old_queue.as_str().into(),
            BasicPublishOptions::default(),
            &encode(&request),
            berth::broker::json_properties()
                .with_reply_to(reply_queue.as_str().into())
                .with_correlation_id(request.request_id.to_string().into())
                .with_expiration("120000".into()),
        )
        .await
        .unwrap();
    // The old client gives the slot back as soon as it has it, so that the stack finds
    // every slot free once it is up.
    let names_for_release = names.clone();
    let served = tokio::spawn(async move {
        let delivery = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .expect("the old request is answered")
            .unwrap()
            .unwrap();
        let reply: AssignReply = decode(&delivery.data).unwrap();
        release_direct(&names_for_release, &reply.slot, &reply.lease_token).await;
        reply
    });

    let stack = Stack::start_tuned(1, 30, "text", |_, config| {
        config.namespace = namespace.clone();
    })
    .await;
    let reply = served.await.unwrap();
    assert_eq!(
        (reply.request_id, reply.slot.as_str()),
        (request.request_id, "ppa-1")
    );

    // Gone once empty: a passive declare fails (on a channel of its own each time).
    wait_for(
        "the old pool queue to be deleted",
        Duration::from_secs(60),
        || async {
            let probe = conn.create_channel().await.map_err(|e| e.to_string())?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match probe
                .queue_declare(old_queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(queue) => Err(format!(
                    "still there with {} messages, {} consumers",
                    queue.message_count(),
                    queue.consumer_count()
                )),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    // The new pool queue serves.
    let http = reqwest::Client::new();
    let lease = acquire_ok(&http, &stack.base, "new-client", 30).await;
    release(&http, &stack.base, &lease).await;
    let _ = conn.close(200, "done".into()).await;
    stack.stop().await;
}
