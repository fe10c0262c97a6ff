//! Prometheus metrics of the assigner (`GET /metrics`, OpenMetrics text), kept in a
//! `prometheus-client` registry: every request by route template, method and code; acquire
//! latency by pool and outcome; acquires waiting per pool; slots per pool and state (from the
//! status cache's bulk read, at scrape time); the broker connection; replies nobody took.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::status::{Snapshot, pool_counts};
use crate::config::Config;

/// The content type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the acquire latency buckets, cut at the longest wait allowed.
const BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// States a slot is counted in by `berth_slots` (`missing`: no such resource in the store;
/// `unknown`: a record a newer berth wrote).
const SLOT_STATES: [&str; 6] = ["free", "used", "dirty", "disabled", "missing", "unknown"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcquireLabels {
    pool: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    pool: String,
    state: String,
}

/// Makes the acquire histograms, with buckets up to the longest wait.
#[derive(Debug, Clone)]
struct Buckets(Arc<Vec<f64>>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The assigner's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    acquire: Family<AcquireLabels, Histogram, Buckets>,
    waiting: Family<PoolLabels, Gauge>,
    slots: Family<SlotLabels, Gauge>,
    broker_up: Gauge,
    reconnects: Counter,
    abandoned_replies: Counter,
}

impl Metrics {
    /// The metrics of an assigner of `config`: every pool's series exist from the start.
    pub(crate) fn new(config: &Config) -> Metrics {
        let mut bounds: Vec<f64> = BUCKETS
            .iter()
            .copied()
            .filter(|b| *b < config.max_wait_secs as f64)
            .collect();
        // An acquire answers within its wait plus half a second.
        bounds.push(config.max_wait_secs as f64 + 1.0);
        let metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            acquire: Family::new_with_constructor(Buckets(Arc::new(bounds))),
            waiting: Family::default(),
            slots: Family::default(),
            broker_up: Gauge::default(),
            reconnects: Counter::default(),
            abandoned_replies: Counter::default(),
        };
        for pool in &config.pools {
            let _ = metrics.waiting.get_or_create(&PoolLabels {
                pool: pool.name.clone(),
            });
        }
        metrics.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "berth_requests",
            "Answers of the HTTP API by route template, method and status code",
            self.requests.clone(),
        );
        r.register(
            "berth_acquire_duration_seconds",
            "Time from an acquire request to its answer, by pool and outcome (assigned, or the error code)",
            self.acquire.clone(),
        );
        r.register(
            "berth_acquire_waiting",
            "Acquire requests waiting for a slot, by pool",
            self.waiting.clone(),
        );
        r.register(
            "berth_slots",
            "Slots by pool and state, from the store as of the last status read (at most a few seconds old)",
            self.slots.clone(),
        );
        r.register(
            "berth_broker_up",
            "Whether the assigner is connected to the broker",
            self.broker_up.clone(),
        );
        r.register(
            "berth_broker_reconnects",
            "Broker connections the assigner opened after its first",
            self.reconnects.clone(),
        );
        r.register(
            "berth_abandoned_replies",
            "Assign replies nobody could take (released at once)",
            self.abandoned_replies.clone(),
        );
        self
    }

    /// Counts one answer of `route` (its template) to `method` with `code`.
    fn record_request(&self, route: &str, method: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                code,
            })
            .inc();
    }

    /// Marks an acquire of `pool` as waiting until the returned guard is dropped, which
    /// records its latency with the outcome set on it (`aborted` if none: the client left).
    pub(crate) fn acquire_started(self: &Arc<Self>, pool: &str) -> AcquireTimer {
        self.waiting
            .get_or_create(&PoolLabels {
                pool: pool.to_owned(),
            })
            .inc();
        AcquireTimer {
            metrics: Arc::clone(self),
            pool: pool.to_owned(),
            started: Instant::now(),
            outcome: "aborted",
        }
    }

    pub(crate) fn abandoned_reply(&self) {
        self.abandoned_replies.inc();
    }

    /// A connection to the broker was opened again after one was lost.
    pub(crate) fn broker_reconnected(&self) {
        self.reconnects.inc();
    }

    /// The exposition text, with the gauges read at scrape time: the broker link, and the
    /// slots of `snapshot` (when the store could be read; otherwise the last counts stay).
    pub(crate) fn render(
        &self,
        config: &Config,
        broker_up: bool,
        snapshot: Option<&Snapshot>,
    ) -> String {
        self.broker_up.set(i64::from(broker_up));
        if let Some(snapshot) = snapshot {
            for pool in &config.pools {
                let counts = pool_counts(snapshot, &pool.name);
                let missing = snapshot
                    .slots
                    .iter()
                    .filter(|s| s.pool == pool.name && s.state == "missing")
                    .count();
                let by_state = [
                    counts.free,
                    counts.used,
                    counts.dirty - missing,
                    counts.disabled,
                    missing,
                    counts.unknown,
                ];
                for (state, n) in SLOT_STATES.iter().zip(by_state) {
                    self.slots
                        .get_or_create(&SlotLabels {
                            pool: pool.name.clone(),
                            state: (*state).to_owned(),
                        })
                        .set(n as i64);
                }
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// An acquire in progress; see [`Metrics::acquire_started`].
pub(crate) struct AcquireTimer {
    metrics: Arc<Metrics>,
    pool: String,
    started: Instant,
    outcome: &'static str,
}

impl AcquireTimer {
    /// How the acquire ended: `assigned`, or the API's error code.
    pub(crate) fn outcome(&mut self, outcome: &'static str) {
        self.outcome = outcome;
    }
}

impl Drop for AcquireTimer {
    fn drop(&mut self) {
        let pool = PoolLabels {
            pool: self.pool.clone(),
        };
        self.metrics.waiting.get_or_create(&pool).dec();
        self.metrics
            .acquire
            .get_or_create(&AcquireLabels {
                pool: pool.pool,
                outcome: self.outcome.to_owned(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Middleware counting every answer of a matched route by its template, method and code.
pub(crate) async fn record_answers(
    State(metrics): State<Arc<Metrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    if let Some(route) = route {
        metrics.record_request(route.as_str(), &method, response.status().as_u16());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assigner::status::SlotStatus;

    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        use openmetrics_parser::OpenMetricsValue;
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("{e:?}:\n{text}"));
        let family = &exposition.families[name];
        let sample = family
            .iter_samples()
            .find(|s| {
                let set = s.get_labelset().unwrap();
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match &sample.value {
            OpenMetricsValue::Gauge(n) => n.as_f64(),
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or_default() as f64,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exposition_parses_with_pool_labels_and_buckets_up_to_the_longest_wait() {
        let config = Config::dev(2);
        let metrics = Arc::new(Metrics::new(&config));
        metrics.record_request("/v1/pools/{pool}/acquire", "POST", 200);
        {
            let mut timer = metrics.acquire_started("ppa");
            timer.outcome("assigned");
        }
        let _waiting = metrics.acquire_started("ppa");
        let slot = |name: &str, state: &str| SlotStatus::bare(name, "ppa", state);
        let snapshot = Snapshot {
            as_of: chrono::Utc::now(),
            slots: vec![slot("ppa-1", "free"), slot("ppa-2", "dirty")],
        };
        let text = metrics.render(&config, true, Some(&snapshot));
        assert!(text.ends_with("# EOF\n"), "{text}");
        let route = [
            ("route", "/v1/pools/{pool}/acquire"),
            ("method", "POST"),
            ("code", "200"),
        ];
        assert_eq!(value(&text, "berth_requests", &route), 1.0);
        assert_eq!(
            value(&text, "berth_acquire_waiting", &[("pool", "ppa")]),
            1.0
        );
        let slots = |state| value(&text, "berth_slots", &[("pool", "ppa"), ("state", state)]);
        assert_eq!(
            (slots("free"), slots("dirty"), slots("used")),
            (1.0, 1.0, 0.0)
        );
        assert_eq!(value(&text, "berth_broker_up", &[]), 1.0);
        let outcome = [("pool", "ppa"), ("outcome", "assigned")];
        assert_eq!(
            value(&text, "berth_acquire_duration_seconds", &outcome),
            1.0
        );
        let top = format!("le=\"{}.0\"", config.max_wait_secs + 1);
        assert!(
            text.contains(&format!(
                "berth_acquire_duration_seconds_bucket{{{top},pool=\"ppa\",outcome=\"assigned\"}} 1"
            )),
            "{text}"
        );
    }
}
