//! `berth dev`: the whole stack on one machine (DESIGN §4) — a fake Launchpad with a pool
//! `ppa` of N PPAs, one worker process per slot (each serving its metrics on a port of its
//! own), and the assigner — against the local broker. It prints how to acquire a slot with
//! curl and where the metrics are; Ctrl-C (or SIGTERM) stops all of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::access::{AuthMode, ClientConfig, Role};
use crate::assigner;
use crate::config::{Config, DEFAULT_AMQP_URL, DEFAULT_NAMESPACE};
use crate::fake::{FakeConfig, FakeLaunchpad};

/// Flags of `berth dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// How many PPAs (slots) the pool `ppa` has.
    #[arg(long, env = "BERTH_DEV_SLOTS", default_value_t = 4)]
    pub slots: usize,
    /// Where the assigner listens.
    #[arg(long, env = "BERTH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the fake Launchpad listens.
    #[arg(long, env = "BERTH_DEV_STORE_LISTEN", default_value = "127.0.0.1:8081")]
    pub store_listen: SocketAddr,
    /// Where the worker processes serve `/metrics`: the worker of the N-th slot on this port
    /// + N - 1 (port 0: any free port, which each worker's log says).
    #[arg(
        long,
        env = "BERTH_DEV_WORKER_METRICS_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub worker_metrics_listen: SocketAddr,
    /// AMQP URL of the RabbitMQ broker.
    #[arg(long, env = "BERTH_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// Prefix of every queue and exchange name.
    #[arg(long, env = "BERTH_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Check API tokens (`[auth] mode = "tokens"`): prints a fresh operator token and a
    /// client token at start, and refuses requests without one.
    #[arg(long, env = "BERTH_DEV_AUTH")]
    pub auth: bool,
}

/// The tokens of `berth dev --auth`: (operator, client).
struct DevTokens {
    operator: String,
    client: String,
}

/// Runs `berth dev` until SIGINT or SIGTERM.
pub async fn run_cli(args: DevArgs) -> anyhow::Result<ExitCode> {
    if args.slots == 0 {
        anyhow::bail!("--slots must be at least 1");
    }
    let cancel = crate::shutdown::signal();
    let fake_config = FakeConfig {
        owner: "berth-ci".into(),
        ppas: args.slots,
        ..FakeConfig::default()
    };
    let fake = FakeLaunchpad::start(args.store_listen, fake_config).await.with_context(|| {
        format!(
            "cannot start the fake Launchpad on {} (is another `berth dev` running? --store-listen picks another address)",
            args.store_listen
        )
    })?;
    // Holds the generated config and credentials; removed when dropped. Its name carries
    // the pid, so the workers' command lines say which `berth dev` they belong to.
    let scratch = tempfile::Builder::new()
        .prefix(&format!("berth-dev-{}-", std::process::id()))
        .tempdir()
        .context("cannot create a directory for the dev configuration")?;
    let (config, config_file, tokens) = write_config(&args, &fake.api_root(), scratch.path())?;
    let listen = config.listen;
    let worker_metrics = worker_metrics(&config);
    let result = assigner::serve_with(config, Some(config_file), cancel.clone(), |addr| {
        tokio::spawn(announce_when_ready(
            addr,
            fake.api_root(),
            args.slots,
            worker_metrics,
            tokens,
            cancel.clone(),
        ));
    })
    .await
    .with_context(|| format!("cannot run the assigner on {listen}"));
    fake.shutdown().await;
    drop(scratch);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the dev configuration and a dummy credentials file (the fake accepts any
/// well-formed signature); with `--auth`, the configuration lets in two fresh tokens.
fn write_config(
    args: &DevArgs,
    store_root: &str,
    dir: &Path,
) -> anyhow::Result<(Config, PathBuf, Option<DevTokens>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let credentials = dir.join("credentials");
    crate::secret_file::write_secret_file(
        &credentials,
        "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = dev-token\naccess_secret = dev-secret\n",
    )?;
    let mut config = Config::dev(args.slots);
    config.amqp_url = args.amqp_url.clone();
    config.namespace = args.namespace.clone();
    config.listen = args.listen;
    config.supervise = true;
    config.store.api_root = store_root.to_owned();
    config.store.credentials_file = Some(credentials);
    // The fake deletes at once: poll often so a released slot is free again quickly.
    config.worker.clean_poll_millis = 100;
    config.worker.metrics_listen = Some(args.worker_metrics_listen);
    let tokens = args.auth.then(|| {
        let client = |name: &str, role| {
            let token = crate::lease::new_token();
            let entry = ClientConfig::new(name, &token, role);
            (token, entry)
        };
        let (operator, operator_entry) = client("dev-operator", Role::Operator);
        let (client, client_entry) = client("dev-client", Role::Client);
        config.auth.mode = AuthMode::Tokens;
        config.auth.clients = vec![operator_entry, client_entry];
        DevTokens { operator, client }
    });
    config.validate()?;
    let file = dir.join("berth.toml");
    std::fs::write(&file, toml::to_string(&config)?)?;
    Ok((config, file, tokens))
}

/// Where each worker process serves its metrics, by slot (the scheme of
/// [`Config::worker_metrics_addr`]); `None` for any free port.
fn worker_metrics(config: &Config) -> Option<Vec<(String, SocketAddr)>> {
    let base = config.worker.metrics_listen?;
    if base.port() == 0 {
        return None;
    }
    let slots = config.pools.iter().flat_map(|p| p.slots.iter());
    // `validate` has checked that every slot's port fits.
    let addrs = slots
        .filter_map(|slot| Some((slot.clone(), config.worker_metrics_addr(base, slot)?)))
        .collect();
    Some(addrs)
}

/// Prints how to use the stack once the assigner is ready.
async fn announce_when_ready(
    addr: SocketAddr,
    store_root: String,
    slots: usize,
    worker_metrics: Option<Vec<(String, SocketAddr)>>,
    tokens: Option<DevTokens>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/readyz");
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if let Ok(response) = http.get(&url).timeout(Duration::from_secs(1)).send().await
            && response.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "berth dev: fake Launchpad at {store_root} with pool \"ppa\" of {slots} slots (ppa-1 … ppa-{slots}); assigner at http://{addr}"
    );
    let bearer = match &tokens {
        Some(tokens) => {
            println!("API tokens (checked; every /v1/ request needs one):");
            println!("  operator (dev-operator): {}", tokens.operator);
            println!("  client (dev-client):     {}", tokens.client);
            println!(
                "  for the berth commands: export BERTH_TOKEN={}",
                tokens.client
            );
            format!(" -H 'authorization: Bearer {}'", tokens.client)
        }
        None => String::new(),
    };
    println!("Acquire a slot:");
    println!(
        "  curl -X POST {addr}/v1/pools/ppa/acquire{bearer} -H 'content-type: application/json' -d '{{\"owner\":\"me\"}}'"
    );
    println!("Status: curl{bearer} {addr}/v1/pools   Metrics: curl {addr}/metrics");
    println!("Web page: http://{addr}/");
    match worker_metrics {
        Some(workers) => {
            println!("Worker metrics (one process per slot):");
            for (slot, at) in workers {
                println!("  {slot}: http://{at}/metrics");
            }
        }
        None => println!("Worker metrics: on free ports, which each worker's log says"),
    }
    println!("Stop: Ctrl-C");
}
