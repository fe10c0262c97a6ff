//! A private RabbitMQ node for a test that stops, kills or pauses the broker: a [`Node`] in a
//! temporary directory of its own, stopped and removed when dropped. It may also be one node
//! of a [`super::PrivateCluster`] (then it shares the cluster's `HOME` and configuration).

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use super::node::{Node, NodeOptions};
use crate::free_port;

/// How long a node may take to accept connections (2 shared cores, other tests running).
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a stopping node gets before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A RabbitMQ node run in the foreground as a child process.
pub struct PrivateBroker {
    pub(super) node: Node,
    /// The node's directory; removed when dropped, after the node has stopped.
    _dir: TempDir,
    pub port: u16,
    /// The TLS listener's port, when started with [`PrivateBroker::start_tls`].
    pub tls_port: Option<u16>,
}

impl PrivateBroker {
    /// Starts a fresh node and waits until it accepts connections.
    pub fn start() -> PrivateBroker {
        PrivateBroker::start_with(NodeOptions::default())
    }

    /// Starts a fresh node with, besides its plain port, a TLS listener (`tls_port`) that
    /// presents `cert` / `key` (PEM; `ca` the chain's CA) and asks no client certificate.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> PrivateBroker {
        let port = free_port();
        let conf = format!(
            "listeners.ssl.default = {port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let mut broker = PrivateBroker::create(NodeOptions {
            conf,
            ..NodeOptions::default()
        });
        broker.tls_port = Some(port);
        broker.relaunch();
        broker
    }

    /// Starts a fresh node with `options` and waits until it accepts connections.
    pub fn start_with(options: NodeOptions) -> PrivateBroker {
        let mut broker = PrivateBroker::create(options);
        broker.relaunch();
        broker
    }

    /// A fresh node with `options`, not started yet.
    fn create(options: NodeOptions) -> PrivateBroker {
        let name = format!("berth-{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("a temporary directory for the node");
        let node =
            Node::new(&name, dir.path().to_owned(), options).unwrap_or_else(|e| panic!("{e}"));
        PrivateBroker {
            port: node.port,
            node,
            _dir: dir,
            tls_port: None,
        }
    }

    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The `amqps://` URL of the TLS listener, by the name its certificate holds.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("amqps://guest:guest@localhost:{port}/%2f")
    }

    /// The Erlang node name, `<name>@localhost`.
    pub fn node(&self) -> String {
        self.node.name.clone()
    }

    /// Whether the node runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// Runs `rabbitmqctl -n <node> <args>`; its output, or a panic with what it said.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.node.ctl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to the node's Erlang VM.
    pub fn signal(&self, signal: &str) {
        assert!(
            self.node.signal(signal),
            "kill {signal} of {}'s VM",
            self.node.name
        );
    }

    /// Kills the node at once (SIGKILL of its VM), as a crash would; its data stays for a
    /// later [`PrivateBroker::relaunch`].
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts the node (again, after a stop or a kill: on the same ports and data) and waits
    /// until it accepts connections.
    pub fn relaunch(&mut self) {
        assert!(!self.node.is_running(), "the node still runs");
        self.node.launch().unwrap_or_else(|e| panic!("{e}"));
        let more: Vec<u16> = self.tls_port.into_iter().collect();
        self.node
            .wait_ready(&more, READY_WITHIN)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the node (SIGTERM, then SIGKILL) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.relaunch();
    }

    /// Stops the node; its data stays for a later [`PrivateBroker::relaunch`].
    pub fn stop(&mut self) {
        self.node.stop(STOP_WITHIN);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // The directory goes with the `TempDir` field, after this.
        self.stop();
    }
}
