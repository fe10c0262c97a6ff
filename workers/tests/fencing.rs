//! Fencing (DESIGN §3 "Fencing"): a worker that lost its slot lock while it was paused or cut
//! off never touches the slot again. Real `berth-worker` processes, the real broker, the fake
//! Launchpad in process; the paused worker reaches the broker through a proxy that the test
//! severs on the broker's side only, so that after it resumes it still believes it holds the
//! lock (its socket stays open and silent, as after a network split, and its heartbeat is the
//! broker's default 60 s, as in the bug report).

mod common;
#[allow(dead_code, unreachable_pub)] // the stall/resume half serves the chaos test
#[path = "../../tests/support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use berth::record::{SlotState, parse_description};
use berth_testkit::rabbit::PrivateCluster;
use common::Client;
use common::launchpad::World;
use proxy::Proxy;

const WITHIN: Duration = Duration::from_secs(30);

/// The broker URL `direct` with a heartbeat of `heartbeat` seconds, through `proxy` when
/// given (in place of the node's address `target`).
fn broker_url(direct: &str, proxy: Option<(&str, &Proxy)>, heartbeat: u16) -> String {
    let direct = direct.to_owned();
    let url = match proxy {
        Some((target, proxy)) => direct.replacen(target, &proxy.addr.to_string(), 1),
        None => direct,
    };
    let proxy = proxy.map(|(_, proxy)| proxy);
    assert!(
        proxy.is_none() || url.contains(&proxy.unwrap().addr.to_string()),
        "cannot route {url} through the proxy"
    );
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}heartbeat={heartbeat}")
}

/// The lock epoch of every description write to `ppa` so far, in order.
async fn written_epochs(world: &World, ppa: &str) -> Vec<(u64, u64, Option<SlotState>)> {
    world
        .launchpad
        .history()
        .await
        .iter()
        .filter(|w| w.ppa == ppa)
        .map(|w| {
            let record = parse_description(&w.description).record;
            (
                w.seq,
                record.as_ref().map_or(0, |r| r.epoch),
                record.map(|r| r.state),
            )
        })
        .collect()
}

/// The story of the bug report, step by step: a worker cleaning ppa-1 is paused; its standby
/// takes the lock, finishes the cleaning, and the slot goes to a new holder who uploads; then
/// the paused worker resumes, still believing it holds the lock. Before fencing it went on
/// cleaning and asked Launchpad to delete the new holder's upload.
#[tokio::test]
async fn a_resumed_cleaner_never_touches_a_slot_that_was_handed_on() {
    // Deletions take 1.5 s, so the first worker is still cleaning when it is paused.
    let world = World::start_with(1, Duration::from_millis(1500)).await;
    let shared = common::amqp_url();
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let through_proxy = broker_url(&shared, Some(("127.0.0.1:5672", &proxy)), 60);
    let direct = broker_url(&shared, None, 1);
    resumed_cleaner(world, proxy, &through_proxy, &direct, || {}).await;
}

/// The same story on a private three-node cluster with quorum queues: the slot's control
/// queue does not refuse a second exclusive consumer there, so the lock is the lock queue's
/// (DESIGN §3 "Slot lock"). The first worker reaches the first node through the proxy; the
/// standby is connected to the second node, with the first one last in its list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_cleaner_never_touches_a_slot_that_was_handed_on_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(3))
        .await
        .unwrap();
    let mut world = World::start_with(1, Duration::from_millis(1500)).await;
    let urls = cluster.urls();
    world.config.amqp_url = cluster.url_list();
    world.config.queue_type = berth::config::QueueType::Quorum;
    std::fs::write(&world.config_path, toml::to_string(&world.config).unwrap()).unwrap();
    let first_node = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let proxy = Proxy::start(first_node.parse().unwrap()).await;
    let through_proxy = broker_url(&urls[0], Some((&first_node, &proxy)), 60);
    let standby_list = [&urls[1], &urls[2], &urls[0]]
        .iter()
        .map(|url| broker_url(url, None, 1))
        .collect::<Vec<_>>()
        .join(",");
    let namespace = world.config.namespace.clone();
    // The queues are of the types the design says.
    let types = || {
        for (queue, kind) in [
            // A quorum pool has a queue per priority (DESIGN §3 "Priority").
            (format!("{namespace}.assign.ppa.q0"), "quorum"),
            (format!("{namespace}.assign.ppa.q9"), "quorum"),
            (format!("{namespace}.slot.ppa-1"), "quorum"),
            (format!("{namespace}.lock.ppa-1"), "classic"),
        ] {
            let found = tokio::task::block_in_place(|| cluster.queue_type(&queue));
            assert_eq!(found.as_deref(), Some(kind), "{queue}");
        }
    };
    resumed_cleaner(world, proxy, &through_proxy, &standby_list, types).await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// The story, with the first worker on `through_proxy` (which goes through `proxy`) and the
