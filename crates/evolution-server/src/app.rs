//! The running server: storage, dispatcher, instance cache, lifecycle events.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
#[cfg(feature = "websocket")]
use std::sync::{Mutex, OnceLock, PoisonError};

use evolution_events::{
    Channel, EventEnvelope, EventKind, InstanceName, RawValue, Scope, Sensitive, TraceContext,
};
use evolution_outbox::{InstanceRecord, Outbox, Store};
#[cfg(feature = "postgres")]
use evolution_outbox::{PostgresOptions, PostgresOutbox};
use evolution_outbox::{SqliteOptions, SqliteOutbox};
#[cfg(feature = "websocket")]
use evolution_sinks::websocket::{Access, WebsocketLayer, WebsocketSink};
use evolution_sinks::{DeadNotice, DisabledNotice, Dispatcher, EmitError, Router, Routing};
use tokio::sync::mpsc;

use crate::config::{Config, Database};
use crate::instances::{Instance, InstanceCache};
use crate::telemetry::{Ingest, Telemetry, TelemetryError};

/// How many ERRORS notifications may wait to be emitted.
const DEAD_NOTICE_QUEUE: usize = 10_000;

/// Shared state of the REST API.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) api_key: Sensitive,
    /// Signs the URLs of events sent by reference.
    pub(crate) signer: crate::reference::Signer,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) outbox: Arc<dyn Outbox>,
    storage: Storage,
    instances: InstanceCache,
    pub(crate) accepted: AtomicU64,
    /// Trace contexts of the accepted events, and the OTLP export of spans.
    pub(crate) telemetry: Arc<Telemetry>,
    /// The last readiness checks and when they ran (`GET /ready` answers them for
    /// [`READY_TTL`](crate::api::READY_TTL); callers meanwhile wait for the one that runs them).
    pub(crate) ready: tokio::sync::Mutex<Option<(tokio::time::Instant, bool, serde_json::Value)>>,
    /// The websocket channel's sink (`WEBSOCKET_ENABLED=true`).
    #[cfg(feature = "websocket")]
    pub(crate) websocket: Option<Arc<WebsocketSink>>,
    /// Its Socket.IO endpoint, until the HTTP router takes it (`api::routes`).
    #[cfg(feature = "websocket")]
    websocket_layer: Mutex<Option<WebsocketLayer>>,
}

/// The storage backend, for closing it.
#[derive(Debug)]
enum Storage {
    Sqlite(Arc<SqliteOutbox>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<PostgresOutbox>),
}

