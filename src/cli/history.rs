//! `berth history` (the history stream, read by the assigner: DESIGN §4, §6) and
//! `berth events` (the live events, straight from the broker).
//!
//! `berth events` binds a server-named, exclusive, auto-delete queue of its own to the
//! events exchange and consumes it without acks ([`crate::broker::private_queue`]), rather
//! than reading the history stream from `"next"`: it works without the stream (a broker
//! older than 3.9, a stream deleted or declared with other arguments), needs no prefetch or
//! acks, and its queue goes with its connection, so a follower that dies leaves nothing
//! behind on the broker.

use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

use super::{ClientArgs, fail};
use crate::config::ConfigArgs;
use crate::protocol::{Event, decode};

/// How `history` and `events` print: a line per event for people, or JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    Text,
    Json,
}

/// Flags of `berth history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Only this slot's events (default: every slot's).
    pub slot: Option<String>,
    /// Only this pool's events (without a slot).
    #[arg(long, env = "BERTH_POOL", conflicts_with = "slot")]
    pub pool: Option<String>,
    /// From when: a duration back from now (90s, 30m, 2h, 1d) or an RFC 3339 time;
    /// default 1d.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many events, the newest (default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<usize>,
    /// `text`: a line per event, oldest first; `json`: the API's list.
    #[arg(long, value_enum, default_value_t = EventFormat::Text)]
    pub format: EventFormat,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags of `berth events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only this pool's events.
    #[arg(long, env = "BERTH_POOL")]
    pub pool: Option<String>,
    /// `text`: a line per event; `json`: the event's JSON, a line each.
    #[arg(long, value_enum, default_value_t = EventFormat::Text)]
    pub format: EventFormat,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `berth history`.
pub async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let answer = args
        .client
        .client()?
        .history(
            args.slot.as_deref(),
            args.pool.as_deref(),
            args.since.as_deref(),
            args.limit,
        )
        .await;
    match answer {
        Ok(events) => {
            match args.format {
                EventFormat::Json => println!("{}", serde_json::to_string(&events)?),
                EventFormat::Text => {
                    for event in &events {
                        println!("{}", line(event));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(fail(&err)),
    }
}

/// `berth events`: follows the live events until SIGINT or SIGTERM, a line each. Says
/// `following …` on stderr once its queue is bound: every event published after that line
/// is printed. When it loses the broker it says so and follows again on the next node that
/// answers (its queue is new: the events meanwhile are missed; `berth history` has them).
pub async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let names = config.names();
    let cancel = crate::shutdown::signal();
    let brokers = crate::cluster::Brokers::new(config.broker_urls(), config.broker_tls()?);
    // The first connection must work: a wrong URL or password is said at once.
    let mut connected = Some(brokers.connect("berth-events").await?);
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        crate::broker::RECONNECT_MAX,
    );
    loop {
        let connection = match connected.take() {
            Some(connected) => connected.connection,
            None => match brokers.connect_with_backoff("berth-events", &cancel).await {
                Some(connected) => connected.connection,
                None => return Ok(ExitCode::SUCCESS),
            },
        };
        let followed = follow(&args, &names, &connection, &cancel).await;
        let _ = connection.close(200, "berth events stopping".into()).await;
        match followed {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {
                eprintln!("berth: lost the broker; following again on the next node that answers")
            }
            Err(err) => eprintln!(
                "berth: lost the broker ({err}); following again on the next node that answers"
            ),
        }
        if !crate::backoff::pause(&cancel, backoff.next_delay()).await {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Follows the events on `connection` until `cancel` fires or the reader goes (the exit
/// code), or the broker ends the stream (`None`).
async fn follow(
    args: &EventsArgs,
    names: &crate::protocol::Names,
    connection: &lapin::Connection,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<ExitCode>> {
    let channel = connection.create_channel().await?;
    crate::broker::declare_common(&channel, names).await?;
    let (queue, mut consumer) = crate::broker::private_queue(&channel).await?;
    let key = match &args.pool {
        Some(pool) => format!("{pool}.#"),
        None => "#".to_owned(),
    };
    channel
        .queue_bind(
            queue.as_str().into(),
            names.events_exchange().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "berth: following the events of {} ({key}); Ctrl-C stops",
        names.events_exchange()
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(Some(ExitCode::SUCCESS)),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => match decode::<Event>(&delivery.data) {
                    Ok(event) => {
                        let text = match args.format {
                            EventFormat::Json => serde_json::to_string(&event)?,
                            EventFormat::Text => line(&event),
                        };
                        // Whoever read the output is gone (`berth events | head -1`): done.
                        if writeln!(std::io::stdout(), "{text}").is_err() {
                            return Ok(Some(ExitCode::SUCCESS));
                        }
                    }
                    Err(err) => eprintln!("berth: skipped a message that is no event: {err}"),
                },
                Some(Err(err)) => return Err(err.into()),
                None => return Ok(None),
            }
        }
    }
}

/// One event as a line: time, slot, pool, event, then owner, by and reason when there are.
pub(crate) fn line(event: &Event) -> String {
    let mut line = format!(
        "{}  {}  {}  {}",
        event
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event.slot,
        event.pool,
        event.event.as_str()
    );
    if let Some(owner) = &event.owner {
        line.push_str(&format!("  owner={owner}"));
    }
    if let Some(by) = &event.by {
        line.push_str(&format!("  by={by}"));
    }
    if let Some(reason) = &event.reason {
        line.push_str(&format!("  reason={reason:?}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventKind;

    #[test]
    fn a_line_names_what_there_is() {
        let mut event = Event {
            v: 1,
            event: EventKind::Disabled,
            pool: "ppa".into(),
            slot: "ppa-1".into(),
            owner: None,
            at: "2026-11-30T12:00:00Z".parse().unwrap(),
            by: Some("ops".into()),
            reason: Some("broken PPA".into()),
        };
        assert_eq!(
            line(&event),
            "2026-11-30T12:00:00.000Z  ppa-1  ppa  disabled  by=ops  reason=\"broken PPA\""
        );
        event.event = EventKind::Assigned;
        event.owner = Some("ci".into());
        event.by = None;
        event.reason = None;
        assert_eq!(
            line(&event),
            "2026-11-30T12:00:00.000Z  ppa-1  ppa  assigned  owner=ci"
        );
    }
}
