//! The **Pusher** sink of evolution events: triggers each event on a Pusher channel through the
//! [Pusher Channels HTTP API](https://pusher.com/docs/channels/library_auth_reference/rest-api/),
//! signing the requests itself with reqwest, HMAC-SHA256 and MD5 (the `pusher` crate is
//! unsupported upstream and built on hyper 0.14; see ADR 0011).
//!
//! ```no_run
//! use std::sync::Arc;
//! use evolution_events::EventSink;
//! use evolution_sink_pusher::{PusherConfig, PusherSink};
//!
//! # fn main() -> Result<(), evolution_events::SinkError> {
//! let sink: Arc<dyn EventSink> = Arc::new(PusherSink::new(PusherConfig::default())?);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! [`PusherConfig`] holds what is common to every app: timeouts, `max_payload_bytes`
//! (`PUSHER_MAX_PAYLOAD_BYTES`, default Pusher's 10 240), `batch_events`
//! (`PUSHER_BATCH_EVENTS`, default `true`) and the `probe` app of the health check (the global
//! app). Each delivery carries its app ([`PusherApp`](evolution_events::PusherApp): `appId`,
//! `key`, `secret`, `cluster`, `useTLS`, and an optional `host`/`port` override — `PUSHER_HOST`,
//! `PUSHER_PORT` — for a self-hosted Pusher-protocol server such as soketi or sockudo).
//!
//! # Wire mapping
//!
//! ```text
//! POST {http|https}://{host | api-{cluster}.pusher.com}[:port]/apps/{appId}/events
//!      ?auth_key={key}&auth_timestamp={unix s}&auth_version=1.0&body_md5={hex md5(body)}
//!      &auth_signature={hex HMAC-SHA256(secret, "POST\n{path}\n{sorted query}")}
//! {"name": "<event>", "channels": ["<channel>"], "data": "<Delivery::payload() as a string>"}
//! ```
//!
//! With `batch_events`, up to 10 events of one app go in one `POST /apps/{appId}/batch_events`
//! `{"batch": [{"channel", "name", "data"}, …]}`. Channel and event come from the destination
//! (`evolution.{instance}` and `MESSAGES_UPSERT` in the `seed` profile); the data is the event's
//! JSON payload, so `id` travels in it.
//!
//! # Limits, batches and order
//!
//! A payload over `max_payload_bytes` is **never dropped silently** (Evolution API logs it and
//! drops the event). With [`Oversize::Reject`] (`PUSHER_OVERSIZE=reject`, the default) it is not
//! sent: the item fails as `Rejected` (not retried) with a message that gives its size and the
//! limit, so it shows up dead, with that reason, in the delivery log. With
//! [`Oversize::Reference`] (`PUSHER_OVERSIZE=reference`) a small reference goes instead,
//! `{"id": "<event id>", "event": "<payload event name>", "instance": "<instance>", "truncated": true}`,
//! which a client resolves with the server's `GET /events/{instance}/{id}`.
//! [`Capabilities`](evolution_events::Capabilities): batches of up to 100, ordered; an item counts
//! as delivered on an HTTP 2xx. One app's items go one request after the other, in batch order;
//! after a request fails retryably the rest of that app's items are reported "not sent"
//! (retryable) so nothing overtakes a failed event
//! ([`send_in_order`](evolution_events::send_in_order)).
//! Different apps are triggered concurrently.
//!
//! # Classification
//!
//! | outcome | kind | retry |
//! |---|---|---|
//! | 2xx without an `error` field | delivered | — |
//! | 2xx with `{"error", "code": N}` (soketi answers a bad signature `200 {"code":401}`) | as HTTP `N` | |
//! | 400, 413 | `Rejected` | `Never` |
//! | 404 (no such app) | `ConfigInvalid` | `Never` |
//! | 401, 403 (key, secret, clock skew over 600 s, app disabled or over quota) | `Unauthorized` | `Never` |
//! | 408 | `Timeout` | `Backoff` |
//! | 429 | `RateLimited` | `After(Retry-After)` or `Backoff` |
//! | 5xx | `Unavailable` | `Backoff` (`After(Retry-After)` on 503) |
//! | other statuses | `Unexpected` | `Backoff` |
//! | connection refused, reset, DNS, TLS | `Unavailable` | `Backoff` |
//! | timeout | `Timeout` | `Backoff` |
//! | payload over the limit (`reject` policy) | `Rejected` | `Never` |
//! | incomplete app (no appId, key, secret, cluster or host), not a Pusher destination | `ConfigInvalid` | `Never` |
//!
//! Errors carry the HTTP status and quote at most 200 bytes of the answer; they name the app id,
//! channel and event, never the secret nor the signed URL. `Debug` shows secrets as
//! `**REDACTED**`.
//!
//! # Health, flush, shutdown
//!
//! `health_check` sends a signed `GET /apps/{appId}/channels` for the probe app (credentials and
//! server both checked), or succeeds without one. `flush` has nothing to do (nothing is
//! buffered). `shutdown` drops the HTTP client and is idempotent; afterwards `send` and
//! `health_check` fail with `Closed`.

mod classify;
mod config;
pub mod sign;
mod sink;

pub use config::{Oversize, PUSHER_BATCH, PUSHER_MAX_BATCH, PUSHER_MAX_PAYLOAD_BYTES, PusherConfig};
pub use sink::{NAME, PusherSink};
