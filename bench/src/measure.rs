//! Closed-loop load: `clients` tasks each run an operation back to back for a while; the
//! latencies they report are summarised as percentiles.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            millis(samples[rank - 1])
        };
        Summary {
            count: samples.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: millis(*samples.last().unwrap_or(&Duration::ZERO)),
        }
    }
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a closed loop saw.
#[derive(Debug, Clone, Serialize)]
pub struct LoopResult {
    pub clients: usize,
    pub latency: Summary,
    /// Operations completed per second over the run.
    pub per_sec: f64,
    pub errors: usize,
    /// The first error seen, to tell what went wrong.
    pub first_error: Option<String>,
}

/// The raw outcome of one closed loop, to be merged with others ([`LoopResult::of`]).
pub(crate) struct Run {
    samples: Vec<Duration>,
    errors: Vec<String>,
    elapsed: Duration,
}

impl LoopResult {
    /// The summary of `runs` (slices of one phase) of `clients` clients.
    pub(crate) fn of(clients: usize, runs: Vec<Run>) -> LoopResult {
        let elapsed: Duration = runs.iter().map(|r| r.elapsed).sum();
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        for run in runs {
            samples.extend(run.samples);
            errors.extend(run.errors);
        }
        LoopResult {
            clients,
            per_sec: samples.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            latency: Summary::of(samples),
            errors: errors.len(),
            first_error: errors.into_iter().next(),
        }
    }
}

/// Runs `op(client)` back to back on `clients` tasks for `duration` and summarises it.
pub(crate) async fn closed_loop<F, Fut>(clients: usize, duration: Duration, op: F) -> LoopResult
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, String>> + Send,
{
    LoopResult::of(clients, vec![closed_loop_run(clients, duration, op).await])
}

/// Runs `op(client)` back to back on `clients` tasks for `duration` (an operation in flight
/// at the end is finished and counted). `op` answers the latency to record.
pub(crate) async fn closed_loop_run<F, Fut>(clients: usize, duration: Duration, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, String>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut errors = Vec::new();
                while Instant::now() < until {
                    match op(client).await {
                        Ok(latency) => samples.push(latency),
                        Err(err) => {
                            errors.push(err);
                            // Do not spin on a broken stack.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok((s, e)) => {
                samples.extend(s);
                errors.extend(e);
            }
            Err(err) => errors.push(format!("client task failed: {err}")),
        }
    }
    Run {
        samples,
        errors,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(samples);
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        let one = Summary::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Summary::of(Vec::new()).count, 0);
    }
}
