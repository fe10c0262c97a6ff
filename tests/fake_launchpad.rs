//! Black-box tests of the fake Launchpad: started in-process on port 0 (and once as the
//! real `berth fake-launchpad` binary), spoken to over HTTP with plain reqwest.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::fake::{FakeConfig, FakeCredentials, FakeLaunchpad, Faults};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, ETAG, IF_MATCH};
use serde_json::{Value, json};
use support::{Proc, wait_for};

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A fake on port 0 plus a client that talks to it.
struct TestFake {
    fake: FakeLaunchpad,
    http: reqwest::Client,
}

impl TestFake {
    async fn start(config: FakeConfig) -> TestFake {
        let fake = FakeLaunchpad::start(ANY, config)
            .await
            .expect("fake starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        TestFake { fake, http }
    }

    async fn default() -> TestFake {
        TestFake::start(FakeConfig::default()).await
    }

    /// `ROOT/~berth-ci/+archive/ubuntu/NAME`.
    fn archive_url(&self, name: &str) -> String {
        format!(
            "{}devel/~berth-ci/+archive/ubuntu/{name}",
            self.fake.api_root()
        )
    }

    fn admin_url(&self, path: &str) -> String {
        format!("{}_fake/{path}", self.fake.api_root())
    }

    async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        response.json().await.unwrap()
    }

    async fn etag(&self, name: &str) -> String {
        let archive = self.get_json(&self.archive_url(name)).await;
        archive["http_etag"].as_str().unwrap().to_owned()
    }

    /// A description PATCH as launchpadlib sends it; `auth` and `if_match` when given.
    async fn patch(
        &self,
        name: &str,
        auth: Option<&str>,
        if_match: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .patch(self.archive_url(name))
            .header("Accept", "application/json")
            .json(&body);
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        if let Some(etag) = if_match {
            request = request.header(IF_MATCH, etag);
        }
        request.send().await.unwrap()
    }

    /// Every entry of a paged collection, following `next_collection_link`; also returns
    /// how many pages it took.
    async fn walk(&self, url: &str) -> (Vec<Value>, usize) {
        let mut entries = Vec::new();
        let mut pages = 0;
        let mut next = Some(url.to_owned());
        while let Some(url) = next {
            pages += 1;
            assert!(pages < 100, "collection paging does not end");
            let page = self.get_json(&url).await;
            entries.extend(page["entries"].as_array().unwrap().iter().cloned());
            next = page
                .get("next_collection_link")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        (entries, pages)
    }

    async fn sources(&self, name: &str, status: &str) -> Vec<Value> {
        let url = format!(
            "{}?ws.op=getPublishedSources&status={status}",
            self.archive_url(name)
        );
        self.walk(&url).await.0
    }

    async fn request_deletion(&self, self_link: &str, auth: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self_link).form(&[
            ("ws.op", "requestDeletion"),
            ("removal_comment", "berth clean"),
        ]);
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        request.send().await.unwrap()
    }
}

/// A PLAINTEXT header as launchpadlib builds it (empty consumer secret); `secret` must not
/// need percent-encoding.
fn oauth(consumer: &str, token: &str, secret: &str) -> String {
    format!(
        "OAuth realm=\"https://api.launchpad.net/\", oauth_consumer_key=\"{consumer}\", \
         oauth_token=\"{token}\", oauth_signature_method=\"PLAINTEXT\", \
         oauth_signature=\"%26{secret}\", oauth_timestamp=\"{}\", oauth_nonce=\"{}\", \
         oauth_version=\"1.0\"",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::new_v4().simple(),
    )
}

fn signed() -> String {
    oauth("berth", "token", "secret")
}

