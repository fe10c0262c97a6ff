//! A worker's `/metrics` as a test reads it: fetched over HTTP, parsed by a strict
//! OpenMetrics parser (which fails the test on any malformed line), then values looked up by
//! family name and labels. The same reading as the root tests' `tests/support/metrics.rs`.
#![allow(dead_code, unreachable_pub)]

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

pub type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// A scraped exposition: the text, and the text parsed.
pub struct Scrape {
    pub text: String,
    pub exposition: Exposition,
}

impl Scrape {
    /// The sum of the samples of family `name` whose labels include `labels`: a gauge's or
    /// counter's value, a histogram's count.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = self.exposition.families.get(name).unwrap_or_else(|| {
            let mut names: Vec<_> = self.exposition.families.keys().collect();
            names.sort();
            panic!("no metric {name}; there are {names:?}")
        });
        family
            .iter_samples()
            .filter(|sample| {
                let set = sample.get_labelset().unwrap();
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|sample| match &sample.value {
                OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Histogram(h) => h.count.map(|c| c as f64).unwrap_or(0.0),
                other => panic!("{name}: unexpected value {other:?}"),
            })
            .sum()
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
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics ({e:?}):\n{text}"));
    Ok(Scrape { text, exposition })
}
