//! The fake Launchpad (DESIGN §5): a real HTTP server speaking the subset of the Launchpad
//! web service berth uses (docs/launchpad.md), plus `/_fake/` endpoints to add
//! uploads, inject faults and look at its state.
//!
//! Tests start it in-process on port 0 with [`FakeLaunchpad::start`]; `berth fake-launchpad`
//! ([`run_cli`]) and `berth dev` serve it on a fixed address.

mod admin;
mod cli;
mod conn;
mod credentials;
mod faults;
mod oauth;
mod routes;
mod state;
mod tally;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cli::{FakeLaunchpadArgs, run_cli};
pub use credentials::CredentialsError;
pub use faults::Faults;
pub use state::{DeletionRecord, WriteRecord};

use conn::{SeverableListener, Severance};
use state::{FakeState, Shared, Status, lock};
use wire::Links;

/// How long [`FakeLaunchpad::shutdown`] waits for open requests before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the fake serves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The PPAs' owner, without `~`.
    pub owner: String,
    /// Serve PPAs `ppa-1` … `ppa-N`.
    pub ppas: usize,
    /// How long after `requestDeletion` a publication shows as `Deleted`.
    pub deletion_delay: Duration,
    /// The default page size of collections (`ws.size` overrides it, up to 300).
    pub page_size: usize,
    /// When set, writes must be signed with exactly these credentials; otherwise any
    /// well-formed PLAINTEXT header is accepted.
    pub credentials: Option<FakeCredentials>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            owner: "berth-ci".into(),
            ppas: 4,
            deletion_delay: Duration::ZERO,
            page_size: 75,
            credentials: None,
        }
    }
}

/// The one token the fake accepts on writes. The consumer secret is empty, as with
/// launchpadlib, so the expected signature is `&` + `token_secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct FakeCredentials {
    pub consumer_key: String,
    pub token: String,
    pub token_secret: String,
}

impl std::fmt::Debug for FakeCredentials {
    /// Keeps the token and its secret out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCredentials")
            .field("consumer_key", &self.consumer_key)
            .finish_non_exhaustive()
    }
}

/// What every handler gets: the shared state and the address the server listens on (the
/// host of links when a request names none).
#[derive(Clone)]
pub(crate) struct App {
    shared: Shared,
    addr: SocketAddr,
}

impl FromRef<App> for Shared {
    fn from_ref(app: &App) -> Shared {
        app.shared.clone()
    }
}

/// A running fake Launchpad. Dropping the handle stops the server too, without waiting.
#[derive(Debug)]
pub struct FakeLaunchpad {
    addr: SocketAddr,
    shared: Shared,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeLaunchpad {
    /// Binds `listen` (port 0 picks a free port) and serves in a background task.
    pub async fn start(listen: SocketAddr, config: FakeConfig) -> std::io::Result<FakeLaunchpad> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(FakeState::new(config)));
        let app = App {
            shared: shared.clone(),
            addr,
        };
        let launchpad = routes::router()
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                faults::inject,
            ))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                tally::count,
            ));
        let router: Router = launchpad.merge(admin::router()).with_state(app);
        let stop = CancellationToken::new();
        let serve = axum::serve(
            SeverableListener(listener),
            router.into_make_service_with_connect_info::<Severance>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "fake Launchpad server failed");
            }
        });
        Ok(FakeLaunchpad {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store `api_root`, `http://ADDR/`; the API itself is under `devel`.
    pub fn api_root(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn links(&self, state: &FakeState) -> Links {
        Links::for_host(&self.addr.to_string(), &state.owner)
    }

    /// Adds a `Published` source publication to `ppa` and returns its `self_link`.
    ///
    /// # Panics
    /// If there is no PPA named `ppa`: a mistake in the calling test.
    pub fn add_upload(&self, ppa: &str, package: &str, version: &str) -> String {
        let mut state = lock(&self.shared);
        let source = state
            .add_source(ppa, package, version, Status::Published)
            .unwrap_or_else(|| panic!("the fake Launchpad has no PPA named {ppa:?}"));
        self.links(&state).source(ppa, source.id)
    }

    /// Replaces the faults in force (rates outside 0..=1 are clamped).
    pub fn set_faults(&self, mut faults: Faults) {
        for rate in [
            &mut faults.error_rate,
            &mut faults.drop_rate,
            &mut faults.conflict_rate,
        ] {
            *rate = if rate.is_nan() {
                0.0
            } else {
                rate.clamp(0.0, 1.0)
            };
        }
        lock(&self.shared).faults = faults;
    }

    /// The same JSON as `GET /_fake/state`, links on the bound address.
    pub fn dump(&self) -> serde_json::Value {
        let state = lock(&self.shared);
        admin::dump(&state, &self.links(&state))
    }

    /// Every successful description write so far, in order.
    pub fn history(&self) -> Vec<WriteRecord> {
        lock(&self.shared).history().to_vec()
    }

    /// Every `requestDeletion` of an existing publication so far, in order of arrival.
    pub fn deletions(&self) -> Vec<DeletionRecord> {
        lock(&self.shared).deletions().to_vec()
    }

    /// How many requests the Launchpad routes received so far, by method, endpoint and
    /// named operation (`GET archive ws.op=getPublishedSources`, `PATCH archive`, …).
    pub fn requests(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.shared).requests.clone()
    }

    /// The current description of `ppa`.
    pub fn description(&self, ppa: &str) -> Option<String> {
        lock(&self.shared)
            .archive(ppa)
            .map(|a| a.description.clone())
    }

    /// Writes a description as if someone else had (new ETag, recorded in the history).
    ///
    /// # Panics
    /// If there is no PPA named `ppa`: a mistake in the calling test.
    pub fn set_description(&self, ppa: &str, text: &str) {
        if lock(&self.shared)
            .write_description(ppa, None, text)
            .is_err()
        {
            panic!("the fake Launchpad has no PPA named {ppa:?}");
        }
    }

    /// Stops accepting connections and waits (a bounded time) for open requests to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                tracing::warn!("fake Launchpad did not stop in time; aborting it");
                abort.abort();
            }
        }
    }
}

impl Drop for FakeLaunchpad {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
