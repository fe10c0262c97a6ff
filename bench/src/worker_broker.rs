//! `berth-bench broker-cost --worker-slots N`: one `berth-worker --fake` process hosting N
//! slots against the bench's own node or cluster ([`super::rabbit`]): broker memory and
//! object counts per node, the worker's memory per slot, and how long until every slot
//! serves again (holds its lock, the pool queue consumed) after node 1 — where the worker's
//! connections and queues are — is killed, and after every node is stopped and started.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use berth::config::QueueType;

use super::client;
use super::rabbit::{Cluster, NodeStats};
use super::stack::{Broker, Pools, Proc, SCALE, SCALE_BASE, Stack, rss_mib};

/// Slots of the small process the per-slot memory is measured against.
const BASE_SLOTS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Serialize)]
pub struct WorkerOnBroker {
    pub nodes: usize,
    pub slots: usize,
    /// `BERTH_AMQP_URL` the worker was given: node 1 only, or every node (a broker list,
    /// which needs a berth that reads one).
    pub amqp_urls: Vec<String>,
    /// The type of the worker's durable queues: its slots' control queues, the pool queues.
    pub queue_type: QueueType,
    pub before: Vec<NodeStats>,
    pub serving: Vec<NodeStats>,
    /// Per node, Erlang memory the worker's objects added, KiB per slot.
    pub erlang_kib_per_slot: Vec<f64>,
    pub rss_kib_per_slot: Vec<f64>,
    /// From spawning the worker until every slot serves.
    pub all_serving_ms: f64,
    pub worker_rss_mib: f64,
    pub worker_base_rss_mib: f64,
    /// (RSS at `slots` − RSS at 16 slots) / (`slots` − 16).
    pub worker_kib_per_slot: f64,
    /// Node 1 killed: until every slot serves again (through node 2 when the worker has a
    /// broker list; otherwise after node 1 is started again).
    pub node_loss_ms: Option<f64>,
    pub node_loss_restarted_node: bool,
    /// Every node stopped and started again: until every slot serves again.
    pub full_restart_ms: Option<f64>,
    pub after_restart: Vec<NodeStats>,
}

pub async fn run(
    nodes: usize,
    slots: usize,
    broker_list: bool,
    queue_type: QueueType,
    bin_dir: &Path,
) -> anyhow::Result<WorkerOnBroker> {
    eprintln!(
        "broker-cost: worker of {slots} slots on {nodes} fresh node(s), {queue_type:?} queues"
    );
    let mut cluster = Cluster::start(nodes)?;
    let result = measure(&mut cluster, slots, broker_list, queue_type, bin_dir).await;
    drop(cluster);
    result
}

async fn measure(
    cluster: &mut Cluster,
    slots: usize,
    broker_list: bool,
    queue_type: QueueType,
    bin_dir: &Path,
) -> anyhow::Result<WorkerOnBroker> {
    let urls: Vec<String> = if broker_list {
        (0..cluster.len()).map(|i| cluster.url(i)).collect()
    } else {
        vec![cluster.url(0)]
    };
    let namespace = format!("scale-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pools = Pools {
        small: 0,
        large: 0,
        scale_base: BASE_SLOTS,
        scale: slots,
    };
    let url = cluster.url(0);
    let broker = Broker {
        queue_type,
        ..Broker::classic(&url)
    };
    let stack = Stack::start(broker, &namespace, &pools, bin_dir).await?;
    let env = [("BERTH_AMQP_URL", urls.join(","))];
    let result = async {
        let mut base = stack.fake_workers_env(SCALE_BASE, &env)?;
        wait_serving(&stack, &cluster.url(0), SCALE_BASE, Instant::now()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let worker_base_rss_mib = rss_mib(base.pid()).map(|r| r.0).unwrap_or(f64::NAN);
        base.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = cluster.all_stats()?;

        let mut worker: Proc = stack.fake_workers_env(SCALE, &env)?;
        let all_serving = wait_serving(&stack, &cluster.url(0), SCALE, worker.started)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the worker's slots did not all serve"))?;
        eprintln!("broker-cost:   all {slots} slots serving after {all_serving:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let worker_rss_mib = rss_mib(worker.pid()).map(|r| r.0).unwrap_or(f64::NAN);
        let serving = cluster.all_stats()?;
        let per = |f: fn(&NodeStats) -> f64| -> Vec<f64> {
            serving
                .iter()
                .zip(&before)
                .map(|(now, then)| (f(now) - f(then)) * 1024.0 / slots as f64)
                .collect()
        };

        eprintln!("broker-cost:   node 1 killed");
        let since = Instant::now();
        cluster.kill(0);
        let failover = broker_list && cluster.len() > 1;
        let node_loss = if failover {
            wait_serving(&stack, &cluster.url(1), SCALE, since).await?
        } else {
            cluster.launch(&[0])?;
            wait_serving(&stack, &cluster.url(0), SCALE, since).await?
        };
        eprintln!("broker-cost:   serving again after {node_loss:?}");
        if failover {
            cluster.launch(&[0])?;
        }
        worker.check_alive(
            "berth-worker --fake",
            &stack.log(&format!("workers-{SCALE}")),
        )?;

        eprintln!("broker-cost:   every node stopped and started again");
        let since = Instant::now();
        cluster.restart_all()?;
        let full_restart = wait_serving(&stack, &cluster.url(0), SCALE, since).await?;
        eprintln!("broker-cost:   serving again after {full_restart:?}");
        worker.check_alive(
            "berth-worker --fake",
            &stack.log(&format!("workers-{SCALE}")),
        )?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after_restart = cluster.all_stats()?;
        worker.kill();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        Ok::<_, anyhow::Error>(WorkerOnBroker {
            nodes: cluster.len(),
            slots,
            amqp_urls: urls.clone(),
            queue_type,
            erlang_kib_per_slot: per(|s| s.erlang_mib),
            rss_kib_per_slot: per(|s| s.rss_mib),
            before,
            serving,
            all_serving_ms: all_serving.as_secs_f64() * 1000.0,
            worker_rss_mib,
            worker_base_rss_mib,
            worker_kib_per_slot: (worker_rss_mib - worker_base_rss_mib) * 1024.0
                / (slots.saturating_sub(BASE_SLOTS).max(1)) as f64,
            node_loss_ms: ms(node_loss),
            node_loss_restarted_node: !failover,
            full_restart_ms: ms(full_restart),
            after_restart,
        })
    }
    .await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&stack.dir);
    } else {
        eprintln!("broker-cost: logs in {}", stack.dir.display());
    }
    stack.fake.shutdown().await;
    result
}

/// Waits (through `url`, reconnecting as needed) until every slot of `pool` holds its
/// lock and the pool queue is consumed; answers the time since `since`, or `None` after
/// [`DEADLINE`].
async fn wait_serving(
    stack: &Stack,
    url: &str,
    pool: &str,
    since: Instant,
) -> anyhow::Result<Option<Duration>> {
    let names = stack.config.names();
    let slots = stack
        .config
        .pool(pool)
        .map(|p| p.slots.clone())
        .unwrap_or_default();
    while since.elapsed() < DEADLINE {
        let Ok(connection) = berth::broker::connect(url, "berth-bench wait").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let left = DEADLINE.saturating_sub(since.elapsed());
        let waited = client::wait_workers(&connection, &names, pool, &slots, left).await;
        let _ = connection.close(200, "waited".into()).await;
        if waited.is_ok() {
            return Ok(Some(since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}
