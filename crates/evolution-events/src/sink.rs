//! The `EventSink` trait and what flows through it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::channel::Channel;
use crate::destination::Destination;
use crate::envelope::{EventEnvelope, EvolutionWire};
use crate::error::{ErrorKind, Result, SinkError};
use crate::format::EventFormat;
use crate::naming::{NamingProfile, Scope};

/// A delivery's identifier, unique within its outbox.
pub type DeliveryId = u64;

/// One envelope bound for one destination on one channel.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Identifier in the outbox.
    pub id: DeliveryId,
    /// The channel.
    pub channel: Channel,
    /// Instance or global settings produced it.
    pub scope: Scope,
    /// Names and payload profile.
    pub profile: NamingProfile,
    /// The event (shared by every delivery of it).
    pub envelope: Arc<EventEnvelope>,
    /// Where it goes.
    pub destination: Arc<Destination>,
    /// Its ordering key — its instance and destination — when its channel keeps order; `None`
    /// otherwise. Computed once when the event is routed, stored with the delivery, and used by
    /// the dispatcher to hold back the rest of a key after a failure (ADR 0002).
    pub ordering_key: Option<Arc<str>>,
    /// Which attempt this is: 1 for the first.
    pub attempt: u32,
    /// A body sent instead of the payload: the dispatcher sets it for an event larger than the
    /// sink's [`EventSink::max_payload_bytes`] when its channel sends those by reference (a small
    /// body with a signed URL that fetches the whole event). `None`: the payload.
    pub body: Option<Bytes>,
}

impl Delivery {
    /// What to send: the [`body`](Self::body) that replaces the payload, if any (an oversize
    /// event's reference); in CloudEvents mode the structured CloudEvent
    /// ([`EventEnvelope::structured_cloudevent`]; a channel whose binding has a binary content mode
    /// asks [`Delivery::binary_attributes`] first); else the JSON payload (serialized once per
    /// event, profile and variant, shared): in `evolution-v2`, the body Evolution API sends on this
    /// delivery's channel ([`EvolutionWire`]); to a webhook whose `base64` is false, without the
    /// media's base64 ([`EventEnvelope::payload_media`]).
    #[must_use]
    pub fn payload(&self) -> Bytes {
        if let Some(body) = &self.body {
            return body.clone();
        }
        if self.envelope.format().is_cloudevents() {
            return self.envelope.structured_cloudevent();
        }
        match (self.profile, &*self.destination) {
            (NamingProfile::Seed, Destination::Webhook(t)) => {
                self.envelope.payload_media(self.profile, t.base64)
            }
            (NamingProfile::Seed, _) => self.envelope.payload(self.profile),
            (NamingProfile::EvolutionV2, _) => self.envelope.evolution_payload(self.evolution_wire()),
        }
    }

