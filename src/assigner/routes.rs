//! The HTTP handlers of DESIGN §4: each checks its input, calls the link and maps the
//! error; the exchange with the workers is the link's.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::api::{
    Accepted, AcquireRequest, Acquired, Action, ActionRequest, BODY_LIMIT, Body, ReleaseRequest,
    RenewRequest, Renewed, check_token,
};
use super::auth::{Caller, authorize};
use super::error::ApiError;
use super::events_stream::events_stream;
use super::history::{self, parse_since};
use super::link::ExchangeError;
use super::metrics::{CONTENT_TYPE, record_answers};
use super::openapi::{ErrorBody, Health, HistoryEvent, Pools, Released};
use super::page;
use super::status::{SlotDetail, Snapshot, pool_counts};
use crate::access::client_of_owner;
use crate::lease::token_matches;
use crate::protocol::{Control, Event, PROTOCOL_VERSION, RenewOutcome};
use crate::record::SlotState;
use crate::store::slot::{SlotView, read_slot};

type Shared = State<Arc<AppState>>;

/// Every route: method, path template, handler. The router is built from this table only,
/// and a test compares it with the OpenAPI document's paths ([`super::openapi`]).
pub(crate) fn routes() -> Vec<(Method, &'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        (Method::POST, "/v1/pools/{pool}/acquire", post(acquire)),
        (Method::POST, "/v1/slots/{slot}/renew", post(renew)),
        (Method::POST, "/v1/slots/{slot}/release", post(release)),
        (Method::POST, "/v1/slots/{slot}/disable", post(disable)),
        (Method::POST, "/v1/slots/{slot}/enable", post(enable)),
        (Method::POST, "/v1/slots/{slot}/reclaim", post(reclaim)),
        (Method::POST, "/v1/slots/{slot}/clean", post(clean)),
        (Method::GET, "/v1/slots/{slot}", get(slot_detail)),
        (Method::GET, "/v1/slots/{slot}/history", get(slot_history)),
        (Method::GET, "/v1/history", get(history)),
        (Method::GET, "/v1/slots", get(slots)),
        (Method::GET, "/v1/pools", get(pools)),
        (Method::GET, "/v1/events/stream", get(events_stream)),
        (Method::GET, "/", get(page::page)),
        (Method::GET, "/page.js", get(page::script)),
        (Method::GET, "/page.css", get(page::style)),
        (Method::GET, "/healthz", get(healthz)),
        (Method::GET, "/readyz", get(readyz)),
        (Method::GET, "/metrics", get(metrics)),
        (Method::GET, "/openapi.json", get(openapi_json)),
    ]
}

