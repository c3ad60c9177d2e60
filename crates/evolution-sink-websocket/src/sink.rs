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
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SocketIo, SocketIoBuilder};
use socketioxide_core::adapter::DefinedAdapter;

use crate::auth::{self, Access, Authorizer};
use crate::classify::{Emitted, classify, error};
use crate::config::WebsocketConfig;
use crate::layer::{Attachment, Inner, WebsocketLayer};
#[cfg(feature = "redis")]
use crate::redis_adapter::{Cluster, RedisAdapter};
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
    io: Io,
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

/// The Socket.IO server, on the adapter the configuration asks for.
enum Io {
    /// This server's clients only (socketioxide's local adapter).
    Local(SocketIo),
    /// The clients of every replica, through Redis.
    #[cfg(feature = "redis")]
    Redis(Box<Replicated>),
}

/// A Socket.IO server on the Redis adapter.
#[cfg(feature = "redis")]
struct Replicated {
    io: SocketIo<RedisAdapter>,
    cluster: Cluster,
    /// Held while a namespace is created for an emission (one creation per namespace).
    creating: tokio::sync::Mutex<()>,
}

#[cfg(feature = "redis")]
impl Replicated {
    /// The namespace `path`, created (and its Redis channels subscribed) if this replica has none
    /// yet: a per-instance namespace exists on a replica once a client connected to it there, but
    /// an emission must reach the clients of the other replicas too.
    async fn namespace(
        &self,
        path: &str,
        gate: &Arc<Gate>,
    ) -> Result<BroadcastOperators<RedisAdapter>, SinkError> {
        if let Some(ns) = self.io.of(path) {
            return Ok(ns);
        }
        let _creating = self.creating.lock().await;
        if let Some(ns) = self.io.of(path) {
            return Ok(ns);
        }
        let name = path.strip_prefix('/').unwrap_or(path);
        if InstanceName::new(name).is_err() {
            return Err(error(
                ErrorKind::ConfigInvalid,
                format!("no such namespace {path}: use / or /{{instance name}}"),
            ));
        }
        register(&self.io, gate, path.to_owned()).await.map_err(|e| {
            self.cluster
                .unavailable(&format!("subscribing to the namespace {path}"), &e)
        })?;
        self.io.of(path).ok_or_else(|| {
            error(
                ErrorKind::Unexpected,
                format!("the namespace {path} was created but cannot be found"),
            )
        })
    }
}

