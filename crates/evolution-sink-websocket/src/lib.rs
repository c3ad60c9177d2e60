//! The **WebSocket** sink of evolution events: emits each event to the Socket.IO clients allowed
//! to see it, with [socketioxide](https://docs.rs/socketioxide), and gives the server the
//! Socket.IO endpoint as a tower layer to mount on its HTTP listener.
//!
//! ```no_run
//! use std::sync::Arc;
//! use evolution_events::{EventSink, InstanceName};
//! use evolution_sink_websocket::{Access, WebsocketConfig, WebsocketSink};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (sink, layer) = WebsocketSink::new(WebsocketConfig::default(), |apikey: &str| match apikey {
//!     "global-key" => Access::Global,
//!     "token-of-acme" => Access::Instance(InstanceName::new("acme").unwrap()),
//!     _ => Access::Denied,
//! })?;
//! let sink: Arc<dyn EventSink> = Arc::new(sink);
//! let app = axum::Router::<()>::new().layer(layer); // serve it with ConnectInfo<SocketAddr>
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! [`WebsocketConfig`]: `allowed_hosts` (`WEBSOCKET_ALLOWED_HOSTS`, default Evolution API's
//! `127.0.0.1,::1,::ffff:127.0.0.1`), the endpoint `path` (`/socket.io`), the per-socket send
//! buffer (`max_buffer_size`, 1024 packets) and the Engine.IO timings. Who may see what is decided
//! by an [`Authorizer`] the server provides (`Fn(&str) -> Access`): the server owns the keys.
//!
//! # Connections
//!
//! A connection presents an API key in the handshake's auth object (socket.io-client
//! `auth: { apikey }`), else as the `apikey` query parameter, else as the `apikey` header:
//!
//! | key | access |
//! |---|---|
//! | the global key (`AUTHENTICATION_API_KEY`) | every instance, and the global stream |
//! | an instance's token | that instance only |
//! | none, from an address in `allowed_hosts` (the server must record peers: `ConnectInfo<SocketAddr>`) | every instance (as in Evolution API) |
//! | none, from elsewhere | refused: `connect_error` "apikey is required: …" |
//! | anything else (even from an allowed host) | refused: `connect_error` "invalid apikey" |
//!
//! Namespaces: `/` (every admitted connection) and `/{instance}` for **every** valid instance name
//! from the start (no "Invalid namespace" before an instance's first event): the global key may
//! join any of them, an instance token only its own (`connect_error` "this apikey belongs to
//! another instance …").
//!
//! # Wire mapping
//!
//! A delivery's [`WebsocketTarget`](evolution_events::WebsocketTarget) names a namespace, an event
//! and a room; the sink emits `Delivery::payload()` (the JSON object
//! `{"id","event","instance","data",…}`, written as is) as the event's only argument:
//!
//! | room | receives it |
//! |---|---|
//! | an instance name | on that namespace, the sockets of that instance's token and the sockets with global access |
//! | `*` | the sockets with global access |
//! | none (per-instance namespaces only) | every socket of the namespace (each was admitted for that instance) |
//!
//! So, in the `seed` profile, an event of `minha-instancia` reaches `socket.on('minha-instancia')`
//! on `/` for its token and the global key, `socket.on('messages.upsert')` on `/minha-instancia`,
//! and, with `WEBSOCKET_GLOBAL_EVENTS=true`, `socket.on('*')` for global connections.
//!
//! # Limits and semantics
//!
//! Socket.IO has no delivery confirmation: an item counts as delivered once it is written to the
//! send buffer of every socket allowed to see it (none connected = delivered to nobody). A socket
//! whose buffer is full (a client reading too slowly) misses that event; this is counted
//! ([`WebsocketSink::missed`]) and logged, not retried (a retry would duplicate the event for
//! every other socket). No payload limit. [`Capabilities`](evolution_events::Capabilities):
//! batches of up to 256, ordered (one socket receives emissions in send order).
//!
//! # Replay on reconnection
//!
//! A client that connects with the id of the last event it saw — `auth: { apikey, lastEventId }`
//! (or the `lastEventId` query parameter) — first joins its rooms, then gets the events it missed
//! that it may see on that namespace, oldest first, up to `replay_limit` (`WEBSOCKET_REPLAY_MAX`,
//! 500), read from the [`History`] the server sets ([`WebsocketSink::set_history`]: its outbox,
//! which keeps events until 24 hours after their delivery), and then a `replay` event
//! `{"after", "replayed", "complete"}` (`complete: false` with an `error` when the id is not kept
//! for this connection — never accepted, another instance's, or pruned — or the limit cut it
//! short). An event accepted during the replay may arrive twice (live and replayed), and live
//! events may arrive before older replayed ones: dedupe by `id`. A `lastEventId` that is not a
//! UUID refuses the connection (`connect_error` naming it).
//!
//! # Across replicas (Redis)
//!
//! With [`WebsocketConfig::redis`] set (`CACHE_REDIS_ENABLED=true`, `CACHE_REDIS_URI`,
//! `CACHE_REDIS_PREFIX_KEY`; feature `redis`), [`WebsocketSink::connect`] builds the Socket.IO
//! server on socketioxide's Redis adapter: every emission is published on Redis Pub/Sub and each
//! replica writes it to its own clients, so a client connected to any replica receives what any
//! replica emits (rooms, both namespaces and the global `*` event as above), once. Each replica
//! creates a per-instance namespace (and subscribes to its channels) when it first emits to it,
//! whether or not a client of its own is there. The adapter's channels are named after
//! `{CACHE_REDIS_PREFIX_KEY}:socket.io`, so two deployments on one Redis stay apart.
//!
//! Redis Pub/Sub is at most once: an emission is published, never stored. While Redis does not
//! answer, `health_check` fails and emissions fail `Unavailable` (retried, so nothing accepted is
//! lost; the replica's own clients get them on the retry too); the connection comes back by itself
//! (checked every second) and subscribes again, and emissions wait 3 s more, so that the other
//! replicas listen again before anything is published. A replica cut off from Redis while the
//! others are not misses their emissions for that time: its clients catch up with `lastEventId`.
//! Redis must speak RESP3 (Redis 6 or later); `rediss://` (TLS) is not supported yet.
//!
//! # Classification
//!
//! | outcome | kind | retry |
//! |---|---|---|
//! | written (some sockets full or closing) | delivered | — |
//! | the layer is not mounted on a live router (never mounted, server stopped) | `Unavailable` (whole send) | `Backoff` |
//! | Redis does not take the emission (down, unreachable) | `Unavailable` (that item and the rest of the batch) | `Backoff` |
//! | shut down | `Closed` (whole send) | — |
//! | not a websocket destination, or namespace `/` without a room | `ConfigInvalid` | `Never` |
//! | payload cannot be encoded | `Rejected` | `Never` |
//!
//! # Health, flush, shutdown
//!
//! `health_check` is `Ok` while the layer is mounted on a live router and the sink is open (and,
//! with Redis, while Redis answers a `PING`).
//! `flush` has nothing to do. `shutdown` disconnects every socket (clients reconnect to the next
//! server) and is idempotent; afterwards `send` fails with `Closed`. API keys are never logged nor
//! shown in errors.

mod auth;
mod classify;
mod config;
mod layer;
#[cfg(feature = "redis")]
mod redis_adapter;
mod replay;
mod sink;

pub use auth::{Access, Authorizer, Refusal};
pub use config::{
    DEFAULT_ALLOWED_HOSTS, DEFAULT_REDIS_PREFIX, DEFAULT_REPLAY_LIMIT, RedisConfig, RedisUrl,
    WebsocketConfig, check_redis_prefix, parse_allowed_hosts,
};
pub use layer::{WebsocketLayer, WebsocketService};
pub use replay::{History, REPLAY_EVENT};
pub use sink::{NAME, WebsocketSink};
