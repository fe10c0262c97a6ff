//! A small client of the assigner's HTTP API (DESIGN §4), used by the client commands.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A slot handed out by acquire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub slot: String,
    pub pool: String,
    pub lease_token: String,
    pub lease_expires: DateTime<Utc>,
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

/// Why a call failed, and the exit code that tells a script.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The assigner answered an error.
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// The assigner could not be reached.
    #[error(
        "cannot reach the assigner at {url}: {reason}; is it running (`berth dev` starts one)?"
    )]
    Unreachable { url: String, reason: String },
    /// The assigner answered something this client cannot read.
    #[error("unexpected answer from the assigner: {0}")]
    Unexpected(String),
}

/// Exit code: no slot came free within the wait.
pub const EXIT_NO_SLOT: u8 = 3;
/// Exit code: the lease token is wrong or the slot is not held.
pub const EXIT_NOT_HOLDER: u8 = 4;

impl ClientError {
    /// 3 for no slot within the wait, 4 for a wrong token or a slot not held, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Api { code, .. } if code == "no_slot" => EXIT_NO_SLOT,
            ClientError::Api {
                status: 403 | 409, ..
            } => EXIT_NOT_HOLDER,
            _ => 1,
        }
    }
}

/// The assigner at one base URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of the assigner at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a default HTTP client builds");
        Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// `POST /v1/pools/{pool}/acquire`.
    pub async fn acquire(
        &self,
        pool: &str,
        owner: &str,
        lease_secs: Option<u64>,
        wait_secs: Option<u64>,
    ) -> Result<Lease, ClientError> {
        let mut body = json!({"owner": owner});
        if let Some(lease) = lease_secs {
            body["lease_secs"] = lease.into();
        }
        if let Some(wait) = wait_secs {
            body["wait_secs"] = wait.into();
        }
        // The server may hold the request for the whole wait (its default when none is given).
        let timeout = Duration::from_secs(wait_secs.unwrap_or(3600) + 30);
        let url = format!("{}/v1/pools/{pool}/acquire", self.base);
        let response = self
            .send(self.http.post(&url).json(&body).timeout(timeout), &url)
            .await?;
        read_json(response).await
    }

    /// `POST /v1/slots/{slot}/renew`: the new `lease_expires`.
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
        let request = self
            .http
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(30));
        let response = self.send(request, &url).await?;
        #[derive(Deserialize)]
        struct Renewed {
            lease_expires: DateTime<Utc>,
        }
        Ok(read_json::<Renewed>(response).await?.lease_expires)
    }

    /// `POST /v1/slots/{slot}/release`.
    pub async fn release(&self, slot: &str, token: &str) -> Result<(), ClientError> {
        let url = format!("{}/v1/slots/{slot}/release", self.base);
        let request = self
            .http
            .post(&url)
            .json(&json!({"lease_token": token}))
            .timeout(Duration::from_secs(30));
        self.send(request, &url).await?;
        Ok(())
    }

    /// `GET /v1/slots` or `GET /v1/pools` (`what`), as JSON.
    pub async fn status(&self, what: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/{what}", self.base);
        let response = self
            .send(self.http.get(&url).timeout(Duration::from_secs(30)), &url)
            .await?;
        read_json(response).await
    }

    /// Sends `request`; an error status becomes [`ClientError::Api`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            reason: error_chain(&e),
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
