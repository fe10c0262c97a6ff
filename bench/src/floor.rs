//! The floor: the bare message flow the stack is measured against. HTTP request in → AMQP
//! request → a consumer does one HTTP PATCH on the fake Launchpad → AMQP reply → HTTP
//! response out; nothing else (no confirms, no persistence, no acks, no store reads).
//!
//! Both ends run in the bench process: the HTTP server with its reply queue on one broker
//! connection, the consumer on another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use berth::store::oauth::Signer;

/// How long the floor's HTTP handler waits for its reply.
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Where the consumer writes: the fake Launchpad, as the bench's workers do.
pub(crate) struct Target {
    /// `http://ADDR/devel/~OWNER/+archive/ubuntu/`
    pub(crate) archives_url: String,
    /// The PPAs written in turn (none of them a slot of the stack).
    pub(crate) ppas: Vec<String>,
    /// Signs the PATCH as the workers' store client does.
    pub(crate) signer: Signer,
}

/// A running floor: its HTTP address, stopped by [`Floor::stop`].
pub(crate) struct Floor {
    pub(crate) addr: SocketAddr,
    cancel: CancellationToken,
    server: Connection,
    consumer: Connection,
    queue: String,
}

struct Server {
    channel: Channel,
    queue: String,
    reply_queue: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
}

impl Floor {
    pub(crate) async fn start(
        amqp_url: &str,
        tls: &berth::broker::BrokerTls,
        queue: String,
        target: Target,
    ) -> anyhow::Result<Floor> {
        let cancel = CancellationToken::new();
        // The consumer side.
        let consumer = berth::cluster::Brokers::from_list(amqp_url, tls.clone())
            .connect("berth-bench-floor-consumer")
            .await?
            .connection;
        let channel = consumer.create_channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(consume(
            channel,
            deliveries,
            Arc::new(target),
            cancel.clone(),
        ));

        // The HTTP side.
        let server = berth::cluster::Brokers::from_list(amqp_url, tls.clone())
            .connect("berth-bench-floor-server")
            .await?
            .connection;
        let channel = server.create_channel().await?;
        let (reply, replies) = berth::broker::private_queue(&channel).await?;
        let state = Arc::new(Server {
            channel,
            queue: queue.clone(),
            reply_queue: reply,
            next: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        });
        tokio::spawn(route_replies(Arc::clone(&state), replies, cancel.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new()
            .route("/floor", post(request))
            .with_state(state);
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Floor {
            addr,
            cancel,
            server,
            consumer,
            queue,
        })
    }

    /// Stops both ends and deletes the floor queue.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        if let Ok(channel) = self.consumer.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), Default::default())
                .await;
        }
        let _ = self.server.close(200, "floor done".into()).await;
        let _ = self.consumer.close(200, "floor done".into()).await;
    }
}

/// The HTTP handler: one AMQP request, one reply.
async fn request(State(server): State<Arc<Server>>) -> Result<Vec<u8>, axum::http::StatusCode> {
    let id = server.next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    server.lock().insert(id, tx);
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(server.reply_queue.as_str().into())
        .with_correlation_id(id.to_string().into());
    let published = server
        .channel
        .basic_publish(
            "".into(),
            server.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await;
    if published.is_err() {
        server.lock().remove(&id);
        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }
    match tokio::time::timeout(REPLY_WAIT, rx).await {
        Ok(Ok(body)) => Ok(body),
        _ => {
            server.lock().remove(&id);
            Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Vec<u8>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn route_replies(
    server: Arc<Server>,
    mut replies: lapin::Consumer,
    cancel: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => return,
            delivery = replies.next() => delivery,
        };
        let Some(Ok(delivery)) = delivery else { return };
        let id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|c| c.as_str().parse::<u64>().ok());
        if let Some(tx) = id.and_then(|id| server.lock().remove(&id)) {
            let _ = tx.send(delivery.data);
        }
    }
}

/// The consumer: for each request, one PATCH, then the reply.
async fn consume(
    channel: Channel,
    mut deliveries: lapin::Consumer,
    target: Arc<Target>,
    cancel: CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut turn = 0usize;
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => return,
            delivery = deliveries.next() => delivery,
        };
        let Some(Ok(delivery)) = delivery else { return };
        let ppa = target.ppas[turn % target.ppas.len()].clone();
        turn += 1;
        let (channel, http, target) = (channel.clone(), http.clone(), Arc::clone(&target));
        tokio::spawn(async move {
            let url = format!("{}{ppa}", target.archives_url);
            let patched = http
                .patch(url)
                .header("accept", "application/json")
                .header("authorization", target.signer.header())
                .json(&serde_json::json!({"description": format!("floor {turn}")}))
                .send()
                .await;
            let body: &[u8] = match patched {
                Ok(r) if r.status().is_success() => b"{\"ok\":true}",
                _ => b"{\"ok\":false}",
            };
            let (Some(reply_to), Some(correlation)) = (
                delivery.properties.reply_to().clone(),
                delivery.properties.correlation_id().clone(),
            ) else {
                return;
            };
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(correlation);
            let _ = channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await;
        });
    }
}

/// One floor request through its HTTP server; answers its latency.
pub(crate) async fn call(http: &reqwest::Client, url: &str) -> Result<Duration, String> {
    let started = std::time::Instant::now();
    let response = http
        .post(url)
        .send()
        .await
        .map_err(|e| format!("floor: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("floor body: {e}"))?;
    if !status.is_success() || body.as_ref() != b"{\"ok\":true}" {
        return Err(format!(
            "floor answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(started.elapsed())
}
