//! `/metrics` as a test reads it: parsed by a strict OpenMetrics parser (which fails the
//! test on any malformed line), then one value looked up by family name and labels. Both
//! test trees read the assigner's and the workers' metrics this way.

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

pub type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Parses an exposition, panicking with the text when it is not valid OpenMetrics.
pub fn parse_metrics(text: &str) -> Exposition {
    openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics ({e:?}):\n{text}"))
}

/// The sum of the samples of `name` (a family name; a counter's `_total` may be given)
/// whose labels include `labels`: a gauge's or counter's value, a histogram's count.
pub fn metric_value(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let family = exposition
        .families
        .get(name)
        .or_else(|| {
            exposition
                .families
                .get(name.strip_suffix("_total").unwrap_or(name))
        })
        .unwrap_or_else(|| {
            let mut names: Vec<_> = exposition.families.keys().collect();
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
