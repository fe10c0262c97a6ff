//! Request and response bodies of the HTTP API (DESIGN §4), and their checks.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::config::Config;
use crate::protocol::MAX_PRIORITY;

/// The largest request body accepted.
pub(crate) const BODY_LIMIT: usize = 16 * 1024;

/// A JSON body whose rejection is one of our JSON errors, saying what was wrong.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(body_error(rejection)),
        }
    }
}

fn body_error(rejection: JsonRejection) -> ApiError {
    let message = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with the header `content-type: application/json`".to_owned()
        }
        JsonRejection::JsonSyntaxError(e) => {
            format!("the body is not valid JSON: {}", e.body_text())
        }
        JsonRejection::JsonDataError(e) => {
            format!("the body has the wrong shape: {}", e.body_text())
        }
        JsonRejection::BytesRejection(_) => {
            format!("could not read the body (at most {BODY_LIMIT} bytes are accepted)")
        }
        other => other.body_text(),
    };
    let status = match &rejection {
        JsonRejection::MissingJsonContentType(_)
        | JsonRejection::JsonSyntaxError(_)
        | JsonRejection::JsonDataError(_) => axum::http::StatusCode::BAD_REQUEST,
        other => other.status(),
    };
    ApiError::BadBody { status, message }
}

/// `POST /v1/pools/{pool}/acquire`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireRequest {
    /// Who holds the slot (e.g. a CI job URL): 1 to 200 printable characters.
    pub(crate) owner: String,
    /// Seconds the slot is held without renewing (`min_lease_secs` … `max_lease_secs`;
    /// default `default_lease_secs`).
    pub(crate) lease_secs: Option<u64>,
    /// Seconds to wait for a free slot (0 … `max_wait_secs`; default `default_wait_secs`).
    pub(crate) wait_secs: Option<u64>,
    /// 0 … 9, default 0: among the requests waiting for a slot of the pool, a higher one is
    /// served first; requests of one priority in the order they came.
    #[schema(minimum = 0, maximum = 9)]
    pub(crate) priority: Option<i64>,
}

/// An acquire request after its checks, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acquire {
    pub(crate) owner: String,
    pub(crate) lease_secs: u64,
    pub(crate) wait_secs: u64,
    /// The priority asked for; [`crate::access::effective_priority`] caps it by the client's `max_priority`.
    pub(crate) priority: u8,
}

impl AcquireRequest {
    pub(crate) fn check(self, config: &Config) -> Result<Acquire, ApiError> {
        check_owner(&self.owner)?;
        let lease_secs = check_lease(self.lease_secs, config)?;
        let wait_secs = self.wait_secs.unwrap_or(config.default_wait_secs);
        if wait_secs > config.max_wait_secs {
            return Err(ApiError::BadRequest(format!(
                "\"wait_secs\" must be between 0 and {} (seconds to wait for a free slot)",
                config.max_wait_secs
            )));
        }
        Ok(Acquire {
            owner: self.owner,
            lease_secs,
            wait_secs,
            priority: check_priority(self.priority)?,
        })
    }
}

fn check_priority(priority: Option<i64>) -> Result<u8, ApiError> {
    match priority.unwrap_or(0) {
        p @ 0..=9 => Ok(p as u8),
        _ => Err(ApiError::BadRequest(format!(
            "\"priority\" must be between 0 and {MAX_PRIORITY} (higher is served first; default 0)"
        ))),
    }
}

fn check_owner(owner: &str) -> Result<(), ApiError> {
    let chars = owner.chars().count();
    if chars == 0 || chars > 200 || owner.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "\"owner\" must be 1 to 200 printable characters naming who holds the slot (e.g. a CI job URL)"
                .into(),
        ));
    }
    Ok(())
}

fn check_lease(lease_secs: Option<u64>, config: &Config) -> Result<u64, ApiError> {
    let lease_secs = lease_secs.unwrap_or(config.default_lease_secs);
    if lease_secs < config.min_lease_secs || lease_secs > config.max_lease_secs {
        return Err(ApiError::BadRequest(format!(
            "\"lease_secs\" must be between {} and {} (seconds the slot is held without renewing; the shortest is min_lease_secs)",
            config.min_lease_secs, config.max_lease_secs
        )));
    }
    Ok(lease_secs)
}

/// The answer to a successful acquire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Acquired {
    pub(crate) slot: String,
    pub(crate) pool: String,
    pub(crate) lease_token: String,
    pub(crate) lease_expires: DateTime<Utc>,
    /// The lease's length, which renewing for as long again keeps.
    pub(crate) lease_secs: u64,
    /// What the slot is (for a PPA: its `reference`, `ppa:OWNER/NAME`, and links).
    #[schema(value_type = Object)]
    pub(crate) resource: serde_json::Value,
}

/// `POST /v1/slots/{slot}/renew`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewRequest {
    pub(crate) lease_token: String,
    pub(crate) lease_secs: Option<u64>,
}

