//! The operator actions (DESIGN §2 "Operator actions") end to end, with the real binaries:
//! the fake Launchpad, `berth-worker --all`, `berth assigner`, and the real broker. Disable
//! a free slot, drain a held one, revoke one at once, enable, reclaim, an action sent while
//! the worker is stopped, a record a newer berth wrote, and the races.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use berth::record::{BEGIN_MARKER, END_MARKER};
use support::stack::Stack;
use support::*;

/// How long a transition the worker makes (a cleaning included) may take here.
const WITHIN: Duration = Duration::from_secs(20);

struct Ops {
    stack: Stack,
    http: reqwest::Client,
}

impl Ops {
    async fn start(slots: usize) -> Ops {
        Ops {
            stack: Stack::start(slots, 30, "text").await,
            http: reqwest::Client::new(),
        }
    }

    /// A stack whose cleanings of a PPA with uploads keep failing: deletions take an hour
    /// in the fake, an attempt gives up after 1 s, and the pause after a failure is 20 s.
    async fn start_failing_cleanings() -> Ops {
        let stack = Stack::start_tuned(1, 30, "text", |fake, config| {
            fake.deletion_delay = Duration::from_secs(3600);
            config.worker.clean_timeout_secs = 1;
            config.worker.backoff_min_millis = 20_000;
            config.worker.backoff_max_millis = 60_000;
        })
        .await;
        Ops {
            stack,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stack.base)
    }

    async fn act(&self, slot: &str, action: &str, body: Value) -> Answer {
        post(
            &self.http,
            &self.url(&format!("/v1/slots/{slot}/{action}")),
            body,
        )
        .await
    }

