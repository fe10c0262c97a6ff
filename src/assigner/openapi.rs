//! `GET /openapi.json`: the HTTP API (DESIGN §4) as an OpenAPI 3.1 document, generated from
//! the handlers' annotations and the bodies' types. A test compares its paths with the
//! router's table ([`super::routes::routes`]), so a route cannot be added undocumented.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::api::{
    Accepted, AcquireRequest, Acquired, ActionRequest, ReleaseRequest, RenewRequest, Renewed,
};
use super::status::{PoolStatus, SlotDetail, SlotStatus, Snapshot};
use crate::record::Drain;

/// Every error answer: `{"error":"<code>","message":"<text for a person>"}`; `503`s carry
/// `Retry-After`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// `bad_request`, `bad_body`, `unknown_pool`, `unknown_slot`, `not_found`, `no_slot`,
    /// `wrong_token`, `not_held`, `wrong_state`, `broker_unavailable`, `worker_unavailable`,
    /// `shutting_down`, `store_unavailable`, `history_unavailable`, `internal`.
    pub(crate) error: String,
    pub(crate) message: String,
}

/// The answer to a release: the slot, now on its way to be cleaned.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Released {
    pub(crate) slot: String,
}

/// `GET /v1/pools`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Pools {
    pub(crate) as_of: chrono::DateTime<chrono::Utc>,
    pub(crate) pools: Vec<PoolStatus>,
}

/// One event of the history (DESIGN §6), as the workers published it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryEvent {
    pub(crate) v: u32,
    /// `assigned`, `renewed`, `released`, `expired`, `cleaned`, `clean_failed`, `disabled`,
    /// `enabled`, `reclaimed`, `clean_requested`.
    pub(crate) event: String,
    pub(crate) pool: String,
    pub(crate) slot: String,
    /// The holder; `null` for `cleaned`, `clean_failed`, `disabled`, `enabled`,
    /// `clean_requested`.
    pub(crate) owner: Option<String>,
    pub(crate) at: chrono::DateTime<chrono::Utc>,
    /// Who asked, for an operator action (left out otherwise).
    pub(crate) by: Option<String>,
    /// Why, for an operator action (left out otherwise).
    pub(crate) reason: Option<String>,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` (alive) or `ready` (connected to the broker).
    pub(crate) status: String,
    /// With `ready`: the broker node in use, without its password (a cluster's nodes are
    /// tried in order; this says which one answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth",
        description = "Hands out build slots (Launchpad PPAs) to CI jobs. See docs/DESIGN.md §4."
    ),
    paths(
        super::routes::acquire,
        super::routes::renew,
        super::routes::release,
        super::routes::disable,
        super::routes::enable,
        super::routes::reclaim,
        super::routes::clean,
        super::routes::slot_detail,
        super::routes::slot_history,
        super::routes::history,
        super::routes::slots,
        super::routes::pools,
        super::events_stream::events_stream,
        super::page::page,
        super::page::script,
        super::page::style,
        super::routes::healthz,
        super::routes::readyz,
        super::routes::metrics,
        super::routes::openapi_json,
    ),
    components(schemas(
        AcquireRequest,
        Acquired,
        RenewRequest,
        Renewed,
        ReleaseRequest,
        Released,
        ActionRequest,
        Accepted,
        SlotDetail,
        Drain,
        HistoryEvent,
        ErrorBody,
        Snapshot,
        SlotStatus,
        Pools,
        PoolStatus,
        Health
    ))
)]
pub(crate) struct ApiDoc;

/// The document, as served.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            for (method, present) in methods {
                if present {
                    documented.insert((method.to_owned(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<_> = super::super::routes::routes()
            .into_iter()
            .map(|(method, path, _)| (method.as_str().to_owned(), path.to_owned()))
            .collect();
        assert_eq!(routed, documented, "routes and the OpenAPI document differ");
    }

    #[test]
    fn errors_are_documented_with_their_codes() {
        let json = serde_json::to_value(document()).unwrap();
        assert!(
            json["openapi"].as_str().unwrap().starts_with("3.1"),
            "{json}"
        );
        let acquire = &json["paths"]["/v1/pools/{pool}/acquire"]["post"]["responses"];
        for code in ["200", "400", "404", "503"] {
            assert!(
                acquire[code].is_object(),
                "acquire answers {code}: {acquire}"
            );
        }
        let renew = &json["paths"]["/v1/slots/{slot}/renew"]["post"]["responses"];
        for code in ["200", "403", "409", "503"] {
            assert!(renew[code].is_object(), "renew answers {code}: {renew}");
        }
    }
}
