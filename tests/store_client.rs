//! The Launchpad store client against wiremock: the exact requests it sends (paths, headers,
//! `If-Match`, bodies, every OAuth field) and how it reads each kind of answer.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth::config::StoreConfig;
use berth::store::oauth::CredentialsError;
use berth::store::{Credentials, LaunchpadStore, SlotStore, StoreError};
use reqwest::Url;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const OWNER: &str = "berth-ci";
const ARCHIVE: &str = "/devel/~berth-ci/+archive/ubuntu/ppa-1";
const TOKEN: &str = "TOKEN-abc";
const SECRET: &str = "SECRET-xyz";

fn credentials(consumer_secret: &str) -> Credentials {
    Credentials {
        consumer_key: "berth".into(),
        consumer_secret: consumer_secret.into(),
        token: TOKEN.into(),
        token_secret: SECRET.into(),
    }
}

fn store(server: &MockServer, credentials: Option<Credentials>) -> LaunchpadStore {
    store_with_timeout(server, credentials, Duration::from_secs(5))
}

fn store_with_timeout(
    server: &MockServer,
    credentials: Option<Credentials>,
    timeout: Duration,
) -> LaunchpadStore {
    LaunchpadStore::new(
        &format!("{}/", server.uri()),
        "devel",
        OWNER,
        credentials,
        timeout,
    )
    .unwrap()
}

fn archive_json(server: &MockServer, description: Value, etag: &str) -> Value {
    json!({
        "self_link": format!("{}{ARCHIVE}", server.uri()),
        "web_link": "https://launchpad.net/~berth-ci/+archive/ubuntu/ppa-1",
        "resource_type_link": format!("{}/devel/#archive", server.uri()),
        "name": "ppa-1",
        "displayname": "PPA 1",
        "reference": "~berth-ci/ubuntu/ppa-1",
        "description": description,
        "owner_link": format!("{}/devel/~berth-ci", server.uri()),
        "http_etag": etag,
    })
}

/// The fields of an `Authorization: OAuth ...` header, values still percent-encoded.
fn oauth_fields(request: &Request) -> BTreeMap<String, String> {
    let value = request
        .headers
        .get("authorization")
        .expect("an Authorization header");
    let value = value.to_str().unwrap();
    let rest = value
        .strip_prefix("OAuth ")
        .unwrap_or_else(|| panic!("not OAuth: {value}"));
    rest.split(", ")
        .map(|field| {
            let (name, quoted) = field.split_once('=').unwrap();
            let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
            (
                name.to_owned(),
                inner
                    .unwrap_or_else(|| panic!("unquoted {field}"))
                    .to_owned(),
            )
        })
        .collect()
}

/// Checks every field of a PLAINTEXT header; answers its nonce.
fn assert_oauth(request: &Request, signature: &str) -> String {
    let fields = oauth_fields(request);
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "oauth_consumer_key",
            "oauth_nonce",
            "oauth_signature",
            "oauth_signature_method",
            "oauth_timestamp",
            "oauth_token",
            "oauth_version",
            "realm"
        ]
    );
    assert_eq!(fields["realm"], "https://api.launchpad.net/");
    assert_eq!(fields["oauth_consumer_key"], "berth");
    assert_eq!(fields["oauth_token"], TOKEN);
    assert_eq!(fields["oauth_signature_method"], "PLAINTEXT");
    assert_eq!(fields["oauth_signature"], signature);
    assert_eq!(fields["oauth_version"], "1.0");
    let timestamp: u64 = fields["oauth_timestamp"]
        .parse()
        .expect("a numeric timestamp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        timestamp.abs_diff(now) < 60,
        "timestamp {timestamp}, now {now}"
    );
    assert!(!fields["oauth_nonce"].is_empty());
    fields["oauth_nonce"].clone()
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap()
}

#[tokio::test]
async fn reads_an_archive() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ARCHIVE))
        .and(header("accept", "application/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(archive_json(&server, Value::Null, "\"etag-1\""))
                .insert_header("ETag", "\"etag-1\""),
        )
        .expect(1)
        .mount(&server)
        .await;

    let archive = store(&server, None).archive("ppa-1").await.unwrap();

    assert_eq!(archive.name, "ppa-1");
    assert_eq!(archive.self_link, format!("{}{ARCHIVE}", server.uri()));
    assert_eq!(archive.description, "");
    assert_eq!(archive.http_etag, "\"etag-1\"");
    assert!(
        requests(&server).await[0]
            .headers
            .get("authorization")
            .is_none()
    );
}