    async fn show(&self, slot: &str) -> Value {
        let answer = get(&self.http, &self.url(&format!("/v1/slots/{slot}"))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.json
    }

    /// Waits until `GET /v1/slots/{slot}` shows `state`; answers what it showed.
    async fn wait_state(&self, slot: &str, state: &str) -> Value {
        wait_for(&format!("{slot} to be {state}"), WITHIN, || async {
            let shown = self.show(slot).await;
            if shown["state"] == state {
                Ok(shown)
            } else {
                Err(format!("shown: {shown}"))
            }
        })
        .await
    }

    async fn acquire(&self, wait_secs: u64) -> Answer {
        post(
            &self.http,
            &self.url(&format!("/v1/pools/{POOL}/acquire")),
            json!({"owner": "ci-job", "lease_secs": 300, "wait_secs": wait_secs}),
        )
        .await
    }

    async fn held(&self, slot: &str, verb: &str, token: &str) -> Answer {
        post(
            &self.http,
            &self.url(&format!("/v1/slots/{slot}/{verb}")),
            json!({"lease_token": token}),
        )
        .await
    }

    /// Live publications of `ppa` in the fake Launchpad.
    fn live_uploads(&self, ppa: &str) -> usize {
        let dump = self.stack.fake.dump();
        dump["sources"]
            .as_array()
            .unwrap_or_else(|| panic!("no sources in {dump}"))
            .iter()
            .filter(|s| s["ppa"] == ppa)
            .filter(|s| s["status"] == "Published" || s["status"] == "Pending")
            .count()
    }
}

fn acquired(answer: &Answer) -> (String, String) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    (
        answer.json["slot"].as_str().unwrap().to_owned(),
        answer.json["lease_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_slot_is_handed_to_nobody_until_enabled() {
    let ops = Ops::start(1).await;
    // Bad input first: unknown slot, no reason, a reason too long, --now elsewhere.
    let unknown = ops.act("nope", "disable", json!({"reason": "x"})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert_eq!(unknown.json["error"], "unknown_slot");
    let missing = ops.act("ppa-1", "disable", json!({})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.text);
    let long = ops
        .act("ppa-1", "disable", json!({"reason": "x".repeat(501)}))
        .await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST, "{}", long.text);
    assert!(long.json["message"].as_str().unwrap().contains("500"));
    for (action, code) in [
        ("enable", "wrong_state"),
        ("reclaim", "not_held"),
        ("clean", "wrong_state"),
    ] {
        let refused = ops.act("ppa-1", action, json!({"reason": "r"})).await;
        assert_eq!(
            refused.status,
            StatusCode::CONFLICT,
            "{action}: {}",
            refused.text
        );
        assert_eq!(refused.json["error"], code, "{action}");
    }

    let answer = ops
        .act(
            "ppa-1",
            "disable",
            json!({"reason": "x".repeat(500), "by": "ops-alice"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let shown = ops.wait_state("ppa-1", "disabled").await;
    assert_eq!(shown["disabled_by"], "ops-alice");
    assert_eq!(shown["disabled_reason"], "x".repeat(500));
    assert!(shown["disabled_since"].is_string(), "{shown}");
    let again = ops.act("ppa-1", "disable", json!({"reason": "x"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert!(
        again.json["message"]
            .as_str()
            .unwrap()
            .contains("already disabled")
    );

    let none = ops.acquire(2).await;
    assert_eq!(
        none.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        none.text
    );
    assert_eq!(none.json["error"], "no_slot");

    // The CLI shows it, and enables it: cleaned, then free, then acquirable.
    let out = ops
        .stack
        .berth(&["slot", "show", "ppa-1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("disabled") && text.contains("ops-alice"),
        "{text}"
    );
    let writes_before = ops.stack.fake.history().len();
    let out = ops
        .stack
        .berth(&["slot", "enable", "ppa-1", "--reason", "fixed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ops.wait_state("ppa-1", "free").await;
    let went_through_dirty = ops.stack.fake.history()[writes_before..]
        .iter()
        .any(|w| w.ppa == "ppa-1" && w.description.contains("\"state\":\"dirty\""));
    assert!(went_through_dirty, "enable cleans before freeing");
    acquired(&ops.acquire(5).await);
    ops.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_the_holder_finish_then_disables() {
    let ops = Ops::start(1).await;
    let (slot, token) = acquired(&ops.acquire(5).await);
    ops.stack.fake.add_upload(&slot, "hello", "1.0");
    let answer = ops
        .act(&slot, "disable", json!({"reason": "disk failing"}))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let shown = wait_for("the drain to be written", WITHIN, || async {
        let shown = ops.show(&slot).await;
        if shown["drain"].is_object() {
            Ok(shown)
        } else {
            Err(format!("{shown}"))
        }
    })
    .await;
    assert_eq!(shown["state"], "used");
    assert_eq!(shown["drain"]["reason"], "disk failing");
    assert!(shown["held_since"].is_string(), "{shown}");
    // A second disable without now is refused: it is draining already.
    let again = ops.act(&slot, "disable", json!({"reason": "x"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);

    // The holder keeps it: renew works, held_since does not move.
    let renewed = ops.held(&slot, "renew", &token).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
    assert_eq!(ops.show(&slot).await["held_since"], shown["held_since"]);
    let status = ops.stack.berth(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("used,draining"), "{text}");

    let released = ops.held(&slot, "release", &token).await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    let shown = ops.wait_state(&slot, "disabled").await;
    assert_eq!(shown["disabled_reason"], "disk failing");
    assert!(shown["drain"].is_null(), "{shown}");
    assert_eq!(ops.live_uploads(&slot), 0, "cleaned before it was disabled");
    ops.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_now_revokes_the_lease_and_empties_the_ppa() {
    let ops = Ops::start(1).await;
    let (slot, token) = acquired(&ops.acquire(5).await);
    ops.stack.fake.add_upload(&slot, "hello", "1.0");
    let out = ops
        .stack
        .berth(&["slot", "disable", &slot, "--now", "--reason", "compromised"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = ops.wait_state(&slot, "disabled").await;
    assert_eq!(shown["disabled_reason"], "compromised");
    assert_eq!(ops.live_uploads(&slot), 0);
    let renew = ops.held(&slot, "renew", &token).await;
    assert_eq!(renew.status, StatusCode::CONFLICT, "{}", renew.text);
    assert_eq!(renew.json["error"], "not_held");
    let release = ops.held(&slot, "release", &token).await;
    assert_eq!(release.status, StatusCode::CONFLICT, "{}", release.text);
    ops.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_frees_the_slot_and_the_old_token_is_useless() {
    let ops = Ops::start(1).await;
    let (slot, token) = acquired(&ops.acquire(5).await);
    ops.stack.fake.add_upload(&slot, "hello", "1.0");
    let no_reason = ops.act(&slot, "reclaim", json!({})).await;
    assert_eq!(
        no_reason.status,
        StatusCode::BAD_REQUEST,
        "{}",
        no_reason.text
    );
    let out = ops
        .stack
        .berth(&["slot", "reclaim", &slot, "--reason", "job died"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ops.wait_state(&slot, "free").await;
    assert_eq!(ops.live_uploads(&slot), 0);
    let renew = ops.held(&slot, "renew", &token).await;
    assert_eq!(renew.status, StatusCode::CONFLICT, "{}", renew.text);
    let (again, new_token) = acquired(&ops.acquire(5).await);
    assert_eq!(again, slot);
    let release = ops.held(&slot, "release", &token).await;
    assert_eq!(release.status, StatusCode::FORBIDDEN, "{}", release.text);
    let renew = ops.held(&slot, "renew", &new_token).await;
    assert_eq!(renew.status, StatusCode::OK, "{}", renew.text);
    ops.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_sent_while_the_worker_is_stopped_is_applied_when_it_is_back() {
    let mut ops = Ops::start(1).await;
    ops.stack.stop_workers().await;
    let answer = ops
        .act("ppa-1", "disable", json!({"reason": "maintenance"}))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    assert_eq!(
        ops.show("ppa-1").await["state"],
        "free",
        "nobody applied it yet"
    );
    ops.stack.start_workers();
    let shown = ops.wait_state("ppa-1", "disabled").await;
    assert_eq!(shown["disabled_reason"], "maintenance");
    ops.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_a_newer_berth_is_left_alone() {
    let mut ops = Ops::start(1).await;
    ops.stack.stop_workers().await;
    let line = r#"{"v":2,"state":"parked","owner":"the-future"}"#;
    let description = format!("human text\n\n{BEGIN_MARKER}\n{line}\n{END_MARKER}");
    ops.stack.fake.set_description("ppa-1", &description);
    ops.stack.fake.add_upload("ppa-1", "future", "2.0");
    ops.stack.start_workers();
    let shown = ops.show("ppa-1").await;
    assert_eq!(shown["state"], "unknown", "{shown}");
    assert_eq!(shown["record_version"], 2, "{shown}");
    let refused = ops.act("ppa-1", "disable", json!({"reason": "x"})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    // Not claimed, not cleaned, not rewritten: the worker had time to take the slot over.
    let none = ops.acquire(3).await;
    assert_eq!(
        none.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        none.text
    );
    assert_eq!(ops.stack.fake.description("ppa-1").unwrap(), description);
    assert_eq!(ops.live_uploads("ppa-1"), 1);
    let status = ops.stack.berth(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("unknown"), "{text}");
    ops.stack.stop().await;
}

/// Reclaim racing a release: one of them moves the slot to dirty, the other changes
/// nothing; the slot ends free, once, and the old token is useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_racing_a_release_ends_free_once() {
    let ops = Ops::start(1).await;
    let (slot, token) = acquired(&ops.acquire(5).await);
    let writes_before = ops.stack.fake.history().len();
    let (reclaim, release) = tokio::join!(
        ops.act(&slot, "reclaim", json!({"reason": "race"})),
        ops.held(&slot, "release", &token),
    );
    // Each either was handed over (202) or found the slot no longer held (409).
    for answer in [&reclaim, &release] {
        assert!(
            answer.status == StatusCode::ACCEPTED || answer.status == StatusCode::CONFLICT,
            "{}",
            answer.text
        );
    }
    assert!(
        reclaim.status == StatusCode::ACCEPTED || release.status == StatusCode::ACCEPTED,
        "one of them wins"
    );
    ops.wait_state(&slot, "free").await;
    let dirtied = ops.stack.fake.history()[writes_before..]
        .iter()
        .filter(|w| w.description.contains("\"state\":\"dirty\""))
        .count();
    assert!(dirtied >= 1, "went through dirty");
    let frees = ops.stack.fake.history()[writes_before..]
        .iter()
        .filter(|w| w.description.contains("\"state\":\"free\""))
        .count();
    assert_eq!(frees, 1, "freed once");
    let renew = ops.held(&slot, "renew", &token).await;
    assert_eq!(renew.status, StatusCode::CONFLICT, "{}", renew.text);
    ops.stack.stop().await;
}

/// Disable racing an acquire on the pool's only slot: either the acquire wins (the disable
/// becomes a drain, and the holder keeps the slot) or the disable does (the acquire gets no
/// slot); never both, never neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_racing_an_acquire_has_one_winner() {
    let ops = Ops::start(1).await;
    let (acquire, disable) = tokio::join!(
        ops.acquire(2),
        ops.act("ppa-1", "disable", json!({"reason": "race"})),
    );
    assert_eq!(disable.status, StatusCode::ACCEPTED, "{}", disable.text);
    if acquire.status == StatusCode::OK {
        let (slot, token) = acquired(&acquire);
        let shown = wait_for("the drain to be written", WITHIN, || async {
            let shown = ops.show(&slot).await;
            if shown["drain"].is_object() {
                Ok(shown)
            } else {
                Err(format!("{shown}"))
            }
        })
        .await;
        assert_eq!(shown["state"], "used", "{shown}");
        let renew = ops.held(&slot, "renew", &token).await;
        assert_eq!(
            renew.status,
            StatusCode::OK,
            "the holder keeps it: {}",
            renew.text
        );
        let released = ops.held(&slot, "release", &token).await;
        assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    } else {
        assert_eq!(acquire.json["error"], "no_slot", "{}", acquire.text);
    }
    ops.wait_state("ppa-1", "disabled").await;
    ops.stack.stop().await;
}

/// `clean` on a dirty slot whose cleaning keeps failing: tried again at once, not after the
/// pause its failures earned, with the count of failures reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_retries_a_failing_cleaning_now() {
    let ops = Ops::start_failing_cleanings().await;
    let (slot, token) = acquired(&ops.acquire(5).await);
    ops.stack.fake.add_upload(&slot, "stuck", "1.0");
    let released = ops.held(&slot, "release", &token).await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    let failed = wait_for("a failed cleaning", WITHIN, || async {
        let shown = ops.show(&slot).await;
        if shown["clean_failures"].as_u64() >= Some(1) {
            Ok(shown)
        } else {
            Err(format!("{shown}"))
        }
    })
    .await;
    assert_eq!(failed["state"], "dirty");
    assert!(failed["last_error"].is_string(), "{failed}");
    let writes_before = ops.stack.fake.history().len();
    let asked = std::time::Instant::now();
    let out = ops
        .stack
        .berth(&["slot", "clean", &slot, "--reason", "retry please"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reset to 0, then failed again well before the 20 s pause was over.
    wait_for(
        "the cleaning to be tried again",
        Duration::from_secs(10),
        || async {
            let writes = ops.stack.fake.history()[writes_before..].to_vec();
            let reset = writes
                .iter()
                .position(|w| w.description.contains("\"clean_failures\":0"));
            let again = reset.and_then(|at| {
                writes[at..]
                    .iter()
                    .find(|w| w.description.contains("\"clean_failures\":1"))
            });
            match again {
                Some(_) => Ok(()),
                None => Err(format!("{} writes since the action", writes.len())),
            }
        },
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    ops.stack.stop().await;
}

/// Enable racing a drain's end (the holder's release): whichever the worker applies first,
/// the drain is cancelled or the disabled slot enabled, and the slot ends free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_racing_a_drain_ends_free() {
    let ops = Ops::start(1).await;
    let (slot, token) = acquired(&ops.acquire(5).await);
    let answer = ops.act(&slot, "disable", json!({"reason": "drain"})).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    wait_for("the drain to be written", WITHIN, || async {
        let shown = ops.show(&slot).await;
        if shown["drain"].is_object() {
            Ok(())
        } else {
            Err(format!("{shown}"))
        }
    })
    .await;
    let (release, enable) = tokio::join!(
        ops.held(&slot, "release", &token),
        ops.act(&slot, "enable", json!({"reason": "changed my mind"})),
    );
    assert_eq!(release.status, StatusCode::ACCEPTED, "{}", release.text);
    assert_eq!(enable.status, StatusCode::ACCEPTED, "{}", enable.text);
    let shown = ops.wait_state(&slot, "free").await;
    assert!(
        shown["drain"].is_null() && shown["disabled_reason"].is_null(),
        "{shown}"
    );
    acquired(&ops.acquire(5).await);
    ops.stack.stop().await;
}
