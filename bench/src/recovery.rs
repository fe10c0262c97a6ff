//! How long the queues `broker-cost` kept take to answer again after node 1 is killed, and
//! after every node is stopped and started: each is probed with `basic.get`, which needs the
//! queue's process (classic) or leader (quorum) to answer.

use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use serde::Serialize;

use super::rabbit::Cluster;

/// Channels a probe loop runs on at once.
const PARALLEL: usize = 8;

/// How long the kept queues took to answer again.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub event: &'static str,
    pub classic_queues: usize,
    pub quorum_queues: usize,
    /// From the event (the kill, the stop) until every quorum queue answers, on a node
    /// still up or back.
    pub quorum_back_ms: Option<f64>,
    /// From the event until every classic durable queue answers (needs its node back).
    pub classic_back_ms: Option<f64>,
    /// Of which the node or nodes took this to accept connections again.
    pub nodes_up_ms: f64,
}

/// How long to wait for queues to come back before giving up on a probe.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(600);

/// Waits until every queue of `names` answers a `basic.get` through `url` (a failed get
/// closes its channel, which is opened again; a get left unanswered is given up after a
/// few seconds). Answers when that was, or `None` after [`RECOVERY_DEADLINE`].
async fn probe_until_back(url: &str, names: &[String], since: Instant) -> Option<Duration> {
    let mut missing: Vec<String> = names.to_vec();
    while since.elapsed() < RECOVERY_DEADLINE {
        let Ok(connection) = berth::broker::connect(url, "berth-bench probe").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !missing.is_empty() && since.elapsed() < RECOVERY_DEADLINE {
            let connection = &connection;
            let work = (0..PARALLEL).map(|k| {
                let missing = &missing;
                async move {
                    let mut still = Vec::new();
                    let mut channel = connection.create_channel().await.ok();
                    for name in missing.iter().skip(k).step_by(PARALLEL) {
                        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                            channel = connection.create_channel().await.ok();
                        }
                        let answered = match &channel {
                            Some(c) => matches!(
                                tokio::time::timeout(
                                    Duration::from_secs(5),
                                    c.basic_get(
                                        name.as_str().into(),
                                        BasicGetOptions { no_ack: true }
                                    ),
                                )
                                .await,
                                Ok(Ok(_))
                            ),
                            None => false,
                        };
                        if !answered {
                            // A get left hanging keeps its channel busy: use a fresh one.
                            channel = None;
                            still.push(name.clone());
                        }
                    }
                    if let Some(c) = channel {
                        let _ = c.close(200, "probed".into()).await;
                    }
                    still
                }
            });
            let mut still = Vec::new();
            for part in futures::future::join_all(work).await {
                still.extend(part);
            }
            missing = still;
            if !connection.status().connected() {
                break;
            }
            if !missing.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let _ = connection.close(200, "probed".into()).await;
        if missing.is_empty() {
            return Some(since.elapsed());
        }
    }
    None
}

/// Node 1 (home of the classic queues, leader of the quorum queues) is killed; the
/// quorum queues are probed through node 2 until a new leader answers for each; node 1 is
/// started again and the classic queues are probed until they answer.
pub(crate) async fn node_loss(
    cluster: &mut Cluster,
    classic: &[String],
    quorum: &[String],
) -> anyhow::Result<Recovery> {
    eprintln!("broker-cost: node 1 killed");
    let since = Instant::now();
    cluster.kill(0);
    let quorum_back = if cluster.len() > 1 && !quorum.is_empty() {
        let back = probe_until_back(&cluster.url(1), quorum, since).await;
        eprintln!("broker-cost:   quorum queues back after {back:?}");
        back
    } else {
        None
    };
    cluster.launch(&[0])?;
    let nodes_up = since.elapsed();
    let classic_back = probe_until_back(&cluster.url(0), classic, since).await;
    eprintln!(
        "broker-cost:   node 1 up after {nodes_up:?}, classic queues back after {classic_back:?}"
    );
    Ok(Recovery {
        event: "node 1 killed (SIGKILL), then started again",
        classic_queues: classic.len(),
        quorum_queues: quorum.len(),
        quorum_back_ms: quorum_back.map(|d| d.as_secs_f64() * 1000.0),
        classic_back_ms: classic_back.map(|d| d.as_secs_f64() * 1000.0),
        nodes_up_ms: nodes_up.as_secs_f64() * 1000.0,
    })
}

/// Every node stopped (SIGTERM, last one first), then all started at once.
pub(crate) async fn full_restart(
    cluster: &mut Cluster,
    classic: &[String],
    quorum: &[String],
) -> anyhow::Result<Recovery> {
    eprintln!("broker-cost: every node stopped and started again");
    let since = Instant::now();
    cluster.restart_all()?;
    let nodes_up = since.elapsed();
    let quorum_back = if quorum.is_empty() {
        None
    } else {
        probe_until_back(&cluster.url(0), quorum, since).await
    };
    let classic_back = probe_until_back(&cluster.url(0), classic, since).await;
    eprintln!(
        "broker-cost:   nodes up after {nodes_up:?}, quorum back after {quorum_back:?}, classic after {classic_back:?}"
    );
    Ok(Recovery {
        event: "every node stopped (SIGTERM) and started again",
        classic_queues: classic.len(),
        quorum_queues: quorum.len(),
        quorum_back_ms: quorum_back.map(|d| d.as_secs_f64() * 1000.0),
        classic_back_ms: classic_back.map(|d| d.as_secs_f64() * 1000.0),
        nodes_up_ms: nodes_up.as_secs_f64() * 1000.0,
    })
}
