//! `berth dev` as a user runs it (the real binary, which supervises real `berth-worker`
//! processes over the in-process fake Launchpad), driven over HTTP, by the `berth` client
//! commands, and by `tests/curl.sh`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use berth::config::Config;
use support::*;

/// A running `berth dev` in its own namespace, on ports picked by the system.
struct Dev {
    proc: Proc,
    base: String,
    config: Config,
    /// What `berth dev` printed after the line that names the assigner.
    stdout: std::sync::mpsc::Receiver<String>,
}

/// A port `p` such that `p` … `p + n - 1` were all free a moment ago.
fn free_ports(n: u16) -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port.checked_add(n).is_none() {
            continue;
        }
        let rest: Result<Vec<_>, _> = (1..n)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)))
            .collect();
        if rest.is_ok() {
            return port;
        }
    }
}

impl Dev {
    fn start(slots: usize) -> Dev {
        Dev::start_with(slots, &[])
    }

    /// `berth dev` with `extra` flags.
    fn start_with(slots: usize, extra: &[&str]) -> Dev {
        worker_bin();
        let mut config = Config::dev(slots);
        config.namespace = format!("t-{}", uuid::Uuid::new_v4().simple());
        let metrics_base = free_ports(slots as u16);
        let mut child = Command::new(berth_bin())
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--store-listen",
                "127.0.0.1:0",
                "--worker-metrics-listen",
                &format!("127.0.0.1:{metrics_base}"),
                "--slots",
            ])
            .arg(slots.to_string())
            .args(extra)
            .env("BERTH_NAMESPACE", &config.namespace)
            .env("BERTH_AMQP_URL", amqp_url())
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn,lapin=error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start berth dev");
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        // The first line names the assigner once it is ready.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let base = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!("berth dev did not announce itself within 30 s; printed: {seen:?}")
                });
            if let Some(at) = line.find("assigner at http://") {
                break line[at + "assigner at ".len()..].trim().to_owned();
            }
            seen.push(line);
        };
        Dev {
            proc,
            base,
            config,
            stdout: rx,
        }
    }

    /// The worker metrics addresses `berth dev` printed, by slot.
    fn worker_metrics(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut seen = Vec::new();
        while found.len() < self.config.pools[0].slots.len() {
            let line = self
                .stdout
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no worker metrics printed; printed: {seen:?}"));
            if let Some((slot, url)) = line.trim().split_once(": http://")
                && url.ends_with("/metrics")
            {
                found.push((slot.to_owned(), format!("http://{url}")));
            }
            seen.push(line);
        }
        found
    }

    /// The tokens `berth dev --auth` printed: (operator, client).
    fn tokens(&self) -> (String, String) {
        let (mut operator, mut client) = (None, None);
        let mut seen = Vec::new();
        while operator.is_none() || client.is_none() {
            let line = self
                .stdout
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no tokens printed; printed: {seen:?}"));
            let token = || line.rsplit(' ').next().unwrap().to_owned();
            if line.trim_start().starts_with("operator (dev-operator):") {
                operator = Some(token());
            } else if line.trim_start().starts_with("client (dev-client):") {
                client = Some(token());
            }
            seen.push(line);
        }
        (operator.unwrap(), client.unwrap())
    }

    /// Runs the `berth` client with `args` against this stack.
    fn berth(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(berth_bin())
            .args(args)
            .env("BERTH_URL", &self.base)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_TOKEN_FILE")
            .envs(env.iter().copied())
            .env_remove("BERTH_SLOT")
            .env_remove("BERTH_LEASE_TOKEN")
            .output()
            .expect("run berth")
    }

    async fn stop(mut self) {
        let status = self.proc.signal_and_wait(Signal::SIGTERM);
        assert!(
            status.success(),
            "berth dev stops cleanly on SIGTERM: {status}"
        );
        delete_queues(&self.config).await;
    }
}

/// Live worker processes whose command line mentions `needle`.
fn worker_pids(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie =
            std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if cmdline.contains("berth-worker") && cmdline.contains(needle) && !zombie {
            found.push(pid);
        }
    }
    found
}

