//! The bench's own RabbitMQ: one node or a cluster of nodes on loopback, each a foreground
//! `rabbitmq-server` with its own node name, ports and data directory under one temp
//! directory, which is also the `HOME` holding the cluster's shared Erlang cookie (for the
//! nodes and for `rabbitmqctl`). Never the shared broker. Everything is stopped and removed
//! when the [`Cluster`] is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How long a node may take to accept connections (2 shared cores, several nodes booting).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

struct Node {
    /// `berth-bench-<id>-<i>@localhost`.
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// The Erlang VM's OS process (the server script's child), for its RSS and for SIGKILL.
    beam_pid: Option<u32>,
}

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
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `count` nodes at once, waits for each, then joins nodes 2… to node 1.
    pub(crate) fn start(count: usize) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: install Debian's rabbitmq-server (deploy/ensure-rabbitmq.sh)"
        );
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = std::env::temp_dir().join(format!("berth-bench-rabbit-{id}"));
        std::fs::create_dir_all(&dir)?;
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string())?;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        let mut cluster = Cluster {
            nodes: (1..=count)
                .map(|i| {
                    Ok(Node {
                        name: format!("berth-bench-{id}-{i}@localhost"),
                        port: free_port()?,
                        dist_port: free_port()?,
                        dir: dir.join(format!("node{i}")),
                        child: None,
                        beam_pid: None,
                    })
                })
                .collect::<std::io::Result<_>>()?,
            dir,
        };
        let all: Vec<usize> = (0..count).collect();
        cluster.launch(&all)?;
        for i in 1..count {
            cluster.ctl(i, &["stop_app"])?;
            let first = cluster.nodes[0].name.clone();
            cluster.ctl(i, &["join_cluster", &first])?;
            cluster.ctl(i, &["start_app"])?;
        }
        Ok(cluster)
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub(crate) fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }

    /// Starts the nodes `which` (fresh or on their old data) at once and waits until each
    /// answers on its AMQP port.
    pub(crate) fn launch(&mut self, which: &[usize]) -> anyhow::Result<()> {
        for &i in which {
            let home = self.dir.clone();
            let node = &mut self.nodes[i];
            std::fs::create_dir_all(&node.dir)?;
            let log = std::fs::File::options()
                .create(true)
                .append(true)
                .open(node.dir.join("server.out"))?;
            let child = Command::new(SERVER)
                .env("HOME", &home)
                .env("RABBITMQ_NODENAME", &node.name)
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", node.port.to_string())
                .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
                .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
                .env(
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    node.dir.join("enabled_plugins"),
                )
                .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq"))
                .current_dir(&node.dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start rabbitmq-server")?;
            node.child = Some(child);
            node.beam_pid = None;
        }
        for &i in which {
            self.wait_ready(i).map_err(|e| e.context(self.tail(i)))?;
            // The port may answer before the CLI can reach the node: ask until it does.
            let started = Instant::now();
            let pid = loop {
                match self.eval(i, "os:getpid().") {
                    Ok(pid) => break pid,
                    Err(err) if started.elapsed() > Duration::from_secs(60) => {
                        return Err(err.context(self.tail(i)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            };
            self.nodes[i].beam_pid = pid.trim().trim_matches('"').parse().ok();
        }
        Ok(())
    }

    /// The last lines of node `i`'s output, for an error.
    fn tail(&self, i: usize) -> String {
        let out = std::fs::read_to_string(self.nodes[i].dir.join("server.out")).unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "{} output:\n{}",
            self.nodes[i].name,
            lines[from..].join("\n")
        )
    }

    fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        let node = &mut self.nodes[i];
        while started.elapsed() < BOOT_DEADLINE {
            if std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("node {} exited with {status} while starting", node.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node {} not up within {BOOT_DEADLINE:?}", node.name)
    }

    /// `rabbitmqctl -n NODE ARGS…`, its standard output.
    pub(crate) fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(CTL)
            .env("HOME", &self.dir)
            .args(["-n", &self.nodes[i].name, "-q"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run rabbitmqctl")?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl {} on {} failed: {}",
                args.join(" "),
                self.nodes[i].name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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
            .beam_pid
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
        let node = &mut self.nodes[i];
        if let Some(pid) = node.beam_pid.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to node `i` (a clean shutdown), SIGKILL after a minute.
    pub(crate) fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = node.beam_pid.take() {
            // Gone with the script normally; a leftover VM must not outlive the bench.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
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

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
