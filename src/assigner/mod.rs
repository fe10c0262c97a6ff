//! The assigner (DESIGN §1, §4): a stateless HTTP service that turns `acquire` into an assign
//! request on the pool's queue and waits for a worker's reply, forwards `renew` and `release`
//! to the slot's control queue, and answers status from the store. It keeps nothing but
//! in-flight requests in memory, so it may be killed and restarted at any moment.
//!
//! [`Application::build`] binds the listener (port 0 in tests) and starts the broker link in
//! the background; [`Application::run_until`] serves until a cancellation token fires.

mod abandoned;
mod api;
mod auth;
mod connection;
mod error;
mod events_stream;
mod feed;
mod history;
mod link;
mod metrics;
mod openapi;
mod page;
mod pending;
mod quota;
mod routes;
mod status;
pub mod supervise;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigArgs};
use crate::store::{LaunchpadStore, SlotStore};

/// How long shutdown waits for open HTTP requests, then for the broker link to close.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// What every handler shares.
pub(crate) struct AppState {
    config: Arc<Config>,
    store: Arc<dyn SlotStore>,
    link: link::Link,
    status: status::StatusCache,
    metrics: Arc<metrics::Metrics>,
    /// The clients by their tokens' hashes (`[auth]`).
    keys: auth::Keys,
    /// The clients' waiting requests and the grants given back for `max_held`.
    quotas: quota::Quotas,
    /// The live events for the web page: one broker consumer, any number of streams.
    feed: feed::Feed,
    /// Fires when the assigner begins to stop: waiting requests answer `503` at once.
    shutdown: CancellationToken,
}

/// A built assigner: listening, connecting to the broker, not yet serving.
pub struct Application {
    listener: TcpListener,
    /// HTTPS when `tls_cert` and `tls_key` are configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    addr: SocketAddr,
    state: Arc<AppState>,
    tracker: TaskTracker,
    link_stop: CancellationToken,
}

impl Application {
    /// Binds `config.listen` and starts connecting to the broker (readiness follows within
    /// moments when the broker is up). `store` is where status and release checks read.
    pub async fn build(config: Config, store: Arc<dyn SlotStore>) -> anyhow::Result<Application> {
        let broker_tls = config.broker_tls()?;
        let https = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let config = Arc::new(config);
        let metrics = Arc::new(metrics::Metrics::new(&config));
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let link_stop = CancellationToken::new();
        let link = link::start(
            connection::LinkConfig {
                amqp_urls: config.broker_urls(),
                tls: broker_tls,
                names: config.names(),
                pools: config.pools.iter().map(|p| p.name.clone()).collect(),
            },
            Arc::clone(&metrics),
            shutdown.clone(),
            link_stop.clone(),
            &tracker,
        );
        let feed = feed::start(link.clone(), config.names(), link_stop.clone(), &tracker);
        let state = Arc::new(AppState {
            status: status::StatusCache::new(Arc::clone(&store), Arc::clone(&config)),
            keys: auth::Keys::new(&config.auth),
            quotas: quota::Quotas::default(),
            config,
            store,
            link,
            metrics,
            feed,
            shutdown,
        });
        Ok(Application {
            listener,
            tls: https,
            addr,
            state,
            tracker,
            link_stop,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel` fires; then answers waiting requests `503`, drains open
    /// connections, sends the releases it still holds and closes the broker connection.
    pub async fn run_until(self, cancel: CancellationToken) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let router = routes::router(Arc::clone(&self.state));
        let stopping = async move {
            cancel.cancelled().await;
            shutdown.cancel();
        };
        let serve: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match self.tls {
                None => {
                    tracing::info!(addr = %self.addr, "assigner listening (HTTP)");
                    Box::pin(
                        axum::serve(self.listener, router)
                            .with_graceful_shutdown(stopping)
                            .into_future(),
                    )
                }
                Some(acceptor) => {
                    tracing::info!(addr = %self.addr, "assigner listening (HTTPS)");
                    let listener = tls::TlsListener::new(self.listener, acceptor)?;
                    Box::pin(
                        axum::serve(listener, router)
                            .with_graceful_shutdown(stopping)
                            .into_future(),
                    )
                }
            };
        let drained = {
            let shutdown = self.state.shutdown.clone();
            tokio::pin!(serve);
            tokio::select! {
                result = &mut serve => Some(result),
                _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_DRAIN).await } => None,
            }
        };
        if drained.is_none() {
            tracing::warn!("open requests did not finish in time; stopping anyway");
        }
        self.link_stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_DRAIN, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("the broker link did not stop in time");
        }
        tracing::info!("assigner stopped");
        drained.unwrap_or(Ok(()))
    }
}

/// Flags of `berth assigner`.
#[derive(Debug, clap::Args)]
pub struct AssignerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on (overrides `listen` of the config file).
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Start and watch one `berth-worker` process per configured slot.
    #[arg(long, env = "BERTH_SUPERVISE")]
    pub supervise: bool,
    /// PEM certificate chain: with --tls-key, serve HTTPS (overrides `tls_cert`).
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert, readable by its owner only (overrides `tls_key`).
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Runs `berth assigner` until SIGINT or SIGTERM.
pub async fn run_cli(args: AssignerArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    config.supervise |= args.supervise;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    }
    let cancel = crate::shutdown::signal();
    serve(config, args.config.config.clone(), cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the assigner of `config` (and its workers when `config.supervise`) until `cancel`.
/// `config_file` is handed to the workers it supervises.
pub async fn serve(
    config: Config,
    config_file: Option<PathBuf>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(config, config_file, cancel, |_| {}).await
}

/// [`serve`], calling `on_listening` with the address once the listener is bound.
pub async fn serve_with(
    config: Config,
    config_file: Option<PathBuf>,
    cancel: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    config.validate()?;
    config
        .auth
        .check_listen(config.listen)
        .map_err(anyhow::Error::msg)?;
    let store = open_store(&config)?;
    let supervise = config.supervise;
    let worker_config = config.clone();
    let app = Application::build(config, store).await?;
    let supervisor = if supervise {
        Some(supervise::Supervisor::start(&worker_config, config_file)?)
    } else {
        None
    };
    on_listening(app.addr());
    let result = app.run_until(cancel).await;
    if let Some(supervisor) = supervisor {
        supervisor.stop().await;
    }
    Ok(result?)
}

/// The store named by the config. The assigner only reads it, so credentials are optional.
fn open_store(config: &Config) -> anyhow::Result<Arc<dyn SlotStore>> {
    Ok(Arc::new(LaunchpadStore::from_config(&config.store)?))
}
