//! Who is asking (DESIGN §4 "Clients and roles"): every route says what access it needs
//! ([`access`]); a middleware on each route reads `Authorization: Bearer <token>`, finds
//! the client whose `token_sha256` it hashes to (comparing every hash, in constant time),
//! checks its role and the pool the path names, and hands the handler a [`Caller`].
//! A missing, malformed or unknown token gets one and the same `401`.

use std::sync::Arc;

use axum::RequestExt;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::access::{AuthMode, ClientConfig, Role};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone (`/healthz`, `/readyz`, `/openapi.json`).
    Open,
    /// Anyone, unless `metrics_token_sha256` is set: then that token.
    Metrics,
    /// Any client (anyone with `public_read`).
    Read,
    /// Roles `client` and `operator`: acquire, renew, release.
    Use,
    /// Role `operator`: the slot actions.
    Operate,
}

/// The access each route of [`super::routes::routes`] needs; `None` for a route this table
/// does not know, which the router refuses to build (a test checks every route has one).
pub(crate) fn access(method: &Method, path: &str) -> Option<Access> {
    let access = match (method.as_str(), path) {
        // The web page and its assets: a browser's navigation carries no token; the page's
        // rows follow `AuthConfig::reads_are_public`, its script sends the token it is given.
        ("GET", "/healthz" | "/readyz" | "/openapi.json" | "/" | "/page.js" | "/page.css") => {
            Access::Open
        }
        ("GET", "/metrics") => Access::Metrics,
        (
            "GET",
            "/v1/slots"
            | "/v1/pools"
            | "/v1/history"
            | "/v1/slots/{slot}"
            | "/v1/slots/{slot}/history"
            | "/v1/events/stream",
        ) => Access::Read,
        (
            "POST",
            "/v1/pools/{pool}/acquire" | "/v1/slots/{slot}/renew" | "/v1/slots/{slot}/release",
        ) => Access::Use,
        (
            "POST",
            "/v1/slots/{slot}/disable"
            | "/v1/slots/{slot}/enable"
            | "/v1/slots/{slot}/reclaim"
            | "/v1/slots/{slot}/clean",
        ) => Access::Operate,
        _ => return None,
    };
    Some(access)
}

/// Who asks: a configured client, or nobody in particular (mode `none`, open routes, and
/// reads with `public_read` and no token).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) client: Option<Arc<ClientConfig>>,
}

impl Caller {
    /// The client's name.
    pub(crate) fn name(&self) -> Option<&str> {
        self.client.as_deref().map(|c| c.name.as_str())
    }

    /// `403` unless it may use `pool`.
    pub(crate) fn check_pool(&self, pool: &str) -> Result<(), ApiError> {
        match &self.client {
            Some(client) if !client.may_use_pool(pool) => Err(ApiError::Forbidden(format!(
                "client {:?} may not use pool {pool:?} (its `pools` in [[auth.clients]])",
                client.name
            ))),
            _ => Ok(()),
        }
    }

    /// The lease length to give: `asked` checked against the client's `max_lease_secs`;
    /// when the client named none (`defaulted`), the default cut to that maximum.
    pub(crate) fn lease_secs(&self, lease_secs: u64, defaulted: bool) -> Result<u64, ApiError> {
        let Some(max) = self.client.as_deref().and_then(|c| c.max_lease_secs) else {
            return Ok(lease_secs);
        };
        if defaulted {
            return Ok(lease_secs.min(max));
        }
        if lease_secs > max {
            return Err(ApiError::BadRequest(format!(
                "\"lease_secs\" must be at most {max} for client {:?} (its max_lease_secs)",
                self.name().unwrap_or_default()
            )));
        }
        Ok(lease_secs)
    }
}

/// The clients by the SHA-256 of their tokens.
pub(crate) struct Keys {
    clients: Vec<([u8; 32], Arc<ClientConfig>)>,
    metrics: Option<[u8; 32]>,
}

impl Keys {
    pub(crate) fn new(auth: &crate::access::AuthConfig) -> Keys {
        // `Config::validate` has checked that each is 64 hex digits.
        let digest = |hex_text: &str| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(hex_text, &mut out).unwrap_or_default();
            out
        };
        Keys {
            clients: auth
                .clients
                .iter()
                .map(|c| (digest(&c.token_sha256), Arc::new(c.clone())))
                .collect(),
            metrics: auth.metrics_token_sha256.as_deref().map(digest),
        }
    }

    /// The client whose token is `token`. Every hash is compared, each in constant time, so
    /// the time taken says nothing of which (or whether one) matched.
    fn client(&self, token: &str) -> Option<Arc<ClientConfig>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, client) in &self.clients {
            if same(&presented, hash) {
                found = Some(Arc::clone(client));
            }
        }
        found
    }

    fn metrics(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.metrics.is_some_and(|hash| same(&presented, &hash))
    }
}

