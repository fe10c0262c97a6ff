//! A client of the assigner's HTTP API (DESIGN §4), for Rust tools and for the `berth`
//! commands, which use nothing else.
//!
//! Every call retries what is temporary — the assigner restarting (connection refused or
//! reset), a timeout, `503` with `Retry-After` (broker, worker or store unavailable) — after
//! the pause the assigner asks for or a jittered backoff, within a time budget: the wait of
//! an acquire, [`Client::retry_for`] (30 s by default) for the other calls. Only when the
//! budget is spent does it give the last error. [`Client::on_retry`] hears about each retry.
//!
//! ```no_run
//! # async fn example() -> Result<(), berth::client::ClientError> {
//! use std::time::Duration;
//! use berth::client::Client;
//!
//! let client = Client::new("http://127.0.0.1:8080")
//!     .on_retry(|r| eprintln!("retrying {} in {:?}: {}", r.call, r.delay, r.reason));
//! // Wait up to 10 minutes for a slot of pool `ppa`, hold it for 2 hours.
//! let lease = client.acquire("ppa", "ci-job-42", Some(7200), Some(600)).await?;
//! println!("building in {}", lease.ppa().unwrap_or_default());
//! let renewed = client.renew(&lease.slot, &lease.lease_token, Some(lease.lease_secs)).await?;
//! println!("held until {renewed}");
//! client.release(&lease.slot, &lease.lease_token).await?;
//! # Ok(()) }
//! ```

mod error;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::protocol::Event;

pub use error::{ClientError, EXIT_NO_SLOT, EXIT_NOT_HOLDER};
pub use retry::Retrying;
use retry::{Notify, retrying};

/// How long calls other than acquire keep retrying, unless [`Client::retry_for`] says.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);
/// The budget of an acquire that names no wait: the server's default wait (DESIGN §4).
pub const DEFAULT_WAIT_SECS: u64 = 60;
/// The longest one renew, release or status request may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past its wait an acquire request may take (the server answers within the wait
/// plus half a second).
const ACQUIRE_SLACK: Duration = Duration::from_secs(30);

/// A slot handed out by acquire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub slot: String,
    pub pool: String,
    pub lease_token: String,
    pub lease_expires: DateTime<Utc>,
    /// The lease's length: renewing for as long again keeps it. From the assigner's answer,
    /// else the length asked for, else counted from `lease_expires`.
    #[serde(default)]
    pub lease_secs: u64,
    #[serde(default)]
    pub resource: serde_json::Value,
}

impl Lease {
    /// The PPA as `dput`/`add-apt-repository` name it (`ppa:OWNER/NAME`), if the slot is one.
    pub fn ppa(&self) -> Option<String> {
        let reference = self.resource.get("reference")?.as_str()?;
        if reference.starts_with("ppa:") {
            return Some(reference.to_owned());
        }
        // Launchpad's own form: `~OWNER/ubuntu/NAME`.
        let mut parts = reference.trim_start_matches('~').split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(owner), Some(_distro), Some(name)) => Some(format!("ppa:{owner}/{name}")),
            _ => None,
        }
    }
}

/// What an acquire asks for besides the pool and the owner; `None` takes the server's
/// default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcquireOptions {
    /// How long the lease lasts without renewing, in seconds.
    pub lease_secs: Option<u64>,
    /// How long to wait for a slot to come free, in seconds; also the retry budget.
    pub wait_secs: Option<u64>,
    /// 0–9 (default 0): among the requests waiting for a slot of the pool, a higher one is
    /// served first.
    pub priority: Option<u8>,
}

/// What `GET /v1/pools` and `GET /v1/slots` answered, as JSON (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// When the store was read.
    pub as_of: serde_json::Value,
    pub pools: serde_json::Value,
    pub slots: serde_json::Value,
}

