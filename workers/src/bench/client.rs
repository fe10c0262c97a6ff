//! The bench's side of the HTTP API and of the broker: acquire and release through the
//! assigner, release straight to a slot's control queue (fake workers), wait for consumers.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Deserialize;
use serde_json::json;

use berth::protocol::{Control, Names, PROTOCOL_VERSION, encode};

/// A slot held by the bench.
#[derive(Debug, Deserialize)]
pub(crate) struct Held {
    pub(crate) slot: String,
    pub(crate) lease_token: String,
}

/// `POST /v1/pools/{pool}/acquire`, waiting up to 30 s for a slot.
pub(crate) async fn acquire(
    http: &reqwest::Client,
    base: &str,
    pool: &str,
) -> Result<Held, String> {
    let response = http
        .post(format!("{base}/v1/pools/{pool}/acquire"))
        .json(&json!({"owner": "berth-bench", "lease_secs": 600, "wait_secs": 30}))
        .send()
        .await
        .map_err(|e| format!("acquire: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("acquire answered {status}: {body}"));
    }
    response
        .json()
        .await
        .map_err(|e| format!("acquire body: {e}"))
}

/// `POST /v1/slots/{slot}/release`.
pub(crate) async fn release(http: &reqwest::Client, base: &str, held: &Held) -> Result<(), String> {
    let response = http
        .post(format!("{base}/v1/slots/{}/release", held.slot))
        .json(&json!({"lease_token": held.lease_token}))
        .send()
        .await
        .map_err(|e| format!("release: {e}"))?;
    let status = response.status();
    if status.as_u16() != 202 {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("release answered {status}: {body}"));
    }
    Ok(())
}

/// Publishes a confirmed, persistent `Release` to the slot's control queue, as the assigner
/// does (fake workers keep their records in memory, where the assigner cannot check them).
pub(crate) async fn release_direct(
    channel: &Channel,
    names: &Names,
    held: &Held,
) -> Result<(), String> {
    let body = encode(&Control::Release {
        v: PROTOCOL_VERSION,
        lease_token: held.lease_token.clone(),
    });
    let confirm = channel
        .basic_publish(
            "".into(),
            names.slot_queue(&held.slot).into(),
            BasicPublishOptions::default(),
            &body,
            berth::broker::json_properties().with_delivery_mode(berth::broker::PERSISTENT),
        )
        .await
        .map_err(|e| format!("release: {e}"))?
        .await
        .map_err(|e| format!("release confirm: {e}"))?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("release nacked".into())
    }
}

/// Consumers of `queue` right now (a passive declare on a fresh channel: a missing queue
/// closes the channel, and counts as none).
pub(crate) async fn consumers(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let count = match channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
    {
        Ok(queue) => queue.consumer_count(),
        Err(_) => 0,
    };
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
    Ok(count)
}

/// Waits until `queue` has `want` consumers (every slot of a pool free and consuming);
/// answers how long that took. Fails after `deadline` with the last count seen.
pub(crate) async fn wait_consumers(
    connection: &Connection,
    queue: &str,
    want: u32,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < deadline {
        seen = consumers(connection, queue).await?;
        if seen >= want {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{queue}: {seen} of {want} consumers after {deadline:?}")
}

/// Waits until `GET {base}/readyz` answers 200; answers how long that took.
pub(crate) async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let url = format!("{base}/readyz");
    let mut last = String::from("no answer");
    while started.elapsed() < deadline {
        match http
            .get(&url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(started.elapsed()),
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("{url} not ready after {deadline:?}: {last}")
}
