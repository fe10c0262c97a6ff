//! `berth-bench broker-cost`: what each per-slot broker object costs, per node, on the
//! bench's own node or cluster ([`super::rabbit`]), and how long queues take to come back
//! after a node loss and after a full restart.
//!
//! Each kind of object is declared from 0 up to each count in turn, on connections to node
//! 1, and every node's memory (Erlang's own figure after a garbage collection, and the VM's
//! RSS) and object counts are read at each step; the cost per object is the growth over the
//! step before. Then the durable queues kept (classic and, on a cluster, quorum) are probed
//! after node 1 is killed, and after every node is stopped and started again
//! ([`super::recovery`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde::Serialize;

use super::rabbit::{Cluster, NodeStats};
use super::recovery::{Recovery, full_restart, node_loss};

/// Channels a declare or probe loop runs on at once.
const PARALLEL: usize = 8;
/// Channels per connection where a kind needs many (berth's own figure, README).
const CHANNELS_PER_CONNECTION: usize = 100;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BrokerCostOptions {
    pub nodes: usize,
    /// Steps of the classic kinds, consumers and channels, ascending.
    pub counts: Vec<usize>,
    /// Steps of the quorum queues, ascending (only on a cluster).
    pub quorum_counts: Vec<usize>,
    /// Measure recovery after a node loss and a full restart.
    pub recovery: bool,
    /// The pause before each reading, for the broker to finish what a step started.
    pub settle: Duration,
}

/// One kind of object at one count.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: &'static str,
    pub count: usize,
    /// Declaring the objects added in this step, wall clock.
    pub declare_ms: f64,
    pub declare_per_sec: f64,
    pub nodes: Vec<NodeStats>,
    /// Per node, Erlang memory added per object over the step before, KiB.
    pub erlang_kib_per_object: Vec<f64>,
    /// Per node, VM RSS added per object over the step before, KiB.
    pub rss_kib_per_object: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerCost {
    pub nodes: usize,
    pub node_names: Vec<String>,
    pub baseline: Vec<NodeStats>,
    pub steps: Vec<Step>,
    pub recovery: Vec<Recovery>,
}

/// Runs the measurement on a fresh node or cluster, which is stopped and removed at the end.
pub async fn run(options: &BrokerCostOptions) -> anyhow::Result<BrokerCost> {
    eprintln!("broker-cost: starting {} node(s)", options.nodes);
    let mut cluster = Cluster::start(options.nodes)?;
    let result = measure(&mut cluster, options).await;
    drop(cluster);
    result
}

