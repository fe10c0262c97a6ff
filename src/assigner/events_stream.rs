//! `GET /v1/events/stream`: the live feed ([`super::feed`]) as Server-Sent Events, one
//! stream per open page, all fed by the assigner's one broker consumer.
//!
//! Events of the stream:
//! - `feed`: `{"up":true|false}`, first thing sent, then whenever the broker feed goes up or
//!   down (while down, events are missed: the page re-reads `/v1/slots` when it is back);
//! - `slot`: one lifecycle event (the JSON of the history, DESIGN §6);
//! - `resync`: `{}`, the page fell more than [`super::feed::CAPACITY`] items behind and
//!   missed some: it re-reads `/v1/slots`.
//!
//! A comment line every [`KEEP_ALIVE`] keeps proxies from closing an idle stream. Streams end
//! when the assigner begins to stop, so that they do not hold its shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::feed::Item;

/// How often an idle stream sends a comment line.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The live events, as Server-Sent Events.
#[utoipa::path(get, path = "/v1/events/stream", responses(
    (status = 200, description = "Server-Sent Events: `feed` (`{\"up\":bool}`, first, then on every change), `slot` (one lifecycle event, as in the history), `resync` (events were missed: re-read `/v1/slots`)", body = String, content_type = "text/event-stream"),
))]
pub(crate) async fn events_stream(State(app): State<Arc<AppState>>) -> Response {
    let (receiver, up) = app.feed.subscribe();
    let stopping = app.shutdown.clone().cancelled_owned();
    let stream = events(receiver, up).take_until(stopping);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// The feed's state now, then every item the feed broadcasts.
fn events(receiver: Receiver<Item>, up: bool) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let first = futures::stream::once(async move { Ok(feed_event(up)) });
    let rest = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(Item::Event(json)) => SseEvent::default().event("slot").data(&*json),
            Ok(Item::Up(up)) => feed_event(up),
            // Behind by more than the channel keeps: the items missed are gone; the page
            // re-reads the store instead. The receiver goes on from the oldest item kept.
            Err(RecvError::Lagged(_)) => SseEvent::default().event("resync").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    first.chain(rest)
}

fn feed_event(up: bool) -> SseEvent {
    SseEvent::default().event("feed").data(if up {
        r#"{"up":true}"#
    } else {
        r#"{"up":false}"#
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::broadcast;

    use super::*;
    use crate::assigner::feed::CAPACITY;

    /// What a stream sends, as `event:` and `data:` text.
    async fn next_text(
        stream: &mut (impl Stream<Item = Result<SseEvent, Infallible>> + Unpin),
    ) -> String {
        let event = stream.next().await.expect("an event").unwrap();
        let sse = Sse::new(futures::stream::iter([Ok::<_, Infallible>(event)]));
        let body = sse.into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_stream_says_the_feed_then_forwards_events() {
        let (sender, receiver) = broadcast::channel(CAPACITY);
        let mut stream = Box::pin(events(receiver, false));
        assert_eq!(
            next_text(&mut stream).await,
            "event: feed\ndata: {\"up\":false}\n\n"
        );
        sender.send(Item::Up(true)).unwrap();
        sender
            .send(Item::Event(r#"{"slot":"ppa-1"}"#.into()))
            .unwrap();
        assert_eq!(
            next_text(&mut stream).await,
            "event: feed\ndata: {\"up\":true}\n\n"
        );
        assert_eq!(
            next_text(&mut stream).await,
            "event: slot\ndata: {\"slot\":\"ppa-1\"}\n\n"
        );
        drop(sender);
        assert!(
            stream.next().await.is_none(),
            "the stream ends with the feed"
        );
    }

    /// A page that does not read is not buffered for: past the channel's capacity it misses
    /// the oldest items and is told to re-read, then goes on with what the channel kept.
    #[tokio::test]
    async fn a_slow_stream_is_told_to_resync_instead_of_buffering() {
        let (sender, receiver) = broadcast::channel(CAPACITY);
        let mut stream = Box::pin(events(receiver, true));
        next_text(&mut stream).await;
        for n in 0..CAPACITY * 4 {
            sender
                .send(Item::Event(format!("{{\"n\":{n}}}").into()))
                .unwrap();
        }
        assert_eq!(
            sender.len(),
            CAPACITY,
            "the channel keeps its capacity, no more"
        );
        assert_eq!(next_text(&mut stream).await, "event: resync\ndata: {}\n\n");
        assert_eq!(
            next_text(&mut stream).await,
            format!("event: slot\ndata: {{\"n\":{}}}\n\n", CAPACITY * 3)
        );
    }
}
