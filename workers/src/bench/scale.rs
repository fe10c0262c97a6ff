//! Slot scale: one `berth-worker --fake` process hosting many slots. How long until every
//! slot worker is up, how much memory the process holds, and acquire latency
//! next to the same measure on a small pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::ConfirmSelectOptions;
use serde::Serialize;

use super::client;
use super::measure::{LoopResult, closed_loop, millis};
use super::stack::{Proc, Stack, rss_mib};

/// One fake worker process and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub slots: usize,
    /// From spawning the process until every slot holds its lock and the pool queue is
    /// consumed.
    pub all_consuming_ms: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Acquire (through the assigner), then release straight to the slot's control queue.
    pub acquire: LoopResult,
}

/// Starts a fake worker process for `pool` (of `slots` slots), waits for every slot
/// worker to be up, measures acquire latency at `clients` clients for `duration`, and stops it.
pub(crate) async fn run(
    stack: &Stack,
    connection: &Connection,
    http: &reqwest::Client,
    pool: &str,
    slots: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<ScaleRun> {
    let names = stack.config.names();
    let mut workers: Proc = stack.fake_workers(pool)?;
    let slot_names = stack
        .config
        .pool(pool)
        .map(|p| p.slots.clone())
        .unwrap_or_default();
    let waited = client::wait_workers(
        connection,
        &names,
        pool,
        &slot_names,
        Duration::from_secs(300),
    )
    .await;
    workers.check_alive(
        "berth-worker --fake",
        &stack.log(&format!("workers-{pool}")),
    )?;
    waited?;
    let all_consuming = workers.started.elapsed();
    // Let start-up work settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, _) = rss_mib(workers.pid()).unwrap_or_default();

    let channel = Arc::new(connection.create_channel().await?);
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let base = stack.base.clone();
    let (http2, pool2, names2) = (http.clone(), pool.to_owned(), names.clone());
    let acquire = closed_loop(clients, duration, move |_| {
        let (http, base, pool, names, channel) = (
            http2.clone(),
            base.clone(),
            pool2.clone(),
            names2.clone(),
            Arc::clone(&channel),
        );
        async move {
            let t = Instant::now();
            let held = client::acquire(&http, &base, &pool).await?;
            let latency = t.elapsed();
            client::release_direct(&channel, &names, &held).await?;
            Ok(latency)
        }
    })
    .await;
    let (_, peak) = rss_mib(workers.pid()).unwrap_or_default();
    workers.kill();
    Ok(ScaleRun {
        slots,
        all_consuming_ms: millis(all_consuming),
        rss_mib: rss,
        peak_rss_mib: peak,
        acquire,
    })
}
