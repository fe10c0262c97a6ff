//! The fake's own endpoints under `/_fake/` (no auth, never subject to faults): add uploads,
//! set faults, and dump state and write history for tests.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::faults::Faults;
use super::state::{FakeState, Status, lock};
use super::wire::{Links, archive_json, source_json};

pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/_fake/ppas/{name}/uploads", post(add_upload))
        .route(
            "/_fake/faults",
            get(get_faults).put(put_faults).delete(reset_faults),
        )
        .route("/_fake/state", get(get_state))
        .route("/_fake/history", get(get_history))
        .route("/_fake/deletions", get(get_deletions))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Body of `POST /_fake/ppas/{name}/uploads`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    package: String,
    version: String,
    /// Launchpad's spelling; `Published` when absent.
    status: Option<String>,
}

async fn add_upload(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(upload): Json<Upload>,
) -> Response {
    let status = match upload.status.as_deref() {
        None => Status::Published,
        Some(text) => match Status::parse(text) {
            Some(status) => status,
            None => return error(StatusCode::BAD_REQUEST, format!("unknown status {text:?}")),
        },
    };
    let mut state = lock(&app.shared);
    match state.add_source(&name, &upload.package, &upload.version, status) {
        Some(source) => {
            let links = Links::new(&headers, app.addr, &state.owner);
            let body = source_json(&links, &source, std::time::Instant::now());
            (StatusCode::CREATED, Json(body)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no PPA named {name:?}")),
    }
}

async fn get_faults(State(app): State<App>) -> Json<Faults> {
    Json(lock(&app.shared).faults.clone())
}

async fn put_faults(State(app): State<App>, Json(faults): Json<Faults>) -> Response {
    if let Err(message) = faults.validate() {
        return error(StatusCode::BAD_REQUEST, message);
    }
    tracing::info!(?faults, "faults set");
    lock(&app.shared).faults = faults.clone();
    Json(faults).into_response()
}

async fn reset_faults(State(app): State<App>) -> Json<Faults> {
    lock(&app.shared).faults = Faults::default();
    Json(Faults::default())
}

async fn get_state(State(app): State<App>, headers: HeaderMap) -> Json<Value> {
    let state = lock(&app.shared);
    Json(dump(&state, &Links::new(&headers, app.addr, &state.owner)))
}

async fn get_history(State(app): State<App>) -> Json<Value> {
    Json(json!(lock(&app.shared).history()))
}

async fn get_deletions(State(app): State<App>) -> Json<Value> {
    Json(json!(lock(&app.shared).deletions()))
}

/// Everything a test may want to look at: archives (name, description, etag, …), every
/// source with its current status, and the faults in force.
pub(crate) fn dump(state: &FakeState, links: &Links) -> Value {
    let now = std::time::Instant::now();
    let archives: Vec<Value> = state
        .archives()
        .iter()
        .map(|a| {
            let mut value = archive_json(links, a);
            value["etag"] = a.etag.clone().into();
            value
        })
        .collect();
    let sources: Vec<Value> = state
        .all_sources()
        .iter()
        .map(|s| {
            let mut value = source_json(links, s, now);
            value["id"] = s.id.into();
            value["ppa"] = s.ppa.clone().into();
            value
        })
        .collect();
    json!({
        "owner": state.owner,
        "archives": archives,
        "sources": sources,
        "faults": state.faults,
    })
}