/// How often instances and settings are read again from a database shared with other replicas,
/// besides when a change is announced.
const INSTANCE_RELOAD: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot open the database (DATABASE_CONNECTION_URI): {0}")]
    Database(String),
    #[error(
        "cannot read or write the API key file {path}: {error}; check the permissions of SERVER_DATA_DIR"
    )]
    ApiKey { path: String, error: std::io::Error },
    #[error("invalid global channel settings: {0}")]
    Routing(#[from] evolution_events::ValidationErrors),
    #[error("cannot build the {0} channel: {1}")]
    Sink(evolution_events::Channel, evolution_events::SinkError),
    #[error("cannot start the dispatcher: {0}")]
    Dispatcher(#[from] evolution_sinks::BuildError),
    #[error("{0}")]
    Telemetry(#[from] TelemetryError),
}

impl App {
    /// Opens the storage, loads instances, starts the dispatcher and emits `APPLICATION_STARTUP`.
    pub(crate) async fn start(config: Config) -> Result<Arc<Self>, StartError> {
        let (storage, outbox, store): (Storage, Arc<dyn Outbox>, Arc<dyn Store>) = match &config.database {
            Database::Sqlite(path) => {
                let options = SqliteOptions {
                    capacity: config.max_backlog,
                    durability: config.durability,
                    delivered_retention: config.retention,
                };
                let sqlite = Arc::new(
                    SqliteOutbox::open(path, options)
                        .await
                        .map_err(|e| StartError::Database(format!("{}: {e}", path.display())))?,
                );
                (
                    Storage::Sqlite(Arc::clone(&sqlite)),
                    Arc::clone(&sqlite) as Arc<dyn Outbox>,
                    sqlite,
                )
            }
            #[cfg(feature = "postgres")]
            Database::Postgres {
                uri,
                schema,
                lease,
                pool_size,
            } => {
                let options = PostgresOptions {
                    schema: schema.clone(),
                    capacity: config.max_backlog,
                    delivered_retention: config.retention,
                    lease: *lease,
                    max_connections: *pool_size,
                    ..PostgresOptions::default()
                };
                let postgres = Arc::new(
                    PostgresOutbox::open(uri.expose(), options)
                        .await
                        .map_err(|e| StartError::Database(e.to_string()))?,
                );
                (
                    Storage::Postgres(Arc::clone(&postgres)),
                    Arc::clone(&postgres) as Arc<dyn Outbox>,
                    postgres,
                )
            }
        };
        let api_key = match &storage {
            Storage::Sqlite(_) => load_or_create_api_key(&config)?,
            #[cfg(feature = "postgres")]
            Storage::Postgres(postgres) => shared_api_key(&config, postgres).await?,
        };
        let telemetry = Arc::new(Telemetry::from_env()?);
        let router = Router::new(config.global.clone())?;
        let signer = crate::reference::Signer::new(&api_key, config.base_url(), config.reference_ttl);
        let body_signer = signer.clone();
        let (dead_tx, dead_rx) = mpsc::channel::<Notice>(DEAD_NOTICE_QUEUE);
        let disabled_tx = dead_tx.clone();
        let mut builder = Dispatcher::builder(Arc::clone(&outbox), router);
        // The websocket sink asks the app who may see what; the app exists only after the sinks.
        #[cfg(feature = "websocket")]
        let slot: Arc<OnceLock<Weak<App>>> = Arc::new(OnceLock::new());
        #[cfg(feature = "websocket")]
        let mut websocket = None;
        for plan in config.channels.clone() {
            let channel = plan.channel();
            #[cfg(feature = "websocket")]
            if channel == Channel::Websocket {
                let slot = Arc::clone(&slot);
                let authorizer = move |key: &str| match slot.get().and_then(Weak::upgrade) {
                    Some(app) => app.access(key),
                    None => Access::Denied,
                };
                let (sink, layer, dispatch) = plan
                    .build_websocket(authorizer)
                    .await
                    .map_err(|e| StartError::Sink(channel, e))?;
                sink.set_history(Arc::new(OutboxHistory(Arc::clone(&outbox))));
                builder = builder.sink_with(
                    Arc::clone(&sink) as Arc<dyn evolution_events::EventSink>,
                    dispatch,
                );
                websocket = Some((sink, layer));
                continue;
            }
            let (sink, dispatch) = plan.build().map_err(|e| StartError::Sink(channel, e))?;
            builder = builder.sink_with(sink, dispatch);
        }
        #[cfg(feature = "websocket")]
        let (websocket, websocket_layer) = websocket.unzip();
        if telemetry.exports() {
            let telemetry = Arc::clone(&telemetry);
            builder = builder.on_attempt(move |notice| telemetry.attempt(&notice));
        }
        let dispatcher = builder
            .on_dead(move |notice| {
                if dead_tx.try_send(Notice::Dead(notice)).is_err() {
                    tracing::warn!("too many dead deliveries at once: an ERRORS event was not emitted");
                }
            })
            .reference_with(move |delivery| body_signer.body(delivery))
            .on_disabled(move |notice| {
                if disabled_tx.try_send(Notice::Disabled(notice)).is_err() {
                    tracing::warn!(
                        "too many notices at once: a disabled destination's ERRORS event was not emitted"
                    );
                }
            })
            .start()?;
        let instances = store
            .instances()
            .await
            .map_err(|e| StartError::Database(e.to_string()))?;
        let instances = InstanceCache::new(dispatcher.router().clone(), instances);
        let app = Arc::new(Self {
            config,
            api_key,
            signer,
            dispatcher,
            store,
            outbox,
            storage,
            instances,
            accepted: AtomicU64::new(0),
            telemetry,
            ready: tokio::sync::Mutex::new(None),
            #[cfg(feature = "websocket")]
            websocket,
            #[cfg(feature = "websocket")]
            websocket_layer: Mutex::new(websocket_layer),
        });
        #[cfg(feature = "websocket")]
        let _ignored = slot.set(Arc::downgrade(&app));
        tokio::spawn(emit_errors(Arc::clone(&app), dead_rx));
        if let Some(changes) = app.store.changes() {
            tokio::spawn(follow_instances(Arc::downgrade(&app), changes));
        }
        let data = serde_json::json!({"version": env!("CARGO_PKG_VERSION")});
        let startup = app.envelope(
            EventKind::ApplicationStartup,
            app.config.server_name.clone(),
            &data,
            None,
        );
        if let Err(e) = app.emit(vec![startup]).await {
            tracing::warn!(error = %e, "could not emit APPLICATION_STARTUP");
        }
        Ok(app)
    }

    /// Closes the storage (after the dispatcher stopped).
    pub(crate) async fn close_storage(&self) {
        match &self.storage {
            Storage::Sqlite(sqlite) => sqlite.close().await,
            #[cfg(feature = "postgres")]
            Storage::Postgres(postgres) => postgres.close().await,
        }
    }

    /// Replaces the cached instances with what the store holds now.
    async fn reload_instances(&self) -> Result<(), evolution_outbox::StoreError> {
        self.instances.replace_all(self.store.instances().await?);
        Ok(())
    }

    /// The cached instance.
    pub(crate) fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        self.instances.get(name)
    }

    /// Every cached instance, by name.
    pub(crate) fn all_instances(&self) -> Vec<Arc<Instance>> {
        self.instances.all()
    }

    /// Replaces (or adds) a cached instance, checking its settings.
    pub(crate) fn cache(&self, record: InstanceRecord) {
        self.instances.insert(record);
    }

    /// Replaces (or adds) a cached instance whose settings were just checked.
    pub(crate) fn cache_checked(&self, instance: Instance) {
        self.instances.insert_checked(instance);
    }

    /// Drops a cached instance.
    pub(crate) fn uncache(&self, name: &InstanceName) {
        self.instances.remove(name);
    }

    /// The instance whose token is `key` (see [`InstanceCache::by_token`]).
    pub(crate) fn instance_by_token(&self, key: &str) -> Option<Arc<Instance>> {
        self.instances.by_token(key)
    }

    /// What `key` may see (on the websocket channel): everything for the global key, one instance for its token (both
    /// compared in constant time), nothing otherwise.
    #[cfg(feature = "websocket")]
    pub(crate) fn access(&self, key: &str) -> Access {
        if crate::instances::constant_time_eq(key.as_bytes(), self.api_key.expose().as_bytes()) {
            return Access::Global;
        }
        match self.instance_by_token(key) {
            Some(record) => Access::Instance(record.name.clone()),
            None => Access::Denied,
        }
    }

    /// The Socket.IO endpoint to mount on the HTTP router (once; `None` without the websocket
    /// channel).
    #[cfg(feature = "websocket")]
    pub(crate) fn take_websocket_layer(&self) -> Option<WebsocketLayer> {
        self.websocket_layer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// An envelope for `instance`, with `SERVER_URL`, and the instance token as `apikey` when
    /// `AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=true`.
    pub(crate) fn envelope(
        &self,
        kind: EventKind,
        instance: InstanceName,
        data: &serde_json::Value,
        sender: Option<String>,
    ) -> EventEnvelope {
        // A `Value` always serializes (its map keys are strings).
        let raw = serde_json::value::to_raw_value(data).unwrap_or_else(|_| RawValue::NULL.to_owned());
        let record = self.instance(instance.as_str());
        self.envelope_raw(
            kind,
            instance,
            record.as_deref().map(Instance::record),
            raw,
            sender,
        )
    }

    /// An envelope for `instance` (whose cached record is `record`, if it has one) with `data`
    /// already JSON.
    pub(crate) fn envelope_raw(
        &self,
        kind: EventKind,
        instance: InstanceName,
        record: Option<&InstanceRecord>,
        data: Box<RawValue>,
        sender: Option<String>,
    ) -> EventEnvelope {
        let apikey = if self.config.expose_in_fetch {
            record.map(|r| r.token.clone())
        } else {
            None
        };
        let format = record
            .and_then(|r| r.settings.event_format)
            .unwrap_or(self.config.event_format);
        EventEnvelope::new(kind, instance, data)
            .with_format(format)
            .with_server_url(self.config.server_url.clone())
            .with_sender(sender)
            .with_apikey(apikey)
    }

    /// Routes and stores events of `instance` with its checked settings (the envelopes moved, the
    /// instance found once by the caller).
    ///
    /// The events take the trace context of one ingest span, a child of `parent` (the producer's
    /// `traceparent`) or the root of a new trace.
    pub(crate) async fn emit_for(
        &self,
        instance: &Instance,
        envelopes: Vec<EventEnvelope>,
        parent: Option<&TraceContext>,
    ) -> Result<Vec<Arc<EventEnvelope>>, EmitError> {
        let ingest = self.telemetry.ingest(parent, &instance.name);
        let batch = envelopes
            .into_iter()
            .map(|envelope| {
                (
                    envelope.with_trace(Some(ingest.context().clone())),
                    instance.routing(),
                )
            })
            .collect();
        let stored = self.dispatcher.emit_many(batch).await;
        self.ingested(ingest, stored)
    }

    /// Ends the ingest span of a request and counts the accepted events.
    fn ingested(
        &self,
        ingest: Ingest,
        stored: Result<Vec<Arc<EventEnvelope>>, EmitError>,
    ) -> Result<Vec<Arc<EventEnvelope>>, EmitError> {
        match stored {
            Ok(stored) => {
                ingest.end(stored.len(), None);
                self.accepted.fetch_add(stored.len() as u64, Ordering::Relaxed);
                Ok(stored)
            }
            Err(e) => {
                ingest.end(0, Some(&e));
                Err(e)
            }
        }
    }

    /// Routes and stores events, each with its instance's cached settings (global settings only
    /// for a name that is not an instance, such as the server's own), in a new trace.
    pub(crate) async fn emit(
        &self,
        envelopes: Vec<EventEnvelope>,
    ) -> Result<Vec<Arc<EventEnvelope>>, EmitError> {
        self.emit_traced(envelopes, None).await
    }

    /// [`App::emit`] with the events' ingest span a child of `parent`.
    pub(crate) async fn emit_traced(
        &self,
        envelopes: Vec<EventEnvelope>,
        parent: Option<&TraceContext>,
    ) -> Result<Vec<Arc<EventEnvelope>>, EmitError> {
        let Some(first) = envelopes.first() else {
            return Ok(Vec::new());
        };
        let ingest = self.telemetry.ingest(parent, first.instance());
        let cached: Vec<Option<Arc<Instance>>> = envelopes
            .iter()
            .map(|e| self.instance(e.instance().as_str()))
            .collect();
        let batch = envelopes
            .into_iter()
            .zip(&cached)
            .map(|(envelope, cached)| {
                let routing = cached.as_ref().map_or(Routing::Unchecked(None), |i| i.routing());
                (envelope.with_trace(Some(ingest.context().clone())), routing)
            })
            .collect();
        let stored = self.dispatcher.emit_many(batch).await;
        self.ingested(ingest, stored)
    }
}

/// What the dispatcher tells the app about: a delivery given up, a destination disabled.
enum Notice {
    Dead(DeadNotice),
    Disabled(DisabledNotice),
}

/// Emits an `ERRORS` event for every delivery that went dead (never for an `ERRORS` event's own
/// deliveries, so a dead errors endpoint cannot loop) and for every destination disabled.
async fn emit_errors(app: Arc<App>, mut notices: mpsc::Receiver<Notice>) {
    while let Some(notice) = notices.recv().await {
        let (instance, data, trace) = match notice {
            Notice::Dead(notice) => {
                let d = &notice.delivery;
                if d.channel == Channel::Webhook && d.scope == Scope::Instance && notice.status == Some(410) {
                    disable_webhook(
                        &app,
                        d.envelope.instance(),
                        &d.destination.label(),
                        "the receiver answered 410 Gone",
                    )
                    .await;
                }
                if d.envelope.kind() == EventKind::Errors {
                    continue;
                }
                let data = serde_json::json!({
                    "deliveryId": d.id,
                    "eventId": d.envelope.id(),
                    "event": d.envelope.kind(),
                    "channel": d.channel,
                    "destination": d.destination.label(),
                    "attempts": d.attempt,
                    "error": notice.error,
                });
                (d.envelope.instance().clone(), data, d.envelope.trace().cloned())
            }
            Notice::Disabled(notice) => {
                let h = &notice.health;
                let window = app
                    .dispatcher
                    .config(h.channel)
                    .and_then(|c| c.disable_after)
                    .unwrap_or_default();
                let reason = format!(
                    "every attempt failed for {} s (since {}): the destination is disabled; its deliveries \
                     are held as dead letters until it is enabled again (POST /{}/set/{})",
                    window.as_secs(),
                    h.failing_since.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    h.channel,
                    h.instance
                );
                if h.channel == Channel::Webhook {
                    disable_webhook(&app, &h.instance, &h.destination, &reason).await;
                }
                let data = serde_json::json!({
                    "channel": h.channel,
                    "destination": h.destination,
                    "disabled": true,
                    "reason": reason,
                    "failingSince": h.failing_since,
                    "lastSuccess": h.last_success,
                    "consecutiveFailures": h.consecutive_failures,
                    "error": h.last_error,
                });
                (h.instance.clone(), data, None)
            }
        };
        let envelope = app.envelope(EventKind::Errors, instance, &data, None);
        // The ERRORS event of a dead delivery continues the trace of the event that died.
        if let Err(e) = app.emit_traced(vec![envelope], trace.as_ref()).await {
            tracing::warn!(error = %e, "could not emit an ERRORS event");
        }
    }
}

/// The instance's webhook is switched off (its settings are kept; `POST /webhook/set` enables it
/// again): its receiver answered 410 Gone, or every attempt failed for the whole window.
async fn disable_webhook(app: &App, instance: &InstanceName, destination: &str, why: &str) {
    let Some(record) = app.instance(instance.as_str()) else {
        return;
    };
    let mut settings = record.settings.clone();
    let Some(webhook) = settings.webhook.as_mut().filter(|w| w.enabled) else {
        return;
    };
    webhook.enabled = false;
    match app.store.update_settings(&record.name, &settings).await {
        Ok(_) => {
            tracing::warn!(
                instance = %record.name, %destination, reason = %why,
                "the instance's webhook is disabled"
            );
            app.cache(InstanceRecord {
                settings,
                ..record.record().clone()
            });
        }
        Err(e) => tracing::error!(instance = %record.name, error = %e, "could not disable a webhook"),
    }
}

/// A fresh random token (two v4 UUIDs, 244 random bits), upper-case hex.
pub(crate) fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
    .to_ascii_uppercase()
}

/// Keeps the instance cache in step with a store other replicas change too: reloads it whenever a
/// change is announced and every [`INSTANCE_RELOAD`] (in case an announcement was lost), until the
/// app is gone.
async fn follow_instances(app: Weak<App>, mut changes: tokio::sync::watch::Receiver<u64>) {
    loop {
        let announced = tokio::select! {
            changed = changes.changed() => changed.is_ok(),
            () = tokio::time::sleep(INSTANCE_RELOAD) => true,
        };
        let Some(app) = app.upgrade() else {
            return;
        };
        if let Err(e) = app.reload_instances().await {
            tracing::warn!(error = %e, "could not reload the instances; retrying");
        }
        if !announced {
            // The store is gone: reload on the timer only.
            tokio::time::sleep(INSTANCE_RELOAD).await;
        }
    }
}

/// `AUTHENTICATION_API_KEY`, or the key the replicas sharing a PostgreSQL database agreed on: the
/// first one to start stored its key (the one in its data directory, or a new one, printed) in the
/// database. Each replica keeps a copy in its data directory (`api-key`), as on SQLite.
#[cfg(feature = "postgres")]
async fn shared_api_key(config: &Config, postgres: &PostgresOutbox) -> Result<Sensitive, StartError> {
    if let Some(key) = &config.api_key {
        return Ok(key.clone());
    }
    let path = config.data_dir.join("api-key");
    let local = read_key_file(&path)?;
    let candidate = local.clone().unwrap_or_else(random_token);
    let key = postgres
        .shared_setting("api_key", &candidate)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    if local.as_deref() != Some(key.as_str()) {
        if local.is_some() {
            tracing::warn!(
                path = %path.display(),
                "the API key in the data directory is not the one the replicas share: replacing it"
            );
            std::fs::remove_file(&path).map_err(|error| StartError::ApiKey {
                path: path.display().to_string(),
                error,
            })?;
        }
        store_key_file(config, &path, &key)?;
        if key == candidate {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "No AUTHENTICATION_API_KEY was set: generated one, shared by every replica through the \
                     database and stored in {} (shown only now):\n{key}",
                    path.display()
                );
            }
        }
    }
    Ok(Sensitive::new(key))
}