#[tokio::test]
async fn takes_the_etag_header_when_the_body_has_none() {
    let server = MockServer::start().await;
    let mut body = archive_json(&server, json!("text"), "");
    body.as_object_mut().unwrap().remove("http_etag");
    Mock::given(method("GET"))
        .and(path(ARCHIVE))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .insert_header("ETag", "\"h\""),
        )
        .mount(&server)
        .await;

    let archive = store(&server, None).archive("ppa-1").await.unwrap();

    assert_eq!(
        (archive.description.as_str(), archive.http_etag.as_str()),
        ("text", "\"h\"")
    );
}

#[tokio::test]
async fn signed_reads_carry_the_oauth_header() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(200).set_body_json(archive_json(
            &server,
            json!("d"),
            "\"e\"",
        )))
        .mount(&server)
        .await;

    store(&server, Some(credentials("")))
        .archive("ppa-1")
        .await
        .unwrap();

    assert_oauth(&requests(&server).await[0], &format!("%26{SECRET}"));
}

#[tokio::test]
async fn writes_with_if_match_json_and_a_fresh_oauth_header() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(ARCHIVE))
        .and(header("if-match", "\"etag-1\""))
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/json"))
        .and(body_json(json!({ "description": "new text\nwith lines" })))
        .respond_with(ResponseTemplate::new(209).set_body_json(archive_json(
            &server,
            json!("new text\nwith lines"),
            "\"etag-2\"",
        )))
        .expect(2)
        .mount(&server)
        .await;
    let store = store(&server, Some(credentials("")));

    let first = store
        .set_description("ppa-1", "\"etag-1\"", "new text\nwith lines")
        .await;
    let second = store
        .set_description("ppa-1", "\"etag-1\"", "new text\nwith lines")
        .await;

    let archive = first.unwrap();
    second.unwrap();
    assert_eq!(archive.description, "new text\nwith lines");
    assert_eq!(archive.http_etag, "\"etag-2\"");
    let sent = requests(&server).await;
    let signature = format!("%26{SECRET}");
    let nonces = [
        assert_oauth(&sent[0], &signature),
        assert_oauth(&sent[1], &signature),
    ];
    assert_ne!(nonces[0], nonces[1], "every request needs a fresh nonce");
}

#[tokio::test]
async fn signs_with_the_consumer_secret_when_there_is_one() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(209).set_body_json(archive_json(
            &server,
            json!("x"),
            "\"e2\"",
        )))
        .expect(1)
        .mount(&server)
        .await;

    store(&server, Some(credentials("CS")))
        .set_description("ppa-1", "\"e1\"", "x")
        .await
        .unwrap();

    assert_oauth(&requests(&server).await[0], &format!("CS%26{SECRET}"));
}

#[tokio::test]
async fn reads_back_after_a_write_answered_without_a_body() {
    for status in [200, 204] {
        let server = MockServer::start().await;
        Mock::given(method("PATCH"))
            .and(path(ARCHIVE))
            .respond_with(ResponseTemplate::new(status))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(ARCHIVE))
            .respond_with(ResponseTemplate::new(200).set_body_json(archive_json(
                &server,
                json!("after"),
                "\"etag-after\"",
            )))
            .expect(1)
            .mount(&server)
            .await;

        let archive = store(&server, Some(credentials("")))
            .set_description("ppa-1", "\"etag-1\"", "after")
            .await
            .unwrap();

        assert_eq!(archive.http_etag, "\"etag-after\"", "status {status}");
    }
}

#[tokio::test]
async fn a_stale_etag_is_a_conflict() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(412).set_body_string("precondition failed"))
        .mount(&server)
        .await;

    let err = store(&server, Some(credentials("")))
        .set_description("ppa-1", "\"old\"", "x")
        .await;

    assert!(matches!(err, Err(StoreError::Conflict)), "{err:?}");
}

