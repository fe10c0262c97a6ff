//! Secret hygiene seen from outside (DESIGN §8 "TLS and secrets"): `--help` never prints a
//! password that the environment holds, and a credentials file that others may read stops
//! `berth assigner` and `berth-worker` at start (so does an HTTPS key), naming the file and
//! the `chmod` to run.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{berth_bin, worker_bin};

const PASSWORD: &str = "secretpw";

/// Runs `command` with the secret-bearing variables set, to its end (bounded).
fn run_with_secrets(command: &mut Command) -> Output {
    let child = command
        .env(
            "BERTH_AMQP_URL",
            format!("amqp://u:{PASSWORD}@rabbit.example:5672/%2f"),
        )
        .env(
            "BERTH_STORE_URL",
            format!("https://lp:{PASSWORD}@api.example/"),
        )
        .env("BERTH_URL", format!("https://ci:{PASSWORD}@berth.example"))
        .env("BERTH_LEASE_TOKEN", PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    output
}

fn all_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_never_shows_a_password_from_the_environment() {
    let berth = |args: &[&str]| {
        let mut command = Command::new(berth_bin());
        command.args(args);
        command
    };
    let mut worker = Command::new(worker_bin());
    worker.arg("--help");
    for (name, mut command, shows) in [
        (
            "berth assigner --help",
            berth(&["assigner", "--help"]),
            "BERTH_AMQP_URL",
        ),
        (
            "berth events --help",
            berth(&["events", "--help"]),
            "BERTH_AMQP_URL",
        ),
        (
            "berth dev --help",
            berth(&["dev", "--help"]),
            "BERTH_AMQP_URL",
        ),
        (
            "berth acquire --help",
            berth(&["acquire", "--help"]),
            "BERTH_URL",
        ),
        (
            "berth release --help",
            berth(&["release", "--help"]),
            "BERTH_LEASE_TOKEN",
        ),
        ("berth-worker --help", worker, "BERTH_AMQP_URL"),
    ] {
        let output = run_with_secrets(&mut command);
        let text = all_text(&output);
        assert!(output.status.success(), "{name}: {text}");
        assert!(text.contains(shows), "{name} documents {shows}: {text}");
        assert!(
            !text.contains(PASSWORD),
            "{name} shows the password:\n{text}"
        );
    }
}

#[test]
fn a_credentials_file_others_may_read_stops_the_assigner_and_the_worker_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("launchpad.credentials");
    std::fs::write(
        &credentials,
        "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = t\naccess_secret = s\n",
    )
    .unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shown = credentials.display().to_string();

    let mut assigner = Command::new(berth_bin());
    assigner
        .args(["assigner", "--listen", "127.0.0.1:0", "--credentials"])
        .arg(&credentials);
    let mut worker = Command::new(worker_bin());
    worker
        .args(["--pool", "ppa", "--slot", "ppa-1", "--credentials"])
        .arg(&credentials);
    for (name, command) in [
        ("berth assigner", &mut assigner),
        ("berth-worker", &mut worker),
    ] {
        // A store URL that passes every other check, so the file is what stops it.
        command
            .env("BERTH_STORE_URL", "http://127.0.0.1:9/")
            .env_remove("BERTH_CONFIG")
            .stdin(Stdio::null());
        let output = command.output().unwrap();
        let text = all_text(&output);
        assert!(!output.status.success(), "{name}: {text}");
        assert!(
            text.contains(&shown) && text.contains(&format!("chmod 600 {shown}")),
            "{name}: {text}"
        );
    }
}

#[test]
fn an_https_key_others_may_read_stops_the_assigner_at_start() {
    let pki = support::pki::Pki::new("open-key");
    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shown = pki.key.display().to_string();

    let output = Command::new(berth_bin())
        .args(["assigner", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .env_remove("BERTH_CONFIG")
        .env_remove("BERTH_CREDENTIALS")
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let text = all_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains(&format!("chmod 600 {shown}")), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}
