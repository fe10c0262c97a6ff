//! Clients and roles (DESIGN §4 "Clients and roles"), against the whole stack as processes
//! with `[auth] mode = "tokens"`: every role on every route of the OpenAPI document (allowed,
//! or `403`), one `401` for missing, malformed and unknown tokens, pools, quotas (`429`, and
//! free again after a release), a stranger's release refused before the store is read, one
//! `max_held` shared by two assigners, the recorded owner, and the `berth` commands with
//! `BERTH_TOKEN`, `--token-file` and the lines of `berth token new`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use berth::access::{AuthConfig, AuthMode, ClientConfig, Role, api_token_hash};
use berth::config::{Config, PoolConfig};
use berth::store::LaunchpadStore;
use support::process::{output_of, text};
use support::stack::Stack;
use support::*;

const OPERATOR: &str = "operator-token-0123456789";
const CLIENT: &str = "client-token-0123456789";
const READER: &str = "reader-token-0123456789";
/// A client of pool `ppa` only.
const PPA_ONLY: &str = "ppa-only-token-0123456789";

fn clients() -> Vec<ClientConfig> {
    vec![
        ClientConfig::new("ops", OPERATOR, Role::Operator),
        ClientConfig::new("ci", CLIENT, Role::Client),
        ClientConfig::new("dash", READER, Role::Reader),
        ClientConfig {
            pools: Some(vec![POOL.into()]),
            ..ClientConfig::new("narrow", PPA_ONLY, Role::Client)
        },
    ]
}

/// Pool `ppa` of `ppa-1`, `ppa-2` and pool `other` of `ppa-3`, with `clients` let in.
async fn stack(clients: Vec<ClientConfig>, tune: impl FnOnce(&mut Config)) -> Stack {
    Stack::start_tuned(3, 30, "text", move |_, config| {
        config.pools = vec![
            PoolConfig {
                name: POOL.into(),
                slots: vec!["ppa-1".into(), "ppa-2".into()],
            },
            PoolConfig {
                name: "other".into(),
                slots: vec!["ppa-3".into()],
            },
        ];
        config.auth = AuthConfig {
            mode: AuthMode::Tokens,
            clients,
            ..AuthConfig::default()
        };
        tune(config);
    })
    .await
}

/// One request with `Authorization` set to `authorization` (as is) when given.
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = http.request(method, url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("HTTP call");
    // A live stream (`/v1/events/stream`) never ends: its status is the answer.
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        return Answer {
            status: response.status(),
            retry_after: None,
            text: String::new(),
            json: Value::Null,
        };
    }
    answer(response).await
}

/// Waits until the store no longer records `slot` as held.
async fn wait_unused(stack: &Stack, slot: &str) {
    wait_for(
        "the slot's release to be written",
        Duration::from_secs(30),
        || async {
            let description = stack.fake.description(slot).unwrap_or_default();
            if description.contains("\"state\":\"used\"") {
                Err(description)
            } else {
                Ok(())
            }
        },
    )
    .await;
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn acquire_as(stack: &Stack, token: &str, pool: &str, owner: &str, wait: u64) -> Answer {
    call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{}/v1/pools/{pool}/acquire", stack.base),
        Some(&bearer(token)),
        Some(json!({"owner": owner, "wait_secs": wait})),
    )
    .await
}

async fn release_as(stack: &Stack, token: &str, slot: &str, lease_token: &str) -> Answer {
    call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{}/v1/slots/{slot}/release", stack.base),
        Some(&bearer(token)),
        Some(json!({"lease_token": lease_token})),
    )
    .await
}

/// What a route needs, by method and path template: the expectations of this test, which
/// must name every route of the OpenAPI document.
fn needs(method: &str, path: &str) -> &'static str {
    match (method, path) {
        (
            "GET",
            "/healthz" | "/readyz" | "/openapi.json" | "/metrics" | "/" | "/page.js" | "/page.css",
        ) => "open",
        ("GET", p) if p.starts_with("/v1/") => "read",
        (
            "POST",
            "/v1/pools/{pool}/acquire" | "/v1/slots/{slot}/renew" | "/v1/slots/{slot}/release",
        ) => "use",
        ("POST", p) if p.starts_with("/v1/slots/{slot}/") => "operate",
        other => panic!("the test does not know route {other:?}: add it to `needs`"),
    }
}

