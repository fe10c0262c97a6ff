//! `berth-bench store-calls`: the Launchpad requests berth makes, counted by the fake
//! Launchpad (by method, endpoint and named operation): per acquire, per release and clean
//! of a slot with uploads, and per slot per hour while slots sit free or held. One slot,
//! so that each acquire waits for the clean before it; the real (not `--fake`) worker.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client;
use super::cycles::count_cleaned;
use super::stack::{Broker, Pools, SMALL, Stack};

#[derive(Debug, Clone)]
pub struct StoreCallsOptions {
    pub amqp_url: String,
    /// CA certificates of an `amqps://` broker (besides the system's roots).
    pub amqp_ca_file: Option<std::path::PathBuf>,
    pub bin_dir: std::path::PathBuf,
    pub cycles: usize,
    /// Uploads a CI job leaves in the PPA, deleted by the clean.
    pub uploads: usize,
    /// How long slots sit free, then held, for the idle rates.
    pub idle: Duration,
}

/// Requests by key (`GET archive ws.op=getPublishedSources`, …), and their sum.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Calls {
    pub total: f64,
    pub by_kind: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreCalls {
    /// Requests of the assigner's start, until it is ready.
    pub assigner_start: Calls,
    /// Requests of one slot worker's start (lock, read, take-over write), until it serves;
    /// a new slot's first start also cleans it (its PPA is empty here).
    pub slot_start: Calls,
    pub cycles: usize,
    pub uploads_per_cycle: usize,
    /// Mean requests of one acquire (assigner and worker), from the request to the reply.
    pub per_acquire: Calls,
    /// Mean requests of one release and the clean after it, until the `cleaned` event.
    pub per_release_and_clean: Calls,
    /// Requests per free slot per hour, from `idle` seconds with the slot free.
    pub free_slot_per_hour: Calls,
    /// Requests per held slot per hour, from `idle` seconds with the slot held.
    pub held_slot_per_hour: Calls,
    /// Mean wall time of a release and clean, ms (fake Launchpad, deletions at once).
    pub release_to_cleaned_ms: f64,
}

