//! [`WebsocketSink`]: the [`EventSink`] of the WebSocket (Socket.IO) channel.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use evolution_events::naming::GLOBAL_ROOM;
use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, InstanceName,
    RawValue, SinkError, WebsocketTarget, async_trait,
};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::auth::{self, Access, Authorizer};
use crate::classify::{Emitted, classify, error};
use crate::config::WebsocketConfig;
use crate::layer::{Attachment, WebsocketLayer};
use crate::replay::{self, History};

/// The channel name of this sink (`websocket`).
pub const NAME: &str = "websocket";

/// The largest batch `send` takes.
const MAX_BATCH: usize = 256;

/// At most one "slow client" warning per this many seconds.
const MISSED_WARN_EVERY: u64 = 10;

/// Emits events to the Socket.IO clients allowed to see them (see the [crate documentation](crate)
/// for the rooms, the authentication and the classification).
pub struct WebsocketSink {
    io: SocketIo,
    /// Alive while the [`WebsocketLayer`] or a service it built exists.
    attachment: Weak<Attachment>,
    gate: Arc<Gate>,
    closed: AtomicBool,
    /// Emissions a socket missed because its send buffer was full.
    missed: AtomicU64,
    /// Unix second of the last slow-client warning.
    warned_at: AtomicU64,
    config: WebsocketConfig,
}

impl fmt::Debug for WebsocketSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketSink")
            .field("config", &self.config)
            .field("attached", &self.is_attached())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .field("missed", &self.missed())
            .finish_non_exhaustive()
    }
}

/// What the connect middlewares and handlers need.
struct Gate {
    authorizer: Box<dyn Authorizer>,
    allowed_hosts: Vec<std::net::IpAddr>,
    /// Set once by [`WebsocketSink::set_history`]; without it `lastEventId` replays nothing.
    history: OnceLock<Arc<dyn History>>,
    replay_limit: usize,
}

impl Gate {
    fn access(&self, s: &SocketRef, auth: Option<&Value>) -> Result<Access, auth::Refusal> {
        let parts = s.req_parts();
        let key = auth::presented_key(auth, parts);
        auth::admit(
            key.as_deref(),
            auth::peer(parts),
            &self.allowed_hosts,
            &*self.authorizer,
        )
    }
}

