//! Storing accepted events: a few tasks take the waiting `enqueue` requests and store each group in
//! one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError};

use evolution_events::{Channel, EventEnvelope, TraceContext};
use tokio::sync::{mpsc, oneshot};

use super::{DbError, Inner, NOW_MS, announce, lock_id, with_retry};
use crate::rows::{DestinationJson, READY, WAITING, scope_str, to_i64};
use crate::{NewEvent, OutboxError};

/// Requests that may wait for a writer.
pub(super) const QUEUE_DEPTH: usize = 1_024;
/// Transactions of one replica in progress at once (a group commits while the next is written).
pub(super) const WRITERS: usize = 2;
/// Events per transaction at most (a single larger request is still one transaction).
const MAX_GROUP_EVENTS: usize = 5_000;

/// One `enqueue` call.
pub(super) struct Request {
    pub(super) events: Vec<NewEvent>,
    pub(super) reply: oneshot::Sender<Result<Vec<Arc<EventEnvelope>>, OutboxError>>,
}

/// A writer: takes every waiting request (up to [`MAX_GROUP_EVENTS`]) and stores them together,
/// until the outbox is dropped.
pub(super) async fn run(inner: Arc<Inner>, requests: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>) {
    loop {
        let group = {
            let mut rx = requests.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut n = first.events.len();
            let mut group = vec![first];
            while n < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(request) => {
                        n += request.events.len();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            group
        };
        write(&inner, group).await;
    }
}

/// A request within the capacity, with the deliveries it reserved per channel.
struct Accepted {
    request: Request,
    reserved: BTreeMap<Channel, i64>,
}

async fn write(inner: &Inner, group: Vec<Request>) {
    let mut accepted = Vec::with_capacity(group.len());
    {
        let mut live = inner.live.lock().unwrap_or_else(PoisonError::into_inner);
        let capacity = to_i64(inner.capacity as u64);
        for request in group {
            let mut reserved: BTreeMap<Channel, i64> = BTreeMap::new();
            for event in &request.events {
                for d in &event.deliveries {
                    *reserved.entry(d.channel).or_default() += 1;
                }
            }
            let full = reserved
                .iter()
                .find(|(channel, n)| live.get(channel).copied().unwrap_or(0).saturating_add(**n) > capacity);
            if let Some((channel, _)) = full {
                let _ignored = request.reply.send(Err(OutboxError::Full {
                    channel: *channel,
                    capacity: inner.capacity,
                }));
                continue;
            }
            for (channel, n) in &reserved {
                *live.entry(*channel).or_default() += n;
            }
            accepted.push(Accepted { request, reserved });
        }
    }
    if accepted.is_empty() {
        return;
    }
    let stored = match Rows::new(&inner.schema, &accepted) {
        Ok(rows) => with_retry(|| store(inner, &rows)).await,
        Err(e) => Err(DbError::Invalid(e)),
    };
    match stored {
        Ok(sequences) => {
            let mut sequences = sequences.into_iter();
            let mut channels = BTreeSet::new();
            for Accepted { request, reserved } in accepted {
                channels.extend(reserved.into_keys());
                let envelopes = request
                    .events
                    .into_iter()
                    .map(|event| Arc::new(event.envelope.with_sequence(sequences.next().unwrap_or(0))))
                    .collect();
                let _ignored = request.reply.send(Ok(envelopes));
            }
            inner.wake(&channels);
        }
        Err(e) => {
            let message = inner.message("store the events", &e);
            for Accepted { request, reserved } in accepted {
                for (channel, n) in reserved {
                    inner.count(channel, -n);
                }
                let _ignored = request.reply.send(Err(OutboxError::Storage(message.clone())));
            }
        }
    }
}

/// The columns of a group, borrowed from its requests, ready to bind (kept for a retry).
struct Rows<'a> {
    /// The instance of every event, in order.
    instance_of: Vec<&'a str>,
    /// Events per instance, by name (the lock order of the sequence rows).
    counts: BTreeMap<&'a str, i64>,
    /// Of the events with deliveries: their index among all events, and their columns.
    stored: Vec<usize>,
    uuid: Vec<String>,
    kind: Vec<&'a str>,
    data: Vec<&'a str>,
    date_time: Vec<i64>,
    sender: Vec<Option<&'a str>>,
    server_url: Vec<Option<&'a str>>,
    apikey: Vec<Option<&'a str>>,
    traceparent: Vec<Option<String>>,
    tracestate: Vec<Option<&'a str>>,
    format: Vec<Option<&'static str>>,
    profile: Vec<&'static str>,
    /// Of the deliveries: the index of their event in `stored`, and their columns.
    event_of: Vec<usize>,
    channel: Vec<&'static str>,
    scope: Vec<&'static str>,
    destination: Vec<Arc<str>>,
    okey: Vec<Option<&'a str>>,
    /// The ordering keys of the group: advisory-lock id, channel, key; by lock id.
    keys: Vec<(i64, &'static str, &'a str)>,
}

