//! The `berth` client as a CI job runs it, against the whole stack as processes: it rides
//! out an assigner restart, `berth run` tells its outcomes apart by exit code (75, 76, the
//! command's own), every `--format` parses, renew keeps the lease length; and what an
//! operator reads: `/metrics` parses and follows a cycle, JSON logs parse line by line.

mod support;

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use support::process::text;
use support::stack::Stack;
use support::*;

/// Runs a command to its end without blocking the test's runtime, which serves the fake
/// Launchpad the workers call meanwhile.
trait OutputAsync {
    async fn output_async(self) -> Output;
}

impl OutputAsync for &mut std::process::Command {
    async fn output_async(self) -> Output {
        support::process::output_of(self).await
    }
}

/// Waits for a child's exit (polling, with a deadline) and collects its output.
async fn finish(child: Child, what: &str, within: Duration) -> Output {
    let pid = child.id();
    let child = std::sync::Arc::new(std::sync::Mutex::new(Some(child)));
    wait_for(what, within, || {
        let child = std::sync::Arc::clone(&child);
        async move {
            let mut guard = child.lock().unwrap();
            match guard.as_mut().unwrap().try_wait().unwrap() {
                Some(_) => Ok(()),
                None => Err(format!("pid {pid} still running")),
            }
        }
    })
    .await;
    let child = child.lock().unwrap().take().unwrap();
    child.wait_with_output().unwrap()
}

async fn slots_in(base: &str, state: &str) -> f64 {
    let http = reqwest::Client::new();
    let text = get(&http, &format!("{base}/metrics")).await.text;
    metric_value(
        &parse_metrics(&text),
        "berth_slots",
        &[("pool", POOL), ("state", state)],
    )
}

