//! The writer: one thread owns the only write connection and runs every write request, grouping
//! the requests that wait into one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use evolution_events::{Channel, Delivery, EventEnvelope, InstanceName, InstanceSettings};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::enqueue::EnqueueRun;
use super::keys::Keys;
use super::open::Opener;
use super::{queue, store};
use crate::{InstanceRecord, NewEvent, OutboxError, RedriveFilter, Settlement, StoreError};

/// A transaction takes more waiting requests while it holds fewer events (or settlements) than this.
const MAX_GROUP_WEIGHT: usize = 5_000;
/// … and fewer requests than this.
const MAX_GROUP_REQUESTS: usize = 1_024;
/// Requests waiting for the writer before callers wait to send theirs.
pub(super) const QUEUE_DEPTH: usize = 4_096;

pub(super) type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

/// A request to the writer.
pub(super) enum Request {
    Enqueue(Vec<NewEvent>, Reply<Vec<Arc<EventEnvelope>>>),
    Claim(Channel, usize, Reply<Vec<Delivery>>),
    Settle(Vec<Settlement>, Reply<()>),
    Release(Channel, Reply<()>),
    Redrive(RedriveFilter, Reply<usize>),
    Purge(RedriveFilter, Reply<usize>),
    /// One step of pruning (`None`: the writer's own, from the timer).
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
            Self::Prune(_) => queue::PRUNE_BATCH,
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
            Self::Redrive(_, r) | Self::Purge(_, r) | Self::Prune(Some(r)) => answer(r, Err(err())),
            Self::UpdateSettings(_, _, r) | Self::DeleteInstance(_, r) => answer(r, Err(err())),
            Self::Prune(None) | Self::Close(_) => {}
        }
    }
}

pub(super) fn answer<T>(reply: Reply<T>, result: Result<T, WriteError>) {
    if reply.send(result).is_err() {
        tracing::trace!("an outbox caller stopped waiting for its answer");
    }
}

/// What a write failed with.
#[derive(Debug)]
pub(super) enum WriteError {
    Full { channel: Channel, capacity: usize },
    Conflict(String),
    Storage(String),
}

impl WriteError {
    /// What failed and what to do, as one sentence.
    pub(super) fn into_message(self) -> String {
        match self {
            Self::Storage(message) | Self::Conflict(message) => message,
            full @ Self::Full { .. } => OutboxError::from(full).to_string(),
        }
    }
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
pub(super) fn db(what: &'static str) -> impl Fn(rusqlite::Error) -> WriteError {
    move |e| {
        WriteError::Storage(format!(
            "the SQLite outbox could not {what}: {e}; check free disk space and that the database file \
             is writable"
        ))
    }
}

/// Runs a transaction control statement (`BEGIN`, `SAVEPOINT`, `COMMIT`, …) from the statement
/// cache: a group runs two per request, and parsing them each time cost the writer more than a
/// sixth of its time.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
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

/// Counters of the writer's work.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) transactions: AtomicU64,
    pub(super) requests: AtomicU64,
}

/// One [`Notify`] per channel, signalled when work of the channel may have become claimable.
#[derive(Debug, Default)]
pub(super) struct Notifiers(std::sync::Mutex<HashMap<Channel, Arc<Notify>>>);

impl Notifiers {
    pub(super) fn get(&self, channel: Channel) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(channel).or_default())
    }

    fn notify(&self, channels: impl IntoIterator<Item = Channel>) {
        for channel in channels {
            self.get(channel).notify_waiters();
        }
    }
}

/// What the writer remembers between requests. Every entry equals what is committed (or about to
/// be, in the running transaction); cleared when a transaction fails.
#[derive(Default)]
pub(super) struct Cache {
    /// Last sequence per instance.
    pub(super) sequences: HashMap<InstanceName, u64>,
    /// Unsettled deliveries per channel.
    live: HashMap<Channel, usize>,
    /// The live deliveries of every ordering key.
    pub(super) keys: Keys,
    next_event: Option<i64>,
    next_delivery: Option<i64>,
}

/// The cache changes of one request, applied once its savepoint is released.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) sequences: HashMap<InstanceName, u64>,
    pub(super) live: BTreeMap<Channel, i64>,
    pub(super) notify: BTreeSet<Channel>,
    /// Deliveries of ordering keys stored by an enqueue run: channel, key, id, state.
    pub(super) keyed: Vec<(Channel, Arc<str>, i64, i64)>,
}

