//! The Launchpad store client against the real fake Launchpad, end to end over HTTP: slot
//! records written with compare-and-swap, paged collections, deletions that take effect
//! late, and how each kind of failure maps to a retryable or fatal [`StoreError`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth::fake::{FakeConfig, FakeCredentials, FakeLaunchpad, Faults};
use berth::record::{SlotRecord, SlotState, parse_description};
use berth::store::slot::{read_slot, write_slot};
use berth::store::{Credentials, LaunchpadStore, SlotStore, SourcePublication, StoreError};
use chrono::Utc;

const OWNER: &str = "berth-ci";
/// Distinctive enough that any leak of either into a message is found by `contains`.
const TOKEN: &str = "tok7f3aLEAK";
const SECRET: &str = "sec9c1eLEAK&x";
const TIMEOUT: Duration = Duration::from_secs(3);

async fn fake(config: FakeConfig) -> FakeLaunchpad {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    FakeLaunchpad::start(any, config)
        .await
        .expect("fake starts")
}

fn credentials(token: &str, secret: &str) -> Credentials {
    Credentials {
        consumer_key: "berth".into(),
        consumer_secret: String::new(),
        token: token.into(),
        token_secret: secret.into(),
    }
}

fn client(
    fake: &FakeLaunchpad,
    credentials: Option<Credentials>,
    timeout: Duration,
) -> LaunchpadStore {
    LaunchpadStore::new(&fake.api_root(), "devel", OWNER, credentials, timeout).unwrap()
}

fn writer(fake: &FakeLaunchpad) -> LaunchpadStore {
    client(fake, Some(credentials(TOKEN, SECRET)), TIMEOUT)
}

/// A fake that accepts writes signed with exactly [`TOKEN`] and [`SECRET`].
async fn strict_fake() -> FakeLaunchpad {
    fake(FakeConfig {
        credentials: Some(FakeCredentials {
            consumer_key: "berth".into(),
            token: TOKEN.into(),
            token_secret: SECRET.into(),
        }),
        ..FakeConfig::default()
    })
    .await
}

async fn published(store: &LaunchpadStore, name: &str) -> Vec<SourcePublication> {
    store.published_sources(name, "Published").await.unwrap()
}

/// Faults with one field set.
fn fault(set: impl FnOnce(&mut Faults)) -> Faults {
    let mut faults = Faults::default();
    set(&mut faults);
    faults
}

/// Asserts the error's kind and whether it is retryable.
macro_rules! assert_error {
    ($error:expr, $kind:pat, retryable: $retryable:expr) => {{
        let error = $error;
        assert!(matches!(error, $kind), "{error:?}");
        assert_eq!(error.is_retryable(), $retryable, "{error:?}");
    }};
}

#[tokio::test]
async fn compare_and_swap_keeps_the_human_text_and_refuses_stale_writes() {
    let fake = fake(FakeConfig::default()).await;
    let human = "Builds for \"team\" \\ café ✓  \r\n\ttrailing space \n\n-----END BERTH SLOT STATE";
    fake.set_description("ppa-1", human);
    let store = writer(&fake);

    let archive = store.archive("ppa-1").await.unwrap();
    assert_eq!(
        (archive.name.as_str(), archive.description.as_str()),
        ("ppa-1", human)
    );
    let view = read_slot(&store, "ppa-1").await.unwrap();
    assert!(view.unreadable, "no block yet: {view:?}");
    assert_eq!(view.human, human);

    let mut record = SlotRecord::new(SlotState::Free, Utc::now());
    record.owner = Some("job-1".into());
    let written = write_slot(&store, &view, &record).await.unwrap();
    assert_ne!(written.archive.http_etag, view.archive.http_etag);
    assert_eq!(written.record, record);
    let stored = fake.description("ppa-1").unwrap();
    let parsed = parse_description(&stored);
    assert_eq!(parsed.human.as_bytes(), human.as_bytes());
    assert_eq!(parsed.record.as_ref(), Some(&record));
    let reread = store.archive("ppa-1").await.unwrap();
    assert_eq!(reread.http_etag, written.archive.http_etag);

    // The first view is stale now: the store refuses it and keeps the first write.
    let mut other = record.clone();
    other.state = SlotState::Used;
    let stale = write_slot(&store, &view, &other).await.unwrap_err();
    assert_error!(stale, StoreError::Conflict, retryable: false);
    assert_eq!(fake.description("ppa-1").unwrap(), stored);
    assert_eq!(fake.history().len(), 2, "the admin write and ours");

    // A forced conflict fails a current view once; a re-read then writes.
    fake.set_faults(fault(|f| f.forced_conflicts = 1));
    let current = read_slot(&store, "ppa-1").await.unwrap();
    let forced = write_slot(&store, &current, &other).await.unwrap_err();
    assert_error!(forced, StoreError::Conflict, retryable: false);
    let current = read_slot(&store, "ppa-1").await.unwrap();
    let done = write_slot(&store, &current, &other).await.unwrap();
    assert_eq!(done.record.state, SlotState::Used);
    assert_eq!(done.human, human);
    assert_eq!(fake.history().len(), 3);
}