pub(crate) fn router(state: Arc<AppState>) -> axum::Router {
    let mut router = axum::Router::new();
    for (method, path, handler) in routes() {
        let access = super::auth::access(&method, path)
            .unwrap_or_else(|| panic!("{method} {path} has no entry in auth::access"));
        let handler = handler.route_layer(middleware::from_fn_with_state(
            (Arc::clone(&state), access),
            authorize,
        ));
        router = router.route(path, handler);
    }
    router
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            record_answers,
        ))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async {
            ApiError::BadBody {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "method not allowed here; see docs/DESIGN.md §4 for the API".into(),
            }
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Takes a slot of the pool, waiting up to `wait_secs` for one to come free; among the
/// requests waiting, a higher `priority` goes first, then the oldest.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/acquire",
    params(("pool" = String, Path, description = "The pool to take a slot from")),
    request_body = AcquireRequest,
    responses(
        (status = 200, description = "A slot and its lease", body = Acquired),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the client's `max_held` or `max_waiting` is reached (the message says which, the limit and the count); with `Retry-After`", body = ErrorBody),
        (status = 400, description = "Bad input (the message names the field), or a body that is not JSON of this shape (`bad_body`)", body = ErrorBody),
        (status = 404, description = "`unknown_pool`", body = ErrorBody),
        (status = 413, description = "`bad_body`: the body is too large", body = ErrorBody),
        (status = 503, description = "`no_slot` (none came free within the wait), `broker_unavailable`, `shutting_down`; with `Retry-After`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(pool = %pool, request_id))]
pub(crate) async fn acquire(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
    body: Result<Body<AcquireRequest>, ApiError>,
) -> Result<Json<Acquired>, ApiError> {
    if app.config.pool(&pool).is_none() {
        return Err(ApiError::UnknownPool(pool));
    }
    let mut timer = app.metrics.acquire_started(&pool);
    let answer = assign(&app, &caller, pool, body).await;
    timer.outcome(match &answer {
        Ok(_) => "assigned",
        Err(err) => err.code(),
    });
    answer
}

/// Acquire, once its pool is known to exist.
async fn assign(
    app: &AppState,
    caller: &Caller,
    pool: String,
    body: Result<Body<AcquireRequest>, ApiError>,
) -> Result<Json<Acquired>, ApiError> {
    let body = body?.0;
    let defaulted = body.lease_secs.is_none();
    let mut request = body.check(&app.config)?;
    request.lease_secs = caller.lease_secs(request.lease_secs, defaulted)?;
    let _waiting = match caller.client.as_deref() {
        Some(client) => {
            let waiting = app.quotas.enter(client)?;
            app.quotas.check_held(&app.status, client).await?;
            Some(waiting)
        }
        None => None,
    };
    let owner = app
        .config
        .auth
        .recorded_owner(caller.name(), &request.owner);
    let request_id = Uuid::new_v4();
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    let wait = Duration::from_secs(request.wait_secs);
    let priority = crate::access::effective_priority(request.priority, caller.client.as_deref());
    let reply = app
        .link
        .assign(
            request_id,
            &pool,
            &owner,
            request.lease_secs,
            wait,
            priority,
        )
        .await
        .map_err(|err| match err {
            ExchangeError::BrokerDown => ApiError::BrokerDown,
            ExchangeError::NoAnswer => ApiError::NoSlot {
                pool: pool.clone(),
                wait_secs: request.wait_secs,
            },
            ExchangeError::Stopping => ApiError::ShuttingDown,
        })?;
    if let Some(client) = caller.client.as_deref()
        && let Err(over) = app
            .quotas
            .after_grant(&app.status, client, &reply.slot)
            .await
    {
        tracing::info!(slot = %reply.slot, client = %client.name, "grant over max_held; giving the slot back");
        app.link.give_back(reply);
        return Err(over);
    }
    tracing::info!(slot = %reply.slot, owner = %owner, priority, "slot assigned");
    Ok(Json(Acquired {
        slot: reply.slot,
        pool,
        lease_token: reply.lease_token,
        lease_expires: reply.lease_expires,
        lease_secs: request.lease_secs,
        resource: reply.resource,
    }))
}

/// Extends the lease to `lease_secs` from now (the server's default when absent).
#[utoipa::path(
    post,
    path = "/v1/slots/{slot}/renew",
    params(("slot" = String, Path, description = "The slot held")),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "Renewed", body = Renewed),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 400, description = "Bad input or body", body = ErrorBody),
        (status = 403, description = "`wrong_token`; `forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 409, description = "`not_held`: the lease is over, or the slot is held by another client", body = ErrorBody),
        (status = 503, description = "`worker_unavailable`, `broker_unavailable`, `shutting_down`; with `Retry-After`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn renew(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(slot): Path<String>,
    body: Result<Body<RenewRequest>, ApiError>,
) -> Result<Json<Renewed>, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let body = body?.0;
    let defaulted = body.lease_secs.is_none();
    let (lease_token, lease_secs) = body.check(&app.config)?;
    let lease_secs = caller.lease_secs(lease_secs, defaulted)?;
    match check_holder(&app, &caller, &slot).await {
        // The worker checks the token whatever the store's view says.
        Err(ApiError::Store(err)) => {
            tracing::warn!(error = %err, "could not read the holder of the slot; the worker checks the token");
        }
        other => other?,
    }
    let reply = match app.link.renew(&slot, lease_token, lease_secs).await {
        Ok(reply) => reply,
        Err(ExchangeError::BrokerDown) => return Err(ApiError::BrokerDown),
        Err(ExchangeError::NoAnswer) => return Err(ApiError::WorkerDown(slot)),
        Err(ExchangeError::Stopping) => return Err(ApiError::ShuttingDown),
    };
    match (reply.outcome, reply.lease_expires) {
        (RenewOutcome::Renewed, Some(lease_expires)) => Ok(Json(Renewed { lease_expires })),
        (RenewOutcome::Renewed, None) => Err(ApiError::Internal(anyhow::anyhow!(
            "worker renewed without a lease_expires"
        ))),
        (RenewOutcome::WrongToken, _) => Err(ApiError::WrongToken),
        (RenewOutcome::NotHeld, _) => Err(ApiError::NotHeld(slot)),
    }
}

/// Checks the token against the store, then hands the release to the broker: once confirmed
/// it is never lost, even while the slot's worker is down.
#[utoipa::path(
    post,
    path = "/v1/slots/{slot}/release",
    params(("slot" = String, Path, description = "The slot held")),
    request_body = ReleaseRequest,
    responses(
        (status = 202, description = "Handed to the slot's worker; the slot is cleaned, then free again", body = Released),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 400, description = "Bad input or body", body = ErrorBody),
        (status = 403, description = "`wrong_token`; `forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 409, description = "`not_held`: nobody holds the slot, or another client does", body = ErrorBody),
        (status = 503, description = "`store_unavailable` (`Retry-After: 1`), `broker_unavailable`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn release(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(slot): Path<String>,
    body: Result<Body<ReleaseRequest>, ApiError>,
) -> Result<Response, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let token = body?.0.lease_token;
    check_token(&token)?;
    check_holder(&app, &caller, &slot).await?;
    let view = read_slot(app.store.as_ref(), &slot)
        .await
        .map_err(ApiError::Store)?;
    if view.record.state != SlotState::Used {
        return Err(ApiError::NotHeld(slot));
    }
    match view.record.lease_sha256.as_deref() {
        Some(hash) if token_matches(&token, hash) => {}
        _ => return Err(ApiError::WrongToken),
    }
    app.link
        .release(&slot, &token)
        .await
        .map_err(|_| ApiError::BrokerDown)?;
    if caller.client.is_some() {
        // The holder's quota counts it no more once its worker has written the release.
        app.status.invalidate();
    }
    tracing::info!("release handed to the slot's worker");
    Ok((StatusCode::ACCEPTED, Json(json!({"slot": slot}))).into_response())
}

/// Before a renew or release reaches the worker or the store: `409 not_held` unless the
/// store's view shows `slot` held by the caller's client (the client its recorded owner
/// names): to a client, a slot another client holds is not held. The cached view (up to
/// 2 s old) lets a holder through; otherwise it takes a view read after this request came,
/// which shows any slot handed out before (shared with concurrent requests, one read at a
/// time). No check in mode `none`.
async fn check_holder(app: &AppState, caller: &Caller, slot: &str) -> Result<(), ApiError> {
    let Some(client) = caller.name() else {
        return Ok(());
    };
    let arrived = std::time::Instant::now();
    // `Some(true)`: held by the caller; `Some(false)`: by another client; `None`: by nobody.
    let holder = |snapshot: &Snapshot| {
        let status = snapshot.slots.iter().find(|s| s.slot == slot)?;
        (status.state == SlotState::Used.as_str()).then(|| {
            status
                .owner
                .as_deref()
                .is_some_and(|owner| client_of_owner(owner) == client)
        })
    };
    let snapshot = app.status.snapshot().await.map_err(ApiError::Store)?;
    if holder(&snapshot) == Some(true) {
        return Ok(());
    }
    let snapshot = app
        .status
        .snapshot_since(arrived)
        .await
        .map_err(ApiError::Store)?;
    match holder(&snapshot) {
        Some(true) => Ok(()),
        Some(false) => Err(ApiError::NotYours(slot.to_owned())),
        None => Err(ApiError::NotHeld(slot.to_owned())),
    }
}

/// An operator action: checks the body, then the store record (`allowed` answers why the
/// state does not allow it), then hands the message that `message` makes to the broker,
/// persistent and confirmed. The slot's worker checks the record again when it applies it.
async fn act(
    app: &AppState,
    slot: String,
    name: &'static str,
    body: Result<Body<ActionRequest>, ApiError>,
    reason_required: bool,
    allowed: impl Fn(&SlotView, &Action) -> Result<(), ApiError>,
    message: impl Fn(Action) -> Control,
) -> Result<Response, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let action = match body {
        Ok(body) => body.0.check(reason_required)?,
        Err(err) => return Err(err),
    };
    if name != "disable" && action.now {
        return Err(ApiError::BadRequest(format!(
            "\"now\" is for disable only, not for {name}"
        )));
    }
    let view = read_slot(app.store.as_ref(), &slot)
        .await
        .map_err(ApiError::Store)?;
    if let Some(version) = view.newer {
        return Err(ApiError::WrongState(format!(
            "slot {slot:?} has a record written by a newer berth (version {version}); this one leaves it alone"
        )));
    }
    allowed(&view, &action)?;
    let (reason, by) = (action.reason.clone(), action.by.clone());
    app.link
        .action(&slot, &message(action))
        .await
        .map_err(|_| ApiError::BrokerDown)?;
    tracing::info!(
        action = name,
        reason = reason.as_deref().unwrap_or(""),
        by = by.as_deref().unwrap_or(""),
        "operator action handed to the slot's worker"
    );
    let body = Accepted {
        slot,
        action: name.to_owned(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Takes the slot out of service: a free slot at once, a dirty one after its cleaning, a held
/// one once its holder is done (drain) or, with `now`, at once (the lease is revoked).
#[utoipa::path(
    post,
    path = "/v1/slots/{slot}/disable",
    params(("slot" = String, Path, description = "The slot")),
    request_body = ActionRequest,
    responses(
        (status = 202, description = "Handed to the slot's worker (applied when it runs)", body = Accepted),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 400, description = "Bad input (`reason` missing or over 500 characters) or body", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 409, description = "`wrong_state`: already disabled, or already draining (without `now`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `broker_unavailable`; with `Retry-After`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn disable(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<ActionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let name = slot.clone();
    let allowed = |view: &SlotView, action: &Action| {
        let record = &view.record;
        match record.state {
            SlotState::Disabled => Err(ApiError::WrongState(format!(
                "slot {name:?} is already disabled; enable it to put it back"
            ))),
            SlotState::Used if record.drain.is_some() && !action.now => {
                Err(ApiError::WrongState(format!(
                    "slot {name:?} is already draining (disabled once its holder is done); add \"now\": true to revoke the lease at once"
                )))
            }
            SlotState::Dirty if record.drain.is_some() => Err(ApiError::WrongState(format!(
                "slot {name:?} is already being cleaned to be disabled"
            ))),
            _ => Ok(()),
        }
    };
    act(&app, slot, "disable", body, true, allowed, |action| {
        Control::Disable {
            v: PROTOCOL_VERSION,
            reason: action.reason.unwrap_or_default(),
            by: action.by,
            now: action.now,
        }
    })
    .await
}

/// Puts a disabled slot back (cleaned first, then free), or cancels a pending drain.
#[utoipa::path(
    post,
    path = "/v1/slots/{slot}/enable",
    params(("slot" = String, Path, description = "The slot")),
    request_body = ActionRequest,
    responses(
        (status = 202, description = "Handed to the slot's worker (applied when it runs)", body = Accepted),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 400, description = "Bad input or body", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 409, description = "`wrong_state`: neither disabled nor draining", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `broker_unavailable`; with `Retry-After`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn enable(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<ActionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let name = slot.clone();
    let allowed = |view: &SlotView, _: &Action| {
        let record = &view.record;
        if record.state == SlotState::Disabled || record.drain.is_some() {
            Ok(())
        } else {
            Err(ApiError::WrongState(format!(
                "slot {name:?} is neither disabled nor draining (it is {})",
                record.state
            )))
        }
    };
    act(&app, slot, "enable", body, false, allowed, |action| {
        Control::Enable {
            v: PROTOCOL_VERSION,
            reason: action.reason,
            by: action.by,
        }
    })
    .await
}

/// Revokes the lease of a held slot now: it is cleaned and free again; the old token is
/// useless from then on.
#[utoipa::path(
    post,
    path = "/v1/slots/{slot}/reclaim",
    params(("slot" = String, Path, description = "The slot")),
    request_body = ActionRequest,
    responses(
        (status = 202, description = "Handed to the slot's worker (applied when it runs)", body = Accepted),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 400, description = "Bad input (`reason` missing or over 500 characters) or body", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 409, description = "`not_held`: nobody holds the slot", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `broker_unavailable`; with `Retry-After`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn reclaim(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<ActionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let name = slot.clone();
    let allowed = |view: &SlotView, _: &Action| {
        if view.record.state == SlotState::Used {
            Ok(())
        } else {
            Err(ApiError::NotHeld(name.clone()))
        }
    };
    act(&app, slot, "reclaim", body, true, allowed, |action| {
        Control::Reclaim {
            v: PROTOCOL_VERSION,
            reason: action.reason.unwrap_or_default(),
            by: action.by,
        }
    })
    .await
}

/// Retries the cleaning of a dirty slot now (its backoff is reset).
#[utoipa::path(
    post,
    path = "/v1/slots/{slot}/clean",
    params(("slot" = String, Path, description = "The slot")),
    request_body = ActionRequest,
    responses(
        (status = 202, description = "Handed to the slot's worker (applied when it runs)", body = Accepted),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 400, description = "Bad input or body", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 409, description = "`wrong_state`: the slot is not dirty", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `broker_unavailable`; with `Retry-After`", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn clean(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<ActionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let name = slot.clone();
    let allowed = |view: &SlotView, _: &Action| {
        if view.record.state == SlotState::Dirty {
            Ok(())
        } else {
            Err(ApiError::WrongState(format!(
                "slot {name:?} is not dirty (it is {}); only a dirty slot is cleaned",
                view.record.state
            )))
        }
    };
    act(&app, slot, "clean", body, false, allowed, |action| {
        Control::Clean {
            v: PROTOCOL_VERSION,
            reason: action.reason,
            by: action.by,
        }
    })
    .await
}

/// One slot, read from the store for this request: state, holder, lease, cleaning trouble,
/// and what an operator action left behind.
#[utoipa::path(get, path = "/v1/slots/{slot}",
    params(("slot" = String, Path, description = "The slot")),
    responses(
        (status = 200, description = "The slot", body = SlotDetail),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
))]
pub(crate) async fn slot_detail(
    State(app): Shared,
    Path(slot): Path<String>,
) -> Result<Json<SlotDetail>, ApiError> {
    let Some(pool) = app.config.pool_of(&slot) else {
        return Err(ApiError::UnknownSlot(slot));
    };
    let pool = pool.name.clone();
    let view = read_slot(app.store.as_ref(), &slot)
        .await
        .map_err(ApiError::Store)?;
    Ok(Json(SlotDetail::new(&slot, &pool, view)))
}

/// `limit` when none is given.
pub(crate) const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The most events one history answer holds; a larger `limit` is cut to it.
pub(crate) const MAX_HISTORY_LIMIT: usize = 1000;
/// How far back a history goes when no `since` is given.
const DEFAULT_HISTORY_SINCE: &str = "1d";

/// The query of the history routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Only events of this pool (`GET /v1/history` only).
    pool: Option<String>,
    /// The earliest event: RFC 3339 (`2026-11-30T08:00:00Z`) or a duration back from now
    /// (`90s`, `30m`, `2h`, `1d`); default `1d`.
    since: Option<String>,
    /// At most this many events, the newest (default 100, at most 1000; more is cut to 1000).
    limit: Option<usize>,
}

impl HistoryParams {
    fn query(self, slot: Option<String>, pool: Option<String>) -> Result<history::Query, ApiError> {
        let since = self.since.as_deref().unwrap_or(DEFAULT_HISTORY_SINCE);
        let since = parse_since(since, chrono::Utc::now()).map_err(ApiError::BadRequest)?;
        let limit = self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if limit == 0 {
            return Err(ApiError::BadRequest("\"limit\" must be at least 1".into()));
        }
        Ok(history::Query {
            slot,
            pool,
            since,
            limit: limit.min(MAX_HISTORY_LIMIT),
        })
    }
}

fn bad_query(err: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!(
        "bad query: {}; the history takes since=<RFC 3339 or 1d>, limit=<1..1000>, pool=<pool>",
        err.body_text()
    ))
}

/// A slot's events, oldest first, from the history stream.
#[utoipa::path(get, path = "/v1/slots/{slot}/history",
    params(("slot" = String, Path, description = "The slot"), HistoryParams),
    responses(
        (status = 200, description = "The slot's newest `limit` events since `since`, oldest first (`[]` when there are none)", body = [HistoryEvent]),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 400, description = "`bad_request`: `since` or `limit` is not understood", body = ErrorBody),
        (status = 404, description = "`unknown_slot`", body = ErrorBody),
        (status = 503, description = "`history_unavailable` (the stream is missing, unreachable or too slow), `broker_unavailable`; with `Retry-After`", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(slot = %slot))]
