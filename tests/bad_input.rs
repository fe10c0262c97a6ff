//! Bad input to the HTTP API: arbitrary bodies (random bytes, and JSON built from the right
//! field names with wrong values) to acquire, renew and release never crash the assigner,
//! never answer `5xx` (but `503` for an acquire that found no slot) and always answer our JSON
//! error with a message for a person. A body over the size limit is refused with `413`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};

use berth::protocol::{Control, PROTOCOL_VERSION, RenewOutcome, RenewReply, decode, encode};
use berth::store::MemoryStore;
use support::{POOL, TestApp, answer, config};

/// A worker stand-in for slot `s-1` that answers every renew `not_held` at once, so that
/// well-formed renews do not wait for a worker that is not there.
async fn renew_responder(config: &berth::config::Config) -> tokio::task::JoinHandle<()> {
    let conn = berth::broker::connect(&config.amqp_url, "bad-input-responder")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let names = config.names();
    berth::broker::declare_slot_queue(&channel, &names, "s-1")
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            names.slot_queue("s-1").into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(delivery)) = consumer.next().await {
            if let Ok(Control::Renew { request_id, .. }) = decode::<Control>(&delivery.data) {
                let reply = RenewReply {
                    v: PROTOCOL_VERSION,
                    request_id,
                    outcome: RenewOutcome::NotHeld,
                    lease_expires: None,
                };
                let reply_to = delivery.properties.reply_to().clone().unwrap();
                let props = berth::broker::json_properties()
                    .with_correlation_id(request_id.to_string().into());
                let _ = channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &encode(&reply),
                        props,
                    )
                    .await;
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    })
}

/// A JSON value of any shape, biased to the kinds that trip up parsers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        "[a-f0-9]{64}".prop_map(Value::from),
        Just(Value::from("x".repeat(300))),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object of the API's own field names (and a stranger) with values of any shape.
fn api_object() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("owner".to_owned()),
        Just("lease_secs".to_owned()),
        Just("wait_secs".to_owned()),
        Just("priority".to_owned()),
        Just("lease_token".to_owned()),
        "[a-z_]{1,10}",
    ];
    prop::collection::btree_map(key, any_json(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Json(Value),
}

fn any_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
        any_json().prop_map(Body::Json),
        api_object().prop_map(Body::Json),
        api_object().prop_map(Body::Json),
    ]
}

/// Sends `body` and checks the answer is a well-formed refusal (or a slot-less `503`).
async fn check(app: &TestApp, path: &str, body: &Body) -> Result<(), String> {
    let request = app.http.post(format!("{}{path}", app.base));
    let request = match body {
        Body::Bytes(bytes) => request
            .header("content-type", "application/json")
            .body(bytes.clone()),
        Body::Json(value) => request.json(value),
    };
    let response = request
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let a = answer(response).await;
    let code = a.status.as_u16();
    let error = a.json["error"].as_str().unwrap_or_default();
    let message = a.json["message"].as_str().unwrap_or_default();
    let ok = match code {
        400 | 404 | 409 | 413 | 415 | 422 => !error.is_empty() && !message.is_empty(),
        // A well-formed acquire found no slot (none is free in this test).
        503 => path.ends_with("/acquire") && error == "no_slot" && a.retry_after.is_some(),
        _ => false,
    };
    if !ok || message.len() > 1000 {
        return Err(format!("{path} {body:?} → {code} {}", a.text));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bodies_are_refused_with_a_message() {
    let mut config = config(&["s-1", "s-2"]);
    config.default_wait_secs = 0;
    config.max_wait_secs = 0;
    let store = Arc::new(MemoryStore::new("berth-ci", ["s-1", "s-2"]));
    let app = TestApp::spawn(config.clone(), store).await;
    let responder = renew_responder(&config).await;

    let paths = [
        format!("/v1/pools/{POOL}/acquire"),
        "/v1/slots/s-1/renew".to_owned(),
        "/v1/slots/s-1/release".to_owned(),
    ];
    let handle = tokio::runtime::Handle::current();
    for path in &paths {
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 48,
            ..ProptestConfig::default()
        });
        let result = tokio::task::block_in_place(|| {
            runner.run(&any_body(), |body| {
                let outcome = handle.block_on(check(&app, path, &body));
                prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
                Ok(())
            })
        });
        if let Err(err) = result {
            panic!("{path}: {err}");
        }
    }
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200, "the assigner is still serving");
    responder.abort();
    app.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_wrong_content_types_are_named() {
    let config = config(&["s-1"]);
    let store = Arc::new(MemoryStore::new("berth-ci", ["s-1"]));
    let app = TestApp::spawn(config, store).await;
    let url = format!("{}/v1/pools/{POOL}/acquire", app.base);

    let huge = json!({"owner": "x".repeat(64 * 1024)});
    let a = answer(app.http.post(&url).json(&huge).send().await.unwrap()).await;
    assert_eq!(a.status, 413, "{}", a.text);
    assert!(
        a.json["message"].as_str().unwrap().contains("bytes"),
        "{}",
        a.text
    );

    let a = answer(
        app.http
            .post(&url)
            .body(r#"{"owner":"me"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(
        a.json["message"].as_str().unwrap().contains("content-type"),
        "{}",
        a.text
    );

    let a = answer(
        app.http
            .post(&url)
            .json(&json!({"owner": 7}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(
        a.json["message"].as_str().unwrap().contains("owner"),
        "{}",
        a.text
    );

    let a = answer(
        app.http
            .post(&url)
            .json(&json!({"owner": "me", "lease": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(
        a.json["message"].as_str().unwrap().contains("lease"),
        "{}",
        a.text
    );
    app.stop().await;
}
