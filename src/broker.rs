//! Shared RabbitMQ plumbing: connecting, declaring the topology with the same arguments
//! everywhere (DESIGN §3) and dead-lettering refused messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind, Queue};

use crate::protocol::QueueType;
use crate::protocol::{MAX_PRIORITY, Names, REASON_HEADER};

/// Delivery mode 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;

/// The largest AMQP frame berth asks for, unless the URL sets `frame_max`. berth's messages
/// are a few hundred bytes, and lapin keeps 32 frames of buffer each way per connection: at
/// RabbitMQ's default of 128 KiB that is 8 MiB of memory per connection, at 16 KiB 1 MiB.
pub const FRAME_MAX: u32 = 16 * 1024;

/// The AMQP heartbeat berth asks for, in seconds, unless the URL sets `heartbeat` (the
/// `heartbeat_secs` setting puts it there: [`crate::config::Config::broker_urls`]). The broker
/// closes a connection that stayed silent for about two heartbeats, which ends its exclusive
/// consumers: that is how a stalled or cut-off slot lock holder loses the lock, and how long
/// its standby waits. RabbitMQ's own default is 60 s.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How long opening a connection may take (TCP, TLS and the AMQP handshake), unless the
/// URL sets `connection_timeout` (milliseconds).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest pause between two tries to reach the broker again after losing it: a process
/// is back within about this long after the broker accepts connections again.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How `amqps://` connections check the broker's certificate: against the system's roots,
/// and the CA certificates of `amqp_ca_file` when one is configured. `amqp://` URLs ignore
/// it, so one setting serves a list of URLs of either scheme. The scheme decides: an
/// `amqps://` URL never falls back to plain text.
#[derive(Debug, Clone, Default)]
pub struct BrokerTls {
    /// PEM text of the extra CA certificates.
    ca_pem: Option<Arc<str>>,
}

/// Why a CA file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read the CA file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
}

impl BrokerTls {
    /// The system's roots only.
    pub fn system_roots() -> BrokerTls {
        BrokerTls::default()
    }

    /// The system's roots and the CA certificates (PEM) of `path`, read now: a missing or
    /// empty file is an error at start, not at the first connection.
    pub fn with_ca_file(path: &Path) -> Result<BrokerTls, CaFileError> {
        let pem = std::fs::read_to_string(path).map_err(|source| CaFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(CaFileError::NoCertificate {
                path: path.to_owned(),
            });
        }
        Ok(BrokerTls {
            ca_pem: Some(pem.into()),
        })
    }

    fn lapin_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.as_deref().map(str::to_owned),
        }
    }
}

/// Opens one connection named `name` (shown in the management UI), checking an `amqps://`
/// broker against the system's roots only. See [`connect_with`].
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    connect_with(url, &BrokerTls::system_roots(), name).await
}

/// Opens one connection named `name` (shown in the management UI): TLS for `amqps://`
/// (certificate checked as `tls` says), plain TCP for `amqp://`. Every connection of berth
/// (assigner, workers, `berth events`, bench, tests) is opened here.
pub async fn connect_with(
    url: &str,
    tls: &BrokerTls,
    name: &str,
) -> Result<Connection, ConnectError> {
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    let mut uri = match url.parse::<AMQPUri>() {
        Ok(uri) => uri,
        // lapin says what is wrong with it.
        Err(_) => {
            return Connection::connect(url, props)
                .await
                .map_err(|error| ConnectError::Amqp { error, hint: "" });
        }
    };
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    let tls_scheme = uri.scheme == AMQPScheme::AMQPS;
    let limit = uri
        .query
        .connection_timeout
        .map(Duration::from_millis)
        .unwrap_or(CONNECT_TIMEOUT);
    let runtime = lapin::runtime::default_runtime()
        .map_err(|error| ConnectError::Amqp { error, hint: "" })?;
    let connecting = Connection::connect_uri_with_config(uri, props, tls.lapin_config(), runtime);
    // lapin applies no limit (not even the URL's `connection_timeout`): a handshake that
    // the other end never answers would hang.
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(ConnectError::new(source, tls_scheme)),
        Err(_) => Err(ConnectError::TimedOut {
            limit,
            hint: hint(tls_scheme),
        }),
    }
}

