//! The AMQP connections of a worker process, shared by its slot workers (one channel each).
//! RabbitMQ allows 2047 channels per connection by default, so a process hosting more slots
//! spreads them over several connections ([`shard_of`]): at most
//! [`MAX_CHANNELS_PER_CONNECTION`] slot workers share one.

use std::sync::Arc;

use berth::broker::BrokerTls;
use lapin::{Channel, Connection};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use berth::cluster::Brokers;

use super::{BROKER_TIMEOUT, Error, bounded};
use crate::metrics::Metrics;

/// The most slot workers that share one connection: well below RabbitMQ's default
/// `channel_max` (2047), and small enough that a connection stays cheap to write to. lapin
/// looks at every channel of a connection for each frame it sends (`Channels::flow`), so a
/// connection of 1000 channels spent about 15 µs per frame on it (profiled: 15 % of a
/// 320-slot worker's instructions on one connection, and the 10,000-slot process's acquire
/// latency 1.5 times the 16-slot one's). 100 channels cost a tenth of that, for one more
/// connection (and lapin I/O thread) per 100 slots.
pub(crate) const MAX_CHANNELS_PER_CONNECTION: usize = 100;

/// How long a stopping process waits for the broker to confirm a connection's close.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many connections `slots` slot workers need, at most `per_connection` on each.
pub(crate) fn shard_count(slots: usize, per_connection: usize) -> usize {
    slots.div_ceil(per_connection.max(1)).max(1)
}

/// The connection (shard) of the `index`-th of `slots` slot workers: consecutive blocks, as
/// even as possible, so `slots` = 2001 at 1000 a connection gives blocks of 667.
pub(crate) fn shard_of(index: usize, slots: usize, per_connection: usize) -> usize {
    let shards = shard_count(slots, per_connection);
    // Spread evenly: shard k holds indexes [k*slots/shards, (k+1)*slots/shards).
    (index * shards) / slots.max(1)
}

/// One [`Connector`] per shard for `slots` slot workers, to the broker nodes `urls` (tried
/// in order), named `name` (with `-<shard>` appended when there are several), counting their
/// reconnects in `metrics`.
pub(crate) fn connectors(
    urls: &[String],
    tls: &BrokerTls,
    name: &str,
    slots: usize,
    metrics: &Arc<Metrics>,
) -> Vec<Arc<Connector>> {
    let shards = shard_count(slots, MAX_CHANNELS_PER_CONNECTION);
    (0..shards)
        .map(|shard| {
            let name = if shards == 1 {
                name.to_owned()
            } else {
                format!("{name}-{shard}")
            };
            Arc::new(Connector::new(urls, tls, &name, Arc::clone(metrics)))
        })
        .collect()
}

/// Hands out channels, (re)connecting when there is no live connection. When the connection
/// drops, every slot worker's channel fails; the first one to ask for a new channel
/// reconnects and the others wait on the lock and then share the new connection.
pub(crate) struct Connector {
    /// The broker nodes: each connector goes through the list on its own, from the first
    /// node that answers to the next when it loses it.
    brokers: Brokers,
    name: String,
    current: Mutex<Option<Arc<Connection>>>,
    metrics: Arc<Metrics>,
}

impl Connector {
    pub(crate) fn new(urls: &[String], tls: &BrokerTls, name: &str, metrics: Arc<Metrics>) -> Self {
        Connector {
            brokers: Brokers::new(urls.to_vec(), tls.clone()),
            name: name.to_owned(),
            current: Mutex::new(None),
            metrics,
        }
    }

    /// A fresh channel, or `None` once `cancel` fires while (re)connecting.
    pub(crate) async fn channel(
        &self,
        cancel: &CancellationToken,
    ) -> Option<Result<Channel, Error>> {
        // The lock is not held while a channel opens, so a thousand slot workers starting
        // together open theirs side by side rather than one broker round trip at a time.
        let live = self.live().await;
        if let Some(conn) = &live {
            match tokio::time::timeout(BROKER_TIMEOUT, conn.create_channel()).await {
                Ok(channel) => return Some(channel.map_err(Error::from)),
                // Connected by lapin's account but silent: a dead peer it has not noticed.
                Err(_) => tracing::warn!("the broker did not open a channel in time"),
            }
        }
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref()
            && conn.status().connected()
            && !live
                .as_ref()
                .is_some_and(|failed| Arc::ptr_eq(failed, conn))
        {
            // Another slot worker reconnected meanwhile.
            let conn = conn.clone();
            drop(current);
            return Some(bounded(conn.create_channel()).await);
        }
        let reconnecting = current.take().is_some();
        if reconnecting {
            tracing::warn!("the broker connection is gone; reconnecting");
        }
        let connected = self
            .brokers
            .connect_with_backoff(&self.name, cancel)
            .await?;
        let conn = Arc::new(connected.connection);
        if reconnecting {
            self.metrics.broker_reconnected();
        }
        self.metrics.broker_node(&self.name, &connected.node);
        *current = Some(conn.clone());
        drop(current);
        Some(bounded(conn.create_channel()).await)
    }

    /// The current connection, if lapin still counts it as connected.
    async fn live(&self) -> Option<Arc<Connection>> {
        let current = self.current.lock().await;
        current
            .as_ref()
            .filter(|conn| conn.status().connected())
            .cloned()
    }

    /// Closes the connection, if any, once every slot worker is done with it. A broker that
    /// does not confirm the close within [`CLOSE_TIMEOUT`] is not waited for: the process is
    /// stopping, and the broker drops the connection when its socket goes.
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.current.lock().await.take()
            && conn.status().connected()
        {
            let closing = conn.close(200, "worker shutting down".into());
            if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
                tracing::warn!(
                    "the broker did not confirm the connection's close in time; leaving it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `slots` slot workers each shard gets.
    fn loads(slots: usize, per: usize) -> Vec<usize> {
        let mut loads = vec![0; shard_count(slots, per)];
        for index in 0..slots {
            loads[shard_of(index, slots, per)] += 1;
        }
        loads
    }

    #[test]
    fn one_connection_up_to_the_limit() {
        assert_eq!(loads(1, 1000), vec![1]);
        assert_eq!(loads(1000, 1000), vec![1000]);
        assert_eq!(shard_count(0, 1000), 1);
    }

    #[test]
    fn past_the_limit_slots_spread_evenly_and_never_exceed_it() {
        assert_eq!(loads(1001, 1000), vec![501, 500]);
        assert_eq!(loads(2001, 1000), vec![667, 667, 667]);
        let ten_thousand = loads(10_000, MAX_CHANNELS_PER_CONNECTION);
        assert_eq!(ten_thousand, vec![100; 100]);
        for slots in [1, 7, 999, 1000, 1001, 4096, 10_001, 25_000] {
            let per = loads(slots, 1000);
            assert_eq!(
                per.iter().sum::<usize>(),
                slots,
                "{slots}: every slot placed"
            );
            assert!(
                per.iter().all(|&n| (1..=1000).contains(&n)),
                "{slots}: {per:?}"
            );
            let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(max - min <= 1, "{slots}: uneven {per:?}");
        }
    }

    #[test]
    fn shards_are_consecutive_blocks() {
        let shards: Vec<usize> = (0..3000).map(|i| shard_of(i, 3000, 1000)).collect();
        assert!(shards.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            (shards[0], shards[999], shards[1000], shards[2999]),
            (0, 0, 1, 2)
        );
    }
}