#[tokio::test]
async fn archives_walks_every_page() {
    let fake = fake(FakeConfig {
        ppas: 5,
        page_size: 2,
        ..FakeConfig::default()
    })
    .await;
    let store = client(&fake, None, TIMEOUT);
    let archives = store.archives().await.unwrap();
    let mut names: Vec<&str> = archives.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["ppa-1", "ppa-2", "ppa-3", "ppa-4", "ppa-5"]);
    let one = store.archive("ppa-3").await.unwrap();
    assert!(archives.contains(&one), "{archives:?} lacks {one:?}");
}

#[tokio::test]
async fn deleted_sources_stay_live_until_the_delay_passes() {
    let delay = Duration::from_millis(300);
    let fake = fake(FakeConfig {
        page_size: 2,
        deletion_delay: delay,
        ..FakeConfig::default()
    })
    .await;
    for n in 0..5 {
        fake.add_upload("ppa-1", &format!("pkg-{n}"), "1.0-1");
    }
    let bystander = fake.add_upload("ppa-2", "other", "2.0");
    let store = writer(&fake);

    let sources = published(&store, "ppa-1").await;
    let mut packages: Vec<&str> = sources
        .iter()
        .map(|s| s.source_package_name.as_str())
        .collect();
    packages.sort_unstable();
    assert_eq!(packages, ["pkg-0", "pkg-1", "pkg-2", "pkg-3", "pkg-4"]);
    assert!(
        sources.iter().all(|s| s.status == "Published"),
        "{sources:?}"
    );

    let asked = Instant::now();
    for source in &sources {
        store.request_deletion(&source.self_link).await.unwrap();
    }
    let still = published(&store, "ppa-1").await;
    if asked.elapsed() < delay {
        assert_eq!(still.len(), 5, "deleted before the delay: {still:?}");
    }

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = published(&store, "ppa-1").await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still published after 3 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(asked.elapsed() >= delay, "gone before the deletion delay");
    let deleted = store.published_sources("ppa-1", "Deleted").await.unwrap();
    assert_eq!(deleted.len(), 5, "{deleted:?}");
    let other = published(&store, "ppa-2").await;
    assert_eq!(
        other
            .iter()
            .map(|s| s.self_link.as_str())
            .collect::<Vec<_>>(),
        [bystander.as_str()]
    );
}