/// Why a connection to the broker could not be opened. Never holds the URL (which may hold
/// a password).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `error` is not a `source`: its text is already in this one's.
    #[error("{error}{hint}")]
    Amqp {
        error: lapin::Error,
        hint: &'static str,
    },
    #[error("no AMQP handshake within {limit:?}{hint}")]
    TimedOut { limit: Duration, hint: &'static str },
}

impl ConnectError {
    fn new(error: lapin::Error, tls_scheme: bool) -> ConnectError {
        let hint = match error.kind() {
            // The broker hung up before the AMQP handshake: a TLS port reading our plain
            // protocol header, most often.
            lapin::ErrorKind::IOError(_)
            | lapin::ErrorKind::ParsingError(_)
            | lapin::ErrorKind::InvalidConnectionState(_)
            | lapin::ErrorKind::InvalidProtocolVersion(_) => hint(tls_scheme),
            _ => "",
        };
        ConnectError::Amqp { error, hint }
    }
}

/// What an interrupted handshake most likely means, given the URL's scheme.
fn hint(tls_scheme: bool) -> &'static str {
    if tls_scheme {
        " (amqps:// URL: TLS failed; is this port a TLS listener, and does the broker's certificate verify against the system roots or amqp_ca_file?)"
    } else {
        " (amqp:// URL: if this port is a TLS listener, use amqps://)"
    }
}

/// The options every durable queue of berth is declared with.
fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the events exchange (durable, topic).
async fn declare_events(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            names.events_exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The arguments the dead-letter queue is declared with, the same everywhere: of the
/// deployment's queue type (every process declares it before it does anything else, so on a
/// cluster a classic one would stop them all while its node is down), bounded by
/// `x-max-length`, the oldest message dropped first.
pub fn dead_letter_arguments(names: &Names) -> FieldTable {
    let mut arguments = queue_arguments(names.queue_type());
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::try_from(names.dead_letter_max_length()).unwrap_or(i64::MAX)),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    arguments
}

/// Declares the events exchange and the dead-letter queue. A dead-letter queue that exists
/// with another bound (`dead_letter_max_length` changed) is refused by the broker: the error
/// is logged with what to run, and returned.
pub async fn declare_common(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    declare_events(channel, names).await?;
    let queue = names.dead_queue();
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            durable(),
            dead_letter_arguments(names),
        )
        .await;
    if let Err(err) = &declared
        && err.to_string().contains("PRECONDITION_FAILED")
    {
        tracing::error!(error = %err, queue = %queue,
            max_length = names.dead_letter_max_length(),
            "the dead-letter queue exists with another x-max-length; set dead_letter_max_length \
             back, or read what it holds and run `rabbitmqctl delete_queue {queue}`");
    }
    declared?;
    Ok(())
}

/// The arguments the history stream is declared with, the same everywhere (a declare with
/// other arguments is refused by the broker).
pub fn history_arguments(names: &Names) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert(
        "x-max-age".into(),
        AMQPValue::LongString(names.history_max_age().to_owned().into()),
    );
    arguments.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(names.history_max_bytes()).unwrap_or(i64::MAX)),
    );
    arguments
}