impl Cache {
    /// A cache that starts from the ordering keys' queues read at open.
    pub(super) fn new(keys: Keys) -> Self {
        Self {
            keys,
            ..Self::default()
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    fn merge(&mut self, staged: Staged) {
        self.sequences.extend(staged.sequences);
        if !staged.keyed.is_empty()
            && let Some(queues) = self.keys.loaded()
        {
            for (channel, key, id, state) in &staged.keyed {
                queues.add(*channel, key, *id, *state);
            }
        }
        for (channel, delta) in staged.live {
            // Channels not cached are counted from the database when needed.
            if let Some(n) = self.live.get_mut(&channel) {
                let updated = i64::try_from(*n).unwrap_or(i64::MAX).saturating_add(delta);
                *n = usize::try_from(updated).unwrap_or(0);
            }
        }
    }

    pub(super) fn live(&mut self, conn: &Connection, channel: Channel) -> Result<usize, WriteError> {
        if let Some(n) = self.live.get(&channel) {
            return Ok(*n);
        }
        let n: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND (state = 0 OR state = 1 OR state = 4)")
            .and_then(|mut s| s.query_row([channel.as_str()], |row| row.get(0)))
            .map_err(db("count the unsettled deliveries"))?;
        let n = usize::try_from(n).unwrap_or(0);
        self.live.insert(channel, n);
        Ok(n)
    }

    pub(super) fn last_sequence(
        &mut self,
        conn: &Connection,
        instance: &InstanceName,
    ) -> Result<u64, WriteError> {
        if let Some(n) = self.sequences.get(instance) {
            return Ok(*n);
        }
        let last: Option<i64> = conn
            .prepare_cached("SELECT last FROM sequences WHERE instance = ?1")
            .and_then(|mut s| s.query_row([instance.as_str()], |row| row.get(0)).optional())
            .map_err(db("read the last sequence number of an instance"))?;
        let last = last.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        self.sequences.insert(instance.clone(), last);
        Ok(last)
    }

    /// Reserves `n` event row ids; returns the first.
    pub(super) fn event_ids(&mut self, conn: &Connection, n: usize) -> Result<i64, WriteError> {
        let first = match self.next_event {
            Some(id) => id,
            None => conn
                .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM events", [], |row| {
                    row.get(0)
                })
                .map_err(db("read the last event id"))?,
        };
        self.next_event = Some(first + i64::try_from(n).unwrap_or(i64::MAX / 2));
        Ok(first)
    }

    /// Reserves `n` delivery ids (never reused: `AUTOINCREMENT`); returns the first.
    pub(super) fn delivery_ids(&mut self, conn: &Connection, n: usize) -> Result<i64, WriteError> {
        let first = match self.next_delivery {
            Some(id) => id,
            None => conn
                .query_row(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0), \
                     COALESCE((SELECT MAX(id) FROM deliveries), 0)) + 1",
                    [],
                    |row| row.get(0),
                )
                .map_err(db("read the last delivery id"))?,
        };
        self.next_delivery = Some(first + i64::try_from(n).unwrap_or(i64::MAX / 2));
        Ok(first)
    }
}

pub(super) struct Writer {
    /// Held while the writer runs: one process (one `SqliteOutbox`) per database at a time.
    pub(super) lock: std::fs::File,
    pub(super) conn: Connection,
    /// How to open the write connection again after a failure left it in an unknown state.
    pub(super) opener: Opener,
    pub(super) cache: Cache,
    pub(super) capacity: usize,
    pub(super) retention: Duration,
    pub(super) notifiers: Arc<Notifiers>,
    pub(super) counters: Arc<Counters>,
}

