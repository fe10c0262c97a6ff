//! One private node ([`Node`]): its process, its `rabbitmqctl`, and the cookie and join of a
//! cluster's nodes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How a node differs from a lone default one.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `HOME` of the node and of `rabbitmqctl`: where the shared `.erlang.cookie` is.
    pub home: Option<PathBuf>,
    /// The text of its `rabbitmq.conf`.
    pub conf: String,
    /// More arguments for the Erlang VM (`RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS`).
    pub erl_args: String,
}

/// One node: created with its ports and directory, then launched, stopped, killed and
/// launched again on the same data as a test needs. Dropping it does not stop it: the owner
/// does, before it removes the directory.
pub struct Node {
    /// The Erlang node name, `<name>@localhost`.
    pub name: String,
    pub port: u16,
    dist_port: u16,
    /// Its data, logs (`log/`), `rabbitmq.conf` and the server's output (`server.out`).
    pub dir: PathBuf,
    options: NodeOptions,
    child: Option<Child>,
}

impl Node {
    /// A node named `<name>@localhost` in `dir` (created), on free ports, its
    /// `rabbitmq.conf` written; not started yet.
    pub fn new(name: &str, dir: PathBuf, options: NodeOptions) -> Result<Node, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // `RABBITMQ_CONFIG_FILE` names `<dir>/rabbitmq`: the node reads `rabbitmq.conf`.
        std::fs::write(dir.join("rabbitmq.conf"), &options.conf)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Node {
            name: format!("{name}@localhost"),
            port: free_port(),
            dist_port: free_port(),
            dir,
            options,
            child: None,
        })
    }

    /// The AMQP URL of the node's plain listener, as guest.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Whether the node was launched and not stopped or killed since (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the node, on its data if it ran before; [`Node::wait_ready`] waits for it.
    pub fn launch(&mut self) -> Result<(), String> {
        if !Path::new(SERVER).exists() {
            return Err(format!(
                "{SERVER} is missing: install Debian's rabbitmq-server (deploy/ensure-rabbitmq.sh)"
            ));
        }
        if self.child.is_some() {
            return Err(format!("{} runs already", self.name));
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let log_too = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(SERVER);
        if let Some(home) = &self.options.home {
            command.env("HOME", home);
        }
        let child = command
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                &self.options.erl_args,
            )
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log_too)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {SERVER}: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the node accepts TCP connections on its AMQP port and on `more_ports`
    /// (a TLS listener); fails with the end of its output if it exits first or is not up
    /// within `limit`. (`rabbitmqctl` may reach it a moment later.)
    pub fn wait_ready(&mut self, more_ports: &[u16], limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        loop {
            if up(self.port) && more_ports.iter().all(|&p| up(p)) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                return Err(format!(
                    "node {} exited with {status} while starting; {}",
                    self.name,
                    self.tail(30)
                ));
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "node {} not up within {limit:?}; {}",
                    self.name,
                    self.tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of the node's output, for an error.
    pub fn tail(&self, lines: usize) -> String {
        let out = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        let all: Vec<&str> = out.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!("{} output:\n{}", self.name, all[from..].join("\n"))
    }

    /// `rabbitmqctl -n <node> <args>`: its standard output, or what it said when it failed.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(CTL);
        if let Some(home) = &self.options.home {
            command.env("HOME", home);
        }
        let out = command
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {CTL}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "rabbitmqctl {} on {} failed: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node's Erlang VM (the child is the `rabbitmq-server` script that runs it).
    pub fn vm_pid(&self) -> Option<u32> {
        let child = self.child.as_ref()?.id();
        let children =
            std::fs::read_to_string(format!("/proc/{child}/task/{child}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .find(|&pid| is_beam(pid))
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to the node's Erlang VM; whether it ran.
    pub fn signal(&self, signal: &str) -> bool {
        let Some(pid) = self.vm_pid() else {
            return false;
        };
        Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills the node at once (SIGKILL of its VM), as a crash would; its data stays for a
    /// later [`Node::launch`].
    pub fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node (SIGTERM, then SIGKILL after `grace`); its data stays for a later
    /// [`Node::launch`].
    pub fn stop(&mut self, grace: Duration) {
        // A paused node does not stop on SIGTERM.
        self.signal("-CONT");
        let vm = self.vm_pid();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let started = Instant::now();
            while started.elapsed() < grace {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = vm.filter(|&pid| is_beam(pid)) {
            // Gone with the script normally; a leftover VM must not outlive its owner.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether process `pid` is an Erlang VM (and not another process that took a freed pid).
fn is_beam(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "beam.smp")
}

/// Writes a fresh Erlang cookie into `home` (mode 0400), for the nodes of one cluster and
/// `rabbitmqctl` ([`NodeOptions::home`]).
pub fn write_cookie(home: &Path) -> Result<(), String> {
    let cookie = home.join(".erlang.cookie");
    std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string())
        .and_then(|()| std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)))
        .map_err(|e| format!("{}: {e}", cookie.display()))
}

/// Joins every node after the first to the first (`stop_app`, `join_cluster`, `start_app`).
pub fn join<'a>(first: &Node, others: impl IntoIterator<Item = &'a Node>) -> Result<(), String> {
    for node in others {
        node.ctl(&["stop_app"])?;
        node.ctl(&["join_cluster", &first.name])?;
        node.ctl(&["start_app"])?;
    }
    Ok(())
}