/// standby on `direct`; `check` looks at the broker while the slot is held.
async fn resumed_cleaner(
    world: World,
    proxy: Proxy,
    through_proxy: &str,
    direct: &str,
    check: impl FnOnce(),
) {
    let mut client = Client::new(&world.config).await;
    let mut first = world.worker("first", &["ppa-1"], &[("BERTH_AMQP_URL", through_proxy)]);
    world.wait_state("ppa-1", SlotState::Free).await;
    first.wait_log("took the slot over").await;
    let mut standby = world.worker("standby", &["ppa-1"], &[("BERTH_AMQP_URL", direct)]);
    standby.wait_log("standing by").await;

    // A first holder uploads and releases; the first worker starts cleaning.
    let old = client.assign("ci-old", 300).await;
    world.launchpad.add_upload("ppa-1", "old", "1.0").await;
    client.release("ppa-1", &old.lease_token).await;
    common::wait_for("the first worker to ask for a deletion", WITHIN, || async {
        match world.launchpad.deletions().await.as_slice() {
            [] => Err("no deletion yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    // Paused mid-cleaning, and cut off: the broker drops its connection, and with it the slot
    // lock, but the worker cannot hear it.
    first.signal("STOP");
    proxy.sever();
    let paused_epoch = world.slot("ppa-1").await.record.epoch;
    let paused_at = Instant::now();

    // The standby takes over (its epoch in the record), cleans, and the slot is handed on.
    standby.wait_log("took the slot over").await;
    let takeover = Instant::now() - paused_at;
    world.wait_state("ppa-1", SlotState::Free).await;
    let new = client.assign("ci-new", 300).await;
    assert_eq!(new.slot, "ppa-1");
    let new_epoch = world.slot("ppa-1").await.record.epoch;
    assert!(new_epoch > paused_epoch, "{new_epoch} after {paused_epoch}");
    let handed_on = world.launchpad.history().await.last().unwrap().seq;
    world.launchpad.add_upload("ppa-1", "new", "2.0").await;
    let deletions_before = world.launchpad.deletions().await.len();

    // The first worker resumes, still cut off from the broker, and finds itself fenced.
    first.signal("CONT");
    first.wait_log("fenced").await;
    // Its clean loop polls every 100 ms: give it many rounds to do harm.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deletions = world.launchpad.deletions().await;
    assert_eq!(
        deletions.len(),
        deletions_before,
        "deletions after the slot was handed on: {:?}\nfirst worker's log:\n{}",
        &deletions[deletions_before..],
        first.logs()
    );
    assert!(
        deletions.iter().all(|d| d.package == "old"),
        "{deletions:?}"
    );
    assert_eq!(
        world.live_uploads("ppa-1").await,
        1,
        "the new upload is gone"
    );
    let record = world.slot("ppa-1").await.record;
    assert_eq!(
        (record.state, record.owner.as_deref()),
        (SlotState::Used, Some("ci-new"))
    );
    // The store saw no write in the paused worker's epoch after the takeover.
    let epochs = written_epochs(&world, "ppa-1").await;
    let takeover_seq = epochs
        .iter()
        .find(|(_, epoch, _)| *epoch > paused_epoch)
        .map(|(seq, ..)| *seq)
        .unwrap();
    let stale: Vec<_> = epochs
        .iter()
        .filter(|(seq, epoch, _)| *seq > takeover_seq && *epoch <= paused_epoch)
        .collect();
    assert!(stale.is_empty(), "writes by the fenced worker: {stale:?}");
    assert!(handed_on > takeover_seq);
    let fenced_lines = first.logs().matches("fenced:").count();
    assert_eq!(fenced_lines, 1, "said once:\n{}", first.logs());
    eprintln!("takeover {takeover:?} after the pause");

    check();
    // The holder still releases normally, and the slot is cleaned by the standby.
    client.release("ppa-1", &new.lease_token).await;
    world.wait_state("ppa-1", SlotState::Free).await;
    assert_eq!(world.live_uploads("ppa-1").await, 0);

    proxy.cut();
    assert!(standby.terminate().await.success());
    let _ = first.terminate().await;
    client.cleanup().await;
    world.finish().await;
}
