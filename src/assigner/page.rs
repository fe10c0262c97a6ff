//! `GET /`: the web page of the pools (DESIGN §4 "The web page"). The server renders the
//! whole table (it works with JavaScript off and with `curl`); the one script
//! (`page/page.js`) then follows `GET /v1/events/stream` and updates rows in place. The
//! templates are `maud` (checked at compile time); the script and the style sheet are
//! embedded in the binary and served from this origin only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::AppState;
use super::status::{SlotStatus, Snapshot, pool_counts};

/// The script, embedded.
const SCRIPT: &str = include_str!("page/page.js");
/// The style sheet, embedded.
const STYLE: &str = include_str!("page/page.css");
/// Under this much lease left, the countdown is shown in red.
const LEASE_SOON_SECS: i64 = 5 * 60;
/// The page's own resources only; inline styles stay out, scripts come from here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What the page shows besides the slots: each pool's waiting requests and consumers, and
/// each slot's resource (reference and link).
struct Extras {
    queues: HashMap<String, (u32, u32)>,
    resources: HashMap<String, (String, String)>,
}

/// The page.
#[utoipa::path(get, path = "/", responses(
    (status = 200, description = "The web page of the pools (HTML); every slot is a row of its table", body = String, content_type = "text/html"),
    (status = 503, description = "The page, saying that the store could not be read", body = String, content_type = "text/html"),
))]
pub(crate) async fn page(State(app): State<Arc<AppState>>) -> Response {
    // Whether this request may see the slots: a browser's navigation carries no token, so
    // only while reads are public (DESIGN §4 "Clients and roles"); otherwise the rows come
    // with their names only and the script fills them in with the token it is given.
    let may_read = app.config.auth.reads_are_public();
    let snapshot = if may_read {
        Some(app.status.snapshot().await)
    } else {
        None
    };
    let mut extras = Extras {
        queues: HashMap::new(),
        resources: HashMap::new(),
    };
    for pool in &app.config.pools {
        if let Some(counts) = app.link.queue_counts(&pool.name).await {
            extras.queues.insert(pool.name.clone(), counts);
        }
        for slot in &pool.slots {
            let resource = app.store.resource(slot);
            let text = |key: &str| resource[key].as_str().unwrap_or_default().to_owned();
            extras.resources.insert(
                slot.clone(),
                (text("reference"), web_page_of(&text("self_link"))),
            );
        }
    }
    let (status, markup) = match snapshot {
        Some(Err(err)) => {
            tracing::warn!(error = %err, "page: could not read the slots from the store");
            let message = "The store could not be read just now; the page tries again by itself.";
            (
                StatusCode::SERVICE_UNAVAILABLE,
                render(&app, None, &extras, Some(message), Some("store")),
            )
        }
        Some(Ok(snapshot)) => (
            StatusCode::OK,
            render(&app, Some(&snapshot), &extras, None, None),
        ),
        None => (
            StatusCode::OK,
            render(
                &app,
                None,
                &extras,
                Some("Give a token to see the slots."),
                Some("denied"),
            ),
        ),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// The page's script.
#[utoipa::path(get, path = "/page.js", responses(
    (status = 200, description = "The web page's script", body = String, content_type = "text/javascript"),
))]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The page's style sheet.
#[utoipa::path(get, path = "/page.css", responses(
    (status = 200, description = "The web page's style sheet", body = String, content_type = "text/css"),
))]
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The page a person reads for a resource whose API address is `api`: Launchpad's API
/// `https://api.launchpad.net/devel/~o/+archive/ubuntu/p` is the page
/// `https://launchpad.net/~o/+archive/ubuntu/p`; any other address is linked as it is.
fn web_page_of(api: &str) -> String {
    if let Some(rest) = api.strip_prefix("https://api.")
        && let Some((host, path)) = rest.split_once('/')
        && let Some((_version, path)) = path.split_once('/')
    {
        return format!("https://{host}/{path}");
    }
    api.to_owned()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The whole page: the slots of `snapshot`; none when it is `None`, with `notice` saying
/// why and `unread` telling the script (`store`: the store could not be read, the page is
/// served again once it can; `denied`: this request may not read the slots).
fn render(
    app: &AppState,
    snapshot: Option<&Snapshot>,
    extras: &Extras,
    notice: Option<&str>,
    unread: Option<&str>,
) -> Markup {
    let now = Utc::now();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "berth — " (app.config.namespace) }
                link rel="stylesheet" href="/page.css";
                script src="/page.js" defer {}
            }
            body data-as-of=[snapshot.map(|s| s.as_of.to_rfc3339())] data-unread=[unread] {
                header {
                    h1 { "berth " span.ns { (app.config.namespace) } }
                    p #banner role="status" aria-live="polite" {
                        @if let Some(snapshot) = snapshot {
                            "Read at " time datetime=(snapshot.as_of.to_rfc3339()) { (snapshot.as_of.format("%H:%M:%S UTC")) }
                            ". Live updates need JavaScript; reload to read again."
                        } @else {
                            "Not read."
                        }
                    }
                    form #token-form {
                        label for="token" { "Token" }
                        input #token type="password" autocomplete="off" placeholder="operator token";
                        button type="submit" #token-use { "Use token" }
                        button type="button" #token-forget hidden { "Forget token" }
                    }
                }
                main {
                    @if let Some(notice) = notice {
                        p.notice role="alert" { (notice) }
                    }
                    @for pool in &app.config.pools {
                        (pool_section(&pool.name, &pool.slots, snapshot, extras, now))
                    }
                }
                (dialogs())
            }
        }
    }
}