#[tokio::test]
async fn requests_deletion_with_a_signed_form_post() {
    let server = MockServer::start().await;
    let source = format!("{}{ARCHIVE}/+sourcepub/7", server.uri());
    Mock::given(method("POST"))
        .and(path(format!("{ARCHIVE}/+sourcepub/7")))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(200).set_body_json(Value::Null))
        .expect(1)
        .mount(&server)
        .await;

    store(&server, Some(credentials("")))
        .request_deletion(&source)
        .await
        .unwrap();

    let sent = requests(&server).await;
    let body = std::str::from_utf8(&sent[0].body).unwrap();
    let form: Vec<(String, String)> = Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        form,
        [
            ("ws.op".to_owned(), "requestDeletion".to_owned()),
            (
                "removal_comment".to_owned(),
                "Cleaned by berth for reuse".to_owned()
            )
        ]
    );
    assert_oauth(&sent[0], &format!("%26{SECRET}"));
}

#[tokio::test]
async fn an_unsigned_store_sends_no_write() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let store = store(&server, None);

    let patch = store.set_description("ppa-1", "\"e\"", "x").await;
    let delete = store
        .request_deletion(&format!("{}{ARCHIVE}/+sourcepub/7", server.uri()))
        .await;

    for result in [patch.map(|_| ()), delete] {
        let err = result.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("BERTH_CREDENTIALS"), "{err}");
        assert!(err.to_string().contains("--credentials"), "{err}");
    }
    assert!(!store.can_write());
    assert!(requests(&server).await.is_empty());
}

/// Mounts a collection of `pages` pages of two entries each at `at` (with `query`), each
/// page linking to the next; answers every entry in order.
async fn mount_pages(
    server: &MockServer,
    at: &str,
    query: &[(&str, &str)],
    pages: usize,
    entry: impl Fn(usize) -> Value,
) -> Vec<Value> {
    let mut all = Vec::new();
    for page in 0..pages {
        let start = page * 2;
        let entries: Vec<Value> = (start..start + 2).map(&entry).collect();
        all.extend(entries.iter().cloned());
        let mut body = json!({ "start": start, "total_size": pages * 2, "entries": entries });
        if page + 1 < pages {
            let mut next = Url::parse(&format!("{}{at}", server.uri())).unwrap();
            next.query_pairs_mut()
                .extend_pairs(query)
                .append_pair("ws.start", &(start + 2).to_string())
                .append_pair("ws.size", "2");
            body["next_collection_link"] = json!(next.as_str());
        }
        let mut mock = Mock::given(method("GET")).and(path(at));
        for (name, value) in query {
            mock = mock.and(query_param(*name, *value));
        }
        let mock = match page {
            0 => mock.and(query_param_is_missing("ws.start")),
            _ => mock.and(query_param("ws.start", start.to_string())),
        };
        mock.respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(server)
            .await;
    }
    all
}

#[tokio::test]
async fn walks_every_page_of_published_sources() {
    let server = MockServer::start().await;
    let uri = server.uri();
    let query = [("ws.op", "getPublishedSources"), ("status", "Published")];
    let expected = mount_pages(&server, ARCHIVE, &query, 3, |i| {
        json!({
            "self_link": format!("{uri}{ARCHIVE}/+sourcepub/{i}"),
            "resource_type_link": format!("{uri}/devel/#source_package_publishing_history"),
            "source_package_name": format!("pkg{i}"),
            "source_package_version": "1.0-1",
            "status": "Published",
            "display_name": format!("pkg{i} 1.0-1 in noble"),
            "date_published": null,
        })
    })
    .await;

    let sources = store(&server, None)
        .published_sources("ppa-1", "Published")
        .await
        .unwrap();

    let links: Vec<&str> = sources.iter().map(|s| s.self_link.as_str()).collect();
    let want: Vec<&str> = expected
        .iter()
        .map(|e| e["self_link"].as_str().unwrap())
        .collect();
    assert_eq!(links, want);
    assert_eq!(sources[5].source_package_name, "pkg5");
    assert_eq!(sources[5].status, "Published");
}

#[tokio::test]
async fn walks_every_page_of_the_owners_ppas() {
    let server = MockServer::start().await;
    let uri = server.uri();
    mount_pages(&server, "/devel/~berth-ci/ppas", &[], 3, |i| {
        json!({
            "self_link": format!("{uri}/devel/~berth-ci/+archive/ubuntu/ppa-{i}"),
            "name": format!("ppa-{i}"),
            "description": if i == 0 { Value::Null } else { json!(format!("d{i}")) },
            "http_etag": format!("\"e{i}\""),
        })
    })
    .await;

    let archives = store(&server, None).archives().await.unwrap();

    let names: Vec<&str> = archives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["ppa-0", "ppa-1", "ppa-2", "ppa-3", "ppa-4", "ppa-5"]
    );
    assert_eq!(
        (
            archives[0].description.as_str(),
            archives[3].http_etag.as_str()
        ),
        ("", "\"e3\"")
    );
}

