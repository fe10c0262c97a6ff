//! `berth-bench`: measures the stack against the bare message flow on the same broker (see
//! the `berth_bench` library). Prints a table on stderr and one JSON object on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use berth::config::QueueType;
use berth_bench::BenchOptions;
use berth_bench::broker_cost::BrokerCostOptions;
use berth_bench::store_calls::StoreCallsOptions;

/// Acquire latency, throughput and slot scale of berth, each next to the bare message flow.
/// Without a subcommand: the whole bench on the broker of `--amqp-url`.
#[derive(Debug, Parser)]
#[command(name = "berth-bench", version, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Measure>,
    /// AMQP URL of the RabbitMQ broker, or the comma-separated URLs of a cluster's nodes.
    #[arg(long, global = true, env = "BERTH_AMQP_URL", default_value = berth::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// PEM file of CA certificates an `amqps://` broker's certificate may chain to (besides
    /// the system's roots).
    #[arg(long, global = true, env = "BERTH_AMQP_CA_FILE")]
    amqp_ca_file: Option<PathBuf>,
    /// Directory of the `berth` and `berth-worker` binaries (default: next to this one).
    #[arg(long, global = true, env = "BERTH_BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Seconds of each latency phase.
    #[arg(long, default_value_t = 10.0)]
    phase_secs: f64,
    /// Seconds of each full-cycle run.
    #[arg(long, default_value_t = 15.0)]
    cycle_secs: f64,
    /// Slots of the small full-cycle pool (also the pool of the latency phases).
    #[arg(long, default_value_t = 64)]
    small_slots: usize,
    /// Slots of the large full-cycle pool.
    #[arg(long, default_value_t = 256)]
    large_slots: usize,
    /// Slots of the fake worker process the scale run compares with.
    #[arg(long, default_value_t = 16)]
    scale_base_slots: usize,
    /// Slots of the one fake worker process of the scale run (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    scale_slots: usize,
    /// How many times the assigner is killed and started again.
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Also write the JSON object to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

/// The scale measurements of docs/scale.md, each printing one JSON object.
#[derive(Debug, Subcommand)]
enum Measure {
    /// Broker cost per node of each per-slot object, and recovery times, on the bench's own
    /// RabbitMQ node or cluster on loopback (never the shared broker); then a
    /// `berth-worker --fake` process of `--worker-slots` slots on a fresh one.
    BrokerCost {
        /// Nodes: 1, or a cluster (3).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Counts of each classic kind, consumers and channels, ascending.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        counts: Vec<usize>,
        /// Counts of quorum queues, ascending (on a cluster only).
        #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
        quorum_counts: Vec<usize>,
        /// Skip the node-loss and full-restart probes of the queues.
        #[arg(long)]
        no_recovery: bool,
        /// Skip the object kinds and their recovery probes: only the worker run.
        #[arg(long, conflicts_with_all = ["counts", "quorum_counts", "no_recovery"])]
        worker_only: bool,
        /// Seconds to let the broker settle before each reading.
        #[arg(long, default_value_t = 3.0)]
        settle_secs: f64,
        /// Slots of the fake worker process (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        worker_slots: usize,
        /// Give the worker every node as a broker list (comma-separated `BERTH_AMQP_URL`;
        /// needs a berth that reads one), and measure node loss as failover without
        /// starting the lost node again.
        #[arg(long)]
        broker_list: bool,
        /// Type of the worker's durable queues (`queue_type`): `classic`, or `quorum` (a
        /// cluster's recommended type: a quorum control queue per slot, quorum pool queues).
        #[arg(long, default_value = "classic", value_parser = parse_queue_type)]
        queue_type: QueueType,
    },
    /// Launchpad requests per acquire, per release and clean, and per slot per hour.
    StoreCalls {
        #[arg(long, default_value_t = 20)]
        cycles: usize,
        /// Uploads a job leaves in the PPA, deleted by the clean.
        #[arg(long, default_value_t = 3)]
        uploads: usize,
        /// Seconds the slot sits free, then held, for the idle rates.
        #[arg(long, default_value_t = 30.0)]
        idle_secs: f64,
    },
}

/// `--queue-type`: the names of `queue_type` in berth's configuration.
fn parse_queue_type(value: &str) -> Result<QueueType, String> {
    match value {
        "classic" => Ok(QueueType::Classic),
        "quorum" => Ok(QueueType::Quorum),
        other => Err(format!("{other:?}: use classic or quorum")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("berth-bench: built without optimisations; build with --release for figures");
    }
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let json = match args.command {
        None => None,
        Some(Measure::BrokerCost {
            nodes,
            counts,
            quorum_counts,
            no_recovery,
            worker_only,
            settle_secs,
            worker_slots,
            broker_list,
            queue_type,
        }) => {
            let objects = if worker_only {
                None
            } else {
                Some(
                    berth_bench::broker_cost::run(&BrokerCostOptions {
                        nodes,
                        counts,
                        quorum_counts,
                        recovery: !no_recovery,
                        settle: Duration::from_secs_f64(settle_secs),
                    })
                    .await?,
                )
            };
            // A failed worker run is reported next to the object figures, not instead.
            let (worker, worker_error) = if worker_slots > 0 {
                match berth_bench::worker_broker::run(
                    nodes,
                    worker_slots,
                    broker_list,
                    queue_type,
                    &bin_dir,
                )
                .await
                {
                    Ok(worker) => (Some(worker), None),
                    Err(err) => {
                        eprintln!("berth-bench: worker run failed: {err:#}");
                        (None, Some(format!("{err:#}")))
                    }
                }
            } else {
                (None, None)
            };
            Some(serde_json::to_string_pretty(&serde_json::json!({
                "objects": objects,
                "worker": worker,
                "worker_error": worker_error,
            }))?)
        }
        Some(Measure::StoreCalls {
            cycles,
            uploads,
            idle_secs,
        }) => {
            let calls = berth_bench::store_calls::run(&StoreCallsOptions {
                amqp_url: args.amqp_url.clone(),
                amqp_ca_file: args.amqp_ca_file.clone(),
                bin_dir: bin_dir.clone(),
                cycles,
                uploads,
                idle: Duration::from_secs_f64(idle_secs),
            })
            .await?;
            Some(serde_json::to_string_pretty(&calls)?)
        }
    };
    if let Some(json) = json {
        println!("{json}");
        if let Some(path) = args.json {
            std::fs::write(path, &json)?;
        }
        return Ok(());
    }
    let report = berth_bench::run(BenchOptions {
        amqp_url: args.amqp_url,
        amqp_ca_file: args.amqp_ca_file,
        bin_dir,
        phase: Duration::from_secs_f64(args.phase_secs),
        cycle: Duration::from_secs_f64(args.cycle_secs),
        small_slots: args.small_slots,
        large_slots: args.large_slots,
        scale_base_slots: args.scale_base_slots,
        scale_slots: args.scale_slots,
        restarts: args.restarts,
    })
    .await?;
    let json = serde_json::to_string_pretty(&report)?;
    eprintln!("{}", report.table());
    println!("{json}");
    if let Some(path) = args.json {
        std::fs::write(path, &json)?;
    }
    Ok(())
}