fn allowed(role: Role, need: &str) -> bool {
    match need {
        "open" | "read" => true,
        "use" => role != Role::Reader,
        "operate" => role == Role::Operator,
        other => unreachable!("{other}"),
    }
}

#[tokio::test]
async fn every_role_on_every_route_is_allowed_or_forbidden_and_no_token_is_unauthorized() {
    let stack = stack(clients(), |_| {}).await;
    let http = reqwest::Client::new();
    let document = call(
        &http,
        Method::GET,
        &format!("{}/openapi.json", stack.base),
        None,
        None,
    )
    .await
    .json;
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(routes.len() >= 16, "{routes:?}");
    let roles = [
        (Role::Reader, READER),
        (Role::Client, CLIENT),
        (Role::Operator, OPERATOR),
    ];
    let mut checked = 0;
    for (method, path) in &routes {
        let need = needs(method, path);
        let url = format!(
            "{}{}",
            stack.base,
            path.replace("{pool}", POOL).replace("{slot}", "ppa-1")
        );
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        // A body that no handler takes as a real request: `{}` lacks what acquire, renew,
        // release, disable and reclaim need; enable and clean find a free slot (`409`).
        let body = (method == Method::POST).then(|| json!({}));
        let anonymous = call(&http, method.clone(), &url, None, body.clone()).await;
        if need == "open" {
            assert_eq!(
                anonymous.status,
                StatusCode::OK,
                "{method} {path}: {}",
                anonymous.text
            );
        } else {
            assert_eq!(
                anonymous.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token: {}",
                anonymous.text
            );
        }
        for (role, token) in roles {
            let got = call(
                &http,
                method.clone(),
                &url,
                Some(&bearer(token)),
                body.clone(),
            )
            .await;
            if allowed(role, need) {
                assert!(
                    got.status != StatusCode::UNAUTHORIZED && got.status != StatusCode::FORBIDDEN,
                    "{role:?} on {method} {path} is allowed, got {}: {}",
                    got.status,
                    got.text
                );
            } else {
                assert_eq!(
                    (got.status, got.json["error"].as_str()),
                    (StatusCode::FORBIDDEN, Some("forbidden")),
                    "{role:?} on {method} {path}: {}",
                    got.text
                );
                assert!(
                    got.json["message"]
                        .as_str()
                        .unwrap()
                        .contains(role_name(role)),
                    "{}",
                    got.text
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * roles.len());

    // A client of pool `ppa` only: `403` for the other pool and its slot, allowed for its own.
    let other = acquire_as(&stack, PPA_ONLY, "other", "job", 1).await;
    assert_eq!(
        (other.status, other.json["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{}",
        other.text
    );
    assert!(other.text.contains("other"), "{}", other.text);
    let slot = call(
        &http,
        Method::GET,
        &format!("{}/v1/slots/ppa-3", stack.base),
        Some(&bearer(PPA_ONLY)),
        None,
    )
    .await;
    assert_eq!(slot.status, StatusCode::FORBIDDEN, "{}", slot.text);
    let own = call(
        &http,
        Method::GET,
        &format!("{}/v1/slots/ppa-1", stack.base),
        Some(&bearer(PPA_ONLY)),
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    stack.stop().await;
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_get_one_and_the_same_401() {
    let stack = stack(clients(), |config| {
        config.auth.metrics_token_sha256 = Some(api_token_hash("metrics-token"));
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/pools/{POOL}/acquire", stack.base);
    let body = Some(json!({"owner": "job"}));
    let unknown = bearer("not-a-token-anyone-has");
    let near = bearer(&format!("{CLIENT}x"));
    let basic = format!("Basic {CLIENT}");
    let mut answers = Vec::new();
    for authorization in [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some(basic.as_str()),
        Some("Bearer two words"),
        Some(unknown.as_str()),
        Some(near.as_str()),
    ] {
        let got = call(&http, Method::POST, &url, authorization, body.clone()).await;
        assert_eq!(
            got.status,
            StatusCode::UNAUTHORIZED,
            "{authorization:?}: {}",
            got.text
        );
        assert_eq!(got.json["error"], "unauthorized", "{}", got.text);
        assert!(
            !got.text.contains(CLIENT),
            "the token is not echoed: {}",
            got.text
        );
        answers.push(got.text);
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "the same body every time: {answers:?}");

    // The metrics token guards /metrics, and only it does.
    let metrics = format!("{}/metrics", stack.base);
    let without = call(&http, Method::GET, &metrics, None, None).await;
    assert_eq!(without.status, StatusCode::UNAUTHORIZED, "{}", without.text);
    assert_eq!(without.text, answers[0]);
    let client = call(&http, Method::GET, &metrics, Some(&bearer(CLIENT)), None).await;
    assert_eq!(client.status, StatusCode::UNAUTHORIZED);
    let with = call(
        &http,
        Method::GET,
        &metrics,
        Some(&bearer("metrics-token")),
        None,
    )
    .await;
    assert_eq!(with.status, StatusCode::OK, "{}", with.text);
    assert!(with.text.contains("berth_requests_total"), "{}", with.text);
    let health = call(
        &http,
        Method::GET,
        &format!("{}/healthz", stack.base),
        None,
        None,
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    stack.stop().await;
}

#[tokio::test]
async fn max_held_and_max_waiting_answer_429_and_free_up_after_a_release() {
    let mut limited = clients();
    limited[1].max_held = Some(1);
    limited[1].max_waiting = Some(1);
    let stack = stack(limited, |_| {}).await;

    let first = acquire_as(&stack, CLIENT, POOL, "job-1", 10).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let slot = first.json["slot"].as_str().unwrap().to_owned();
    let lease = first.json["lease_token"].as_str().unwrap().to_owned();
    // The record names the client only (public_owner defaults to "client").
    let description = stack.fake.description(&slot).unwrap();
    assert!(description.contains("\"owner\":\"ci\""), "{description}");
    assert!(!description.contains("job-1"), "{description}");

    let second = acquire_as(&stack, CLIENT, POOL, "job-2", 10).await;
    assert_eq!(
        (second.status, second.json["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")),
        "{}",
        second.text
    );
    let message = second.json["message"].as_str().unwrap();
    assert!(
        message.contains("holds 1") && message.contains("max_held is 1"),
        "{message}"
    );
    assert!(second.retry_after.is_some(), "429 carries Retry-After");

    let released = release_as(&stack, CLIENT, &slot, &lease).await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    let again = wait_for(
        "the client's quota to free up",
        Duration::from_secs(30),
        || async {
            let got = acquire_as(&stack, CLIENT, POOL, "job-3", 5).await;
            match got.status {
                StatusCode::OK => Ok(got),
                _ => Err(got.text),
            }
        },
    )
    .await;
    let slot = again.json["slot"].as_str().unwrap().to_owned();
    let lease = again.json["lease_token"].as_str().unwrap().to_owned();
    assert_eq!(
        release_as(&stack, CLIENT, &slot, &lease).await.status,
        StatusCode::ACCEPTED
    );

    // max_waiting: the operator holds the only slot of `other`; one request of the client
    // waits for it, a second is refused; once the first is answered, the client may wait again.
    let held = acquire_as(&stack, OPERATOR, "other", "op", 10).await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.text);
    wait_unused(&stack, &slot).await;
    let waiting = {
        let base = stack.base.clone();
        tokio::spawn(async move {
            call(
                &reqwest::Client::new(),
                Method::POST,
                &format!("{base}/v1/pools/other/acquire"),
                Some(&bearer(CLIENT)),
                Some(json!({"owner": "job-w", "wait_secs": 30})),
            )
            .await
        })
    };
    wait_for(
        "the request to wait in the queue of `other`",
        Duration::from_secs(10),
        || async {
            let pools = call(
                &reqwest::Client::new(),
                Method::GET,
                &format!("{}/v1/pools", stack.base),
                Some(&bearer(READER)),
                None,
            )
            .await;
            let waiting = pools.json["pools"]
                .as_array()
                .and_then(|pools| pools.iter().find(|p| p["pool"] == "other"))
                .map(|p| p["waiting"].clone());
            match waiting {
                Some(w) if w == json!(1) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let refused = acquire_as(&stack, CLIENT, "other", "job-x", 1).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text
    );
    let message = refused.json["message"].as_str().unwrap();
    assert!(
        message.contains("1 acquire requests waiting") && message.contains("max_waiting is 1"),
        "{message}"
    );
    let op_slot = held.json["slot"].as_str().unwrap();
    let op_lease = held.json["lease_token"].as_str().unwrap();
    assert_eq!(
        release_as(&stack, OPERATOR, op_slot, op_lease).await.status,
        StatusCode::ACCEPTED
    );
    let served = waiting.await.unwrap();
    assert_eq!(served.status, StatusCode::OK, "{}", served.text);
    let slot = served.json["slot"].as_str().unwrap().to_owned();
    let lease = served.json["lease_token"].as_str().unwrap().to_owned();
    assert_eq!(
        release_as(&stack, CLIENT, &slot, &lease).await.status,
        StatusCode::ACCEPTED
    );
    wait_unused(&stack, &slot).await;
    let after = acquire_as(&stack, CLIENT, "other", "job-y", 0).await;
    assert_ne!(
        after.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        after.text
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_strangers_renew_and_release_are_refused_whatever_the_token() {
    let mut clients = clients();
    clients.push(ClientConfig::new(
        "other-ci",
        "stranger-token-0123456789",
        Role::Client,
    ));
    let stack = stack(clients, |config| {
        config.auth.public_owner = Some(berth::access::PublicOwner::Plain);
    })
    .await;
    let got = acquire_as(&stack, CLIENT, POOL, "https://ci.example/job/7", 10).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let slot = got.json["slot"].as_str().unwrap().to_owned();
    let lease = got.json["lease_token"].as_str().unwrap().to_owned();
    let description = stack.fake.description(&slot).unwrap();
    assert!(
        description.contains("\"owner\":\"ci/https://ci.example/job/7\""),
        "public_owner = plain records <client>/<owner>: {description}"
    );
    let writes = stack.fake.history().len();
    // The stranger has the right token even: still not its slot.
    for token in [lease.as_str(), "wrong"] {
        let refused = release_as(&stack, "stranger-token-0123456789", &slot, token).await;
        assert_eq!(
            (refused.status, refused.json["error"].as_str()),
            (StatusCode::CONFLICT, Some("not_held")),
            "{}",
            refused.text
        );
        assert!(
            refused.text.contains("not held by this client"),
            "{}",
            refused.text
        );
        let renew = call(
            &reqwest::Client::new(),
            Method::POST,
            &format!("{}/v1/slots/{slot}/renew", stack.base),
            Some(&bearer("stranger-token-0123456789")),
            Some(json!({"lease_token": token})),
        )
        .await;
        assert_eq!(renew.status, StatusCode::CONFLICT, "{}", renew.text);
        assert!(
            renew.text.contains("not held by this client"),
            "{}",
            renew.text
        );
    }
    // The holder still holds it, renews and releases it.
    let view = call(
        &reqwest::Client::new(),
        Method::GET,
        &format!("{}/v1/slots/{slot}", stack.base),
        Some(&bearer(READER)),
        None,
    )
    .await;
    assert_eq!(view.json["state"], "used", "{}", view.text);
    assert_eq!(
        stack.fake.history().len(),
        writes,
        "no write for the stranger"
    );
    let renew = call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{}/v1/slots/{slot}/renew", stack.base),
        Some(&bearer(CLIENT)),
        Some(json!({"lease_token": lease})),
    )
    .await;
    assert_eq!(renew.status, StatusCode::OK, "{}", renew.text);
    assert_eq!(
        release_as(&stack, CLIENT, &slot, &lease).await.status,
        StatusCode::ACCEPTED
    );
    stack.stop().await;
}

#[tokio::test]
async fn two_assigners_share_one_max_held_count() {
    let mut limited = clients();
    limited[1].max_held = Some(2);
    let stack = stack(limited, |_| {}).await;
    // A second assigner in-process, on the same broker namespace and store.
    let mut second_config = stack.config.clone();
    second_config.listen = "127.0.0.1:0".parse().unwrap();
    let store = Arc::new(LaunchpadStore::from_config(&second_config.store).unwrap());
    let second = TestApp::spawn(second_config, store).await;
    let other = second.base.clone();

    let a = acquire_as(&stack, CLIENT, POOL, "job-a", 10).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let b = call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{other}/v1/pools/{POOL}/acquire"),
        Some(&bearer(CLIENT)),
        Some(json!({"owner": "job-b", "wait_secs": 10})),
    )
    .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    // The client holds 2, one through each assigner: both refuse a third.
    for base in [stack.base.as_str(), other.as_str()] {
        let c = call(
            &reqwest::Client::new(),
            Method::POST,
            &format!("{base}/v1/pools/other/acquire"),
            Some(&bearer(CLIENT)),
            Some(json!({"owner": "job-c", "wait_secs": 1})),
        )
        .await;
        assert_eq!(
            (c.status, c.json["error"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")),
            "at {base}: {}",
            c.text
        );
        assert!(c.text.contains("max_held is 2"), "{}", c.text);
    }
    // Released through the other assigner than the one that granted it.
    let slot = a.json["slot"].as_str().unwrap();
    let lease = a.json["lease_token"].as_str().unwrap();
    let released = call(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{other}/v1/slots/{slot}/release"),
        Some(&bearer(CLIENT)),
        Some(json!({"lease_token": lease})),
    )
    .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    wait_for(
        "the first assigner to see the quota free",
        Duration::from_secs(30),
        || async {
            let got = acquire_as(&stack, CLIENT, "other", "job-d", 5).await;
            match got.status {
                StatusCode::OK => Ok(()),
                _ => Err(got.text),
            }
        },
    )
    .await;
    second.stop().await;
    stack.stop().await;
}

#[tokio::test]
async fn berth_token_new_prints_lines_that_let_its_token_in_and_the_commands_send_it() {
    // The operator comes from `berth token new`, pasted as printed.
    let mut command = std::process::Command::new(berth_bin());
    command.args(["token", "new", "--name", "night-ops", "--role", "operator"]);
    let out = output_of(&mut command).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let token = printed
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64, "{printed}");
    let toml_part: String = printed
        .lines()
        .skip_while(|l| !l.starts_with("[[auth.clients]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    #[derive(serde::Deserialize)]
    struct Pasted {
        auth: AuthConfig,
    }
    let pasted: Pasted =
        toml::from_str(&format!("[auth]\nmode = \"tokens\"\n{toml_part}")).unwrap();
    assert_eq!(pasted.auth.clients.len(), 1);
    assert!(!printed.contains(&api_token_hash("x")));
    let mut with_pasted = clients();
    with_pasted.extend(pasted.auth.clients);
    let stack = stack(with_pasted, |_| {}).await;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // A token file others may read is refused, naming the chmod to run.
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut open = stack.berth(&["slot", "show", "ppa-1", "--format", "json"]);
    open.env_remove("BERTH_TOKEN")
        .arg("--token-file")
        .arg(&token_file);
    let out = output_of(&mut open).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    berth::secret_file::write_secret_file(&token_file, &format!("{token}\n")).unwrap();
    let mut status = stack.berth(&["slot", "show", "ppa-1", "--format", "json"]);
    status
        .env_remove("BERTH_TOKEN")
        .arg("--token-file")
        .arg(&token_file);
    let out = output_of(&mut status).await;
    assert!(out.status.success(), "--token-file: {}", text(&out.stderr));

    let mut anonymous = stack.berth(&["status"]);
    anonymous
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_TOKEN_FILE");
    let out = output_of(&mut anonymous).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );

    let mut acquire = stack.berth(&[
        "acquire", "--pool", POOL, "--owner", "cli", "--format", "json",
    ]);
    acquire.env("BERTH_TOKEN", CLIENT);
    let out = output_of(&mut acquire).await;
    assert!(out.status.success(), "BERTH_TOKEN: {}", text(&out.stderr));
    let lease: Value = serde_json::from_slice(&out.stdout).unwrap();
    let slot = lease["slot"].as_str().unwrap();

    // The pasted operator acts on slots; a client may not.
    let mut reclaim = stack.berth(&["slot", "reclaim", slot, "--reason", "test"]);
    reclaim.env("BERTH_TOKEN", CLIENT);
    let out = output_of(&mut reclaim).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("forbidden"),
        "{}",
        text(&out.stderr)
    );
    let mut reclaim = stack.berth(&["slot", "reclaim", slot, "--reason", "test"]);
    reclaim.env("BERTH_TOKEN", &token);
    let out = output_of(&mut reclaim).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    stack.stop().await;
}