    /// Which `evolution-v2` body this delivery's destination gets.
    fn evolution_wire(&self) -> EvolutionWire<'_> {
        match &*self.destination {
            Destination::Webhook(t) => EvolutionWire::Webhook {
                destination: t.payload_destination.as_deref().unwrap_or(&t.url),
                media: t.base64,
            },
            Destination::Pusher(t) => EvolutionWire::Pusher {
                destination: &t.app.app_id,
            },
            Destination::Sqs(t) => EvolutionWire::Sqs {
                server: t.server.as_deref().unwrap_or("evolution"),
            },
            Destination::Kafka(_) => EvolutionWire::Kafka,
            Destination::Websocket(_)
            | Destination::Rabbitmq(_)
            | Destination::Nats(_)
            | Destination::Custom(_) => EvolutionWire::Plain,
        }
    }

    /// The content type of [`Delivery::payload`]: `application/json`, or
    /// `application/cloudevents+json` for a structured CloudEvent.
    #[must_use]
    pub fn content_type(&self) -> &'static str {
        if self.envelope.format().is_cloudevents() {
            crate::format::CLOUDEVENTS_JSON
        } else {
            "application/json"
        }
    }

    /// For a channel whose protocol binding has a binary content mode (HTTP, Kafka, AMQP, NATS):
    /// the CloudEvent's attributes to write as headers, each under the binding's prefix, when the
    /// event is a CloudEvent in binary mode; `None` otherwise.
    #[must_use]
    pub fn binary_attributes(&self) -> Option<Vec<(&'static str, String)>> {
        (self.envelope.format() == EventFormat::CloudEvents).then(|| self.envelope.cloudevent_attributes())
    }

    /// For a channel whose binding has a binary content mode: the body — the CloudEvent's data in
    /// binary mode, else [`Delivery::payload`] — once [`Delivery::payload_within`] `limit`.
    ///
    /// # Errors
    /// As [`Delivery::payload_within`].
    pub fn binding_body_within(&self, limit: usize) -> Result<Bytes> {
        let payload = self.payload_within(limit)?;
        Ok(if self.envelope.format() == EventFormat::CloudEvents {
            Bytes::copy_from_slice(self.envelope.data().get().as_bytes())
        } else {
            payload
        })
    }

    /// The content type of [`Delivery::binding_body_within`]'s body: `application/json`, or
    /// `application/cloudevents+json` for a structured CloudEvent.
    #[must_use]
    pub fn binding_content_type(&self) -> &'static str {
        if self.envelope.format() == EventFormat::CloudEventsStructured {
            crate::format::CLOUDEVENTS_JSON
        } else {
            "application/json"
        }
    }

    /// The payload, if it is at most `limit` bytes (a sink's `max_payload_bytes`).
    ///
    /// # Errors
    /// `Rejected` (not retried), giving both sizes, when it is longer.
    pub fn payload_within(&self, limit: usize) -> Result<Bytes> {
        let payload = self.payload();
        if payload.len() > limit {
            return Err(SinkError::new(
                self.channel,
                ErrorKind::Rejected,
                format!(
                    "the payload is {} bytes; this sink publishes at most {limit} (max_payload_bytes)",
                    payload.len()
                ),
            ));
        }
        Ok(payload)
    }
}

/// What a sink can do; the dispatcher batches and orders accordingly (it reads every field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The largest batch `send` accepts (at least 1).
    pub max_batch_size: usize,
    /// Whether items sent in one batch, or in successive batches, to one destination arrive in
    /// that order.
    pub ordered: bool,
    /// How many batches of one ordering key the dispatcher may have in flight at once (at least
    /// 1). Above 1 the sink promises that the items of overlapping `send` calls reach each
    /// destination in the order the calls were started (first polled), as a Kafka idempotent
    /// producer keeps a partition's order with up to 5 requests in flight. See ADR 0012.
    pub max_in_flight_per_key: usize,
}

impl Capabilities {
    /// Batches of up to `max_batch_size` (clamped to at least 1), unordered, one batch per
    /// ordering key in flight.
    #[must_use]
    pub const fn new(max_batch_size: usize) -> Self {
        Self {
            max_batch_size: if max_batch_size == 0 { 1 } else { max_batch_size },
            ordered: false,
            max_in_flight_per_key: 1,
        }
    }

    /// Declares that up to `n` batches of one ordering key may be in flight at once (clamped to
    /// at least 1): the sink keeps the items of overlapping sends in the order the sends were
    /// started.
    #[must_use]
    pub const fn with_max_in_flight_per_key(mut self, n: usize) -> Self {
        self.max_in_flight_per_key = if n == 0 { 1 } else { n };
        self
    }

    /// Declares order preserved.
    #[must_use]
    pub const fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }
}

/// Per-item outcome of a `send` that reached the backend: the items not listed in `failed`
/// were delivered. The failures are kept in batch order, whatever order they were recorded in.
///
/// Collects from `(index, error)` pairs: `failures.into_iter().collect::<DeliveryReport>()`.
#[derive(Debug, Default)]
#[must_use]
pub struct DeliveryReport {
    failed: Vec<(usize, SinkError)>,
}

impl DeliveryReport {
    /// Everything delivered.
    pub fn success() -> Self {
        Self::default()
    }