pub async fn run(options: &StoreCallsOptions) -> anyhow::Result<StoreCalls> {
    let namespace = format!("calls-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pools = Pools {
        small: 1,
        large: 0,
        scale_base: 0,
        scale: 0,
    };
    let broker = Broker {
        ca_file: options.amqp_ca_file.as_deref(),
        ..Broker::classic(&options.amqp_url)
    };
    let stack = Stack::start(broker, &namespace, &pools, &options.bin_dir).await?;
    let result = measure(&stack, broker, options).await;
    let names = stack.config.names();
    if let Ok(connection) = broker.connect("berth-bench").await {
        if let Ok(channel) = connection.create_channel().await {
            let mut queues = vec![
                names.assign_queue(SMALL),
                names.dead_queue(),
                names.history_queue(),
            ];
            queues.extend(stack.all_slots().map(|s| names.slot_queue(s)));
            for queue in queues {
                let _ = channel
                    .queue_delete(queue.as_str().into(), Default::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(names.events_exchange().into(), Default::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&stack.dir);
    } else {
        eprintln!("store-calls: logs in {}", stack.dir.display());
    }
    stack.fake.shutdown().await;
    result
}

async fn measure(
    stack: &Stack,
    broker: Broker<'_>,
    options: &StoreCallsOptions,
) -> anyhow::Result<StoreCalls> {
    let http = reqwest::Client::new();
    let connection = broker.connect("berth-bench store-calls").await?;
    let names = stack.config.names();
    let slot = stack
        .config
        .pool(SMALL)
        .map(|p| p.slots[0].clone())
        .unwrap_or_default();
    let s0 = stack.fake.requests();
    let _assigner = stack.assigner()?;
    client::wait_ready(&http, &stack.base, Duration::from_secs(120)).await?;
    let s1 = stack.fake.requests();
    let _workers = stack.ppa_workers()?;
    client::wait_workers(
        &connection,
        &names,
        SMALL,
        std::slice::from_ref(&slot),
        Duration::from_secs(120),
    )
    .await?;
    let cleaned = count_cleaned(&connection, &names, SMALL).await?;
    // Start-up reads are done; let the first clean (if any) finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s2 = stack.fake.requests();
    let (mut assigner_start, mut slot_start) = (BTreeMap::new(), BTreeMap::new());
    add(&mut assigner_start, &s0, &s1);
    add(&mut slot_start, &s1, &s2);

    eprintln!("store-calls: slot free for {:?}", options.idle);
    let before = stack.fake.requests();
    tokio::time::sleep(options.idle).await;
    let free_slot_per_hour = rate(&before, &stack.fake.requests(), options.idle);

    eprintln!(
        "store-calls: {} cycles, {} uploads each",
        options.cycles, options.uploads
    );
    let (mut acquire, mut clean) = (BTreeMap::new(), BTreeMap::new());
    let mut clean_time = Duration::ZERO;
    for cycle in 0..options.cycles {
        let s0 = stack.fake.requests();
        let held = client::acquire(&http, &stack.base, SMALL)
            .await
            .map_err(anyhow::Error::msg)?;
        let s1 = stack.fake.requests();
        for u in 0..options.uploads {
            stack
                .fake
                .add_upload(&held.slot, &format!("pkg{u}"), &format!("1.{cycle}"));
        }
        let s2 = stack.fake.requests();
        let t = Instant::now();
        client::release(&http, &stack.base, &held)
            .await
            .map_err(anyhow::Error::msg)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while cleaned.count.load(Ordering::SeqCst) < cycle as u64 + 1 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "slot {} not cleaned within 60 s",
                held.slot
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        clean_time += t.elapsed();
        let s3 = stack.fake.requests();
        add(&mut acquire, &s0, &s1);
        add(&mut clean, &s2, &s3);
    }

    eprintln!("store-calls: slot held for {:?}", options.idle);
    let held = client::acquire(&http, &stack.base, SMALL)
        .await
        .map_err(anyhow::Error::msg)?;
    let before = stack.fake.requests();
    tokio::time::sleep(options.idle).await;
    let held_slot_per_hour = rate(&before, &stack.fake.requests(), options.idle);
    client::release(&http, &stack.base, &held)
        .await
        .map_err(anyhow::Error::msg)?;
    let _ = connection.close(200, "done".into()).await;

    let n = options.cycles.max(1) as f64;
    Ok(StoreCalls {
        assigner_start: calls(&assigner_start, 1.0),
        slot_start: calls(&slot_start, 1.0),
        cycles: options.cycles,
        uploads_per_cycle: options.uploads,
        per_acquire: calls(&acquire, 1.0 / n),
        per_release_and_clean: calls(&clean, 1.0 / n),
        free_slot_per_hour,
        held_slot_per_hour,
        release_to_cleaned_ms: clean_time.as_secs_f64() * 1000.0 / n,
    })
}

fn add(sum: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>, to: &BTreeMap<String, u64>) {
    for (key, &count) in to {
        let delta = count - from.get(key).copied().unwrap_or(0);
        if delta > 0 {
            *sum.entry(key.clone()).or_default() += delta;
        }
    }
}

fn calls(counts: &BTreeMap<String, u64>, scale: f64) -> Calls {
    let by_kind: BTreeMap<String, f64> = counts
        .iter()
        .map(|(k, &v)| (k.clone(), v as f64 * scale))
        .collect();
    Calls {
        // `+ 0.0`: an empty sum is -0.0.
        total: by_kind.values().sum::<f64>() + 0.0,
        by_kind,
    }
}

fn rate(from: &BTreeMap<String, u64>, to: &BTreeMap<String, u64>, over: Duration) -> Calls {
    let mut delta = BTreeMap::new();
    add(&mut delta, from, to);
    calls(&delta, 3600.0 / over.as_secs_f64().max(f64::EPSILON))
}
