//! The bench's side of the HTTP API and of the broker: acquire and release through the
//! assigner, release straight to a slot's control queue (fake workers), wait for the workers.

use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::{Channel, Connection};
use serde::Deserialize;
use serde_json::json;

use berth::broker::{declare_pool_queue, declare_slot_queue};
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

/// Waits until the workers of `pool` are up: every slot holds its lock (its control queue
/// has its consumer) and the pool queue has a consumer (a worker process's feed, there
/// while any slot of the process is free). Answers how long that took; fails after
/// `deadline` with what is missing. Slots seen up are not asked again.
pub(crate) async fn wait_workers(
    connection: &Connection,
    names: &Names,
    pool: &str,
    slots: &[String],
    deadline: Duration,
) -> anyhow::Result<Duration> {
    const CHANNELS: usize = 8;
    let started = Instant::now();
    let mut missing: Vec<String> = slots.to_vec();
    let mut pool_up = false;
    while started.elapsed() < deadline {
        let checks = (0..CHANNELS).map(|k| {
            let missing = &missing;
            async move {
                let channel = connection.create_channel().await?;
                let mut still = Vec::new();
                for slot in missing.iter().skip(k).step_by(CHANNELS) {
                    // Declared as the worker declares it: a passive declare of a queue not
                    // there yet would close the channel.
                    let queue = declare_slot_queue(&channel, names, slot).await?;
                    if queue.consumer_count() == 0 {
                        still.push(slot.clone());
                    }
                }
                let _ = channel.close(200, "done".into()).await;
                Ok::<_, lapin::Error>(still)
            }
        });
        let mut still = Vec::new();
        for part in futures::future::join_all(checks).await {
            still.extend(part?);
        }
        missing = still;
        if !pool_up {
            let channel = connection.create_channel().await?;
            pool_up = declare_pool_queue(&channel, names, pool)
                .await?
                .consumer_count()
                > 0;
            let _ = channel.close(200, "done".into()).await;
        }
        if missing.is_empty() && pool_up {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "pool {pool} not up after {deadline:?}: {} of {} slots without their lock, pool queue {}",
        missing.len(),
        slots.len(),
        if pool_up { "consumed" } else { "not consumed" }
    )
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
