//! The SQLite outbox: durable, embedded, and the server's default (see [`SqliteOutbox`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use evolution_events::{
    Channel, Delivery, DeliveryId, Destination, EventEnvelope, EventKind, InstanceName, InstanceSettings,
    NamingProfile, RawValue, Scope, Sensitive, Uuid,
};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Sqlite};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::{
    Attempt, AttemptRecord, ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, DeliveryStatus,
    InstanceRecord, NewEvent, Outbox, OutboxError, Outcome, RedriveFilter, Settlement, StatusFilter, Store,
    StoreError, StoredEvent,
};

/// Default [`SqliteOptions::capacity`]: unsettled deliveries per channel.
const DEFAULT_SQLITE_CAPACITY: usize = 1_000_000;
/// Default [`SqliteOptions::delivered_retention`].
const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the writer prunes delivered deliveries.
const PRUNE_EVERY: Duration = Duration::from_secs(5 * 60);
/// Delivered deliveries deleted per prune step (one transaction).
const PRUNE_BATCH: usize = 5_000;
/// A transaction takes more waiting requests while it holds fewer events (or settlements) than this.
const MAX_GROUP_WEIGHT: usize = 5_000;
/// … and fewer requests than this.
const MAX_GROUP_REQUESTS: usize = 1_024;
/// Requests waiting for the writer before callers wait to send theirs.
const QUEUE_DEPTH: usize = 4_096;
/// Rows per multi-row `INSERT`, largest first; a batch is split into chunks of these sizes.
const INSERT_CHUNKS: [usize; 4] = [64, 16, 4, 1];

