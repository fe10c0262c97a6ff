//! A private three-node RabbitMQ cluster on loopback, for tests of berth on a cluster
//! (DESIGN §3 "Cluster"): three [`PrivateBroker`] nodes with their own node names (a random
//! suffix), free ports and data directories, one Erlang cookie in a `HOME` of the cluster's
//! own, `cluster_partition_handling = pause_minority`, and the second and third nodes joined
//! to the first with `rabbitmqctl join_cluster`. Never the shared broker.

use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::broker::PrivateBroker;
use super::node::{NodeOptions, join, write_cookie};

/// The configuration of every node: a minority pauses itself in a partition, so that a node
/// cut off from the others never goes on serving alone.
const CONF: &str = "cluster_partition_handling = pause_minority\n";

/// A running cluster. Dropping it stops every node.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateBroker>,
    /// Holds the Erlang cookie; removed after the nodes.
    _home: TempDir,
}

impl PrivateCluster {
    /// Starts `size` nodes side by side and joins the others to the first; blocking (call it
    /// from `spawn_blocking` in an async test).
    pub fn start(size: usize) -> PrivateCluster {
        let home = tempfile::Builder::new()
            .prefix("berth-cluster-")
            .tempdir()
            .unwrap();
        write_cookie(home.path()).unwrap_or_else(|e| panic!("{e}"));
        let options = NodeOptions {
            home: Some(home.path().to_owned()),
            conf: CONF.to_owned(),
            ..NodeOptions::default()
        };
        let nodes: Vec<PrivateBroker> = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..size)
                .map(|_| {
                    let options = options.clone();
                    scope.spawn(move || PrivateBroker::start_with(options))
                })
                .collect();
            starting.into_iter().map(|s| s.join().unwrap()).collect()
        });
        join(&nodes[0].node, nodes[1..].iter().map(|b| &b.node)).unwrap_or_else(|e| panic!("{e}"));
        let cluster = PrivateCluster { nodes, _home: home };
        cluster.wait_running(size, Duration::from_secs(60));
        cluster
    }

    /// The AMQP URLs of the nodes, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateBroker::url).collect()
    }

    /// The nodes as one comma-separated `BERTH_AMQP_URL`.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// A node that runs, to ask things of.
    fn any_running(&self) -> &PrivateBroker {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a node runs")
    }

    /// Waits until `count` nodes say they run, as a running node sees it.
    pub fn wait_running(&self, count: usize, limit: Duration) {
        let start = Instant::now();
        loop {
            let status = self
                .any_running()
                .ctl(&["cluster_status", "--formatter", "json"]);
            let running = serde_json::from_str::<serde_json::Value>(&status)
                .ok()
                .and_then(|v| v["running_nodes"].as_array().map(Vec::len))
                .unwrap_or(0);
            if running >= count {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{count} running nodes not seen within {limit:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The index of the node that leads quorum queue `queue`, by `rabbitmqctl list_queues`.
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        let listing = self.any_running().ctl(&[
            "list_queues",
            "name",
            "leader",
            "--formatter",
            "json",
            "--quiet",
        ]);
        let queues: serde_json::Value = serde_json::from_str(&listing).ok()?;
        let leader = queues.as_array()?.iter().find(|q| q["name"] == queue)?["leader"]
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.node() == leader)
    }

    /// The type of queue `queue` (`classic`, `quorum`), by `rabbitmqctl list_queues`.
    pub fn queue_type(&self, queue: &str) -> Option<String> {
        let listing = self.any_running().ctl(&[
            "list_queues",
            "name",
            "type",
            "--formatter",
            "json",
            "--quiet",
        ]);
        let queues: serde_json::Value = serde_json::from_str(&listing).ok()?;
        queues.as_array()?.iter().find(|q| q["name"] == queue)?["type"]
            .as_str()
            .map(str::to_owned)
    }
}