/// Declares the history stream `<ns>.history` and binds it to the events exchange with `#`
/// (DESIGN §3, §6), on `channel`, which the caller opens for this alone and this closes: a
/// broker that refuses the declare (arguments that differ from the existing stream's, a
/// broker older than 3.9) closes the channel, and that must not cost the caller the
/// channel it works on. Callers log a failure and go on: the history is a convenience,
/// the events and the store are not held up by it.
pub async fn declare_history(channel: Channel, names: &Names) -> Result<(), lapin::Error> {
    let declared = async {
        // The exchange first: the binding needs it, and this may be the process's first
        // declare on the broker.
        declare_events(&channel, names).await?;
        channel
            .queue_declare(
                names.history_queue().into(),
                durable(),
                history_arguments(names),
            )
            .await?;
        channel
            .queue_bind(
                names.history_queue().into(),
                names.events_exchange().into(),
                "#".into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
    .await;
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    declared
}

/// The arguments of berth's durable queues of type `queue_type`, but for the pool queues
/// ([`pool_queue_arguments`]): none on a classic queue (as before there was a choice), and
/// `x-queue-type = quorum` on a quorum queue. A declare with other arguments than the
/// queue's is refused, so every process declares with these.
pub fn queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    arguments
}

/// The arguments every pool queue is declared with (DESIGN §3 "Priority"), the one place
/// they are decided: on `classic` a priority queue, `x-max-priority` = [`MAX_PRIORITY`] (the
/// broker orders by the message's `priority` property, FIFO within one); on `quorum` a
/// quorum queue (`x-queue-type: quorum`) per priority, which has no priorities of its own on
/// RabbitMQ 3.x. A queue's arguments cannot change once it exists: a change here needs new
/// queue names ([`Names::assign_queue_for`]).
pub fn pool_queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    match queue_type {
        QueueType::Classic => arguments.insert(
            "x-max-priority".into(),
            AMQPValue::LongInt(i32::from(MAX_PRIORITY)),
        ),
        QueueType::Quorum => arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        ),
    };
    arguments
}

/// Declares the assign queues of `pool` (on `quorum` one per priority); the answer is the
/// priority-0 queue's, which tells its depth and consumers.
pub async fn declare_pool_queue(
    channel: &Channel,
    names: &Names,
    pool: &str,
) -> Result<Queue, lapin::Error> {
    let arguments = pool_queue_arguments(names.queue_type());
    let mut queues = names.assign_queues(pool);
    // The priority-0 queue last, for its answer.
    let last = queues.pop().expect("a pool has at least one queue");
    for queue in queues {
        channel
            .queue_declare(queue.as_str().into(), durable(), arguments.clone())
            .await?;
    }
    channel
        .queue_declare(last.as_str().into(), durable(), arguments)
        .await
}

/// Deletes `pool`'s retired queue ([`Names::retired_assign_queue`], declared by berth before
/// priorities) if it is empty and nobody consumes it, on `channel`, which the caller opens
/// for this alone (a refused delete closes its channel). `Ok(true)`: it is gone (deleted now, or not there: RabbitMQ
/// answers a delete of a missing queue with delete-ok); `Ok(false)`: it is still there,
/// holding requests or consumed by an older worker process (DESIGN §3 "Priority").
pub async fn delete_retired_pool_queue(
    channel: Channel,
    names: &Names,
    pool: &str,
) -> Result<bool, lapin::Error> {
    let options = QueueDeleteOptions {
        if_unused: true,
        if_empty: true,
        ..QueueDeleteOptions::default()
    };
    let deleted = channel
        .queue_delete(names.retired_assign_queue(pool).into(), options)
        .await;
    match deleted {
        Ok(_) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(true)
        }
        // PRECONDITION_FAILED: not empty, or in use. The broker closed the channel.
        Err(err) if err.is_amqp_soft_error() => Ok(false),
        Err(err) => Err(err),
    }
}

/// Declares the control queue of `slot` (of the deployment's queue type); the answer tells
/// its depth and consumers.
pub async fn declare_slot_queue(
    channel: &Channel,
    names: &Names,
    slot: &str,
) -> Result<Queue, lapin::Error> {
    channel
        .queue_declare(
            names.slot_queue(slot).into(),
            durable(),
            queue_arguments(names.queue_type()),
        )
        .await
}

