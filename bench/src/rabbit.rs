//! The bench's own RabbitMQ: one node or a cluster of nodes on loopback, each a foreground
//! `rabbitmq-server` with its own node name, ports and data directory under one temp
//! directory, which is also the `HOME` holding the cluster's shared Erlang cookie (for the
//! nodes and for `rabbitmqctl`). Never the shared broker. Everything is stopped and removed
//! when the [`Cluster`] is dropped.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Serialize;

use berth_testkit::rabbit::{Node, NodeOptions, join, write_cookie};

/// How long a node may take to accept connections (2 shared cores, several nodes booting).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// How long a stopping node gets before SIGKILL (thousands of queues to close).
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// One node's figures at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NodeStats {
    /// `erlang:memory(total)`, MiB.
    pub erlang_mib: f64,
    /// The VM's resident memory (`/proc`), MiB.
    pub rss_mib: f64,
    pub processes: u64,
    /// Queues whose process (classic) or leader (quorum) is on this node.
    pub local_queues: u64,
    pub channels: u64,
    pub connections: u64,
    /// Consumers of the whole virtual host (the same on every node).
    pub consumers: u64,
}

/// RabbitMQ nodes on loopback, joined into one cluster when there are several.
pub(crate) struct Cluster {
    /// The nodes' directories and the `HOME` holding their Erlang cookie.
    dir: std::path::PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `count` nodes at once, waits for each, then joins nodes 2… to node 1.
    pub(crate) fn start(count: usize) -> anyhow::Result<Cluster> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = std::env::temp_dir().join(format!("berth-bench-rabbit-{id}"));
        std::fs::create_dir_all(&dir)?;
        write_cookie(&dir).map_err(|e| anyhow!(e))?;
        let options = NodeOptions {
            home: Some(dir.clone()),
            ..NodeOptions::default()
        };
        let nodes = (1..=count)
            .map(|i| {
                let name = format!("berth-bench-{id}-{i}");
                Node::new(&name, dir.join(format!("node{i}")), options.clone())
            })
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!(e))?;
        let mut cluster = Cluster { dir, nodes };
        let all: Vec<usize> = (0..count).collect();
        cluster.launch(&all)?;
        join(&cluster.nodes[0], &cluster.nodes[1..]).map_err(|e| anyhow!(e))?;
        Ok(cluster)
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub(crate) fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Starts the nodes `which` (fresh or on their old data) at once and waits until each
    /// answers on its AMQP port and to `rabbitmqctl`.
    pub(crate) fn launch(&mut self, which: &[usize]) -> anyhow::Result<()> {
        for &i in which {
            self.nodes[i].launch().map_err(|e| anyhow!(e))?;
        }
        for &i in which {
            let node = &mut self.nodes[i];
            node.wait_ready(&[], BOOT_DEADLINE)
                .map_err(|e| anyhow!(e))?;
            // The port may answer before the CLI can reach the node: ask until it does.
            let started = Instant::now();
            while let Err(err) = node.ctl(&["-q", "ping"]) {
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("{err}; {}", node.tail(30));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    /// `rabbitmqctl -n NODE -q ARGS…`, its standard output.
    pub(crate) fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-q"];
        all.extend_from_slice(args);
        self.nodes[i].ctl(&all).map_err(|e| anyhow!(e))
    }

    /// `rabbitmqctl eval EXPR` on node `i`.
    pub(crate) fn eval(&self, i: usize, expr: &str) -> anyhow::Result<String> {
        self.ctl(i, &["eval", expr])
    }

    /// Node `i`'s memory and object counts, after a garbage collection of every process
    /// so that the figure is what the objects hold, not what was left over.
    pub(crate) fn stats(&self, i: usize) -> anyhow::Result<NodeStats> {
        const EXPR: &str = "[erlang:garbage_collect(P) || P <- erlang:processes()], \
            lists:flatten(io_lib:format(\"~p ~p ~p ~p ~p ~p\", [erlang:memory(total), \
            erlang:system_info(process_count), \
            length(rabbit_amqqueue:list_local(<<\"/\">>)), \
            length(rabbit_channel:list_local()), \
            length(rabbit_networking:local_connections()), \
            length(rabbit_amqqueue:consumers_all(<<\"/\">>))])).";
        let out = self.eval(i, EXPR)?;
        let numbers: Vec<u64> = out
            .trim()
            .trim_matches('"')
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let [
            memory,
            processes,
            local_queues,
            channels,
            connections,
            consumers,
        ] = numbers[..]
        else {
            bail!("unexpected stats from {}: {out}", self.nodes[i].name);
        };
        let rss_mib = self.nodes[i]
            .vm_pid()
            .and_then(super::stack::rss_mib)
            .map(|r| r.0)
            .unwrap_or(f64::NAN);
        Ok(NodeStats {
            erlang_mib: memory as f64 / (1024.0 * 1024.0),
            rss_mib,
            processes,
            local_queues,
            channels,
            connections,
            consumers,
        })
    }

    /// Every node's stats.
    pub(crate) fn all_stats(&self) -> anyhow::Result<Vec<NodeStats>> {
        (0..self.len()).map(|i| self.stats(i)).collect()
    }

    /// SIGKILL of node `i`'s VM: the node is lost as in a crash.
    pub(crate) fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Every node stopped (SIGTERM, last one first), then all started again at once.
    pub(crate) fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in (0..self.len()).rev() {
            self.stop(i);
        }
        let all: Vec<usize> = (0..self.len()).collect();
        self.launch(&all)
    }

    /// SIGTERM to node `i` (a clean shutdown), SIGKILL after a minute.
    pub(crate) fn stop(&mut self, i: usize) {
        self.nodes[i].stop(STOP_WITHIN);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            self.stop(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