#[tokio::test]
async fn a_collection_that_links_to_itself_is_refused() {
    let server = MockServer::start().await;
    let own = format!("{}/devel/~berth-ci/ppas", server.uri());
    Mock::given(method("GET"))
        .and(path("/devel/~berth-ci/ppas"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({ "start": 0, "total_size": 1, "entries": [], "next_collection_link": own }),
        ))
        .expect(1)
        .mount(&server)
        .await;

    let err = store(&server, None).archives().await;

    assert!(matches!(err, Err(StoreError::Protocol(_))), "{err:?}");
}

#[tokio::test]
async fn links_to_another_host_are_not_followed_with_credentials() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/devel/~berth-ci/ppas"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "entries": [],
            "next_collection_link": format!("{}/devel/~berth-ci/ppas?ws.start=75", elsewhere.uri()),
        })))
        .mount(&server)
        .await;
    let store = store(&server, Some(credentials("")));

    let walk = store.archives().await;
    let delete = store
        .request_deletion(&format!("{}{ARCHIVE}/+sourcepub/1", elsewhere.uri()))
        .await;

    assert!(matches!(walk, Err(StoreError::Protocol(_))), "{walk:?}");
    assert!(matches!(delete, Err(StoreError::Protocol(_))), "{delete:?}");
    assert!(requests(&elsewhere).await.is_empty());
}

async fn error_for(status: u16, body: &str) -> StoreError {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .mount(&server)
        .await;
    store(&server, None).archive("ppa-1").await.unwrap_err()
}

