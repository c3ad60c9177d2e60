//! Reads, on read-only connections of their own (never behind the writer): a small pool used from
//! Tokio's blocking threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use evolution_events::{Channel, Delivery, InstanceName, Uuid};
use rusqlite::{Connection, OptionalExtension, params};

use super::decode::{DELIVERY_SELECT, Decoder, attempt_record, log_record, stored_event};
use super::open::Opener;
use super::to_i64;
use crate::{
    AttemptRecord, ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, StatusFilter, StoredEvent,
};

/// The columns a stored event is read from (`stored_event` decodes them in this order).
const EVENT_COLUMNS: &str = "uuid, instance, kind, data, date_time, sender, server_url, apikey, sequence, profile, traceparent, tracestate, format";

/// Read connections kept open between reads.
const IDLE_READERS: usize = 4;

/// Why a read failed.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The outbox was closed.
    Closed,
    /// The database failed (or a read connection could not be opened).
    Db(rusqlite::Error),
    /// The blocking task did not finish (the runtime is shutting down).
    Interrupted(String),
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

/// The pool of read connections.
#[derive(Debug)]
pub(super) struct Reader {
    opener: Opener,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Reader {
    pub(super) fn new(opener: Opener) -> Self {
        Self {
            opener,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `read` on a read connection, on a blocking thread.
    pub(super) async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(ReadError::Closed);
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let idle = this.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => this.opener.read()?,
            };
            let result = read(&conn);
            if !this.closed.load(Ordering::Acquire) {
                let mut idle = this.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < IDLE_READERS {
                    idle.push(conn);
                }
            }
            Ok(result?)
        })
        .await
        .map_err(|e| ReadError::Interrupted(e.to_string()))?
    }

    /// Closes the idle connections; later reads fail with [`ReadError::Closed`].
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

pub(super) fn next_due(conn: &Connection, channel: Channel) -> Result<Option<i64>, rusqlite::Error> {
    conn.prepare_cached("SELECT MIN(due_at) FROM deliveries WHERE channel = ?1 AND state = 0")?
        .query_row([channel.as_str()], |row| row.get(0))
}

pub(super) fn stats(conn: &Connection, channel: Channel) -> Result<ChannelStats, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 0) \
              + (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 4), \
                (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 1), \
                (SELECT COUNT(*) FROM deliveries WHERE channel = ?1 AND state = 3)",
    )?
    .query_row([channel.as_str()], |row| {
        let count = |i: usize| -> Result<usize, rusqlite::Error> {
            Ok(usize::try_from(row.get::<_, i64>(i)?).unwrap_or(0))
        };
        Ok(ChannelStats {
            pending: count(0)?,
            in_flight: count(1)?,
            dead: count(2)?,
        })
    })
}

pub(super) fn dead_letters(
    conn: &Connection,
    channel: Option<Channel>,
    limit: usize,
) -> Result<Vec<DeadLetter>, rusqlite::Error> {
    let mut statement = conn.prepare_cached(&format!(
        "{DELIVERY_SELECT} WHERE d.state = 3 AND (?1 IS NULL OR d.channel = ?1) \
         ORDER BY d.updated_at, d.id LIMIT ?2"
    ))?;
    let mut rows = statement.query(params![channel.map(Channel::as_str), to_i64(limit as u64)])?;
    let mut decoder = Decoder::default();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match decoder.delivery(row) {
            Ok(delivery) => out.push(DeadLetter {
                delivery,
                error: row
                    .get::<_, Option<String>>("last_error")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            }),
            Err(error) => {
                let id: i64 = row.get("id").unwrap_or_default();
                tracing::warn!(delivery = id, %error, "skipping an unreadable dead letter");
            }
        }
    }
    Ok(out)
}

/// The event `id` of `instance`; `Ok(Err(_))` when its row cannot be read.
pub(super) fn event(
    conn: &Connection,
    instance: &InstanceName,
    id: Uuid,
) -> Result<Option<Result<StoredEvent, String>>, rusqlite::Error> {
    conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE uuid = ?1 AND instance = ?2 LIMIT 1"
    ))?
    .query_row(params![id.to_string(), instance.as_str()], |row| {
        Ok(stored_event(row))
    })
    .optional()
}

