//! Slot scale: one `berth-worker --fake` process hosting many slots. How long until every
//! slot worker is up, how much memory the process holds, and acquire latency next to the
//! same measure on a small pool's process, the two taking turns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::ConfirmSelectOptions;
use serde::Serialize;

use super::client;
use super::measure::{LoopResult, Run, closed_loop_run, millis};
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

/// A fake worker process, up, with what it took to come up.
struct Started {
    pool: String,
    slots: usize,
    workers: Proc,
    all_consuming: Duration,
    rss_mib: f64,
}

/// Starts a fake worker process for `pool` (of `slots` slots) and waits for every slot
/// worker to be up.
async fn start(
    stack: &Stack,
    connection: &Connection,
    pool: &str,
    slots: usize,
) -> anyhow::Result<Started> {
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
    let (rss_mib, _) = rss_mib(workers.pid()).unwrap_or_default();
    Ok(Started {
        pool: pool.to_owned(),
        slots,
        workers,
        all_consuming,
        rss_mib,
    })
}

/// Both pools' processes up at once, then acquire latency at `clients` clients on one and
/// the other in turns ([`super::TURNS`] slices of `duration` in all for each), so that
/// both see the same machine; then both are stopped.
pub(crate) async fn compare(
    stack: &Stack,
    connection: &Connection,
    http: &reqwest::Client,
    pools: [(&str, usize); 2],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<[ScaleRun; 2]> {
    let mut started = Vec::new();
    for (pool, slots) in pools {
        started.push(start(stack, connection, pool, slots).await?);
    }
    let channel = Arc::new(connection.create_channel().await?);
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let names = stack.config.names();
    let slice = duration / super::TURNS;
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..super::TURNS {
        for (side, process) in started.iter().enumerate() {
            let (http, base, pool, names, channel) = (
                http.clone(),
                stack.base.clone(),
                process.pool.clone(),
                names.clone(),
                Arc::clone(&channel),
            );
            let run = closed_loop_run(clients, slice, move |_| {
                let (http, base, pool, names, channel) = (
                    http.clone(),
                    base.clone(),
                    pool.clone(),
                    names.clone(),
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
            runs[side].push(run);
        }
    }
    let mut results = Vec::new();
    for (mut process, runs) in started.into_iter().zip(runs) {
        let (_, peak) = rss_mib(process.workers.pid()).unwrap_or_default();
        process.workers.kill();
        results.push(ScaleRun {
            slots: process.slots,
            all_consuming_ms: millis(process.all_consuming),
            rss_mib: process.rss_mib,
            peak_rss_mib: peak,
            acquire: LoopResult::of(clients, runs),
        });
    }
    let large = results.pop().expect("two runs");
    let base = results.pop().expect("two runs");
    Ok([base, large])
}
