//! berth on a private three-node RabbitMQ cluster with quorum queues (DESIGN §3 "Cluster"):
//! the real `berth assigner` and `berth-worker` processes, given the three nodes as their
//! broker list, keep answering acquires when the node they are connected to dies and when
//! the node leading the pool queue dies; `/readyz` says which node the assigner uses.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use berth::config::QueueType;
use berth::redact::node_url;
use berth_testkit::rabbit::PrivateCluster;
use support::stack::Stack;
use support::*;

/// The broker node the assigner's `/readyz` names.
async fn ready_node(http: &reqwest::Client, base: &str) -> String {
    let ready = get(http, &format!("{base}/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    ready.json["broker"].as_str().unwrap_or_default().to_owned()
}

/// Acquires and releases one slot; how long until the acquire was answered with a slot
/// (a `503` while the assigner reconnects is asked again).
async fn acquire_and_release(stack: &Stack, owner: &str) -> Duration {
    let (http, base) = (&reqwest::Client::new(), &stack.base);
    let start = Instant::now();
    let held = loop {
        let a = post(
            http,
            &format!("{base}/v1/pools/{POOL}/acquire"),
            json!({"owner": owner, "wait_secs": 30, "lease_secs": 60}),
        )
        .await;
        match a.status {
            StatusCode::OK => break a.json,
            StatusCode::SERVICE_UNAVAILABLE if start.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            status => panic!(
                "acquire for {owner}: {status} {}; the assigner's log:\n{}",
                a.text,
                std::fs::read_to_string(stack.assigner_log(1)).unwrap_or_default()
            ),
        }
    };
    let took = start.elapsed();
    let slot = held["slot"].as_str().unwrap();
    let released = post(
        http,
        &format!("{base}/v1/slots/{slot}/release"),
        json!({"lease_token": held["lease_token"]}),
    )
    .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_go_on_when_a_node_dies_even_the_pool_queues_leader() {
    let mut cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(3))
        .await
        .unwrap();
    let list = cluster.url_list();
    let stack = Stack::start_tuned(3, 30, "text", |_, config| {
        config.amqp_url = list;
        config.queue_type = QueueType::Quorum;
        config.heartbeat_secs = 2;
    })
    .await;
    let http = reqwest::Client::new();
    let base = stack.base.clone();
    let pool_queue = stack.config.names().assign_queue(POOL);
    let urls = cluster.urls();

    // The first node that answers: the first of the list. No password in what /readyz says.
    let node = ready_node(&http, &base).await;
    assert_eq!(node, node_url(&urls[0]));
    assert!(!node.contains("guest:guest"), "{node}");
    acquire_and_release(&stack, "before").await;

    // The assigner's node (and the workers') dies: everyone moves on to the next node.
    let leader_before = tokio::task::block_in_place(|| cluster.leader_of(&pool_queue));
    eprintln!("cluster: the pool queue's leader was node {leader_before:?}");
    tokio::task::block_in_place(|| cluster.nodes[0].kill());
    let after_own = acquire_and_release(&stack, "after-node-0").await;
    let moved = ready_node(&http, &base).await;
    assert!(
        moved == node_url(&urls[1]) || moved == node_url(&urls[2]),
        "{moved}"
    );
    tokio::task::block_in_place(|| {
        cluster.nodes[0].relaunch();
        cluster.wait_running(3, Duration::from_secs(60));
    });

    // The node leading the pool queue dies: another member is elected, and acquires go on.
    let leader = tokio::task::block_in_place(|| cluster.leader_of(&pool_queue))
        .expect("the pool queue has a leader");
    tokio::task::block_in_place(|| cluster.nodes[leader].kill());
    let after_leader = acquire_and_release(&stack, "after-leader").await;
    let new_leader = tokio::task::block_in_place(|| cluster.leader_of(&pool_queue));
    assert!(
        new_leader.is_some_and(|l| l != leader),
        "{new_leader:?} after {leader}"
    );
    // Every slot still serves: three acquires at once get the three slots.
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(acquire_ok(&http, &base, &format!("all-{i}"), 30).await);
    }
    let mut slots: Vec<_> = held.iter().map(|h| h["slot"].as_str().unwrap()).collect();
    slots.sort_unstable();
    assert_eq!(slots, ["ppa-1", "ppa-2", "ppa-3"]);
    eprintln!(
        "cluster: acquire answered {after_own:?} after the assigner's node died, {after_leader:?} after the pool queue's leader (node {leader}) died"
    );
    tokio::task::block_in_place(|| cluster.nodes[leader].relaunch());
    stack.stop().await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
