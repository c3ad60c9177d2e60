//! The **NATS** sink of evolution events: publishes each event (with
//! [async-nats](https://docs.rs/async-nats)) to the subject its
//! [`Delivery`](evolution_events::Delivery) carries
//! ([`Destination::Nats`](evolution_events::Destination::Nats)), with core NATS or JetStream.
//! The Router computes every subject (DESIGN §4); this crate never builds one.
//!
//! ```no_run
//! use std::sync::Arc;
//! use evolution_events::EventSink;
//! use evolution_sink_nats::{JetStreamConfig, NatsConfig, NatsMode, NatsSink, NatsUrl};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = NatsUrl::parse("nats://127.0.0.1:4222")?; // NATS_URI
//! let sink: Arc<dyn EventSink> = Arc::new(NatsSink::new(NatsConfig {
//!     mode: NatsMode::JetStream(JetStreamConfig::new("EVOLUTION", vec!["evolution.>".into()])),
//!     ..NatsConfig::new(url)
//! })?);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | variable (server) | [`NatsConfig`] | default | meaning |
//! |---|---|---|---|
//! | `NATS_ENABLED` | — | `false` | the channel is built only when `true` |
//! | `NATS_URI` | `url` ([`NatsUrl`]) | — (required) | one server, `nats://[user:password@ or token@]host:4222` (`tls://`, `ws://`, `wss://` too). Holds credentials: never logged, `Debug` shows `nats://host:port` |
//! | `NATS_PREFIX_KEY` | (Router) | `evolution` | first token of the subjects |
//! | `NATS_GLOBAL_ENABLED`, `NATS_EVENTS_<KEY>` | (Router) | `false` | global deliveries of the selected events |
//! | `NATS_JETSTREAM` | `mode` ([`NatsMode`]) | `false` | `true`: publish into a JetStream stream and wait for its acknowledgements |
//! | `NATS_JETSTREAM_STREAM` | [`JetStreamConfig::stream`] | `EVOLUTION` | the stream's name |
//! | — | [`JetStreamConfig::subjects`] | `{prefix}.>` | subjects the stream captures from the start (server: `{NATS_PREFIX_KEY}.>` in the `seed` profile, and for global deliveries in `evolution-v2`) |
//! | — | `connect_timeout` | 5 s | deadline of one connection attempt |
//! | — | `flush_timeout` | 10 s | deadline of the flush that ends a core batch |
//! | — | `reconnect_min`, `reconnect_max` | 200 ms, 5 s | capped exponential backoff between connection attempts, for ever |
//! | — | `max_payload_bytes` | 1 MiB − 4 KiB | larger payloads fail alone with `Rejected` |
//!
//! Per instance: `{"nats": {"enabled": true, "events": [...]}}` (the Router decides).
//!
//! # Subjects and streams
//!
//! In the `seed` profile the subjects are `{prefix}.{instance}.{wire name}`
//! (`evolution.acme.messages.upsert`), so a subscriber on `evolution.acme.>` receives every
//! event of instance `acme`. In the `evolution-v2` profile they are Evolution API 2.3.6's:
//! `{instance}.{wire name}` for an instance's settings, `{prefix}.{wire name}` for global ones.
//!
//! In JetStream mode the sink creates the stream when it is missing (file storage, limits
//! retention, `duplicate_window` 2 min, the configured subjects); an existing stream keeps its
//! settings (set retention limits there — the sink never deletes anything). Before publishing to
//! a subject that none of the stream's subjects captures, the sink adds `{first token}.>` to
//! the stream (`acme.>` for instance `acme` in the `evolution-v2` profile), once.
//!
//! # Wire format
//!
//! | NATS | value |
//! |---|---|
//! | payload | [`Delivery::payload`](evolution_events::Delivery::payload) bytes (`{"id","event","instance","data",…}`) |
//! | `Nats-Msg-Id` | the event id (UUIDv7): JetStream drops a redelivery within the stream's duplicate window |
//! | `event`, `instance`, `id` | the payload's `event`, the instance, the event id |
//! | `Content-Type` | `application/json` |
//!
//! # Delivery, order, limits
//!
//! [`Capabilities`](evolution_events::Capabilities): batches of up to 256, ordered. Payloads up to
//! `max_payload_bytes`. One connection keeps publish order, so the events of one (instance,
//! subject) reach subscribers — and the stream — in sequence order (the dispatcher sends each such
//! key one batch at a time).
//!
//! - **Core**: the batch is published, then flushed; it counts as sent once the server answered
//!   the flush (it has every message). Core NATS keeps nothing: a subscriber that is not
//!   connected misses the message (use JetStream for that).
//! - **JetStream**: the batch is published back to back, then every acknowledgement is awaited;
//!   a message counts as delivered once the stream stored it. A redelivery carries the same
//!   `Nats-Msg-Id`, so the stream keeps one copy (within `duplicate_window`).
//!
//! The first connection is made on first use and retried (200 ms doubling to 5 s) on later sends
//! until it succeeds — Evolution API never retries it. Once connected, the client reconnects by
//! itself, for ever, with the same backoff; meanwhile sends fail at once with a retryable
//! `Unavailable` and the deliveries wait in the outbox (the dispatcher retries broker channels
//! for ever). A batch whose flush or acknowledgements do not arrive is reported failed and sent
//! again (at least once; JetStream drops the duplicates).
//!
//! # Classification
//!
//! | outcome | kind | retry |
//! |---|---|---|
//! | flushed (core) / acknowledged (JetStream) | delivered | — |
//! | connection refused, lost, reconnecting | `Unavailable` (`send` fails as a whole) | `Backoff` |
//! | connect timeout, flush timeout, acknowledgement timeout | `Timeout` | `Backoff` |
//! | credentials refused | `Unauthorized` | `Backoff` |
//! | TLS handshake failed, JetStream disabled, subjects overlap another stream | `ConfigInvalid` | `Backoff` |
//! | no stream captures the subject (deleted meanwhile) | `Unavailable` (the stream is ensured again) | `Backoff` |
//! | stream refused the message (a limit), other JetStream errors | `Unavailable` | `Backoff` |
//! | too many acknowledgements pending | `RateLimited` | `Backoff` |
//! | payload over `max_payload_bytes` or the server's `max_payload` | `Rejected` | `Never` |
//! | invalid subject, not a NATS destination | `ConfigInvalid` | `Never` |
//!
//! Messages name the server as `nats://host:port`; the URL's credentials never appear.
//!
//! # Health, flush, shutdown
//!
//! `health_check` connects if needed, makes a round trip (flush) and, in JetStream mode, makes
//! sure the stream exists. `flush` flushes the client. `shutdown` drains the connection (at most
//! 5 s); it is idempotent, and later sends fail with `Closed`.

mod classify;
mod config;
mod sink;

pub use config::{JetStreamConfig, NatsConfig, NatsMode, NatsUrl, UrlError, check_stream_name};
pub use sink::{NAME, NatsSink};