impl fmt::Debug for WebsocketSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketSink")
            .field("config", &self.config)
            .field("adapter", &self.adapter())
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
    fn access<A: Adapter>(&self, s: &SocketRef<A>, auth: Option<&Value>) -> Result<Access, auth::Refusal> {
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
    /// A sink and the Socket.IO endpoint it emits through, for this server's clients (the local
    /// adapter). Mount the layer on the HTTP router (`router.layer(layer)`, served with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that `allowed_hosts` can match
    /// peers); until it is mounted, and after the router is dropped, sends fail as `Unavailable`.
    ///
    /// `authorizer` decides what each connection's API key may see.
    ///
    /// # Errors
    /// `ConfigInvalid` when the path does not start with `/`, the buffer size is zero, the replay
    /// limit is not under the buffer size, or `config.redis` is set (that needs
    /// [`WebsocketSink::connect`], which connects to Redis).
    pub fn new(
        config: WebsocketConfig,
        authorizer: impl Authorizer,
    ) -> Result<(Self, WebsocketLayer), SinkError> {
        check(&config)?;
        if config.redis.is_some() {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "a websocket sink shared through Redis is built with WebsocketSink::connect (it connects to Redis)",
            ));
        }
        let (layer, io) = builder(&config).build_layer();
        let gate = Gate::new(authorizer, &config);
        register(&io, &gate, "/".to_owned());
        register_dynamic(&io, &gate)?;
        Ok(Self::assemble(Io::Local(io), Inner::Local(layer), gate, config))
    }

    /// As [`WebsocketSink::new`], and, when `config.redis` names a Redis server, on socketioxide's
    /// Redis adapter: connects to Redis first (within its timeout), so that every emission of any
    /// replica reaches the clients connected to every replica.
    ///
    /// # Errors
    /// As [`WebsocketSink::new`]; `Unavailable` when Redis cannot be reached or does not answer
    /// (the message names `CACHE_REDIS_URI`, with its password hidden); `ConfigInvalid` when
    /// `config.redis` is set and this build has no `redis` feature.
    pub async fn connect(
        config: WebsocketConfig,
        authorizer: impl Authorizer,
    ) -> Result<(Self, WebsocketLayer), SinkError> {
        let Some(redis) = config.redis.clone() else {
            return Self::new(config, authorizer);
        };
        check(&config)?;
        #[cfg(not(feature = "redis"))]
        {
            let _ = (redis, authorizer);
            Err(error(
                ErrorKind::ConfigInvalid,
                "CACHE_REDIS_ENABLED=true: this build of the websocket channel has no Redis support (the `redis` \
                 feature of evolution-sink-websocket); rebuild with it, or set CACHE_REDIS_ENABLED=false",
            ))
        }
        #[cfg(feature = "redis")]
        {
            let (cluster, adapter) = Cluster::connect(&redis).await?;
            let (layer, io) = builder(&config)
                .with_adapter::<RedisAdapter>(adapter)
                .build_layer();
            let gate = Gate::new(authorizer, &config);
            register(&io, &gate, "/".to_owned())
                .await
                .map_err(|e| cluster.unavailable("subscribing to the namespace /", &e))?;
            register_dynamic(&io, &gate)?;
            let io = Io::Redis(Box::new(Replicated {
                io,
                cluster,
                creating: tokio::sync::Mutex::new(()),
            }));
            Ok(Self::assemble(io, Inner::Redis(layer), gate, config))
        }
    }

    fn assemble(io: Io, layer: Inner, gate: Arc<Gate>, config: WebsocketConfig) -> (Self, WebsocketLayer) {
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
        (sink, WebsocketLayer::new(layer, attachment))
    }

    /// `local`, or `redis` when emissions are shared with the other replicas.
    #[must_use]
    pub fn adapter(&self) -> &'static str {
        match &self.io {
            Io::Local(_) => "local",
            #[cfg(feature = "redis")]
            Io::Redis(_) => "redis",
        }
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
        match &self.io {
            Io::Local(io) => local_sockets(io),
            #[cfg(feature = "redis")]
            Io::Redis(r) => local_sockets(&r.io),
        }
    }

    /// Disconnects every socket that an instance's token admitted (on `/` and on
    /// `/{instance}`): call it when the instance is deleted, so that its token stops working for
    /// connections that are already open. Sockets of the global key stay.
    ///
    /// With Redis, the sockets of every replica are disconnected.
    pub async fn disconnect_instance(&self, instance: &InstanceName) {
        let room = instance.as_str().to_owned();
        let namespace = format!("/{instance}");
        match &self.io {
            Io::Local(io) => {
                disconnect_room(io.of("/"), &room).await;
                disconnect_room(io.of(&namespace), &room).await;
            }
            #[cfg(feature = "redis")]
            Io::Redis(r) => {
                for path in ["/", namespace.as_str()] {
                    match r.namespace(path, &self.gate).await {
                        Ok(ns) => disconnect_room(Some(ns), &room).await,
                        Err(e) => tracing::warn!(
                            %instance, error = %e,
                            "cannot disconnect the sockets of a deleted instance on the other replicas"
                        ),
                    }
                }
            }
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
        let rooms = Rooms::of(target)?;
        let result = match &self.io {
            Io::Local(io) => {
                let Some(ns) = io.of(&target.namespace) else {
                    // A per-instance namespace nobody has connected to yet: nobody to deliver to.
                    return Ok(());
                };
                rooms.broadcast(ns, &target.event, data).await
            }
            #[cfg(feature = "redis")]
            Io::Redis(r) => {
                let ns = r.namespace(&target.namespace, &self.gate).await?;
                rooms.broadcast(ns, &target.event, data).await
            }
        };
        match classify(result) {
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

/// The settings every Socket.IO server of the sink is built with.
fn builder(config: &WebsocketConfig) -> SocketIoBuilder {
    SocketIo::builder()
        .req_path(config.path.clone())
        .max_buffer_size(config.max_buffer_size)
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .connect_timeout(config.connect_timeout)
}

/// The settings the sink refuses.
fn check(config: &WebsocketConfig) -> Result<(), SinkError> {
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
    Ok(())
}

impl Gate {
    fn new(authorizer: impl Authorizer, config: &WebsocketConfig) -> Arc<Self> {
        Arc::new(Self {
            authorizer: Box::new(authorizer),
            allowed_hosts: config.allowed_hosts.iter().map(|ip| ip.to_canonical()).collect(),
            history: OnceLock::new(),
            replay_limit: config.replay_limit,
        })
    }
}

/// The connect handler of a namespace on adapter `A`: the authentication middleware (and, on
/// `/{instance}`, whether the access covers that instance), then [`connected`].
macro_rules! handler {
    ($gate:expr, $per_instance:expr, $adapter:ty) => {{
        let on_connect = Arc::clone($gate);
        let middleware = Arc::clone($gate);
        let per_instance: bool = $per_instance;
        (move |s: SocketRef<$adapter>, io: SocketIo<$adapter>, TryData(auth): TryData<Value>| {
            connected(Arc::clone(&on_connect), io, s, auth.ok())
        })
        .with(move |s: SocketRef<$adapter>, TryData(auth): TryData<Value>| {
            let gate = Arc::clone(&middleware);
            async move {
                let access = gate.access(&s, auth.as_ref().ok())?;
                if per_instance {
                    auth::admit_namespace(&access, s.ns())?;
                }
                replay::requested(auth.as_ref().ok(), &s).map_err(auth::Refusal::BadLastEventId)?;
                s.extensions.insert(access);
                Ok::<(), auth::Refusal>(())
            }
        })
    }};
}

/// Registers the namespace `path`: `/` (rooms by access) or one `/{instance}`. What the adapter
/// returns tells when it is ready (nothing to wait for on the local adapter; the Redis channels
/// subscribed on the Redis adapter).
fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, gate: &Arc<Gate>, path: String) -> A::InitRes {
    let per_instance = path != "/";
    io.ns(path, handler!(gate, per_instance, A))
}

/// `/{instance}` for every valid instance name (one namespace per instance, admitted by access),
/// created when a client first connects to it.
fn register_dynamic<A: Adapter>(io: &SocketIo<A>, gate: &Arc<Gate>) -> Result<(), SinkError> {
    io.dyn_ns("/{instance}", handler!(gate, true, A)).map_err(|e| {
        error(
            ErrorKind::Unexpected,
            format!("cannot register the per-instance namespaces: {e}"),
        )
    })
}

/// Who an emission goes to on its namespace.
enum Rooms {
    /// The sockets with global access (`*`).
    Global,
    /// The sockets of one instance, and the sockets with global access.
    Instance(String),
    /// Every socket of a per-instance namespace (each was admitted for that instance).
    All,
}

impl Rooms {
    fn of(target: &WebsocketTarget) -> Result<Self, SinkError> {
        Ok(match target.room.as_deref() {
            Some(GLOBAL_ROOM) => Self::Global,
            Some(room) => Self::Instance(room.to_owned()),
            None if target.namespace == "/" => {
                return Err(error(
                    ErrorKind::ConfigInvalid,
                    "a destination on namespace / needs a room (an instance name or `*`): without one every \
                     socket of every instance would get it",
                ));
            }
            None => Self::All,
        })
    }

    async fn broadcast<A: Adapter>(
        self,
        ns: BroadcastOperators<A>,
        event: &str,
        data: &RawValue,
    ) -> Result<(), BroadcastError> {
        let ops = match self {
            Self::Global => ns.to(GLOBAL_ROOM),
            Self::Instance(room) => ns.to([room, GLOBAL_ROOM.to_owned()]),
            Self::All => ns,
        };
        ops.emit(event, data).await
    }
}

/// Sockets connected to this server, all namespaces together.
fn local_sockets<A: Adapter>(io: &SocketIo<A>) -> usize {
    io.nsps().into_iter().map(|ns| ns.sockets().len()).sum()
}

async fn disconnect_room<A: Adapter>(ns: Option<BroadcastOperators<A>>, room: &str) {
    if let Some(ns) = ns
        && let Err(e) = ns.within(room.to_owned()).disconnect().await
    {
        tracing::debug!(room, error = %e, "disconnecting the sockets of a deleted instance");
    }
}

/// Joins the rooms of the socket's access (on `/`: the instance's name for an instance token,
/// `*` for global access; on `/{instance}` the same, so that deleting an instance can find its
/// sockets), then replays what it missed if it asked to. Joining first means an event accepted
/// while the replay is read arrives live (and perhaps replayed too), never not at all.
///
/// A socket whose namespace is not the one the server holds for its path (a client that connected
/// while an emission on another replica's behalf created that namespace here) is disconnected, so
/// that its client reconnects to the one that receives the emissions.
async fn connected<A: Adapter>(gate: Arc<Gate>, io: SocketIo<A>, s: SocketRef<A>, auth: Option<Value>) {
    if io.of(s.ns()).and_then(|ns| ns.get_socket(s.id)).is_none() {
        tracing::debug!(
            namespace = s.ns(),
            "a socket of a replaced namespace is disconnected to reconnect"
        );
        if let Err(e) = s.disconnect() {
            tracing::debug!(error = %e, "disconnecting a socket of a replaced namespace");
        }
        return;
    }
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

fn join_by_access<A: Adapter>(s: &SocketRef<A>) {
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

    /// Batches of up to 256, ordered (each socket receives the emissions in send order).
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
            let Some(target) = delivery.destination.websocket() else {
                report.fail(index, delivery.destination.mismatch(Channel::Websocket));
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
                if e.kind() == ErrorKind::Unavailable {
                    // Redis is down: the rest would fail alike (and, sent after it, break the
                    // order of the item that failed); they wait together.
                    for later in index + 1..batch.len() {
                        report.fail(later, e.duplicate());
                    }
                    report.fail(index, e);
                    break;
                }
                report.fail(index, e);
            }
        }
        Ok(report)
    }

    /// `Ok` while the endpoint is mounted on a live router and the sink is open, and, with Redis,
    /// while Redis answers a `PING`.
    async fn health_check(&self) -> Result<(), SinkError> {
        self.check_usable()?;
        match &self.io {
            Io::Local(_) => Ok(()),
            #[cfg(feature = "redis")]
            Io::Redis(r) => r.cluster.health().await,
        }
    }

    /// With Redis, creates the per-instance namespaces of `destinations` on this replica (their
    /// Redis channels subscribed), which the first emission would do otherwise.
    async fn prepare(&self, destinations: &[Destination]) -> Result<(), SinkError> {
        #[cfg(feature = "redis")]
        if let Io::Redis(r) = &self.io {
            for target in destinations.iter().filter_map(Destination::websocket) {
                r.namespace(&target.namespace, &self.gate).await?;
            }
        }
        let _ = destinations;
        Ok(())
    }

    /// Nothing to do: emissions are in the sockets' buffers when `send` returns.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Disconnects every socket (clients reconnect to the next server) and closes the sink.
    async fn shutdown(&self) -> Result<(), SinkError> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            match &self.io {
                Io::Local(io) => io.close().await,
                #[cfg(feature = "redis")]
                Io::Redis(r) => {
                    r.cluster.stop();
                    r.io.close().await;
                }
            }
        }
        Ok(())
    }
}