    /// Records that the item at `index` (in the batch) failed.
    pub fn fail(&mut self, index: usize, error: SinkError) {
        // Sinks mostly record in batch order: then this appends.
        let at = self.failed.partition_point(|(i, _)| *i <= index);
        self.failed.insert(at, (index, error));
    }

    /// The failed items, in batch order (by index in the batch).
    #[must_use]
    pub fn failures(&self) -> &[(usize, SinkError)] {
        &self.failed
    }

    /// Consumes the report into its failures, in batch order.
    #[must_use]
    pub fn into_failures(self) -> Vec<(usize, SinkError)> {
        self.failed
    }

    /// Whether every item was delivered.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }
}

impl Extend<(usize, SinkError)> for DeliveryReport {
    fn extend<I: IntoIterator<Item = (usize, SinkError)>>(&mut self, failures: I) {
        for (index, error) in failures {
            self.fail(index, error);
        }
    }
}

impl FromIterator<(usize, SinkError)> for DeliveryReport {
    fn from_iter<I: IntoIterator<Item = (usize, SinkError)>>(failures: I) -> Self {
        let mut report = Self::success();
        report.extend(failures);
        report
    }
}

/// A delivery channel's client. Sinks send one batch and classify the outcome; retries, batching,
/// ordering and timeouts belong to the dispatcher (ADR 0002).
///
/// Object safe: hold it as `Arc<dyn EventSink>`. Every method has to be implemented (a wrapper
/// forwards each one).
///
/// # Contract
///
/// What the dispatcher relies on, and what the contract suite (`evolution-sink-testkit`) checks
/// against a real server where it can:
///
/// - **Idempotency key.** Every message carries the event id ([`EventEnvelope::id`], a UUIDv7)
///   where the backend's consumers find it (a `webhook-id` header, the AMQP `message_id`, a Kafka
///   header `id`, `Nats-Msg-Id`, the SQS `MessageDeduplicationId` of a FIFO queue, `id` in every
///   JSON body). Delivery is at least once: a redelivery (`attempt` > 1) carries the same id and
///   the same payload bytes ([`Delivery::payload`]), and a sink never deduplicates.
/// - **No retries inside a sink.** A sink does not back off and try again: it sends each item
///   once per `send` and classifies what went wrong ([`SinkError`]: kind, retry class, status);
///   the dispatcher decides whether and when to try again, with its retry policy, and records the
///   attempt. (A client library's own resends within one call, as librdkafka's, and repairing the
///   sink's own state once — creating again a queue that vanished — are not retries in this sense.)
/// - **One channel per batch.** A batch holds only deliveries of this sink's
///   [`channel`](Self::channel); their destinations are this channel's
///   ([`Destination::mismatch`] is the error for an item whose destination is not).
/// - **A per-item report.** `send` returns `Err` only when nothing in the batch is known to be
///   delivered (the backend is down, the sink is shut down); otherwise it reports each failed item
///   by its index in the [`DeliveryReport`], and every item not listed counts as delivered. An
///   ordered sink sends the items of one destination in batch order and, after one fails
///   retryably, reports the rest of that destination "not sent" instead of letting them overtake
///   it ([`HoldBack`](crate::HoldBack), [`send_in_order`](crate::send_in_order)).
/// - **Several batches in flight per key** only when [`Capabilities::max_in_flight_per_key`] is
///   above 1: then the items of overlapping `send` calls reach each destination in the order the
///   calls were started (first polled) — ADR 0012. With 1 (the default) the dispatcher never
///   overlaps two sends of one ordering key.
/// - **Cancel safety.** `send` may be dropped at any await (its `send_timeout` passed, or a
///   shutdown): the items of a dropped send count as failed and are sent again, so a cancelled
///   send may have delivered some of them (at least once). Dropping a call must leave the sink
///   usable for the next one.
#[async_trait]
pub trait EventSink: Send + Sync + Debug + 'static {
    /// The channel this sink delivers to.
    fn channel(&self) -> Channel;

    /// What this sink can do.
    fn capabilities(&self) -> Capabilities;

    /// The largest payload this sink sends, when it has a limit (Pusher 10 KB, SQS 1 MiB, Kafka
    /// `message.max.bytes`, NATS `max_payload`, RabbitMQ's configured maximum): the dispatcher
    /// sends a larger event by reference instead when the channel is set to (`<CHANNEL>_OVERSIZE=
    /// reference`); otherwise the sink refuses it. `None`: no limit of its own.
    fn max_payload_bytes(&self) -> Option<usize> {
        None
    }

    /// Sends a batch (at most `capabilities().max_batch_size` items, all of this sink's channel).
    /// An empty batch is a no-op.
    ///
    /// # Errors
    /// `Err` means nothing in the batch is known to be delivered (the backend is down, the
    /// sink is closed); per-item failures go in the [`DeliveryReport`].
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled send may have delivered some items (at-least-once).
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport>;

    /// Checks that the backend is usable by exercising the real path.
    ///
    /// # Errors
    /// The classified reason it is not.
    async fn health_check(&self) -> Result<()>;

    /// Waits until everything sent is visible to consumers.
    ///
    /// # Errors
    /// When buffered items could not be pushed out.
    async fn flush(&self) -> Result<()>;

    /// Flushes and releases connections. Idempotent; later sends fail with `Closed`.
    ///
    /// # Errors
    /// When the final flush failed.
    async fn shutdown(&self) -> Result<()>;

    /// Provisions `destinations` ahead of the first send — creates SQS queues, Kafka topics —
    /// when an instance's settings are saved, so that a name the backend refuses is reported then
    /// rather than at the first event. A sink with nothing to provision returns `Ok(())`; sinks
    /// that provision on first use anyway treat it as a head start.
    ///
    /// Destinations of other channels are ignored.
    ///
    /// # Errors
    /// The classified reason a destination cannot be provisioned (a `Rejected` error means the
    /// backend refuses the name).
    async fn prepare(&self, destinations: &[Destination]) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::CustomTarget;
    use crate::instance::InstanceName;
    use crate::kind::EventKind;

    fn delivery(data: &str) -> Delivery {
        let data = serde_json::value::to_raw_value(&data).unwrap_or_default();
        let envelope = EventEnvelope::new(
            EventKind::MessagesUpsert,
            InstanceName::new("acme").unwrap(),
            data,
        );
        Delivery {
            body: None,
            id: 1,
            channel: Channel::Nats,
            scope: Scope::Instance,
            profile: NamingProfile::Seed,
            envelope: Arc::new(envelope),
            destination: Arc::new(Destination::Custom(CustomTarget { target: "t".into() })),
            ordering_key: None,
            attempt: 1,
        }
    }

    #[test]
    fn a_report_keeps_its_failures_in_batch_order() {
        let e = |m: &'static str| SinkError::new(Channel::Sqs, ErrorKind::Timeout, m);
        let mut report: DeliveryReport = [(4, e("d")), (1, e("b"))].into_iter().collect();
        report.fail(0, e("a"));
        report.extend([(9, e("e")), (2, e("c"))]);
        let order: Vec<(usize, &str)> = report.failures().iter().map(|(i, e)| (*i, e.message())).collect();
        assert_eq!(order, [(0, "a"), (1, "b"), (2, "c"), (4, "d"), (9, "e")]);
        assert!(!report.is_success());
        assert!(DeliveryReport::success().is_success());
    }

    #[test]
    fn a_payload_over_the_limit_is_rejected_with_both_sizes() {
        let d = delivery("small");
        let size = d.payload().len();
        assert_eq!(d.payload_within(size).unwrap(), d.payload());
        let e = d.payload_within(size - 1).unwrap_err();
        assert_eq!(
            (e.sink(), e.kind(), e.is_retryable()),
            (Channel::Nats, ErrorKind::Rejected, false)
        );
        assert_eq!(
            e.message(),
            format!(
                "the payload is {size} bytes; this sink publishes at most {} (max_payload_bytes)",
                size - 1
            )
        );
    }
}