impl<'a> Rows<'a> {
    fn new(schema: &str, accepted: &'a [Accepted]) -> Result<Self, String> {
        let mut rows = Self {
            instance_of: Vec::new(),
            counts: BTreeMap::new(),
            stored: Vec::new(),
            uuid: Vec::new(),
            kind: Vec::new(),
            data: Vec::new(),
            date_time: Vec::new(),
            sender: Vec::new(),
            server_url: Vec::new(),
            apikey: Vec::new(),
            traceparent: Vec::new(),
            tracestate: Vec::new(),
            format: Vec::new(),
            profile: Vec::new(),
            event_of: Vec::new(),
            channel: Vec::new(),
            scope: Vec::new(),
            destination: Vec::new(),
            okey: Vec::new(),
            keys: Vec::new(),
        };
        let mut json = DestinationJson::default();
        let mut keys = BTreeMap::new();
        let events = accepted.iter().flat_map(|a| &a.request.events);
        for (index, event) in events.enumerate() {
            let e = &event.envelope;
            let instance = e.instance().as_str();
            rows.instance_of.push(instance);
            *rows.counts.entry(instance).or_default() += 1;
            if event.deliveries.is_empty() {
                continue;
            }
            let at = rows.stored.len();
            rows.stored.push(index);
            rows.uuid.push(e.id().to_string());
            rows.kind.push(e.kind().key());
            rows.data.push(e.data().get());
            rows.date_time.push(e.date_time().timestamp_millis());
            rows.sender.push(e.sender());
            rows.server_url.push(e.server_url());
            rows.apikey.push(e.apikey().map(|k| k.expose()));
            rows.traceparent.push(e.trace().map(TraceContext::traceparent));
            rows.tracestate.push(e.trace().and_then(TraceContext::tracestate));
            let format = e.format();
            rows.format.push(format.is_cloudevents().then(|| format.as_str()));
            rows.profile.push(event.profile.as_str());
            for d in &event.deliveries {
                rows.event_of.push(at);
                rows.channel.push(d.channel.as_str());
                rows.scope.push(scope_str(d.scope));
                rows.destination.push(json.of(d.channel, &d.destination)?);
                let okey = d.ordering_key.as_deref();
                if let Some(key) = okey {
                    keys.insert(
                        lock_id(schema, d.channel.as_str(), key),
                        (d.channel.as_str(), key),
                    );
                }
                rows.okey.push(okey);
            }
        }
        rows.keys = keys.into_iter().map(|(id, (c, k))| (id, c, k)).collect();
        Ok(rows)
    }
}