impl WebsocketSink {
    /// A sink and the Socket.IO endpoint it emits through. Mount the layer on the HTTP router
    /// (`router.layer(layer)`, served with `into_make_service_with_connect_info::<SocketAddr>()`
    /// so that `allowed_hosts` can match peers); until it is mounted, and after the router is
    /// dropped, sends fail as `Unavailable`.
    ///
    /// `authorizer` decides what each connection's API key may see.
    ///
    /// # Errors
    /// `ConfigInvalid` when the path does not start with `/` or the buffer size is zero.
    pub fn new(
        config: WebsocketConfig,
        authorizer: impl Authorizer,
    ) -> Result<(Self, WebsocketLayer), SinkError> {
        if !config.path.starts_with('/') {
            return Err(error(
                ErrorKind::ConfigInvalid,
                format!("the Socket.IO path {:?} must start with `/`", config.path),
            ));
        }
        if config.max_buffer_size == 0 {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "the per-socket buffer size must be at least 1",
            ));
        }
        if config.replay_limit >= config.max_buffer_size {
            return Err(error(
                ErrorKind::ConfigInvalid,
                format!(
                    "WEBSOCKET_REPLAY_MAX ({}) must be under the per-socket buffer of {} packets",
                    config.replay_limit, config.max_buffer_size
                ),
            ));
        }
        let (layer, io) = SocketIo::builder()
            .req_path(config.path.clone())
            .max_buffer_size(config.max_buffer_size)
            .ping_interval(config.ping_interval)
            .ping_timeout(config.ping_timeout)
            .connect_timeout(config.connect_timeout)
            .build_layer();
        let gate = Arc::new(Gate {
            authorizer: Box::new(authorizer),
            allowed_hosts: config.allowed_hosts.iter().map(|ip| ip.to_canonical()).collect(),
            history: OnceLock::new(),
            replay_limit: config.replay_limit,
        });
        register_namespaces(&io, &gate)?;
        let attachment = Arc::new(Attachment);
        let sink = Self {
            io,
            attachment: Arc::downgrade(&attachment),
            gate,
            closed: AtomicBool::new(false),
            missed: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
            config,
        };
        Ok((sink, WebsocketLayer::new(layer, attachment)))
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &WebsocketConfig {
        &self.config
    }

    /// Where connections that present a `lastEventId` find the events they missed (the server's
    /// outbox). Set once; later calls are ignored and return `false`.
    pub fn set_history(&self, history: Arc<dyn History>) -> bool {
        self.gate.history.set(history).is_ok()
    }

    /// How many times a socket missed an event because its send buffer was full (a client that
    /// reads too slowly), since start.
    #[must_use]
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Connected sockets, all namespaces together.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.io.nsps().into_iter().map(|ns| ns.sockets().len()).sum()
    }

    /// Disconnects every socket that an instance's token admitted (on `/` and on
    /// `/{instance}`): call it when the instance is deleted, so that its token stops working for
    /// connections that are already open. Sockets of the global key stay.
    pub async fn disconnect_instance(&self, instance: &InstanceName) {
        let room = instance.as_str().to_owned();
        if let Some(root) = self.io.of("/")
            && let Err(e) = root.within(room.clone()).disconnect().await
        {
            tracing::debug!(%instance, error = %e, "disconnecting the sockets of a deleted instance");
        }
        if let Some(ns) = self.io.of(format!("/{instance}"))
            && let Err(e) = ns.within(room).disconnect().await
        {
            tracing::debug!(%instance, error = %e, "disconnecting the sockets of a deleted instance");
        }
    }

    fn is_attached(&self) -> bool {
        self.attachment.strong_count() > 0
    }

    fn check_usable(&self) -> Result<(), SinkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(error(ErrorKind::Closed, "the websocket sink is shut down"));
        }
        if !self.is_attached() {
            return Err(error(
                ErrorKind::Unavailable,
                "the Socket.IO endpoint is not mounted on a running server (its layer was never mounted, or the \
                 server stopped serving); events wait until it is",
            ));
        }
        Ok(())
    }

    async fn emit(&self, target: &WebsocketTarget, data: &RawValue) -> Result<(), SinkError> {
        let Some(ns) = self.io.of(&target.namespace) else {
            // A per-instance namespace nobody has connected to yet: nobody to deliver to.
            return Ok(());
        };
        let ops = match target.room.as_deref() {
            Some(GLOBAL_ROOM) => ns.to(GLOBAL_ROOM),
            Some(room) => ns.to([room.to_owned(), GLOBAL_ROOM.to_owned()]),
            None if target.namespace == "/" => {
                return Err(error(
                    ErrorKind::ConfigInvalid,
                    "a destination on namespace / needs a room (an instance name or `*`): without one every \
                     socket of every instance would get it",
                ));
            }
            None => ns,
        };
        match classify(ops.emit(&target.event, data).await) {
            Emitted::Ok { missed } => {
                if missed > 0 {
                    self.note_missed(missed, target);
                }
                Ok(())
            }
            Emitted::Failed(e) => Err(e),
        }
    }

    fn note_missed(&self, missed: usize, target: &WebsocketTarget) {
        let total = self.missed.fetch_add(missed as u64, Ordering::Relaxed) + missed as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now >= last + MISSED_WARN_EVERY
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                missed, total, namespace = %target.namespace, event = %target.event,
                "slow Socket.IO clients missed events: their send buffer ({} packets) is full",
                self.config.max_buffer_size
            );
        }
    }
}

/// `/` (rooms by access) and `/{instance}` (one namespace per instance, admitted by access),
/// both with the authentication middleware, and replay for connections with a `lastEventId`.
fn register_namespaces(io: &SocketIo, gate: &Arc<Gate>) -> Result<(), SinkError> {
    let root_gate = Arc::clone(gate);
    let root_handler = Arc::clone(gate);
    io.ns(
        "/",
        (move |s: SocketRef, TryData(auth): TryData<Value>| {
            connected(Arc::clone(&root_handler), s, auth.ok())
        })
        .with(move |s: SocketRef, TryData(auth): TryData<Value>| {
            let gate = Arc::clone(&root_gate);
            async move {
                let access = gate.access(&s, auth.as_ref().ok())?;
                replay::requested(auth.as_ref().ok(), &s).map_err(auth::Refusal::BadLastEventId)?;
                s.extensions.insert(access);
                Ok::<(), auth::Refusal>(())
            }
        }),
    );
    let ns_gate = Arc::clone(gate);
    let ns_handler = Arc::clone(gate);
    io.dyn_ns(
        "/{instance}",
        (move |s: SocketRef, TryData(auth): TryData<Value>| connected(Arc::clone(&ns_handler), s, auth.ok()))
            .with(move |s: SocketRef, TryData(auth): TryData<Value>| {
                let gate = Arc::clone(&ns_gate);
                async move {
                    let access = gate.access(&s, auth.as_ref().ok())?;
                    auth::admit_namespace(&access, s.ns())?;
                    replay::requested(auth.as_ref().ok(), &s).map_err(auth::Refusal::BadLastEventId)?;
                    s.extensions.insert(access);
                    Ok::<(), auth::Refusal>(())
                }
            }),
    )
    .map_err(|e| {
        error(
            ErrorKind::Unexpected,
            format!("cannot register the per-instance namespaces: {e}"),
        )
    })
}

