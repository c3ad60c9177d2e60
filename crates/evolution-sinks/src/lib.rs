//! The facade of **evolution events**: the [`Router`] turns an event and the settings into
//! deliveries with resolved destinations, and the [`Dispatcher`] delivers them through one
//! bounded queue and worker pool per channel, with batching, retries, dead letters and
//! per-instance ordering — the only place any of that lives. Sinks only send a batch and
//! classify the outcome.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use evolution_events::{EventEnvelope, EventKind, GlobalSettings, InstanceName, RawValue};
//! use evolution_outbox::MemoryOutbox;
//! use evolution_sinks::{Dispatcher, Router};
//!
//! let router = Router::new(GlobalSettings::default())?;
//! let dispatcher = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router)
//!     // .sink(Arc::new(my_sink))
//!     .start()?;
//! let data = RawValue::from_string(r#"{"text":"hi"}"#.to_owned())?;
//! let event = EventEnvelope::new(EventKind::MessagesUpsert, InstanceName::new("acme")?, data);
//! dispatcher.emit(event, None).await?;
//! dispatcher.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

pub mod build;
mod dispatcher;
mod health;
mod pace;
mod router;
#[cfg(feature = "test-util")]
pub mod testing;

/// The webhook channel (feature `webhook`).
#[cfg(feature = "webhook")]
pub use evolution_sink_webhook as webhook;

/// The RabbitMQ channel (feature `rabbitmq`).
#[cfg(feature = "rabbitmq")]
pub use evolution_sink_rabbitmq as rabbitmq;

/// The NATS channel (feature `nats`).
#[cfg(feature = "nats")]
pub use evolution_sink_nats as nats;

/// The WebSocket (Socket.IO) channel (feature `websocket`).
#[cfg(feature = "websocket")]
pub use evolution_sink_websocket as websocket;

/// The Pusher channel (feature `pusher`).
#[cfg(feature = "pusher")]
pub use evolution_sink_pusher as pusher;

/// The Kafka channel (feature `kafka`).
#[cfg(feature = "kafka")]
pub use evolution_sink_kafka as kafka;

/// The SQS channel (feature `sqs`).
#[cfg(feature = "sqs")]
pub use evolution_sink_sqs as sqs;

pub use dispatcher::{
    AttemptHook, AttemptNotice, BuildError, ChannelConfig, ChannelCounters, DeadHook, DeadNotice, Dispatcher,
    DispatcherBuilder, EmitError, LATENCY_BUCKETS, LatencyHistogram, ReferenceHook, Routing, ShutdownReport,
};
pub use health::{DestinationHealth, DisabledHook, DisabledNotice, HealthState};
pub use router::{CheckedSettings, Route, Router};

/// A webhook delivery of a `CALL` event of instance `a` to `url`, for the unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test fixture")]
pub(crate) fn webhook_delivery(
    id: evolution_events::DeliveryId,
    scope: evolution_events::Scope,
    url: &str,
    rate_limit: Option<u32>,
) -> evolution_events::Delivery {
    use evolution_events::{
        Channel, Delivery, Destination, EventEnvelope, EventKind, InstanceName, NamingProfile, RawValue,
        WebhookTarget,
    };
    use std::sync::Arc;
    Delivery {
        body: None,
        id,
        channel: Channel::Webhook,
        scope,
        profile: NamingProfile::Seed,
        envelope: Arc::new(EventEnvelope::new(
            EventKind::Call,
            InstanceName::new("a").unwrap(),
            RawValue::NULL.to_owned(),
        )),
        destination: Arc::new(Destination::Webhook(WebhookTarget {
            url: url.to_owned(),
            headers: Vec::new(),
            signing_secrets: Vec::new(),
            rate_limit,
            payload_destination: None,
            base64: true,
        })),
        ordering_key: None,
        attempt: 1,
    }
}
