//! The assigner in-process against fake workers (`berth-worker --fake`, each with its own
//! in-memory store): waiting, ordering, input checks, late replies.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use berth::store::MemoryStore;
use support::*;

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new("berth-ci", Vec::<String>::new()))
}

#[tokio::test]
async fn exhausted_pool_answers_503_with_retry_after_once_the_wait_is_over() {
    let slots = slot_names(2);
    let config = config(&slots.iter().map(String::as_str).collect::<Vec<_>>());
    let app = TestApp::spawn(config.clone(), store()).await;
    let _workers = fake_workers(&config.namespace, &slots, 0);

    let mut held = Vec::new();
    for i in 0..2 {
        held.push(acquire_ok(&app.http, &app.base, &format!("job-{i}"), 20).await);
    }
    let mut names: Vec<_> = held
        .iter()
        .map(|a| a["slot"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, slots, "each slot handed out once");
    for a in &held {
        assert_eq!(a["pool"], POOL);
        assert_eq!(a["lease_token"].as_str().unwrap().len(), 64);
        assert!(
            a["lease_expires"].is_string() && a["resource"].is_object(),
            "{a}"
        );
    }

    let started = Instant::now();
    let third = app.acquire(json!({"owner": "job-3", "wait_secs": 2})).await;
    let waited = started.elapsed();
    assert_eq!(
        third.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        third.text
    );
    assert_eq!(third.json["error"], "no_slot");
    assert!(third.retry_after.is_some(), "503 carries Retry-After");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );

    let metrics = parse_metrics(&app.get("/metrics").await.text);
    let acquire = |code| {
        let labels = [
            ("route", "/v1/pools/{pool}/acquire"),
            ("method", "POST"),
            ("code", code),
        ];
        metric_value(&metrics, "berth_requests_total", &labels)
    };
    assert_eq!((acquire("200"), acquire("503")), (2.0, 1.0));
    let latency = |outcome| {
        let labels = [("pool", POOL), ("outcome", outcome)];
        metric_value(&metrics, "berth_acquire_duration_seconds", &labels)
    };
    assert_eq!((latency("assigned"), latency("no_slot")), (2.0, 1.0));
    app.stop().await;
}

#[tokio::test]
async fn waiting_requests_are_served_in_arrival_order() {
    let slots = slot_names(1);
    let config = config(&["s-1"]);
    let app = TestApp::spawn(config.clone(), store()).await;
    let _workers = fake_workers(&config.namespace, &slots, 0);
    let first = acquire_ok(&app.http, &app.base, "holder", 20).await;

    // Three requests, each sent once the previous one is known to wait.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, owner) in ["a", "b", "c"].into_iter().enumerate() {
        let (http, base, done) = (app.http.clone(), app.base.clone(), done_tx.clone());
        tokio::spawn(async move {
            let answer = acquire_ok(&http, &base, owner, 30).await;
            done.send((owner, answer)).unwrap();
        });
        wait_for("the request to wait", Duration::from_secs(5), || async {
            let waiting = metric(&app.http, &app.base, "berth_acquire_waiting").await;
            if waiting as usize == i + 1 {
                Ok(())
            } else {
                Err(format!("{waiting} waiting"))
            }
        })
        .await;
    }

    // Hand the one slot on, one holder after the other.
    let mut token = first["lease_token"].as_str().unwrap().to_owned();
    let mut order = Vec::new();
    for _ in 0..3 {
        release_direct(&app.names(), "s-1", &token).await;
        let (owner, answer) = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await
            .expect("a waiting request is served after a release")
            .unwrap();
        order.push(owner);
        token = answer["lease_token"].as_str().unwrap().to_owned();
    }
    assert_eq!(order, ["a", "b", "c"]);
    release_direct(&app.names(), "s-1", &token).await;
    app.stop().await;
}

