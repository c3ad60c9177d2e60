//! The PostgreSQL outbox: several server replicas on one database (see [`PostgresOutbox`]).
//!
//! Modules by concern: `schema` (name checks, migrations), `ingest` (the tasks that group
//! `enqueue` requests into transactions), `queue` (claim, settle, requeue, ordering keys, redrive,
//! purge, prune), `read` (every read, and the instance store), `tasks` (heartbeat, lease sweeps,
//! pruning, and the LISTEN connection).

mod ingest;
mod queue;
mod read;
mod schema;
mod tasks;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use evolution_events::{Channel, Delivery, EventEnvelope, InstanceName, InstanceSettings, Uuid};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use schema::DEFAULT_SCHEMA;

use crate::rows::Columns;
use crate::{
    ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, InstanceRecord, NewEvent, Outbox, OutboxError,
    RedriveFilter, Settlement, Store, StoreError, StoredEvent,
};

/// The database's clock, in milliseconds since the Unix epoch: every replica compares due times
/// against the same clock.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// How long an operation waits for a connection: while PostgreSQL is unreachable, an `enqueue`
/// fails after this long (the server answers 503 with `Retry-After`) rather than hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a replica tells the others about new work of one channel at most (see `announce`).
const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// How the PostgreSQL outbox is set up.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The schema of its tables (created if missing): a plain lower-case identifier. Default
    /// [`DEFAULT_SCHEMA`], so that it can share a database with other applications.
    pub schema: String,
    /// At most this many unsettled (pending plus in-flight) deliveries per channel; an `enqueue`
    /// that would exceed it is refused with [`OutboxError::Full`]. Each replica counts its own
    /// changes at once and the whole cluster's every few seconds, so across replicas the limit may
    /// be passed by what they accept in those seconds.
    pub capacity: usize,
    /// How long delivered deliveries (and their attempts) are kept for the delivery log.
    pub delivered_retention: Duration,
    /// How long a replica's claims outlive its last heartbeat (renewed every quarter of it): when
    /// a replica dies, the others send its in-flight deliveries again after this long.
    pub lease: Duration,
    /// This replica's name in the `replicas` table. `None`: a new random one per process. Opening
    /// again with the same name puts that name's in-flight deliveries back to pending at once (a
    /// restarted process with a stable name).
    pub replica: Option<String>,
    /// Connections in the pool (the LISTEN connection comes on top).
    pub max_connections: u32,
}

impl PostgresOptions {
    /// Checks a [`schema`](Self::schema) name: 1 to 63 lower-case letters, digits or `_`, not
    /// starting with a digit.
    ///
    /// # Errors
    /// A message saying what a valid name is.
    pub fn check_schema(name: &str) -> Result<(), String> {
        schema::check_schema(name)
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            capacity: crate::DURABLE_CAPACITY,
            delivered_retention: crate::DEFAULT_RETENTION,
            lease: Duration::from_secs(10),
            replica: None,
            max_connections: 16,
        }
    }
}

