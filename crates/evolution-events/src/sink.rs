//! The `EventSink` trait and what flows through it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::channel::Channel;
use crate::destination::Destination;
use crate::envelope::EventEnvelope;
use crate::error::SinkError;
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
    /// Which attempt this is: 1 for the first.
    pub attempt: u32,
}

impl Delivery {
    /// The JSON payload (serialized once per event and profile, shared).
    #[must_use]
    pub fn payload(&self) -> Bytes {
        self.envelope.payload(self.profile)
    }
}

/// What a sink can do; the dispatcher batches and orders accordingly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The largest batch `send` accepts (at least 1).
    pub max_batch_size: usize,
    /// The largest payload the backend accepts, in bytes; larger items are rejected per item.
    pub max_payload_bytes: Option<usize>,
    /// Whether items sent in one batch, or in successive batches, to one destination arrive in
    /// that order.
    pub ordered: bool,
    /// Whether a successful `send` means the backend acknowledged every item (publisher
    /// confirms, HTTP 2xx), as opposed to "written to a socket".
    pub acknowledged: bool,
    /// How many batches of one ordering key the dispatcher may have in flight at once (at least
    /// 1). Above 1 the sink promises that the items of overlapping `send` calls reach each
    /// destination in the order the calls were started (first polled), as a Kafka idempotent
    /// producer keeps a partition's order with up to 5 requests in flight. See ADR 0012.
    pub max_in_flight_per_key: usize,
}

impl Capabilities {
    /// Batches of up to `max_batch_size` (clamped to at least 1), no size limit, unordered,
    /// unacknowledged, one batch per ordering key in flight.
    #[must_use]
    pub const fn new(max_batch_size: usize) -> Self {
        Self {
            max_batch_size: if max_batch_size == 0 { 1 } else { max_batch_size },
            max_payload_bytes: None,
            ordered: false,
            acknowledged: false,
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

    /// Sets the payload limit.
    #[must_use]
    pub const fn with_max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = Some(limit);
        self
    }

    /// Declares order preserved.
    #[must_use]
    pub const fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    /// Declares sends acknowledged.
    #[must_use]
    pub const fn acknowledged(mut self) -> Self {
        self.acknowledged = true;
        self
    }
}

/// Per-item outcome of a `send` that reached the backend: the items not listed in `failed`
/// were delivered.
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
        self.failed.push((index, error));
    }

    /// The failed items, by index in the batch.
    #[must_use]
    pub fn failures(&self) -> &[(usize, SinkError)] {
        &self.failed
    }

    /// Consumes the report into its failures.
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

/// A delivery channel's client. Sinks send one batch and classify the outcome; retries, batching,
/// ordering and timeouts belong to the dispatcher.
///
/// Object safe: hold it as `Arc<dyn EventSink>`.
#[async_trait]
pub trait EventSink: Send + Sync + Debug + 'static {
    /// The channel this sink delivers to.
    fn channel(&self) -> Channel;

    /// What this sink can do.
    fn capabilities(&self) -> Capabilities;

    /// Sends a batch (at most `capabilities().max_batch_size` items, all of this sink's channel).
    /// An empty batch is a no-op.
    ///
    /// # Errors
    /// `Err` means nothing in the batch is known to be delivered (the backend is down, the
    /// sink is closed); per-item failures go in the [`DeliveryReport`].
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled send may have delivered some items (at-least-once).
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError>;

    /// Checks that the backend is usable by exercising the real path.
    ///
    /// # Errors
    /// The classified reason it is not.
    async fn health_check(&self) -> Result<(), SinkError>;

    /// Waits until everything sent is visible to consumers.
    ///
    /// # Errors
    /// When buffered items could not be pushed out.
    async fn flush(&self) -> Result<(), SinkError>;

    /// Flushes and releases connections. Idempotent; later sends fail with `Closed`.
    ///
    /// # Errors
    /// When the final flush failed.
    async fn shutdown(&self) -> Result<(), SinkError>;

    /// **Optional.** Provisions `destinations` ahead of the first send — creates SQS queues, Kafka
    /// topics — when an instance's settings are saved, so that a name the backend refuses is
    /// reported then rather than at the first event. Sinks that provision on first use anyway
    /// (every built-in one) treat it as a head start; the default does nothing.
    ///
    /// Destinations of other channels are ignored.
    ///
    /// # Errors
    /// The classified reason a destination cannot be provisioned (a `Rejected` error means the
    /// backend refuses the name).
    async fn prepare(&self, destinations: &[Destination]) -> Result<(), SinkError> {
        let _ = destinations;
        Ok(())
    }
}
