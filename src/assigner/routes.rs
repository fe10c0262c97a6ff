//! The HTTP handlers of DESIGN §4: each checks its input, calls the link and maps the
//! error; the exchange with the workers is the link's.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::api::{
    AcquireRequest, Acquired, BODY_LIMIT, Body, ReleaseRequest, RenewRequest, Renewed, check_token,
};
use super::error::ApiError;
use super::link::ExchangeError;
use super::metrics::{CONTENT_TYPE, record_answers};
use super::status::pool_counts;
use crate::lease::token_matches;
use crate::protocol::RenewOutcome;
use crate::record::SlotState;
use crate::store::slot::read_slot;

type Shared = State<Arc<AppState>>;

pub(crate) fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/pools/{pool}/acquire", post(acquire))
        .route("/v1/slots/{slot}/renew", post(renew))
        .route("/v1/slots/{slot}/release", post(release))
        .route("/v1/slots", get(slots))
        .route("/v1/pools", get(pools))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

#[tracing::instrument(skip_all, fields(pool = %pool, request_id))]
async fn acquire(
    State(app): Shared,
    Path(pool): Path<String>,
    body: Result<Body<AcquireRequest>, ApiError>,
) -> Result<Json<Acquired>, ApiError> {
    if app.config.pool(&pool).is_none() {
        return Err(ApiError::UnknownPool(pool));
    }
    let mut timer = app.metrics.acquire_started(&pool);
    let answer = assign(&app, pool, body).await;
    timer.outcome(match &answer {
        Ok(_) => "assigned",
        Err(err) => err.code(),
    });
    answer
}

/// Acquire, once its pool is known to exist.
async fn assign(
    app: &AppState,
    pool: String,
    body: Result<Body<AcquireRequest>, ApiError>,
) -> Result<Json<Acquired>, ApiError> {
    let request = body?.0.check(&app.config)?;
    let request_id = Uuid::new_v4();
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    let wait = Duration::from_secs(request.wait_secs);
    let reply = app
        .link
        .assign(request_id, &pool, &request.owner, request.lease_secs, wait)
        .await
        .map_err(|err| match err {
            ExchangeError::BrokerDown => ApiError::BrokerDown,
            ExchangeError::NoAnswer => ApiError::NoSlot {
                pool: pool.clone(),
                wait_secs: request.wait_secs,
            },
            ExchangeError::Stopping => ApiError::ShuttingDown,
        })?;
    tracing::info!(slot = %reply.slot, owner = %request.owner, "slot assigned");
    Ok(Json(Acquired {
        slot: reply.slot,
        pool,
        lease_token: reply.lease_token,
        lease_expires: reply.lease_expires,
        lease_secs: request.lease_secs,
        resource: reply.resource,
    }))
}

#[tracing::instrument(skip_all, fields(slot = %slot))]
async fn renew(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<RenewRequest>, ApiError>,
) -> Result<Json<Renewed>, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let (lease_token, lease_secs) = body?.0.check(&app.config)?;
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
#[tracing::instrument(skip_all, fields(slot = %slot))]
async fn release(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<ReleaseRequest>, ApiError>,
) -> Result<Response, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let token = body?.0.lease_token;
    check_token(&token)?;
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
    tracing::info!("release handed to the slot's worker");
    Ok((StatusCode::ACCEPTED, Json(json!({"slot": slot}))).into_response())
}

async fn slots(State(app): Shared) -> Response {
    match app.status.snapshot().await {
        Ok(snapshot) => Json(snapshot.as_ref()).into_response(),
        Err(err) => ApiError::Store(err).into_response(),
    }
}

async fn pools(State(app): Shared) -> Response {
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

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): Shared) -> Response {
    if app.shutdown.is_cancelled() {
        ApiError::ShuttingDown.into_response()
    } else if app.link.is_up() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::BrokerDown.into_response()
    }
}

/// How long a scrape waits for the status read behind `berth_slots`; past it, the last
/// counts are shown.
const SCRAPE_STORE_WAIT: Duration = Duration::from_secs(2);

async fn metrics(State(app): Shared) -> Response {
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
