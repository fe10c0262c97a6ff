//! Full cycles (acquire → release → cleaned → free), counted by the `cleaned` events the
//! workers publish (DESIGN §6), so a cycle counts only once its slot is free again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;

use berth::protocol::Names;

use super::client;
use super::measure::{Summary, closed_loop};

/// What a full-cycle run saw.
#[derive(Debug, Clone, Serialize)]
pub struct CycleResult {
    pub slots: usize,
    pub clients: usize,
    /// Slots acquired and released by the clients.
    pub released: u64,
    /// Of those, cleaned and free again when the run ended.
    pub cleaned: u64,
    /// Cleaned cycles per second, from the first acquire to the last `cleaned` event.
    pub per_sec: f64,
    pub acquire: Summary,
    pub errors: usize,
    pub first_error: Option<String>,
}

/// Counts the `cleaned` events of `pool`, remembering when the last one came.
pub(crate) struct Counter {
    pub(crate) count: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

pub(crate) async fn count_cleaned(
    connection: &Connection,
    names: &Names,
    pool: &str,
) -> anyhow::Result<Arc<Counter>> {
    let channel = connection.create_channel().await?;
    berth::broker::declare_common(&channel, names).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            names.events_exchange().into(),
            format!("{pool}.*.cleaned").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut events = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let counter = Arc::new(Counter {
        count: AtomicU64::new(0),
        last: std::sync::Mutex::new(None),
    });
    let seen = Arc::clone(&counter);
    tokio::spawn(async move {
        // Ends when the channel closes (below) or the connection goes.
        let _channel = channel;
        while let Some(Ok(_)) = events.next().await {
            seen.count.fetch_add(1, Ordering::SeqCst);
            *seen.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
    });
    Ok(counter)
}

/// One client per slot acquires and releases slots of `pool` (of `slots` slots, all free at
/// the start) back to back for `duration`; then waits for every released slot to be cleaned.
pub(crate) async fn run(
    connection: &Connection,
    names: &Names,
    http: &reqwest::Client,
    base: &str,
    pool: &str,
    slots: usize,
    duration: Duration,
) -> anyhow::Result<CycleResult> {
    // As many clients as slots: every slot is always either held or being cleaned.
    let clients = slots;
    let counter = count_cleaned(connection, names, pool).await?;
    let released = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let result = {
        let (http, base, pool, released) = (
            http.clone(),
            base.to_owned(),
            pool.to_owned(),
            Arc::clone(&released),
        );
        closed_loop(clients, duration, move |_| {
            let (http, base, pool, released) = (
                http.clone(),
                base.clone(),
                pool.clone(),
                Arc::clone(&released),
            );
            async move {
                let t = Instant::now();
                let held = client::acquire(&http, &base, &pool).await?;
                let latency = t.elapsed();
                client::release(&http, &base, &held).await?;
                released.fetch_add(1, Ordering::SeqCst);
                Ok(latency)
            }
        })
        .await
    };
    let released = released.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.count.load(Ordering::SeqCst) < released && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cleaned = counter.count.load(Ordering::SeqCst).min(released);
    let last = counter
        .last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);
    let secs = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    Ok(CycleResult {
        slots,
        clients,
        released,
        cleaned,
        per_sec: cleaned as f64 / secs,
        acquire: result.latency,
        errors: result.errors,
        first_error: result.first_error,
    })
}
