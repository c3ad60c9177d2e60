//! Storing accepted events and their deliveries.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use evolution_events::{Channel, EventEnvelope, EventFormat, TraceContext};
use rusqlite::{Connection, params};

use super::decode::{DestinationJson, scope_str};
use super::writer::{Cache, Staged, WriteError, db};
use super::{READY, WAITING, to_i64};
use crate::NewEvent;

/// One event row, ready to insert.
struct EventRow {
    id: i64,
    envelope: Arc<EventEnvelope>,
    profile: &'static str,
}

/// One delivery row, ready to insert.
struct DeliveryRow {
    id: i64,
    event_id: i64,
    channel: Channel,
    scope: &'static str,
    destination: Arc<str>,
    okey: Option<Arc<str>>,
    state: i64,
}

/// Consecutive `enqueue` requests of a transaction, stored together. [`EnqueueRun::add`] writes
/// nothing (it only reads), so a refused request leaves no trace; [`EnqueueRun::flush`] writes
/// every accepted one.
#[derive(Default)]
pub(super) struct EnqueueRun {
    staged: Staged,
    /// Ordering keys that had no live delivery before this run and have one in it.
    armed_keys: HashSet<(Channel, Arc<str>)>,
    events: Vec<EventRow>,
    deliveries: Vec<DeliveryRow>,
}

impl EnqueueRun {
    /// Checks capacity, assigns sequences and ids, and queues the rows of one request.
    pub(super) fn add(
        &mut self,
        conn: &Connection,
        cache: &mut Cache,
        capacity: usize,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<EventEnvelope>>, WriteError> {
        // Everything that can fail comes first.
        let mut wanted: BTreeMap<Channel, usize> = BTreeMap::new();
        for event in &events {
            for d in &event.deliveries {
                *wanted.entry(d.channel).or_default() += 1;
            }
        }
        for (channel, n) in &wanted {
            let stored = cache.live(conn, *channel)?;
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
        let mut json = DestinationJson::default();
        let mut destinations: Vec<Vec<Arc<str>>> = Vec::with_capacity(events.len());
        for event in &events {
            let of_event = event
                .deliveries
                .iter()
                .map(|d| json.of(d.channel, &d.destination))
                .collect::<Result<Vec<_>, _>>()
                .map_err(WriteError::Storage)?;
            destinations.push(of_event);
        }
        for event in &events {
            let instance = event.envelope.instance();
            if !self.staged.sequences.contains_key(instance) {
                cache.last_sequence(conn, instance)?;
            }
        }
        let stored_events = events.iter().filter(|e| !e.deliveries.is_empty()).count();
        let mut event_id = cache.event_ids(conn, stored_events)?;
        let mut delivery_id = cache.delivery_ids(conn, wanted.values().sum())?;
        let queues = cache.keys.load(conn)?;

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
                self.events.push(EventRow {
                    id: event_id,
                    envelope: Arc::clone(&envelope),
                    profile: event.profile.as_str(),
                });
                for (d, destination) in event.deliveries.into_iter().zip(destinations) {
                    let state = match &d.ordering_key {
                        None => READY,
                        // The first delivery of an idle key is its head; the others wait behind it.
                        Some(key)
                            if !queues.busy(d.channel, key)
                                && self.armed_keys.insert((d.channel, Arc::clone(key))) =>
                        {
                            READY
                        }
                        Some(_) => WAITING,
                    };
                    if let Some(key) = &d.ordering_key {
                        self.staged
                            .keyed
                            .push((d.channel, Arc::clone(key), delivery_id, state));
                    }
                    self.staged.notify.insert(d.channel);
                    *self.staged.live.entry(d.channel).or_default() += 1;
                    self.deliveries.push(DeliveryRow {
                        id: delivery_id,
                        event_id,
                        channel: d.channel,
                        scope: scope_str(d.scope),
                        destination,
                        okey: d.ordering_key,
                        state,
                    });
                    delivery_id += 1;
                }
                event_id += 1;
            }
            stored.push(envelope);
        }
        Ok(stored)
    }

    /// Writes every accepted request; returns the cache changes to apply.
    pub(super) fn flush(self, conn: &Connection, now: i64) -> Result<Staged, WriteError> {
        if !self.events.is_empty() {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO events (id, uuid, instance, kind, data, date_time, sender, server_url, apikey, \
                     sequence, profile, traceparent, tracestate, format) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(db("store the events"))?;
            let mut uuid = evolution_events::Uuid::encode_buffer();
            for row in &self.events {
                let e = &row.envelope;
                insert
                    .execute(params![
                        row.id,
                        &*e.id().hyphenated().encode_lower(&mut uuid),
                        e.instance().as_str(),
                        e.kind().key(),
                        e.data().get(),
                        e.date_time().timestamp_millis(),
                        e.sender(),
                        e.server_url(),
                        e.apikey().map(|k| k.expose()),
                        to_i64(e.sequence()),
                        row.profile,
                        e.trace().map(TraceContext::traceparent),
                        e.trace().and_then(TraceContext::tracestate),
                        stored_format(e.format()),
                    ])
                    .map_err(db("store the events"))?;
            }
        }
        if !self.deliveries.is_empty() {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO deliveries (id, event_id, channel, scope, destination, okey, state, due_at, \
                     updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                )
                .map_err(db("store the deliveries"))?;
            for row in &self.deliveries {
                insert
                    .execute(params![
                        row.id,
                        row.event_id,
                        row.channel.as_str(),
                        row.scope,
                        &*row.destination,
                        row.okey.as_deref(),
                        row.state,
                        now,
                    ])
                    .map_err(db("store the deliveries"))?;
            }
        }
        let mut upsert = conn
            .prepare_cached(
                "INSERT INTO sequences (instance, last) VALUES (?1, ?2) \
                 ON CONFLICT (instance) DO UPDATE SET last = excluded.last",
            )
            .map_err(db("store the sequence numbers"))?;
        for (instance, last) in &self.staged.sequences {
            upsert
                .execute(params![instance.as_str(), to_i64(*last)])
                .map_err(db("store the sequence numbers"))?;
        }
        Ok(self.staged)
    }
}

/// The `format` column: NULL for the default (as rows written before formats existed).
fn stored_format(format: EventFormat) -> Option<&'static str> {
    format.is_cloudevents().then(|| format.as_str())
}