/// Joins the rooms of the socket's access (on `/`: the instance's name for an instance token,
/// `*` for global access; on `/{instance}` the same, so that deleting an instance can find its
/// sockets), then replays what it missed if it asked to. Joining first means an event accepted
/// while the replay is read arrives live (and perhaps replayed too), never not at all.
async fn connected(gate: Arc<Gate>, s: SocketRef, auth: Option<Value>) {
    join_by_access(&s);
    let Ok(Some(after)) = replay::requested(auth.as_ref(), &s) else {
        return;
    };
    let Some(access) = s.extensions.get::<Access>() else {
        return;
    };
    match gate.history.get() {
        Some(history) if gate.replay_limit > 0 => {
            replay::replay(Arc::clone(history), s, access, after, gate.replay_limit).await;
        }
        _ => {
            let summary = serde_json::json!({"after": after, "replayed": 0, "complete": false,
                "error": "replay is not available on this server (WEBSOCKET_REPLAY_MAX=0 or no event history)"});
            if let Err(e) = s.emit(replay::REPLAY_EVENT, &summary) {
                tracing::debug!(error = %e, "cannot send the replay summary");
            }
        }
    }
}

fn join_by_access(s: &SocketRef) {
    match s.extensions.get::<Access>() {
        Some(Access::Global) => s.join(GLOBAL_ROOM),
        Some(Access::Instance(name)) => s.join(name.as_str().to_owned()),
        Some(Access::Denied) | None => {
            // The middleware admitted it, so this does not happen; refuse rather than guess.
            if let Err(e) = s.clone().disconnect() {
                tracing::debug!(error = %e, "disconnecting a socket without access");
            }
        }
    }
}

#[async_trait]
impl EventSink for WebsocketSink {
    fn channel(&self) -> Channel {
        Channel::Websocket
    }

    /// Batches of up to 256, ordered (each socket receives the emissions in send order), not
    /// acknowledged (Socket.IO emissions are written to the sockets' buffers, not confirmed).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH).ordered()
    }

    /// Emits every item, in batch order, to the sockets its destination names.
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(error(ErrorKind::Closed, "the websocket sink is shut down"));
        }
        if batch.is_empty() {
            return Ok(DeliveryReport::success());
        }
        self.check_usable()?;
        let mut report = DeliveryReport::success();
        for (index, delivery) in batch.iter().enumerate() {
            let Destination::Websocket(target) = &*delivery.destination else {
                report.fail(
                    index,
                    error(
                        ErrorKind::ConfigInvalid,
                        format!("not a websocket destination: {}", delivery.destination.label()),
                    ),
                );
                continue;
            };
            let payload = delivery.payload();
            let data = match serde_json::from_slice::<&RawValue>(&payload) {
                Ok(data) => data,
                Err(e) => {
                    report.fail(
                        index,
                        error(
                            ErrorKind::Unexpected,
                            format!("the payload of event {} is not JSON: {e}", delivery.envelope.id()),
                        ),
                    );
                    continue;
                }
            };
            if let Err(e) = self.emit(target, data).await {
                report.fail(index, e);
            }
        }
        Ok(report)
    }

    /// `Ok` while the endpoint is mounted on a live router and the sink is open.
    async fn health_check(&self) -> Result<(), SinkError> {
        self.check_usable()
    }

    /// Nothing to do: emissions are in the sockets' buffers when `send` returns.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Disconnects every socket (clients reconnect to the next server) and closes the sink.
    async fn shutdown(&self) -> Result<(), SinkError> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.io.close().await;
        }
        Ok(())
    }
}