// Delivery states (the `deliveries.state` column).
/// Pending and claimable once due: unordered, or the head of its ordering key with nothing of that
/// key in flight.
const READY: i64 = 0;
/// Claimed, not settled.
const IN_FLIGHT: i64 = 1;
/// Delivered; kept for the delivery log until pruned.
const DELIVERED: i64 = 2;
/// Given up.
const DEAD: i64 = 3;
/// Pending behind the head of its ordering key, or while its key is in flight.
const WAITING: i64 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Options of [`SqliteOutbox::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// At most this many unsettled (pending plus in-flight) deliveries per channel; an enqueue
    /// beyond it fails with [`OutboxError::Full`] and stores nothing. Default 1 000 000.
    pub capacity: usize,
    /// `synchronous=FULL`: every commit is flushed to the disk, so accepted events survive a power
    /// loss or an operating system crash, at the cost of one fsync per commit. The default
    /// (`false`: `synchronous=NORMAL` in WAL mode) survives the process being killed at any point
    /// but may lose the last commits on power loss.
    pub synchronous_full: bool,
    /// Delivered deliveries and their attempts are kept this long for the delivery log, then
    /// pruned (with their events once no delivery of them is left). Default 24 hours.
    pub delivered_retention: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_SQLITE_CAPACITY,
            synchronous_full: false,
            delivered_retention: DEFAULT_RETENTION,
        }
    }
}

/// Counters of the writer's work since the outbox was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions run (each one commit).
    pub transactions: u64,
    /// Write requests handled; `requests / transactions` is the average group size.
    pub requests: u64,
}

/// An [`Outbox`] and [`Store`] in one SQLite database file: durable, embedded, and the server's
/// default.
///
/// **Group commit.** One writer task owns the only write connection. Every write (`enqueue`,
/// `claim`, `settle`, `release`, `redrive`, pruning and the [`Store`] writes) is a request to it;
/// it takes every request waiting (up to 5 000 events) and runs them in one transaction, each in its
/// own savepoint so that a failing request undoes only itself, and answers each caller only after
/// `COMMIT`. Concurrent producers thus share commits. Reads (`next_due`, `stats`, `dead_letters`,
/// `deliveries`, `instances`) use a small pool of read-only connections.
///
/// **Crash safety.** An `enqueue` that returned `Ok` is committed. With the default
/// `synchronous=NORMAL` in WAL mode a commit survives the process being killed at any point; with
/// [`SqliteOptions::synchronous_full`] it also survives a power loss or an operating system crash.
/// Deliveries in flight when the process died go back to pending when the file is opened again (at
/// least once: they may be sent twice).
///
/// **Ordering keys** behave as in [`MemoryOutbox`](crate::MemoryOutbox), keyed per channel; a
/// redriven dead letter takes its place in its key again by enqueue order (its id).
///
/// **Time** is the wall clock: retry delays become timestamps in the database, with millisecond
/// precision (as are event times, so [`RedriveFilter`] bounds compare at millisecond precision).
///
/// **History.** Delivered deliveries and every attempt are kept for the delivery log for
/// [`SqliteOptions::delivered_retention`]; dead letters are kept until redriven.
///
/// **One at a time.** `open` takes the lock file `<path>.lock` for as long as the writer runs: a
/// second outbox on the same file waits up to 10 s for the first to be closed or dropped (its
/// writer finishing its queue), then fails; a killed process lets go of it at once.
pub struct SqliteOutbox {
    requests: mpsc::Sender<Request>,
    read: SqlitePool,
    notifiers: Arc<Notifiers>,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("path", &self.path)
            .field("write_stats", &self.write_stats())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    requests: AtomicU64,
}

#[derive(Debug, Default)]
struct Notifiers(Mutex<HashMap<Channel, Arc<Notify>>>);

impl Notifiers {
    fn get(&self, channel: Channel) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(channel).or_default())
    }

    fn notify(&self, channels: impl IntoIterator<Item = Channel>) {
        for channel in channels {
            self.get(channel).notify_waiters();
        }
    }
}

impl SqliteOutbox {
    /// Opens (creating it and its parent directories if needed) the database at `path`, brings
    /// its schema up to date, and recovers: every delivery left in flight by a previous process
    /// goes back to pending, due now, its attempts unchanged. Must be called inside a Tokio
    /// runtime (it spawns the writer task).
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the directory cannot be created, the file cannot be opened as
    /// an SQLite database, or its schema cannot be migrated.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<Self, OutboxError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                OutboxError::Storage(format!(
                    "could not create the directory {} of the SQLite outbox: {e}; create it or choose \
                     another path",
                    parent.display()
                ))
            })?;
        }
        let lock = lock_file(path).await?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let synchronous = if options.synchronous_full {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let write_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .pragma("cache_size", "-16384");
        let mut conn = write_options.connect().await.map_err(|e| {
            OutboxError::Storage(format!(
                "could not open the SQLite outbox at {shown}: {e}; check that the path is writable, \
                     is an SQLite database (or does not exist yet) and is not locked by another process"
            ))
        })?;
        MIGRATOR.run(&mut conn).await.map_err(|e| {
            OutboxError::Storage(format!(
                "could not bring the schema of the SQLite outbox at {shown} up to date: {e}; was it \
                 written by a newer version? Use that version, or another file"
            ))
        })?;
        let recovered = recover(&mut conn).await.map_err(|e| {
            OutboxError::Storage(format!(
                "could not recover the deliveries left in flight in the SQLite outbox at {shown}: {e}; \
                 check free disk space and that the file is writable"
            ))
        })?;
        if recovered > 0 {
            tracing::info!(
                path = %shown,
                recovered,
                "deliveries left in flight by a previous process are pending again"
            );
        }
        let read = SqlitePoolOptions::new()
            .min_connections(0)
            .max_connections(2)
            .connect_with(base.read_only(true).synchronous(synchronous))
            .await
            .map_err(|e| {
                OutboxError::Storage(format!(
                    "could not open read connections to the SQLite outbox at {shown}: {e}; check the \
                     file's permissions"
                ))
            })?;
        let notifiers = Arc::new(Notifiers::default());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            _lock: lock,
            conn,
            options: write_options,
            cache: Cache::default(),
            capacity: options.capacity.max(1),
            retention: options.delivered_retention,
            notifiers: Arc::clone(&notifiers),
            counters: Arc::clone(&counters),
        };
        tokio::spawn(writer.run(rx));
        Ok(Self {
            requests: tx,
            read,
            notifiers,
            counters,
            path: path.to_owned(),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of the writer (transactions and requests), e.g. for metrics.
    #[must_use]
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
        }
    }

    /// Deletes the delivered deliveries older than [`SqliteOptions::delivered_retention`], their
    /// attempts, and the events left with no delivery. The writer also does this every few
    /// minutes. Returns how many deliveries were deleted.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn prune(&self) -> Result<usize, OutboxError> {
        let mut total = 0;
        loop {
            let n = self.call(|reply| Request::Prune(Some(reply))).await?;
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Waits until the writer has finished every request sent before this call, closes the
    /// database, and stops the writer. Later operations fail with [`OutboxError::Storage`].
    /// Idempotent. (Dropping the outbox without closing it is safe too: the writer finishes the
    /// queued requests in the background.)
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.requests.send(Request::Close(reply)).await.is_ok() {
            // An error means the writer is gone already: closed is closed.
            done.await.ok();
        }
        self.read.close().await;
    }

    async fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    fn closed(&self) -> WriteError {
        WriteError::Storage(format!(
            "the SQLite outbox at {} is closed (close() was called or its writer stopped after an \
             error, see the logs): open it again",
            self.path.display()
        ))
    }

    fn read_error(&self, what: &str, e: &sqlx::Error) -> String {
        if matches!(e, sqlx::Error::PoolClosed) {
            let WriteError::Storage(message) = self.closed() else {
                return String::new();
            };
            return message;
        }
        format!(
            "could not read {what} from the SQLite outbox at {}: {e}; check that the file is readable \
             and not corrupted",
            self.path.display()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Requests to the writer.

type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

enum Request {
    Enqueue(Vec<NewEvent>, Reply<Vec<Arc<EventEnvelope>>>),
    Claim(Channel, usize, Reply<Vec<Delivery>>),
    Settle(Vec<Settlement>, Reply<()>),
    Release(Channel, Reply<()>),
    Redrive(RedriveFilter, Reply<usize>),
    Purge(RedriveFilter, Reply<usize>),
    Prune(Option<Reply<usize>>),
    CreateInstance(InstanceRecord, Reply<()>),
    UpdateSettings(InstanceName, InstanceSettings, Reply<bool>),
    DeleteInstance(InstanceName, Reply<bool>),
    Close(oneshot::Sender<()>),
}

impl Request {
    /// How much work this request adds to a transaction.
    fn weight(&self) -> usize {
        match self {
            Self::Enqueue(events, _) => events.len().max(1),
            Self::Settle(settlements, _) => settlements.len().max(1),
            Self::Prune(_) => PRUNE_BATCH,
            _ => 1,
        }
    }

    /// Answers with an error without running.
    fn fail(self, message: &str) {
        let err = || WriteError::Storage(message.to_owned());
        match self {
            Self::Enqueue(_, r) => answer(r, Err(err())),
            Self::Claim(_, _, r) => answer(r, Err(err())),
            Self::Settle(_, r) | Self::Release(_, r) | Self::CreateInstance(_, r) => answer(r, Err(err())),
            Self::Redrive(_, r) | Self::Purge(_, r) => answer(r, Err(err())),
            Self::Prune(r) => {
                if let Some(r) = r {
                    answer(r, Err(err()));
                }
            }
            Self::UpdateSettings(_, _, r) | Self::DeleteInstance(_, r) => answer(r, Err(err())),
            Self::Close(_) => {}
        }
    }
}

fn answer<T>(reply: Reply<T>, result: Result<T, WriteError>) {
    if reply.send(result).is_err() {
        tracing::trace!("an outbox caller stopped waiting for its answer");
    }
}

/// What a write failed with.
#[derive(Debug)]
enum WriteError {
    Full { channel: Channel, capacity: usize },
    Conflict(String),
    Storage(String),
}

impl From<WriteError> for OutboxError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Full { channel, capacity } => Self::Full { channel, capacity },
            WriteError::Conflict(m) | WriteError::Storage(m) => Self::Storage(m),
        }
    }
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Conflict(name) => Self::Conflict(name),
            WriteError::Full { channel, capacity } => {
                Self::Storage(OutboxError::Full { channel, capacity }.to_string())
            }
            WriteError::Storage(m) => Self::Storage(m),
        }
    }
}

/// Wraps a database error of a write: what failed, and what to do.
fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> WriteError {
    move |e| {
        WriteError::Storage(format!(
            "the SQLite outbox could not {what}: {e}; check free disk space and that the database file \
             is writable"
        ))
    }
}

/// Called with `None` once the transaction committed, or with the reason it did not.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

fn finish<T: Send + 'static>(reply: Reply<T>, result: Result<T, WriteError>) -> (bool, Finish) {
    (
        result.is_ok(),
        Box::new(move |failed: Option<&str>| {
            let result = match failed {
                None => result,
                Some(message) => Err(WriteError::Storage(message.to_owned())),
            };
            answer(reply, result);
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// The writer.

struct Writer {
    /// Held while the writer runs: one process (one `SqliteOutbox`) per database at a time.
    _lock: std::fs::File,
    conn: SqliteConnection,
    /// How to open the write connection again after a failure left it in an unknown state.
    options: SqliteConnectOptions,
    cache: Cache,
    capacity: usize,
    retention: Duration,
    notifiers: Arc<Notifiers>,
    counters: Arc<Counters>,
}

/// What the writer remembers between requests. Every entry equals what is committed (or about to
/// be, in the running transaction); cleared when a transaction fails.
#[derive(Default)]
struct Cache {
    /// Last sequence per instance.
    sequences: HashMap<InstanceName, u64>,
    /// Unsettled deliveries per channel.
    live: HashMap<Channel, usize>,
    next_event: Option<i64>,
    next_delivery: Option<i64>,
}

/// The cache changes of one request, applied once its savepoint is released.
#[derive(Default)]
struct Staged {
    sequences: HashMap<InstanceName, u64>,
    live: BTreeMap<Channel, i64>,
    notify: BTreeSet<Channel>,
}

impl Cache {
    fn clear(&mut self) {
        *self = Self::default();
    }

    fn merge(&mut self, staged: Staged) {
        self.sequences.extend(staged.sequences);
        for (channel, delta) in staged.live {
            // Channels not cached are counted from the database when needed.
            if let Some(n) = self.live.get_mut(&channel) {
                let updated = i64::try_from(*n).unwrap_or(i64::MAX).saturating_add(delta);
                *n = usize::try_from(updated).unwrap_or(0);
            }
        }
    }

    async fn live(&mut self, conn: &mut SqliteConnection, channel: Channel) -> Result<usize, WriteError> {
        if let Some(n) = self.live.get(&channel) {
            return Ok(*n);
        }
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state IN (0, 1, 4)")
                .bind(channel.as_str())
                .fetch_one(&mut *conn)
                .await
                .map_err(db("count the unsettled deliveries"))?;
        let n = usize::try_from(n).unwrap_or(0);
        self.live.insert(channel, n);
        Ok(n)
    }

    async fn last_sequence(
        &mut self,
        conn: &mut SqliteConnection,
        instance: &InstanceName,
    ) -> Result<u64, WriteError> {
        if let Some(n) = self.sequences.get(instance) {
            return Ok(*n);
        }
        let last: Option<i64> = sqlx::query_scalar("SELECT last FROM sequences WHERE instance = ?1")
            .bind(instance.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("read the last sequence number of an instance"))?;
        let last = last.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        self.sequences.insert(instance.clone(), last);
        Ok(last)
    }

    /// Reserves `n` event row ids; returns the first.
    async fn event_ids(&mut self, conn: &mut SqliteConnection, n: usize) -> Result<i64, WriteError> {
        let first = match self.next_event {
            Some(id) => id,
            None => sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM events")
                .fetch_one(&mut *conn)
                .await
                .map_err(db("read the last event id"))?,
        };
        self.next_event = Some(first + i64::try_from(n).unwrap_or(i64::MAX / 2));
        Ok(first)
    }

    /// Reserves `n` delivery ids (never reused: `AUTOINCREMENT`); returns the first.
    async fn delivery_ids(&mut self, conn: &mut SqliteConnection, n: usize) -> Result<i64, WriteError> {
        let first = match self.next_delivery {
            Some(id) => id,
            None => sqlx::query_scalar(
                "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0), \
                 COALESCE((SELECT MAX(id) FROM deliveries), 0)) + 1",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(db("read the last delivery id"))?,
        };
        self.next_delivery = Some(first + i64::try_from(n).unwrap_or(i64::MAX / 2));
        Ok(first)
    }
}

impl Writer {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut next_prune = Instant::now() + PRUNE_EVERY;
        let mut closing = None;
        while closing.is_none() {
            let first = tokio::select! {
                biased;
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
                () = tokio::time::sleep_until(next_prune) => Request::Prune(None),
            };
            let mut group = Vec::new();
            let mut weight = 0;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                if let Request::Close(done) = request {
                    closing = Some(done);
                    break;
                }
                if matches!(request, Request::Prune(None)) {
                    next_prune = Instant::now() + PRUNE_EVERY;
                }
                weight += request.weight();
                group.push(request);
                if weight < MAX_GROUP_WEIGHT && group.len() < MAX_GROUP_REQUESTS {
                    next = requests.try_recv().ok();
                }
            }
            if group.is_empty() {
                continue;
            }
            let (pruned, reconnect) = self.process(group).await;
            if reconnect {
                // A failed BEGIN or COMMIT (a full disk, say) may leave the connection inside a
                // transaction SQLite already ended: start again from a fresh connection.
                self.reconnect().await;
            }
            if pruned >= PRUNE_BATCH {
                // More to prune: go on soon, after the requests waiting.
                next_prune = Instant::now();
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the SQLite outbox's write connection failed");
        }
        if let Some(done) = closing {
            done.send(()).ok();
        }
    }

    /// Replaces the write connection by a fresh one (after a failure that may have left it inside
    /// a transaction); keeps the old one if the database cannot be opened now.
    async fn reconnect(&mut self) {
        match self.options.connect().await {
            Ok(conn) => {
                let old = std::mem::replace(&mut self.conn, conn);
                if let Err(e) = sqlx::Connection::close(old).await {
                    tracing::debug!(error = %e, "closing the failed write connection");
                }
                tracing::info!("the SQLite outbox reopened its write connection");
            }
            Err(e) => tracing::error!(error = %e, "the SQLite outbox could not reopen its write connection"),
        }
    }

    /// Runs a group of requests in one transaction and answers them. Returns how many deliveries a
    /// timer-driven prune deleted.
    async fn process(&mut self, group: Vec<Request>) -> (usize, bool) {
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .requests
            .fetch_add(u64::try_from(group.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let now = now_ms();
        let multi = group.len() > 1;
        let begun = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| e.to_string());
        let mut tx = match begun {
            Ok(tx) => tx,
            Err(e) => {
                let message = format!(
                    "the SQLite outbox could not start a transaction: {e}; check that no other process \
                     holds the database locked and that the disk is not full"
                );
                tracing::error!(%message);
                self.cache.clear();
                for request in group {
                    request.fail(&message);
                }
                return (0, true);
            }
        };
        let mut done: Vec<Finish> = Vec::with_capacity(group.len());
        let mut notify = BTreeSet::new();
        let mut broken: Option<String> = None;
        let mut rollback = false;
        let mut pruned = 0;
        let mut requests = group.into_iter().peekable();
        while let Some(request) = requests.next() {
            if let Some(message) = &broken {
                request.fail(message);
                continue;
            }
            if let Request::Enqueue(events, reply) = request {
                // This and the enqueues right after it: one set of inserts.
                let mut run = EnqueueRun::default();
                let mut accepted = Vec::new();
                let mut next = Some((events, reply));
                while let Some((events, reply)) = next.take() {
                    match run
                        .add(&mut tx, &mut self.cache, self.capacity, events, now)
                        .await
                    {
                        Ok(stored) => accepted.push((reply, stored)),
                        // Refused before anything was written.
                        Err(e) => answer(reply, Err(e)),
                    }
                    if matches!(requests.peek(), Some(Request::Enqueue(..)))
                        && let Some(Request::Enqueue(events, reply)) = requests.next()
                    {
                        next = Some((events, reply));
                    }
                }
                match run.flush(&mut tx).await {
                    Ok(staged) => {
                        notify.extend(staged.notify.iter().copied());
                        self.cache.merge(staged);
                        done.extend(
                            accepted
                                .into_iter()
                                .map(|(reply, stored)| finish(reply, Ok(stored)).1),
                        );
                    }
                    Err(e) => {
                        let message = match e {
                            WriteError::Storage(message) | WriteError::Conflict(message) => message,
                            full @ WriteError::Full { .. } => OutboxError::from(full).to_string(),
                        };
                        for (reply, _) in accepted {
                            answer(reply, Err(WriteError::Storage(message.clone())));
                        }
                        broken = Some(message);
                    }
                }
                continue;
            }
            if multi && let Err(e) = exec(&mut tx, "SAVEPOINT request").await {
                let message = format!("the SQLite outbox could not start a savepoint: {e}");
                request.fail(&message);
                broken = Some(message);
                continue;
            }
            let mut staged = Staged::default();
            let (ok, fin) = handle(
                &mut tx,
                &mut self.cache,
                (self.capacity, self.retention),
                &mut staged,
                request,
                now,
                &mut pruned,
            )
            .await;
            done.push(fin);
            if ok {
                if multi && let Err(e) = exec(&mut tx, "RELEASE request").await {
                    broken = Some(format!("the SQLite outbox could not release a savepoint: {e}"));
                    continue;
                }
                notify.extend(staged.notify.iter().copied());
                self.cache.merge(staged);
            } else if multi {
                let undone = match exec(&mut tx, "ROLLBACK TO request").await {
                    Ok(()) => exec(&mut tx, "RELEASE request").await,
                    Err(e) => Err(e),
                };
                if let Err(e) = undone {
                    broken = Some(format!("the SQLite outbox could not roll back a savepoint: {e}"));
                }
            } else {
                rollback = true;
            }
        }
        let broken_before_commit = broken.clone();
        let mut rollback_failed = false;
        let failed = if broken.is_some() || rollback {
            // A lone failed request merged nothing into the cache, and what it loaded into it is
            // what was committed before it: the cache stays valid if the rollback works.
            if let Err(e) = tx.rollback().await {
                tracing::warn!(error = %e, "rolling back an SQLite outbox transaction failed");
                self.cache.clear();
                rollback_failed = true;
            }
            broken
        } else {
            match tx.commit().await {
                Ok(()) => None,
                Err(e) => Some(format!(
                    "the SQLite outbox could not commit: {e}; nothing of this request was stored: check \
                     free disk space and retry"
                )),
            }
        };
        if let Some(message) = &failed {
            tracing::error!(%message);
        }
        if failed.is_some() {
            self.cache.clear();
        }
        for fin in done {
            fin(failed.as_deref());
        }
        let reconnect = rollback_failed || (failed.is_some() && !rollback && broken_before_commit.is_none());
        if failed.is_none() && !rollback {
            self.notifiers.notify(notify);
        }
        (if failed.is_some() { 0 } else { pruned }, reconnect)
    }
}

/// Runs one request (enqueues normally go through [`EnqueueRun`] directly, several at a time) with
/// the outbox's capacity and retention of delivered deliveries. Returns whether it succeeded, and
/// how to answer it once the transaction is over.
async fn handle(
    conn: &mut SqliteConnection,
    cache: &mut Cache,
    (capacity, retention): (usize, Duration),
    staged: &mut Staged,
    request: Request,
    now: i64,
    pruned: &mut usize,
) -> (bool, Finish) {
    match request {
        Request::Enqueue(events, reply) => {
            let mut run = EnqueueRun::default();
            let result = match run.add(conn, cache, capacity, events, now).await {
                Ok(stored) => run.flush(conn).await.map(|done| {
                    *staged = done;
                    stored
                }),
                Err(e) => Err(e),
            };
            finish(reply, result)
        }
        Request::Claim(channel, limit, reply) => {
            finish(reply, claim(conn, staged, channel, limit, now).await)
        }
        Request::Settle(settlements, reply) => finish(reply, settle(conn, staged, settlements, now).await),
        Request::Release(channel, reply) => finish(reply, release(conn, staged, channel, now).await),
        Request::Redrive(filter, reply) => finish(reply, redrive(conn, staged, &filter, now).await),
        Request::Purge(filter, reply) => finish(reply, purge(conn, &filter).await),
        Request::Prune(reply) => {
            let result = prune(conn, retention, now).await;
            match reply {
                Some(reply) => finish(reply, result),
                None => {
                    if let Ok(n) = &result {
                        *pruned = *n;
                    }
                    let ok = match result {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = ?e, "pruning the SQLite outbox failed");
                            false
                        }
                    };
                    (ok, Box::new(|_: Option<&str>| {}))
                }
            }
        }
        Request::CreateInstance(record, reply) => finish(reply, create_instance(conn, &record).await),
        Request::UpdateSettings(name, settings, reply) => {
            finish(reply, update_settings(conn, &name, &settings).await)
        }
        Request::DeleteInstance(name, reply) => finish(reply, delete_instance(conn, &name).await),
        Request::Close(done) => {
            done.send(()).ok();
            (true, Box::new(|_: Option<&str>| {}))
        }
    }
}

/// Takes the lock file `<path>.lock`, waiting up to [`BUSY_TIMEOUT`] for a previous writer of this
/// process (a dropped outbox finishing its queue) to let go of it.
async fn lock_file(path: &Path) -> Result<std::fs::File, OutboxError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            OutboxError::Storage(format!(
                "could not create the lock file {} of the SQLite outbox: {e}; check that its directory \
                 is writable",
                lock_path.display()
            ))
        })?;
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutboxError::Storage(format!(
                    "the SQLite outbox at {} is in use by another process or another open outbox \
                     (lock file {}): stop it, or use another path",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OutboxError::Storage(format!(
                    "could not lock {} for the SQLite outbox: {e}; check the file system supports \
                     file locks",
                    lock_path.display()
                )));
            }
        }
    }
}

async fn exec(conn: &mut SqliteConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(|_| ())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Moves every in-flight delivery back to pending (due now) and re-derives which pending deliveries
/// of ordering keys are claimable. Returns how many were in flight.
async fn recover(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let now = now_ms();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let moved = sqlx::query(
        "UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, due_at = ?1, \
         updated_at = ?1 WHERE state = 1",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE deliveries SET state = 4 WHERE state = 0 AND okey IS NOT NULL")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE deliveries SET state = 0 WHERE id IN (SELECT MIN(id) FROM deliveries \
         WHERE state = 4 AND okey IS NOT NULL GROUP BY channel, okey)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(moved)
}

// ---------------------------------------------------------------------------------------------
// Write operations (run by the writer inside a transaction).

/// One value of a multi-row insert.
enum Val {
    Int(i64),
    Text(String),
    Null,
}

impl Val {
    fn opt_text(value: Option<String>) -> Self {
        value.map_or(Self::Null, Self::Text)
    }

    fn opt_int(value: Option<i64>) -> Self {
        value.map_or(Self::Null, Self::Int)
    }

    fn bind<'q>(
        self,
        query: Query<'q, Sqlite, SqliteArguments<'q>>,
    ) -> Query<'q, Sqlite, SqliteArguments<'q>> {
        match self {
            Self::Int(v) => query.bind(v),
            Self::Text(v) => query.bind(v),
            Self::Null => query.bind(None::<i64>),
        }
    }
}

/// Inserts `rows` (each of `width` values) with multi-row `INSERT`s; `head` is
/// `INSERT INTO t (a, b, …)`.
async fn insert_rows(
    conn: &mut SqliteConnection,
    head: &str,
    width: usize,
    rows: Vec<Vec<Val>>,
) -> Result<(), sqlx::Error> {
    let mut left = rows.len();
    let mut rows = rows.into_iter();
    for size in INSERT_CHUNKS {
        if left < size {
            continue;
        }
        let tuple = format!("({})", vec!["?"; width].join(", "));
        let sql = format!("{head} VALUES {}", vec![tuple.as_str(); size].join(", "));
        while left >= size {
            let mut query = sqlx::query(&sql);
            for row in rows.by_ref().take(size) {
                for value in row {
                    query = value.bind(query);
                }
            }
            query.execute(&mut *conn).await?;
            left -= size;
        }
    }
    Ok(())
}

fn scope_str(scope: Scope) -> &'static str {
    match scope {
        Scope::Instance => "instance",
        Scope::Global => "global",
    }
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    match s {
        "instance" => Ok(Scope::Instance),
        "global" => Ok(Scope::Global),
        other => Err(format!("unknown scope `{other}`")),
    }
}

/// Consecutive `enqueue` requests of a transaction, stored with one set of multi-row inserts.
/// [`EnqueueRun::add`] writes nothing (it only reads), so a refused request leaves no trace;
/// [`EnqueueRun::flush`] writes every accepted one.
#[derive(Default)]
struct EnqueueRun {
    staged: Staged,
    /// Ordering keys with unsettled deliveries (in the database or in this run).
    busy_keys: HashSet<(Channel, Arc<str>)>,
    /// Ordering keys looked up in the database.
    checked_keys: HashSet<(Channel, Arc<str>)>,
    event_rows: Vec<Vec<Val>>,
    delivery_rows: Vec<Vec<Val>>,
}

impl EnqueueRun {
    /// Checks capacity, assigns sequences and ids, and queues the rows of one request.
    async fn add(
        &mut self,
        conn: &mut SqliteConnection,
        cache: &mut Cache,
        capacity: usize,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Vec<Arc<EventEnvelope>>, WriteError> {
        // Everything that can fail comes first.
        let mut wanted: BTreeMap<Channel, usize> = BTreeMap::new();
        for event in &events {
            for d in &event.deliveries {
                *wanted.entry(d.channel).or_default() += 1;
            }
        }
        for (channel, n) in &wanted {
            let stored = cache.live(conn, *channel).await?;
            let queued = self.staged.live.get(channel).copied().unwrap_or(0);
            let used = usize::try_from(i64::try_from(stored).unwrap_or(i64::MAX).saturating_add(queued))
                .unwrap_or(usize::MAX);
            if used.saturating_add(*n) > capacity {
                return Err(WriteError::Full {
                    channel: *channel,
                    capacity,
                });
            }
        }
        let mut json: HashMap<usize, Arc<str>> = HashMap::new();
        let mut destinations: Vec<Vec<Arc<str>>> = Vec::with_capacity(events.len());
        for event in &events {
            let mut of_event = Vec::with_capacity(event.deliveries.len());
            for d in &event.deliveries {
                let ptr = Arc::as_ptr(&d.destination) as usize;
                if let Some(text) = json.get(&ptr) {
                    of_event.push(Arc::clone(text));
                    continue;
                }
                let text: Arc<str> = serde_json::to_string(&*d.destination)
                    .map_err(|e| {
                        WriteError::Storage(format!(
                            "could not serialize a {} destination: {e}; this is a bug, please report it",
                            d.channel
                        ))
                    })?
                    .into();
                json.insert(ptr, Arc::clone(&text));
                of_event.push(text);
            }
            destinations.push(of_event);
        }
        for event in &events {
            let instance = event.envelope.instance();
            if !self.staged.sequences.contains_key(instance) {
                cache.last_sequence(conn, instance).await?;
            }
            for d in &event.deliveries {
                let Some(key) = &d.ordering_key else {
                    continue;
                };
                let entry = (d.channel, Arc::clone(key));
                if self.checked_keys.contains(&entry) || self.busy_keys.contains(&entry) {
                    continue;
                }
                let busy: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE channel = ?1 AND okey = ?2 \
                     AND state IN (0, 1, 4))",
                )
                .bind(d.channel.as_str())
                .bind(&**key)
                .fetch_one(&mut *conn)
                .await
                .map_err(db("look up an ordering key"))?;
                if busy {
                    self.busy_keys.insert(entry.clone());
                }
                self.checked_keys.insert(entry);
            }
        }
        let stored_events = events.iter().filter(|e| !e.deliveries.is_empty()).count();
        let mut event_id = cache.event_ids(conn, stored_events).await?;
        let mut delivery_id = cache.delivery_ids(conn, wanted.values().sum()).await?;

        // From here on nothing fails.
        let mut stored = Vec::with_capacity(events.len());
        for (event, destinations) in events.into_iter().zip(destinations) {
            let instance = event.envelope.instance().clone();
            let last = match self.staged.sequences.get(&instance) {
                Some(n) => *n,
                None => cache.sequences.get(&instance).copied().unwrap_or(0),
            };
            let sequence = last + 1;
            self.staged.sequences.insert(instance, sequence);
            let envelope = Arc::new(event.envelope.with_sequence(sequence));
            if !event.deliveries.is_empty() {
                let e = &envelope;
                self.event_rows.push(vec![
                    Val::Int(event_id),
                    Val::Text(e.id().to_string()),
                    Val::Text(e.instance().as_str().to_owned()),
                    Val::Text(e.kind().key().to_owned()),
                    Val::Text(e.data().get().to_owned()),
                    Val::Int(e.date_time().timestamp_millis()),
                    Val::opt_text(e.sender().map(str::to_owned)),
                    Val::opt_text(e.server_url().map(str::to_owned)),
                    Val::opt_text(e.apikey().map(|k| k.expose().to_owned())),
                    Val::Int(to_i64(sequence)),
                    Val::Text(event.profile.as_str().to_owned()),
                ]);
                for (d, destination) in event.deliveries.into_iter().zip(destinations) {
                    let state = match &d.ordering_key {
                        None => READY,
                        // The first delivery of an idle key is its head; the others wait behind it.
                        Some(key) if self.busy_keys.insert((d.channel, Arc::clone(key))) => READY,
                        Some(_) => WAITING,
                    };
                    self.staged.notify.insert(d.channel);
                    *self.staged.live.entry(d.channel).or_default() += 1;
                    self.delivery_rows.push(vec![
                        Val::Int(delivery_id),
                        Val::Int(event_id),
                        Val::Text(d.channel.as_str().to_owned()),
                        Val::Text(scope_str(d.scope).to_owned()),
                        Val::Text(destination.to_string()),
                        Val::opt_text(d.ordering_key.map(|k| k.to_string())),
                        Val::Int(state),
                        Val::Int(now),
                        Val::Int(now),
                    ]);
                    delivery_id += 1;
                }
                event_id += 1;
            }
            stored.push(envelope);
        }
        Ok(stored)
    }

    /// Writes every accepted request; returns the cache changes to apply.
    async fn flush(self, conn: &mut SqliteConnection) -> Result<Staged, WriteError> {
        insert_rows(
            conn,
            "INSERT INTO events (id, uuid, instance, kind, data, date_time, sender, server_url, apikey, \
             sequence, profile)",
            11,
            self.event_rows,
        )
        .await
        .map_err(db("store the events"))?;
        insert_rows(
            conn,
            "INSERT INTO deliveries (id, event_id, channel, scope, destination, okey, state, due_at, \
             updated_at)",
            9,
            self.delivery_rows,
        )
        .await
        .map_err(db("store the deliveries"))?;
        for (instance, last) in &self.staged.sequences {
            sqlx::query(
                "INSERT INTO sequences (instance, last) VALUES (?1, ?2) \
                 ON CONFLICT (instance) DO UPDATE SET last = excluded.last",
            )
            .bind(instance.as_str())
            .bind(to_i64(*last))
            .execute(&mut *conn)
            .await
            .map_err(db("store the sequence numbers"))?;
        }
        Ok(self.staged)
    }
}

/// Columns of a delivery joined with its event, as [`Decoder::delivery`] reads them.
const DELIVERY_SELECT: &str = "SELECT d.id AS id, d.channel AS channel, d.scope AS scope, \
    d.destination AS destination, d.okey AS okey, d.attempts AS attempts, d.due_at AS due_at, \
    d.last_error AS last_error, d.state AS state, e.id AS eid, e.uuid AS uuid, e.instance AS instance, \
    e.kind AS kind, e.data AS data, e.date_time AS date_time, e.sender AS sender, \
    e.server_url AS server_url, e.apikey AS apikey, e.sequence AS sequence, e.profile AS profile \
    FROM deliveries d JOIN events e ON e.id = d.event_id";

async fn claim(
    conn: &mut SqliteConnection,
    staged: &mut Staged,
    channel: Channel,
    limit: usize,
    now: i64,
) -> Result<Vec<Delivery>, WriteError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let ready = sqlx::query(&format!(
        "{DELIVERY_SELECT} WHERE d.channel = ?1 AND d.state = 0 AND d.due_at <= ?2 \
         ORDER BY d.due_at, d.id LIMIT ?3"
    ))
    .bind(channel.as_str())
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read the due deliveries"))?;
    let mut decoder = Decoder::default();
    let mut claimed: Vec<i64> = Vec::new();
    let mut bad: Vec<(i64, Option<String>, String)> = Vec::new();
    let mut take = |row: &SqliteRow, decoder: &mut Decoder, out: &mut Vec<Delivery>| {
        let id: i64 = row.try_get("id").unwrap_or_default();
        match decoder.delivery(row) {
            Ok(delivery) => {
                claimed.push(id);
                out.push(delivery);
            }
            Err(e) => bad.push((id, row.try_get("okey").ok().flatten(), e)),
        }
    };
    for row in &ready {
        if out.len() >= limit {
            break;
        }
        take(row, &mut decoder, &mut out);
        let okey: Option<String> = row.try_get("okey").ok().flatten();
        let Some(key) = okey else {
            continue;
        };
        let rest = limit - out.len();
        if rest == 0 {
            continue;
        }
        let head: i64 = row.try_get("id").unwrap_or_default();
        let run = sqlx::query(&format!(
            "{DELIVERY_SELECT} WHERE d.channel = ?1 AND d.okey = ?2 AND d.state = 4 AND d.id > ?3 \
             ORDER BY d.id LIMIT ?4"
        ))
        .bind(channel.as_str())
        .bind(&key)
        .bind(head)
        .bind(i64::try_from(rest).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("read the deliveries of an ordering key"))?;
        for row in &run {
            let due: i64 = row.try_get("due_at").unwrap_or(i64::MAX);
            if due > now {
                break;
            }
            take(row, &mut decoder, &mut out);
        }
    }
    if !claimed.is_empty() {
        sqlx::query(
            "UPDATE deliveries SET state = 1, updated_at = ?2 WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_ids(&claimed))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("mark the claimed deliveries in flight"))?;
    }
    let mut keys = BTreeSet::new();
    for (id, okey, error) in bad {
        tracing::error!(delivery = id, %error, "an unreadable delivery is dead");
        sqlx::query("UPDATE deliveries SET state = 3, last_error = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(id)
            .bind(format!("the stored delivery could not be read: {error}"))
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db("mark an unreadable delivery dead"))?;
        *staged.live.entry(channel).or_default() -= 1;
        if let Some(key) = okey {
            keys.insert(key);
        }
    }
    for key in keys {
        arm_key(conn, channel, &key).await?;
        staged.notify.insert(channel);
    }
    Ok(out)
}

fn json_ids(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

/// Keeps the invariant of an ordering key: while nothing of it is in flight, its oldest pending
/// delivery is ready and every other one waits; while something is in flight, all wait.
async fn arm_key(conn: &mut SqliteConnection, channel: Channel, key: &str) -> Result<(), WriteError> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE channel = ?1 AND okey = ?2 AND state = 1), \
         (SELECT MIN(id) FROM deliveries WHERE channel = ?1 AND okey = ?2 AND state = 0), \
         (SELECT MIN(id) FROM deliveries WHERE channel = ?1 AND okey = ?2 AND state = 4)",
    )
    .bind(channel.as_str())
    .bind(key)
    .fetch_one(&mut *conn)
    .await
    .map_err(db("read the state of an ordering key"))?;
    let in_flight: bool = row.try_get(0).map_err(db("read the state of an ordering key"))?;
    let ready: Option<i64> = row.try_get(1).map_err(db("read the state of an ordering key"))?;
    let waiting: Option<i64> = row.try_get(2).map_err(db("read the state of an ordering key"))?;
    let head = match (ready, waiting) {
        (Some(r), Some(w)) => Some(r.min(w)),
        (r, w) => r.or(w),
    };
    let keep = if in_flight { None } else { head };
    if ready.is_some() && ready != keep {
        sqlx::query(
            "UPDATE deliveries SET state = 4 WHERE channel = ?1 AND okey = ?2 AND state = 0 AND id <> ?3",
        )
        .bind(channel.as_str())
        .bind(key)
        .bind(keep.unwrap_or(-1))
        .execute(&mut *conn)
        .await
        .map_err(db("update an ordering key"))?;
    }
    if let Some(head) = keep
        && ready != Some(head)
    {
        sqlx::query("UPDATE deliveries SET state = 0 WHERE id = ?1")
            .bind(head)
            .execute(&mut *conn)
            .await
            .map_err(db("update an ordering key"))?;
    }
    Ok(())
}

async fn settle(
    conn: &mut SqliteConnection,
    staged: &mut Staged,
    settlements: Vec<Settlement>,
    now: i64,
) -> Result<(), WriteError> {
    // The first settlement of an id counts (later ones find it settled already).
    let mut seen = HashSet::new();
    let mut items: Vec<(i64, u8, i64, Option<String>)> = Vec::with_capacity(settlements.len());
    let mut facts: HashMap<i64, (&'static str, Option<Attempt>, Option<String>)> = HashMap::new();
    for Settlement { id, outcome, attempt } in settlements {
        let id = to_i64(id);
        if !seen.insert(id) {
            continue;
        }
        let (kind, due, error, name) = match outcome {
            Outcome::Delivered => (0u8, 0, None, "delivered"),
            Outcome::Retry { delay, error } => {
                (1, now.saturating_add(duration_ms(delay)), Some(error), "retry")
            }
            Outcome::Requeue => (2, now, None, ""),
            Outcome::Dead { error } => (3, 0, Some(error), "dead"),
        };
        if kind != 2 {
            facts.insert(id, (name, attempt, error.clone()));
        }
        items.push((id, kind, due, error));
    }
    if items.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(&items)
        .map_err(|e| WriteError::Storage(format!("could not encode the settlements: {e}")))?;
    let rows = sqlx::query(
        "UPDATE deliveries SET \
           state = CASE j.value ->> 1 WHEN 0 THEN 2 WHEN 3 THEN 3 \
                   ELSE (CASE WHEN deliveries.okey IS NULL THEN 0 ELSE 4 END) END, \
           attempts = deliveries.attempts + (CASE j.value ->> 1 WHEN 2 THEN 0 ELSE 1 END), \
           due_at = CASE j.value ->> 1 WHEN 1 THEN j.value ->> 2 WHEN 2 THEN j.value ->> 2 \
                    ELSE deliveries.due_at END, \
           last_error = CASE j.value ->> 1 WHEN 1 THEN j.value ->> 3 WHEN 3 THEN j.value ->> 3 \
                        ELSE deliveries.last_error END, \
           updated_at = ?2 \
         FROM json_each(?1) AS j \
         WHERE deliveries.id = j.value ->> 0 AND deliveries.state = 1 \
         RETURNING deliveries.id, deliveries.channel, deliveries.okey, deliveries.attempts, deliveries.state",
    )
    .bind(json)
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("record the outcomes of deliveries"))?;
    let mut keys: BTreeSet<(Channel, String)> = BTreeSet::new();
    let mut attempt_rows = Vec::new();
    for row in &rows {
        let read = db("read the settled deliveries");
        let (id, channel, okey, attempts, state) = (|| {
            Ok::<_, sqlx::Error>((
                row.try_get::<i64, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<Option<String>, _>(2)?,
                row.try_get::<i64, _>(3)?,
                row.try_get::<i64, _>(4)?,
            ))
        })()
        .map_err(read)?;
        let channel = channel_named(&channel);
        // Work may have become claimable: a delivery back to pending, or an ordering key freed.
        if state == READY || state == WAITING || okey.is_some() {
            staged.notify.insert(channel);
        }
        if state == DELIVERED || state == DEAD {
            *staged.live.entry(channel).or_default() -= 1;
        }
        if let Some(key) = okey {
            keys.insert((channel, key));
        }
        if let Some((outcome, Some(attempt), error)) = facts.remove(&id) {
            attempt_rows.push(vec![
                Val::Int(id),
                Val::Int(attempts),
                Val::Int(now),
                Val::Text(outcome.to_owned()),
                Val::opt_int(attempt.status.map(i64::from)),
                Val::opt_text(error),
                Val::Int(duration_ms(attempt.latency)),
            ]);
        }
    }
    insert_rows(
        conn,
        "INSERT INTO attempts (delivery_id, attempt, at, outcome, status, error, latency_ms)",
        7,
        attempt_rows,
    )
    .await
    .map_err(db("record the attempts"))?;
    for (channel, key) in keys {
        arm_key(conn, channel, &key).await?;
    }
    Ok(())
}

async fn release(
    conn: &mut SqliteConnection,
    staged: &mut Staged,
    channel: Channel,
    now: i64,
) -> Result<(), WriteError> {
    let keys: Vec<Option<String>> = sqlx::query_scalar(
        "UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, due_at = ?2, \
         updated_at = ?2 WHERE channel = ?1 AND state = 1 RETURNING okey",
    )
    .bind(channel.as_str())
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("release the in-flight deliveries"))?;
    let keys: BTreeSet<String> = keys.into_iter().flatten().collect();
    for key in keys {
        arm_key(conn, channel, &key).await?;
    }
    staged.notify.insert(channel);
    Ok(())
}

/// The ids of the dead letters matching a [`RedriveFilter`]: a subquery over the parameters ?1 to
/// ?5, bound by [`bind_filter`].
const DEAD_MATCHING: &str = "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id \
    WHERE d.state = 3 \
    AND (?1 IS NULL OR d.id IN (SELECT value FROM json_each(?1))) \
    AND (?2 IS NULL OR d.channel = ?2) \
    AND (?3 IS NULL OR e.instance = ?3) \
    AND (?4 IS NULL OR e.date_time >= ?4) \
    AND (?5 IS NULL OR e.date_time < ?5)";

/// Binds `filter` to the parameters ?1 to ?5 of [`DEAD_MATCHING`].
fn bind_filter<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    filter: &'q RedriveFilter,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    let ids: Option<String> = (!filter.ids.is_empty())
        .then(|| json_ids(&filter.ids.iter().map(|id| to_i64(*id)).collect::<Vec<_>>()));
    query
        .bind(ids)
        .bind(filter.channel.map(Channel::as_str))
        .bind(filter.instance.as_ref().map(InstanceName::as_str))
        .bind(filter.since.map(|t| t.timestamp_millis()))
        .bind(filter.until.map(|t| t.timestamp_millis()))
}

async fn redrive(
    conn: &mut SqliteConnection,
    staged: &mut Staged,
    filter: &RedriveFilter,
    now: i64,
) -> Result<usize, WriteError> {
    let sql = format!(
        "UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, attempts = 0, \
         due_at = ?6, updated_at = ?6 WHERE state = 3 AND id IN ({DEAD_MATCHING}) RETURNING channel, okey"
    );
    let rows = bind_filter(sqlx::query(&sql), filter)
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("redrive dead letters"))?;
    let mut keys = BTreeSet::new();
    for row in &rows {
        let channel: String = row.try_get(0).map_err(db("read the redriven deliveries"))?;
        let okey: Option<String> = row.try_get(1).map_err(db("read the redriven deliveries"))?;
        let channel = channel_named(&channel);
        staged.notify.insert(channel);
        *staged.live.entry(channel).or_default() += 1;
        if let Some(key) = okey {
            keys.insert((channel, key));
        }
    }
    for (channel, key) in keys {
        arm_key(conn, channel, &key).await?;
    }
    Ok(rows.len())
}

/// Deletes the dead letters matching `filter`, their attempts (by cascade) and the events left
/// without deliveries. Dead letters are not unsettled, so the capacity count does not change.
async fn purge(conn: &mut SqliteConnection, filter: &RedriveFilter) -> Result<usize, WriteError> {
    let sql = format!("DELETE FROM deliveries WHERE id IN ({DEAD_MATCHING}) RETURNING event_id");
    let rows = bind_filter(sqlx::query(&sql), filter)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("purge dead letters"))?;
    let events = rows
        .iter()
        .map(|row| row.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(db("read the purged dead letters"))?;
    delete_orphan_events(conn, &events).await?;
    Ok(events.len())
}

/// Deletes those of `events` (row ids, repeats allowed) that have no delivery left.
async fn delete_orphan_events(conn: &mut SqliteConnection, events: &[i64]) -> Result<(), WriteError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut unique = events.to_vec();
    unique.sort_unstable();
    unique.dedup();
    sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?1)) \
         AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = events.id)",
    )
    .bind(json_ids(&unique))
    .execute(&mut *conn)
    .await
    .map_err(db("delete the events left without deliveries"))?;
    Ok(())
}

async fn prune(conn: &mut SqliteConnection, retention: Duration, now: i64) -> Result<usize, WriteError> {
    let cutoff = now.saturating_sub(duration_ms(retention));
    let events: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state = 2 AND updated_at < ?1 \
         ORDER BY updated_at LIMIT ?2) RETURNING event_id",
    )
    .bind(cutoff)
    .bind(i64::try_from(PRUNE_BATCH).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(db("prune delivered deliveries"))?;
    delete_orphan_events(conn, &events).await?;
    Ok(events.len())
}

async fn create_instance(conn: &mut SqliteConnection, record: &InstanceRecord) -> Result<(), WriteError> {
    let settings = serde_json::to_string(&record.settings).map_err(|e| {
        WriteError::Storage(format!(
            "could not serialize the settings of instance {}: {e}",
            record.name
        ))
    })?;
    let result = sqlx::query(
        "INSERT INTO instances (id, name, token, settings, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(record.id.to_string())
    .bind(record.name.as_str())
    .bind(record.token.expose())
    .bind(settings)
    .bind(record.created_at.timestamp_millis())
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
            Err(WriteError::Conflict(record.name.to_string()))
        }
        Err(e) => Err(db("store the instance")(e)),
    }
}

async fn update_settings(
    conn: &mut SqliteConnection,
    name: &InstanceName,
    settings: &InstanceSettings,
) -> Result<bool, WriteError> {
    let json = serde_json::to_string(settings).map_err(|e| {
        WriteError::Storage(format!(
            "could not serialize the settings of instance {name}: {e}"
        ))
    })?;
    let done = sqlx::query("UPDATE instances SET settings = ?2 WHERE name = ?1")
        .bind(name.as_str())
        .bind(json)
        .execute(&mut *conn)
        .await
        .map_err(db("update the settings of the instance"))?;
    Ok(done.rows_affected() > 0)
}

async fn delete_instance(conn: &mut SqliteConnection, name: &InstanceName) -> Result<bool, WriteError> {
    let done = sqlx::query("DELETE FROM instances WHERE name = ?1")
        .bind(name.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db("delete the instance"))?;
    Ok(done.rows_affected() > 0)
}

// ---------------------------------------------------------------------------------------------
// Decoding rows.

/// The channel stored as `name`: a built-in one, or a custom channel (names interned once each).
fn channel_named(name: &str) -> Channel {
    if let Ok(channel) = Channel::parse_built_in(name) {
        return channel;
    }
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return Channel::Custom(known);
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    Channel::Custom(leaked)
}

fn millis_to_time(ms: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("timestamp {ms} is out of range"))
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    column: &str,
) -> Result<T, String> {
    row.try_get(column).map_err(|e| format!("column {column}: {e}"))
}

fn state_status(state: i64) -> DeliveryStatus {
    match state {
        IN_FLIGHT => DeliveryStatus::InFlight,
        DELIVERED => DeliveryStatus::Delivered,
        DEAD => DeliveryStatus::Dead,
        _ => DeliveryStatus::Pending,
    }
}

/// Rebuilds deliveries from rows, sharing one envelope per event and one destination per distinct
/// destination.
#[derive(Default)]
struct Decoder {
    events: HashMap<i64, Arc<EventEnvelope>>,
    destinations: HashMap<String, Arc<Destination>>,
}

impl Decoder {
    /// A row of [`DELIVERY_SELECT`]; `attempt` is the next attempt (stored attempts + 1), except for
    /// dead letters, whose `attempt` is the last one made.
    fn delivery(&mut self, row: &SqliteRow) -> Result<Delivery, String> {
        let id: i64 = get(row, "id")?;
        let attempts: i64 = get(row, "attempts")?;
        let state: i64 = get(row, "state")?;
        let destination: String = get(row, "destination")?;
        let destination = match self.destinations.get(&destination) {
            Some(d) => Arc::clone(d),
            None => {
                let parsed: Destination =
                    serde_json::from_str(&destination).map_err(|e| format!("destination: {e}"))?;
                let parsed = Arc::new(parsed);
                self.destinations.insert(destination, Arc::clone(&parsed));
                parsed
            }
        };
        let eid: i64 = get(row, "eid")?;
        let envelope = match self.events.get(&eid) {
            Some(e) => Arc::clone(e),
            None => {
                let e = Arc::new(envelope(row)?);
                self.events.insert(eid, Arc::clone(&e));
                e
            }
        };
        let profile: String = get(row, "profile")?;
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        Ok(Delivery {
            id: DeliveryId::try_from(id).map_err(|e| format!("id: {e}"))?,
            channel: channel_named(&get::<String>(row, "channel")?),
            scope: parse_scope(&get::<String>(row, "scope")?)?,
            profile: NamingProfile::parse(&profile).map_err(|e| e.to_string())?,
            envelope,
            destination,
            attempt: if state == DEAD {
                attempts
            } else {
                attempts.saturating_add(1)
            },
        })
    }
}

fn envelope(row: &SqliteRow) -> Result<EventEnvelope, String> {
    let uuid: String = get(row, "uuid")?;
    let instance: String = get(row, "instance")?;
    let kind: String = get(row, "kind")?;
    let data: String = get(row, "data")?;
    let date_time: i64 = get(row, "date_time")?;
    let sequence: i64 = get(row, "sequence")?;
    let data = RawValue::from_string(data).map_err(|e| format!("data: {e}"))?;
    Ok(EventEnvelope::new(
        EventKind::parse(&kind).map_err(|e| e.to_string())?,
        InstanceName::new(&instance).map_err(|e| e.to_string())?,
        data,
    )
    .with_id(Uuid::parse_str(&uuid).map_err(|e| format!("uuid: {e}"))?)
    .with_date_time(millis_to_time(date_time)?)
    .with_sender(get(row, "sender")?)
    .with_server_url(get(row, "server_url")?)
    .with_apikey(get::<Option<String>>(row, "apikey")?.map(Sensitive::new))
    .with_sequence(u64::try_from(sequence).unwrap_or(0)))
}

// ---------------------------------------------------------------------------------------------
// The traits.

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<EventEnvelope>>, OutboxError> {
        Ok(self.call(|reply| Request::Enqueue(events, reply)).await?)
    }

    async fn claim(&self, channel: Channel, limit: usize) -> Result<Vec<Delivery>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(self.call(|reply| Request::Claim(channel, limit, reply)).await?)
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), OutboxError> {
        if settlements.is_empty() {
            return Ok(());
        }
        Ok(self.call(|reply| Request::Settle(settlements, reply)).await?)
    }

    async fn next_due(&self, channel: Channel) -> Result<Option<Duration>, OutboxError> {
        let due: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due_at) FROM deliveries WHERE channel = ?1 AND state = 0")
                .bind(channel.as_str())
                .fetch_one(&self.read)
                .await
                .map_err(|e| OutboxError::Storage(self.read_error("the next due delivery", &e)))?;
        Ok(due.map(|due| {
            let wait = due.saturating_sub(now_ms());
            Duration::from_millis(u64::try_from(wait).unwrap_or(0))
        }))
    }

    fn notifier(&self, channel: Channel) -> Arc<Notify> {
        self.notifiers.get(channel)
    }

    async fn release(&self, channel: Channel) -> Result<(), OutboxError> {
        Ok(self.call(|reply| Request::Release(channel, reply)).await?)
    }

    async fn stats(&self, channel: Channel) -> Result<ChannelStats, OutboxError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 0) \
                  + (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 4), \
                    (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 1), \
                    (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 3)",
        )
        .bind(channel.as_str())
        .fetch_one(&self.read)
        .await
        .map_err(|e| OutboxError::Storage(self.read_error("the channel's counts", &e)))?;
        let count = |i: usize| -> Result<usize, OutboxError> {
            let n: i64 = row
                .try_get(i)
                .map_err(|e| OutboxError::Storage(self.read_error("the channel's counts", &e)))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok(ChannelStats {
            pending: count(0)?,
            in_flight: count(1)?,
            dead: count(2)?,
        })
    }

    async fn dead_letters(
        &self,
        channel: Option<Channel>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        let rows = sqlx::query(&format!(
            "{DELIVERY_SELECT} WHERE d.state = 3 AND (?1 IS NULL OR d.channel = ?1) \
             ORDER BY d.updated_at, d.id LIMIT ?2"
        ))
        .bind(channel.map(Channel::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(|e| OutboxError::Storage(self.read_error("dead letters", &e)))?;
        let mut decoder = Decoder::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match decoder.delivery(row) {
                Ok(delivery) => out.push(DeadLetter {
                    delivery,
                    error: row
                        .try_get::<Option<String>, _>("last_error")
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                }),
                Err(error) => {
                    let id: i64 = row.try_get("id").unwrap_or_default();
                    tracing::warn!(delivery = id, %error, "skipping an unreadable dead letter");
                }
            }
        }
        Ok(out)
    }

    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        let filter = filter.clone();
        Ok(self.call(|reply| Request::Redrive(filter, reply)).await?)
    }

    async fn purge(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        let filter = filter.clone();
        Ok(self.call(|reply| Request::Purge(filter, reply)).await?)
    }

    async fn event(&self, instance: &InstanceName, id: Uuid) -> Result<Option<StoredEvent>, OutboxError> {
        let row = sqlx::query(
            "SELECT uuid, instance, kind, data, date_time, sender, server_url, apikey, sequence, profile \
             FROM events WHERE uuid = ?1 AND instance = ?2 LIMIT 1",
        )
        .bind(id.to_string())
        .bind(instance.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(|e| OutboxError::Storage(self.read_error("the event", &e)))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let decoded = envelope(&row).and_then(|envelope| {
            let profile: String = get(&row, "profile")?;
            Ok(StoredEvent {
                envelope: Arc::new(envelope),
                profile: NamingProfile::parse(&profile).map_err(|e| e.to_string())?,
            })
        });
        decoded.map(Some).map_err(|e| {
            OutboxError::Storage(format!("event {id} of instance {instance} is unreadable: {e}"))
        })
    }

    async fn deliveries_after(
        &self,
        channel: Channel,
        after: Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>, OutboxError> {
        let failed = |e: sqlx::Error| OutboxError::Storage(self.read_error("the events to replay", &e));
        let instance = instance.map(InstanceName::as_str);
        let from: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM events WHERE uuid = ?1 AND (?2 IS NULL OR instance = ?2) LIMIT 1",
        )
        .bind(after.to_string())
        .bind(instance)
        .fetch_optional(&self.read)
        .await
        .map_err(failed)?;
        let Some(from) = from else {
            return Ok(None);
        };
        let rows = sqlx::query(&format!(
            "{DELIVERY_SELECT} WHERE d.event_id > ?1 AND d.channel = ?2 AND (?3 IS NULL OR e.instance = ?3) \
             ORDER BY d.event_id, d.id LIMIT ?4"
        ))
        .bind(from)
        .bind(channel.as_str())
        .bind(instance)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(failed)?;
        let mut decoder = Decoder::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match decoder.delivery(row) {
                Ok(delivery) => out.push(delivery),
                Err(error) => {
                    let id: i64 = row.try_get("id").unwrap_or_default();
                    tracing::warn!(delivery = id, %error, "skipping an unreadable delivery to replay");
                }
            }
        }
        Ok(Some(out))
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, OutboxError> {
        let status = match query.status {
            None => "1",
            Some(StatusFilter::Pending) => "d.state IN (0, 1, 4)",
            Some(StatusFilter::Failed) => "d.state IN (0, 4) AND d.attempts > 0",
            Some(StatusFilter::Dead) => "d.state = 3",
            Some(StatusFilter::Delivered) => "d.state = 2",
        };
        let failed = |e: sqlx::Error| OutboxError::Storage(self.read_error("the delivery log", &e));
        let rows = sqlx::query(&format!(
            "SELECT d.id AS id, d.channel AS channel, d.scope AS scope, d.destination AS destination, \
             d.attempts AS attempts, d.due_at AS due_at, d.last_error AS last_error, d.state AS state, \
             e.uuid AS uuid, e.instance AS instance, e.kind AS kind, e.date_time AS date_time, \
             e.sequence AS sequence \
             FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE {status} AND (?1 IS NULL OR e.instance = ?1) AND (?2 IS NULL OR d.channel = ?2) \
             ORDER BY d.id DESC LIMIT ?3"
        ))
        .bind(query.instance.as_ref().map(InstanceName::as_str))
        .bind(query.channel.map(Channel::as_str))
        .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(failed)?;
        let mut records = Vec::with_capacity(rows.len());
        let mut labels: HashMap<String, String> = HashMap::new();
        for row in &rows {
            match log_record(row, &mut labels) {
                Ok(record) => records.push(record),
                Err(error) => {
                    let id: i64 = row.try_get("id").unwrap_or_default();
                    tracing::warn!(delivery = id, %error, "skipping an unreadable delivery in the log");
                }
            }
        }
        if records.is_empty() {
            return Ok(records);
        }
        let ids: Vec<i64> = records.iter().map(|r| to_i64(r.id)).collect();
        let attempts = sqlx::query(
            "SELECT delivery_id, attempt, at, outcome, status, error, latency_ms FROM attempts \
             WHERE delivery_id IN (SELECT value FROM json_each(?1)) ORDER BY delivery_id, rowid",
        )
        .bind(json_ids(&ids))
        .fetch_all(&self.read)
        .await
        .map_err(failed)?;
        let mut logs: HashMap<u64, Vec<AttemptRecord>> = HashMap::new();
        for row in &attempts {
            match attempt_record(row) {
                Ok((id, record)) => logs.entry(id).or_default().push(record),
                Err(error) => tracing::warn!(%error, "skipping an unreadable attempt in the log"),
            }
        }
        for record in &mut records {
            record.attempt_log = logs.remove(&record.id).unwrap_or_default();
        }
        Ok(records)
    }
}

fn log_record(row: &SqliteRow, labels: &mut HashMap<String, String>) -> Result<DeliveryRecord, String> {
    let destination: String = get(row, "destination")?;
    let label = match labels.get(&destination) {
        Some(label) => label.clone(),
        None => {
            let parsed: Destination =
                serde_json::from_str(&destination).map_err(|e| format!("destination: {e}"))?;
            let label = parsed.label();
            labels.insert(destination, label.clone());
            label
        }
    };
    let state: i64 = get(row, "state")?;
    let status = state_status(state);
    let id: i64 = get(row, "id")?;
    let attempts: i64 = get(row, "attempts")?;
    let kind: String = get(row, "kind")?;
    let instance: String = get(row, "instance")?;
    let uuid: String = get(row, "uuid")?;
    let sequence: i64 = get(row, "sequence")?;
    Ok(DeliveryRecord {
        id: DeliveryId::try_from(id).map_err(|e| format!("id: {e}"))?,
        event_id: Uuid::parse_str(&uuid).map_err(|e| format!("uuid: {e}"))?,
        event: EventKind::parse(&kind).map_err(|e| e.to_string())?,
        instance: InstanceName::new(&instance).map_err(|e| e.to_string())?,
        sequence: u64::try_from(sequence).unwrap_or(0),
        channel: channel_named(&get::<String>(row, "channel")?),
        scope: parse_scope(&get::<String>(row, "scope")?)?,
        destination: label,
        status,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: get(row, "last_error")?,
        next_attempt_at: if status == DeliveryStatus::Pending {
            Some(millis_to_time(get(row, "due_at")?)?)
        } else {
            None
        },
        created_at: millis_to_time(get(row, "date_time")?)?,
        attempt_log: Vec::new(),
    })
}

fn attempt_record(row: &SqliteRow) -> Result<(u64, AttemptRecord), String> {
    let id: i64 = get(row, "delivery_id")?;
    let attempt: i64 = get(row, "attempt")?;
    let outcome: String = get(row, "outcome")?;
    let status: Option<i64> = get(row, "status")?;
    let latency: i64 = get(row, "latency_ms")?;
    Ok((
        u64::try_from(id).map_err(|e| format!("delivery_id: {e}"))?,
        AttemptRecord {
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            at: millis_to_time(get(row, "at")?)?,
            outcome: match outcome.as_str() {
                "delivered" => "delivered",
                "retry" => "retry",
                "dead" => "dead",
                other => return Err(format!("unknown outcome `{other}`")),
            },
            status: status.and_then(|s| u16::try_from(s).ok()),
            error: get(row, "error")?,
            latency_ms: u64::try_from(latency).unwrap_or(0),
        },
    ))
}

#[async_trait]
impl Store for SqliteOutbox {
    async fn create_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let record = record.clone();
        Ok(self.call(|reply| Request::CreateInstance(record, reply)).await?)
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, token, settings, created_at FROM instances ORDER BY name")
            .fetch_all(&self.read)
            .await
            .map_err(|e| StoreError::Storage(self.read_error("the instances", &e)))?;
        rows.iter()
            .map(|row| {
                instance_record(row).map_err(|e| {
                    StoreError::Storage(format!(
                        "an instance stored in {} cannot be read ({e}); fix or delete its row",
                        self.path.display()
                    ))
                })
            })
            .collect()
    }

    async fn update_settings(
        &self,
        name: &InstanceName,
        settings: &InstanceSettings,
    ) -> Result<bool, StoreError> {
        let (name, settings) = (name.clone(), settings.clone());
        Ok(self
            .call(|reply| Request::UpdateSettings(name, settings, reply))
            .await?)
    }

    async fn delete_instance(&self, name: &InstanceName) -> Result<bool, StoreError> {
        let name = name.clone();
        Ok(self.call(|reply| Request::DeleteInstance(name, reply)).await?)
    }
}

fn instance_record(row: &SqliteRow) -> Result<InstanceRecord, String> {
    let id: String = get(row, "id")?;
    let name: String = get(row, "name")?;
    let token: String = get(row, "token")?;
    let settings: String = get(row, "settings")?;
    let value: serde_json::Value =
        serde_json::from_str(&settings).map_err(|e| format!("settings of `{name}`: {e}"))?;
    Ok(InstanceRecord {
        id: Uuid::parse_str(&id).map_err(|e| format!("id of `{name}`: {e}"))?,
        settings: InstanceSettings::from_json(&value).map_err(|e| format!("settings of `{name}`: {e}"))?,
        name: InstanceName::new(&name).map_err(|e| e.to_string())?,
        token: Sensitive::new(token),
        created_at: millis_to_time(get(row, "created_at")?)?,
    })
}
