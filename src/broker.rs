//! Shared RabbitMQ plumbing: connecting, declaring the topology with the same arguments
//! everywhere (DESIGN §3) and dead-lettering refused messages.

use std::time::Duration;

use crate::config::QueueType;
use crate::protocol::{Names, REASON_HEADER};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind, Queue};

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

/// The longest pause between two tries to reach the broker again after losing it: a process
/// is back within about this long after the broker accepts connections again.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Opens one connection named `name` (shown in the management UI) to the node `url`. A
/// process connects through [`crate::cluster::Brokers`], which tries its list of nodes with
/// this.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    match url.parse::<AMQPUri>() {
        Ok(mut uri) => {
            uri.query.frame_max.get_or_insert(FRAME_MAX);
            uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
            Connection::connect_uri(uri, props).await
        }
        // lapin says what is wrong with it.
        Err(_) => Connection::connect(url, props).await,
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

/// Declares the events exchange and the dead-letter queue. The dead-letter queue is of the
/// deployment's queue type: every process declares it before it does anything else, so on a
/// cluster a classic one would stop them all while its node is down.
pub async fn declare_common(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    declare_events(channel, names).await?;
    channel
        .queue_declare(
            names.dead_queue().into(),
            durable(),
            queue_arguments(names.queue_type()),
        )
        .await?;
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

/// The arguments of the pool queues (assign requests) of type `queue_type`.
pub fn pool_queue_arguments(queue_type: QueueType) -> FieldTable {
    queue_arguments(queue_type)
}

/// Declares the assign queue of `pool`; the answer tells its depth and consumers.
pub async fn declare_pool_queue(
    channel: &Channel,
    names: &Names,
    pool: &str,
) -> Result<Queue, lapin::Error> {
    channel
        .queue_declare(
            names.assign_queue(pool).into(),
            durable(),
            pool_queue_arguments(names.queue_type()),
        )
        .await
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
    channel
        .basic_publish(
            ShortString::from(""),
            names.dead_queue().into(),
            BasicPublishOptions::default(),
            &delivery.data,
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
}
