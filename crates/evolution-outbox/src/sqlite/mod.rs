//! The SQLite outbox: durable, embedded, and the server's default (see [`SqliteOutbox`]).
//!
//! Modules by concern: `open` (options, connections, schema, lock file), `writer` (the thread that
//! owns the write connection and groups requests into transactions), `enqueue` (storing events),
//! `queue` (claim, settle, release, redrive, purge, prune), `keys` (the ordering keys' live
//! deliveries, in the writer's memory), `store` (instances), `read` (the
//! read-only connections and every read), `decode` (rows back into values).

mod decode;
mod enqueue;
mod keys;
mod open;
mod queue;
mod read;
mod store;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use evolution_events::{Channel, Delivery, EventEnvelope, InstanceName, InstanceSettings, Uuid};
use tokio::sync::{Notify, mpsc, oneshot};

pub use open::{Durability, SqliteOptions};

use self::open::Opener;
use self::read::{ReadError, Reader};
use self::writer::{Counters, Notifiers, Request, WriteError, Writer};
use crate::{
    ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, InstanceRecord, NewEvent, Outbox, OutboxError,
    RedriveFilter, Settlement, Store, StoreError, StoredEvent,
};

/// How often the writer starts pruning delivered deliveries at most (it goes on, one small step per
/// transaction, while each step finds a full batch); as often as the retention when that is
/// shorter, but not more than once a second.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

use crate::rows::{DEAD, DELIVERED, IN_FLIGHT, READY, WAITING, duration_ms, to_i64};

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
/// **Group commit.** One thread owns the only write connection. Every write (`enqueue`, `claim`,
/// `settle`, `release`, `redrive`, `purge`, pruning and the [`Store`] writes) is one request to it;
/// it takes every request waiting (up to 5 000 events) and runs them in one transaction — BEGIN,
/// every statement on prepared statements, COMMIT — each in its own savepoint so that a failing
/// request undoes only itself, and answers each caller only after `COMMIT`. A request is one
/// hand-off from the async side, whatever it writes; concurrent producers share commits, and the
/// claims and settlements of delivery share them too. Reads (`next_due`, `stats`, `dead_letters`,
/// `deliveries`, `event`, `deliveries_after`, `instances`) run on read-only connections of their
/// own, never behind the writer.
///
/// **Durability.** An `enqueue` that returned `Ok` is committed. With the default
/// [`Durability::PowerLoss`] (`synchronous=FULL`) the commit was flushed to the disk first, so it
/// survives a power loss; [`Durability::ProcessCrash`] (`synchronous=NORMAL`) survives the process
/// being killed at any point. Deliveries in flight when the process died go back to pending when
/// the file is opened again (at least once: they may be sent twice).
///
/// **Ordering keys** behave as in [`MemoryOutbox`](crate::MemoryOutbox), keyed per channel; a
/// redriven dead letter takes its place in its key again by enqueue order (its id). The writer
/// keeps each key's ready, in-flight and waiting deliveries in memory (16 bytes each), read from
/// the file when it opens, instead of in an index (ADR 0027).
///
/// **Time** is the wall clock: retry delays become timestamps in the database, with millisecond
/// precision (as are event times, so [`RedriveFilter`] bounds compare at millisecond precision).
///
/// **Retention.** Delivered deliveries and every attempt are kept for the delivery log for
/// [`SqliteOptions::delivered_retention`], then pruned in steps of 1 000 between other work; dead
/// letters are kept until redriven or purged ([`Outbox::purge`]). Freed pages are
/// reused, so under a steady load the file stops growing.
///
/// **One at a time.** `open` takes the lock file `<path>.lock` for as long as the writer runs: a
/// second outbox on the same file waits up to 10 s for the first to be closed or dropped (its
/// writer finishing its queue), then fails; a killed process lets go of it at once.
pub struct SqliteOutbox {
    requests: mpsc::Sender<Request>,
    reader: Arc<Reader>,
    notifiers: Arc<Notifiers>,
    counters: Arc<Counters>,
    path: PathBuf,
    durability: Durability,
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("write_stats", &self.write_stats())
            .finish_non_exhaustive()
    }
}

