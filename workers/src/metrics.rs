//! The metrics of a worker process (`berth-worker --metrics-listen ADDR`, `GET /metrics`,
//! OpenMetrics text), kept in a `prometheus-client` registry like the assigner's: what its
//! slot workers did (claims, releases, expiries, cleanings), the store and broker trouble they
//! rode out, the events they could not publish, and where they are now (by state, standing
//! by).
//!
//! One [`Metrics`] per process, passed as a handle (`Arc`) to what increments it: the slot
//! workers ([`crate::slot`]), the connections and the events of [`crate::amqp`]. It knows
//! nothing of either; the HTTP side is [`serve`] (hyper, HTTP/1.1 only: the worker has no
//! web framework).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use berth::record::SlotState;
use berth::store::StoreError;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the clean duration buckets: the fake empties a PPA in well under
/// a second, Launchpad takes seconds to minutes, and one attempt gives up after
/// `clean_timeout_secs` (600 by default).
const CLEAN_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// The states of `berth_worker_slots`, all present from the start for every pool.
const STATES: [SlotState; 4] = [
    SlotState::Free,
    SlotState::Used,
    SlotState::Dirty,
    SlotState::Disabled,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pool: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    pool: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    connection: String,
    node: String,
}

#[derive(Debug, Clone)]
struct CleanBuckets;

impl MetricConstructor<Histogram> for CleanBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(CLEAN_BUCKETS.iter().copied())
    }
}

/// The operator actions counted by `berth_worker_actions`.
pub(crate) const ACTIONS: [&str; 4] = ["disable", "enable", "reclaim", "clean"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    pool: String,
    action: &'static str,
}

/// The metrics of one worker process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    claims: Family<PoolLabels, Counter>,
    releases: Family<PoolLabels, Counter>,
    expiries: Family<PoolLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    clean_duration: Family<PoolLabels, Histogram, CleanBuckets>,
    clean_failures: Family<PoolLabels, Counter>,
    store_errors: Family<ErrorLabels, Counter>,
    broker_reconnects: Counter,
    broker_node: Family<NodeLabels, Gauge>,
    /// The node each connection last connected to, whose series goes when it moves on.
    nodes: std::sync::Mutex<std::collections::HashMap<String, String>>,
    events_unpublished: Family<PoolLabels, Counter>,
    slots: Family<StateLabels, Gauge>,
    standby: Family<PoolLabels, Gauge>,
}

