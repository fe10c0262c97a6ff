//! The Launchpad endpoints berth uses (docs/launchpad.md), under `/devel`. Errors are
//! plain text, like Launchpad's.

use std::time::Instant;

use axum::Form;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::ext::ReasonPhrase;
use serde::Deserialize;
use serde_json::Value;

use super::App;
use super::oauth;
use super::state::{FakeState, Status, WriteError, lock};
use super::wire::{Links, Page, archive_json, collection, source_json};

/// `209 Content Returned`: Launchpad's answer to a `PATCH` that sends the new representation.
/// hyper knows no reason phrase for 209, so it is set explicitly.
fn content_returned(body: Value) -> Response {
    // 209 is within 100..=999, so this cannot fail.
    let mut response = json_with_etag(StatusCode::from_u16(209).unwrap(), body);
    response
        .extensions_mut()
        .insert(ReasonPhrase::from_static(b"Content Returned"));
    response
}

/// The Launchpad routes; fault injection is layered on by the caller.
pub(crate) fn router() -> Router<App> {
    Router::new()
        .route(
            "/devel/{owner}/+archive/ubuntu/{name}",
            get(get_archive).patch(patch_archive),
        )
        .route(
            "/devel/{owner}/+archive/ubuntu/{name}/+sourcepub/{id}",
            get(get_source).post(post_source),
        )
        .route("/devel/{owner}/ppas", get(get_ppas))
}

/// The named-operation and paging parameters of a `GET`.
#[derive(Debug, Deserialize)]
struct WsQuery {
    #[serde(rename = "ws.op")]
    op: Option<String>,
    status: Option<String>,
    #[serde(rename = "ws.start")]
    start: Option<String>,
    #[serde(rename = "ws.size")]
    size: Option<String>,
}

/// A plain-text error answer.
fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    (status, [(CONTENT_TYPE, "text/plain;charset=utf-8")], text).into_response()
}

fn not_found(what: &str) -> Response {
    fail(StatusCode::NOT_FOUND, format!("Object not found: {what}"))
}

/// `~OWNER` as it arrives in the path, checked against the fake's owner.
fn owner_matches(state: &FakeState, owner: &str) -> bool {
    owner.strip_prefix('~') == Some(state.owner.as_str())
}

fn json_with_etag(status: StatusCode, body: Value) -> Response {
    let etag = body["http_etag"].as_str().unwrap_or_default().to_owned();
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(value) = etag.parse() {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

async fn get_archive(
    State(app): State<App>,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let state = lock(&app.shared);
    if !owner_matches(&state, &owner) || state.archive(&name).is_none() {
        return not_found(&format!("{owner}/+archive/ubuntu/{name}"));
    }
    let links = Links::new(&headers, app.addr, &state.owner);
    match query.op.as_deref() {
        None => json_with_etag(
            StatusCode::OK,
            archive_json(&links, state.archive(&name).unwrap()),
        ),
        Some("getPublishedSources") => published_sources(&state, &links, &name, &query, &uri),
        Some(other) => fail(
            StatusCode::BAD_REQUEST,
            format!("No such operation: {other}"),
        ),
    }
}

/// `ws.op=getPublishedSources`: the archive's publications, optionally in one status.
fn published_sources(
    state: &FakeState,
    links: &Links,
    name: &str,
    query: &WsQuery,
    uri: &Uri,
) -> Response {
    let status = match query.status.as_deref().map(|s| (s, Status::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((text, None)) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("status: Invalid value \"{text}\""),
            );
        }
    };
    let page = match Page::parse(
        query.start.as_deref(),
        query.size.as_deref(),
        state.page_size,
    ) {
        Ok(page) => page,
        Err(message) => return fail(StatusCode::BAD_REQUEST, message),
    };
    let Some(url) = links.request_url(uri) else {
        return fail(StatusCode::BAD_REQUEST, "Bad request address");
    };
    let now = Instant::now();
    let entries = state
        .sources(name, status, now)
        .into_iter()
        .map(|s| source_json(links, s, now))
        .collect();
    let type_link = "#source_package_publishing_history-page-resource";
    axum::Json(collection(&url, page, entries, type_link)).into_response()
}

async fn patch_archive(
    State(app): State<App>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = lock(&app.shared);
    if let Err(why) = oauth::check(&headers, state.credentials.as_ref()) {
        return fail(StatusCode::UNAUTHORIZED, why);
    }
    if !owner_matches(&state, &owner) || state.archive(&name).is_none() {
        return not_found(&format!("{owner}/+archive/ubuntu/{name}"));
    }
    let description = match writable_description(&body) {
        Ok(Some(description)) => description,
        // Nothing to change: Launchpad answers the representation as it is.
        Ok(None) => {
            let links = Links::new(&headers, app.addr, &state.owner);
            let body = archive_json(&links, state.archive(&name).unwrap());
            return content_returned(body);
        }
        Err(message) => return fail(StatusCode::BAD_REQUEST, message),
    };
    if state.take_conflict() {
        tracing::debug!(ppa = %name, "fault: answering 412 to a write");
        return fail(
            StatusCode::PRECONDITION_FAILED,
            "Precondition Failed (injected fault)",
        );
    }
    let if_match = headers.get(IF_MATCH).and_then(|v| v.to_str().ok());
    match state.write_description(&name, if_match, &description) {
        Ok(archive) => {
            let links = Links::new(&headers, app.addr, &state.owner);
            let body = archive_json(&links, &archive);
            content_returned(body)
        }
        Err(WriteError::Stale) => fail(StatusCode::PRECONDITION_FAILED, "Precondition Failed"),
        Err(WriteError::NotFound) => not_found(&name),
    }
}

/// The new description from a `PATCH` body: a JSON object whose only writable field here
/// is `description`.
fn writable_description(body: &[u8]) -> Result<Option<String>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Expected a JSON object: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("Expected a JSON object".into());
    };
    let mut description = None;
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("description", Value::String(text)) => description = Some(text),
            ("description", Value::Null) => description = Some(String::new()),
            ("description", _) => return Err("description: Expected a string".into()),
            (other, _) => {
                return Err(format!(
                    "{other}: You tried to modify a read-only attribute"
                ));
            }
        }
    }
    Ok(description)
}

