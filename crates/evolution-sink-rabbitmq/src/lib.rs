//! The **RabbitMQ** sink of evolution events: publishes each event over AMQP 0-9-1 (with
//! [lapin](https://docs.rs/lapin)) to the exchange and routing key its
//! [`Delivery`](evolution_events::Delivery) carries
//! ([`Destination::Rabbitmq`](evolution_events::Destination::Rabbitmq)), with publisher confirms.
//! The Router computes every name (DESIGN §4); this crate never builds one.
//!
//! ```no_run
//! use std::sync::Arc;
//! use evolution_events::EventSink;
//! use evolution_sink_rabbitmq::{AmqpUri, RabbitmqConfig, RabbitmqSink};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let uri = AmqpUri::parse("amqp://guest:guest@127.0.0.1:5672/%2f")?; // RABBITMQ_URI
//! let sink: Arc<dyn EventSink> = Arc::new(RabbitmqSink::new(RabbitmqConfig::new(uri))?);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | variable (server) | [`RabbitmqConfig`] | default | meaning |
//! |---|---|---|---|
//! | `RABBITMQ_ENABLED` | — | `false` | the channel is built only when `true` |
//! | `RABBITMQ_URI` | `uri` ([`AmqpUri`]) | — (required) | `amqp[s]://user:password@host:port/vhost`; `/%2f`, `/` or no path = vhost `/`. Holds a password: never logged, `Debug` shows `amqp://host:port/vhost` |
//! | `RABBITMQ_EXCHANGE_NAME` | (Router) | `evolution` | the topic exchange of the `seed` profile and of global deliveries |
//! | `RABBITMQ_PREFIX_KEY` | (Router) | `evolution` | first word of routing keys and queue names |
//! | `RABBITMQ_GLOBAL_ENABLED`, `RABBITMQ_EVENTS_<KEY>` | (Router) | `false` | global deliveries of the selected events |
//! | `RABBITMQ_FRAME_MAX` | `frame_max` | 8192 | largest AMQP frame asked for (RabbitMQ 4.1 needs ≥ 8192; 0 = the broker's) |
//! | `RABBITMQ_QUEUE_TYPE` | `queue_type` ([`QueueType`]) | `quorum` | `x-queue-type` of the declared queues: `quorum` or `classic` |
//! | — | `heartbeat` | 30 s | AMQP heartbeat (as Evolution API) |
//! | — | `connect_timeout` | 10 s | TCP + TLS + handshake + opening the channels |
//! | — | `reconnect_min`, `reconnect_max` | 200 ms, 10 s | capped exponential backoff between connection attempts, for ever |
//! | — | `max_payload_bytes` | 16 MiB | larger payloads fail alone with `Rejected` |
//!
//! Per instance: `{"rabbitmq": {"enabled": true, "events": [...]}}` (the Router decides).
//!
//! # Topology
//!
//! Before the first publish to a destination on a connection, the sink declares the exchange
//! (`topic`, durable, not auto-deleted), then the queue (durable, `x-queue-type` =
//! `RABBITMQ_QUEUE_TYPE`) and binds it to the exchange with the routing key. Each name is declared
//! **once per connection** (Evolution API declares four times per message), and again after a
//! reconnect or after the broker returned a message as unroutable. Declarations use their own
//! channel, so a refused declaration (406 inequivalent arguments) never closes the channel that
//! messages are in flight on.
//!
//! In the `seed` profile every event of instance `acme` goes to exchange `evolution` with routing
//! key `evolution.acme.messages-upsert` (three words), so a consumer that binds its own queue with
//! `evolution.acme.*` — the specification's Node snippet — receives every event of that instance,
//! and each event also waits in the durable queue `evolution.acme.messages-upsert`. In the
//! `evolution-v2` profile the names are those of Evolution API 2.3.6 (exchange `acme`, key and
//! queue `acme.messages.upsert`; global: `RABBITMQ_EXCHANGE_NAME`, `{prefix}.messages.upsert`).
//!
//! # Wire format
//!
//! | AMQP | value |
//! |---|---|
//! | body | [`Delivery::payload`](evolution_events::Delivery::payload) bytes (`{"id","event","instance","data",…}`) |
//! | `mandatory` | true: an unroutable message comes back and the item fails |
//! | `delivery_mode` | 2 (persistent) |
//! | `content_type` | `application/json` |
//! | `message_id` | the event id (UUIDv7): the idempotency key, the same on every attempt |
//! | `timestamp` | the event's `date_time`, seconds |
//! | `app_id` | `evolution-events` |
//! | headers | `event` (the payload's `event`), `instance`, `id` (the event id) |
//!
//! # Delivery, order, limits
//!
//! [`Capabilities`](evolution_events::Capabilities): batches of up to 256, ordered. Payloads up to
//! `max_payload_bytes`. Every message is published on one confirm-mode channel and
//! counts as delivered only when the broker confirmed it (`basic.ack` after it is stored in the
//! queues; quorum queues write it to disk first): the batch is published back to back and the
//! confirms awaited together, and concurrent sends share the channel, so many messages are in
//! flight. One channel keeps publish order, and a queue keeps the order it received, so the
//! events of one (instance, destination) reach a queue in sequence order — the dispatcher sends
//! each such key one batch at a time.
//!
//! The connection is made on first use; when it is lost (broker restart, network), the next send
//! connects again. After a failed attempt, sends fail at once with a retryable `Unavailable`
//! until the backoff (200 ms doubling to 10 s) allows the next attempt, and the deliveries wait in
//! the outbox (the dispatcher retries broker channels for ever). Nothing is dropped: Evolution API
//! publishes without confirms, drops events while disconnected and stops reconnecting after 10
//! attempts.
//!
//! # Classification
//!
//! A failure of the connection is always retried; a failure that only one destination has and
//! that retrying cannot fix is permanent (dead letter, `ERRORS` event, redrive once fixed).
//!
//! | outcome | kind | retry |
//! |---|---|---|
//! | confirmed (`basic.ack`) | delivered | — |
//! | connection refused, reset, lost, heartbeat missed | `Unavailable` | `Backoff` |
//! | connect timeout | `Timeout` | `Backoff` |
//! | not connected, waiting for the backoff | `Unavailable` (`send` fails as a whole) | `Backoff` |
//! | credentials refused at connect (403) | `Unauthorized` | `Backoff` |
//! | vhost missing or not allowed (402, 530) | `ConfigInvalid` | `Backoff` |
//! | broker blocked publishing (memory or disk alarm) | `RateLimited` | `Backoff` |
//! | `basic.nack` | `Unavailable` | `Backoff` |
//! | returned unroutable (312 NO_ROUTE) | `Rejected` (queue and binding declared again) | `Backoff` |
//! | exchange or queue not found (404) | `Unavailable` | `Backoff` |
//! | queue exists with other arguments (406) | `ConfigInvalid` | `Never` |
//! | no permission on an exchange or queue (403 after connect) | `Unauthorized` | `Never` |
//! | payload over `max_payload_bytes`, or over the broker's limit (311) | `Rejected` | `Never` |
//! | broker shutting down (320), out of resources (506), internal error (541) | `Unavailable` | `Backoff` |
//! | protocol errors (501-505) | `Unexpected` | `Backoff` |
//! | not a RabbitMQ destination | `ConfigInvalid` | `Never` |
//!
//! Messages name the broker as `amqp://host:port/vhost` and the destination by exchange and
//! routing key; the URI's user name and password never appear.
//!
//! # Health, flush, shutdown
//!
//! `health_check` connects if needed and checks that both channels are open. `flush` has nothing
//! to do (`send` waits for the confirms). `shutdown` closes the connection (at most 5 s); it is
//! idempotent, and later sends fail with `Closed`.

mod classify;
mod config;
mod sink;

pub use config::{AmqpUri, QueueType, RabbitmqConfig, UnknownQueueType, UriError};
pub use sink::{NAME, RabbitmqSink};
