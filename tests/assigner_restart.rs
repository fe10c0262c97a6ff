//! The assigner may be killed at any moment (DESIGN §7.5): killed with SIGKILL while
//! requests wait, then restarted, it leaks no slot and serves new requests; cut off from the
//! broker, it answers its waiting requests `503` and serves again once reconnected.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::json;

use berth::store::MemoryStore;
use support::*;

fn start_assigner(config_file: &std::path::Path) -> Proc {
    let child = Command::new(berth_bin())
        .arg("assigner")
        .arg("--config")
        .arg(config_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start berth assigner");
    Proc(child)
}

#[tokio::test]
async fn sigkilled_assigner_leaks_no_slot_and_serves_after_restart() {
    let slots = slot_names(3);
    let mut config = config(&slots.iter().map(String::as_str).collect::<Vec<_>>());
    config.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let base = format!("http://{}", config.listen);
    let http = reqwest::Client::new();

    let _workers = fake_workers(&config.namespace, &slots, 0);
    let mut assigner = start_assigner(&file);
    wait_ready(&base, Duration::from_secs(10)).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(acquire_ok(&http, &base, &format!("holder-{i}"), 20).await);
    }

    // Three requests wait for a slot when the assigner dies.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (http, url) = (http.clone(), format!("{base}/v1/pools/{POOL}/acquire"));
        waiting.push(tokio::spawn(async move {
            http.post(url)
                .json(&json!({"owner": format!("waiter-{i}"), "wait_secs": 20}))
                .send()
                .await
        }));
    }
    wait_for("three waiting requests", Duration::from_secs(5), || async {
        let n = metric(&http, &base, "berth_acquire_waiting").await;
        if n == 3.0 {
            Ok(())
        } else {
            Err(format!("{n} waiting"))
        }
    })
    .await;
    let status = assigner.signal_and_wait(Signal::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    for request in waiting {
        assert!(
            request.await.unwrap().is_err(),
            "a waiting client sees the connection drop"
        );
    }

    // The slots come free while nobody listens: the requests left in the queue are claimed
    // and their replies bounce (no reply queue), so the workers take the slots back.
    for lease in &held {
        release_direct(
            &config.names(),
            lease["slot"].as_str().unwrap(),
            lease["lease_token"].as_str().unwrap(),
        )
        .await;
    }

    let restarted = Instant::now();
    let mut assigner = start_assigner(&file);
    wait_ready(&base, Duration::from_secs(10)).await;
    let ready_after = restarted.elapsed();
    assert!(
        ready_after < Duration::from_secs(3),
        "ready only after {ready_after:?}"
    );

    let mut names = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..3 {
        let lease = acquire_ok(&http, &base, &format!("after-{i}"), 20).await;
        names.push(lease["slot"].as_str().unwrap().to_owned());
        tokens.push(lease["lease_token"].as_str().unwrap().to_owned());
    }
    names.sort();
    assert_eq!(names, slots, "every slot came back and is handed out once");
    let fourth = post(
        &http,
        &format!("{base}/v1/pools/{POOL}/acquire"),
        json!({"owner": "extra", "wait_secs": 1}),
    )
    .await;
    assert_eq!(
        fourth.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        fourth.text
    );

    for (slot, token) in names.iter().zip(&tokens) {
        release_direct(&config.names(), slot, token).await;
    }
    let status = assigner.signal_and_wait(Signal::SIGTERM);
    assert!(
        status.success(),
        "SIGTERM stops the assigner cleanly: {status}"
    );
    delete_queues(&config).await;
}

/// Closes every broker connection whose name contains `needle`, as a network cut would.
fn close_connections(needle: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .expect("run rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(needle)) {
        let pid = line.split_whitespace().next().unwrap();
        let ok = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: cut the assigner off"])
            .status()
            .expect("run rabbitmqctl")
            .success();
        closed += usize::from(ok);
    }
    closed
}

#[tokio::test]
async fn broker_loss_answers_waiting_requests_503_and_recovers() {
    let slots = slot_names(1);
    let config = config(&["s-1"]);
    let app = TestApp::spawn(
        config.clone(),
        Arc::new(MemoryStore::new("berth-ci", Vec::<String>::new())),
    )
    .await;
    let _workers = fake_workers(&config.namespace, &slots, 0);
    let held = acquire_ok(&app.http, &app.base, "holder", 20).await;

    let (http, url) = (
        app.http.clone(),
        format!("{}/v1/pools/{POOL}/acquire", app.base),
    );
    let waiter = tokio::spawn(async move {
        post(&http, &url, json!({"owner": "waiter", "wait_secs": 30})).await
    });
    wait_for("the request to wait", Duration::from_secs(5), || async {
        let n = metric(&app.http, &app.base, "berth_acquire_waiting").await;
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("{n} waiting"))
        }
    })
    .await;

    let cut = Instant::now();
    let closed = tokio::task::spawn_blocking({
        let needle = format!("berth-assigner-{}", config.namespace);
        move || close_connections(&needle)
    })
    .await
    .unwrap();
    assert_eq!(closed, 1, "the assigner's one connection");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("answered promptly")
        .unwrap();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text
    );
    assert_eq!(answer.json["error"], "broker_unavailable");
    assert!(answer.retry_after.is_some());
    assert!(cut.elapsed() < Duration::from_secs(10));

    wait_ready(&app.base, Duration::from_secs(10)).await;
    release_direct(&app.names(), "s-1", held["lease_token"].as_str().unwrap()).await;
    let again = acquire_ok(&app.http, &app.base, "after", 20).await;
    assert_eq!(again["slot"], "s-1");
    release_direct(&app.names(), "s-1", again["lease_token"].as_str().unwrap()).await;
    app.stop().await;
}
