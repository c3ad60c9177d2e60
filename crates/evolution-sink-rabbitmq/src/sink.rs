//! [`RabbitmqSink`]: the [`EventSink`] of the RabbitMQ channel.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use evolution_events::reconnect::{self, Health, Reconnect};
use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, RabbitmqTarget,
    Retry, SinkError, async_trait,
};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm,
};
use tokio::sync::Mutex;

use crate::classify::{Failure, Stage, classify, error};
use crate::config::RabbitmqConfig;

/// The channel name of this sink (`rabbitmq`).
pub const NAME: &str = "rabbitmq";

/// The largest batch `send` takes: its messages are published back to back and their confirms
/// awaited together.
const MAX_BATCH: usize = 256;

/// How long closing the connection at shutdown may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes events to RabbitMQ with publisher confirms (see the [crate documentation](crate)).
///
/// One connection with two channels: one in confirm mode that every send publishes on
/// (messages of concurrent sends are pipelined, many confirms in flight), one that declares the
/// exchanges, queues and bindings — once per name and connection. The connection is made on
/// first use and made again, with capped exponential backoff, whenever it is lost.
#[derive(Debug)]
pub struct RabbitmqSink {
    config: RabbitmqConfig,
    label: String,
    connection: Reconnect<Link>,
}

/// One connection and what was declared on it.
#[derive(Debug)]
struct Link {
    connection: Connection,
    /// Confirm mode; every message is published here.
    publish: lapin::Channel,
    /// Declarations (a refused declaration closes this channel, never the publish channel).
    topology: Mutex<lapin::Channel>,
    /// Exchanges declared on this connection.
    exchanges: StdMutex<HashSet<String>>,
    /// Queues declared and bound on this connection: (queue, exchange, routing key).
    bindings: StdMutex<HashSet<(String, String, String)>>,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }

    fn forget(&self, target: &RabbitmqTarget) {
        lock(&self.exchanges).remove(&target.exchange);
        lock(&self.bindings).remove(&binding(target));
    }
}

impl reconnect::Link for Link {
    /// Lost once the connection or the publish channel is closed: a new connection is made.
    fn health(&self) -> Health {
        if self.usable() {
            Health::Usable
        } else {
            Health::Lost
        }
    }

