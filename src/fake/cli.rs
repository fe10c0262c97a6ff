//! `berth fake-launchpad`: serve the fake on a fixed address until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{FakeConfig, FakeCredentials, FakeLaunchpad};

/// Flags of `berth fake-launchpad`.
#[derive(Debug, clap::Args)]
pub struct FakeLaunchpadArgs {
    /// Address to listen on (port 0 picks a free one; the log line shows it).
    #[arg(long, env = "BERTH_FAKE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Owner of the PPAs, without `~`.
    #[arg(long, env = "BERTH_FAKE_OWNER", default_value = "berth-ci")]
    pub owner: String,
    /// Serve PPAs ppa-1 … ppa-N.
    #[arg(long, env = "BERTH_FAKE_PPAS", default_value_t = 4)]
    pub ppas: usize,
    /// Milliseconds after `requestDeletion` until a publication shows as Deleted.
    #[arg(long, env = "BERTH_FAKE_DELETION_DELAY_MS", default_value_t = 0)]
    pub deletion_delay_ms: u64,
    /// launchpadlib credentials file: writes must then be signed with its token.
    #[arg(long, env = "BERTH_FAKE_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

/// Runs `berth fake-launchpad` until Ctrl-C or SIGTERM, then shuts down gracefully.
pub async fn run_cli(args: FakeLaunchpadArgs) -> anyhow::Result<ExitCode> {
    let credentials = match &args.credentials {
        Some(path) => Some(
            FakeCredentials::from_file(path)
                .with_context(|| format!("credentials file {}", path.display()))?,
        ),
        None => None,
    };
    let config = FakeConfig {
        owner: args.owner,
        ppas: args.ppas,
        deletion_delay: Duration::from_millis(args.deletion_delay_ms),
        credentials,
        ..FakeConfig::default()
    };
    let owner = config.owner.clone();
    let ppas = config.ppas;
    let fake = FakeLaunchpad::start(args.listen, config)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let root = fake.api_root();
    let urls: Vec<String> = (1..=ppas)
        .map(|n| format!("{root}devel/~{owner}/+archive/ubuntu/ppa-{n}"))
        .collect();
    tracing::info!(
        "fake Launchpad listening on {root} serving ~{owner}: {}",
        urls.join(" ")
    );
    crate::shutdown::signal().cancelled().await;
    tracing::info!("shutting down the fake Launchpad");
    fake.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
