//! Launchpad's paged collections: a page of `entries` and, unless it is the last page, the
//! full URL of the next one in `next_collection_link`. A client follows that link as given,
//! so a broken or hostile server could lead it in circles or to another host (where our
//! PLAINTEXT `Authorization` header would hand over the token secret); [`PageLinks`] stops both.

use std::collections::HashSet;

use reqwest::Url;
use serde::Deserialize;

use super::StoreError;

/// The most pages one walk follows: 10 000 × 75 entries is far past any real PPA.
pub(crate) const MAX_PAGES: usize = 10_000;

/// One page of a collection; other fields (`start`, `total_size`, `prev_collection_link`)
/// are not needed to walk it.
#[derive(Debug, Deserialize)]
pub(crate) struct Page<T> {
    pub(crate) entries: Vec<T>,
    #[serde(default)]
    pub(crate) next_collection_link: Option<String>,
}

/// The pages visited by one walk, to decide whether the next link may be followed.
#[derive(Debug)]
pub(crate) struct PageLinks {
    root: Url,
    seen: HashSet<Url>,
}

impl PageLinks {
    /// A walk of the service at `root` that starts at `first`.
    pub(crate) fn new(root: &Url, first: &Url) -> PageLinks {
        PageLinks {
            root: root.clone(),
            seen: HashSet::from([first.clone()]),
        }
    }

    /// The next page to fetch, or `None` after the last page. Refuses a link that is not a
    /// URL of the same service, one already visited, and a walk past [`MAX_PAGES`].
    pub(crate) fn next(&mut self, link: Option<&str>) -> Result<Option<Url>, StoreError> {
        let Some(link) = link else { return Ok(None) };
        let url = Url::parse(link)
            .map_err(|e| StoreError::Protocol(format!("unreadable next_collection_link: {e}")))?;
        if url.origin() != self.root.origin() {
            return Err(StoreError::Protocol(format!(
                "next_collection_link leads away from the store, to {}",
                url.origin().ascii_serialization()
            )));
        }
        if self.seen.len() >= MAX_PAGES {
            return Err(StoreError::Protocol(format!(
                "collection has more than {MAX_PAGES} pages; giving up"
            )));
        }
        if !self.seen.insert(url.clone()) {
            return Err(StoreError::Protocol(format!(
                "next_collection_link loops back to a page already read ({})",
                url.path()
            )));
        }
        Ok(Some(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn follows_new_links_of_the_same_service() {
        let root = url("http://127.0.0.1:8081/devel/");
        let first = url("http://127.0.0.1:8081/devel/~o/ppas");
        let mut links = PageLinks::new(&root, &first);
        let second = "http://127.0.0.1:8081/devel/~o/ppas?ws.start=75&ws.size=75";
        assert_eq!(links.next(Some(second)).unwrap(), Some(url(second)));
        assert_eq!(links.next(None).unwrap(), None);
    }

    #[test]
    fn refuses_loops_other_hosts_and_endless_walks() {
        let root = url("http://127.0.0.1:8081/devel/");
        let first = url("http://127.0.0.1:8081/devel/~o/ppas");
        let mut links = PageLinks::new(&root, &first);
        assert!(matches!(
            links.next(Some(first.as_str())),
            Err(StoreError::Protocol(_))
        ));
        assert!(matches!(
            links.next(Some("http://evil.example:8081/devel/~o/ppas?ws.start=1")),
            Err(StoreError::Protocol(_))
        ));
        assert!(matches!(
            links.next(Some("not a url")),
            Err(StoreError::Protocol(_))
        ));
        for i in 1..MAX_PAGES {
            let next = format!("http://127.0.0.1:8081/devel/~o/ppas?ws.start={i}");
            assert!(links.next(Some(&next)).is_ok(), "page {i}");
        }
        let last = format!("http://127.0.0.1:8081/devel/~o/ppas?ws.start={MAX_PAGES}");
        assert!(matches!(
            links.next(Some(&last)),
            Err(StoreError::Protocol(_))
        ));
    }
}