#[tokio::test]
async fn server_failures_are_retryable() {
    for status in [500, 503] {
        let err = error_for(status, "oops").await;
        assert!(
            matches!(err, StoreError::Unavailable { status: s } if s == status),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn client_errors_are_fatal_and_named() {
    for status in [401, 403] {
        let err = error_for(status, "no").await;
        assert!(
            matches!(err, StoreError::Unauthorized { status: s } if s == status),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
    let err = error_for(404, "Object: <Archive>, name: 'ppa-1'").await;
    assert!(
        matches!(err, StoreError::NotFound(ref what) if what.contains("ppa-1")),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let long = format!("Unknown field: {}", "x".repeat(500));
    let err = error_for(400, &long).await;
    match &err {
        StoreError::Rejected {
            status: 400,
            message,
        } => {
            assert!(message.starts_with("Unknown field: xxx"), "{message}");
            assert_eq!(message.chars().count(), 200);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unreadable_success_is_a_protocol_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&server)
        .await;

    let err = store(&server, None).archive("ppa-1").await.unwrap_err();

    assert!(matches!(err, StoreError::Protocol(_)), "{err:?}");
}

#[tokio::test]
async fn a_slow_answer_times_out_as_a_retryable_transport_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let store = store_with_timeout(&server, Some(credentials("")), Duration::from_millis(200));

    let started = std::time::Instant::now();
    let err = store
        .published_sources("ppa-1", "Published")
        .await
        .unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    let message = err.to_string();
    for hidden in ["ws.op", "status=", TOKEN, SECRET, "OAuth"] {
        assert!(!message.contains(hidden), "{hidden} in {message}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let root = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let store = LaunchpadStore::new(&root, "devel", OWNER, None, Duration::from_secs(2)).unwrap();

    let err = store.archive("ppa-1").await.unwrap_err();

    assert!(matches!(err, StoreError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[test]
fn describes_the_resource_it_hands_out() {
    let store = LaunchpadStore::new(
        "http://127.0.0.1:8081",
        "devel",
        OWNER,
        None,
        Duration::from_secs(1),
    )
    .unwrap();

    assert_eq!(
        store.resource("ppa-1"),
        json!({
            "kind": "ppa",
            "owner": "berth-ci",
            "name": "ppa-1",
            "reference": "ppa:berth-ci/ppa-1",
            "self_link": "http://127.0.0.1:8081/devel/~berth-ci/+archive/ubuntu/ppa-1",
        })
    );
}

#[test]
fn refuses_a_root_that_is_not_an_http_url() {
    for root in ["127.0.0.1:8081", "ftp://host/", ""] {
        let built = LaunchpadStore::new(root, "devel", OWNER, None, Duration::from_secs(1));
        assert!(
            matches!(built, Err(StoreError::Rejected { status: 0, .. })),
            "{root}"
        );
    }
}

/// A file under the temporary directory holding `text`, removed when dropped.
fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

#[test]
fn reads_a_launchpadlib_credentials_file() {
    let file = temp_file(
        "[1]\nconsumer_key = berth\nconsumer_secret = \naccess_token = TOKEN-abc\n\
         access_secret = SECRET-xyz\n",
    );

    let credentials = Credentials::from_file(file.path()).unwrap();

    assert_eq!(credentials.consumer_key, "berth");
    assert_eq!(credentials.consumer_secret, "");
    assert_eq!(credentials.token, TOKEN);
    assert_eq!(credentials.token_secret, SECRET);
    let shown = format!("{credentials:?}");
    assert!(!shown.contains(TOKEN) && !shown.contains(SECRET), "{shown}");
}

#[test]
fn a_missing_key_names_the_key_and_the_file_but_no_secret() {
    let file =
        temp_file("[1]\nconsumer_key = berth\nconsumer_secret = \naccess_token = TOKEN-abc\n");

    let err = Credentials::from_file(file.path()).unwrap_err();

    assert!(
        matches!(
            err,
            CredentialsError::MissingKey {
                key: "access_secret",
                ..
            }
        ),
        "{err:?}"
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(shown.contains("access_secret"), "{shown}");
        assert!(
            shown.contains(&file.path().display().to_string()),
            "{shown}"
        );
        assert!(!shown.contains(TOKEN), "{shown}");
    }
}

#[test]
fn a_malformed_line_is_not_echoed() {
    let file = temp_file("[1]\nconsumer_key = berth\nSECRET-xyz\n");

    let err = Credentials::from_file(file.path()).unwrap_err();

    assert!(
        matches!(err, CredentialsError::Malformed { line: 3, .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains(SECRET) && !format!("{err:?}").contains(SECRET));
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");

    let err = Credentials::from_file(&path).unwrap_err();

    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn from_config_reads_the_credentials_file() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(ARCHIVE))
        .respond_with(ResponseTemplate::new(209).set_body_json(archive_json(
            &server,
            json!("x"),
            "\"e2\"",
        )))
        .mount(&server)
        .await;
    let file = temp_file(
        "[1]\nconsumer_key = berth\nconsumer_secret = \naccess_token = TOKEN-abc\n\
         access_secret = SECRET-xyz\n",
    );
    let config = StoreConfig {
        api_root: server.uri(),
        credentials_file: Some(file.path().to_owned()),
        ..StoreConfig::default()
    };

    let store = LaunchpadStore::from_config(&config).unwrap();
    store.set_description("ppa-1", "\"e1\"", "x").await.unwrap();

    assert_oauth(&requests(&server).await[0], &format!("%26{SECRET}"));
}

#[test]
fn a_plain_http_store_root_is_refused_unless_it_is_loopback() {
    let open = |root: &str| LaunchpadStore::new(root, "devel", OWNER, None, Duration::from_secs(1));
    for root in [
        "http://127.0.0.1:8081/",
        "http://localhost:8081/",
        "http://[::1]:8081/",
        "https://api.launchpad.net/",
    ] {
        open(root).unwrap_or_else(|e| panic!("{root}: {e}"));
    }
    for root in [
        "http://api.launchpad.net/",
        "http://10.0.0.5:8081/",
        "http://user:secretpw@lp.example/",
    ] {
        let err = open(root).unwrap_err().to_string();
        assert!(
            err.contains("use https://") && err.contains("not loopback"),
            "{root}: {err}"
        );
        assert!(!err.contains("secretpw"), "{err}");
    }
}

#[test]
fn a_credentials_file_open_to_others_is_refused_with_the_chmod_to_run() {
    use std::os::unix::fs::PermissionsExt;
    let file = temp_file(&format!(
        "[1]\nconsumer_key = berth\nconsumer_secret = \naccess_token = {TOKEN}\naccess_secret = {SECRET}\n"
    ));
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();

    let err = Credentials::from_file(file.path()).unwrap_err().to_string();

    let shown = file.path().display();
    assert!(
        err.contains(&format!("{shown}")) && err.contains(&format!("chmod 600 {shown}")),
        "{err}"
    );
    assert!(!err.contains(SECRET) && !err.contains(TOKEN), "{err}");
}