#[tokio::test]
async fn waiting_clients_ride_out_an_assigner_restart() {
    let mut stack = Stack::start(1, 30, "text").await;
    let http = reqwest::Client::new();
    let held = acquire_ok(&http, &stack.base, "holder", 10).await;

    let spawn = |args: &[&str]| {
        stack
            .berth(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let acquire = spawn(&[
        "acquire", "--pool", "ppa", "--wait", "60s", "--format", "json",
    ]);
    let run = spawn(&[
        "run",
        "--pool",
        "ppa",
        "--wait",
        "60s",
        "--",
        "sh",
        "-c",
        "echo ran in $BERTH_SLOT",
    ]);
    wait_for("both clients to wait", Duration::from_secs(10), || async {
        let n = metric(&http, &stack.base, "berth_acquire_waiting").await;
        if n == 2.0 {
            Ok(())
        } else {
            Err(format!("{n} waiting"))
        }
    })
    .await;

    stack.kill_assigner();
    stack.start_assigner().await;
    let released = post(
        &http,
        &format!("{}/v1/slots/ppa-1/release", stack.base),
        json!({"lease_token": held["lease_token"]}),
    )
    .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);

    // Whichever gets the slot first: `acquire` holds it until the test gives it back.
    let acquired = finish(
        acquire,
        "berth acquire to get a slot",
        Duration::from_secs(60),
    )
    .await;
    let stderr = text(&acquired.stderr);
    assert_eq!(acquired.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("retrying"),
        "one line says it retries: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "and nothing else: {stderr}");
    let lease: Value = serde_json::from_slice(&acquired.stdout).unwrap();
    let released = post(
        &http,
        &format!("{}/v1/slots/ppa-1/release", stack.base),
        json!({"lease_token": lease["lease_token"]}),
    )
    .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);

    let ran = finish(run, "berth run to run its command", Duration::from_secs(60)).await;
    let stderr = text(&ran.stderr);
    assert_eq!(ran.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(text(&ran.stdout), "ran in ppa-1\n");
    assert!(stderr.contains("retrying"), "{stderr}");
    stack.stop().await;
}

#[tokio::test]
async fn berth_run_exit_codes_tell_the_outcomes_apart() {
    let stack = Stack::start(1, 3, "text").await;
    let http = reqwest::Client::new();

    // The command's own code, with the lease's length in its environment.
    let out = stack
        .berth(&[
            "run",
            "--pool",
            "ppa",
            "--wait",
            "10",
            "--lease",
            "40",
            "--",
            "sh",
            "-c",
            "echo $BERTH_LEASE_SECS; exit 7",
        ])
        .output_async()
        .await;
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "40\n");

    // 75: no slot came free within the wait.
    let held = acquire_ok(&http, &stack.base, "holder", 20).await;
    let out = stack
        .berth(&["run", "--pool", "ppa", "--wait", "1", "--", "true"])
        .output_async()
        .await;
    assert_eq!(out.status.code(), Some(75), "stderr: {}", text(&out.stderr));
    let released = post(
        &http,
        &format!("{}/v1/slots/ppa-1/release", stack.base),
        json!({"lease_token": held["lease_token"]}),
    )
    .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);

    // 76: the slot is reclaimed by an operator while the command runs (here the command
    // asks for it itself, so the test needs no timing), so the next renew answers 409; the
    // command gets SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("got-sigterm");
    let script = r#"trap 'echo TERM > "$MARK"; exit 143' TERM
        "$BERTH" slot reclaim "$BERTH_SLOT" --reason "stuck job" >/dev/null || exit 9
        while :; do sleep 0.1; done"#;
    let out = stack
        .berth(&[
            "run",
            "--pool",
            "ppa",
            "--wait",
            "30",
            "--lease",
            "3",
            "--kill-after",
            "10",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("MARK", &mark)
        .output_async()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "stderr: {stderr}");
    assert!(stderr.contains("lost the lease"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default(),
        "TERM\n",
        "the command got SIGTERM; stderr: {stderr}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn every_format_parses_and_renew_keeps_the_lease_length() {
    let stack = Stack::start(1, 30, "text").await;

    // json: valid, with the lease's length.
    let out = stack
        .berth(&[
            "acquire", "--pool", "ppa", "--wait", "10", "--lease", "45", "--format", "json",
        ])
        .output_async()
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lease: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lease["lease_secs"], 45, "{lease}");
    for args in [
        vec!["renew", "--format", "json"],
        vec!["status", "--format", "json"],
        vec!["release", "--format", "json"],
    ] {
        let out = stack
            .berth(&args)
            .env("BERTH_SLOT", lease["slot"].as_str().unwrap())
            .env("BERTH_LEASE_TOKEN", lease["lease_token"].as_str().unwrap())
            .env("BERTH_LEASE_SECS", "45")
            .output_async()
            .await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let value: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} prints JSON ({e}): {}", text(&out.stdout)));
        assert!(value.is_object(), "{value}");
    }
    wait_for(
        "ppa-1 to be free again",
        Duration::from_secs(15),
        || async {
            match stack.fake.description("ppa-1") {
                Some(d) if d.contains("\"state\":\"free\"") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // env: every output `eval`s in a shell; renew without --lease keeps the holder's 45 s
    // (the server's default is an hour).
    let pipeline = r#"set -e
        eval "$("$BERTH" acquire --pool ppa --wait 10 --lease 45 --format env)"
        test "$BERTH_LEASE_SECS" = 45
        eval "$("$BERTH" renew --format env)"
        echo "expires=$BERTH_LEASE_EXPIRES secs=$BERTH_LEASE_SECS"
        eval "$("$BERTH" status --format env)"
        echo "pools=$BERTH_POOLS slots=$BERTH_POOL_PPA_SLOTS used=$BERTH_POOL_PPA_USED"
        eval "$("$BERTH" release --format env)"
        echo "slot=${BERTH_SLOT:-unset}""#;
    let out = std::process::Command::new("sh")
        .args(["-c", pipeline])
        .env("BERTH", berth_bin())
        .env("BERTH_URL", &stack.base)
        .env_remove("BERTH_SLOT")
        .env_remove("BERTH_LEASE_TOKEN")
        .env_remove("BERTH_LEASE_SECS")
        .output_async()
        .await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let expires: chrono::DateTime<chrono::Utc> = stdout
        .split("expires=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    let left = (expires - chrono::Utc::now()).num_seconds();
    assert!(
        (35..=46).contains(&left),
        "renewed for 45 s, not the default: {left} s left"
    );
    assert!(stdout.contains("secs=45"), "{stdout}");
    assert!(stdout.contains("pools=ppa slots=1 used=1"), "{stdout}");
    assert!(stdout.contains("slot=unset"), "{stdout}");
    stack.stop().await;
}

#[tokio::test]
async fn metrics_follow_a_cycle_and_json_logs_parse() {
    let stack = Stack::start(1, 30, "json").await;
    let http = reqwest::Client::new();
    let in_state = |state: &'static str, want: f64| {
        let base = stack.base.clone();
        move || {
            let base = base.clone();
            async move {
                let n = slots_in(&base, state).await;
                if n == want {
                    Ok(())
                } else {
                    Err(format!("{n} {state}"))
                }
            }
        }
    };
    wait_for(
        "berth_slots free = 1",
        Duration::from_secs(15),
        in_state("free", 1.0),
    )
    .await;
    let lease = acquire_ok(&http, &stack.base, "metrics", 10).await;
    wait_for(
        "berth_slots used = 1",
        Duration::from_secs(15),
        in_state("used", 1.0),
    )
    .await;
    assert_eq!(slots_in(&stack.base, "free").await, 0.0);
    stack.fake.add_upload("ppa-1", "hello", "1.0-1");
    let released = post(
        &http,
        &format!("{}/v1/slots/ppa-1/release", stack.base),
        json!({"lease_token": lease["lease_token"]}),
    )
    .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    wait_for(
        "berth_slots used = 0",
        Duration::from_secs(15),
        in_state("used", 0.0),
    )
    .await;
    wait_for(
        "berth_slots free = 1 again",
        Duration::from_secs(15),
        in_state("free", 1.0),
    )
    .await;
    let metrics = parse_metrics(&get(&http, &format!("{}/metrics", stack.base)).await.text);
    let assigned = [("pool", POOL), ("outcome", "assigned")];
    assert_eq!(
        metric_value(&metrics, "berth_acquire_duration_seconds", &assigned),
        1.0
    );
    assert_eq!(metric_value(&metrics, "berth_broker_up", &[]), 1.0);
    let release = [("route", "/v1/slots/{slot}/release"), ("code", "202")];
    assert_eq!(
        metric_value(&metrics, "berth_requests_total", &release),
        1.0
    );

    // The assigner's log: one JSON object per line, span fields included.
    let log = std::fs::read_to_string(stack.assigner_log(1)).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(!lines.is_empty(), "the assigner logged nothing");
    let assigned = lines
        .iter()
        .find(|l| l["fields"]["message"] == "slot assigned")
        .unwrap_or_else(|| panic!("no `slot assigned` line in:\n{log}"));
    assert_eq!(assigned["span"]["pool"], POOL, "{assigned}");
    assert!(assigned["span"]["request_id"].is_string(), "{assigned}");
    stack.stop().await;
}