impl Metrics {
    /// The metrics of a process working slots of `pools`: every pool's series exist from the
    /// start (at zero), so that a rate or an alert has something to look at.
    pub fn new<'a>(pools: impl IntoIterator<Item = &'a str>) -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            claims: Family::default(),
            releases: Family::default(),
            expiries: Family::default(),
            actions: Family::default(),
            clean_duration: Family::new_with_constructor(CleanBuckets),
            clean_failures: Family::default(),
            store_errors: Family::default(),
            broker_reconnects: Counter::default(),
            broker_node: Family::default(),
            nodes: std::sync::Mutex::default(),
            events_unpublished: Family::default(),
            slots: Family::default(),
            standby: Family::default(),
        };
        for pool in pools {
            let labels = pool_labels(pool);
            let _ = metrics.claims.get_or_create(&labels);
            let _ = metrics.releases.get_or_create(&labels);
            let _ = metrics.expiries.get_or_create(&labels);
            for action in ACTIONS {
                let _ = metrics.actions.get_or_create(&ActionLabels {
                    pool: pool.to_owned(),
                    action,
                });
            }
            let _ = metrics.clean_duration.get_or_create(&labels);
            let _ = metrics.clean_failures.get_or_create(&labels);
            let _ = metrics.events_unpublished.get_or_create(&labels);
            let _ = metrics.standby.get_or_create(&labels);
            for kind in ["retryable", "fatal"] {
                let _ = metrics.store_errors.get_or_create(&ErrorLabels {
                    pool: pool.to_owned(),
                    kind,
                });
            }
            for state in STATES {
                let _ = metrics.slots.get_or_create(&state_labels(pool, state));
            }
        }
        metrics.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "berth_worker_claims",
            "Slots claimed for an assign request (written used), by pool",
            self.claims.clone(),
        );
        r.register(
            "berth_worker_releases",
            "Slots released (written dirty) by their holder, or at once because the reply could not be delivered, by pool",
            self.releases.clone(),
        );
        r.register(
            "berth_worker_expiries",
            "Leases that ran out (plus grace) and were taken back (written dirty), by pool",
            self.expiries.clone(),
        );
        r.register(
            "berth_worker_actions",
            "Operator actions applied (the record written), by pool and action: disable, enable, reclaim (and disable --now of a held slot), clean",
            self.actions.clone(),
        );
        r.register(
            "berth_worker_clean_duration_seconds",
            "Time a successful cleaning took, from its start until the slot was written free, by pool",
            self.clean_duration.clone(),
        );
        r.register(
            "berth_worker_clean_failures",
            "Cleaning attempts that failed (counted in the slot record, retried with backoff), by pool",
            self.clean_failures.clone(),
        );
        r.register(
            "berth_worker_store_errors",
            "Failed store calls by pool and kind: retryable (5xx, timeouts: backed off) or fatal (401/403/404, other 4xx: an operator must act); 412s are not counted",
            self.store_errors.clone(),
        );
        r.register(
            "berth_worker_broker_reconnects",
            "Broker connections the process opened again after one was lost",
            self.broker_reconnects.clone(),
        );
        r.register(
            "berth_worker_broker_node",
            "The broker node each connection of the process uses (1), by connection name and node URL without its password",
            self.broker_node.clone(),
        );
        r.register(
            "berth_worker_events_unpublished",
            "Lifecycle events that could not be published (no publish or confirm in time, or refused), by pool",
            self.events_unpublished.clone(),
        );
        r.register(
            "berth_worker_slots",
            "Slot workers holding their slot lock, by pool and the state of their slot's record",
            self.slots.clone(),
        );
        r.register(
            "berth_worker_standby",
            "Slot workers standing by: waiting for a slot lock another worker holds, by pool",
            self.standby.clone(),
        );
        self
    }

    pub(crate) fn claimed(&self, pool: &str) {
        self.claims.get_or_create(&pool_labels(pool)).inc();
    }

    pub(crate) fn released(&self, pool: &str) {
        self.releases.get_or_create(&pool_labels(pool)).inc();
    }

    /// Counts an operator action applied; `action` is one of [`ACTIONS`].
    pub(crate) fn action(&self, pool: &str, action: &'static str) {
        self.actions
            .get_or_create(&ActionLabels {
                pool: pool.to_owned(),
                action,
            })
            .inc();
    }

    pub(crate) fn expired(&self, pool: &str) {
        self.expiries.get_or_create(&pool_labels(pool)).inc();
    }

    pub(crate) fn cleaned(&self, pool: &str, took: Duration) {
        self.clean_duration
            .get_or_create(&pool_labels(pool))
            .observe(took.as_secs_f64());
    }

    pub(crate) fn clean_failed(&self, pool: &str) {
        self.clean_failures.get_or_create(&pool_labels(pool)).inc();
    }

    /// Counts a failed store call; a `412` is no error (it is answered by re-reading).
    pub(crate) fn store_error(&self, pool: &str, err: &StoreError) {
        let kind = if err.is_retryable() {
            "retryable"
        } else if matches!(err, StoreError::Conflict) {
            return;
        } else {
            "fatal"
        };
        self.store_errors
            .get_or_create(&ErrorLabels {
                pool: pool.to_owned(),
                kind,
            })
            .inc();
    }

    pub(crate) fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }

    /// Connection `connection` now goes to broker node `node` (redacted).
    pub(crate) fn broker_node(&self, connection: &str, node: &str) {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(old) = nodes.insert(connection.to_owned(), node.to_owned()) {
            self.broker_node.remove(&NodeLabels {
                connection: connection.to_owned(),
                node: old,
            });
        }
        self.broker_node
            .get_or_create(&NodeLabels {
                connection: connection.to_owned(),
                node: node.to_owned(),
            })
            .set(1);
    }

    pub(crate) fn event_unpublished(&self, pool: &str) {
        self.events_unpublished
            .get_or_create(&pool_labels(pool))
            .inc();
    }

    /// The gauge of slot workers of `pool` standing by.
    pub(crate) fn standby(&self, pool: &str) -> Gauge {
        self.standby.get_or_create(&pool_labels(pool)).clone()
    }

    /// A slot worker's place in `berth_worker_slots`, empty until [`SlotGauge::set`].
    pub(crate) fn slot_gauge(self: &Arc<Self>, pool: &str) -> SlotGauge {
        SlotGauge {
            metrics: Arc::clone(self),
            pool: pool.to_owned(),
            state: None,
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn pool_labels(pool: &str) -> PoolLabels {
    PoolLabels {
        pool: pool.to_owned(),
    }
}

fn state_labels(pool: &str, state: SlotState) -> StateLabels {
    StateLabels {
        pool: pool.to_owned(),
        state: state.to_string(),
    }
}

/// One slot worker counted in `berth_worker_slots` under the state of its record, while it
/// holds the slot lock; it leaves the count when dropped (its session is over).
pub(crate) struct SlotGauge {
    metrics: Arc<Metrics>,
    pool: String,
    state: Option<SlotState>,
}

impl SlotGauge {
    /// Counts the slot worker under `state` (and no longer under the one before).
    pub(crate) fn set(&mut self, state: SlotState) {
        if self.state == Some(state) {
            return;
        }
        self.clear();
        self.metrics
            .slots
            .get_or_create(&state_labels(&self.pool, state))
            .inc();
        self.state = Some(state);
    }

    fn clear(&mut self) {
        if let Some(old) = self.state.take() {
            self.metrics
                .slots
                .get_or_create(&state_labels(&self.pool, old))
                .dec();
        }
    }
}

impl Drop for SlotGauge {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One more on `gauge` while it lives.
pub(crate) struct Raised(Gauge);

impl Raised {
    pub(crate) fn new(gauge: Gauge) -> Raised {
        gauge.inc();
        Raised(gauge)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long a scraper may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (and nothing else: `404`, `405` for another method on it) on
/// `listener` until `cancel` fires, one request per connection. Connections in progress when
/// it fires are finished, for at most [`HEADER_TIMEOUT`].
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: the slot workers matter more; try again.
                    tracing::warn!(error = %err, "metrics: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        let service = hyper::service::service_fn(move |request| {
            let metrics = Arc::clone(&metrics);
            async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            // A scraper that hangs up early is its own business.
            let _ = tokio::time::timeout(HEADER_TIMEOUT * 2, connection).await;
        });
    }
    connections.close();
    let _ = tokio::time::timeout(HEADER_TIMEOUT, connections.wait()).await;
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed: GET /metrics\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    reply(StatusCode::OK, CONTENT_TYPE, metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pool_has_its_series_from_the_start_and_the_text_parses() {
        let metrics = Arc::new(Metrics::new(["ppa"]));
        metrics.claimed("ppa");
        metrics.action("ppa", "reclaim");
        metrics.store_error("ppa", &StoreError::Unavailable { status: 503 });
        metrics.store_error("ppa", &StoreError::Conflict);
        metrics.store_error("ppa", &StoreError::Unauthorized { status: 401 });
        metrics.cleaned("ppa", Duration::from_millis(300));
        let mut gauge = metrics.slot_gauge("ppa");
        gauge.set(SlotState::Used);
        gauge.set(SlotState::Dirty);
        let standing_by = Raised::new(metrics.standby("ppa"));
        metrics.broker_node("w", "amqp://guest@a:5672/%2f");
        metrics.broker_node("w", "amqp://guest@b:5672/%2f");
        let text = metrics.render();
        assert!(!text.contains("@a:5672"), "the node left is gone:\n{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("{e:?}:\n{text}"));
        for line in [
            "berth_worker_claims_total{pool=\"ppa\"} 1",
            "berth_worker_releases_total{pool=\"ppa\"} 0",
            "berth_worker_actions_total{pool=\"ppa\",action=\"reclaim\"} 1",
            "berth_worker_actions_total{pool=\"ppa\",action=\"disable\"} 0",
            "berth_worker_store_errors_total{pool=\"ppa\",kind=\"retryable\"} 1",
            "berth_worker_store_errors_total{pool=\"ppa\",kind=\"fatal\"} 1",
            "berth_worker_clean_duration_seconds_count{pool=\"ppa\"} 1",
            "berth_worker_slots{pool=\"ppa\",state=\"used\"} 0",
            "berth_worker_slots{pool=\"ppa\",state=\"dirty\"} 1",
            "berth_worker_slots{pool=\"ppa\",state=\"free\"} 0",
            "berth_worker_standby{pool=\"ppa\"} 1",
            "berth_worker_broker_reconnects_total 0",
            "berth_worker_broker_node{connection=\"w\",node=\"amqp://guest@b:5672/%2f\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        drop(gauge);
        drop(standing_by);
        let text = metrics.render();
        assert!(text.contains("berth_worker_slots{pool=\"ppa\",state=\"dirty\"} 0"));
        assert!(text.contains("berth_worker_standby{pool=\"ppa\"} 0"));
    }
}