fn self_links(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["self_link"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn archive_has_links_description_and_etag() {
    let t = TestFake::default().await;
    let response = t.http.get(t.archive_url("ppa-1")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = response.headers()[ETAG].to_str().unwrap().to_owned();
    let archive: Value = response.json().await.unwrap();
    assert_eq!(archive["self_link"], t.archive_url("ppa-1"));
    assert_eq!(archive["name"], "ppa-1");
    assert_eq!(archive["reference"], "~berth-ci/ubuntu/ppa-1");
    assert_eq!(archive["description"], "");
    let etag = archive["http_etag"].as_str().unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );
    assert_eq!(header, etag);
    assert_ne!(t.etag("ppa-2").await, etag, "each archive has its own ETag");
}

#[tokio::test]
async fn unknown_archives_and_owners_are_not_found() {
    let t = TestFake::default().await;
    for url in [
        t.archive_url("ppa-5"),
        format!("{}devel/~someone/+archive/ubuntu/ppa-1", t.fake.api_root()),
        format!("{}devel/berth-ci/+archive/ubuntu/ppa-1", t.fake.api_root()),
        format!("{}devel/~someone/ppas", t.fake.api_root()),
        format!("{}/+sourcepub/99", t.archive_url("ppa-1")),
    ] {
        let response = t.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{url}");
    }
    let response = t
        .patch("ppa-9", Some(&signed()), None, json!({"description": "x"}))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn description_writes_are_compare_and_swap() {
    let t = TestFake::default().await;
    let old = t.etag("ppa-1").await;

    let unsigned = t
        .patch("ppa-1", None, Some(&old), json!({"description": "x"}))
        .await;
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let garbled = t
        .patch("ppa-1", Some("OAuth nonsense"), Some(&old), json!({}))
        .await;
    assert_eq!(garbled.status(), StatusCode::UNAUTHORIZED);

    let written = t
        .patch(
            "ppa-1",
            Some(&signed()),
            Some(&old),
            json!({"description": "one"}),
        )
        .await;
    assert_eq!(written.status().as_u16(), 209);
    let header = written.headers()[ETAG].to_str().unwrap().to_owned();
    let archive: Value = written.json().await.unwrap();
    assert_eq!(archive["description"], "one");
    assert_eq!(archive["self_link"], t.archive_url("ppa-1"));
    let new = archive["http_etag"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(header, new);

    let stale = t
        .patch(
            "ppa-1",
            Some(&signed()),
            Some(&old),
            json!({"description": "two"}),
        )
        .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(t.fake.description("ppa-1").as_deref(), Some("one"));
    assert_eq!(t.etag("ppa-1").await, new);

    // Without If-Match Launchpad writes unconditionally.
    let blind = t
        .patch(
            "ppa-1",
            Some(&signed()),
            None,
            json!({"description": "three"}),
        )
        .await;
    assert_eq!(blind.status().as_u16(), 209);
    assert_eq!(t.fake.description("ppa-1").as_deref(), Some("three"));
    assert_eq!(t.fake.history().len(), 2);
}

#[tokio::test]
async fn writes_answer_209_content_returned() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestFake::default().await;
    let body = r#"{"description": "raw"}"#;
    let request = format!(
        "PATCH /devel/~berth-ci/+archive/ubuntu/ppa-1 HTTP/1.1\r\nHost: {}\r\n\
         Authorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        t.fake.addr(),
        signed(),
        body.len(),
    );
    let mut stream = tokio::net::TcpStream::connect(t.fake.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 209 Content Returned\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn admin_writes_make_older_etags_stale() {
    let t = TestFake::default().await;
    let old = t.etag("ppa-2").await;
    t.fake.set_description("ppa-2", "taken by someone else");
    let response = t
        .patch(
            "ppa-2",
            Some(&signed()),
            Some(&old),
            json!({"description": "x"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let archive = t.get_json(&t.archive_url("ppa-2")).await;
    assert_eq!(archive["description"], "taken by someone else");
    assert_ne!(archive["http_etag"], old.as_str());
}

#[tokio::test]
async fn bad_patch_bodies_are_refused() {
    let t = TestFake::default().await;
    let etag = t.etag("ppa-1").await;
    for body in [
        json!([1]),
        json!({"name": "other"}),
        json!({"description": 5}),
        json!("x"),
    ] {
        let response = t
            .patch("ppa-1", Some(&signed()), Some(&etag), body.clone())
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(!response.text().await.unwrap().is_empty());
    }
    assert_eq!(t.etag("ppa-1").await, etag, "refused writes change nothing");
    assert!(t.fake.history().is_empty());
}

#[tokio::test]
async fn published_sources_are_filtered_by_status_and_paged() {
    let t = TestFake::default().await;
    let mut published: Vec<String> = (1..=5)
        .map(|n| t.fake.add_upload("ppa-1", &format!("pkg{n}"), "1.0"))
        .collect();
    t.fake.add_upload("ppa-2", "elsewhere", "1.0");
    let pending = t
        .http
        .post(t.admin_url("ppas/ppa-1/uploads"))
        .json(&json!({"package": "waiting", "version": "2.0", "status": "Pending"}))
        .send()
        .await
        .unwrap();
    assert_eq!(pending.status(), StatusCode::CREATED);
    let pending: Value = pending.json().await.unwrap();
    assert_eq!(pending["status"], "Pending");
    assert_eq!(pending["date_published"], Value::Null);

    let first_url = format!(
        "{}?ws.op=getPublishedSources&status=Published&ws.size=2",
        t.archive_url("ppa-1")
    );
    let first = t.get_json(&first_url).await;
    assert_eq!(first["total_size"], 5);
    assert_eq!(first["start"], 0);
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    assert!(first.get("prev_collection_link").is_none());
    let second_url = first["next_collection_link"].as_str().unwrap();
    assert!(
        second_url.starts_with(&t.archive_url("ppa-1")),
        "{second_url}"
    );
    assert!(second_url.contains("status=Published"), "{second_url}");
    let second = t.get_json(second_url).await;
    assert_eq!(second["start"], 2);
    assert!(
        second["prev_collection_link"]
            .as_str()
            .unwrap()
            .contains("ws.start=0")
    );

    let (entries, pages) = t.walk(&first_url).await;
    assert_eq!(pages, 3);
    let mut seen = self_links(&entries);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        5,
        "every entry once: {seen:?}"
    );
    seen.sort();
    published.sort();
    assert_eq!(seen, published);
    for entry in &entries {
        assert_eq!(entry["status"], "Published");
        assert!(
            entry["source_package_name"]
                .as_str()
                .unwrap()
                .starts_with("pkg")
        );
        assert_eq!(entry["source_package_version"], "1.0");
        assert!(entry["date_published"].is_string());
    }

    let pending_entries = t.sources("ppa-1", "Pending").await;
    assert_eq!(
        self_links(&pending_entries),
        [pending["self_link"].as_str().unwrap()]
    );
    assert!(t.sources("ppa-1", "Deleted").await.is_empty());
    let all = t
        .walk(&format!(
            "{}?ws.op=getPublishedSources",
            t.archive_url("ppa-1")
        ))
        .await
        .0;
    assert_eq!(all.len(), 6);
}

#[tokio::test]
async fn bad_operations_and_parameters_are_refused() {
    let t = TestFake::default().await;
    for query in [
        "ws.op=getNothing",
        "ws.op=getPublishedSources&status=Gone",
        "ws.op=getPublishedSources&ws.size=many",
    ] {
        let url = format!("{}?{query}", t.archive_url("ppa-1"));
        let response = t.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(
            !response.text().await.unwrap().trim().is_empty(),
            "{query} says why"
        );
    }
}

#[tokio::test]
async fn request_deletion_needs_auth_and_deletes() {
    let t = TestFake::default().await;
    let link = t.fake.add_upload("ppa-3", "hello", "2.10-1");
    let unsigned = t.request_deletion(&link, None).await;
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(t.sources("ppa-3", "Published").await.len(), 1);

    let response = t.request_deletion(&link, Some(&signed())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "null");
    assert!(t.sources("ppa-3", "Published").await.is_empty());
    assert_eq!(
        self_links(&t.sources("ppa-3", "Deleted").await),
        std::slice::from_ref(&link)
    );
    assert_eq!(t.get_json(&link).await["status"], "Deleted");

    let other = t
        .http
        .post(&link)
        .header(AUTHORIZATION, signed())
        .form(&[("ws.op", "destroyEverything")])
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deletion_takes_the_configured_delay() {
    let delay = Duration::from_millis(300);
    let t = TestFake::start(FakeConfig {
        deletion_delay: delay,
        ..FakeConfig::default()
    })
    .await;
    let link = t.fake.add_upload("ppa-1", "hello", "1.0");
    let asked = Instant::now();
    let response = t.request_deletion(&link, Some(&signed())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let right_after = t.sources("ppa-1", "Published").await;
    if asked.elapsed() < delay {
        assert_eq!(
            self_links(&right_after),
            std::slice::from_ref(&link),
            "still published right after"
        );
    }
    wait_for("the deletion to show", Duration::from_secs(5), || async {
        let deleted = t.sources("ppa-1", "Deleted").await;
        if deleted.len() == 1 {
            Ok(())
        } else {
            Err(format!("{deleted:?}"))
        }
    })
    .await;
    assert!(asked.elapsed() >= delay, "deleted before the delay");
    assert!(t.sources("ppa-1", "Published").await.is_empty());
}

#[tokio::test]
async fn owner_ppas_are_a_paged_collection() {
    let t = TestFake::start(FakeConfig {
        ppas: 5,
        ..FakeConfig::default()
    })
    .await;
    let url = format!("{}devel/~berth-ci/ppas?ws.size=2", t.fake.api_root());
    let first = t.get_json(&url).await;
    assert_eq!(first["total_size"], 5);
    let (entries, pages) = t.walk(&url).await;
    assert_eq!(pages, 3);
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ppa-1", "ppa-2", "ppa-3", "ppa-4", "ppa-5"]);
    for entry in &entries {
        assert_eq!(
            entry["self_link"],
            t.archive_url(entry["name"].as_str().unwrap())
        );
        assert!(entry["http_etag"].as_str().unwrap().starts_with('"'));
    }
    let (unpaged, pages) = t
        .walk(&format!("{}devel/~berth-ci/ppas", t.fake.api_root()))
        .await;
    assert_eq!((unpaged.len(), pages), (5, 1));
}

#[tokio::test]
async fn configured_credentials_are_required_exactly() {
    let credentials = FakeCredentials {
        consumer_key: "berth".into(),
        token: "right-token".into(),
        token_secret: "right-secret".into(),
    };
    let config = FakeConfig {
        credentials: Some(credentials),
        ..FakeConfig::default()
    };
    let t = TestFake::start(config).await;
    let etag = t.etag("ppa-1").await;
    let body = json!({"description": "x"});
    for wrong in [
        oauth("berth", "wrong-token", "right-secret"),
        oauth("berth", "right-token", "wrong-secret"),
        oauth("other", "right-token", "right-secret"),
    ] {
        let response = t
            .patch("ppa-1", Some(&wrong), Some(&etag), body.clone())
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("right-secret") && !text.contains("wrong"),
            "{text}"
        );
    }
    let link = t.fake.add_upload("ppa-1", "hello", "1.0");
    let wrong = oauth("berth", "wrong-token", "right-secret");
    assert_eq!(
        t.request_deletion(&link, Some(&wrong)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let right = oauth("berth", "right-token", "right-secret");
    let response = t.patch("ppa-1", Some(&right), Some(&etag), body).await;
    assert_eq!(response.status().as_u16(), 209);
}

#[tokio::test]
async fn error_faults_answer_503_but_spare_the_admin_endpoints() {
    let t = TestFake::default().await;
    let response = t
        .http
        .put(t.admin_url("faults"))
        .json(&json!({"error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = t.http.get(t.archive_url("ppa-1")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = t
        .patch("ppa-1", Some(&signed()), None, json!({"description": "x"}))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(t.get_json(&t.admin_url("faults")).await["error_rate"], 1.0);
    t.get_json(&t.admin_url("state")).await;

    let reset = t.http.delete(t.admin_url("faults")).send().await.unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    t.get_json(&t.archive_url("ppa-1")).await;
    assert_eq!(t.fake.description("ppa-1").as_deref(), Some(""));

    let bad = t
        .http
        .put(t.admin_url("faults"))
        .json(&json!({"drop_rate": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forced_conflicts_fail_the_next_writes() {
    let t = TestFake::default().await;
    t.fake.set_faults(Faults {
        forced_conflicts: 2,
        ..Faults::default()
    });
    let etag = t.etag("ppa-1").await;
    let body = json!({"description": "mine"});
    for _ in 0..2 {
        let response = t
            .patch("ppa-1", Some(&signed()), Some(&etag), body.clone())
            .await;
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    }
    assert_eq!(
        t.get_json(&t.admin_url("faults")).await["forced_conflicts"],
        0
    );
    assert_eq!(
        t.etag("ppa-1").await,
        etag,
        "forced conflicts write nothing"
    );
    let response = t.patch("ppa-1", Some(&signed()), Some(&etag), body).await;
    assert_eq!(response.status().as_u16(), 209);

    t.fake.set_faults(Faults {
        conflict_rate: 1.0,
        ..Faults::default()
    });
    let etag = t.etag("ppa-1").await;
    let response = t
        .patch(
            "ppa-1",
            Some(&signed()),
            Some(&etag),
            json!({"description": "x"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn latency_delays_launchpad_answers() {
    let t = TestFake::default().await;
    let latency = Duration::from_millis(300);
    t.fake.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let started = Instant::now();
    t.get_json(&t.archive_url("ppa-1")).await;
    assert!(
        started.elapsed() >= latency,
        "answered after {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    t.get_json(&t.admin_url("state")).await;
    assert!(
        started.elapsed() < latency,
        "admin answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn dropped_connections_give_no_answer() {
    let t = TestFake::default().await;
    t.fake.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..3 {
        match t.http.get(t.archive_url("ppa-1")).send().await {
            Ok(response) => panic!("expected a dropped connection, got {}", response.status()),
            Err(err) => assert!(err.status().is_none() && !err.is_timeout(), "{err:?}"),
        }
    }
    let patch = t
        .http
        .patch(t.archive_url("ppa-1"))
        .header(AUTHORIZATION, signed())
        .json(&json!({"description": "lost"}))
        .send()
        .await;
    assert!(patch.is_err(), "{patch:?}");
    assert_eq!(
        t.fake.description("ppa-1").as_deref(),
        Some(""),
        "a dropped write is not done"
    );

    t.fake.set_faults(Faults::default());
    t.get_json(&t.archive_url("ppa-1")).await;
}

#[tokio::test]
async fn state_and_history_show_what_happened() {
    let t = TestFake::start(FakeConfig {
        ppas: 2,
        ..FakeConfig::default()
    })
    .await;
    let upload = t
        .http
        .post(t.admin_url("ppas/ppa-2/uploads"))
        .json(&json!({"package": "hello", "version": "1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::CREATED);
    let upload: Value = upload.json().await.unwrap();
    assert_eq!(upload["status"], "Published");
    let unknown = t
        .http
        .post(t.admin_url("ppas/ppa-7/uploads"))
        .json(&json!({"package": "hello", "version": "1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let old = t.etag("ppa-1").await;
    let response = t
        .patch(
            "ppa-1",
            Some(&signed()),
            Some(&old),
            json!({"description": "d1"}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 209);
    let new = t.etag("ppa-1").await;

    let state = t.get_json(&t.admin_url("state")).await;
    assert_eq!(state["owner"], "berth-ci");
    let archives = state["archives"].as_array().unwrap();
    assert_eq!(archives.len(), 2);
    assert_eq!(archives[0]["name"], "ppa-1");
    assert_eq!(archives[0]["description"], "d1");
    assert_eq!(archives[0]["etag"], new.as_str());
    assert_eq!(archives[1]["description"], "");
    let sources = state["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0]["ppa"], "ppa-2");
    assert_eq!(sources[0]["source_package_name"], "hello");
    assert_eq!(sources[0]["status"], "Published");
    assert_eq!(sources[0]["self_link"], upload["self_link"]);
    assert_eq!(t.fake.dump()["archives"], state["archives"]);

    let history = t.get_json(&t.admin_url("history")).await;
    let record = &history.as_array().unwrap()[0];
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(record["seq"], 1);
    assert_eq!(record["ppa"], "ppa-1");
    assert_eq!(record["old_etag"], old.as_str());
    assert_eq!(record["new_etag"], new.as_str());
    assert_eq!(record["description"], "d1");
    assert!(record["at"].is_string());
    let records = t.fake.history();
    assert_eq!(
        (records[0].seq, records[0].new_etag.as_str()),
        (1, new.as_str())
    );
}

#[tokio::test]
async fn etags_are_not_reused_by_a_new_server() {
    let first = TestFake::default().await;
    let etag = first.etag("ppa-1").await;
    first.fake.shutdown().await;
    let second = TestFake::default().await;
    assert_ne!(second.etag("ppa-1").await, etag);
}

#[tokio::test]
async fn the_binary_serves_the_owner_ppas_until_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "fake-launchpad",
            "--listen",
            "127.0.0.1:0",
            "--owner",
            "berth-ci",
            "--ppas",
            "2",
        ])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("BERTH_FAKE_LISTEN")
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth starts");
    let stderr = child.stderr.take().unwrap();
    let mut child = Proc(child);

    // Read stderr on a thread, so waiting for the address line can have a deadline.
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let root = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                if let Some((_, rest)) = line.split_once("listening on ") {
                    break rest.split_whitespace().next().unwrap().to_owned();
                }
                seen.push(line);
            }
            Err(err) => panic!("no address line ({err}); stderr so far: {seen:?}"),
        }
    };
    assert!(
        root.starts_with("http://127.0.0.1:") && root.ends_with('/'),
        "{root}"
    );

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ppa = |n: u32| format!("{root}devel/~berth-ci/+archive/ubuntu/ppa-{n}");
    assert_eq!(
        http.get(ppa(1)).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(ppa(2)).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(ppa(3)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "berth fake-launchpad ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}