/// The assigner at one base URL, with the retry policy of this module.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    budget: Duration,
    notify: Notify,
    /// The API token sent as `Authorization: Bearer` (DESIGN §4 "Clients and roles").
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &crate::redact::redact_url(&self.base))
            .field("budget", &self.budget)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the assigner at `base` (`http://127.0.0.1:8080`, or `https://…` with a
    /// certificate the system's roots accept).
    pub fn new(base: &str) -> Client {
        let http = Client::http_builder()
            .build()
            .expect("a default HTTP client builds");
        Client::over(http, base)
    }

    /// A client of the assigner at `base` that also accepts a certificate chaining to the CA
    /// certificates (PEM) of `ca_file` (`--ca-file`): an assigner serving HTTPS with a
    /// private CA's certificate.
    pub fn with_ca_file(base: &str, ca_file: &std::path::Path) -> Result<Client, ClientError> {
        let bad = |reason: String| {
            ClientError::Unexpected(format!("CA file {}: {reason}", ca_file.display()))
        };
        let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        let http = Client::http_builder()
            .tls_certs_merge(certs)
            .build()
            .map_err(|e| bad(error_chain(&e)))?;
        Ok(Client::over(http, base))
    }

    fn http_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
    }

    fn over(http: reqwest::Client, base: &str) -> Client {
        Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            budget: DEFAULT_RETRY_BUDGET,
            notify: Arc::new(|_: &Retrying| {}),
            token: None,
        }
    }

    /// Sends `token` with every call (`Authorization: Bearer`), for an assigner with
    /// `[auth] mode = "tokens"`.
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(Arc::from(token));
        self
    }

    /// How long renew, release and status keep retrying temporary failures.
    pub fn retry_for(mut self, budget: Duration) -> Client {
        self.budget = budget;
        self
    }

    /// Calls `notify` before each retry.
    pub fn on_retry(mut self, notify: impl Fn(&Retrying) + Send + Sync + 'static) -> Client {
        self.notify = Arc::new(notify);
        self
    }

    /// `POST /v1/pools/{pool}/acquire`: a slot for `owner`, waiting up to `wait_secs` (the
    /// server's default when `None`) for one to come free, and retrying temporary failures
    /// within that wait; each retry asks the assigner to wait only for what is left.
    pub async fn acquire(
        &self,
        pool: &str,
        owner: &str,
        lease_secs: Option<u64>,
        wait_secs: Option<u64>,
    ) -> Result<Lease, ClientError> {
        let options = AcquireOptions {
            lease_secs,
            wait_secs,
            priority: None,
        };
        self.acquire_with(pool, owner, options).await
    }

    /// [`Client::acquire`] with every option, the priority too:
    /// `client.acquire_with("ppa", "job", AcquireOptions { priority: Some(5), ..Default::default() })`.
    pub async fn acquire_with(
        &self,
        pool: &str,
        owner: &str,
        options: AcquireOptions,
    ) -> Result<Lease, ClientError> {
        let AcquireOptions {
            lease_secs,
            wait_secs,
            priority,
        } = options;
        let budget = Duration::from_secs(wait_secs.unwrap_or(DEFAULT_WAIT_SECS));
        let url = format!("{}/v1/pools/{pool}/acquire", self.base);
        let deadline = Instant::now() + budget;
        let mut lease: Lease = retrying("acquire", deadline, &self.notify, |tries, deadline| {
            let mut body = json!({"owner": owner});
            if let Some(lease) = lease_secs {
                body["lease_secs"] = lease.into();
            }
            // Left out when not asked for: an assigner older than priorities refuses it.
            if let Some(priority) = priority {
                body["priority"] = priority.into();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // The first try asks for what the caller asked; a retry for what is left.
            let wait = match tries {
                0 => wait_secs,
                _ => Some(left.as_secs()),
            };
            if let Some(wait) = wait {
                body["wait_secs"] = wait.into();
            }
            let timeout = Duration::from_secs(wait.unwrap_or(DEFAULT_WAIT_SECS)) + ACQUIRE_SLACK;
            let request = self.http.post(&url).json(&body).timeout(timeout);
            let url = url.clone();
            async move { read_json(self.send(request, &url).await?).await }
        })
        .await?;
        if lease.lease_secs == 0 {
            lease.lease_secs = lease_secs.unwrap_or_else(|| {
                let left = (lease.lease_expires - Utc::now())
                    .num_milliseconds()
                    .max(1000);
                // Whole seconds, rounded: the lease was given a moment ago.
                ((left + 500) / 1000) as u64
            });
        }
        Ok(lease)
    }

    /// `POST /v1/slots/{slot}/renew`: the new `lease_expires`. `lease_secs` is the new
    /// length from now; `None` takes the server's default (pass the lease's own
    /// [`Lease::lease_secs`] to keep its length).
    pub async fn renew(
        &self,
        slot: &str,
        token: &str,
        lease_secs: Option<u64>,
    ) -> Result<DateTime<Utc>, ClientError> {
        let mut body = json!({"lease_token": token});
        if let Some(lease) = lease_secs {
            body["lease_secs"] = lease.into();
        }
        let url = format!("{}/v1/slots/{slot}/renew", self.base);
        #[derive(Deserialize)]
        struct Renewed {
            lease_expires: DateTime<Utc>,
        }
        let renewed: Renewed = self
            .call("renew", |deadline| {
                let request = self
                    .http
                    .post(&url)
                    .json(&body)
                    .timeout(call_timeout(deadline));
                async { read_json(self.send(request, &url).await?).await }
            })
            .await?;
        Ok(renewed.lease_expires)
    }

    /// `POST /v1/slots/{slot}/release`. A release retried after a try whose answer was lost
    /// may find the slot released already (`409 not_held`): that counts as done.
    pub async fn release(&self, slot: &str, token: &str) -> Result<(), ClientError> {
        let url = format!("{}/v1/slots/{slot}/release", self.base);
        let body = json!({"lease_token": token});
        let mut retried = false;
        self.call("release", |deadline| {
            let first = !std::mem::replace(&mut retried, true);
            let request = self
                .http
                .post(&url)
                .json(&body)
                .timeout(call_timeout(deadline));
            let url = url.clone();
            async move {
                match self.send(request, &url).await {
                    Ok(_) => Ok(()),
                    Err(ClientError::Api { code, .. }) if !first && code == "not_held" => Ok(()),
                    Err(err) => Err(err),
                }
            }
        })
        .await
    }

    /// `GET /v1/pools` and `GET /v1/slots`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        let pools = self.get_json("v1/pools").await?;
        let slots = self.get_json("v1/slots").await?;
        Ok(Status {
            as_of: slots["as_of"].clone(),
            pools: pools["pools"].clone(),
            slots: slots["slots"].clone(),
        })
    }

    /// `POST /v1/slots/{slot}/{action}` (`disable`, `enable`, `reclaim`, `clean`): an
    /// operator action, handed to the slot's worker (`202`). `now` is for disable only.
    pub async fn slot_action(
        &self,
        slot: &str,
        action: &str,
        reason: Option<&str>,
        by: Option<&str>,
        now: bool,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/slots/{slot}/{action}", self.base);
        let mut body = json!({});
        if let Some(reason) = reason {
            body["reason"] = reason.into();
        }
        if let Some(by) = by {
            body["by"] = by.into();
        }
        if now {
            body["now"] = true.into();
        }
        self.call("slot action", |deadline| {
            let request = self
                .http
                .post(&url)
                .json(&body)
                .timeout(call_timeout(deadline));
            let url = url.clone();
            async move { self.send(request, &url).await.map(drop) }
        })
        .await
    }

    /// `GET /v1/slots/{slot}`: one slot, read from the store (DESIGN §4).
    pub async fn slot(&self, slot: &str) -> Result<serde_json::Value, ClientError> {
        self.get_json(&format!("v1/slots/{slot}")).await
    }

    /// `GET /v1/slots/{slot}/history` (with `slot`) or `GET /v1/history` (`pool` filters):
    /// the newest `limit` events since `since` (RFC 3339 or a duration back, `1d`), oldest
    /// first; the server's defaults for what is `None` (DESIGN §4).
    pub async fn history(
        &self,
        slot: Option<&str>,
        pool: Option<&str>,
        since: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Event>, ClientError> {
        let url = match slot {
            Some(slot) => format!("{}/v1/slots/{slot}/history", self.base),
            None => format!("{}/v1/history", self.base),
        };
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(pool) = pool {
            query.push(("pool", pool.to_owned()));
        }
        if let Some(since) = since {
            query.push(("since", since.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.call("history", |deadline| {
            let request = self
                .http
                .get(&url)
                .query(&query)
                .timeout(call_timeout(deadline));
            async { read_json(self.send(request, &url).await?).await }
        })
        .await
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/{path}", self.base);
        self.call("status", |deadline| {
            let request = self.http.get(&url).timeout(call_timeout(deadline));
            async { read_json(self.send(request, &url).await?).await }
        })
        .await
    }

    /// One call with the client's retry budget.
    async fn call<T, F, Fut>(&self, name: &'static str, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(Instant) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + self.budget;
        retrying(name, deadline, &self.notify, |_, deadline| {
            attempt(deadline)
        })
        .await
    }

    /// Sends `request`; an error status becomes [`ClientError::Api`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| {
            let url = crate::redact::redact_url(url);
            let reason = crate::redact::scrub_urls(&error_chain(&e));
            // rustls says `invalid peer certificate: …`: no retry makes it trusted.
            if reason.contains("certificate") {
                ClientError::Certificate { url, reason }
            } else {
                ClientError::Unreachable { url, reason }
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Err(ClientError::Api {
            status,
            code: text("error").unwrap_or_else(|| "http_error".into()),
            message: text("message").unwrap_or_else(|| format!("the assigner answered {status}")),
            retry_after,
        })
    }
}

/// The timeout of one try: the usual one, cut to what is left of the budget (at least 1 s).
fn call_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_secs(1), CALL_TIMEOUT)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    response
        .json()
        .await
        .map_err(|e| ClientError::Unexpected(error_chain(&e)))
}

/// An error with its causes, which reqwest keeps apart.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
