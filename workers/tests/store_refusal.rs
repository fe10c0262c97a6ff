//! A store error that no retry fixes — here the store refuses our credentials (`401`) — is
//! said once, loudly, while the slot worker keeps re-checking; once the store is fixed the
//! worker resumes by itself.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use berth::store::{Archive, MemoryStore, SlotStore, SourcePublication, StoreError};
use common::{Client, config, fast_options, free_store, spawn, wait_for};

/// A memory store whose writes can be refused as a store refuses wrong credentials.
struct Refusing {
    inner: Arc<MemoryStore>,
    refuse: AtomicBool,
    refused: AtomicUsize,
}

#[async_trait]
impl SlotStore for Refusing {
    async fn archive(&self, name: &str) -> Result<Archive, StoreError> {
        self.inner.archive(name).await
    }

    async fn set_description(
        &self,
        name: &str,
        etag: &str,
        description: &str,
    ) -> Result<Archive, StoreError> {
        if self.refuse.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unauthorized { status: 401 });
        }
        self.inner.set_description(name, etag, description).await
    }

    async fn archives(&self) -> Result<Vec<Archive>, StoreError> {
        self.inner.archives().await
    }

    async fn published_sources(
        &self,
        name: &str,
        status: &str,
    ) -> Result<Vec<SourcePublication>, StoreError> {
        self.inner.published_sources(name, status).await
    }

    async fn request_deletion(&self, source_self_link: &str) -> Result<(), StoreError> {
        self.inner.request_deletion(source_self_link).await
    }

    fn resource(&self, name: &str) -> serde_json::Value {
        self.inner.resource(name)
    }
}

/// Everything this test process logs, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this process's logs (before anything else sets a subscriber up).
    fn capture() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info,lapin=error,lapin::channel=off")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The worker's error lines.
    fn errors(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains("ERROR") && line.contains("berth_worker"))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn refused_credentials_are_said_once_and_the_worker_resumes_when_fixed() {
    let logs = Logs::capture();
    let config = config(&["r-1"]);
    let mut client = Client::new(&config).await;
    let store = Arc::new(Refusing {
        inner: free_store(&["r-1"]),
        refuse: AtomicBool::new(true),
        refused: AtomicUsize::new(0),
    });
    let workers = spawn(&config, &["r-1"], store.clone(), fast_options());

    // The takeover's write is refused, again and again.
    wait_for("four refused writes", Duration::from_secs(15), || async {
        match store.refused.load(Ordering::SeqCst) {
            n if n >= 4 => Ok(()),
            n => Err(format!("{n} refused so far")),
        }
    })
    .await;
    let errors = logs.errors();
    assert_eq!(errors.len(), 1, "said once:\n{}", logs.text());
    assert!(
        errors[0].contains("401") && errors[0].contains("check the credentials file"),
        "says what is wrong and what to do: {}",
        errors[0]
    );
    assert!(
        errors[0].contains("slot=r-1"),
        "names the slot: {}",
        errors[0]
    );
    assert!(
        !logs.text().contains("cannot write the lock epoch"),
        "the retries are quiet:\n{}",
        logs.text()
    );

    // Fixed: the worker takes the slot over and serves, without a restart.
    store.refuse.store(false, Ordering::SeqCst);
    let reply = client.assign("ci-1", 60).await;
    assert_eq!(reply.slot, "r-1");
    assert!(
        logs.text()
            .contains("the store accepts this slot worker again"),
        "{}",
        logs.text()
    );
    assert_eq!(logs.errors().len(), 1, "{}", logs.text());

    workers.stop().await;
    client.cleanup().await;
}
