//! A private RabbitMQ node for tests that stop or restart the broker: its own node name,
//! ports and data directory, never the shared broker on 5672.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::free_port;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

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
}

impl PrivateBroker {
    /// Starts a fresh node and waits until it accepts connections.
    pub fn start() -> PrivateBroker {
        PrivateBroker::start_with(None)
    }

    /// Starts a fresh node with, besides its plain port, a TLS listener (`tls_port`) that
    /// presents `cert` / `key` (PEM; `ca` the chain's CA) and asks no client certificate.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> PrivateBroker {
        PrivateBroker::start_with(Some((ca, cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path, &Path)>) -> PrivateBroker {
        let name = format!("berth-{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap();
        let mut broker = PrivateBroker {
            dir,
            name,
            port: free_port(),
            dist_port: free_port(),
            tls_port: None,
            child: None,
        };
        if let Some((ca, cert, key)) = tls {
            let port = free_port();
            // `RABBITMQ_CONFIG_FILE` names `<dir>/rabbitmq`: the node reads `rabbitmq.conf`.
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
            std::fs::write(broker.dir().join("rabbitmq.conf"), conf).unwrap();
            broker.tls_port = Some(port);
        }
        broker.launch();
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

    fn launch(&mut self) {
        assert!(
            std::path::Path::new(SERVER).exists(),
            "{SERVER} is missing: install Debian's rabbitmq-server (deploy/ensure-rabbitmq.sh)"
        );
        let log = std::fs::File::create(self.dir().join("server.out")).unwrap();
        let child = Command::new(SERVER)
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
