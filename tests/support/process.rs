//! Processes a test starts: the `berth` and `berth-worker` binaries, reaped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::namespace::{POOL, amqp_url};

/// Runs `command` to its end, its output piped, off the test's runtime (which may serve the
/// fake Launchpad that the command's workers call meanwhile).
pub async fn output_of(command: &mut Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// A command's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub use berth_testkit::free_port;

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// The `berth-worker` binary, built next to `berth` by `cargo build --workspace --bins`.
pub fn worker_bin() -> PathBuf {
    let path = berth_bin().with_file_name("berth-worker");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the worker is another package)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `signal` and waits (up to 15 s) for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {} did not exit after {signal}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    /// SIGTERM first, so that a supervisor stops its children; SIGKILL if it lingers.
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `berth-worker --fake` process working `slots` of pool `ppa` in `namespace`, with an
/// in-memory store (claims and cleanings take `claim_ms` / 0 ms), leases taken back at once
/// when they expire.
pub fn fake_workers(namespace: &str, slots: &[String], claim_ms: u64) -> Proc {
    let mut command = Command::new(worker_bin());
    command
        .args(["--fake", "--pool", POOL, "--lease-grace-secs", "0"])
        .arg("--fake-claim-ms")
        .arg(claim_ms.to_string())
        .env("BERTH_NAMESPACE", namespace)
        .env("BERTH_AMQP_URL", amqp_url())
        .env_remove("BERTH_CONFIG")
        .env(
            "RUST_LOG",
            std::env::var("BERTH_TEST_WORKER_LOG").unwrap_or_else(|_| "warn,lapin=error".into()),
        )
        .stdin(Stdio::null());
    for slot in slots {
        command.arg("--slot").arg(slot);
    }
    Proc(command.spawn().expect("start berth-worker"))
}
