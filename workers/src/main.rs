//! `berth-worker`: hosts slot workers (see the library). Parses flags, sets up logging and
//! signal handling, serves `/metrics` if asked to, and runs the slots until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use berth::store::{LaunchpadStore, MemoryStore, SlotStore};
use berth::telemetry::LogFormat;
use berth_worker::Metrics;
use berth_worker::cli::WorkerArgs;
use berth_worker::fake::FakeStore;

/// How long the slot workers get to settle their messages after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    let args = WorkerArgs::parse();
    init_logging(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth-worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let slots = args.select_slots(&config)?;
    let options = args.worker_options(&config);
    let store: Arc<dyn SlotStore> = if args.fake {
        let memory = MemoryStore::new(&config.store.owner, slots.iter().map(|s| s.slot.clone()));
        Arc::new(FakeStore::new(memory, args.fake_options()))
    } else {
        real_store(&config)?
    };
    let names: Vec<&str> = slots.iter().map(|s| s.slot.as_str()).collect();
    tracing::info!(slots = %names.join(","), fake = args.fake, namespace = %config.namespace, "starting");

    let mut pools: Vec<&str> = slots.iter().map(|s| s.pool.as_str()).collect();
    pools.sort_unstable();
    pools.dedup();
    let metrics = Arc::new(Metrics::new(pools));
    let cancel = berth::shutdown::signal();
    if let Some(addr) = args.metrics_addr(&config, &slots)? {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr} (--metrics-listen)"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "serving metrics at http://{bound}/metrics");
        tokio::spawn(berth_worker::metrics::serve(
            listener,
            metrics.clone(),
            cancel.clone(),
        ));
    }
    let workers = berth_worker::run_slots(
        Arc::new(config),
        slots,
        store,
        options,
        metrics,
        cancel.clone(),
    );
    tokio::pin!(workers);
    tokio::select! {
        result = &mut workers => result?,
        () = async { cancel.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            anyhow::bail!("slot workers did not stop within {DRAIN_TIMEOUT:?}");
        }
    }
    tracing::info!("all slot workers stopped");
    Ok(())
}

/// The Launchpad store of the configuration. Workers write slot records, so they need
/// credentials.
fn real_store(config: &berth::config::Config) -> anyhow::Result<Arc<dyn SlotStore>> {
    let store =
        LaunchpadStore::from_config(&config.store).context("cannot set up the store client")?;
    if !store.can_write() {
        anyhow::bail!(
            "workers write slot records: name a launchpadlib credentials file with \
             --credentials or BERTH_CREDENTIALS (or run with --fake)"
        );
    }
    Ok(Arc::new(store))
}

/// Logs to stderr. lapin logs returned messages whole at `warn` (a returned reply holds a
/// lease token), and every refused exclusive consume at `error` (a standby worker retries
/// every second): keep those quiet unless `RUST_LOG` says otherwise. What matters reaches
/// the worker as an error and is logged by it.
fn init_logging(format: LogFormat) {
    berth::telemetry::init_with_format(
        "info,lapin=error,lapin::channel=off,amq_protocol=warn",
        format,
    );
}