pub(crate) async fn slot_history(
    State(app): Shared,
    Path(slot): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let query = params.map_err(bad_query)?.0.query(Some(slot), None)?;
    let events = app.link.history(&query).await.map_err(ApiError::History)?;
    Ok(Json(events))
}

/// Every slot's events (or one pool's), oldest first, from the history stream.
#[utoipa::path(get, path = "/v1/history",
    params(HistoryParams),
    responses(
        (status = 200, description = "The newest `limit` events since `since`, oldest first", body = [HistoryEvent]),
        (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
        (status = 400, description = "`bad_request`: `since` or `limit` is not understood", body = ErrorBody),
        (status = 404, description = "`unknown_pool`", body = ErrorBody),
        (status = 503, description = "`history_unavailable` (the stream is missing, unreachable or too slow), `broker_unavailable`; with `Retry-After`", body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
pub(crate) async fn history(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let params = params.map_err(bad_query)?.0;
    let pool = params.pool.clone();
    if let Some(pool) = &pool {
        if app.config.pool(pool).is_none() {
            return Err(ApiError::UnknownPool(pool.clone()));
        }
        caller.check_pool(pool)?;
    }
    let query = params.query(None, pool)?;
    let events = app.link.history(&query).await.map_err(ApiError::History)?;
    Ok(Json(events))
}

/// Every slot's state, from one bulk read of the store at most 2 s old (`as_of`).
#[utoipa::path(get, path = "/v1/slots", responses(
    (status = 200, description = "The slots", body = Snapshot),
    (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
    (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
    (status = 503, description = "`store_unavailable`", body = ErrorBody),
))]
pub(crate) async fn slots(State(app): Shared) -> Response {
    match app.status.snapshot().await {
        Ok(snapshot) => Json(snapshot.as_ref()).into_response(),
        Err(err) => ApiError::Store(err).into_response(),
    }
}

/// Every pool's counts by state, and its waiting requests and consumers from the broker.
#[utoipa::path(get, path = "/v1/pools", responses(
    (status = 200, description = "The pools", body = Pools),
    (status = 401, description = "`unauthorized`: no token, or not one this assigner knows (`[auth] mode = \"tokens\"`)", body = ErrorBody),
    (status = 403, description = "`forbidden`: the client's role or pools do not allow it", body = ErrorBody),
    (status = 503, description = "`store_unavailable`", body = ErrorBody),
))]
pub(crate) async fn pools(State(app): Shared) -> Response {
    let snapshot = match app.status.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(err) => return ApiError::Store(err).into_response(),
    };
    let mut pools = Vec::new();
    for pool in &app.config.pools {
        let mut status = pool_counts(&snapshot, &pool.name);
        if let Some((waiting, consumers)) = app.link.queue_counts(&pool.name).await {
            status.waiting = Some(waiting);
            status.consumers = Some(consumers);
        }
        pools.push(status);
    }
    Json(json!({"as_of": snapshot.as_of, "pools": pools})).into_response()
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: connected to the broker and not shutting down.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "`broker_unavailable`, `shutting_down`", body = ErrorBody),
))]
pub(crate) async fn readyz(State(app): Shared) -> Response {
    if app.shutdown.is_cancelled() {
        ApiError::ShuttingDown.into_response()
    } else if let Some(node) = app.link.node() {
        Json(json!({"status": "ready", "broker": node})).into_response()
    } else {
        ApiError::BrokerDown.into_response()
    }
}

/// How long a scrape waits for the status read behind `berth_slots`; past it, the last
/// counts are shown.
const SCRAPE_STORE_WAIT: Duration = Duration::from_secs(2);

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text"),
))]
pub(crate) async fn metrics(State(app): Shared) -> Response {
    let snapshot = match tokio::time::timeout(SCRAPE_STORE_WAIT, app.status.snapshot()).await {
        Ok(Ok(snapshot)) => Some(snapshot),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "metrics: could not read the slots from the store");
            None
        }
        Err(_) => None,
    };
    let text = app
        .metrics
        .render(&app.config, app.link.is_up(), snapshot.as_deref());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// This document: the API as OpenAPI 3.1.
#[utoipa::path(get, path = "/openapi.json", responses(
    (status = 200, description = "The OpenAPI document", body = Object),
))]
pub(crate) async fn openapi_json() -> Response {
    Json(super::openapi::document()).into_response()
}
