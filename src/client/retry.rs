//! The retry policy of the [`Client`](super::Client): what is temporary is tried again,
//! after the pause the assigner asks for (`Retry-After`) or a jittered backoff, until the
//! caller's time budget is spent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::ClientError;
use crate::backoff::Backoff;

/// Shortest and longest pause between tries when the assigner does not say how long.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a client tells its caller when it is about to try again.
#[derive(Debug, Clone)]
pub struct Retrying {
    /// The call: `acquire`, `renew`, `release` or `status`.
    pub call: &'static str,
    /// 1 for the first retry of this call, 2 for the second, …
    pub attempt: u32,
    /// Why the last try failed.
    pub reason: String,
    /// The pause before the next try.
    pub delay: Duration,
    /// How long the call may still go on retrying.
    pub remaining: Duration,
}

/// Called before each retry (the CLI prints the first one of each call on stderr).
pub(crate) type Notify = Arc<dyn Fn(&Retrying) + Send + Sync>;

/// Runs `attempt` until it succeeds, fails for good, or the next try would start after
/// `deadline`. `attempt` gets the try's number (0 first) and the deadline, so it can ask the
/// assigner to wait no longer than the budget allows.
pub(crate) async fn retrying<T, F, Fut>(
    call: &'static str,
    deadline: Instant,
    notify: &Notify,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut(u32, Instant) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut tries = 0;
    loop {
        let err = match attempt(tries, deadline).await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_temporary() => err,
            Err(err) => return Err(err),
        };
        let delay = match &err {
            // The wait itself was the pause: ask again at once while time is left.
            err if err.is_no_slot() => Duration::ZERO,
            ClientError::Api {
                retry_after: Some(secs),
                ..
            } => Duration::from_secs(*secs),
            _ => backoff.next_delay(),
        };
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        // A `no_slot` with less than a second left: the wait is over.
        let worth_it = if err.is_no_slot() {
            remaining >= Duration::from_secs(1)
        } else {
            delay < remaining
        };
        if !worth_it {
            return Err(err);
        }
        tries += 1;
        if !err.is_no_slot() {
            notify(&Retrying {
                call,
                attempt: tries,
                reason: err.to_string(),
                delay,
                remaining,
            });
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn unavailable(retry_after: Option<u64>) -> ClientError {
        ClientError::Api {
            status: 503,
            code: "broker_unavailable".into(),
            message: "down".into(),
            retry_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_temporary_failures_within_the_budget() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let notify: Notify = {
            let seen = Arc::clone(&seen);
            Arc::new(move |r: &Retrying| seen.lock().unwrap().push(r.attempt))
        };
        let started = Instant::now();
        let result = retrying(
            "acquire",
            started + Duration::from_secs(10),
            &notify,
            |n, _| async move {
                if n < 3 {
                    Err(unavailable(Some(2)))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(6),
            "Retry-After is honoured"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_budget_is_spent_or_the_failure_is_final() {
        let notify: Notify = Arc::new(|_: &Retrying| {});
        let started = Instant::now();
        let result: Result<(), _> = retrying(
            "renew",
            started + Duration::from_secs(5),
            &notify,
            |_, _| async { Err(unavailable(Some(2))) },
        )
        .await;
        assert!(result.unwrap_err().is_temporary());
        assert!(started.elapsed() <= Duration::from_secs(5));
        let mut tries = 0;
        let result: Result<(), _> = retrying(
            "renew",
            Instant::now() + Duration::from_secs(60),
            &notify,
            |_, _| {
                tries += 1;
                async {
                    Err(ClientError::Api {
                        status: 409,
                        code: "not_held".into(),
                        message: "gone".into(),
                        retry_after: None,
                    })
                }
            },
        )
        .await;
        assert!(result.unwrap_err().is_lease_lost());
        assert_eq!(tries, 1, "a final answer is not retried");
    }
}
