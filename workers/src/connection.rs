//! The one AMQP connection of a worker process, shared by its slot workers (one channel
//! each). All connection handling lives here, so that sharding slots over several
//! connections (past the 2047-channel limit) later changes only this file.

use lapin::{Channel, Connection};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Hands out channels, (re)connecting when there is no live connection. When the connection
/// drops, every slot worker's channel fails; the first one to ask for a new channel
/// reconnects and the others wait on the lock and then share the new connection.
pub(crate) struct Connector {
    url: String,
    name: String,
    current: Mutex<Option<Connection>>,
}

impl Connector {
    pub(crate) fn new(url: &str, name: &str) -> Self {
        Connector {
            url: url.to_owned(),
            name: name.to_owned(),
            current: Mutex::new(None),
        }
    }

    /// A fresh channel, or `None` once `cancel` fires while (re)connecting.
    pub(crate) async fn channel(
        &self,
        cancel: &CancellationToken,
    ) -> Option<Result<Channel, lapin::Error>> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref()
            && conn.status().connected()
        {
            return Some(conn.create_channel().await);
        }
        if current.take().is_some() {
            tracing::warn!("the broker connection is gone; reconnecting");
        }
        let conn = berth::broker::connect_with_backoff(&self.url, &self.name, cancel).await?;
        let channel = conn.create_channel().await;
        *current = Some(conn);
        Some(channel)
    }

    /// Closes the connection, if any, once every slot worker is done with it.
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.current.lock().await.take()
            && conn.status().connected()
        {
            let _ = conn.close(200, "worker shutting down".into()).await;
        }
    }
}
