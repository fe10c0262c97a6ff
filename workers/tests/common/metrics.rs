//! A worker's `/metrics` as a test reads it: fetched over HTTP, parsed by a strict
//! OpenMetrics parser (which fails the test on any malformed line), then values looked up by
//! family name and labels, the reading `berth-testkit` shares with the root tests.
#![allow(dead_code, unreachable_pub)]

pub use berth_testkit::Exposition;

/// A scraped exposition: the text, and the text parsed.
pub struct Scrape {
    pub text: String,
    pub exposition: Exposition,
}

impl Scrape {
    /// The sum of the samples of family `name` whose labels include `labels`: a gauge's or
    /// counter's value, a histogram's count.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        berth_testkit::metric_value(&self.exposition, name, labels)
    }
}

/// `GET url`, checked to be OpenMetrics text and parsed; `Err` with what went wrong for a
/// transport error (the server may not be up yet).
pub async fn scrape(http: &reqwest::Client, url: &str) -> Result<Scrape, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.map_err(|e| e.to_string())?;
    assert_eq!(status, reqwest::StatusCode::OK, "{url}: {text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{url}: content type {content_type:?}"
    );
    let exposition = berth_testkit::parse_metrics(&text);
    Ok(Scrape { text, exposition })
}
