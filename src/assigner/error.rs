//! The one error type of the HTTP API. Client errors say what was wrong and what to do;
//! internal ones are logged with their cause and answered opaquely.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// Everything an API call can answer besides success.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// A field of the request is missing or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not what the endpoint takes (not JSON, wrong shape, too large).
    #[error("{message}")]
    BadBody { status: StatusCode, message: String },
    #[error("no pool named {0:?}; GET /v1/pools lists the pools")]
    UnknownPool(String),
    #[error("no slot named {0:?}; GET /v1/slots lists the slots")]
    UnknownSlot(String),
    #[error("no such endpoint; the API is under /v1 (see docs/DESIGN.md §4)")]
    NoRoute,
    #[error(
        "no slot of pool {pool:?} came free within {wait_secs} s; retry later or wait longer (\"wait_secs\")"
    )]
    NoSlot { pool: String, wait_secs: u64 },
    #[error(
        "send `Authorization: Bearer <token>` with a token this assigner knows (BERTH_TOKEN or --token-file for the berth commands)"
    )]
    Unauthorized,
    /// The client's role or pools do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// `max_held` or `max_waiting` is reached; the message says which, its limit and count.
    #[error("{message}")]
    QuotaExceeded { message: String, retry_after: u64 },
    #[error("the lease token is not the one of the slot's current holder")]
    WrongToken,
    #[error("slot {0:?} is not held by anyone; acquire a slot first")]
    NotHeld(String),
    /// Held, but by another client than the caller: as far as the caller goes, not held.
    #[error(
        "slot {0:?} is not held by this client (a client renews and releases only the slots it holds)"
    )]
    NotYours(String),
    /// The slot's state does not allow the action asked for.
    #[error("{0}")]
    WrongState(String),
    #[error("the message broker is not reachable right now; retry in a few seconds")]
    BrokerDown,
    #[error(
        "the worker of slot {0:?} did not answer (it is probably not running); retry in a few seconds"
    )]
    WorkerDown(String),
    #[error(
        "the assigner is shutting down; retry (another assigner or this one once restarted will answer)"
    )]
    ShuttingDown,
    #[error("the slot store could not be read; retry in a few seconds")]
    Store(#[source] StoreError),
    /// The history stream cannot be read: missing, unreachable, too slow.
    #[error("{}", .0.message())]
    History(#[source] super::history::HistoryError),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BadBody { status, .. } => *status,
            ApiError::UnknownPool(_) | ApiError::UnknownSlot(_) | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::WrongToken | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotHeld(_) | ApiError::NotYours(_) | ApiError::WrongState(_) => {
                StatusCode::CONFLICT
            }
            ApiError::NoSlot { .. }
            | ApiError::BrokerDown
            | ApiError::WorkerDown(_)
            | ApiError::ShuttingDown
            | ApiError::Store(_)
            | ApiError::History(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error` code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BadBody { .. } => "bad_body",
            ApiError::UnknownPool(_) => "unknown_pool",
            ApiError::UnknownSlot(_) => "unknown_slot",
            ApiError::NoRoute => "not_found",
            ApiError::NoSlot { .. } => "no_slot",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::WrongToken => "wrong_token",
            ApiError::NotHeld(_) | ApiError::NotYours(_) => "not_held",
            ApiError::WrongState(_) => "wrong_state",
            ApiError::BrokerDown => "broker_unavailable",
            ApiError::WorkerDown(_) => "worker_unavailable",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Store(_) => "store_unavailable",
            ApiError::History(super::history::HistoryError::NoBroker) => "broker_unavailable",
            ApiError::History(_) => "history_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Seconds a client should wait before trying again, for the answers worth retrying.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::NoSlot { .. } => Some(5),
            ApiError::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            ApiError::BrokerDown
            | ApiError::WorkerDown(_)
            | ApiError::ShuttingDown
            | ApiError::History(_) => Some(2),
            // Short, so that a holder told to retry a release still has its lease to do it in.
            ApiError::Store(_) => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Store(err) => tracing::error!(error = %err, "store call failed"),
            ApiError::History(err) => tracing::warn!(error = %err, "history read failed"),
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error")
            }
            _ => {}
        }
        let body = json!({"error": self.code(), "message": self.to_string()});
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"berth\""),
            );
        }
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