pub(super) fn events_after(
    conn: &Connection,
    instance: &InstanceName,
    after: u64,
    limit: usize,
) -> Result<Vec<Result<StoredEvent, String>>, rusqlite::Error> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE instance = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3"
    ))?;
    let rows = statement.query_map(
        params![instance.as_str(), to_i64(after), to_i64(limit as u64)],
        |row| Ok(stored_event(row)),
    )?;
    rows.collect()
}

pub(super) fn deliveries_after(
    conn: &Connection,
    channel: Channel,
    after: Uuid,
    instance: Option<&InstanceName>,
    limit: usize,
) -> Result<Option<Vec<Delivery>>, rusqlite::Error> {
    let instance = instance.map(InstanceName::as_str);
    let from: Option<i64> = conn
        .prepare_cached("SELECT id FROM events WHERE uuid = ?1 AND (?2 IS NULL OR instance = ?2) LIMIT 1")?
        .query_row(params![after.to_string(), instance], |row| row.get(0))
        .optional()?;
    let Some(from) = from else {
        return Ok(None);
    };
    let mut statement = conn.prepare_cached(&format!(
        "{DELIVERY_SELECT} WHERE d.event_id > ?1 AND d.channel = ?2 AND (?3 IS NULL OR e.instance = ?3) \
         ORDER BY d.event_id, d.id LIMIT ?4"
    ))?;
    let mut rows = statement.query(params![from, channel.as_str(), instance, to_i64(limit as u64)])?;
    let mut decoder = Decoder::default();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match decoder.delivery(row) {
            Ok(delivery) => out.push(delivery),
            Err(error) => {
                let id: i64 = row.get("id").unwrap_or_default();
                tracing::warn!(delivery = id, %error, "skipping an unreadable delivery to replay");
            }
        }
    }
    Ok(Some(out))
}

pub(super) fn deliveries(
    conn: &Connection,
    query: &DeliveryQuery,
) -> Result<Vec<DeliveryRecord>, rusqlite::Error> {
    let status = match query.status {
        None => "1",
        Some(StatusFilter::Pending) => "d.state IN (0, 1, 4)",
        Some(StatusFilter::Failed) => "d.state IN (0, 4) AND d.attempts > 0",
        Some(StatusFilter::Dead) => "d.state = 3",
        Some(StatusFilter::Delivered) => "d.state = 2",
    };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT d.id AS id, d.channel AS channel, d.scope AS scope, d.destination AS destination, \
         d.attempts AS attempts, d.due_at AS due_at, d.last_error AS last_error, d.state AS state, \
         e.uuid AS uuid, e.instance AS instance, e.kind AS kind, e.date_time AS date_time, \
         e.sequence AS sequence \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE {status} AND (?1 IS NULL OR e.instance = ?1) AND (?2 IS NULL OR d.channel = ?2) \
         ORDER BY d.id DESC LIMIT ?3"
    ))?;
    let mut rows = statement.query(params![
        query.instance.as_ref().map(InstanceName::as_str),
        query.channel.map(Channel::as_str),
        to_i64(query.limit as u64),
    ])?;
    let mut records = Vec::new();
    let mut labels: HashMap<String, String> = HashMap::new();
    while let Some(row) = rows.next()? {
        match log_record(row, &mut labels) {
            Ok(record) => records.push(record),
            Err(error) => {
                let id: i64 = row.get("id").unwrap_or_default();
                tracing::warn!(delivery = id, %error, "skipping an unreadable delivery in the log");
            }
        }
    }
    if records.is_empty() {
        return Ok(records);
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
    let mut statement = conn.prepare_cached(
        "SELECT delivery_id, attempt, at, outcome, status, error, latency_ms FROM attempts \
         WHERE delivery_id IN (SELECT value FROM json_each(?1)) ORDER BY delivery_id, rowid",
    )?;
    let mut rows = statement.query([format!("[{}]", ids.join(","))])?;
    let mut logs: HashMap<u64, Vec<AttemptRecord>> = HashMap::new();
    while let Some(row) = rows.next()? {
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
