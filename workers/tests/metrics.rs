//! A real `berth-worker` process with `--metrics-listen` and `--log-format json` (through
//! their environment variables), over the real broker and the fake Launchpad: its `/metrics`
//! parses as OpenMetrics and follows one acquire → release → clean cycle, and every line of
//! its log is a JSON object.

mod common;

use std::time::Duration;

use serde_json::Value;

use berth::protocol::EventKind;
use berth::record::SlotState;
use common::launchpad::{Worker, World};
use common::metrics::{Scrape, scrape};
use common::{Client, POOL, wait_for};

const WITHIN: Duration = Duration::from_secs(20);

/// The log lines of `worker`, each parsed as JSON (panics on a line that is not).
fn json_lines(worker: &Worker) -> Vec<Value> {
    worker
        .logs()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"))
        })
        .collect()
}

/// The address the worker says it serves its metrics on (it was given port 0).
async fn metrics_url(worker: &Worker) -> String {
    wait_for(
        "the worker to say where its metrics are",
        WITHIN,
        || async {
            json_lines(worker)
                .iter()
                .find_map(|line| line["fields"]["addr"].as_str().map(str::to_owned))
                .map(|addr| format!("http://{addr}/metrics"))
                .ok_or_else(|| worker.logs())
        },
    )
    .await
}

/// Scrapes `url` until `check` passes, with a deadline.
async fn wait_metrics(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    wait_for(what, WITHIN, || async {
        let scraped = scrape(http, url).await?;
        if check(&scraped) {
            Ok(scraped)
        } else {
            Err(scraped.text)
        }
    })
    .await
}

fn slots(scraped: &Scrape, state: &str) -> f64 {
    scraped.value("berth_worker_slots", &[("pool", POOL), ("state", state)])
}

fn counter(scraped: &Scrape, name: &str) -> f64 {
    scraped.value(name, &[("pool", POOL)])
}

#[tokio::test]
async fn metrics_follow_an_acquire_release_clean_cycle_and_logs_are_json() {
    // Deletions take a while, so that the slot is seen dirty while it is cleaned.
    let world = World::start_with(1, Duration::from_millis(1500)).await;
    let mut client = Client::new(&world.config).await;
    let mut worker = world.worker(
        "w1",
        &["ppa-1"],
        &[
            ("BERTH_METRICS_LISTEN", "127.0.0.1:0"),
            ("BERTH_LOG_FORMAT", "json"),
        ],
    );
    let url = metrics_url(&worker).await;
    let http = reqwest::Client::new();

    // A fresh PPA has no record: the worker cleans it first, then it is free.
    world.wait_state("ppa-1", SlotState::Free).await;
    let free = wait_metrics(&http, &url, "the slot worker counted free", |m| {
        slots(m, "free") == 1.0
    })
    .await;
    assert_eq!(counter(&free, "berth_worker_claims"), 0.0, "{}", free.text);
    assert_eq!(slots(&free, "used"), 0.0, "{}", free.text);
    assert_eq!(
        free.value("berth_worker_standby", &[("pool", POOL)]),
        0.0,
        "{}",
        free.text
    );
    let cleanings = counter(&free, "berth_worker_clean_duration_seconds");

    // Acquire: one claim, the slot worker counted used.
    let reply = client.assign("ci-job-1", 300).await;
    world.launchpad.add_upload("ppa-1", "hello", "1.0").await;
    let used = wait_metrics(&http, &url, "one claim, the slot used", |m| {
        counter(m, "berth_worker_claims") == 1.0 && slots(m, "used") == 1.0
    })
    .await;
    assert_eq!(slots(&used, "free"), 0.0, "{}", used.text);
    assert_eq!(
        counter(&used, "berth_worker_releases"),
        0.0,
        "{}",
        used.text
    );

    // Release: one release, dirty while the upload is deleted, then free, the cleaning timed.
    client.release("ppa-1", &reply.lease_token).await;
    let dirty = wait_metrics(&http, &url, "one release, the slot dirty", |m| {
        counter(m, "berth_worker_releases") == 1.0 && slots(m, "dirty") == 1.0
    })
    .await;
    assert_eq!(slots(&dirty, "used"), 0.0, "{}", dirty.text);
    client.wait_event("ppa-1", EventKind::Cleaned, WITHIN).await;
    let clean = wait_metrics(&http, &url, "the cleaning timed, the slot free", |m| {
        slots(m, "free") == 1.0
            && counter(m, "berth_worker_clean_duration_seconds") == cleanings + 1.0
    })
    .await;
    let sum = clean
        .exposition
        .families
        .get("berth_worker_clean_duration_seconds")
        .and_then(|family| {
            family
                .iter_samples()
                .find_map(|sample| match &sample.value {
                    openmetrics_parser::OpenMetricsValue::Histogram(h) => h.sum.map(|s| s.as_f64()),
                    _ => None,
                })
        })
        .unwrap_or_default();
    assert!(
        sum >= 1.0,
        "the cleaning waited for a deletion of 1.5 s: {}",
        clean.text
    );
    for (name, labels) in [
        ("berth_worker_expiries", vec![("pool", POOL)]),
        ("berth_worker_clean_failures", vec![("pool", POOL)]),
        ("berth_worker_events_unpublished", vec![("pool", POOL)]),
        (
            "berth_worker_store_errors",
            vec![("pool", POOL), ("kind", "fatal")],
        ),
        ("berth_worker_broker_reconnects", vec![]),
    ] {
        assert_eq!(clean.value(name, &labels), 0.0, "{name}: {}", clean.text);
    }

    // Anything but GET /metrics is 404.
    let other = http.get(url.replace("/metrics", "/")).send().await.unwrap();
    assert_eq!(other.status(), reqwest::StatusCode::NOT_FOUND);

    // SIGTERM: exit 0, and the metrics server is gone with the process.
    let status = worker.terminate().await;
    assert!(status.success(), "exit {status:?}; log:\n{}", worker.logs());
    assert!(http.get(&url).send().await.is_err(), "still serving {url}");

    // Every line is a JSON object with a level and a message; a slot worker's lines name
    // their slot in their span, and the lease token is in none.
    let lines = json_lines(&worker);
    assert!(lines.len() > 5, "{}", worker.logs());
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let claimed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "claimed")
        .unwrap_or_else(|| panic!("no claim line in\n{}", worker.logs()));
    assert_eq!(claimed["span"]["request_id"], reply.request_id.to_string());
    assert!(
        claimed["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|s| s["slot"] == "ppa-1")),
        "{claimed}"
    );
    assert!(!worker.logs().contains(&reply.lease_token));
    client.cleanup().await;
    world.finish().await;
}
