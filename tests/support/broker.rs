//! A private RabbitMQ node for tests that stop or restart the broker: its own node name,
//! ports and data directory, never the shared broker on 5672. A node may also be one of a
//! private cluster ([`super::cluster::PrivateCluster`]): then it shares the cluster's Erlang
//! cookie (a `HOME` of the cluster's own) and configuration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::free_port;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How a node of a cluster differs from a lone one.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `HOME` of the node and of `rabbitmqctl`: where the shared `.erlang.cookie` is.
    pub home: Option<PathBuf>,
    /// The text of its `rabbitmq.conf`.
    pub conf: String,
    /// More arguments for the Erlang VM (`RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS`).
    pub erl_args: String,
}

/// A RabbitMQ node run in the foreground as a child process.
pub struct PrivateBroker {
    /// Its data, logs and config; removed when dropped, after the node has stopped.
    dir: TempDir,
    name: String,
    pub port: u16,
    dist_port: u16,
    /// The TLS listener's port, when started with [`PrivateBroker::start_tls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
    options: NodeOptions,
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
        broker.launch();
        broker
    }

    /// Starts a fresh node with `options` and waits until it accepts connections.
    pub fn start_with(options: NodeOptions) -> PrivateBroker {
        let mut broker = PrivateBroker::create(options);
        broker.launch();
        broker
    }

    /// A fresh node with `options`, its data directory and `rabbitmq.conf` written, not
    /// started yet.
    fn create(options: NodeOptions) -> PrivateBroker {
        let name = format!("berth-{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap();
        let broker = PrivateBroker {
            dir,
            name,
            port: free_port(),
            dist_port: free_port(),
            tls_port: None,
            child: None,
            options,
        };
        // `RABBITMQ_CONFIG_FILE` names `<dir>/rabbitmq`: the node reads `rabbitmq.conf`.
        std::fs::write(broker.dir().join("rabbitmq.conf"), &broker.options.conf).unwrap();
        broker
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The `amqps://` URL of the TLS listener, by the name its certificate holds.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("amqps://guest:guest@localhost:{port}/%2f")
    }

    /// The Erlang node name, `<name>@localhost`.
    pub fn node(&self) -> String {
        format!("{}@localhost", self.name)
    }

    /// Whether the node runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs `rabbitmqctl -n <node> <args>`; its output, or a panic with it if it failed.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut command = Command::new(CTL);
        command.arg("-n").arg(self.node()).args(args);
        if let Some(home) = &self.options.home {
            command.env("HOME", home);
        }
        let out = command.output().expect("run rabbitmqctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {} failed: {text}",
            self.node()
        );
        text
    }

    /// The Erlang VM of the node (the child is the `rabbitmq-server` script that runs it).
    fn vm_pid(&self) -> Option<u32> {
        let child = self.child.as_ref()?.id();
        let children =
            std::fs::read_to_string(format!("/proc/{child}/task/{child}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "beam.smp")
            })
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to the node's Erlang VM.
    pub fn signal(&self, signal: &str) {
        let pid = self.vm_pid().expect("the node's Erlang VM runs");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills the node at once (SIGKILL of its VM), as a crash would; its data stays for a
    /// later [`PrivateBroker::restart`].
    pub fn kill(&mut self) {
        if self.vm_pid().is_some() {
            self.signal("-KILL");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a node that was stopped or killed again, on the same ports and data.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "the node still runs");
        self.launch();
    }

    fn launch(&mut self) {
        assert!(
            std::path::Path::new(SERVER).exists(),
            "{SERVER} is missing: install Debian's rabbitmq-server (deploy/ensure-rabbitmq.sh)"
        );
        let log = std::fs::File::create(self.dir().join("server.out")).unwrap();
        let mut command = Command::new(SERVER);
        if let Some(home) = &self.options.home {
            command.env("HOME", home);
        }
        let child = command
            .env("RABBITMQ_NODENAME", format!("{}@localhost", self.name))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir().join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir().join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", self.dir().join("rabbitmq"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                &self.options.erl_args,
            )
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a private rabbitmq-server");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.port) && self.tls_port.is_none_or(up) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let out =
                    std::fs::read_to_string(self.dir().join("server.out")).unwrap_or_default();
                panic!("private broker exited with {status} before it was ready:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "private broker on port {} not ready within {limit:?}",
            self.port
        );
    }

    /// Stops the node (SIGTERM, then SIGKILL) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Stops the node; its data stays for a later [`PrivateBroker::restart`].
    pub fn stop(&mut self) {
        // A paused node does not stop on SIGTERM.
        if let Some(pid) = self.vm_pid() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // The directory goes with the `TempDir` field, after this.
        self.stop();
    }
}
