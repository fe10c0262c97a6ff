//! The HTTP handlers of DESIGN §4.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::api::{
    AcquireRequest, Acquired, BODY_LIMIT, Body, ReleaseRequest, RenewRequest, Renewed, check_token,
};
use super::error::ApiError;
use super::status::pool_counts;
use crate::broker::json_properties;
use crate::lease::token_matches;
use crate::protocol::{
    AssignReply, AssignRequest, Control, PROTOCOL_VERSION, RenewOutcome, RenewReply, encode,
};
use crate::record::SlotState;
use crate::store::slot::read_slot;

/// The shortest time an acquire's request stays in the queue, so that `wait_secs: 0` still
/// gets a slot that is free right now.
const MIN_WINDOW: Duration = Duration::from_millis(500);
/// How long past its window an acquire waits for a reply from a worker that took the request
/// in time but is still claiming.
const REPLY_GRACE: Duration = Duration::from_millis(500);
/// How long a renew waits for the slot's worker.
const RENEW_WAIT: Duration = Duration::from_secs(5);

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

/// Answers `result`, counting it under `endpoint`.
fn answer(
    app: &AppState,
    endpoint: &'static str,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    app.metrics
        .record(endpoint, response.status().as_u16(), started.elapsed());
    response
}

async fn acquire(
    State(app): Shared,
    Path(pool): Path<String>,
    body: Result<Body<AcquireRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = acquire_slot(&app, pool, body)
        .await
        .map(|a| Json(a).into_response());
    answer(&app, "acquire", started, result)
}

#[tracing::instrument(skip_all, fields(pool = %pool, request_id))]
async fn acquire_slot(
    app: &AppState,
    pool: String,
    body: Result<Body<AcquireRequest>, ApiError>,
) -> Result<Acquired, ApiError> {
    if app.config.pool(&pool).is_none() {
        return Err(ApiError::UnknownPool(pool));
    }
    let request = body?.0.check(&app.config)?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let session = app.link.session().ok_or(ApiError::BrokerDown)?;
    let request_id = Uuid::new_v4();
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    let window = Duration::from_secs(request.wait_secs).max(MIN_WINDOW);
    let give_up = tokio::time::Instant::now() + window + REPLY_GRACE;
    // Registered before publishing: the reply may come back before the confirm does.
    let mut ticket = app
        .pending
        .register::<AssignReply>(request_id, session.epoch);
    if !session.is_alive() {
        return Err(ApiError::BrokerDown);
    }
    let message = AssignRequest {
        v: PROTOCOL_VERSION,
        request_id,
        pool: pool.clone(),
        owner: request.owner.clone(),
        lease_secs: request.lease_secs,
        deadline: chrono::Utc::now() + window,
    };
    // Not persistent: a request lives only as long as its assigner's connection, which is
    // also where its reply would come; after a broker restart the client hears `503` and
    // asks again, and a request kept on disk would only claim a slot for nobody.
    let properties = json_properties()
        .with_reply_to(session.reply_queue.as_str().into())
        .with_correlation_id(request_id.to_string().into())
        .with_expiration(window.as_millis().to_string().into());
    let confirm = session
        .send(
            &app.names.assign_queue(&pool),
            &encode(&message),
            properties,
        )
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "could not publish the assign request");
            ApiError::BrokerDown
        })?;
    // The confirm and the reply are awaited together: a reply proves the broker had the
    // request, so the client need not wait for the confirm as well.
    let mut confirm = Box::pin(confirm);
    let mut confirmed = false;
    let outcome = loop {
        tokio::select! {
            reply = ticket.reply() => break reply.map_err(|_| ApiError::BrokerDown),
            result = &mut confirm, if !confirmed => match result {
                Ok(()) => confirmed = true,
                Err(err) => {
                    tracing::warn!(error = %err, "the broker did not take the assign request");
                    break Err(ApiError::BrokerDown);
                }
            },
            _ = tokio::time::sleep_until(give_up) => {
                break Err(ApiError::NoSlot { pool: pool.clone(), wait_secs: request.wait_secs });
            }
            _ = app.shutdown.cancelled() => break Err(ApiError::ShuttingDown),
        }
    };
    if !confirmed {
        tokio::spawn(async move {
            let _ = confirm.await;
        });
    }
    let reply = outcome?;
    tracing::info!(slot = %reply.slot, owner = %request.owner, "slot assigned");
    Ok(Acquired {
        slot: reply.slot,
        pool,
        lease_token: reply.lease_token,
        lease_expires: reply.lease_expires,
        resource: reply.resource,
    })
}

async fn renew(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<RenewRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = renew_lease(&app, slot, body)
        .await
        .map(|r| Json(r).into_response());
    answer(&app, "renew", started, result)
}