    /// Releases what is left of the connection without waiting.
    fn retire(self: Arc<Self>) {
        tokio::spawn(async move {
            let _closed =
                tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(320, "reconnecting".into())).await;
        });
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn binding(t: &RabbitmqTarget) -> (String, String, String) {
    (t.queue.clone(), t.exchange.clone(), t.routing_key.clone())
}

impl RabbitmqSink {
    /// A sink with these settings. Nothing is connected yet: the first `send` or `health_check`
    /// connects.
    ///
    /// # Errors
    /// `ConfigInvalid` when a timeout or backoff is zero, `reconnect_min` exceeds
    /// `reconnect_max`, `frame_max` is between 1 and 4095, or `max_payload_bytes` is zero.
    pub fn new(config: RabbitmqConfig) -> Result<Self, SinkError> {
        if config.connect_timeout.is_zero() {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "the connect timeout must be longer than zero",
            ));
        }
        if (1..4096).contains(&config.frame_max) {
            return Err(error(
                ErrorKind::ConfigInvalid,
                format!(
                    "RABBITMQ_FRAME_MAX={} is too small: AMQP needs at least 4096 (RabbitMQ 4.1: 8192), or 0 for the broker's choice",
                    config.frame_max
                ),
            ));
        }
        if config.max_payload_bytes == 0 {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "max_payload_bytes must be greater than zero",
            ));
        }
        let label = config.uri.label();
        Ok(Self {
            connection: Reconnect::new(
                Channel::Rabbitmq,
                label.clone(),
                config.reconnect_min,
                config.reconnect_max,
            )?,
            label,
            config,
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &RabbitmqConfig {
        &self.config
    }

    /// The current connection, connecting first if there is none (or it broke) and the backoff
    /// allows an attempt now.
    async fn link(&self) -> Result<Arc<Link>, SinkError> {
        self.connection.link(|| self.connect()).await
    }

    /// Connects and opens the two channels, within the connect timeout.
    async fn connect(&self) -> Result<Link, SinkError> {
        let what = format!("connect to {}", self.label);
        let secrets = self.config.uri.secrets();
        let mut uri = self.config.uri.lapin().clone();
        uri.query.frame_max = (self.config.frame_max > 0).then_some(self.config.frame_max);
        uri.query.heartbeat = Some(u16::try_from(self.config.heartbeat.as_secs()).unwrap_or(u16::MAX));
        uri.query.connection_timeout =
            Some(u64::try_from(self.config.connect_timeout.as_millis()).unwrap_or(u64::MAX));
        let properties = ConnectionProperties::default().with_connection_name("evolution-events".into());
        let attempt = async {
            let connection = Connection::connect_uri(uri, properties)
                .await
                .map_err(|e| classify(Stage::Connect, &what, &Failure::of(&e), &secrets))?;
            let open = async {
                let publish = connection.create_channel().await?;
                publish.confirm_select(ConfirmSelectOptions::default()).await?;
                let topology = connection.create_channel().await?;
                Ok::<_, lapin::Error>((publish, topology))
            };
            match open.await {
                Ok((publish, topology)) => Ok(Link {
                    connection,
                    publish,
                    topology: Mutex::new(topology),
                    exchanges: StdMutex::new(HashSet::new()),
                    bindings: StdMutex::new(HashSet::new()),
                }),
                Err(e) => {
                    let _closed = connection.close(200, "cannot open channels".into()).await;
                    Err(classify(Stage::Connect, &what, &Failure::of(&e), &secrets))
                }
            }
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(classify(Stage::Connect, &what, &Failure::TimedOut, &secrets)),
        }
    }

    /// Declares the exchange (topic, durable) and the queue (durable, of the configured type)
    /// bound with the routing key, unless this connection already did.
    async fn declare(&self, link: &Link, target: &RabbitmqTarget) -> Result<(), SinkError> {
        let secrets = self.config.uri.secrets();
        let key = binding(target);
        if lock(&link.bindings).contains(&key) && lock(&link.exchanges).contains(&target.exchange) {
            return Ok(());
        }
        let mut channel = link.topology.lock().await;
        if !channel.status().connected() {
            // A refused declaration closed it: open another.
            *channel = link.connection.create_channel().await.map_err(|e| {
                classify(
                    Stage::Declare,
                    &format!("reopen the declaration channel on {}", self.label),
                    &Failure::of(&e),
                    &secrets,
                )
            })?;
        }
        if !lock(&link.exchanges).contains(&target.exchange) {
            channel
                .exchange_declare(
                    target.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    classify(
                        Stage::Declare,
                        &format!("declare exchange `{}` (topic, durable)", target.exchange),
                        &Failure::of(&e),
                        &secrets,
                    )
                })?;
            lock(&link.exchanges).insert(target.exchange.clone());
        }
        if !lock(&link.bindings).contains(&key) {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from(self.config.queue_type.as_str())),
            );
            channel
                .queue_declare(
                    target.queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await
                .map_err(|e| {
                    classify(
                        Stage::Declare,
                        &format!(
                            "declare queue `{}` ({}, durable)",
                            target.queue, self.config.queue_type
                        ),
                        &Failure::of(&e),
                        &secrets,
                    )
                })?;
            channel
                .queue_bind(
                    target.queue.as_str().into(),
                    target.exchange.as_str().into(),
                    target.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    classify(
                        Stage::Declare,
                        &format!(
                            "bind queue `{}` to exchange `{}` with key `{}`",
                            target.queue, target.exchange, target.routing_key
                        ),
                        &Failure::of(&e),
                        &secrets,
                    )
                })?;
            lock(&link.bindings).insert(key);
        }
        Ok(())
    }

    /// Declares the destination and publishes one delivery; the confirm is awaited by the caller.
    async fn publish(&self, link: &Link, delivery: &Delivery) -> Result<PublisherConfirm, SinkError> {
        let target = delivery
            .destination
            .rabbitmq()
            .ok_or_else(|| delivery.destination.mismatch(Channel::Rabbitmq))?;
        let payload = delivery.binding_body_within(self.config.max_payload_bytes)?;
        self.declare(link, target).await?;
        link.publish
            .basic_publish(
                target.exchange.as_str().into(),
                target.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties(delivery),
            )
            .await
            .map_err(|e| {
                classify(
                    Stage::Publish,
                    &format!("publish to {}", delivery.destination.label()),
                    &Failure::of(&e),
                    &self.config.uri.secrets(),
                )
            })
    }
}

