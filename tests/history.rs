//! The history stream (DESIGN §3, §6) end to end, with the real binaries: the fake
//! Launchpad, `berth-worker --all`, `berth assigner` and the real broker. A scripted
//! sequence of transitions comes back from `GET /v1/slots/{slot}/history` exactly, in
//! order, also after an assigner restart; `since`, `limit` and `pool` filter; a slot with no
//! events is `[]`; the stream deleted under the assigner is a `503` with a message, in
//! bounded time; `berth history` and `berth events` print what happened.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use lapin::options::QueueDeleteOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::stack::Stack;
use support::*;

/// How long a transition the worker makes (a cleaning included) may take here.
const WITHIN: Duration = Duration::from_secs(20);

struct History {
    stack: Stack,
    http: reqwest::Client,
}

impl History {
    async fn start(slots: usize) -> History {
        History {
            stack: Stack::start(slots, 30, "text").await,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stack.base)
    }

    async fn get(&self, path: &str) -> Answer {
        get(&self.http, &self.url(path)).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        post(&self.http, &self.url(path), body).await
    }

    /// Waits until `GET /v1/slots/{slot}` shows `state`.
    async fn wait_state(&self, slot: &str, state: &str) {
        wait_for(&format!("{slot} to be {state}"), WITHIN, || async {
            let shown = self.get(&format!("/v1/slots/{slot}")).await;
            if shown.json["state"] == state {
                Ok(())
            } else {
                Err(format!("shown: {}", shown.text))
            }
        })
        .await
    }

    /// The events of `path`'s history answer, as `event` names.
    async fn kinds(&self, path: &str) -> Vec<String> {
        let answer = self.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
        kinds(&answer.json)
    }

    /// Waits until the history at `path` names exactly `expected` (events are published
    /// right after their transitions, so they may trail the state by moments).
    async fn wait_kinds(&self, path: &str, expected: &[&str]) -> Value {
        wait_for(&format!("{path} to be {expected:?}"), WITHIN, || async {
            let answer = self.get(path).await;
            if answer.status == StatusCode::OK && kinds(&answer.json) == expected {
                Ok(answer.json)
            } else {
                Err(format!("{}: {}", answer.status, answer.text))
            }
        })
        .await
    }
}

fn kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

