//! The store as the Launchpad web service (or the fake of DESIGN §5) serves it: archives
//! read and written with compare-and-swap on `http_etag`, paged collections, OAuth PLAINTEXT.
//! The wire shapes are those of `docs/launchpad.md`.
//!
//! Every call has the client's timeout. Requests carry the `Authorization` header whenever
//! credentials are configured (launchpadlib signs reads too; private PPAs need it); writes
//! without credentials fail before anything is sent.

use std::error::Error as _;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, AUTHORIZATION, ETAG, HeaderValue, IF_MATCH};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::{debug, instrument};

use super::collection::{Page, PageLinks};
use super::oauth::{Credentials, CredentialsError, Signer, percent_encode};
use super::{Archive, SlotStore, SourcePublication, StoreError};
use crate::config::StoreConfig;

/// The comment left on every deletion berth asks for.
pub const REMOVAL_COMMENT: &str = "Cleaned by berth for reuse";

/// How much of an error body goes into [`StoreError::Rejected`].
const MESSAGE_CHARS: usize = 200;

const JSON: &str = "application/json";

/// Idle connections to the store kept for reuse, and for how long.
const IDLE_CONNECTIONS: usize = 32;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one Launchpad web service, for the PPAs of one owner.
#[derive(Debug)]
pub struct LaunchpadStore {
    http: reqwest::Client,
    /// `api_root` + `api_version` + `/`, e.g. `http://127.0.0.1:8081/devel/`.
    root: Url,
    owner: String,
    /// Signs requests; `None` without credentials (reads only).
    signer: Option<Signer>,
    timeout: Duration,
}