#[tokio::test]
async fn a_reply_after_the_deadline_is_released_not_lost() {
    let slots = slot_names(1);
    let config = config(&["s-1"]);
    let app = TestApp::spawn(config.clone(), store()).await;
    // Claims take 1.5 s: longer than a `wait_secs: 0` acquire waits.
    let _workers = fake_workers(&config.namespace, &slots, 1500);
    wait_for(
        "the worker to consume the pool queue",
        Duration::from_secs(10),
        || async {
            let pools = app.get("/v1/pools").await;
            let consumers = pools.json["pools"][0]["consumers"].as_u64();
            if consumers == Some(1) {
                Ok(())
            } else {
                Err(pools.text)
            }
        },
    )
    .await;

    let impatient = app
        .acquire(json!({"owner": "impatient", "wait_secs": 0}))
        .await;
    assert_eq!(
        impatient.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        impatient.text
    );
    // Its slot was claimed anyway; the assigner gives it back, so the next client gets it.
    let patient = acquire_ok(&app.http, &app.base, "patient", 20).await;
    assert_eq!(patient["slot"], "s-1");
    let abandoned = metric(&app.http, &app.base, "berth_abandoned_replies_total").await;
    assert_eq!(abandoned, 1.0);
    app.stop().await;
}

#[tokio::test]
async fn renew_goes_to_the_slots_worker() {
    let slots = slot_names(1);
    let config = config(&["s-1"]);
    let app = TestApp::spawn(config.clone(), store()).await;
    let _workers = fake_workers(&config.namespace, &slots, 0);
    let held = acquire_ok(&app.http, &app.base, "renewer", 20).await;
    let token = held["lease_token"].as_str().unwrap();

    let renewed = app
        .post(
            "/v1/slots/s-1/renew",
            json!({"lease_token": token, "lease_secs": 7200}),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
    let before: chrono::DateTime<chrono::Utc> =
        held["lease_expires"].as_str().unwrap().parse().unwrap();
    let after: chrono::DateTime<chrono::Utc> = renewed.json["lease_expires"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after > before, "{before} → {after}");

    let wrong = app
        .post(
            "/v1/slots/s-1/renew",
            json!({"lease_token": "0".repeat(64)}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.text);
    assert_eq!(wrong.json["error"], "wrong_token");
    release_direct(&app.names(), "s-1", token).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_input_and_unknown_names_answer_json_errors() {
    let app = TestApp::spawn(config(&["s-1"]), store()).await;
    let cases = [
        ("/v1/pools/ppa/acquire", json!({"owner": ""}), 400, "owner"),
        (
            "/v1/pools/ppa/acquire",
            json!({"owner": "me", "lease_secs": 0}),
            400,
            "lease_secs",
        ),
        (
            "/v1/pools/ppa/acquire",
            json!({"owner": "me", "wait_secs": 999_999}),
            400,
            "wait_secs",
        ),
        (
            "/v1/pools/ppa/acquire",
            json!({"owner": "me", "colour": "red"}),
            400,
            "colour",
        ),
        (
            "/v1/pools/ppa/acquire",
            json!({"owner": "me", "priority": 10}),
            400,
            "priority",
        ),
        (
            "/v1/pools/ppa/acquire",
            json!({"owner": "me", "priority": -1}),
            400,
            "priority",
        ),
        (
            "/v1/pools/ppa/acquire",
            json!({"owner": "me", "priority": "x"}),
            400,
            "priority",
        ),
        (
            "/v1/pools/ppa/acquire",
            json!({"lease_secs": 5}),
            400,
            "owner",
        ),
        (
            "/v1/pools/nope/acquire",
            json!({"owner": "me"}),
            404,
            "nope",
        ),
        (
            "/v1/slots/nope/renew",
            json!({"lease_token": "x"}),
            404,
            "nope",
        ),
        (
            "/v1/slots/nope/release",
            json!({"lease_token": "x"}),
            404,
            "nope",
        ),
        (
            "/v1/slots/s-1/renew",
            json!({"lease_token": ""}),
            400,
            "lease_token",
        ),
        ("/v2/anything", json!({}), 404, "/v1"),
    ];
    for (path, body, status, mentions) in cases {
        let a = app.post(path, body.clone()).await;
        assert_eq!(a.status.as_u16(), status, "{path} {body}: {}", a.text);
        assert!(
            a.json["error"].is_string(),
            "{path}: not a JSON error: {}",
            a.text
        );
        let message = a.json["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{path} {body}: {message:?} should mention {mentions}"
        );
    }

    let url = format!("{}/v1/pools/ppa/acquire", app.base);
    let raw = |body: &'static str, content_type: &'static str| {
        app.http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type) in [
        ("{not json", "application/json"),
        ("owner=me", "text/plain"),
    ] {
        let a = answer(raw(body, content_type).await.unwrap()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        assert_eq!(a.json["error"], "bad_body", "{}", a.text);
    }
    let huge = format!("{{\"owner\":\"{}\"}}", "x".repeat(64 * 1024));
    let a = answer(
        app.http
            .post(&url)
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert!(a.json["message"].is_string(), "{}", a.text);

    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn the_slot_of_a_client_that_went_away_is_released() {
    let slots = slot_names(1);
    let config = config(&["s-1"]);
    let app = TestApp::spawn(config.clone(), store()).await;
    let _workers = fake_workers(&config.namespace, &slots, 0);
    let held = acquire_ok(&app.http, &app.base, "holder", 20).await;

    // A client that gives up after half a second, while its request is still queued.
    let url = format!("{}/v1/pools/{POOL}/acquire", app.base);
    let gone = app
        .http
        .post(&url)
        .json(&json!({"owner": "gone", "wait_secs": 30}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(gone.is_err(), "the client timed out: {gone:?}");
    wait_for(
        "the assigner to forget the request",
        Duration::from_secs(5),
        || async {
            let n = metric(&app.http, &app.base, "berth_acquire_waiting").await;
            if n == 0.0 {
                Ok(())
            } else {
                Err(format!("{n} waiting"))
            }
        },
    )
    .await;

    // The slot comes free; the queued request takes it; nobody waits for the reply, so the
    // assigner releases it and the next client gets the slot.
    release_direct(&app.names(), "s-1", held["lease_token"].as_str().unwrap()).await;
    wait_for(
        "the abandoned reply to be released",
        Duration::from_secs(10),
        || async {
            let n = metric(&app.http, &app.base, "berth_abandoned_replies_total").await;
            if n == 1.0 {
                Ok(())
            } else {
                Err(format!("{n} abandoned"))
            }
        },
    )
    .await;
    let next = acquire_ok(&app.http, &app.base, "next", 20).await;
    assert_eq!(next["slot"], "s-1");
    release_direct(&app.names(), "s-1", next["lease_token"].as_str().unwrap()).await;
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_loads_as_openapi_3_1_and_names_every_error() {
    let config = config(&["s-1"]);
    let app = TestApp::spawn(config, store()).await;
    let answer = app.get("/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let spec = oas3::from_json(&answer.text).expect("a valid OpenAPI 3.1 document");
    let version = spec.validate_version().expect("an OpenAPI 3.1 version");
    assert_eq!((version.major, version.minor), (3, 1));
    let operations: Vec<(String, String)> = spec
        .operations()
        .map(|(path, method, _)| (method.to_string(), path))
        .collect();
    for (method, path) in [
        ("POST", "/v1/pools/{pool}/acquire"),
        ("POST", "/v1/slots/{slot}/renew"),
        ("POST", "/v1/slots/{slot}/release"),
        ("GET", "/v1/slots"),
        ("GET", "/v1/pools"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ] {
        assert!(
            operations.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} missing from {operations:?}"
        );
    }
    let renew = &answer.json["paths"]["/v1/slots/{slot}/renew"]["post"]["responses"];
    for code in ["200", "403", "409", "503"] {
        assert!(renew[code].is_object(), "renew documents {code}: {renew}");
    }
    app.stop().await;
}