async fn get_source(
    State(app): State<App>,
    Path((owner, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let state = lock(&app.shared);
    let source = id.parse().ok().and_then(|id| state.source(&name, id));
    match source {
        Some(source) if owner_matches(&state, &owner) => {
            let links = Links::new(&headers, app.addr, &state.owner);
            axum::Json(source_json(&links, source, Instant::now())).into_response()
        }
        _ => not_found(&format!("{owner}/+archive/ubuntu/{name}/+sourcepub/{id}")),
    }
}

/// The form body of a named `POST` operation.
#[derive(Debug, Deserialize)]
struct OpForm {
    #[serde(rename = "ws.op")]
    op: Option<String>,
}

/// `POST …/+sourcepub/ID` with `ws.op=requestDeletion` (form-encoded).
async fn post_source(
    State(app): State<App>,
    Path((owner, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: Result<Form<OpForm>, FormRejection>,
) -> Response {
    let mut state = lock(&app.shared);
    if let Err(why) = oauth::check(&headers, state.credentials.as_ref()) {
        return fail(StatusCode::UNAUTHORIZED, why);
    }
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return fail(rejection.status(), rejection.body_text()),
    };
    match form.op.as_deref() {
        Some("requestDeletion") => {}
        Some(other) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("No such operation: {other}"),
            );
        }
        None => return fail(StatusCode::BAD_REQUEST, "No operation name given (ws.op)"),
    }
    let number = id.parse().ok().filter(|_| owner_matches(&state, &owner));
    match number.and_then(|n| state.request_deletion(&name, n, Instant::now())) {
        Some(()) => {
            tracing::debug!(ppa = %name, source = %id, "deletion requested");
            ([(CONTENT_TYPE, "application/json")], "null").into_response()
        }
        None => not_found(&format!("{owner}/+archive/ubuntu/{name}/+sourcepub/{id}")),
    }
}

/// `GET /devel/~OWNER/ppas`: the owner's archives, paged.
async fn get_ppas(
    State(app): State<App>,
    Path(owner): Path<String>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let state = lock(&app.shared);
    if !owner_matches(&state, &owner) {
        return not_found(&owner);
    }
    let page = match Page::parse(
        query.start.as_deref(),
        query.size.as_deref(),
        state.page_size,
    ) {
        Ok(page) => page,
        Err(message) => return fail(StatusCode::BAD_REQUEST, message),
    };
    let links = Links::new(&headers, app.addr, &state.owner);
    let Some(url) = links.request_url(&uri) else {
        return fail(StatusCode::BAD_REQUEST, "Bad request address");
    };
    let entries = state
        .archives()
        .iter()
        .map(|a| archive_json(&links, a))
        .collect();
    axum::Json(collection(&url, page, entries, "#archive-page-resource")).into_response()
}
