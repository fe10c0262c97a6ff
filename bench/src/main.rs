//! `berth-bench`: measures the stack against the bare message flow on the same broker (see
//! the `berth_bench` library). Prints a table on stderr and one JSON object on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use berth_bench::BenchOptions;

/// Acquire latency, throughput and slot scale of berth, each next to the bare message flow.
#[derive(Debug, Parser)]
#[command(name = "berth-bench", version, long_about = None)]
struct Args {
    /// AMQP URL of the RabbitMQ broker, or the comma-separated URLs of a cluster's nodes.
    #[arg(long, env = "BERTH_AMQP_URL", default_value = berth::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// Directory of the `berth` and `berth-worker` binaries (default: next to this one).
    #[arg(long, env = "BERTH_BENCH_BIN_DIR")]
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
    #[arg(long)]
    json: Option<PathBuf>,
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
    let report = berth_bench::run(BenchOptions {
        amqp_url: args.amqp_url,
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