async fn measure(cluster: &mut Cluster, options: &BrokerCostOptions) -> anyhow::Result<BrokerCost> {
    let url = cluster.url(0);
    let connection = berth::broker::connect(&url, "berth-bench broker-cost").await?;
    settle(options.settle).await;
    let baseline = cluster.all_stats()?;
    let mut steps = Vec::new();

    // Classic durable queues: kept for the recovery probes.
    let mut before = baseline.clone();
    let mut declared = 0;
    for &count in &options.counts {
        eprintln!("broker-cost: {count} classic durable queues");
        let names: Vec<String> = (declared..count).map(|k| format!("cd.{k}")).collect();
        let started = Instant::now();
        declare_all(&connection, &names, durable(), FieldTable::default()).await?;
        let step = step(
            cluster,
            "classic_durable_queue",
            count,
            count - declared,
            started.elapsed(),
            &before,
            options.settle,
        )
        .await?;
        before = step.nodes.clone();
        declared = count;
        steps.push(step);
    }
    let classic_kept: Vec<String> = (0..declared).map(|k| format!("cd.{k}")).collect();

    // Non-durable classic queues, each consumed exclusively (today's lock, the likely
    // lock of the cluster work), on a few shared channels so that channels are not counted.
    let held = open_connections(&url, 1).await?;
    let channels = open_channels(&held, PARALLEL).await?;
    let mut consumers = Vec::new();
    declared = 0;
    for &count in &options.counts {
        eprintln!("broker-cost: {count} non-durable classic queues with an exclusive consumer");
        let started = Instant::now();
        let names: Vec<String> = (declared..count).map(|k| format!("lock.{k}")).collect();
        consumers.extend(consume_all(&channels, &names, true, true).await?);
        let step = step(
            cluster,
            "classic_transient_queue_exclusive_consumer",
            count,
            count - declared,
            started.elapsed(),
            &before,
            options.settle,
        )
        .await?;
        before = step.nodes.clone();
        declared = count;
        steps.push(step);
    }
    close_all(held).await;
    drop(consumers);
    // Their consumers are gone with the connection; the queues themselves stay until deleted.
    let names: Vec<String> = (0..declared).map(|k| format!("lock.{k}")).collect();
    delete_all(&connection, &names).await;
    settle(options.settle).await;
    before = cluster.all_stats()?;

    // Consumers alone: many consumers of one queue, on a few shared channels.
    let held = open_connections(&url, 1).await?;
    let channels = open_channels(&held, PARALLEL).await?;
    channels[0]
        .queue_declare(
            "consumed".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumers = Vec::new();
    declared = 0;
    for &count in &options.counts {
        eprintln!("broker-cost: {count} consumers");
        let started = Instant::now();
        let names = vec!["consumed".to_owned(); count - declared];
        consumers.extend(consume_all(&channels, &names, false, false).await?);
        let step = step(
            cluster,
            "consumer",
            count,
            count - declared,
            started.elapsed(),
            &before,
            options.settle,
        )
        .await?;
        before = step.nodes.clone();
        declared = count;
        steps.push(step);
    }
    let _ = channels[0]
        .queue_delete("consumed".into(), QueueDeleteOptions::default())
        .await;
    close_all(held).await;
    drop(consumers);
    settle(options.settle).await;
    before = cluster.all_stats()?;

    // Bindings: slots as routing keys of a direct exchange, all to one queue (a control
    // queue per worker process instead of one per slot).
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            "slots".into(),
            lapin::ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare("bound".into(), durable(), FieldTable::default())
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    declared = 0;
    for &count in &options.counts {
        eprintln!("broker-cost: {count} bindings");
        let keys: Vec<String> = (declared..count).map(|k| format!("slot-{k}")).collect();
        let started = Instant::now();
        bind_all(&connection, &keys).await?;
        let step = step(
            cluster,
            "binding_slot_routing_key",
            count,
            count - declared,
            started.elapsed(),
            &before,
            options.settle,
        )
        .await?;
        before = step.nodes.clone();
        declared = count;
        steps.push(step);
    }
    let channel = connection.create_channel().await?;
    let _ = channel
        .queue_delete("bound".into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete("slots".into(), Default::default())
        .await;
    let _ = channel.close(200, "deleted".into()).await;
    settle(options.settle).await;
    before = cluster.all_stats()?;

    // Channels, as berth opens them: one per slot worker, 100 to a connection (the
    // connections are counted in; see `connections` in the node figures).
    let mut held = Vec::new();
    let mut open = Vec::new();
    declared = 0;
    for &count in &options.counts {
        eprintln!("broker-cost: {count} channels");
        let started = Instant::now();
        let mut left = count - declared;
        let fresh = open_connections(&url, left.div_ceil(CHANNELS_PER_CONNECTION)).await?;
        for connection in &fresh {
            let here = left.min(CHANNELS_PER_CONNECTION);
            open.extend(open_channels(std::slice::from_ref(connection), here).await?);
            left -= here;
        }
        held.extend(fresh);
        let step = step(
            cluster,
            "channel_100_per_connection",
            count,
            count - declared,
            started.elapsed(),
            &before,
            options.settle,
        )
        .await?;
        before = step.nodes.clone();
        declared = count;
        steps.push(step);
    }
    drop(open);
    close_all(held).await;
    settle(options.settle).await;
    before = cluster.all_stats()?;

    // Quorum queues, replicated on every node, leaders on node 1 (declared there).
    let mut quorum_kept = Vec::new();
    if cluster.len() > 1 {
        declared = 0;
        for &count in &options.quorum_counts {
            eprintln!("broker-cost: {count} quorum queues");
            let names: Vec<String> = (declared..count).map(|k| format!("qq.{k}")).collect();
            let started = Instant::now();
            declare_all(&connection, &names, durable(), quorum()).await?;
            let step = step(
                cluster,
                "quorum_queue",
                count,
                count - declared,
                started.elapsed(),
                &before,
                options.settle,
            )
            .await?;
            before = step.nodes.clone();
            declared = count;
            steps.push(step);
        }
        quorum_kept = (0..declared).map(|k| format!("qq.{k}")).collect();
    }
    let _ = connection.close(200, "measured".into()).await;

    let mut recovery = Vec::new();
    if options.recovery {
        // A failed probe is reported, and the figures measured so far are kept.
        match node_loss(cluster, &classic_kept, &quorum_kept).await {
            Ok(r) => recovery.push(r),
            Err(err) => eprintln!("broker-cost: node loss not measured: {err:#}"),
        }
        match full_restart(cluster, &classic_kept, &quorum_kept).await {
            Ok(r) => recovery.push(r),
            Err(err) => eprintln!("broker-cost: full restart not measured: {err:#}"),
        }
    }
    Ok(BrokerCost {
        nodes: cluster.len(),
        node_names: (0..cluster.len())
            .map(|i| cluster.name(i).to_owned())
            .collect(),
        baseline,
        steps,
        recovery,
    })
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_exchange() -> lapin::options::ExchangeDeclareOptions {
    lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Binds `keys` from the exchange `slots` to the queue `bound`, on [`PARALLEL`] channels.
async fn bind_all(connection: &Connection, keys: &[String]) -> anyhow::Result<()> {
    let work = (0..PARALLEL).map(|k| async move {
        let channel = connection.create_channel().await?;
        for key in keys.iter().skip(k).step_by(PARALLEL) {
            channel
                .queue_bind(
                    "bound".into(),
                    "slots".into(),
                    key.as_str().into(),
                    lapin::options::QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("bind {key}"))?;
        }
        let _ = channel.close(200, "bound".into()).await;
        Ok::<_, anyhow::Error>(())
    });
    for done in futures::future::join_all(work).await {
        done?;
    }
    Ok(())
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// A moment for the broker to finish what the last step started (stats emission, GC).
async fn settle(pause: Duration) {
    tokio::time::sleep(pause).await;
}

async fn step(
    cluster: &Cluster,
    kind: &'static str,
    count: usize,
    added: usize,
    took: Duration,
    before: &[NodeStats],
    pause: Duration,
) -> anyhow::Result<Step> {
    settle(pause).await;
    let nodes = cluster.all_stats()?;
    let per = |f: fn(&NodeStats) -> f64| -> Vec<f64> {
        nodes
            .iter()
            .zip(before)
            .map(|(now, then)| (f(now) - f(then)) * 1024.0 / added.max(1) as f64)
            .collect()
    };
    let step = Step {
        kind,
        count,
        declare_ms: took.as_secs_f64() * 1000.0,
        declare_per_sec: added as f64 / took.as_secs_f64().max(f64::EPSILON),
        erlang_kib_per_object: per(|s| s.erlang_mib),
        rss_kib_per_object: per(|s| s.rss_mib),
        nodes,
    };
    eprintln!(
        "broker-cost:   {kind} x{count}: {:.0} ms, Erlang KiB/object per node {:?}",
        step.declare_ms,
        step.erlang_kib_per_object
            .iter()
            .map(|k| (k * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    Ok(step)
}

async fn open_connections(url: &str, count: usize) -> anyhow::Result<Vec<Connection>> {
    let mut connections = Vec::new();
    for _ in 0..count {
        connections.push(berth::broker::connect(url, "berth-bench broker-cost").await?);
    }
    Ok(connections)
}

async fn open_channels(connections: &[Connection], per: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for connection in connections {
        for _ in 0..per {
            channels.push(connection.create_channel().await?);
        }
    }
    Ok(channels)
}

async fn close_all(connections: Vec<Connection>) {
    for connection in connections {
        let _ = connection.close(200, "measured".into()).await;
    }
}

/// Declares `names` on [`PARALLEL`] channels of `connection`.
async fn declare_all(
    connection: &Connection,
    names: &[String],
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> anyhow::Result<()> {
    let work = (0..PARALLEL).map(|k| {
        let arguments = arguments.clone();
        async move {
            let channel = connection.create_channel().await?;
            for name in names.iter().skip(k).step_by(PARALLEL) {
                channel
                    .queue_declare(name.as_str().into(), options, arguments.clone())
                    .await
                    .with_context(|| format!("declare {name}"))?;
            }
            let _ = channel.close(200, "declared".into()).await;
            Ok::<_, anyhow::Error>(())
        }
    });
    for done in futures::future::join_all(work).await {
        done?;
    }
    Ok(())
}

/// Deletes `names` (best effort) on [`PARALLEL`] channels of `connection`.
async fn delete_all(connection: &Connection, names: &[String]) {
    let work = (0..PARALLEL).map(|k| async move {
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        for name in names.iter().skip(k).step_by(PARALLEL) {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel.close(200, "deleted".into()).await;
    });
    futures::future::join_all(work).await;
}

/// Consumes each of `names` once, spread over `channels`; declares them first (non-durable)
/// when `declare`.
async fn consume_all(
    channels: &[Channel],
    names: &[String],
    declare: bool,
    exclusive: bool,
) -> anyhow::Result<Vec<lapin::Consumer>> {
    let work = channels.iter().enumerate().map(|(k, channel)| async move {
        let mut consumers = Vec::new();
        for name in names.iter().skip(k).step_by(channels.len()) {
            if declare {
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            consumers.push(
                channel
                    .basic_consume(
                        name.as_str().into(),
                        "".into(),
                        BasicConsumeOptions {
                            exclusive,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?,
            );
        }
        Ok::<_, lapin::Error>(consumers)
    });
    let mut consumers = Vec::new();
    for part in futures::future::join_all(work).await {
        consumers.extend(part?);
    }
    Ok(consumers)
}