/// Declares the lock queue of `slot` (DESIGN §3 "Slot lock"): classic whatever the
/// deployment's queue type, because only a classic queue refuses a second exclusive
/// consumer; transient, so that it goes with its node and a standby declares it again on its
/// own; auto-delete, so that it goes when its holder lets go, and the next holder declares it
/// on the node it is connected to. Nothing is ever published to it.
pub async fn declare_lock_queue(
    channel: &Channel,
    names: &Names,
    slot: &str,
) -> Result<Queue, lapin::Error> {
    let options = QueueDeclareOptions {
        durable: false,
        exclusive: false,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    channel
        .queue_declare(names.lock_queue(slot).into(), options, arguments)
        .await
}

/// Properties of a JSON message body.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// Moves a refused message to `<ns>.dead` with `reason` in its `x-berth-reason` header, then
/// acks the original so it never comes back to its queue. If the copy cannot be published,
/// the original is left unacked (it is redelivered later) rather than lost.
pub async fn dead_letter(
    channel: &Channel,
    names: &Names,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), lapin::Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(reason.to_owned().into()),
    );
    headers.insert(
        "x-berth-original-queue".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().to_owned().into()),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    let body = scrub_lease_tokens(&delivery.data);
    channel
        .basic_publish(
            ShortString::from(""),
            names.dead_queue().into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?
        .await?;
    delivery.ack(BasicAckOptions::default()).await?;
    tracing::warn!(
        reason,
        queue = delivery.routing_key.as_str(),
        "refused a message; moved it to the dead-letter queue"
    );
    Ok(())
}

