//! Prometheus metrics of the assigner, in the text exposition format. Few enough to keep by
//! hand: acquire latency, outcomes by status code, requests waiting, releases of replies
//! nobody could take.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds (seconds) of the acquire latency buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 120.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The assigner's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    latency: Mutex<Histogram>,
    /// (endpoint, status code) → count.
    outcomes: Mutex<BTreeMap<(&'static str, u16), u64>>,
    abandoned_replies: AtomicU64,
}

impl Metrics {
    /// Counts one answer of `endpoint`; for acquire, also its latency.
    pub(crate) fn record(&self, endpoint: &'static str, code: u16, elapsed: Duration) {
        *lock(&self.outcomes).entry((endpoint, code)).or_default() += 1;
        if endpoint == "acquire" {
            let secs = elapsed.as_secs_f64();
            let mut h = lock(&self.latency);
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub(crate) fn abandoned_reply(&self) {
        self.abandoned_replies.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `waiting` is the number of acquires waiting right now.
    pub(crate) fn render(&self, waiting: usize, broker_up: bool) -> String {
        let mut out = String::new();
        let h = lock(&self.latency);
        out.push_str(
            "# HELP berth_acquire_duration_seconds Time from an acquire request to its answer.\n",
        );
        out.push_str("# TYPE berth_acquire_duration_seconds histogram\n");
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                out,
                "berth_acquire_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "berth_acquire_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "berth_acquire_duration_seconds_sum {}", h.sum);
        let _ = writeln!(out, "berth_acquire_duration_seconds_count {}", h.count);
        drop(h);
        out.push_str(
            "# HELP berth_requests_total Answers of the slot API by endpoint and status code.\n",
        );
        out.push_str("# TYPE berth_requests_total counter\n");
        for ((endpoint, code), n) in lock(&self.outcomes).iter() {
            let _ = writeln!(
                out,
                "berth_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP berth_acquire_waiting Acquire requests waiting for a slot.\n");
        out.push_str("# TYPE berth_acquire_waiting gauge\n");
        let _ = writeln!(out, "berth_acquire_waiting {waiting}");
        out.push_str("# HELP berth_abandoned_replies_total Assign replies nobody could take (released at once).\n");
        out.push_str("# TYPE berth_abandoned_replies_total counter\n");
        let _ = writeln!(
            out,
            "berth_abandoned_replies_total {}",
            self.abandoned_replies.load(Ordering::Relaxed)
        );
        out.push_str("# HELP berth_broker_up Whether the assigner is connected to the broker.\n");
        out.push_str("# TYPE berth_broker_up gauge\n");
        let _ = writeln!(out, "berth_broker_up {}", u8::from(broker_up));
        out
    }
}

/// The `endpoint` label of the slot API's routes; the other routes are not counted.
fn endpoint(route: &str) -> Option<&'static str> {
    match route {
        "/v1/pools/{pool}/acquire" => Some("acquire"),
        "/v1/slots/{slot}/renew" => Some("renew"),
        "/v1/slots/{slot}/release" => Some("release"),
        _ => None,
    }
}

/// Middleware counting every answer of the slot API (all `POST`) by endpoint and status
/// code, and timing acquires.
pub(crate) async fn record_answers(
    State(metrics): State<Arc<Metrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = route
        .filter(|_| request.method() == Method::POST)
        .and_then(|route| endpoint(route.as_str()));
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(endpoint) = endpoint {
        metrics.record(endpoint, response.status().as_u16(), started.elapsed());
    }
    response
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.record("acquire", 200, Duration::from_millis(30));
        m.record("acquire", 503, Duration::from_secs(3));
        m.record("release", 202, Duration::from_millis(1));
        let text = m.render(2, true);
        assert!(
            text.contains("berth_acquire_duration_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_acquire_duration_seconds_bucket{le=\"5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_acquire_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_requests_total{endpoint=\"acquire\",code=\"503\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_requests_total{endpoint=\"release\",code=\"202\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("berth_acquire_waiting 2\n"), "{text}");
    }
}