/// A failed database operation.
#[derive(Debug)]
pub(super) enum DbError {
    Db(sqlx::Error),
    Invalid(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl DbError {
    /// A serialization failure or deadlock: the transaction can simply run again.
    fn is_conflict(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }

    /// The database cannot be reached (or is shutting down or starting).
    fn is_unreachable(&self) -> bool {
        match self {
            Self::Db(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_),
            ) => true,
            Self::Db(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Db(e) => write!(f, "{e}"),
            Self::Invalid(e) => f.write_str(e),
        }
    }
}

/// Runs `op` again (up to five times) when PostgreSQL aborted it as a serialization failure or a
/// deadlock.
async fn with_retry<T, Fut>(mut op: impl FnMut() -> Fut) -> Result<T, DbError>
where
    Fut: Future<Output = Result<T, DbError>>,
{
    let mut tries = 0u32;
    loop {
        match op().await {
            Err(e) if e.is_conflict() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
            }
            other => return other,
        }
    }
}

/// The advisory-lock id of `(what, key)` in `schema` (FNV-1a, 64 bits): ordering keys, migrations.
pub(super) fn lock_id(schema: &str, what: &str, key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [schema, what, key] {
        for b in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

impl Columns for PgRow {
    fn text(&self, column: &str) -> Result<String, String> {
        self.try_get(column).map_err(|e| format!("column {column}: {e}"))
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, String> {
        self.try_get(column).map_err(|e| format!("column {column}: {e}"))
    }

    fn int(&self, column: &str) -> Result<i64, String> {
        self.try_get(column).map_err(|e| format!("column {column}: {e}"))
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, String> {
        self.try_get(column).map_err(|e| format!("column {column}: {e}"))
    }
}

/// What the replica's operations share.
pub(super) struct Inner {
    pool: PgPool,
    schema: String,
    replica: String,
    capacity: usize,
    retention: Duration,
    lease: Duration,
    /// `postgres://user@host:port/database`, without the password: for messages.
    target: String,
    notifiers: Mutex<HashMap<Channel, Arc<Notify>>>,
    /// Unsettled deliveries per channel, as this replica counts them (see
    /// [`PostgresOptions::capacity`]).
    live: Mutex<HashMap<Channel, i64>>,
    /// The deliveries this replica claimed and has not settled or released yet.
    claimed: Mutex<HashMap<i64, Channel>>,
    /// Whether other replicas are alive (then state changes are announced with NOTIFY).
    peers: AtomicBool,
    /// When each channel's work was last announced to the other replicas.
    announced: Mutex<HashMap<Channel, Instant>>,
    /// Bumped whenever instances or settings may have changed on any replica.
    changes: watch::Sender<u64>,
    /// The NOTIFY channel of new work (payload: the delivery channel).
    work_topic: String,
    /// The NOTIFY channel of instance changes (payload: the instance).
    instances_topic: String,
}

impl Inner {
    fn notifier(&self, channel: Channel) -> Arc<Notify> {
        let mut map = self.notifiers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(channel).or_default())
    }

    /// Wakes the workers of `channels` on this replica.
    fn wake<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) {
        for channel in channels {
            self.notifier(*channel).notify_waiters();
        }
    }

    /// Wakes every worker of this replica (after the LISTEN connection was lost and notifications
    /// may have been missed).
    fn wake_all(&self) {
        let map = self.notifiers.lock().unwrap_or_else(PoisonError::into_inner);
        for notify in map.values() {
            notify.notify_waiters();
        }
    }

    /// Adds `delta` to the unsettled count of `channel`.
    fn count(&self, channel: Channel, delta: i64) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        *live.entry(channel).or_default() += delta;
    }

    /// An outbox error for a failed `what`, saying what to do.
    fn error(&self, what: &str, e: &DbError) -> OutboxError {
        OutboxError::Storage(self.message(what, e))
    }

    fn store_error(&self, what: &str, e: &DbError) -> StoreError {
        StoreError::Storage(self.message(what, e))
    }

    fn message(&self, what: &str, e: &DbError) -> String {
        let target = &self.target;
        let schema = &self.schema;
        if e.is_unreachable() {
            format!(
                "could not {what}: PostgreSQL at {target} is unreachable ({e}); check that it is running, \
                 retry later"
            )
        } else {
            format!("could not {what} in PostgreSQL at {target}, schema {schema}: {e}")
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// An [`Outbox`] and [`Store`] in a PostgreSQL schema, shared by every server replica that opens
/// it: they share the deliveries, the instances and their settings.
///
/// **Ingest.** `enqueue` requests are grouped (up to 5 000 events) by two tasks into transactions:
/// each takes the row lock of the per-instance sequence counter, so the `sequence` of an instance
/// has no gap and no duplicate whichever replica accepts its events, and stores every event with
/// all its deliveries. An `enqueue` that returned `Ok` is committed (`synchronous_commit` as the
/// server is set up: on by default, flushed to its WAL).
///
/// **Claims** take due deliveries with `FOR UPDATE SKIP LOCKED`, so replicas never claim the
/// same delivery; a claimed delivery is in flight under this replica's name (its lease). Each
/// replica renews a heartbeat every quarter of [`PostgresOptions::lease`]; when one stops (killed,
/// cut off), any other puts its in-flight deliveries back to pending once the lease has passed.
///
/// **Ordering keys** behave as in the SQLite outbox (its head is ready, the rest wait), across
/// replicas: every change of a key's state runs under the key's advisory lock, and a claim takes
/// the key's lock too (or leaves the key to the replica that holds it), so one batch of a key is in
/// flight in the whole cluster.
///
/// **Notifications.** New work wakes this replica's workers at once, and — while other replicas
/// are alive — theirs through `NOTIFY`; instance changes are announced the same way
/// ([`Store::changes`]). A lost LISTEN connection wakes everything when it is back.
///
/// **Retention** as in the SQLite outbox: delivered deliveries are pruned after
/// [`PostgresOptions::delivered_retention`], in steps of 1 000, by every replica.
pub struct PostgresOutbox {
    inner: Arc<Inner>,
    ingest: mpsc::Sender<ingest::Request>,
    stop: watch::Sender<bool>,
}

impl fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Drop for PostgresOutbox {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// `postgres://user@host:port/database` of `options`, without the password.
fn target(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

impl PostgresOutbox {
    /// Connects to the database at `uri` (`postgres://` or `postgresql://`), creates the schema or
    /// brings it up to date (under an advisory lock: replicas may start together), registers this
    /// replica, puts back to pending what a previous process of the same replica name left in
    /// flight, and starts the tasks that keep the replica going. Must be called inside a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the URI is malformed (the message never repeats the URI: it
    /// may hold a password), the database cannot be reached, or the schema cannot be migrated.
    pub async fn open(uri: &str, options: PostgresOptions) -> Result<Self, OutboxError> {
        PostgresOptions::check_schema(&options.schema).map_err(OutboxError::Storage)?;
        let connect = PgConnectOptions::from_str(uri)
            .map_err(|e| {
                let reason = match e {
                    sqlx::Error::Configuration(inner) => inner.to_string(),
                    other => other.to_string(),
                };
                OutboxError::Storage(format!(
                    "the PostgreSQL connection URI is malformed ({reason}); expected \
                     postgresql://user:password@host:5432/database"
                ))
            })?
            .application_name("evolution-events")
            .options([("search_path", options.schema.as_str())]);
        let target = target(&connect);
        let schema = options.schema.clone();
        let pool = PgPoolOptions::new()
            // The LISTEN connection comes on top of the connections for the work.
            .max_connections(options.max_connections.max(2).saturating_add(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await
            .map_err(|e| {
                OutboxError::Storage(format!(
                    "could not connect to PostgreSQL at {target}: {e}; check that it is running, that the \
                     address and credentials are right, and that the database exists"
                ))
            })?;
        {
            let mut conn = pool.acquire().await.map_err(|e| {
                OutboxError::Storage(format!("could not connect to PostgreSQL at {target}: {e}"))
            })?;
            schema::migrate(&mut conn, &schema).await.map_err(|e| {
                OutboxError::Storage(format!(
                    "could not create or migrate the schema `{schema}` in PostgreSQL at {target}: {e}; \
                     check that the user may create schemas and tables there"
                ))
            })?;
        }
        let replica = options
            .replica
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let inner = Arc::new(Inner {
            work_topic: format!("{schema}.work"),
            instances_topic: format!("{schema}.instances"),
            pool,
            schema,
            replica,
            capacity: options.capacity.max(1),
            retention: options.delivered_retention,
            lease: options.lease.max(Duration::from_millis(400)),
            target,
            notifiers: Mutex::default(),
            live: Mutex::default(),
            claimed: Mutex::default(),
            peers: AtomicBool::new(false),
            announced: Mutex::default(),
            changes: watch::Sender::new(0),
        });
        tasks::heartbeat(&inner)
            .await
            .map_err(|e| inner.error("register this replica", &e))?;
        let recovered = queue::requeue(&inner, queue::Requeue::Mine)
            .await
            .map_err(|e| inner.error("recover the deliveries left in flight", &e))?;
        if recovered > 0 {
            tracing::info!(
                replica = %inner.replica,
                recovered,
                "deliveries left in flight by a previous process of this replica are pending again"
            );
        }
        tasks::recount(&inner)
            .await
            .map_err(|e| inner.error("count the pending deliveries", &e))?;
        let (stop, stopped) = watch::channel(false);
        let listening = tasks::listen(&inner)
            .await
            .map_err(|e| inner.error("LISTEN for notifications", &e))?;
        tokio::spawn(tasks::listener(Arc::clone(&inner), listening, stopped.clone()));
        tokio::spawn(tasks::maintenance(Arc::clone(&inner), stopped));
        let (tx, rx) = mpsc::channel(ingest::QUEUE_DEPTH);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..ingest::WRITERS {
            tokio::spawn(ingest::run(Arc::clone(&inner), Arc::clone(&rx)));
        }
        Ok(Self {
            inner,
            ingest: tx,
            stop,
        })
    }

    /// Deletes the delivered deliveries older than the retention (all of them with
    /// `Duration::ZERO`), their attempts, and the events left with no delivery. Returns how many
    /// deliveries. Replicas also do this on their own.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn prune(&self, older_than: Duration) -> Result<usize, OutboxError> {
        let mut total = 0;
        loop {
            let n = with_retry(|| queue::prune(&self.inner, older_than))
                .await
                .map_err(|e| self.inner.error("prune delivered deliveries", &e))?;
            total += n;
            if n < queue::PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// The value shared by every replica under `name`: the one stored first, or `value` when there
    /// is none yet (then it is stored). How replicas agree on a generated API key.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn shared_setting(&self, name: &str, value: &str) -> Result<String, OutboxError> {
        read::shared_setting(&self.inner, name, value)
            .await
            .map_err(|e| self.inner.error("read the shared settings", &e))
    }

    /// Stops this replica: its tasks end, its in-flight deliveries go back to pending and it leaves
    /// the `replicas` table, so that no other replica waits for its lease. Later operations fail.
    pub async fn close(&self) {
        self.stop.send_replace(true);
        if let Err(e) = queue::requeue(&self.inner, queue::Requeue::Mine).await {
            tracing::warn!(error = %e, "could not put this replica's in-flight deliveries back");
        }
        let left = sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&self.inner.replica)
            .execute(&self.inner.pool)
            .await;
        if let Err(e) = left {
            tracing::warn!(error = %e, "could not remove this replica from the replicas table");
        }
        self.inner.pool.close().await;
    }
}

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<EventEnvelope>>, OutboxError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let closed = || OutboxError::Storage("the PostgreSQL outbox is closed".to_owned());
        self.ingest
            .send(ingest::Request { events, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn claim(&self, channel: Channel, limit: usize) -> Result<Vec<Delivery>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        with_retry(|| queue::claim(&self.inner, channel, limit))
            .await
            .map_err(|e| self.inner.error("claim deliveries", &e))
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), OutboxError> {
        if settlements.is_empty() {
            return Ok(());
        }
        with_retry(|| queue::settle(&self.inner, &settlements))
            .await
            .map_err(|e| self.inner.error("record the outcomes of deliveries", &e))
    }

    async fn next_due(&self, channel: Channel) -> Result<Option<Duration>, OutboxError> {
        read::next_due(&self.inner, channel)
            .await
            .map_err(|e| self.inner.error("read when the next delivery is due", &e))
    }

    fn notifier(&self, channel: Channel) -> Arc<Notify> {
        self.inner.notifier(channel)
    }

    async fn release(&self, channel: Channel) -> Result<(), OutboxError> {
        with_retry(|| queue::requeue(&self.inner, queue::Requeue::Channel(channel)))
            .await
            .map(|_| ())
            .map_err(|e| self.inner.error("release the in-flight deliveries", &e))
    }

    async fn stats(&self, channel: Channel) -> Result<ChannelStats, OutboxError> {
        read::stats(&self.inner, channel)
            .await
            .map_err(|e| self.inner.error("count the deliveries", &e))
    }

    async fn dead_letters(
        &self,
        channel: Option<Channel>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        read::dead_letters(&self.inner, channel, limit)
            .await
            .map_err(|e| self.inner.error("read the dead letters", &e))
    }

    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        with_retry(|| queue::redrive(&self.inner, filter))
            .await
            .map_err(|e| self.inner.error("redrive dead letters", &e))
    }

    async fn purge(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        with_retry(|| queue::purge(&self.inner, filter))
            .await
            .map_err(|e| self.inner.error("purge dead letters", &e))
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, OutboxError> {
        read::deliveries(&self.inner, query)
            .await
            .map_err(|e| self.inner.error("read the delivery log", &e))
    }

    async fn event(&self, instance: &InstanceName, id: Uuid) -> Result<Option<StoredEvent>, OutboxError> {
        read::event(&self.inner, instance, id)
            .await
            .map_err(|e| self.inner.error("look up an event", &e))
    }

    async fn events_after(
        &self,
        instance: &InstanceName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError> {
        read::events_after(&self.inner, instance, after, limit)
            .await
            .map_err(|e| self.inner.error("read the events after a sequence", &e))
    }

    async fn deliveries_after(
        &self,
        channel: Channel,
        after: Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>, OutboxError> {
        read::deliveries_after(&self.inner, channel, after, instance, limit)
            .await
            .map_err(|e| self.inner.error("read the deliveries to replay", &e))
    }
}

#[async_trait]
impl Store for PostgresOutbox {
    async fn create_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        read::create_instance(&self.inner, record).await
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        read::instances(&self.inner)
            .await
            .map_err(|e| self.inner.store_error("read the instances", &e))
    }

    async fn update_settings(
        &self,
        name: &InstanceName,
        settings: &InstanceSettings,
    ) -> Result<bool, StoreError> {
        read::update_settings(&self.inner, name, settings)
            .await
            .map_err(|e| self.inner.store_error("store the settings", &e))
    }

    async fn delete_instance(&self, name: &InstanceName) -> Result<bool, StoreError> {
        read::delete_instance(&self.inner, name)
            .await
            .map_err(|e| self.inner.store_error("delete the instance", &e))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.changes.subscribe())
    }
}

/// Tells the other replicas, when there are any, that deliveries of `channels` may have become
/// claimable: a NOTIFY on the work topic per channel, sent when `conn`'s transaction commits.
///
/// At most one per channel every [`ANNOUNCE_EVERY`]: a commit that sends NOTIFY takes a lock of the
/// whole PostgreSQL cluster until it is flushed (such commits never share a flush), and a woken
/// replica's workers keep claiming until the channel is empty. Nothing waits on an announcement
/// that was skipped: this replica's own workers are woken at once.
async fn announce(
    inner: &Inner,
    conn: &mut PgConnection,
    channels: &BTreeSet<Channel>,
) -> Result<(), DbError> {
    if channels.is_empty() || !inner.peers.load(Ordering::Relaxed) {
        return Ok(());
    }
    let payloads: Vec<&str> = {
        let now = Instant::now();
        let mut announced = inner.announced.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .iter()
            .filter(|c| {
                let due = announced
                    .get(*c)
                    .is_none_or(|at| now.duration_since(*at) >= ANNOUNCE_EVERY);
                if due {
                    announced.insert(**c, now);
                }
                due
            })
            .map(|c| c.as_str())
            .collect()
    };
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(&inner.work_topic)
        .bind(&payloads)
        .execute(conn)
        .await?;
    Ok(())
}
