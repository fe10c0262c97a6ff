//! Request and response bodies of the HTTP API (DESIGN §4), and their checks.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::config::Config;

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
}

/// An acquire request after its checks, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acquire {
    pub(crate) owner: String,
    pub(crate) lease_secs: u64,
    pub(crate) wait_secs: u64,
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
        })
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
    }
}