impl Writer {
    /// The writer thread's loop: takes the first request waiting (blocking), then every other one
    /// waiting, runs them in one transaction, answers them. Ends when every sender is gone or on
    /// `Close`, after the requests sent before.
    pub(super) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        // A prune step that deleted a full batch leaves more: the next groups each take a step too.
        let mut prune_more = false;
        let mut closing = None;
        while closing.is_none() {
            let first = if prune_more {
                match requests.try_recv() {
                    Ok(request) => request,
                    Err(mpsc::error::TryRecvError::Empty) => Request::Prune(None),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match requests.blocking_recv() {
                    Some(request) => request,
                    None => break,
                }
            };
            let mut group = Vec::new();
            let mut weight = 0;
            let mut pruning = false;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                if let Request::Close(done) = request {
                    closing = Some(done);
                    break;
                }
                if matches!(request, Request::Prune(None)) {
                    if pruning {
                        // One step per transaction.
                        next = requests.try_recv().ok();
                        continue;
                    }
                    pruning = true;
                }
                weight += request.weight();
                group.push(request);
                if weight < MAX_GROUP_WEIGHT && group.len() < MAX_GROUP_REQUESTS {
                    next = requests.try_recv().ok();
                }
            }
            if prune_more && !pruning && closing.is_none() {
                group.push(Request::Prune(None));
            }
            if group.is_empty() {
                continue;
            }
            let (pruned, reconnect) = self.process(group);
            if reconnect {
                // A failed BEGIN or COMMIT (a full disk, say) may leave the connection inside a
                // transaction SQLite already ended: start again from a fresh connection.
                self.reconnect();
            }
            prune_more = pruned.is_some_and(|n| n >= queue::PRUNE_BATCH);
        }
        let Self { conn, lock, .. } = self;
        if let Err((_, e)) = conn.close() {
            tracing::warn!(error = %e, "closing the SQLite outbox's write connection failed");
        }
        drop(lock);
        if let Some(done) = closing {
            done.send(()).ok();
        }
    }

    /// Replaces the write connection by a fresh one (after a failure that may have left it inside
    /// a transaction); keeps the old one if the database cannot be opened now.
    fn reconnect(&mut self) {
        match self.opener.write() {
            Ok(conn) => {
                let old = std::mem::replace(&mut self.conn, conn);
                if let Err((_, e)) = old.close() {
                    tracing::debug!(error = %e, "closing the failed write connection");
                }
                tracing::info!("the SQLite outbox reopened its write connection");
            }
            Err(e) => tracing::error!(error = %e, "the SQLite outbox could not reopen its write connection"),
        }
    }

    /// Runs a group of requests in one transaction and answers them. Returns how many deliveries a
    /// timer-driven prune step deleted (`None`: there was none, or it failed), and whether the
    /// connection must be reopened.
    fn process(&mut self, group: Vec<Request>) -> (Option<usize>, bool) {
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .requests
            .fetch_add(u64::try_from(group.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let now = super::now_ms();
        let multi = group.len() > 1;
        if let Err(e) = control(&self.conn, "BEGIN IMMEDIATE") {
            let message = format!(
                "the SQLite outbox could not start a transaction: {e}; check that no other process \
                 holds the database locked and that the disk is not full"
            );
            tracing::error!(%message);
            self.cache.clear();
            for request in group {
                request.fail(&message);
            }
            return (None, true);
        }
        let mut done: Vec<Finish> = Vec::with_capacity(group.len());
        let mut notify = BTreeSet::new();
        let mut broken: Option<String> = None;
        let mut rollback = false;
        let mut pruned = None;
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
                    match run.add(&self.conn, &mut self.cache, self.capacity, events) {
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
                match run.flush(&self.conn, now) {
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
                        let message = e.into_message();
                        for (reply, _) in accepted {
                            answer(reply, Err(WriteError::Storage(message.clone())));
                        }
                        broken = Some(message);
                    }
                }
                continue;
            }
            if multi && let Err(e) = control(&self.conn, "SAVEPOINT request") {
                let message = format!("the SQLite outbox could not start a savepoint: {e}");
                request.fail(&message);
                broken = Some(message);
                continue;
            }
            let mut staged = Staged::default();
            let (ok, fin) = self.handle(&mut staged, request, now, &mut pruned);
            done.push(fin);
            if ok {
                if multi && let Err(e) = control(&self.conn, "RELEASE request") {
                    broken = Some(format!("the SQLite outbox could not release a savepoint: {e}"));
                    continue;
                }
                notify.extend(staged.notify.iter().copied());
                self.cache.merge(staged);
            } else {
                // The request may have changed the key queues before it failed.
                self.cache.keys.unload();
                if !multi {
                    rollback = true;
                } else if let Err(e) = control(&self.conn, "ROLLBACK TO request")
                    .and_then(|()| control(&self.conn, "RELEASE request"))
                {
                    broken = Some(format!("the SQLite outbox could not roll back a savepoint: {e}"));
                }
            }
        }
        let broken_before_commit = broken.clone();
        let mut rollback_failed = false;
        let failed = if broken.is_some() || rollback {
            // A lone failed request merged nothing into the cache, and what it loaded into it is
            // what was committed before it: the cache stays valid if the rollback works.
            if let Err(e) = control(&self.conn, "ROLLBACK") {
                tracing::warn!(error = %e, "rolling back an SQLite outbox transaction failed");
                self.cache.clear();
                rollback_failed = true;
            }
            broken
        } else {
            match control(&self.conn, "COMMIT") {
                Ok(()) => None,
                Err(e) => Some(format!(
                    "the SQLite outbox could not commit: {e}; nothing of this request was stored: check \
                     free disk space and retry"
                )),
            }
        };
        if let Some(message) = &failed {
            tracing::error!(%message);
            self.cache.clear();
        }
        for fin in done {
            fin(failed.as_deref());
        }
        let reconnect = rollback_failed || (failed.is_some() && !rollback && broken_before_commit.is_none());
        if failed.is_none() && !rollback {
            self.notifiers.notify(notify);
        }
        #[cfg(debug_assertions)]
        if let Err(e) = self.cache.keys.check(&self.conn) {
            panic!("{e}");
        }
        (if failed.is_some() { None } else { pruned }, reconnect)
    }

    /// Runs one request other than an enqueue run. Returns whether it succeeded, and how to answer
    /// it once the transaction is over.
    fn handle(
        &mut self,
        staged: &mut Staged,
        request: Request,
        now: i64,
        pruned: &mut Option<usize>,
    ) -> (bool, Finish) {
        let conn = &self.conn;
        match request {
            Request::Enqueue(events, reply) => {
                let mut run = EnqueueRun::default();
                let result = run
                    .add(conn, &mut self.cache, self.capacity, events)
                    .and_then(|stored| {
                        *staged = run.flush(conn, now)?;
                        Ok(stored)
                    });
                finish(reply, result)
            }
            Request::Claim(channel, limit, reply) => finish(
                reply,
                queue::claim(conn, &mut self.cache.keys, staged, channel, limit, now),
            ),
            Request::Settle(settlements, reply) => finish(
                reply,
                queue::settle(conn, &mut self.cache.keys, staged, settlements, now),
            ),
            Request::Release(channel, reply) => finish(
                reply,
                queue::release(conn, &mut self.cache.keys, staged, channel, now),
            ),
            Request::Redrive(filter, reply) => finish(
                reply,
                queue::redrive(conn, &mut self.cache.keys, staged, &filter, now),
            ),
            Request::Purge(filter, reply) => finish(reply, queue::purge(conn, &filter)),
            Request::Prune(Some(reply)) => finish(reply, queue::prune(conn, self.retention, now)),
            Request::Prune(None) => {
                let ok = match queue::prune(conn, self.retention, now) {
                    Ok(n) => {
                        *pruned = Some(n);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, "pruning the SQLite outbox failed");
                        false
                    }
                };
                (ok, Box::new(|_: Option<&str>| {}))
            }
            Request::CreateInstance(record, reply) => finish(reply, store::create_instance(conn, &record)),
            Request::UpdateSettings(name, settings, reply) => {
                finish(reply, store::update_settings(conn, &name, &settings))
            }
            Request::DeleteInstance(name, reply) => finish(reply, store::delete_instance(conn, &name)),
            Request::Close(done) => {
                done.send(()).ok();
                (true, Box::new(|_: Option<&str>| {}))
            }
        }
    }
}

/// Moves every in-flight delivery back to pending (due now) and re-derives which pending deliveries
/// of ordering keys are claimable. Returns how many were in flight, and the ordering keys' queues
/// (read for this, then the writer's).
pub(super) fn recover(conn: &mut Connection) -> Result<(usize, Keys), WriteError> {
    let failed = db("move the deliveries left in flight back to pending");
    let now = super::now_ms();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(&failed)?;
    let moved = tx
        .execute(
            "UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, due_at = ?1, \
             updated_at = ?1 WHERE state = 1",
            params![now],
        )
        .map_err(&failed)?;
    let mut keys = Keys::default();
    keys.load(&tx)?.arm_all(&tx)?;
    tx.commit().map_err(&failed)?;
    Ok((moved, keys))
}
