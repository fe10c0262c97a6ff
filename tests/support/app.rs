//! The assigner in-process on port 0, as a test drives it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use berth::assigner::Application;
use berth::config::Config;
use berth::protocol::Names;
use berth::store::SlotStore;

use super::http::{Answer, get, post, wait_ready};
use super::namespace::{POOL, delete_queues};

/// The assigner running in-process on port 0.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// Starts the assigner of `config` over `store` and waits until it is ready.
    pub async fn spawn(config: Config, store: Arc<dyn SlotStore>) -> TestApp {
        let app = Application::build(config.clone(), store)
            .await
            .expect("build the assigner");
        let base = format!("http://{}", app.addr());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app.run_until(cancel.clone()));
        let test_app = TestApp {
            base,
            http: reqwest::Client::new(),
            config,
            cancel,
            task,
        };
        wait_ready(&test_app.base, Duration::from_secs(10)).await;
        test_app
    }

    pub fn names(&self) -> Names {
        self.config.names()
    }

    pub async fn acquire(&self, body: Value) -> Answer {
        self.post(&format!("/v1/pools/{POOL}/acquire"), body).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        post(&self.http, &format!("{}{path}", self.base), body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        get(&self.http, &format!("{}{path}", self.base)).await
    }

    /// Stops the assigner and deletes the test's queues.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "the assigner did not stop cleanly: {result:?}"
        );
        delete_queues(&self.config).await;
    }
}