fn rfc3339(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Acquire, renew, release (cleaned), disable, enable (cleaned) on a slot of a stack;
/// answers that slot, the time before it began, and the time between disable and enable.
async fn script(h: &History) -> (String, String, String) {
    let t0 = rfc3339(Utc::now());
    let acquired = h
        .post(
            &format!("/v1/pools/{POOL}/acquire"),
            json!({"owner": "ci-job-7", "lease_secs": 300, "wait_secs": 10}),
        )
        .await;
    assert_eq!(acquired.status, StatusCode::OK, "{}", acquired.text);
    let token = acquired.json["lease_token"].as_str().unwrap().to_owned();
    let slot = acquired.json["slot"].as_str().unwrap().to_owned();
    let renewed = h
        .post(
            &format!("/v1/slots/{slot}/renew"),
            json!({"lease_token": token}),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
    let released = h
        .post(
            &format!("/v1/slots/{slot}/release"),
            json!({"lease_token": token}),
        )
        .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    h.wait_state(&slot, "free").await;
    let disabled = h
        .post(
            &format!("/v1/slots/{slot}/disable"),
            json!({"reason": "broken PPA", "by": "ops-alice"}),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::ACCEPTED, "{}", disabled.text);
    h.wait_state(&slot, "disabled").await;
    // The disabled event must be in before `between`, and enable's after it.
    h.wait_kinds(
        &format!("/v1/slots/{slot}/history?since={t0}"),
        &["assigned", "renewed", "released", "cleaned", "disabled"],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = rfc3339(Utc::now());
    let enabled = h
        .post(
            &format!("/v1/slots/{slot}/enable"),
            json!({"reason": "fixed"}),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::ACCEPTED, "{}", enabled.text);
    h.wait_state(&slot, "free").await;
    (slot, t0, between)
}

const SCRIPTED: [&str; 7] = [
    "assigned", "renewed", "released", "cleaned", "disabled", "enabled", "cleaned",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_sequence_comes_back_in_order_and_survives_an_assigner_restart() {
    let mut h = History::start(2).await;
    let (slot, t0, between) = script(&h).await;
    let other = if slot == "ppa-1" { "ppa-2" } else { "ppa-1" };
    let path = format!("/v1/slots/{slot}/history?since={t0}");
    let events = h.wait_kinds(&path, &SCRIPTED).await;
    let events = events.as_array().unwrap();
    assert_eq!(events[0]["owner"], "ci-job-7");
    assert_eq!(events[0]["slot"], slot.as_str());
    assert_eq!(events[0]["pool"], POOL);
    assert_eq!(events[4]["by"], "ops-alice");
    assert_eq!(events[4]["reason"], "broken PPA");
    assert_eq!(events[5]["reason"], "fixed");
    let times: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");

    // `since` filters; `limit` keeps the newest; the pool's history holds the same.
    assert_eq!(
        h.kinds(&format!("/v1/slots/{slot}/history?since={between}"))
            .await,
        ["enabled", "cleaned"]
    );
    assert_eq!(
        h.kinds(&format!("/v1/slots/{slot}/history?since={t0}&limit=2"))
            .await,
        ["enabled", "cleaned"]
    );
    assert_eq!(
        h.kinds(&format!("/v1/history?pool={POOL}&since={t0}"))
            .await,
        SCRIPTED
    );
    assert_eq!(h.kinds(&format!("/v1/history?since={t0}")).await, SCRIPTED);
    // By default a day back: the slot's first cleaning (at the workers' start) is in too.
    let day = h.kinds(&format!("/v1/slots/{slot}/history")).await;
    assert_eq!(day[0], "cleaned", "{day:?}");
    assert_eq!(day[1..], SCRIPTED, "{day:?}");
    let relative = h.kinds(&format!("/v1/slots/{slot}/history?since=1h")).await;
    assert_eq!(relative, day);

    // A slot with no events since then: `[]`.
    let none = h
        .get(&format!("/v1/slots/{other}/history?since={t0}"))
        .await;
    assert_eq!(none.status, StatusCode::OK, "{}", none.text);
    assert_eq!(none.json, json!([]));

    // Bad input.
    let unknown = h.get("/v1/slots/nope/history").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert_eq!(unknown.json["error"], "unknown_slot");
    let unknown_pool = h.get("/v1/history?pool=nope").await;
    assert_eq!(unknown_pool.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_pool.json["error"], "unknown_pool");
    for bad in ["since=yesterday", "limit=0", "limit=many"] {
        let answer = h.get(&format!("/v1/slots/{slot}/history?{bad}")).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.text
        );
        assert_eq!(answer.json["error"], "bad_request", "{bad}");
    }

    // The assigner keeps nothing: a new one reads the same history.
    h.stack.kill_assigner();
    h.stack.start_assigner().await;
    assert_eq!(h.kinds(&path).await, SCRIPTED);

    // `berth history` prints it, as text and as JSON.
    let out = h
        .stack
        .berth(&["history", &slot, "--since", &t0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), SCRIPTED.len(), "{text}");
    for (line, kind) in lines.iter().zip(SCRIPTED) {
        assert!(
            line.contains(kind) && line.contains(slot.as_str()),
            "{line}"
        );
    }
    assert!(lines[0].contains("ci-job-7"), "{}", lines[0]);
    assert!(
        lines[4].contains("ops-alice") && lines[4].contains("broken PPA"),
        "{}",
        lines[4]
    );
    let out = h
        .stack
        .berth(&[
            "history", "--pool", POOL, "--since", &t0, "--limit", "3", "--format", "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kinds(&json), ["disabled", "enabled", "cleaned"]);
    let out = h.stack.berth(&["history", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    h.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_deleted_under_the_assigner_is_a_503_in_bounded_time() {
    let h = History::start(1).await;
    let ok = h.get("/v1/slots/ppa-1/history").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let conn = berth::broker::connect(&h.stack.config.amqp_url, "berth-test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(
            h.stack.config.names().history_queue().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let started = Instant::now();
    let gone = h.get("/v1/slots/ppa-1/history").await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        gone.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        gone.text
    );
    assert_eq!(gone.json["error"], "history_unavailable");
    assert!(
        gone.json["message"].as_str().unwrap().contains("history"),
        "{}",
        gone.text
    );
    assert!(gone.retry_after.is_some());
    let pool = h.get("/v1/history").await;
    assert_eq!(
        pool.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        pool.text
    );
    // The slots work on without it.
    let acquired = acquire_ok(&h.http, &h.stack.base, "ci", 10).await;
    assert_eq!(acquired["slot"], "ppa-1");
    h.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_events_prints_a_line_per_live_event() {
    let h = History::start(1).await;
    let mut child = h
        .stack
        .berth(&["events", "--pool", POOL, "--format", "json"])
        .env("BERTH_AMQP_URL", &h.stack.config.amqp_url)
        .env("BERTH_NAMESPACE", &h.stack.config.namespace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // It says on stderr when it follows, so that nothing after is missed.
    let mut ready = String::new();
    stderr.read_line(&mut ready).unwrap();
    assert!(ready.contains("following"), "{ready}");
    let acquired = acquire_ok(&h.http, &h.stack.base, "ci-job-9", 10).await;
    assert_eq!(acquired["slot"], "ppa-1");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("an event line");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "assigned", "{line}");
    assert_eq!(event["owner"], "ci-job-9", "{line}");
    let mut child = Proc(child);
    let status = child.signal_and_wait(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "berth events stops on Ctrl-C: {status}");

    // Text: one line naming the slot and the event.
    let mut child = h
        .stack
        .berth(&["events"])
        .env("BERTH_AMQP_URL", &h.stack.config.amqp_url)
        .env("BERTH_NAMESPACE", &h.stack.config.namespace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut ready = String::new();
    stderr.read_line(&mut ready).unwrap();
    let token = acquired["lease_token"].as_str().unwrap();
    let released = h
        .post("/v1/slots/ppa-1/release", json!({"lease_token": token}))
        .await;
    assert_eq!(released.status, StatusCode::ACCEPTED);
    // Its output is read to the end (a reader that goes away ends `berth events`).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("an event line");
    assert!(
        line.contains("released") && line.contains("ppa-1") && line.contains("ci-job-9"),
        "{line}"
    );
    let mut child = Proc(child);
    let status = child.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "berth events stops on SIGTERM: {status}");
    h.stack.stop().await;
}
