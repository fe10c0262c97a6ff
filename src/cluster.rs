//! Connecting to a list of brokers, the nodes of one RabbitMQ cluster (DESIGN §3 "Cluster"):
//! the one place every process (assigner, worker process, `berth events`, bench) connects
//! through. It tries the nodes in order and keeps the first that answers; after losing it,
//! the next connect starts at the node after it, so a process moves on from a node that died
//! instead of waiting for it.
//!
//! It knows nothing of URLs' schemes beyond what [`crate::broker::connect_with`] does with them,
//! and logs a node only as [`node_url`] writes it: without its password.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::broker::{self, BrokerTls, ConnectError, RECONNECT_MAX};
use crate::redact::node_url;

/// The longest one node may take to open a connection before the next one is tried: a node
/// that is paused (or a host that swallows packets) accepts the TCP connection and then says
/// nothing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The brokers of a deployment, in the order they are tried.
#[derive(Debug)]
pub struct Brokers {
    urls: Vec<String>,
    /// How `amqps://` nodes' certificates are checked (plain `amqp://` ones ignore it).
    tls: BrokerTls,
    /// Where the next connect starts: the first node at first, then the one after the node
    /// last connected to.
    next: AtomicUsize,
}

/// A connection and the node it goes to (redacted).
pub struct Connected {
    pub connection: Connection,
    pub node: String,
}

impl Brokers {
    /// The brokers `urls`, tried in this order, `amqps://` ones checked as `tls` says; a list
    /// without any is one of the default broker.
    pub fn new(urls: Vec<String>, tls: BrokerTls) -> Self {
        let urls = if urls.is_empty() {
            vec![crate::config::DEFAULT_AMQP_URL.to_owned()]
        } else {
            urls
        };
        Brokers {
            urls,
            tls,
            next: AtomicUsize::new(0),
        }
    }

    /// The brokers of a comma-separated list (`BERTH_AMQP_URL`).
    pub fn from_list(list: &str, tls: BrokerTls) -> Self {
        Brokers::new(crate::config::split_urls(list), tls)
    }

    /// The nodes, redacted.
    pub fn nodes(&self) -> Vec<String> {
        self.urls.iter().map(|url| node_url(url)).collect()
    }

    /// One pass over the nodes, from where the last connect left off: the first that opens a
    /// connection (named `name`) within [`CONNECT_TIMEOUT`]. The error is the last node's.
    pub async fn connect(&self, name: &str) -> Result<Connected, ConnectError> {
        let count = self.urls.len();
        let start = self.next.load(Ordering::Relaxed) % count;
        let mut last = None;
        for step in 0..count {
            let index = (start + step) % count;
            let url = &self.urls[index];
            let node = node_url(url);
            let connecting = broker::connect_with(url, &self.tls, name);
            let error = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(connection)) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    tracing::info!(node = %node, "connected to the broker");
                    return Ok(Connected { connection, node });
                }
                Ok(Err(err)) => err,
                Err(_) => ConnectError::TimedOut {
                    limit: CONNECT_TIMEOUT,
                    hint: "",
                },
            };
            if count > 1 {
                tracing::warn!(node = %node, error = %error, "cannot connect to this broker node; trying the next");
            }
            last = Some(error);
        }
        Err(last.expect("a list of brokers has at least one"))
    }

    /// Connects, passing over the list again with backoff until a node answers or `cancel`
    /// fires (then `None`).
    pub async fn connect_with_backoff(
        &self,
        name: &str,
        cancel: &CancellationToken,
    ) -> Option<Connected> {
        let mut backoff = Backoff::new(Duration::from_millis(100), RECONNECT_MAX);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                connected = self.connect(name) => match connected {
                    Ok(connected) => return Some(connected),
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64,
                            "cannot connect to the broker; retrying");
                        if !crate::backoff::pause(cancel, delay).await {
                            return None;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first node that answers is kept, and after it the next connect starts at the
    /// node after it. Nodes here are closed ports on loopback (refused at once) and the
    /// shared broker.
    #[tokio::test]
    async fn the_first_node_that_answers_is_used_and_a_loss_moves_on() {
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            drop(listener);
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
        };
        let shared = std::env::var("BERTH_AMQP_URL")
            .ok()
            .and_then(|list| crate::config::split_urls(&list).into_iter().next())
            .unwrap_or_else(|| crate::config::DEFAULT_AMQP_URL.to_owned());
        let (dead_1, dead_2) = (closed(), closed());
        let brokers = Brokers::new(
            vec![dead_1.clone(), shared.clone(), dead_2.clone()],
            BrokerTls::system_roots(),
        );
        let connected = brokers.connect("berth-cluster-test").await.unwrap();
        assert_eq!(connected.node, node_url(&shared));
        assert!(!connected.node.contains("guest:"), "{}", connected.node);
        let _ = connected.connection.close(200, "done".into()).await;
        // After the shared node, the list goes on at the third, then wraps round to it.
        assert_eq!(brokers.next.load(Ordering::Relaxed), 2);
        let again = brokers.connect("berth-cluster-test").await.unwrap();
        assert_eq!(again.node, node_url(&shared));
        let _ = again.connection.close(200, "done".into()).await;

        let none = Brokers::new(vec![dead_1, dead_2], BrokerTls::system_roots());
        assert!(none.connect("berth-cluster-test").await.is_err());
    }
}
