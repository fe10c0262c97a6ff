//! Reading the history stream `<ns>.history` (DESIGN §3, §6) for `GET /v1/history` and
//! `GET /v1/slots/{slot}/history`: a consumer on a channel of its own, attached at the
//! timestamp of `since`, that reads until the stream's end and keeps the newest `limit`
//! matching events.
//!
//! **The end.** A stream consumer never ends by itself: it waits for new messages. The
//! reader stops once no message has come for [`IDLE`] ([`FIRST_WAIT`] before the first one,
//! which also covers attaching the consumer): the broker sends what the stream holds as fast
//! as the prefetch lets it (whole chunks at a time), so a pause that long means it has
//! nothing more. The queue's message count cannot tell the end instead: a
//! stream's offsets do not start at 0 once retention has cut its head. Every wait is bounded:
//! the whole read by [`READ_DEADLINE`], each broker call by [`BROKER_WAIT`].

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::protocol::{Event, Names, decode};

/// How long without a message means the reader has reached the stream's end.
pub(crate) const IDLE: Duration = Duration::from_millis(500);
/// [`IDLE`] before the first message: the broker first attaches the consumer (finds the
/// chunk of the timestamp), which a loaded broker may take longer for. An answer with no
/// event at all takes this long.
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest a whole read may take; past it the request answers `503`.
pub(crate) const READ_DEADLINE: Duration = Duration::from_secs(10);
/// The longest one broker call (declare, qos, consume, cancel) may take.
const BROKER_WAIT: Duration = Duration::from_secs(5);
/// Messages in flight to the reader (streams over AMQP need a prefetch).
const PREFETCH: u16 = 500;

/// What to read.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// Only this slot's events, when set.
    pub(crate) slot: Option<String>,
    /// Only this pool's events, when set.
    pub(crate) pool: Option<String>,
    /// Only events at or after this time.
    pub(crate) since: DateTime<Utc>,
    /// At most this many, the newest.
    pub(crate) limit: usize,
}

impl Query {
    fn matches(&self, event: &Event) -> bool {
        event.at >= self.since
            && self.slot.as_ref().is_none_or(|slot| *slot == event.slot)
            && self.pool.as_ref().is_none_or(|pool| *pool == event.pool)
    }
}

/// Why the history could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistoryError {
    #[error("the history stream {0:?} does not exist")]
    Missing(String),
    #[error("the history stream did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the broker ended the history read: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended the history read (the stream was deleted, or the connection lost)")]
    Ended,
    #[error("no broker connection")]
    NoBroker,
}

impl HistoryError {
    /// What a person is told (the broker's own words stay in the log).
    pub(crate) fn message(&self) -> String {
        match self {
            HistoryError::Missing(queue) => format!(
                "the history stream {queue:?} does not exist; the assigner and the workers declare it when they connect (it needs RabbitMQ 3.9 or later)"
            ),
            HistoryError::TimedOut(wait) => format!(
                "the history stream was not read within {} s; retry, or ask for a shorter time (\"since\")",
                wait.as_secs()
            ),
            HistoryError::Broker(_) | HistoryError::Ended => {
                "the broker ended the history read (the stream was deleted, or the connection lost); retry in a few seconds".into()
            }
            HistoryError::NoBroker => {
                "the message broker is not reachable right now; retry in a few seconds".into()
            }
        }
    }
}

/// The earliest time of a `since` parameter: RFC 3339 (`2026-11-30T08:00:00Z`) or a duration
/// back from `now` (`90s`, `30m`, `2h`, `1d`, `1h30m`, or plain seconds).
pub(crate) fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let secs = crate::cli::duration::parse_secs(text).map_err(|_| {
        format!("\"since\" is {text:?}; write an RFC 3339 time (2026-11-30T08:00:00Z) or a duration back from now (90s, 30m, 2h, 1d)")
    })?;
    let back = i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .ok_or_else(|| format!("\"since\" is {text:?}: too far back"))?;
    Ok(now
        .checked_sub_signed(back)
        .unwrap_or(DateTime::<Utc>::MIN_UTC))
}

/// Reads the events `query` asks for, oldest first, from `channel` (opened for this read;
/// closed when done).
pub(crate) async fn read(
    channel: Channel,
    names: &Names,
    query: &Query,
) -> Result<Vec<Event>, HistoryError> {
    let answer = tokio::time::timeout(READ_DEADLINE, read_on(&channel, names, query)).await;
    if channel.status().connected() {
        let _ = tokio::time::timeout(BROKER_WAIT, channel.close(200, "history read".into())).await;
    }
    answer.unwrap_or(Err(HistoryError::TimedOut(READ_DEADLINE)))
}

