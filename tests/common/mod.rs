//! Helpers of the assigner and CLI tests: a namespace per test on the real broker, the
//! assigner in-process on port 0 or as the real binary, `berth-worker` processes (fake or
//! real), HTTP calls, and polling with a deadline.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use berth::assigner::Application;
use berth::config::{Config, PoolConfig};
use berth::protocol::{Control, Names, PROTOCOL_VERSION, encode};
use berth::store::SlotStore;

pub const POOL: &str = "ppa";

pub fn amqp_url() -> String {
    std::env::var("BERTH_AMQP_URL").unwrap_or_else(|_| berth::config::DEFAULT_AMQP_URL.into())
}

/// A configuration in a fresh namespace, listening on port 0, with one pool `ppa` of `slots`.
pub fn config(slots: &[&str]) -> Config {
    Config {
        namespace: format!("t-{}", Uuid::new_v4().simple()),
        amqp_url: amqp_url(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        pools: vec![PoolConfig {
            name: POOL.into(),
            slots: slots.iter().map(|s| s.to_string()).collect(),
        }],
        ..Config::default()
    }
}

/// Slot names `s-1` … `s-n`.
pub fn slot_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("s-{i}")).collect()
}

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

/// The assigner running in-process on port 0.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// Starts the assigner of `config` over `store` and waits until it is ready.
    pub async fn spawn(config: Config, store: Arc<dyn SlotStore>) -> TestApp {
        let app = Application::build(config.clone(), store)
            .await
            .expect("build the assigner");
        let base = format!("http://{}", app.addr());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app.run_until(cancel.clone()));
        let test_app = TestApp {
            base,
            http: reqwest::Client::new(),
            config,
            cancel,
            task,
        };
        wait_ready(&test_app.base, Duration::from_secs(10)).await;
        test_app
    }

    pub fn names(&self) -> Names {
        self.config.names()
    }

    pub async fn acquire(&self, body: Value) -> Answer {
        self.post(&format!("/v1/pools/{POOL}/acquire"), body).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        post(&self.http, &format!("{}{path}", self.base), body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        get(&self.http, &format!("{}{path}", self.base)).await
    }

    /// Stops the assigner and deletes the test's queues.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "the assigner did not stop cleanly: {result:?}"
        );
        delete_queues(&self.config).await;
    }
}

/// An HTTP answer: status, `Retry-After`, JSON body (or `Null`) and raw text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub json: Value,
    pub text: String,
}

pub async fn post(http: &reqwest::Client, url: &str, body: Value) -> Answer {
    answer(http.post(url).json(&body).send().await.expect("HTTP call")).await
}

pub async fn get(http: &reqwest::Client, url: &str) -> Answer {
    answer(http.get(url).send().await.expect("HTTP call")).await
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        json,
        text,
    }
}

/// Waits until `base/readyz` answers 200.
pub async fn wait_ready(base: &str, within: Duration) {
    let http = reqwest::Client::new();
    let url = format!("{base}/readyz");
    wait_for(&format!("{url} to answer 200"), within, || {
        let http = http.clone();
        let url = url.clone();
        async move {
            match http.get(&url).timeout(Duration::from_secs(1)).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
}

/// Acquires a slot of `ppa` at `base`, waiting up to `wait_secs`; panics unless `200`.
pub async fn acquire_ok(http: &reqwest::Client, base: &str, owner: &str, wait_secs: u64) -> Value {
    let a = post(
        http,
        &format!("{base}/v1/pools/{POOL}/acquire"),
        json!({"owner": owner, "wait_secs": wait_secs}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "acquire for {owner}: {}", a.text);
    a.json
}

/// The value of an unlabelled metric in `/metrics`.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = get(http, &format!("{base}/metrics")).await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Publishes a `Release` straight to a slot's control queue, as a worker would receive it
/// (for fake workers, whose store the assigner cannot read).
pub async fn release_direct(names: &Names, slot: &str, token: &str) {
    let conn = berth::broker::connect(&amqp_url(), "berth-test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    berth::broker::declare_slot_queue(&channel, names, slot)
        .await
        .unwrap();
    let body = encode(&Control::Release {
        v: PROTOCOL_VERSION,
        lease_token: token.into(),
    });
    let confirm = channel
        .basic_publish(
            "".into(),
            names.slot_queue(slot).into(),
            BasicPublishOptions::default(),
            &body,
            berth::broker::json_properties().with_delivery_mode(berth::broker::PERSISTENT),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = conn.close(200, "done".into()).await;
}

/// Deletes the queues and exchange of `config`'s namespace (best effort).
pub async fn delete_queues(config: &Config) {
    let Ok(conn) = berth::broker::connect(&config.amqp_url, "berth-test-cleanup").await else {
        return;
    };
    let names = config.names();
    let mut queues = vec![names.dead_queue()];
    for pool in &config.pools {
        queues.push(names.assign_queue(&pool.name));
        queues.extend(pool.slots.iter().map(|s| names.slot_queue(s)));
    }
    for queue in queues {
        // A failed delete closes the channel: use one per queue.
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
    }
    if let Ok(channel) = conn.create_channel().await {
        let _ = channel
            .exchange_delete(names.events_exchange().into(), Default::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Polls `check` every 50 ms until it answers `Ok`, or fails after `within` with the last
/// error it answered.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("berth-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