/// Why a [`LaunchpadStore`] could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `root` may be used: `https://`, or `http://` to a loopback address (the fake
/// Launchpad of `berth dev` and the tests).
fn secure_enough(root: &Url) -> bool {
    if root.scheme() == "https" {
        return true;
    }
    let Some(host) = root.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl LaunchpadStore {
    /// A client of the service at `api_root` (`http://127.0.0.1:8081/`) in `api_version`
    /// (`devel`), for the PPAs of `owner`. Without credentials it can only read. Refuses a
    /// root that is not an http(s) URL with [`StoreError::Rejected`] (status 0: nothing sent).
    pub fn new(
        api_root: &str,
        api_version: &str,
        owner: &str,
        credentials: Option<Credentials>,
        timeout: Duration,
    ) -> Result<LaunchpadStore, StoreError> {
        let refuse = |message: String| StoreError::Rejected { status: 0, message };
        let version = api_version.trim_matches('/');
        let root = match version {
            "" => format!("{}/", api_root.trim_end_matches('/')),
            _ => format!("{}/{version}/", api_root.trim_end_matches('/')),
        };
        let root = Url::parse(&root).map_err(|e| {
            let shown = crate::redact::redact_url(api_root);
            refuse(format!("invalid store URL {shown:?}: {e}"))
        })?;
        if !matches!(root.scheme(), "http" | "https") || root.cannot_be_a_base() {
            let shown = crate::redact::redact_url(api_root);
            return Err(refuse(format!("store URL {shown:?} is not an http(s) URL")));
        }
        if !secure_enough(&root) {
            return Err(refuse(format!(
                "store URL {} is plain http:// to a host that is not loopback: the signed \
                 requests and the records would cross the network in clear; use https:// \
                 (http:// is for 127.0.0.1, ::1 and localhost only)",
                crate::redact::redact_url(api_root)
            )));
        }
        if owner.is_empty() {
            return Err(refuse("the store owner is empty".into()));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout)
            // A burst of calls (256 releases at once) leaves as many connections open; keep
            // enough for steady work and let the rest go, with their buffers.
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build()
            .map_err(|e| StoreError::Transport(format!("cannot start the HTTP client: {e}")))?;
        Ok(LaunchpadStore {
            http,
            root,
            owner: owner.to_owned(),
            signer: credentials.as_ref().map(Credentials::signer),
            timeout,
        })
    }

    /// A client as `config` describes it, reading its credentials file if one is named.
    pub fn from_config(config: &StoreConfig) -> Result<LaunchpadStore, SetupError> {
        let credentials = config
            .credentials_file
            .as_deref()
            .map(Credentials::from_file)
            .transpose()?;
        let timeout = Duration::from_secs(config.timeout_secs);
        Ok(LaunchpadStore::new(
            &config.api_root,
            &config.api_version,
            &config.owner,
            credentials,
            timeout,
        )?)
    }

    /// Whether this client has credentials, and so may write.
    pub fn can_write(&self) -> bool {
        self.signer.is_some()
    }

    /// `ROOT/~OWNER/+archive/ubuntu/NAME`.
    fn archive_url(&self, name: &str) -> Url {
        self.url(&format!(
            "~{}/+archive/ubuntu/{}",
            percent_encode(&self.owner),
            percent_encode(name)
        ))
    }

    /// `path` (already percent-encoded) under the root.
    fn url(&self, path: &str) -> Url {
        // Cannot fail: the root is a base URL and `path` holds only unreserved characters,
        // `%XX`, `/`, `~` and `+`.
        self.root
            .join(path)
            .expect("a percent-encoded path joins any base URL")
    }

    /// Writes need credentials; say so before sending anything.
    fn require_credentials(&self) -> Result<(), StoreError> {
        match self.signer {
            Some(_) => Ok(()),
            None => Err(StoreError::Rejected {
                status: 401,
                message: "no credentials: writing to the store needs a launchpadlib \
                          credentials file (--credentials / BERTH_CREDENTIALS)"
                    .into(),
            }),
        }
    }

    /// Sends one request (signed when we have credentials) and answers its status, `ETag`
    /// header and body, or the [`StoreError`] its status or failure maps to.
    async fn execute(&self, method: Method, url: &Url, request: RequestBuilder) -> Reply {
        let what = format!("{method} {}", url.path());
        let request = match &self.signer {
            Some(signer) => {
                // Cannot fail: every field is percent-encoded, so the value is visible ASCII.
                let mut value = HeaderValue::try_from(signer.header())
                    .expect("an OAuth header is visible ASCII");
                value.set_sensitive(true);
                request.header(AUTHORIZATION, value)
            }
            None => request,
        };
        let response = request.send().await.map_err(|e| self.transport(&what, e))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) if status.is_success() => return Err(self.transport(&what, e)),
            // The status already says what went wrong; the body would only add detail.
            Err(_) => Default::default(),
        };
        debug!(%status, request = %what, bytes = body.len(), "store answered");
        check_status(status, &body, &what)?;
        Ok(Answer {
            status,
            etag,
            body: body.to_vec(),
            what,
        })
    }

    /// A failure to get an answer, described without the URL's query or any header.
    fn transport(&self, what: &str, error: reqwest::Error) -> StoreError {
        if error.is_timeout() {
            return StoreError::Transport(format!("{what}: no answer within {:?}", self.timeout));
        }
        // The chain says what failed ("tcp connect error: Connection refused"); reqwest's
        // own message would name the URL, query included, so it goes.
        let error = error.without_url();
        let mut message = format!("{what}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        StoreError::Transport(message)
    }

    async fn get(&self, url: &Url) -> Reply {
        self.execute(
            Method::GET,
            url,
            self.http.get(url.clone()).header(ACCEPT, JSON),
        )
        .await
    }

    /// Every entry of the collection at `first`, following `next_collection_link`.
    async fn walk<T: DeserializeOwned>(&self, first: Url) -> Result<Vec<T>, StoreError> {
        let mut links = PageLinks::new(&self.root, &first);
        let mut entries = Vec::new();
        let mut url = first;
        loop {
            let page: Page<T> = self.get(&url).await?.json()?;
            entries.extend(page.entries);
            match links.next(page.next_collection_link.as_deref())? {
                Some(next) => url = next,
                None => return Ok(entries),
            }
        }
    }
}

type Reply = Result<Answer, StoreError>;

/// A `2xx` answer.
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Vec<u8>,
    /// Method and path, to name the request in errors.
    what: String,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            StoreError::Protocol(format!(
                "{} answered {}: unreadable body: {e}",
                self.what, self.status
            ))
        })
    }

    /// Whether the answer holds a representation (`null` and nothing do not).
    fn has_body(&self) -> bool {
        let body = self.body.trim_ascii();
        !body.is_empty() && body != b"null"
    }

    fn archive(&self) -> Result<Archive, StoreError> {
        self.json::<ArchiveRepr>()?
            .into_archive(self.etag.as_deref())
    }
}