/// `body` with the value of every `"lease_token": "…"` replaced by `sha256:<hex>` of it, as
/// the slot record's `lease_sha256` holds it: a dead-lettered copy shows which lease it was
/// about, and gives no one the lease. Found in the text, so a body that is not valid JSON
/// (one reason for refusing it) is scrubbed too.
pub fn scrub_lease_tokens(body: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"lease_token\"";
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = find(rest, KEY) {
        let (before, after) = rest.split_at(at + KEY.len());
        out.extend_from_slice(before);
        // `: "value"`, with any blanks around the colon.
        let colon = after.iter().position(|b| !b.is_ascii_whitespace());
        let Some(colon) = colon.filter(|&i| after[i] == b':') else {
            rest = after;
            continue;
        };
        let open = after[colon + 1..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|i| colon + 1 + i);
        let Some(open) = open.filter(|&i| after[i] == b'"') else {
            rest = after;
            continue;
        };
        // The closing quote: the first one not escaped (a token is hex, but a refused body
        // may hold anything).
        let mut close = None;
        let mut i = open + 1;
        while i < after.len() {
            match after[i] {
                b'\\' => i += 2,
                b'"' => {
                    close = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        let end = close.unwrap_or(after.len());
        let token = String::from_utf8_lossy(&after[open + 1..end.min(after.len())]);
        out.extend_from_slice(&after[..=open]);
        out.extend_from_slice(format!("sha256:{}", crate::lease::token_hash(&token)).as_bytes());
        match close {
            Some(close) => rest = &after[close..],
            None => {
                out.push(b'"');
                rest = &[];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Declares a server-named, exclusive, auto-delete queue and consumes it without acks: the
/// private inbox of one connection (the assigner's reply queue). It dies with the connection,
/// so nothing in it needs settling. Answers the queue's name and its consumer.
pub async fn private_queue(channel: &Channel) -> Result<(String, lapin::Consumer), lapin::Error> {
    let private = || QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(ShortString::from(""), private(), FieldTable::default())
        .await?;
    let name = queue.name().as_str().to_owned();
    let consume = lapin::options::BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            consume,
            FieldTable::default(),
        )
        .await?;
    Ok((name, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_tokens_leave_a_dead_letter_only_as_their_hash() {
        let hash = crate::lease::token_hash("abc123");
        let scrub = |body: &str| String::from_utf8(scrub_lease_tokens(body.as_bytes())).unwrap();
        assert_eq!(
            scrub(r#"{"v":1,"kind":"release","lease_token":"abc123"}"#),
            format!(r#"{{"v":1,"kind":"release","lease_token":"sha256:{hash}"}}"#)
        );
        // Spaced, among others, and in a body that is not valid JSON.
        let scrubbed = scrub(
            r#"{"v":9, "lease_token" : "abc123", "x": "lease_token", "lease_token":"abc123""#,
        );
        assert!(!scrubbed.contains("\"abc123"), "{scrubbed}");
        assert_eq!(scrubbed.matches(&hash).count(), 2, "{scrubbed}");
        // Unterminated: the rest is the token, and is hashed.
        let scrubbed = scrub(r#"{"lease_token":"abc123"#);
        assert_eq!(scrubbed, format!(r#"{{"lease_token":"sha256:{hash}""#));
        // Nothing to scrub: unchanged.
        for body in [
            r#"{"v":1,"kind":"enable"}"#,
            "not json",
            r#"{"lease_token":5}"#,
            "",
        ] {
            assert_eq!(scrub(body), body);
        }
    }

    #[test]
    fn the_dead_letter_queue_is_bounded() {
        let names = Names::new("ns").with_dead_letter_max_length(50);
        assert_eq!(names.dead_queue(), "ns.dead.v2");
        let arguments = dead_letter_arguments(&names);
        let inner = arguments.inner();
        let get = |key: &str| inner.get(&ShortString::from(key)).cloned();
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(50)));
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("drop-head".into()))
        );
    }

    #[test]
    fn quorum_queues_say_so_and_classic_ones_keep_their_old_arguments() {
        assert!(queue_arguments(QueueType::Classic).inner().is_empty());
        let quorum = queue_arguments(QueueType::Quorum);
        assert_eq!(
            quorum.inner().get(&ShortString::from("x-queue-type")),
            Some(&AMQPValue::LongString("quorum".into()))
        );
    }

    #[test]
    fn the_history_stream_is_declared_with_its_retention() {
        let names = Names::new("ns").with_history("7D", 5_000);
        let arguments = history_arguments(&names);
        let inner = arguments.inner();
        let get = |key: &str| inner.get(&ShortString::from(key)).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("stream".into()))
        );
        assert_eq!(get("x-max-age"), Some(AMQPValue::LongString("7D".into())));
        assert_eq!(
            get("x-max-length-bytes"),
            Some(AMQPValue::LongLongInt(5_000))
        );
        assert_eq!(names.history_queue(), "ns.history");
    }

    #[test]
    fn a_classic_pool_queue_has_priorities_and_a_quorum_pool_one_queue_per_priority() {
        let get = |arguments: FieldTable, key: &str| {
            arguments.inner().get(&ShortString::from(key)).cloned()
        };
        let classic = pool_queue_arguments(QueueType::Classic);
        assert_eq!(get(classic, "x-max-priority"), Some(AMQPValue::LongInt(9)));
        let quorum = pool_queue_arguments(QueueType::Quorum);
        assert_eq!(
            get(quorum.clone(), "x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(get(quorum, "x-max-priority"), None);
        let names = Names::new("ns");
        assert_eq!(names.assign_queues("p"), vec!["ns.assign.p.v2"]);
        assert_eq!(names.retired_assign_queue("p"), "ns.assign.p");
        let names = names.with_queue_type(QueueType::Quorum);
        let queues = names.assign_queues("p");
        assert_eq!(queues.len(), 10);
        assert_eq!(queues[0], "ns.assign.p.q9");
        assert_eq!(queues[9], "ns.assign.p.q0");
        assert_eq!(names.assign_queue_for("p", 12), "ns.assign.p.q9");
    }
}