/// Stores a group in one transaction; returns the sequence of every event, in order.
///
/// Ordering keys are locked and probed first, then the sequence counters (their row locks, which
/// order one instance's ingest across replicas, are held for as short as possible: one insert and
/// the commit), then events and deliveries are inserted in one statement.
async fn store(inner: &Inner, rows: &Rows<'_>) -> Result<Vec<u64>, DbError> {
    let mut tx = inner.pool.begin().await?;
    // Ordering keys: under their locks, a key with unsettled deliveries makes the new ones wait.
    // Each key is probed through its indexes (scalar subqueries: a cached generic plan can never
    // turn them into one scan of every pending delivery).
    let mut busy: HashSet<(&str, &str)> = HashSet::new();
    if !rows.keys.is_empty() {
        let ids: Vec<i64> = rows.keys.iter().map(|(id, _, _)| *id).collect();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let channels: Vec<&str> = rows.keys.iter().map(|(_, c, _)| *c).collect();
        let okeys: Vec<&str> = rows.keys.iter().map(|(_, _, k)| *k).collect();
        let found: Vec<i64> = sqlx::query_scalar(
            "SELECT k.n FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(c, o, n) \
             WHERE (SELECT min(d.id) FROM deliveries d WHERE d.channel = k.c AND d.okey = k.o \
                      AND d.state IN (0, 4)) IS NOT NULL \
                OR (SELECT d.id FROM deliveries d WHERE d.channel = k.c AND d.okey = k.o AND d.state = 1 \
                      LIMIT 1) IS NOT NULL",
        )
        .bind(&channels)
        .bind(&okeys)
        .fetch_all(&mut *tx)
        .await?;
        for n in found {
            let at = usize::try_from(n - 1).unwrap_or(usize::MAX);
            if let Some((_, c, k)) = rows.keys.get(at) {
                busy.insert((c, k));
            }
        }
    }
    let mut state = Vec::with_capacity(rows.event_of.len());
    let mut ready = BTreeSet::new();
    for (i, okey) in rows.okey.iter().enumerate() {
        let channel = rows.channel.get(i).copied().unwrap_or_default();
        let s = match okey {
            None => READY,
            // The first delivery of an idle key is its head; the others wait behind it.
            Some(key) if busy.insert((channel, key)) => READY,
            Some(_) => WAITING,
        };
        if s == READY {
            ready.insert(crate::rows::channel_named(channel));
        }
        state.push(s);
    }
    // Sequences, in instance-name order (no deadlock between groups).
    let names: Vec<&str> = rows.counts.keys().copied().collect();
    let counts: Vec<i64> = rows.counts.values().copied().collect();
    let lasts: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO sequences (instance, last) SELECT * FROM unnest($1::text[], $2::bigint[]) \
         ON CONFLICT (instance) DO UPDATE SET last = sequences.last + excluded.last \
         RETURNING instance, last",
    )
    .bind(&names)
    .bind(&counts)
    .fetch_all(&mut *tx)
    .await?;
    let mut next: HashMap<&str, i64> = HashMap::with_capacity(lasts.len());
    for (name, last) in &lasts {
        if let Some((name, n)) = rows.counts.get_key_value(name.as_str()) {
            next.insert(name, last - n + 1);
        }
    }
    let mut sequences = Vec::with_capacity(rows.instance_of.len());
    for instance in &rows.instance_of {
        let slot = next.entry(instance).or_insert(1);
        sequences.push(u64::try_from(*slot).unwrap_or(0));
        *slot += 1;
    }
    if rows.stored.is_empty() {
        tx.commit().await?;
        return Ok(sequences);
    }
    let event_sequences: Vec<i64> = rows
        .stored
        .iter()
        .map(|i| to_i64(sequences.get(*i).copied().unwrap_or(0)))
        .collect();
    let instances: Vec<&str> = rows
        .stored
        .iter()
        .map(|i| rows.instance_of.get(*i).copied().unwrap_or_default())
        .collect();
    // Each delivery names its event by its position in the events' arrays (from 1).
    let event_of: Vec<i64> = rows.event_of.iter().map(|at| to_i64(*at as u64 + 1)).collect();
    let destinations: Vec<&str> = rows.destination.iter().map(|d| &**d).collect();
    sqlx::query(&format!(
        "WITH n AS (SELECT {NOW_MS} AS now), \
         e AS (INSERT INTO events (uuid, instance, kind, data, date_time, sender, server_url, apikey, \
                 sequence, profile, traceparent, tracestate, format) \
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                 $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $17::text[], $18::text[], $19::text[]) \
               RETURNING id, instance, sequence) \
         INSERT INTO deliveries (event_id, channel, scope, destination, okey, state, due_at, updated_at) \
         SELECT e.id, d.c, d.s, d.d, d.k, d.st, n.now, n.now \
         FROM unnest($11::bigint[], $12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[]) \
                WITH ORDINALITY AS d(at, c, s, d, k, st, ord) \
           JOIN unnest($2::text[], $9::bigint[]) WITH ORDINALITY AS p(i, q, at) ON p.at = d.at \
           JOIN e ON e.instance = p.i AND e.sequence = p.q \
           CROSS JOIN n \
         ORDER BY d.ord"
    ))
    .bind(&rows.uuid)
    .bind(&instances)
    .bind(&rows.kind)
    .bind(&rows.data)
    .bind(&rows.date_time)
    .bind(&rows.sender)
    .bind(&rows.server_url)
    .bind(&rows.apikey)
    .bind(&event_sequences)
    .bind(&rows.profile)
    .bind(&event_of)
    .bind(&rows.channel)
    .bind(&rows.scope)
    .bind(&destinations)
    .bind(&rows.okey)
    .bind(&state)
    .bind(&rows.traceparent)
    .bind(&rows.tracestate)
    .bind(&rows.format)
    .execute(&mut *tx)
    .await?;
    announce(inner, &mut tx, &ready).await?;
    tx.commit().await?;
    Ok(sequences)
}