/// The fields of Launchpad's archive representation that berth reads.
#[derive(Debug, Deserialize)]
struct ArchiveRepr {
    name: String,
    self_link: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    http_etag: Option<String>,
}

impl ArchiveRepr {
    /// The archive, its ETag taken from the body or else from the `ETag` header.
    fn into_archive(self, etag_header: Option<&str>) -> Result<Archive, StoreError> {
        let http_etag = self
            .http_etag
            .or_else(|| etag_header.map(str::to_owned))
            .ok_or_else(|| {
                StoreError::Protocol(format!("archive {} came without http_etag", self.name))
            })?;
        Ok(Archive {
            name: self.name,
            self_link: self.self_link,
            description: self.description.unwrap_or_default(),
            http_etag,
        })
    }
}

/// Maps a non-`2xx` status to its error (see [`StoreError`]).
fn check_status(status: StatusCode, body: &[u8], what: &str) -> Result<(), StoreError> {
    let code = status.as_u16();
    match code {
        200..=299 => Ok(()),
        401 | 403 => Err(StoreError::Unauthorized { status: code }),
        404 => Err(StoreError::NotFound(what.to_owned())),
        412 => Err(StoreError::Conflict),
        400..=499 => {
            let text = String::from_utf8_lossy(body);
            let message: String = text.trim().chars().take(MESSAGE_CHARS).collect();
            Err(StoreError::Rejected {
                status: code,
                message,
            })
        }
        500..=599 => Err(StoreError::Unavailable { status: code }),
        _ => Err(StoreError::Protocol(format!("{what} answered {status}"))),
    }
}

#[async_trait]
impl SlotStore for LaunchpadStore {
    #[instrument(level = "debug", skip_all, fields(ppa = name))]
    async fn archive(&self, name: &str) -> Result<Archive, StoreError> {
        self.get(&self.archive_url(name)).await?.archive()
    }

    #[instrument(level = "debug", skip_all, fields(ppa = name))]
    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        description: &str,
    ) -> Result<Archive, StoreError> {
        self.require_credentials()?;
        let url = self.archive_url(name);
        let request = self
            .http
            .patch(url.clone())
            .header(ACCEPT, JSON)
            .header(IF_MATCH, etag)
            .json(&serde_json::json!({ "description": description }));
        let answer = self.execute(Method::PATCH, &url, request).await?;
        // `209 Content Returned` (or a `200` with a body) carries the new representation;
        // a bare `200`/`204` does not, so read it back.
        if answer.has_body() {
            answer.archive()
        } else {
            self.archive(name).await
        }
    }

    #[instrument(level = "debug", skip_all, fields(owner = %self.owner))]
    async fn archives(&self) -> Result<Vec<Archive>, StoreError> {
        let url = self.url(&format!("~{}/ppas", percent_encode(&self.owner)));
        let entries: Vec<ArchiveRepr> = self.walk(url).await?;
        entries
            .into_iter()
            .map(|entry| entry.into_archive(None))
            .collect()
    }

    #[instrument(level = "debug", skip_all, fields(ppa = name, status))]
    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError> {
        let mut url = self.archive_url(name);
        url.query_pairs_mut()
            .append_pair("ws.op", "getPublishedSources")
            .append_pair("status", status);
        self.walk(url).await
    }

    #[instrument(level = "debug", skip_all, fields(source = source_self_link))]
    async fn request_deletion(&self, source_self_link: &str) -> Result<(), StoreError> {
        self.require_credentials()?;
        let url = Url::parse(source_self_link)
            .map_err(|e| StoreError::Protocol(format!("unreadable publication link: {e}")))?;
        // Our PLAINTEXT header carries the token secret: send it to the store only.
        if url.origin() != self.root.origin() {
            return Err(StoreError::Protocol(format!(
                "publication link leads away from the store, to {}",
                url.origin().ascii_serialization()
            )));
        }
        let request = self.http.post(url.clone()).header(ACCEPT, JSON).form(&[
            ("ws.op", "requestDeletion"),
            ("removal_comment", REMOVAL_COMMENT),
        ]);
        self.execute(Method::POST, &url, request).await?;
        Ok(())
    }

    fn resource(&self, name: &str) -> serde_json::Value {
        super::ppa_resource(&self.owner, name, self.archive_url(name).as_str())
    }
}
