//! TLS end to end (DESIGN §8 "TLS and secrets"): a private RabbitMQ node with a TLS
//! listener and certificates the test makes; the whole stack (workers and assigner) over
//! `amqps://` with `amqp_ca_file`, the assigner over HTTPS, and the CLI with `--ca-file`.
//! What goes wrong says so: plain AMQP to the TLS port, a CA that did not sign the broker's
//! certificate, an HTTPS assigner whose CA the CLI was not given.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth::broker::{self, BrokerTls};
use serde_json::Value;

use berth_testkit::rabbit::PrivateBroker;
use support::pki::Pki;
use support::process::{output_of, text};
use support::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_runs_over_amqps_and_the_cli_acquires_over_https_with_its_ca_file() {
    let pki = Pki::new("stack");
    let node = PrivateBroker::start_tls(&pki.ca, &pki.cert, &pki.key);
    let (ca, cert, key, url) = (
        pki.ca.clone(),
        pki.cert.clone(),
        pki.key.clone(),
        node.tls_url(),
    );
    // Workers and assigner connect only by amqps (the test CA), the assigner serves HTTPS.
    let stack = Stack::start_tuned(1, 30, "text", move |_, config| {
        config.amqp_url = url;
        config.amqp_ca_file = Some(ca);
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    })
    .await;
    assert!(stack.base.starts_with("https://"), "{}", stack.base);
    let ca_file = pki.ca.to_str().unwrap();

    let acquired = output_of(&mut stack.berth(&[
        "acquire",
        "--pool",
        "ppa",
        "--owner",
        "tls-test",
        "--format",
        "json",
        "--wait",
        "60",
        "--ca-file",
        ca_file,
    ]))
    .await;
    assert!(
        acquired.status.success(),
        "acquire over https: {}",
        text(&acquired.stderr)
    );
    let lease: Value = serde_json::from_slice(&acquired.stdout).unwrap();
    assert_eq!(lease["slot"], "ppa-1", "{lease}");

    // Without the CA, the CLI says what is wrong at once, not after its retry budget.
    let started = Instant::now();
    let refused = output_of(&mut stack.berth(&["status", "--wait", "60"])).await;
    let stderr = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "status without --ca-file: {stderr}"
    );
    assert!(
        stderr.contains("certificate") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a certificate error is not retried ({:?})",
        started.elapsed()
    );

    let token = lease["lease_token"].as_str().unwrap();
    let released = output_of(&mut stack.berth(&[
        "release",
        "--slot",
        "ppa-1",
        "--token",
        token,
        "--ca-file",
        ca_file,
    ]))
    .await;
    assert!(released.status.success(), "{}", text(&released.stderr));
    stack.stop().await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_amqp_to_the_tls_port_and_a_wrong_ca_fail_with_errors_that_say_so() {
    let pki = Pki::new("broker");
    let stranger = Pki::new("stranger");
    let node = PrivateBroker::start_tls(&pki.ca, &pki.cert, &pki.key);
    let tls_port = node.tls_port.unwrap();
    let trusted = BrokerTls::with_ca_file(&pki.ca).unwrap();

    // The right CA: connected, and really over TLS (the same URL as amqp:// fails below).
    let conn = broker::connect_with(&node.tls_url(), &trusted, "tls-test")
        .await
        .expect("amqps with the broker's CA connects");
    assert!(conn.status().connected());
    let _ = conn.close(200, "done".into()).await;

    // Plain AMQP to the TLS port: an error, within the connect timeout, naming the fix.
    let plain = format!("amqp://guest:guest@localhost:{tls_port}/%2f");
    let started = Instant::now();
    let err = broker::connect_with(&plain, &trusted, "tls-test")
        .await
        .expect_err("plain AMQP to a TLS port must not connect")
        .to_string();
    assert!(
        started.elapsed() <= broker::CONNECT_TIMEOUT + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("use amqps://"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");

    // A CA that did not sign the broker's certificate, and the system roots alone.
    for tls in [
        BrokerTls::with_ca_file(&stranger.ca).unwrap(),
        BrokerTls::system_roots(),
    ] {
        let err = broker::connect_with(&node.tls_url(), &tls, "tls-test")
            .await
            .expect_err("an untrusted broker certificate must not connect")
            .to_string();
        assert!(err.contains("certificate"), "{err}");
    }

    // `berth events` (one connection, no retry) says the same and exits.
    let events = output_of(
        std::process::Command::new(support::berth_bin())
            .args(["events", "--amqp-url", &plain])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
    )
    .await;
    let stderr = text(&events.stderr);
    assert!(!events.status.success(), "{stderr}");
    assert!(stderr.contains("use amqps://"), "{stderr}");
    drop(node);
}

#[test]
fn a_ca_file_without_a_certificate_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate\n").unwrap();
    let err = BrokerTls::with_ca_file(&path).unwrap_err().to_string();
    assert!(err.contains(path.to_str().unwrap()), "{err}");
}

/// Before lapin had a TLS backend, an `amqps://` URL connected in plain text: now the scheme
/// decides, and a plain AMQP port answering a TLS handshake is an error.
#[tokio::test]
async fn an_amqps_url_never_falls_back_to_plain_text() {
    let plain = support::amqp_url();
    let tls = plain.replacen("amqp://", "amqps://", 1);
    assert!(tls.starts_with("amqps://"), "{tls}");
    let err = broker::connect(&tls, "tls-test")
        .await
        .expect_err("amqps:// to the plain port must not connect")
        .to_string();
    assert!(err.contains("amqps://"), "{err}");
    // The same port over amqp:// is fine: the broker is up.
    let conn = broker::connect(&plain, "tls-test").await.unwrap();
    let _ = conn.close(200, "done".into()).await;
}
