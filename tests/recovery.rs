//! Back fast after a broker restart: the assigner and the workers reconnect within about a
//! second of the broker accepting connections again (their reconnect pause is capped at
//! `berth::broker::RECONNECT_MAX`). A private RabbitMQ node, the real `berth assigner` and
//! `berth-worker --fake` processes.
//!
//! The README's figures come from the ignored test:
//! `cargo test --release --test recovery -- --ignored --nocapture`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use berth_testkit::rabbit::PrivateBroker;
use support::*;

/// How long after the broker accepted AMQP connections again the assigner was ready, and an
/// acquire was served (so a worker consumed again), for each of `tries` broker restarts.
async fn recoveries(tries: usize) -> Vec<(Duration, Duration)> {
    let mut broker = tokio::task::spawn_blocking(PrivateBroker::start)
        .await
        .unwrap();
    let slots = slot_names(2);
    let mut config = config(&slots.iter().map(String::as_str).collect::<Vec<_>>());
    config.amqp_url = broker.url();
    // Served slots are not released (the assigner checks a release against a store this test
    // does not run); one-second leases bring them back.
    config.min_lease_secs = 1;
    config.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let base = format!("http://{}", config.listen);
    let quiet = || Stdio::from(std::fs::File::create(dir.path().join("out.log")).unwrap());
    let _assigner = Proc(
        Command::new(berth_bin())
            .args(["assigner", "--config"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(quiet())
            .spawn()
            .unwrap(),
    );
    let mut workers = Command::new(worker_bin());
    workers
        .args(["--fake", "--pool", POOL, "--lease-grace-secs", "0"])
        .args(["--config"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(quiet());
    for slot in &slots {
        workers.arg("--slot").arg(slot);
    }
    let _workers = Proc(workers.spawn().unwrap());
    let http = reqwest::Client::new();
    wait_ready(&base, Duration::from_secs(30)).await;
    serve_once(&http, &base, Duration::from_secs(30)).await;

    let mut figures = Vec::new();
    for _ in 0..tries {
        broker = tokio::task::spawn_blocking(move || {
            broker.stop();
            broker
        })
        .await
        .unwrap();
        // Down for a few seconds, long enough for every process to be in its reconnect loop.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let url = broker.url();
        let starting = tokio::task::spawn_blocking(move || {
            broker.restart();
            broker
        });
        // The moment the broker accepts AMQP connections again, probed every 20 ms.
        let back = loop {
            if berth::broker::connect(&url, "berth-recovery-probe")
                .await
                .is_ok()
            {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        broker = starting.await.unwrap();
        let ready = loop {
            match http
                .get(format!("{base}/readyz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => break back.elapsed(),
                _ if back.elapsed() > Duration::from_secs(30) => {
                    panic!("the assigner was not ready 30 s after the broker came back")
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        serve_once(&http, &base, Duration::from_secs(30)).await;
        figures.push((ready, back.elapsed()));
    }
    figures
}

/// Acquires a slot for a second (retrying while the answer is `503`).
async fn serve_once(http: &reqwest::Client, base: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let a = post(
            http,
            &format!("{base}/v1/pools/{POOL}/acquire"),
            json!({"owner": "recovery", "wait_secs": 1, "lease_secs": 1}),
        )
        .await;
        if a.status == StatusCode::OK {
            return;
        }
        assert!(
            start.elapsed() < within,
            "no slot served within {within:?}: {} {}",
            a.status,
            a.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn assigner_and_workers_are_back_soon_after_a_broker_restart() {
    let figures = recoveries(1).await;
    eprintln!("recovery after a broker restart (ready, served): {figures:?}");
    for (ready, served) in figures {
        // The reconnect pause is at most 1 s; allow for a slow machine.
        assert!(ready < Duration::from_secs(5), "ready after {ready:?}");
        assert!(served < Duration::from_secs(8), "served after {served:?}");
    }
}

#[tokio::test]
#[ignore = "a measurement, about two minutes: run it with --ignored --nocapture"]
async fn recovery_time_after_broker_restarts() {
    let figures = recoveries(10).await;
    let stats = |mut d: Vec<Duration>| {
        d.sort();
        let median = (d[d.len() / 2 - 1] + d[d.len() / 2]) / 2;
        (median.as_secs_f64(), d.last().unwrap().as_secs_f64())
    };
    let (ready_median, ready_worst) = stats(figures.iter().map(|f| f.0).collect());
    let (served_median, served_worst) = stats(figures.iter().map(|f| f.1).collect());
    println!(
        "recovery after a broker restart, {} tries, from the broker accepting connections: assigner ready median {ready_median:.2} s, worst {ready_worst:.2} s; an acquire served median {served_median:.2} s, worst {served_worst:.2} s",
        figures.len()
    );
    assert!(ready_worst < 5.0 && served_worst < 8.0, "{figures:?}");
}