/// Equality without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>`; `None` when missing or malformed.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The middleware of a route needing `access`: answers `401`/`403`, or runs the handler
/// with the [`Caller`] in the request's extensions.
pub(crate) async fn authorize(
    State((app, access)): State<(Arc<AppState>, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    match check(&app, access, &mut request).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

async fn check(app: &AppState, access: Access, request: &mut Request) -> Result<Caller, ApiError> {
    let auth = &app.config.auth;
    if access == Access::Open {
        return Ok(Caller::default());
    }
    // Hashed and compared whether or not a well-formed token came, so that a missing or
    // malformed one takes as long as an unknown one.
    let token = bearer(request);
    let presented = token.unwrap_or("");
    if access == Access::Metrics {
        let matches = app.keys.metrics(presented);
        return match &auth.metrics_token_sha256 {
            None => Ok(Caller::default()),
            Some(_) if token.is_some() && matches => Ok(Caller::default()),
            Some(_) => Err(ApiError::Unauthorized),
        };
    }
    if auth.mode == AuthMode::None {
        return Ok(Caller::default());
    }
    let client = app.keys.client(presented).filter(|_| token.is_some());
    let client = match client {
        Some(client) => client,
        None if access == Access::Read && auth.public_read && token.is_none() => {
            return Ok(Caller::default());
        }
        None => return Err(ApiError::Unauthorized),
    };
    let allowed = match access {
        Access::Open | Access::Metrics | Access::Read => true,
        Access::Use => matches!(client.role, Role::Client | Role::Operator),
        Access::Operate => client.role == Role::Operator,
    };
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "client {:?} has role {:?}, which may not do this (readers read; clients also acquire, renew and release; operators also act on slots)",
            client.name,
            client.role.as_str()
        )));
    }
    let caller = Caller {
        client: Some(client),
    };
    // The pool the path names, or the pool of the slot it names (an unknown one is the
    // handler's `404`).
    if let Ok(params) = request.extract_parts::<RawPathParams>().await {
        for (key, value) in &params {
            let pool: Option<String> = match key {
                "pool" => Some(value.to_owned()),
                "slot" => app.config.pool_of(value).map(|p| p.name.clone()),
                _ => None,
            };
            if let Some(pool) = pool {
                caller.check_pool(&pool)?;
            }
        }
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_says_what_access_it_needs() {
        for (method, path, _) in super::super::routes::routes() {
            assert!(
                access(&method, path).is_some(),
                "{method} {path} has no entry in auth::access"
            );
        }
    }

    #[test]
    fn a_clients_max_lease_cuts_the_default_and_refuses_longer_asks() {
        let client = |max_lease_secs| Caller {
            client: Some(Arc::new(ClientConfig {
                pools: Some(vec!["ppa".into()]),
                max_lease_secs,
                ..ClientConfig::new("ci", "t", Role::Client)
            })),
        };
        let limited = client(Some(600));
        assert_eq!(limited.lease_secs(3600, true).unwrap(), 600);
        assert_eq!(limited.lease_secs(300, false).unwrap(), 300);
        let err = limited.lease_secs(601, false).unwrap_err().to_string();
        assert!(err.contains("at most 600"), "{err}");
        assert_eq!(client(None).lease_secs(7200, false).unwrap(), 7200);
        assert_eq!(Caller::default().lease_secs(7200, false).unwrap(), 7200);
        assert!(limited.check_pool("ppa").is_ok());
        assert!(matches!(
            limited.check_pool("other"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(Caller::default().check_pool("other").is_ok());
    }

    #[test]
    fn keys_find_the_client_of_a_token_only() {
        let auth = crate::access::AuthConfig {
            mode: AuthMode::Tokens,
            metrics_token_sha256: Some(crate::access::api_token_hash("m")),
            clients: vec![ClientConfig::new("ci", "secret", Role::Client)],
            ..Default::default()
        };
        let keys = Keys::new(&auth);
        assert_eq!(keys.client("secret").unwrap().name, "ci");
        assert!(keys.client("secreT").is_none());
        assert!(keys.client("").is_none());
        assert!(keys.metrics("m") && !keys.metrics("secret"));
    }
}
