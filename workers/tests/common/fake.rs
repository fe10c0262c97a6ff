//! The fake Launchpad as the worker's end-to-end tests see it: the real `berth
//! fake-launchpad` process, driven over its HTTP admin endpoints (`/_fake/…`). Running it as
//! a process keeps the worker crate, tests included, free of the HTTP server stack (the
//! `berth` library's `server` feature).
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use berth::store::{LaunchpadStore, SlotStore};

use super::wait_for;

/// One description write, as `GET /_fake/history` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Write {
    pub seq: u64,
    pub ppa: String,
    pub description: String,
}

/// One `requestDeletion`, as `GET /_fake/deletions` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Deletion {
    pub seq: u64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub ppa: String,
    pub source: u64,
    pub package: String,
    pub version: String,
    pub date_created: chrono::DateTime<chrono::Utc>,
}

/// A running `berth fake-launchpad` with PPAs `ppa-1` … of owner `berth-ci`.
pub struct FakeLaunchpad {
    child: Child,
    root: String,
    http: reqwest::Client,
    /// Writes descriptions as an operator would, with the test's credentials.
    writer: LaunchpadStore,
}

/// The `berth` binary, built next to `berth-worker` by `cargo build --workspace --bins`.
fn berth_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_berth-worker")).with_file_name("berth");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (it is another package)",
        path.display()
    );
    path
}

impl FakeLaunchpad {
    /// Starts one with `ppas` PPAs whose deletions take `deletion_delay`; `credentials` is a
    /// launchpadlib file the test's writes are signed with.
    pub async fn start(ppas: usize, deletion_delay: Duration, credentials: &Path) -> FakeLaunchpad {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(berth_bin())
            .args(["fake-launchpad", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--ppas", &ppas.to_string()])
            .args([
                "--deletion-delay-ms",
                &deletion_delay.as_millis().to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("berth fake-launchpad starts");
        let root = format!("http://127.0.0.1:{port}/");
        let http = reqwest::Client::new();
        wait_for(
            "the fake Launchpad to answer",
            Duration::from_secs(20),
            || {
                let (http, url) = (http.clone(), format!("{root}_fake/faults"));
                async move {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(r.status().to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
        let credentials = berth::store::Credentials::from_file(credentials).unwrap();
        let writer = LaunchpadStore::new(
            &root,
            "devel",
            "berth-ci",
            Some(credentials),
            Duration::from_secs(5),
        )
        .unwrap();
        FakeLaunchpad {
            child,
            root,
            http,
            writer,
        }
    }

    /// The API root the workers are configured with.
    pub fn api_root(&self) -> String {
        self.root.clone()
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.root))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }

    /// Adds a published upload to `ppa`.
    pub async fn add_upload(&self, ppa: &str, package: &str, version: &str) {
        let response = self
            .http
            .post(format!("{}_fake/ppas/{ppa}/uploads", self.root))
            .json(&json!({"package": package, "version": version}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "upload: {response:?}");
    }

    /// Puts `faults` in force (a JSON object of `berth::fake::Faults` fields; `{}` for none).
    pub async fn set_faults(&self, faults: Value) {
        let response = self
            .http
            .put(format!("{}_fake/faults", self.root))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "faults: {response:?}");
    }

    /// Every successful description write so far, in order.
    pub async fn history(&self) -> Vec<Write> {
        serde_json::from_value(self.get("_fake/history").await).unwrap()
    }

    /// Every `requestDeletion` of an existing publication so far, in order of arrival.
    pub async fn deletions(&self) -> Vec<Deletion> {
        serde_json::from_value(self.get("_fake/deletions").await).unwrap()
    }

    /// Replaces the description of `ppa`, as an operator editing it would.
    pub async fn set_description(&self, ppa: &str, text: &str) {
        let archive = self.writer.archive(ppa).await.unwrap();
        self.writer
            .set_description(ppa, &archive.http_etag, text)
            .await
            .unwrap();
    }

    pub async fn shutdown(mut self) {
        let _ = self.child.kill().await;
    }
}
