//! Helpers shared by the integration tests of both trees (`tests/` of `berth`, and
//! `workers/tests/` of `berth-worker`): every test works in a namespace of its own on the
//! shared broker, and waits for conditions with a deadline, never with a bare `sleep`. The
//! private RabbitMQ nodes ([`rabbit`]) serve the bench's broker measurements too.
//! What only one tree needs stays in that tree (`tests/support/`, `workers/tests/common/`).

mod metrics;
pub mod rabbit;

pub use metrics::{Exposition, metric_value, parse_metrics};

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use uuid::Uuid;

use berth::config::{Config, PoolConfig};

/// The pool of every test configuration.
pub const POOL: &str = "ppa";

/// The broker the tests share: `BERTH_AMQP_URL`, or the local one.
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

/// A TCP port free right now on 127.0.0.1, for a process that must listen on a fixed one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
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
