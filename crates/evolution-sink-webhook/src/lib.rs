//! The **webhook** sink of evolution events: delivers each event as an HTTP `POST` to the URL its
//! [`Delivery`](evolution_events::Delivery) carries
//! ([`Destination::Webhook`](evolution_events::Destination::Webhook)).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use evolution_events::EventSink;
//! use evolution_sink_webhook::{WebhookConfig, WebhookSink};
//!
//! # fn main() -> Result<(), evolution_events::SinkError> {
//! let sink: Arc<dyn EventSink> = Arc::new(WebhookSink::new(WebhookConfig {
//!     request_timeout: Duration::from_millis(30_000), // WEBHOOK_REQUEST_TIMEOUT_MS
//!     ..WebhookConfig::default()
//! })?);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! [`WebhookConfig`] holds what is common to every destination: `request_timeout` (the seed's
//! `WEBHOOK_REQUEST_TIMEOUT_MS`, default 60 s: connect, send and read the answer),
//! `connect_timeout` (default 10 s), `user_agent` (default `evolution-events/<version>`) and an
//! optional `probe_url` for [`health_check`](evolution_events::EventSink::health_check). URLs
//! and headers come with each delivery. One HTTP client per sink pools keep-alive connections
//! (HTTP/1.1, or HTTP/2 when an https server offers it); TLS is rustls with the platform's
//! certificate verifier. Proxies from the `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` environment
//! variables are honoured. **Redirects are never followed.**
//!
//! [`WebhookConfig`] implements [`SinkConfig`](evolution_events::SinkConfig): it declares the
//! `WEBHOOK_*` variables with their defaults and reads them — the global webhook
//! (`WEBHOOK_GLOBAL_*`, `WEBHOOK_EVENTS_*`, `WEBHOOK_SIGNING_SECRET`), the sink's settings
//! (`WEBHOOK_REQUEST_TIMEOUT_MS`, `WEBHOOK_ALLOWED_NETWORKS`, `WEBHOOK_MAX_CONCURRENCY_PER_HOST`) and
//! its dispatch hints (`WEBHOOK_RETRY_*`, `WEBHOOK_WORKERS`, `WEBHOOK_ORDERED`, batches of
//! [`WEBHOOK_BATCH`]).
//!
//! # Wire format
//!
//! ```text
//! POST <url>                         (user info in the URL is sent as basic auth)
//! content-type: application/json     (a destination header may replace it)
//! user-agent: evolution-events/0.1.0 (a destination header may replace it)
//! webhook-id: <event id, a UUIDv7>   (the idempotency key: the same on every attempt)
//! <destination headers>              (values are secrets: never logged, never in errors)
//!
//! <Delivery::payload() bytes: {"id","event","instance","data","date_time",...};
//!  evolution-v2: Evolution API's body, with its "destination">
//! ```
//!
//! A destination cannot set `webhook-id`, `content-length`, `transfer-encoding`, `host` or
//! `connection` (such headers are ignored); an invalid header name or value fails the item with
//! `ConfigInvalid` (the value is not shown).
//!
//! # Batches and order
//!
//! [`Capabilities`](evolution_events::Capabilities): batches of up to 64, ordered; an item counts
//! as delivered only on a 2xx answer. Items of one batch that share an (instance, URL) pair are
//! sent one after the other, in batch order; after the first retryable failure the rest of that
//! pair are not sent and are reported failed as retryable `Unavailable` ("not sent: an earlier
//! event for this destination failed"), so nothing overtakes a failed event
//! ([`send_in_order`](evolution_events::send_in_order)). Different
//! pairs are sent concurrently. `send` returns `Err` only when the sink is shut down (`Closed`);
//! every other failure is per item, in the report.
//!
//! # Classification
//!
//! Every HTTP answer's error carries its status (`SinkError::status`), so that the dispatcher's
//! `RetryPolicy` can refuse to retry the statuses it lists as non-retryable (by default 400, 401,
//! 403, 404, 422; the others, 409 and 413 included, are retried).
//!
//! | outcome | kind | retry |
//! |---|---|---|
//! | 2xx | delivered | — |
//! | 3xx | `Rejected` ("redirects are not followed", Location not shown) | `Never` |
//! | 408 | `Timeout` | `Backoff` |
//! | 429 | `RateLimited` | `After(Retry-After)` if present, else `Backoff` |
//! | 401, 403 | `Unauthorized` | `Backoff` (the policy's status list decides) |
//! | other 4xx | `Rejected` | `Backoff` (the policy's status list decides) |
//! | 503 | `Unavailable` | `After(Retry-After)` if present, else `Backoff` |
//! | other 5xx | `Unavailable` | `Backoff` |
//! | any other status | `Unexpected` | `Backoff` |
//! | connection refused, DNS failure, reset | `Unavailable` | `Backoff` |
//! | connect or request timeout | `Timeout` | `Backoff` |
//! | invalid URL or header, non-webhook destination | `ConfigInvalid` | `Never` |
//!
//! `Retry-After` is delta-seconds or an HTTP-date (a past date means now). Messages name the
//! destination by [`Destination::label`](evolution_events::Destination::label) (scheme, host,
//! port, path: no user info, no query string) and quote at most the first 200 bytes of the
//! answer's body; transport error texts are scrubbed of the URL's secrets.
//!
//! # Health, prepare, flush, shutdown
//!
//! `health_check` GETs `probe_url` (up if the answer is below 500; at most 10 s) or, without one,
//! succeeds: a webhook sink has no single backend. `prepare` (called when an instance's settings
//! are saved) refuses a URL whose host is, or resolves only to, a refused address (`Rejected`,
//! naming the address and the `WEBHOOK_ALLOWED_NETWORKS` entry that would allow it). `flush` has nothing to do. `shutdown` is
//! idempotent and drops the client; afterwards `send` and `health_check` fail with `Closed`.

mod classify;
mod config;
pub mod network;
mod request;
pub mod sign;
mod sink;

pub use config::{DEFAULT_USER_AGENT, WEBHOOK_BATCH, WebhookConfig};
pub use sink::{NAME, WebhookSink};