/// The AMQP properties of a delivery; the headers table carries `event`, `instance`, `id`, the
/// event's `traceparent` / `tracestate` and in CloudEvents binary mode the `cloudEvents:`
/// attributes.
fn properties(delivery: &Delivery) -> BasicProperties {
    let envelope = &delivery.envelope;
    let id = envelope.id().to_string();
    let event = delivery.profile.payload_event(envelope.kind());
    let mut headers = FieldTable::default();
    headers.insert("event".into(), AMQPValue::LongString(LongString::from(event)));
    headers.insert(
        "instance".into(),
        AMQPValue::LongString(LongString::from(envelope.instance().as_str())),
    );
    headers.insert("id".into(), AMQPValue::LongString(LongString::from(id.as_str())));
    for (name, value) in envelope.trace_headers() {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    // CloudEvents' AMQP binding, binary mode: each attribute as a `cloudEvents:` application
    // property (the headers table).
    for (name, value) in delivery.binary_attributes().unwrap_or_default() {
        headers.insert(
            format!("cloudEvents:{name}").into(),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    BasicProperties::default()
        .with_content_type(delivery.binding_content_type().into())
        .with_delivery_mode(2)
        .with_message_id(id.as_str().into())
        .with_timestamp(u64::try_from(envelope.date_time().timestamp()).unwrap_or_default())
        .with_app_id("evolution-events".into())
        .with_headers(headers)
}

/// The outcome of one publisher confirm.
fn confirmed(
    delivery: &Delivery,
    link: &Link,
    outcome: lapin::Result<Confirmation>,
    secrets: &[&str],
) -> Result<(), SinkError> {
    let label = delivery.destination.label();
    match outcome {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => {
            // Someone deleted the queue or its binding: declare them again before the retry.
            if let Some(target) = delivery.destination.rabbitmq() {
                link.forget(target);
            }
            Err(classify(
                Stage::Publish,
                &format!("publish to {label}"),
                &Failure::Reply {
                    code: returned.reply_code,
                    text: returned.reply_text.to_string(),
                },
                secrets,
            ))
        }
        Ok(Confirmation::Nack(_)) => Err(error(
            ErrorKind::Unavailable,
            format!(
                "publish to {label}: the broker refused the message (nack): it could not take responsibility for it"
            ),
        )),
        Ok(Confirmation::NotRequested) => Err(error(
            ErrorKind::Unexpected,
            format!("publish to {label}: the channel is not in confirm mode"),
        )
        .with_retry(Retry::Backoff)),
        Err(e) => Err(classify(
            Stage::Publish,
            &format!("publish to {label} (waiting for the confirm)"),
            &Failure::of(&e),
            secrets,
        )),
    }
}

#[async_trait]
impl EventSink for RabbitmqSink {
    fn channel(&self) -> Channel {
        Channel::Rabbitmq
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH).ordered()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.config.max_payload_bytes)
    }

    /// Publishes every item (declaring its destination first if this connection has not), then
    /// awaits every confirm. `Err` when there is no connection (retryable `Unavailable` or
    /// `Timeout`, or `Closed`); per-item failures otherwise.
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        self.connection.check_open()?;
        if batch.is_empty() {
            return Ok(DeliveryReport::success());
        }
        let link = self.link().await?;
        if link.connection.status().blocked() {
            return Err(error(
                ErrorKind::RateLimited,
                format!(
                    "{} blocked publishing (a memory or disk alarm of the broker); the deliveries wait",
                    self.label
                ),
            ));
        }
        let mut report = DeliveryReport::success();
        let mut pending = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            match self.publish(&link, delivery).await {
                Ok(confirm) => pending.push((index, confirm)),
                Err(e) => report.fail(index, e),
            }
        }
        let secrets = self.config.uri.secrets();
        for (index, confirm) in pending {
            if let Err(e) = confirmed(&batch[index], &link, confirm.await, &secrets) {
                report.fail(index, e);
            }
        }
        Ok(report)
    }

    /// Connects if needed (within the connect timeout) and checks both channels are open.
    async fn health_check(&self) -> Result<(), SinkError> {
        let link = self.link().await?;
        if link.usable() {
            Ok(())
        } else {
            Err(error(
                ErrorKind::Unavailable,
                format!("the connection to {} was just lost", self.label),
            ))
        }
    }

    /// Nothing is buffered: `send` returns once every confirm arrived.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Nothing ahead of time: the first publish on a connection declares its exchange, queue and
    /// binding.
    async fn prepare(&self, _destinations: &[Destination]) -> Result<(), SinkError> {
        Ok(())
    }

    /// Closes the connection (at most 5 s). Idempotent; later sends fail with `Closed`.
    async fn shutdown(&self) -> Result<(), SinkError> {
        if let Some(link) = self.connection.close().await
            && link.connection.status().connected()
        {
            let _closed =
                tokio::time::timeout(CLOSE_TIMEOUT, link.connection.close(200, "shutdown".into())).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use evolution_sink_testkit::fixtures::closed_port;
    use evolution_sink_testkit::reconnect::unreachable_waits_for_the_backoff;

    use super::*;
    use crate::config::AmqpUri;

    fn config() -> RabbitmqConfig {
        RabbitmqConfig::new(AmqpUri::parse("amqp://guest:guest@127.0.0.1:1/%2f").unwrap())
    }

    #[test]
    fn settings_are_checked() {
        let sink = RabbitmqSink::new(config()).unwrap();
        assert_eq!(sink.capabilities(), Capabilities::new(256).ordered());
        assert_eq!(sink.config().max_payload_bytes, 16 * 1024 * 1024);
        assert_eq!(sink.channel(), Channel::Rabbitmq);
        assert_eq!(NAME, Channel::Rabbitmq.to_string());
        assert!(!format!("{sink:?}").contains("guest:guest"));
        for bad in [
            RabbitmqConfig {
                frame_max: 1024,
                ..config()
            },
            RabbitmqConfig {
                connect_timeout: Duration::ZERO,
                ..config()
            },
            RabbitmqConfig {
                reconnect_min: Duration::from_secs(60),
                ..config()
            },
            RabbitmqConfig {
                max_payload_bytes: 0,
                ..config()
            },
        ] {
            assert_eq!(
                RabbitmqSink::new(bad).unwrap_err().kind(),
                ErrorKind::ConfigInvalid
            );
        }
        assert!(
            RabbitmqSink::new(RabbitmqConfig {
                frame_max: 0,
                ..config()
            })
            .is_ok()
        );
    }

    #[tokio::test]
    async fn unreachable_fails_fast_then_waits_for_the_backoff() {
        let port = closed_port();
        let sink = RabbitmqSink::new(RabbitmqConfig {
            reconnect_min: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(30),
            ..RabbitmqConfig::new(AmqpUri::parse(&format!("amqp://u:hunter2@127.0.0.1:{port}/%2f")).unwrap())
        })
        .unwrap();
        unreachable_waits_for_the_backoff(&sink, "hunter2").await;
    }
}