impl RenewRequest {
    /// The token and the lease length to ask for.
    pub(crate) fn check(self, config: &Config) -> Result<(String, u64), ApiError> {
        check_token(&self.lease_token)?;
        Ok((self.lease_token, check_lease(self.lease_secs, config)?))
    }
}

/// `POST /v1/slots/{slot}/release`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseRequest {
    pub(crate) lease_token: String,
}

pub(crate) fn check_token(token: &str) -> Result<(), ApiError> {
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::BadRequest(
            "\"lease_token\" must be the token that acquire answered".into(),
        ));
    }
    Ok(())
}

/// The longest `reason` an operator action takes.
pub(crate) const MAX_REASON_CHARS: usize = 500;

/// `POST /v1/slots/{slot}/disable`, `…/enable`, `…/reclaim`, `…/clean`: an operator action.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionRequest {
    /// Why (1 to 500 characters); required by `disable` and `reclaim`.
    pub(crate) reason: Option<String>,
    /// Who asks (an operator's name; at most 200 characters), kept in the record and events.
    pub(crate) by: Option<String>,
    /// `disable` only: revoke a holder's lease at once instead of waiting for it (drain).
    pub(crate) now: Option<bool>,
}

/// An action request after its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Action {
    pub(crate) reason: Option<String>,
    pub(crate) by: Option<String>,
    pub(crate) now: bool,
}

impl ActionRequest {
    /// Checks the fields; `reason_required` for disable and reclaim.
    pub(crate) fn check(self, reason_required: bool) -> Result<Action, ApiError> {
        match &self.reason {
            None if reason_required => {
                return Err(ApiError::BadRequest(
                    "\"reason\" is required: say why, for whoever looks at the slot next".into(),
                ));
            }
            Some(reason)
                if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_CHARS =>
            {
                return Err(ApiError::BadRequest(format!(
                    "\"reason\" must be 1 to {MAX_REASON_CHARS} characters"
                )));
            }
            _ => {}
        }
        if let Some(by) = &self.by {
            let chars = by.chars().count();
            if chars == 0 || chars > 200 || by.chars().any(char::is_control) {
                return Err(ApiError::BadRequest(
                    "\"by\" must be 1 to 200 printable characters naming who asks".into(),
                ));
            }
        }
        Ok(Action {
            reason: self.reason,
            by: self.by,
            now: self.now.unwrap_or(false),
        })
    }
}

/// The answer to an accepted operator action: handed to the slot's worker.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    pub(crate) slot: String,
    /// `disable`, `enable`, `reclaim` or `clean`.
    pub(crate) action: String,
}

/// The answer to a successful renew.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Renewed {
    pub(crate) lease_expires: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(owner: &str, lease: Option<u64>, wait: Option<u64>) -> AcquireRequest {
        AcquireRequest {
            owner: owner.into(),
            lease_secs: lease,
            wait_secs: wait,
            priority: None,
        }
    }

    #[test]
    fn defaults_fill_in_and_limits_name_the_field() {
        let config = Config::dev(1);
        let a = req("me", None, None).check(&config).unwrap();
        assert_eq!(
            (a.lease_secs, a.wait_secs),
            (config.default_lease_secs, config.default_wait_secs)
        );
        let msg = |r: AcquireRequest| r.check(&config).unwrap_err().to_string();
        assert!(msg(req("", None, None)).contains("\"owner\""));
        assert!(msg(req(&"x".repeat(201), None, None)).contains("\"owner\""));
        assert!(msg(req("a\nb", None, None)).contains("\"owner\""));
        assert!(msg(req("me", Some(0), None)).contains("\"lease_secs\""));
        assert!(msg(req("me", Some(config.max_lease_secs + 1), None)).contains("\"lease_secs\""));
        assert!(msg(req("me", None, Some(config.max_wait_secs + 1))).contains("\"wait_secs\""));
        assert!(req("me", None, Some(0)).check(&config).is_ok());
        let with_priority = |p| AcquireRequest {
            priority: p,
            ..req("me", None, None)
        };
        assert_eq!(with_priority(None).check(&config).unwrap().priority, 0);
        assert_eq!(with_priority(Some(9)).check(&config).unwrap().priority, 9);
        assert!(msg(with_priority(Some(10))).contains("\"priority\""));
        assert!(msg(with_priority(Some(-1))).contains("\"priority\""));
    }

    #[test]
    fn an_action_reason_is_required_where_it_must_be_and_at_most_500_characters() {
        let with = |reason: Option<String>| ActionRequest {
            reason,
            ..ActionRequest::default()
        };
        assert!(with(None).check(true).is_err());
        assert!(with(None).check(false).is_ok());
        assert!(with(Some("x".repeat(500))).check(true).is_ok());
        let msg = with(Some("x".repeat(501)))
            .check(true)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"reason\""), "{msg}");
        assert!(with(Some(" ".into())).check(true).is_err());
    }
}
