//! `berth-bench`: acquire latency, throughput and slot scale of the whole stack, each next
//! to the bare message flow on the same broker (the floor, [`floor`]). Performance targets
//! live here, never in timed tests.
//!
//! One run: the floor at 1 and 16 clients; the stack (fake Launchpad in this process, the
//! assigner and the workers as separate processes, see [`stack`]) at 1 and 16 clients; full
//! cycles on a small and a large pool; assigner memory and restart readiness; then one fake
//! worker process with a small pool and one with a very large pool ([`scale`]). Everything
//! lives in a fresh namespace whose queues are deleted at the end.

pub mod broker_cost;
mod client;
mod cpu;
mod cycles;
mod floor;
mod measure;
mod rabbit;
mod recovery;
mod report;
mod scale;
mod stack;
pub mod store_calls;
pub mod worker_broker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::Connection;

pub use cpu::CpuShare;
pub use cycles::CycleResult;
pub use measure::{LoopResult, Summary};
pub use rabbit::NodeStats;
pub use report::{AssignerFigures, Phase, Ratios, Report, Scale, Setup, Target};
pub use scale::ScaleRun;

use cpu::CpuMeter;
use stack::{Broker, Pools, Stack, rss_mib};

/// What to run, and how long.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub amqp_url: String,
    /// CA certificates of an `amqps://` broker, besides the system's roots.
    pub amqp_ca_file: Option<PathBuf>,
    /// Where `berth` and `berth-worker` are (by default, next to `berth-bench`).
    pub bin_dir: PathBuf,
    /// Length of each latency phase.
    pub phase: Duration,
    /// Length of each full-cycle run.
    pub cycle: Duration,
    /// The pools of the full-cycle runs (PPAs on the fake Launchpad, real worker mode).
    pub small_slots: usize,
    pub large_slots: usize,
    /// The pools of the scale runs (fake worker mode); `scale_slots` 0 skips them.
    pub scale_base_slots: usize,
    pub scale_slots: usize,
    /// How many times the assigner is killed and started again.
    pub restarts: usize,
}

/// Runs the bench; the namespace's queues are deleted whatever happens.
pub async fn run(options: BenchOptions) -> anyhow::Result<Report> {
    let namespace = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let pools = Pools {
        small: options.small_slots,
        large: options.large_slots,
        scale_base: options.scale_base_slots.max(1),
        scale: options.scale_slots.max(1),
    };
    let broker = Broker {
        ca_file: options.amqp_ca_file.as_deref(),
        ..Broker::classic(&options.amqp_url)
    };
    let stack = Stack::start(broker, &namespace, &pools, &options.bin_dir).await?;
    let connection = broker.connect("berth-bench").await?;
    eprintln!(
        "berth-bench: namespace {namespace}, logs in {}",
        stack.dir.display()
    );
    let result = measure_all(&options, &namespace, &pools, &stack, &connection).await;
    cleanup(&connection, &stack).await;
    let _ = connection.close(200, "bench done".into()).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&stack.dir);
    }
    stack.fake.shutdown().await;
    result
}