fn pool_section(
    pool: &str,
    configured: &[String],
    snapshot: Option<&Snapshot>,
    extras: &Extras,
    now: DateTime<Utc>,
) -> Markup {
    let counts = snapshot.map(|snapshot| pool_counts(snapshot, pool));
    let heading = format!("pool-{pool}");
    html! {
        section.pool data-pool=(pool) aria-labelledby=(heading) {
            h2 #(heading) { "Pool " (pool) }
            p.counts {
                @if let Some(counts) = &counts {
                    span data-count="free" { (counts.free) " free" } " · "
                    span data-count="used" { (counts.used) " used" } " · "
                    span data-count="dirty" { (counts.dirty) " dirty" } " · "
                    span data-count="disabled" { (counts.disabled) " disabled" }
                }
                @if let Some((waiting, consumers)) = extras.queues.get(pool) {
                    " · " span data-count="waiting" { (waiting) " waiting" }
                    " · " span data-count="consumers" { "worker processes taking requests: " (consumers) }
                }
            }
            div.table-wrap {
                table {
                    caption { "Slots of pool " (pool) }
                    thead {
                        tr {
                            th scope="col" { "Slot" }
                            th scope="col" { "State" }
                            th scope="col" { "Owner" }
                            th scope="col" { "Held for" }
                            th scope="col" { "Lease expires in" }
                            th scope="col" { "Notes" }
                            th scope="col" { "Resource" }
                            th scope="col" .op { "Actions" }
                        }
                    }
                    tbody {
                        @if let Some(snapshot) = snapshot {
                            @for slot in snapshot.slots.iter().filter(|s| s.pool == pool) {
                                (row(slot, extras.resources.get(&slot.slot), now))
                            }
                        } @else {
                            @for slot in configured {
                                (row(&unread(slot, pool), extras.resources.get(slot), now))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A configured slot whose state this request may not see (or the store did not answer):
/// its row is there, `unknown`, for the script to fill in.
fn unread(slot: &str, pool: &str) -> SlotStatus {
    SlotStatus::bare(slot, pool, "unknown")
}

/// The word a slot's state is shown with (never its colour alone). `page.js` has the same
/// rule (`word`).
fn word(slot: &SlotStatus) -> &str {
    match slot.state.as_str() {
        "used" if slot.draining => "draining",
        "dirty" if slot.clean_failures == 0 => "cleaning",
        state => state,
    }
}

/// A duration for a person: `42s`, `5m 03s`, `2h 07m`, `3d 04h`.
fn span_text(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn row(slot: &SlotStatus, resource: Option<&(String, String)>, now: DateTime<Utc>) -> Markup {
    let word = word(slot);
    let lease_left = slot.lease_expires.map(|at| (at - now).num_seconds());
    let history = format!("/v1/slots/{}/history", slot.slot);
    html! {
        tr id=(format!("slot-{}", slot.slot)) data-slot=(slot.slot) data-state=(slot.state) data-word=(word) {
            th scope="row" {
                a.history href=(history) title="Recent history" { (slot.slot) }
            }
            td.state { span class=(format!("badge s-{word}")) { (word) } }
            td.owner { (slot.owner.as_deref().unwrap_or("")) }
            td.held data-since=[slot.held_since.map(|at| at.to_rfc3339())] {
                @if let Some(since) = slot.held_since { (span_text((now - since).num_seconds())) }
            }
            td.lease.soon[lease_left.is_some_and(|left| left < LEASE_SOON_SECS)]
                data-until=[slot.lease_expires.map(|at| at.to_rfc3339())] {
                @if let Some(left) = lease_left { (span_text(left)) }
            }
            td.notes { (notes(slot)) }
            td.resource {
                @if let Some((reference, link)) = resource {
                    @if link.is_empty() { (reference) } @else {
                        a href=(link) rel="external noopener noreferrer" { (reference) }
                    }
                }
            }
            td.op.actions {}
        }
    }
}

/// Draining or disabled and why; the cleaning's trouble.
fn notes(slot: &SlotStatus) -> Markup {
    let reason = slot.disabled_reason.as_deref().unwrap_or("");
    html! {
        @if slot.draining {
            span.note { "Draining (disabled once its holder is done): " (reason) }
        } @else if slot.state == "disabled" {
            span.note { "Disabled: " (reason) }
        }
        @if slot.clean_failures > 0 {
            span.note { "Failed cleanings: " (slot.clean_failures) }
        }
        @if let Some(error) = &slot.last_error {
            span.note.error { (error) }
        }
    }
}

/// The dialogs the script opens: a slot's history, an operator action.
fn dialogs() -> Markup {
    html! {
        dialog #history-dialog aria-labelledby="history-title" {
            h2 #history-title { "History" }
            div #history-body {}
            form method="dialog" { button { "Close" } }
        }
        dialog #action-dialog aria-labelledby="action-title" {
            form #action-form {
                h2 #action-title { "Action" }
                p #action-what {}
                label for="action-reason" { "Reason" }
                input #action-reason type="text" maxlength="500";
                p #action-now-row {
                    input #action-now type="checkbox";
                    label for="action-now" { "Now: revoke the lease of a held slot at once (else it is disabled once its holder is done)" }
                }
                p #action-answer role="status" aria-live="polite" {}
                div.buttons {
                    button type="submit" #action-send { "Send" }
                    button type="button" #action-close { "Close" }
                }
            }
        }
        noscript { p { "The slots above were read when the page was served; with JavaScript on they follow live." } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launchpad_api_addresses_link_to_their_web_page() {
        assert_eq!(
            web_page_of("https://api.launchpad.net/devel/~berth-ci/+archive/ubuntu/ppa-1"),
            "https://launchpad.net/~berth-ci/+archive/ubuntu/ppa-1"
        );
        assert_eq!(
            web_page_of("https://api.staging.launchpad.net/1.0/~o/+archive/ubuntu/p"),
            "https://staging.launchpad.net/~o/+archive/ubuntu/p"
        );
        let fake = "http://127.0.0.1:8081/devel/~berth-ci/+archive/ubuntu/ppa-1";
        assert_eq!(web_page_of(fake), fake);
    }

    #[test]
    fn spans_read_as_a_person_would() {
        assert_eq!(span_text(-3), "0s");
        assert_eq!(span_text(42), "42s");
        assert_eq!(span_text(303), "5m 03s");
        assert_eq!(span_text(7620), "2h 07m");
        assert_eq!(span_text(3 * 86400 + 4 * 3600), "3d 04h");
    }
}