async fn read_on(
    channel: &Channel,
    names: &Names,
    query: &Query,
) -> Result<Vec<Event>, HistoryError> {
    let queue = names.history_queue();
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match bounded(channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()))
        .await?
    {
        Ok(_) => {}
        Err(err) if is_not_found(&err) => return Err(HistoryError::Missing(queue)),
        Err(err) => return Err(err.into()),
    }
    bounded(channel.basic_qos(PREFETCH, BasicQosOptions::default())).await??;
    let mut arguments = FieldTable::default();
    // Seconds, floored: the stream attaches at the chunk of that time or a little before;
    // the events before `since` are filtered out below.
    let since = u64::try_from(query.since.timestamp()).unwrap_or(0);
    arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(since));
    let mut consumer = bounded(channel.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        arguments,
    ))
    .await??;
    let mut kept = VecDeque::with_capacity(query.limit.min(1024));
    let mut wait = FIRST_WAIT;
    loop {
        let delivery = match tokio::time::timeout(wait, consumer.next()).await {
            // The stream's end: nothing more came for a while.
            Err(_) => break,
            Ok(None) => return Err(HistoryError::Ended),
            Ok(Some(delivery)) => delivery?,
        };
        wait = IDLE;
        let ack = BasicAckOptions { multiple: true };
        // Acks only give the consumer credit for more; the stream keeps every message.
        bounded(delivery.ack(ack)).await??;
        match decode::<Event>(&delivery.data) {
            Ok(event) if query.matches(&event) => {
                if kept.len() == query.limit {
                    kept.pop_front();
                }
                kept.push_back(event);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(error = %err, "history: skipped a message that is no event")
            }
        }
    }
    if query.limit == 0 {
        kept.clear();
    }
    let _ = bounded(consumer_cancel(channel, &consumer)).await;
    Ok(kept.into())
}

async fn consumer_cancel(channel: &Channel, consumer: &lapin::Consumer) -> lapin::Result<()> {
    channel
        .basic_cancel(
            consumer.tag(),
            lapin::options::BasicCancelOptions::default(),
        )
        .await
}

async fn bounded<T>(op: impl Future<Output = T>) -> Result<T, HistoryError> {
    tokio::time::timeout(BROKER_WAIT, op)
        .await
        .map_err(|_| HistoryError::TimedOut(BROKER_WAIT))
}

/// Whether the broker answered `NOT_FOUND` (404: no such queue).
fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventKind;

    fn event(slot: &str, pool: &str, at: &str) -> Event {
        Event {
            v: 1,
            event: EventKind::Assigned,
            pool: pool.into(),
            slot: slot.into(),
            owner: None,
            at: at.parse().unwrap(),
            by: None,
            reason: None,
        }
    }

    #[test]
    fn since_takes_rfc3339_and_durations() {
        let now: DateTime<Utc> = "2026-11-30T12:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_since("1d", now), Ok(at("2026-11-29T12:00:00Z")));
        assert_eq!(parse_since("2h", now), Ok(at("2026-11-30T10:00:00Z")));
        assert_eq!(parse_since("90", now), Ok(at("2026-11-30T11:58:30Z")));
        assert_eq!(
            parse_since("2026-11-30T09:00:00+01:00", now),
            Ok(at("2026-11-30T08:00:00Z"))
        );
        for bad in ["", "yesterday", "1w", "2026-11-30"] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("since"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_query_keeps_its_slot_pool_and_time() {
        let query = Query {
            slot: Some("a".into()),
            pool: None,
            since: "2026-01-01T00:00:00Z".parse().unwrap(),
            limit: 10,
        };
        assert!(query.matches(&event("a", "p", "2026-01-01T00:00:00Z")));
        assert!(!query.matches(&event("b", "p", "2026-01-02T00:00:00Z")));
        assert!(!query.matches(&event("a", "p", "2025-12-31T23:59:59Z")));
        let pool = Query {
            slot: None,
            pool: Some("p".into()),
            ..query
        };
        assert!(pool.matches(&event("b", "p", "2026-01-02T00:00:00Z")));
        assert!(!pool.matches(&event("b", "q", "2026-01-02T00:00:00Z")));
    }
}
