//! A namespace of queue names per test on the shared broker: the test's configuration,
//! and the broker-side helpers that work in it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};

use berth::config::Config;
use berth::protocol::{Control, Names, PROTOCOL_VERSION, encode};

/// The test configuration and its broker, shared with the worker's tests.
pub use berth_testkit::{POOL, amqp_url, config};

/// Slot names `s-1` … `s-n`.
pub fn slot_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("s-{i}")).collect()
}

/// Publishes a `Release` straight to a slot's control queue, as a worker would receive it
/// (for fake workers, whose store the assigner cannot read).
pub async fn release_direct(names: &Names, slot: &str, token: &str) {
    let conn = berth::broker::connect(&amqp_url(), "berth-test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    berth::broker::declare_slot_queue(&channel, names, slot)
        .await
        .unwrap();
    let body = encode(&Control::Release {
        v: PROTOCOL_VERSION,
        lease_token: token.into(),
    });
    let confirm = channel
        .basic_publish(
            "".into(),
            names.slot_queue(slot).into(),
            BasicPublishOptions::default(),
            &body,
            berth::broker::json_properties().with_delivery_mode(berth::broker::PERSISTENT),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = conn.close(200, "done".into()).await;
}

/// Deletes the queues and exchange of `config`'s namespace (best effort).
pub async fn delete_queues(config: &Config) {
    let Ok(tls) = config.broker_tls() else {
        return;
    };
    let brokers = berth::cluster::Brokers::new(config.broker_urls(), tls);
    let Ok(berth::cluster::Connected {
        connection: conn, ..
    }) = brokers.connect("berth-test-cleanup").await
    else {
        return;
    };
    let names = config.names();
    let mut queues = vec![names.dead_queue(), names.history_queue()];
    for pool in &config.pools {
        queues.extend(names.assign_queues(&pool.name));
        queues.push(names.retired_assign_queue(&pool.name));
        queues.extend(pool.slots.iter().map(|s| names.slot_queue(s)));
    }
    for queue in queues {
        // A failed delete closes the channel: use one per queue.
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
    }
    if let Ok(channel) = conn.create_channel().await {
        let _ = channel
            .exchange_delete(names.events_exchange().into(), Default::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}
