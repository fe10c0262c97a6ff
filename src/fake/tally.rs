//! A count of the requests the Launchpad routes received, by method, endpoint and named
//! operation, so that a bench can set berth's store calls against Launchpad's request rates.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::state::{Shared, lock};

/// Middleware in front of the Launchpad routes (before faults: a request answered by an
/// injected fault was still sent).
pub(crate) async fn count(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let key = key(request.method().as_str(), request.uri());
    *lock(&shared).requests.entry(key).or_default() += 1;
    next.run(request).await
}

/// `GET archive`, `GET archive ws.op=getPublishedSources`, `POST sourcepub`, …: the PPA and
/// the publication are left out, so every slot's calls add up under one key. The named
/// operation of a `POST` is in its body, which is not read here.
fn key(method: &str, uri: &axum::http::Uri) -> String {
    let path = uri.path();
    let endpoint = if path.contains("/+sourcepub/") {
        "sourcepub"
    } else if path.contains("/+archive/") {
        "archive"
    } else if path.ends_with("/ppas") {
        "ppas"
    } else {
        "other"
    };
    let op = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("ws.op="))
            .map(str::to_owned)
    });
    match op {
        Some(op) => format!("{method} {endpoint} ws.op={op}"),
        None => format!("{method} {endpoint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_leave_out_the_ppa_and_the_publication() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().unwrap();
        assert_eq!(
            key(
                "GET",
                &uri("/devel/~o/+archive/ubuntu/ppa-7?ws.op=getPublishedSources&ws.size=300")
            ),
            "GET archive ws.op=getPublishedSources"
        );
        assert_eq!(
            key("PATCH", &uri("/devel/~o/+archive/ubuntu/ppa-7")),
            "PATCH archive"
        );
        assert_eq!(
            key(
                "POST",
                &uri("/devel/~o/+archive/ubuntu/ppa-1/+sourcepub/12")
            ),
            "POST sourcepub"
        );
        assert_eq!(key("GET", &uri("/devel/~o/ppas")), "GET ppas");
    }
}
