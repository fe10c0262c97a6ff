//! The JSON shapes of Launchpad's web service (archives, source publications, paged
//! collections) and the links inside them.

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::header::HOST;
use axum::http::{HeaderMap, Uri};
use reqwest::Url;
use serde_json::{Value, json};

use super::state::{ArchiveState, Source};

/// Launchpad's largest page; larger `ws.size` values are cut down to it.
pub(crate) const MAX_PAGE_SIZE: usize = 300;

/// Builds the links of one answer: `http://HOST/devel/~OWNER/…`, with the host the client
/// used, so links work however the fake was reached.
#[derive(Debug, Clone)]
pub(crate) struct Links {
    root: String,
    owner: String,
}

impl Links {
    /// Links under `http://HOST/devel`, HOST from the request or else the server's address.
    pub(crate) fn new(headers: &HeaderMap, server: SocketAddr, owner: &str) -> Links {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| server.to_string());
        Links::for_host(&host, owner)
    }

    pub(crate) fn for_host(host: &str, owner: &str) -> Links {
        Links {
            root: format!("http://{host}/devel"),
            owner: owner.to_owned(),
        }
    }

    pub(crate) fn archive(&self, name: &str) -> String {
        format!("{}/~{}/+archive/ubuntu/{name}", self.root, self.owner)
    }

    pub(crate) fn source(&self, ppa: &str, id: u64) -> String {
        format!("{}/+sourcepub/{id}", self.archive(ppa))
    }

    /// The full address of the current request, the base of collection links.
    pub(crate) fn request_url(&self, uri: &Uri) -> Option<Url> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let origin = self.root.strip_suffix("/devel").unwrap_or(&self.root);
        Url::parse(&format!("{origin}{path}")).ok()
    }
}

/// An archive's representation; `http_etag` is also sent as the `ETag` header.
pub(crate) fn archive_json(links: &Links, archive: &ArchiveState) -> Value {
    let owner = &links.owner;
    let name = &archive.name;
    json!({
        "self_link": links.archive(name),
        "web_link": format!("https://launchpad.net/~{owner}/+archive/ubuntu/{name}"),
        "resource_type_link": format!("{}/#archive", links.root),
        "name": name,
        "displayname": format!("PPA {name} of {owner}"),
        "reference": format!("~{owner}/ubuntu/{name}"),
        "distribution_link": format!("{}/ubuntu", links.root),
        "description": archive.description,
        "owner_link": format!("{}/~{owner}", links.root),
        "private": false,
        "http_etag": archive.etag,
    })
}

/// A source publication's representation, its status as of `now`.
pub(crate) fn source_json(links: &Links, source: &Source, now: Instant) -> Value {
    json!({
        "self_link": links.source(&source.ppa, source.id),
        "resource_type_link": format!("{}/#source_package_publishing_history", links.root),
        "archive_link": links.archive(&source.ppa),
        "source_package_name": source.package,
        "source_package_version": source.version,
        "status": source.status(now),
        "display_name": format!("{} {} in ubuntu", source.package, source.version),
        "date_created": source.date_created.to_rfc3339(),
        "date_published": source.date_published.map(|d| d.to_rfc3339()),
    })
}

/// Which slice of a collection a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) start: usize,
    pub(crate) size: usize,
}

impl Page {
    /// From `ws.start` and `ws.size`; the message says which one is not a number.
    pub(crate) fn parse(
        start: Option<&str>,
        size: Option<&str>,
        default_size: usize,
    ) -> Result<Page, String> {
        let number = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| format!("{name}: invalid value {value:?}"))
        };
        let start = start
            .map(|v| number("ws.start", v))
            .transpose()?
            .unwrap_or(0);
        let size = size
            .map(|v| number("ws.size", v))
            .transpose()?
            .unwrap_or(default_size);
        Ok(Page {
            start,
            size: size.clamp(1, MAX_PAGE_SIZE),
        })
    }
}

/// One page of `all`: `start`, `total_size`, `entries`, and the links to the neighbouring
/// pages (same query, other `ws.start`) when they exist.
pub(crate) fn collection(url: &Url, page: Page, all: Vec<Value>, type_link: &str) -> Value {
    let total = all.len();
    let entries: Vec<Value> = all.into_iter().skip(page.start).take(page.size).collect();
    let mut body = json!({
        "start": page.start,
        "total_size": total,
        "entries": entries,
        "resource_type_link": type_link,
    });
    if page.start + page.size < total {
        body["next_collection_link"] = page_link(url, page.start + page.size, page.size).into();
    }
    if page.start > 0 {
        let start = page.start.saturating_sub(page.size);
        body["prev_collection_link"] = page_link(url, start, page.size).into();
    }
    body
}

fn page_link(url: &Url, start: usize, size: usize) -> String {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "ws.start" && k != "ws.size")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut link = url.clone();
    link.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("ws.start", &start.to_string())
        .append_pair("ws.size", &size.to_string());
    link.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_link_to_their_neighbours() {
        let url = Url::parse("http://h:1/devel/~o/+archive/ubuntu/p?ws.op=x&ws.size=2").unwrap();
        let all: Vec<Value> = (0..5).map(Value::from).collect();
        let page = collection(&url, Page { start: 2, size: 2 }, all.clone(), "t");
        assert_eq!(page["entries"], json!([2, 3]));
        assert_eq!(page["total_size"], 5);
        assert_eq!(
            page["next_collection_link"],
            "http://h:1/devel/~o/+archive/ubuntu/p?ws.op=x&ws.start=4&ws.size=2"
        );
        assert_eq!(
            page["prev_collection_link"],
            "http://h:1/devel/~o/+archive/ubuntu/p?ws.op=x&ws.start=0&ws.size=2"
        );
        let last = collection(&url, Page { start: 4, size: 2 }, all, "t");
        assert!(last.get("next_collection_link").is_none());
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(Page::parse(None, None, 75), Ok(Page { start: 0, size: 75 }));
        assert_eq!(
            Page::parse(Some("3"), Some("1000"), 75),
            Ok(Page {
                start: 3,
                size: 300
            })
        );
        assert!(Page::parse(Some("x"), None, 75).is_err());
    }
}
