//! The whole stack in one test: the fake Launchpad and the assigner in-process, real
//! `berth-worker` processes over the fake Launchpad. Checks what only the store can show:
//! every slot handed out is recorded with its owner and lease hash (DESIGN §7.2), a
//! released slot is emptied and freed, and concurrent clients never share a slot.

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use berth::fake::{FakeConfig, FakeLaunchpad};
use berth::lease::token_hash;
use berth::record::{SlotState, parse_description};
use berth::store::LaunchpadStore;
use support::*;

#[tokio::test]
async fn real_workers_over_the_fake_launchpad() {
    let fake = FakeLaunchpad::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeConfig {
            ppas: 2,
            ..FakeConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    berth::secret_file::write_secret_file(
        &credentials,
        "[1]\nconsumer_key = berth\nconsumer_secret =\naccess_token = t\naccess_secret = s\n",
    )
    .unwrap();
    let mut config = config(&["ppa-1", "ppa-2"]);
    config.store.api_root = fake.api_root();
    config.store.credentials_file = Some(credentials);
    config.worker.clean_poll_millis = 50;
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();

    let _workers = Proc(
        Command::new(worker_bin())
            .args(["--all", "--config"])
            .arg(&file)
            .env("RUST_LOG", "warn,lapin=error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = Arc::new(LaunchpadStore::from_config(&config.store).unwrap());
    let app = TestApp::spawn(config.clone(), store).await;

    // A 200 names a slot whose record shows that owner and that lease.
    let lease = acquire_ok(&app.http, &app.base, "build-1", 20).await;
    let slot = lease["slot"].as_str().unwrap().to_owned();
    let token = lease["lease_token"].as_str().unwrap().to_owned();
    let record = parse_description(&fake.description(&slot).unwrap())
        .record
        .unwrap();
    assert_eq!(record.state, SlotState::Used);
    assert_eq!(record.owner.as_deref(), Some("build-1"));
    assert_eq!(
        record.lease_sha256.as_deref(),
        Some(token_hash(&token).as_str())
    );
    assert!(
        !fake.description(&slot).unwrap().contains(&token),
        "the token itself is never stored"
    );

    // Status reads the store and the broker.
    let pools = app.get("/v1/pools").await;
    assert_eq!(pools.status, StatusCode::OK, "{}", pools.text);
    let pool = &pools.json["pools"][0];
    assert_eq!(
        (pool["slots"].as_u64(), pool["used"].as_u64()),
        (Some(2), Some(1)),
        "{pool}"
    );
    assert_eq!(pool["waiting"].as_u64(), Some(0), "{pool}");

    // An upload lands in the PPA; release empties it and frees the slot.
    fake.add_upload(&slot, "hello", "1.0-1");
    let released = app
        .post(
            &format!("/v1/slots/{slot}/release"),
            json!({"lease_token": token}),
        )
        .await;
    assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
    wait_for(
        "the slot to be cleaned and free",
        Duration::from_secs(15),
        || async {
            let record = parse_description(&fake.description(&slot).unwrap()).record;
            match record {
                Some(r) if r.state == SlotState::Free => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let dump = fake.dump().to_string();
    assert!(
        !dump.contains("\"Published\""),
        "the upload was deleted: {dump}"
    );

    // Six clients, two slots, each holding briefly: nobody ever shares a slot.
    let holding = Arc::new(Mutex::new(HashSet::new()));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (http, base, holding) = (app.http.clone(), app.base.clone(), Arc::clone(&holding));
        clients.push(tokio::spawn(async move {
            let lease = acquire_ok(&http, &base, &format!("client-{i}"), 60).await;
            let slot = lease["slot"].as_str().unwrap().to_owned();
            assert!(
                holding.lock().unwrap().insert(slot.clone()),
                "{slot} handed out twice at once"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            holding.lock().unwrap().remove(&slot);
            let url = format!("{base}/v1/slots/{slot}/release");
            let released = post(&http, &url, json!({"lease_token": lease["lease_token"]})).await;
            assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    app.stop().await;
    fake.shutdown().await;
}