async fn measure_all(
    options: &BenchOptions,
    namespace: &str,
    pools: &Pools,
    stack: &Stack,
    connection: &Connection,
) -> anyhow::Result<Report> {
    let http = reqwest::Client::new();
    let names = stack.config.names();

    // The floor and the stack run side by side; their latency phases take turns.
    eprintln!("berth-bench: starting the floor");
    let floor_queue = format!("{namespace}.floor");
    let target = floor::Target {
        archives_url: format!(
            "{}devel/~{}/+archive/ubuntu/",
            stack.fake.api_root(),
            stack.config.store.owner
        ),
        ppas: (1..=stack::FLOOR_PPAS)
            .map(|i| format!("ppa-{}", pools.ppa_slots() + i))
            .collect(),
        signer: berth::store::Credentials::from_file(
            stack
                .config
                .store
                .credentials_file
                .as_deref()
                .context("no credentials file")?,
        )?
        .signer(),
    };
    let floor = floor::Floor::start(
        &options.amqp_url,
        &stack.config.broker_tls()?,
        floor_queue,
        target,
    )
    .await?;
    let url = format!("http://{}/floor", floor.addr);
    eprintln!("berth-bench: starting the assigner and the PPA workers");
    let mut assigner = stack.assigner()?;
    client::wait_ready(&http, &stack.base, stack::START_DEADLINE).await?;
    let mut workers = stack.ppa_workers()?;
    let log = stack.log("workers-ppa");
    for pool in [stack::SMALL, stack::LARGE] {
        let waited = wait_pool(connection, stack, pool, stack::START_DEADLINE).await;
        workers.check_alive("berth-worker", &log)?;
        waited?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(assigner.pid()).map(|r| r.0).unwrap_or(f64::NAN);

    eprintln!("berth-bench: acquire latency, taking turns with the floor");
    wait_pool(connection, stack, stack::SMALL, Duration::from_secs(60)).await?;
    let pids = [("assigner", assigner.pid()), ("workers", workers.pid())];
    let (floor_phase, stack_phase) = latency_phases(&http, &url, stack, &pids, options.phase).await;
    floor.stop().await;

    let mut cycle_runs = Vec::new();
    for (pool, slots) in [(stack::SMALL, pools.small), (stack::LARGE, pools.large)] {
        eprintln!("berth-bench: full cycles, {slots} slots");
        wait_pool(connection, stack, pool, Duration::from_secs(60)).await?;
        cycle_runs.push(
            cycles::run(
                connection,
                &names,
                &http,
                &stack.base,
                pool,
                slots,
                options.cycle,
            )
            .await?,
        );
    }
    wait_pool(connection, stack, stack::SMALL, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_after_load = rss_mib(assigner.pid()).map(|r| r.0).unwrap_or(f64::NAN);

    eprintln!("berth-bench: assigner restarts");
    let mut ready_ms = Vec::new();
    let mut first_acquire_ms = Vec::new();
    for _ in 0..options.restarts {
        assigner.kill();
        assigner = stack.assigner()?;
        let started = assigner.started;
        client::wait_ready(&http, &stack.base, Duration::from_secs(30)).await?;
        ready_ms.push(measure::millis(started.elapsed()));
        let held = client::acquire(&http, &stack.base, stack::SMALL)
            .await
            .map_err(anyhow::Error::msg)?;
        first_acquire_ms.push(measure::millis(started.elapsed()));
        client::release(&http, &stack.base, &held)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    workers.kill();

    let scale = if options.scale_slots > 0 {
        eprintln!(
            "berth-bench: scale, {} slots then {} slots",
            pools.scale_base, pools.scale
        );
        let [base, large] = scale::compare(
            stack,
            connection,
            &http,
            [
                (stack::SCALE_BASE, pools.scale_base),
                (stack::SCALE, pools.scale),
            ],
            1,
            options.phase,
        )
        .await?;
        Some(Scale { base, large })
    } else {
        None
    };
    assigner.kill();

    let mut report = Report {
        namespace: namespace.to_owned(),
        release_build: !cfg!(debug_assertions),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        setup: Setup {
            assigner: "separate `berth assigner` process",
            workers: "separate `berth-worker` processes (one per pool)",
            store: "fake Launchpad in the bench process, deletions at once; scale runs: --fake (in memory)",
            floor: "HTTP server and consumer in the bench process, on two broker connections",
            phase_secs: options.phase.as_secs_f64(),
            cycle_secs: options.cycle.as_secs_f64(),
        },
        floor: floor_phase,
        stack: stack_phase,
        cycles: cycle_runs,
        assigner: AssignerFigures {
            idle_rss_mib: idle_rss,
            idle_rss_after_load_mib: idle_rss_after_load,
            restart_ready_ms: ready_ms,
            restart_first_acquire_ms: first_acquire_ms,
        },
        scale,
        ratios: Ratios::default(),
        targets: Vec::new(),
    };
    report.judge();
    Ok(report)
}

/// How many turns the floor and the stack take in each latency phase.
pub(crate) const TURNS: u32 = 5;

/// The latency phases, 1 client then 16, of the floor and of the stack, taking turns in
/// [`TURNS`] slices each so that both see the same machine: on a shared host its speed
/// drifts within minutes, and figures taken minutes apart would carry the drift into their
/// ratios. CPU is metered over the 16-client slices, per process (`stack_pids` and the
/// broker for the stack, the bench and the broker for the floor).
async fn latency_phases(
    http: &reqwest::Client,
    floor_url: &str,
    stack: &Stack,
    stack_pids: &[(&str, u32)],
    phase: Duration,
) -> (Phase, Phase) {
    let slice = phase / TURNS;
    let mut phases = Vec::new();
    for clients in [1, 16] {
        let (mut floor_cpu, mut stack_cpu) = (CpuMeter::new(&[]), CpuMeter::new(stack_pids));
        let (mut floor_runs, mut stack_runs) = (Vec::new(), Vec::new());
        for _ in 0..TURNS {
            floor_cpu.resume();
            floor_runs.push(floor_run(http, floor_url, clients, slice).await);
            floor_cpu.pause();
            stack_cpu.resume();
            stack_runs.push(acquire_run(stack, http, clients, slice).await);
            stack_cpu.pause();
        }
        let floor = LoopResult::of(clients, floor_runs);
        let stack = LoopResult::of(clients, stack_runs);
        let cpu = (
            floor_cpu.per_op(floor.latency.count),
            stack_cpu.per_op(stack.latency.count),
        );
        phases.push((floor, stack, cpu));
    }
    let (floor_16, stack_16, (floor_cpu, stack_cpu)) = phases.pop().expect("16 clients");
    let (floor_1, stack_1, _) = phases.pop().expect("1 client");
    (
        Phase {
            one_client: floor_1,
            sixteen_clients: floor_16,
            sixteen_clients_cpu: floor_cpu,
        },
        Phase {
            one_client: stack_1,
            sixteen_clients: stack_16,
            sixteen_clients_cpu: stack_cpu,
        },
    )
}

async fn floor_run(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    duration: Duration,
) -> measure::Run {
    let (http, url) = (http.clone(), url.to_owned());
    measure::closed_loop_run(clients, duration, move |_| {
        let (http, url) = (http.clone(), url.clone());
        async move { floor::call(&http, &url).await }
    })
    .await
}

/// Acquire (timed) then release (through the assigner) on the small pool, back to back.
async fn acquire_run(
    stack: &Stack,
    http: &reqwest::Client,
    clients: usize,
    duration: Duration,
) -> measure::Run {
    let (http, base) = (http.clone(), stack.base.clone());
    measure::closed_loop_run(clients, duration, move |_| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let started = Instant::now();
            let held = client::acquire(&http, &base, stack::SMALL).await?;
            let latency = started.elapsed();
            client::release(&http, &base, &held).await?;
            Ok(latency)
        }
    })
    .await
}

/// Waits until the workers of `pool` are up (see [`client::wait_workers`]), then a moment
/// more for slots released by an earlier phase to be cleaned (deletions are instant here).
async fn wait_pool(
    connection: &Connection,
    stack: &Stack,
    pool: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let slots = stack
        .config
        .pool(pool)
        .map(|p| p.slots.clone())
        .unwrap_or_default();
    let names = stack.config.names();
    client::wait_workers(connection, &names, pool, &slots, deadline).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// Deletes every queue and the exchange of the run's namespace (best effort), on a few
/// channels at once.
async fn cleanup(connection: &Connection, stack: &Stack) {
    let names = stack.config.names();
    let mut queues: Vec<String> = stack
        .config
        .pools
        .iter()
        .flat_map(|p| names.assign_queues(&p.name))
        .collect();
    queues.extend(stack.all_slots().map(|s| names.slot_queue(s)));
    queues.push(names.dead_queue());
    queues.push(names.history_queue());
    queues.push(format!("{}.floor", names.namespace()));
    const CHANNELS: usize = 8;
    let deletes = (0..CHANNELS).map(|k| {
        let queues = &queues;
        async move {
            let Ok(mut channel) = connection.create_channel().await else {
                return;
            };
            for queue in queues.iter().skip(k).step_by(CHANNELS) {
                if !channel.status().connected() {
                    match connection.create_channel().await {
                        Ok(fresh) => channel = fresh,
                        Err(_) => return,
                    }
                }
                let _ = channel
                    .queue_delete(queue.as_str().into(), Default::default())
                    .await;
            }
        }
    });
    futures::future::join_all(deletes).await;
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(names.events_exchange().into(), Default::default())
            .await;
    }
}