/// Processes whose command line mentions `needle` (the dev stack's worker processes name its
/// generated config file).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// Whether `slot` shows as free in a view read after `after` (the view may be cached).
async fn slot_free(
    http: &reqwest::Client,
    base: &str,
    slot: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let slots = get(http, &format!("{base}/v1/slots")).await.json;
    let as_of: chrono::DateTime<chrono::Utc> = slots["as_of"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| slots.to_string())?;
    if as_of < after {
        return Err(format!("view as of {as_of} is older than {after}"));
    }
    let state = slots["slots"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["slot"] == slot))
        .map(|s| s["state"].clone())
        .unwrap_or(Value::Null);
    if state == "free" {
        Ok(())
    } else {
        Err(format!("{slot} is {state}"))
    }
}

#[tokio::test]
async fn dev_stack_hands_out_renews_and_takes_back_slots() {
    let dev = Dev::start(4);
    let http = reqwest::Client::new();
    let acquire_url = format!("{}/v1/pools/ppa/acquire", dev.base);

    // Four acquires succeed, each with its own PPA.
    let mut held = Vec::new();
    for i in 0..4 {
        let lease = acquire_ok(&http, &dev.base, &format!("job-{i}"), 10).await;
        let slot = lease["slot"].as_str().unwrap().to_owned();
        assert_eq!(
            lease["resource"]["reference"],
            format!("ppa:berth-ci/{slot}"),
            "{lease}"
        );
        held.push(lease);
    }
    let mut slots: Vec<_> = held.iter().map(|l| l["slot"].as_str().unwrap()).collect();
    slots.sort();
    assert_eq!(slots, ["ppa-1", "ppa-2", "ppa-3", "ppa-4"]);

    // Each worker process serves its metrics on the port printed for it: one claim each,
    // its slot used.
    let workers = dev.worker_metrics();
    let printed: Vec<&str> = workers.iter().map(|(slot, _)| slot.as_str()).collect();
    assert_eq!(printed, ["ppa-1", "ppa-2", "ppa-3", "ppa-4"]);
    for (slot, url) in &workers {
        let text = http.get(url).send().await.unwrap().text().await.unwrap();
        let metrics = parse_metrics(&text);
        let pool = [("pool", "ppa")];
        assert_eq!(
            metric_value(&metrics, "berth_worker_claims_total", &pool),
            1.0,
            "{slot}: {text}"
        );
        let used = [("pool", "ppa"), ("state", "used")];
        assert_eq!(
            metric_value(&metrics, "berth_worker_slots", &used),
            1.0,
            "{slot}: {text}"
        );
    }

    // A fifth waits about 2 s, then 503 with Retry-After.
    let started = Instant::now();
    let fifth = post(
        &http,
        &acquire_url,
        json!({"owner": "job-5", "wait_secs": 2}),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(
        fifth.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        fifth.text
    );
    assert!(fifth.retry_after.is_some(), "503 with Retry-After");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    // The CLI says the same with exit code 3.
    let out = dev.berth(&["acquire", "--pool", "ppa", "--wait", "1s"], &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no slot"));

    // Renew moves lease_expires later.
    let first = &held[0];
    let (slot, token) = (
        first["slot"].as_str().unwrap(),
        first["lease_token"].as_str().unwrap(),
    );
    let renewed = post(
        &http,
        &format!("{}/v1/slots/{slot}/renew", dev.base),
        json!({"lease_token": token, "lease_secs": 7200}),
    )
    .await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
    assert!(
        renewed.json["lease_expires"].as_str().unwrap() > first["lease_expires"].as_str().unwrap()
    );

    // Bad input 400, unknown pool 404, wrong token 403.
    let bad = post(
        &http,
        &acquire_url,
        json!({"owner": "me", "lease_secs": -1}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let unknown = post(
        &http,
        &format!("{}/v1/pools/gpu/acquire", dev.base),
        json!({"owner": "me"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    let release_url = format!("{}/v1/slots/{slot}/release", dev.base);
    let wrong = post(&http, &release_url, json!({"lease_token": "f".repeat(64)})).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.text);

    // Release: 202, the slot is cleaned and free again, and acquirable.
    let released = post(&http, &release_url, json!({"lease_token": token})).await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    let now = chrono::Utc::now();
    wait_for(
        "the released slot to be free",
        Duration::from_secs(15),
        || slot_free(&http, &dev.base, slot, now),
    )
    .await;
    let again = post(&http, &release_url, json!({"lease_token": token})).await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "a second release: not held: {}",
        again.text
    );
    let next = acquire_ok(&http, &dev.base, "job-6", 10).await;
    assert_eq!(next["slot"], slot);

    // `berth status` shows the pool.
    let out = dev.berth(&["status"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ppa-4") && text.contains("used"), "{text}");

    // A crashed worker is started again.
    let config_dir = format!("berth-dev-{}", dev.proc.pid());
    let workers = worker_pids(&config_dir);
    assert_eq!(workers.len(), 4, "one worker per slot");
    let victim = workers[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_for(
        "the supervisor to restart the killed worker",
        Duration::from_secs(15),
        || async {
            let now = worker_pids(&config_dir);
            if now.len() == 4 && !now.contains(&victim) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;

    // SIGTERM stops the whole stack, workers included.
    dev.stop().await;
    let left = processes_mentioning(&config_dir);
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
}

#[tokio::test]
async fn berth_run_releases_the_slot_whatever_its_command_does() {
    let dev = Dev::start(1);
    let http = reqwest::Client::new();

    // The command sees its slot, fails with 7; berth run exits 7 and the slot comes back.
    let script = r#"test "$BERTH_SLOT" = ppa-1 && test -n "$BERTH_LEASE_TOKEN" && test -n "$BERTH_LEASE_EXPIRES" && echo "$BERTH_POOL $BERTH_PPA"; exit 7"#;
    let out = dev.berth(
        &[
            "run", "--pool", "ppa", "--wait", "10", "--", "sh", "-c", script,
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ppa ppa:berth-ci/ppa-1\n"
    );
    let now = chrono::Utc::now();
    wait_for("ppa-1 to be free again", Duration::from_secs(15), || {
        slot_free(&http, &dev.base, "ppa-1", now)
    })
    .await;

    // A command that cannot start: 127, and the slot is released too.
    let out = dev.berth(
        &[
            "run",
            "--pool",
            "ppa",
            "--wait",
            "10",
            "--",
            "/no/such/command",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = chrono::Utc::now();
    wait_for("ppa-1 to be free again", Duration::from_secs(15), || {
        slot_free(&http, &dev.base, "ppa-1", now)
    })
    .await;

    // The shell pipeline: eval the env output, renew and release from the environment.
    let pipeline = r#"set -e
        eval "$("$BERTH" acquire --pool ppa --wait 10 --lease 10m --format env)"
        test "$BERTH_SLOT" = ppa-1
        "$BERTH" renew --lease 20m
        "$BERTH" release
        set +e
        "$BERTH" renew
        echo "renew after release: $?""#;
    let out = Command::new("sh")
        .args(["-c", pipeline])
        .env("BERTH", berth_bin())
        .env("BERTH_URL", &dev.base)
        .env_remove("BERTH_SLOT")
        .env_remove("BERTH_LEASE_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("renewed until") && stdout.contains("released ppa-1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("renew after release: 4"),
        "not held → exit 4: {stdout}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn curl_script_drives_the_api_like_a_ci_job() {
    let dev = Dev::start(2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/curl.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("BERTH_URL", &dev.base)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "tests/curl.sh failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("ok\n"));
    dev.stop().await;
}

#[tokio::test]
async fn dev_with_auth_prints_an_operator_and_a_client_token_and_enforces_them() {
    let dev = Dev::start_with(1, &["--auth"]);
    let (operator, client) = dev.tokens();
    assert_eq!((operator.len(), client.len()), (64, 64));
    assert_ne!(operator, client);
    let http = reqwest::Client::new();
    let acquire_url = format!("{}/v1/pools/ppa/acquire", dev.base);
    let without = http
        .post(&acquire_url)
        .json(&json!({"owner": "me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);

    // The client token acquires (the berth commands send BERTH_TOKEN); it may not act on a
    // slot, the operator token may.
    let out = dev.berth(
        &[
            "acquire", "--pool", "ppa", "--owner", "me", "--format", "json",
        ],
        &[("BERTH_TOKEN", &client)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease: Value = serde_json::from_slice(&out.stdout).unwrap();
    let slot = lease["slot"].as_str().unwrap();
    let reclaim = ["slot", "reclaim", slot, "--reason", "test"];
    let out = dev.berth(&reclaim, &[("BERTH_TOKEN", &client)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dev.berth(&reclaim, &[("BERTH_TOKEN", &operator)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.stop().await;
}