impl SqliteOutbox {
    /// Opens (creating it and its parent directories if needed) the database at `path`, brings
    /// its schema up to date, and recovers: every delivery left in flight by a previous process
    /// goes back to pending, due now, its attempts unchanged. Must be called inside a Tokio
    /// runtime (reads run on its blocking threads; a task of it wakes the pruning).
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
        let lock = open::lock_file(path).await?;
        let opener = Opener {
            path: path.to_owned(),
            durability: options.durability,
        };
        let prepared = {
            let opener = opener.clone();
            tokio::task::spawn_blocking(move || -> Result<_, OutboxError> {
                let shown = opener.path.display();
                let mut conn = opener.write().map_err(|e| {
                    OutboxError::Storage(format!(
                        "could not open the SQLite outbox at {shown}: {e}; check that the path is writable, \
                         is an SQLite database (or does not exist yet) and is not locked by another process"
                    ))
                })?;
                open::migrate(&mut conn, &opener.path)?;
                let (recovered, keys) = writer::recover(&mut conn).map_err(|e| {
                    OutboxError::Storage(format!(
                        "could not recover the deliveries left in flight in the SQLite outbox at {shown}: {}",
                        e.into_message()
                    ))
                })?;
                Ok((conn, recovered, keys))
            })
            .await
            .map_err(|e| {
                OutboxError::Storage(format!(
                    "opening the SQLite outbox at {shown} was interrupted: {e}"
                ))
            })?
        };
        let (conn, recovered, keys) = prepared?;
        if recovered > 0 {
            tracing::info!(
                path = %shown,
                recovered,
                "deliveries left in flight by a previous process are pending again"
            );
        }
        let reader = Arc::new(Reader::new(opener.clone()));
        let notifiers = Arc::new(Notifiers::default());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let writer = Writer {
            lock,
            conn,
            opener,
            cache: writer::Cache::new(keys),
            capacity: options.capacity.max(1),
            retention: options.delivered_retention,
            notifiers: Arc::clone(&notifiers),
            counters: Arc::clone(&counters),
        };
        std::thread::Builder::new()
            .name("outbox-sqlite-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| {
                OutboxError::Storage(format!(
                    "could not start the writer thread of the SQLite outbox at {shown}: {e}"
                ))
            })?;
        // Wakes the pruning every PRUNE_EVERY for as long as the outbox is open (a weak sender does
        // not keep the writer alive).
        let timer = tx.downgrade();
        let every = options
            .delivered_retention
            .clamp(Duration::from_secs(1), PRUNE_EVERY);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tx) = timer.upgrade() else {
                    return;
                };
                if tx.send(Request::Prune(None)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            requests: tx,
            reader,
            notifiers,
            counters,
            path: path.to_owned(),
            durability: options.durability,
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What an acknowledged event survives.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
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
    /// attempts, and the events left with no delivery, in steps of 1 000 (one transaction each).
    /// The writer also does this on its own. Returns how many deliveries were deleted.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn prune(&self) -> Result<usize, OutboxError> {
        let mut total = 0;
        loop {
            let n = self.call(|reply| Request::Prune(Some(reply))).await?;
            total += n;
            if n < queue::PRUNE_BATCH {
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
        self.reader.close();
    }

    async fn call<T>(&self, request: impl FnOnce(writer::Reply<T>) -> Request) -> Result<T, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| WriteError::Storage(self.closed()))?;
        answer.await.map_err(|_| WriteError::Storage(self.closed()))?
    }

    fn closed(&self) -> String {
        format!(
            "the SQLite outbox at {} is closed (close() was called or its writer stopped after an \
             error, see the logs): open it again",
            self.path.display()
        )
    }

    fn read_error(&self, what: &str, e: ReadError) -> String {
        match e {
            ReadError::Closed => self.closed(),
            ReadError::Db(e) => format!(
                "could not read {what} from the SQLite outbox at {}: {e}; check that the file is readable \
                 and not corrupted",
                self.path.display()
            ),
            ReadError::Interrupted(e) => {
                format!("reading {what} from the SQLite outbox was interrupted: {e}")
            }
        }
    }

    /// Runs a read; errors say what was read.
    async fn read<T, F>(&self, what: &str, read: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        self.reader
            .run(read)
            .await
            .map_err(|e| OutboxError::Storage(self.read_error(what, e)))
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

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
        let due = self
            .read("the next due delivery", move |conn| read::next_due(conn, channel))
            .await?;
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
        self.read("the channel's counts", move |conn| read::stats(conn, channel))
            .await
    }

    async fn dead_letters(
        &self,
        channel: Option<Channel>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        self.read("dead letters", move |conn| {
            read::dead_letters(conn, channel, limit)
        })
        .await
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
        let name = instance.clone();
        let found = self
            .read("the event", move |conn| read::event(conn, &name, id))
            .await?;
        found.transpose().map_err(|e| {
            OutboxError::Storage(format!("event {id} of instance {instance} is unreadable: {e}"))
        })
    }

    async fn events_after(
        &self,
        instance: &InstanceName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError> {
        let name = instance.clone();
        let found = self
            .read("the events after a sequence", move |conn| {
                read::events_after(conn, &name, after, limit)
            })
            .await?;
        found
            .into_iter()
            .map(|event| {
                event.map_err(|e| {
                    OutboxError::Storage(format!("an event of instance {instance} is unreadable: {e}"))
                })
            })
            .collect()
    }

    async fn deliveries_after(
        &self,
        channel: Channel,
        after: Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>, OutboxError> {
        let instance = instance.cloned();
        self.read("the events to replay", move |conn| {
            read::deliveries_after(conn, channel, after, instance.as_ref(), limit)
        })
        .await
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, OutboxError> {
        let query = query.clone();
        self.read("the delivery log", move |conn| read::deliveries(conn, &query))
            .await
    }
}

#[async_trait]
impl Store for SqliteOutbox {
    async fn create_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let record = record.clone();
        Ok(self.call(|reply| Request::CreateInstance(record, reply)).await?)
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = self
            .reader
            .run(store::instances)
            .await
            .map_err(|e| StoreError::Storage(self.read_error("the instances", e)))?;
        rows.map_err(|e| {
            StoreError::Storage(format!(
                "an instance stored in {} cannot be read ({e}); fix or delete its row",
                self.path.display()
            ))
        })
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
