//! HTTP calls to the assigner and what they answer.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::metrics::{metric_value, parse_metrics};
use super::namespace::POOL;
use berth_testkit::wait_for;

/// An HTTP answer: status, `Retry-After`, JSON body (or `Null`) and raw text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub json: Value,
    pub text: String,
}

pub async fn post(http: &reqwest::Client, url: &str, body: Value) -> Answer {
    answer(http.post(url).json(&body).send().await.expect("HTTP call")).await
}

pub async fn get(http: &reqwest::Client, url: &str) -> Answer {
    answer(http.get(url).send().await.expect("HTTP call")).await
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        json,
        text,
    }
}

/// Waits until `base/readyz` answers 200.
pub async fn wait_ready(base: &str, within: Duration) {
    wait_ready_with(&reqwest::Client::new(), base, within).await;
}

/// A client that also trusts the CA certificate (PEM) of `ca`, for an HTTPS assigner.
pub fn https_client(ca: &std::path::Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap()
}

/// [`wait_ready`] with `http`.
pub async fn wait_ready_with(http: &reqwest::Client, base: &str, within: Duration) {
    let http = http.clone();
    let url = format!("{base}/readyz");
    wait_for(&format!("{url} to answer 200"), within, || {
        let http = http.clone();
        let url = url.clone();
        async move {
            match http.get(&url).timeout(Duration::from_secs(1)).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
}

/// Acquires a slot of `ppa` at `base`, waiting up to `wait_secs`; panics unless `200`.
pub async fn acquire_ok(http: &reqwest::Client, base: &str, owner: &str, wait_secs: u64) -> Value {
    let a = post(
        http,
        &format!("{base}/v1/pools/{POOL}/acquire"),
        json!({"owner": owner, "wait_secs": wait_secs}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "acquire for {owner}: {}", a.text);
    a.json
}

/// The value of a metric in `/metrics`, summed over its labels (every pool, …).
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = get(http, &format!("{base}/metrics")).await.text;
    metric_value(&parse_metrics(&text), name, &[])
}