#[tokio::test]
async fn server_failures_and_lost_connections_are_retryable() {
    let fake = fake(FakeConfig::default()).await;
    let store = client(&fake, None, Duration::from_millis(150));

    fake.set_faults(fault(|f| f.error_rate = 1.0));
    let error = store.archive("ppa-1").await.unwrap_err();
    assert_error!(error, StoreError::Unavailable { status: 503 }, retryable: true);

    fake.set_faults(fault(|f| f.drop_rate = 1.0));
    let error = store.archives().await.unwrap_err();
    assert_error!(error, StoreError::Transport(_), retryable: true);

    fake.set_faults(fault(|f| f.latency_ms = 1_000));
    let started = Instant::now();
    let error = store.archive("ppa-1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
    assert_error!(error, StoreError::Transport(_), retryable: true);

    fake.set_faults(Faults::default());
    store.archive("ppa-1").await.unwrap();
}

#[tokio::test]
async fn unknown_ppas_and_wrong_credentials_are_fatal() {
    let fake = strict_fake().await;
    let right = writer(&fake);
    let error = right.archive("ppa-404").await.unwrap_err();
    assert_error!(error, StoreError::NotFound(_), retryable: false);

    let view = read_slot(&right, "ppa-1").await.unwrap();
    let record = SlotRecord::new(SlotState::Free, Utc::now());
    let source = fake.add_upload("ppa-1", "hello", "1.0");
    for (token, secret) in [("tok-wrong", SECRET), (TOKEN, "sec-wrong")] {
        let wrong = client(&fake, Some(credentials(token, secret)), TIMEOUT);
        let write = write_slot(&wrong, &view, &record).await.unwrap_err();
        let delete = wrong.request_deletion(&source).await.unwrap_err();
        for error in [write, delete] {
            assert_error!(error, StoreError::Unauthorized { status: 401 }, retryable: false);
        }
    }
    assert!(fake.history().is_empty(), "{:?}", fake.history());

    write_slot(&right, &view, &record).await.unwrap();
    right.request_deletion(&source).await.unwrap();
    assert_eq!(fake.history().len(), 1);
}

#[tokio::test]
async fn a_client_without_credentials_reads_but_never_sends_writes() {
    let fake = fake(FakeConfig::default()).await;
    let source = fake.add_upload("ppa-1", "hello", "1.0");
    let reader = client(&fake, None, TIMEOUT);
    assert!(!reader.can_write());
    let view = read_slot(&reader, "ppa-1").await.unwrap();
    // Were anything sent, every connection would now be dropped: a `Transport` error.
    fake.set_faults(fault(|f| f.drop_rate = 1.0));
    let record = SlotRecord::new(SlotState::Free, Utc::now());
    let write = write_slot(&reader, &view, &record).await.unwrap_err();
    let delete = reader.request_deletion(&source).await.unwrap_err();
    for error in [write, delete] {
        assert_error!(error, StoreError::Rejected { status: 401, .. }, retryable: false);
    }
    assert!(fake.history().is_empty(), "{:?}", fake.history());
}

#[tokio::test]
async fn errors_never_show_the_token_or_secret() {
    let fake = strict_fake().await;
    let store = client(
        &fake,
        Some(credentials(TOKEN, SECRET)),
        Duration::from_millis(150),
    );
    let wrong = client(
        &fake,
        Some(credentials(TOKEN, "sec9c1eLEAK-wrong")),
        TIMEOUT,
    );
    let view = read_slot(&store, "ppa-1").await.unwrap();
    let record = SlotRecord::new(SlotState::Free, Utc::now());
    write_slot(&store, &view, &record).await.unwrap();

    let mut errors = vec![
        store.archive("ppa-404").await.unwrap_err(),
        write_slot(&store, &view, &record).await.unwrap_err(),
        write_slot(&wrong, &view, &record).await.unwrap_err(),
    ];
    for faults in [
        fault(|f| f.error_rate = 1.0),
        fault(|f| f.drop_rate = 1.0),
        fault(|f| f.latency_ms = 1_000),
    ] {
        fake.set_faults(faults);
        errors.push(write_slot(&store, &view, &record).await.unwrap_err());
    }
    let mut shown: Vec<String> = errors
        .iter()
        .flat_map(|e| [e.to_string(), format!("{e:?}")])
        .collect();
    shown.push(format!("{store:?}"));
    for text in &shown {
        for leak in ["tok7f3a", "sec9c1e"] {
            assert!(!text.contains(leak), "{leak} shown in {text}");
        }
    }
}