/// The key stored at `path`, if any.
fn read_key_file(path: &Path) -> Result<Option<String>, StartError> {
    match std::fs::read_to_string(path) {
        Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StartError::ApiKey {
            path: path.display().to_string(),
            error,
        }),
    }
}

/// Stores `key` at `path` (readable by the owner only), creating the data directory.
fn store_key_file(config: &Config, path: &Path, key: &str) -> Result<(), StartError> {
    let io = |error| StartError::ApiKey {
        path: path.display().to_string(),
        error,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io)?;
    write_private(path, key).map_err(io)
}

/// `AUTHENTICATION_API_KEY`, or the key stored in the data directory, or a new one (stored, and
/// printed once).
fn load_or_create_api_key(config: &Config) -> Result<Sensitive, StartError> {
    if let Some(key) = &config.api_key {
        return Ok(key.clone());
    }
    let path = config.data_dir.join("api-key");
    if let Some(key) = read_key_file(&path)? {
        return Ok(Sensitive::new(key));
    }
    let key = random_token();
    store_key_file(config, &path, &key)?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "No AUTHENTICATION_API_KEY was set: generated one and stored it in {} (shown only now):\n{key}",
            path.display()
        );
    }
    Ok(Sensitive::new(key))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// What a reconnecting Socket.IO client missed, read from the outbox (`lastEventId` replay).
#[cfg(feature = "websocket")]
#[derive(Debug)]
struct OutboxHistory(Arc<dyn Outbox>);

#[cfg(feature = "websocket")]
#[async_trait::async_trait]
impl evolution_sinks::websocket::History for OutboxHistory {
    async fn after(
        &self,
        after: evolution_events::Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<evolution_events::Delivery>>, String> {
        self.0
            .deliveries_after(Channel::Websocket, after, instance, limit)
            .await
            .map_err(|e| e.to_string())
    }
}