#[tracing::instrument(skip_all, fields(slot = %slot))]
async fn renew_lease(
    app: &AppState,
    slot: String,
    body: Result<Body<RenewRequest>, ApiError>,
) -> Result<Renewed, ApiError> {
    if app.config.pool_of(&slot).is_none() {
        return Err(ApiError::UnknownSlot(slot));
    }
    let (lease_token, lease_secs) = body?.0.check(&app.config)?;
    let session = app.link.session().ok_or(ApiError::BrokerDown)?;
    let request_id = Uuid::new_v4();
    let mut ticket = app
        .pending
        .register::<RenewReply>(request_id, session.epoch);
    if !session.is_alive() {
        return Err(ApiError::BrokerDown);
    }
    let broker_down = |err: super::link::LinkError| {
        tracing::warn!(error = %err, "could not publish the renew request");
        ApiError::BrokerDown
    };
    session.declare_slot(&slot).await.map_err(broker_down)?;
    let message = Control::Renew {
        v: PROTOCOL_VERSION,
        request_id,
        lease_token,
        lease_secs,
    };
    let properties = json_properties()
        .with_reply_to(session.reply_queue.as_str().into())
        .with_correlation_id(request_id.to_string().into())
        .with_expiration(RENEW_WAIT.as_millis().to_string().into());
    session
        .publish(&app.names.slot_queue(&slot), &encode(&message), properties)
        .await
        .map_err(broker_down)?;
    let reply = tokio::select! {
        reply = ticket.reply() => reply.map_err(|_| ApiError::BrokerDown)?,
        _ = tokio::time::sleep(RENEW_WAIT) => return Err(ApiError::WorkerDown(slot)),
        _ = app.shutdown.cancelled() => return Err(ApiError::ShuttingDown),
    };
    match (reply.outcome, reply.lease_expires) {
        (RenewOutcome::Renewed, Some(lease_expires)) => Ok(Renewed { lease_expires }),
        (RenewOutcome::Renewed, None) => Err(ApiError::Internal(anyhow::anyhow!(
            "worker renewed without a lease_expires"
        ))),
        (RenewOutcome::WrongToken, _) => Err(ApiError::WrongToken),
        (RenewOutcome::NotHeld, _) => Err(ApiError::NotHeld(slot)),
    }
}

async fn release(
    State(app): Shared,
    Path(slot): Path<String>,
    body: Result<Body<ReleaseRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = release_slot(&app, &slot, body)
        .await
        .map(|()| (StatusCode::ACCEPTED, Json(json!({"slot": slot}))).into_response());
    answer(&app, "release", started, result)
}

/// Checks the token against the store, then hands the release to the broker: once confirmed
/// it is never lost, even while the slot's worker is down.
#[tracing::instrument(skip_all, fields(slot = %slot))]
async fn release_slot(
    app: &AppState,
    slot: &str,
    body: Result<Body<ReleaseRequest>, ApiError>,
) -> Result<(), ApiError> {
    if app.config.pool_of(slot).is_none() {
        return Err(ApiError::UnknownSlot(slot.to_owned()));
    }
    let token = body?.0.lease_token;
    check_token(&token)?;
    let view = read_slot(app.store.as_ref(), slot)
        .await
        .map_err(ApiError::Store)?;
    if view.record.state != SlotState::Used {
        return Err(ApiError::NotHeld(slot.to_owned()));
    }
    match view.record.lease_sha256.as_deref() {
        Some(hash) if token_matches(&token, hash) => {}
        _ => return Err(ApiError::WrongToken),
    }
    let session = app.link.session().ok_or(ApiError::BrokerDown)?;
    session.publish_release(slot, &token).await.map_err(|err| {
        tracing::warn!(error = %err, "could not publish the release");
        ApiError::BrokerDown
    })?;
    tracing::info!("release handed to the slot's worker");
    Ok(())
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
    let session = app.link.session();
    let mut pools = Vec::new();
    for pool in &app.config.pools {
        let mut status = pool_counts(&snapshot, &pool.name);
        if let Some(session) = &session {
            match session
                .queue_counts(&app.names.assign_queue(&pool.name))
                .await
            {
                Ok((waiting, consumers)) => {
                    status.waiting = Some(waiting);
                    status.consumers = Some(consumers);
                }
                Err(err) => {
                    tracing::warn!(pool = %pool.name, error = %err, "could not inspect the pool queue")
                }
            }
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
    } else if app.link.session().is_some() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::BrokerDown.into_response()
    }
}

async fn metrics(State(app): Shared) -> Response {
    let text = app
        .metrics
        .render(app.pending.waiting_acquires(), app.link.session().is_some());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
