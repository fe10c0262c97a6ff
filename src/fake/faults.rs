//! Fault injection for the Launchpad endpoints (never for `/_fake/`): added latency, `503`
//! answers, dropped connections and `412` conflicts on writes, so tests can prove berth
//! survives a flaky store.

use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::conn::Severance;
use super::state::{Shared, lock};

/// The faults in force; all zero (the default) means a well-behaved server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every Launchpad request is handled.
    pub latency_ms: u64,
    /// Share of requests (0..=1) answered `503 Service Unavailable`.
    pub error_rate: f64,
    /// Share of requests (0..=1) whose connection is closed without any answer.
    pub drop_rate: f64,
    /// Share of archive `PATCH`es (0..=1) answered `412` even with the current ETag.
    pub conflict_rate: f64,
    /// The next N archive `PATCH`es are answered `412`; counts down as they are used.
    pub forced_conflicts: u32,
}

impl Faults {
    /// Checks that every rate is a probability; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("conflict_rate", self.conflict_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

/// True with probability `rate`; rates were validated when set.
pub(crate) fn draw(rate: f64) -> bool {
    rate > 0.0 && rand::random_bool(rate.min(1.0))
}

/// Middleware in front of the Launchpad routes: sleeps, then maybe drops the connection,
/// then maybe answers `503`, else lets the request through.
pub(crate) async fn inject(
    State(shared): State<Shared>,
    ConnectInfo(connection): ConnectInfo<Severance>,
    request: Request,
    next: Next,
) -> Response {
    let faults = lock(&shared).faults.clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if draw(faults.drop_rate) {
        tracing::debug!(uri = %request.uri(), "fault: dropping the connection");
        connection.sever();
        // Never reaches the client: the severed connection fails hyper's first write.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if draw(faults.error_rate) {
        tracing::debug!(uri = %request.uri(), "fault: answering 503");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable (injected fault)\n",
        )
            .into_response();
    }
    next.run(request).await
}
