//! The in-memory outbox: bounded, fast, and gone when the process exits.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use evolution_events::{Channel, Delivery, DeliveryId, EventEnvelope, InstanceName, NamingProfile, Uuid};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, DeliveryStatus, NewEvent, Outbox, OutboxError,
    Outcome, RedriveFilter, Settlement, StatusFilter, StoredEvent,
};

/// Default capacity: pending plus in-flight deliveries per channel.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Default number of recent events kept for [`Outbox::event`].
pub const DEFAULT_EVENT_HISTORY: usize = 1_024;

/// An [`Outbox`] in memory. Each channel holds at most `capacity` unsettled deliveries (enqueue
/// beyond that fails with [`OutboxError::Full`], storing nothing); at most `capacity` dead letters
/// are kept per outbox, the oldest evicted first (counted by [`MemoryOutbox::dead_evicted`]).
/// The last [`DEFAULT_EVENT_HISTORY`] accepted events (see [`MemoryOutbox::with_event_history`])
/// can be looked up by id ([`Outbox::event`]).
///
/// Time is `tokio::time`, so tests can run it under a paused clock.
#[derive(Debug)]
pub struct MemoryOutbox {
    state: Mutex<State>,
    notifiers: Mutex<HashMap<Channel, Arc<Notify>>>,
    capacity: usize,
    history: usize,
}

#[derive(Debug)]
struct Record {
    delivery: Delivery,
    attempts: u32,
    due: Instant,
    key: Option<Arc<str>>,
    in_flight: bool,
    /// The error of the last failed attempt (for the delivery log).
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct KeyState {
    queue: VecDeque<DeliveryId>,
    in_flight: usize,
}

#[derive(Debug, Default)]
struct ChannelState {
    /// Claimable now or later: unordered deliveries, and the head of every ordered key that has
    /// nothing in flight.
    ready: BTreeSet<(Instant, DeliveryId)>,
    keys: HashMap<Arc<str>, KeyState>,
    pending: usize,
    in_flight: usize,
}

#[derive(Debug)]
struct DeadEntry {
    letter: DeadLetter,
    key: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: DeliveryId,
    sequences: HashMap<InstanceName, u64>,
    records: HashMap<DeliveryId, Record>,
    channels: HashMap<Channel, ChannelState>,
    dead: VecDeque<DeadEntry>,
    dead_evicted: u64,
    /// The last `history` accepted events, for [`Outbox::event`]; `recent` in acceptance order.
    events: HashMap<Uuid, StoredEvent>,
    recent: VecDeque<Uuid>,
}

impl Default for MemoryOutbox {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl MemoryOutbox {
    /// An empty outbox holding at most `capacity` unsettled deliveries per channel.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notifiers: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            history: DEFAULT_EVENT_HISTORY,
        }
    }

    /// Keeps the last `events` accepted events for [`Outbox::event`] (0: none).
    #[must_use]
    pub fn with_event_history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// How many dead letters were evicted because more than `capacity` were kept.
    #[must_use]
    pub fn dead_evicted(&self) -> u64 {
        self.lock().dead_evicted
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, channels: impl IntoIterator<Item = Channel>) {
        for channel in channels {
            self.notifier(channel).notify_waiters();
        }
    }
}

impl State {
    /// Keeps `envelope` for [`Outbox::event`], forgetting the oldest beyond `capacity`.
    fn remember(&mut self, envelope: &Arc<EventEnvelope>, profile: NamingProfile, history: usize) {
        let stored = StoredEvent {
            envelope: Arc::clone(envelope),
            profile,
        };
        if self.events.insert(envelope.id(), stored).is_none() {
            self.recent.push_back(envelope.id());
        }
        while self.recent.len() > history {
            if let Some(old) = self.recent.pop_front() {
                self.events.remove(&old);
            }
        }
    }

    /// Puts the head of `key` in the ready set when nothing of that key is in flight.
    fn arm_key(&mut self, channel: Channel, key: &Arc<str>) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(ks) = ch.keys.get(key) else {
            return;
        };
        if ks.in_flight > 0 {
            return;
        }
        match ks.queue.front() {
            Some(head) => {
                if let Some(rec) = self.records.get(head) {
                    ch.ready.insert((rec.due, *head));
                }
            }
            None => {
                ch.keys.remove(key);
            }
        }
    }

    /// Removes a settled delivery from its key queue.
    fn unlink(&mut self, channel: Channel, key: Option<&Arc<str>>, id: DeliveryId) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        ch.in_flight = ch.in_flight.saturating_sub(1);
        if let Some(key) = key
            && let Some(ks) = ch.keys.get_mut(key)
        {
            if let Some(pos) = ks.queue.iter().position(|q| *q == id) {
                ks.queue.remove(pos);
            }
            ks.in_flight = ks.in_flight.saturating_sub(1);
        }
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<EventEnvelope>>, OutboxError> {
        let now = Instant::now();
        let mut touched = BTreeSet::new();
        let mut stored = Vec::with_capacity(events.len());
        {
            let mut state = self.lock();
            let mut wanted: HashMap<Channel, usize> = HashMap::new();
            for event in &events {
                for d in &event.deliveries {
                    *wanted.entry(d.channel).or_default() += 1;
                }
            }
            for (channel, n) in &wanted {
                let used = state.channels.get(channel).map_or(0, |c| c.pending + c.in_flight);
                if used + n > self.capacity {
                    return Err(OutboxError::Full {
                        channel: *channel,
                        capacity: self.capacity,
                    });
                }
            }
            for event in events {
                let seq = state
                    .sequences
                    .entry(event.envelope.instance().clone())
                    .or_insert(0);
                *seq += 1;
                let envelope = Arc::new(event.envelope.with_sequence(*seq));
                state.remember(&envelope, event.profile, self.history);
                for d in event.deliveries {
                    state.next_id += 1;
                    let id = state.next_id;
                    let delivery = Delivery {
                        body: None,
                        id,
                        channel: d.channel,
                        scope: d.scope,
                        profile: event.profile,
                        envelope: Arc::clone(&envelope),
                        destination: d.destination,
                        ordering_key: d.ordering_key.clone(),
                        attempt: 0,
                    };
                    touched.insert(d.channel);
                    let ch = state.channels.entry(d.channel).or_default();
                    ch.pending += 1;
                    match &d.ordering_key {
                        Some(key) => {
                            let ks = ch.keys.entry(Arc::clone(key)).or_default();
                            ks.queue.push_back(id);
                            if ks.in_flight == 0 && ks.queue.len() == 1 {
                                ch.ready.insert((now, id));
                            }
                        }
                        None => {
                            ch.ready.insert((now, id));
                        }
                    }
                    state.records.insert(
                        id,
                        Record {
                            delivery,
                            attempts: 0,
                            due: now,
                            key: d.ordering_key,
                            in_flight: false,
                            last_error: None,
                        },
                    );
                }
                stored.push(envelope);
            }
        }
        self.notify(touched);
        Ok(stored)
    }

    async fn claim(&self, channel: Channel, limit: usize) -> Result<Vec<Delivery>, OutboxError> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut state = self.lock();
        let State {
            records, channels, ..
        } = &mut *state;
        let Some(ch) = channels.get_mut(&channel) else {
            return Ok(out);
        };
        while out.len() < limit {
            let Some(&(due, id)) = ch.ready.first() else {
                break;
            };
            if due > now {
                break;
            }
            ch.ready.remove(&(due, id));
            let key = records.get(&id).and_then(|r| r.key.clone());
            let run: Vec<DeliveryId> = match &key {
                None => vec![id],
                Some(key) => match ch.keys.get(key) {
                    Some(ks) => ks
                        .queue
                        .iter()
                        .copied()
                        .take_while(|q| records.get(q).is_some_and(|r| !r.in_flight && r.due <= now))
                        .take(limit - out.len())
                        .collect(),
                    None => Vec::new(),
                },
            };
            for qid in run {
                let Some(rec) = records.get_mut(&qid) else {
                    continue;
                };
                rec.in_flight = true;
                ch.pending = ch.pending.saturating_sub(1);
                ch.in_flight += 1;
                if let Some(key) = &key
                    && let Some(ks) = ch.keys.get_mut(key)
                {
                    ks.in_flight += 1;
                }
                let mut delivery = rec.delivery.clone();
                delivery.attempt = rec.attempts + 1;
                out.push(delivery);
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), OutboxError> {
        let now = Instant::now();
        let mut touched_keys: Vec<(Channel, Arc<str>)> = Vec::new();
        let mut touched = BTreeSet::new();
        {
            let mut state = self.lock();
            for Settlement { id, outcome, .. } in settlements {
                let Some(rec) = state.records.get(&id) else {
                    continue;
                };
                if !rec.in_flight {
                    continue;
                }
                let channel = rec.delivery.channel;
                let key = rec.key.clone();
                touched.insert(channel);
                if let Some(key) = &key {
                    touched_keys.push((channel, Arc::clone(key)));
                }
                match outcome {
                    Outcome::Delivered | Outcome::Dead { .. } => {
                        let Some(rec) = state.records.remove(&id) else {
                            continue;
                        };
                        state.unlink(channel, key.as_ref(), id);
                        if let Outcome::Dead { error } = outcome {
                            let mut delivery = rec.delivery;
                            delivery.attempt = rec.attempts + 1;
                            state.dead.push_back(DeadEntry {
                                letter: DeadLetter { delivery, error },
                                key,
                            });
                            if state.dead.len() > self.capacity {
                                state.dead.pop_front();
                                state.dead_evicted += 1;
                            }
                        }
                    }
                    Outcome::Retry { .. } | Outcome::Requeue | Outcome::Postpone { .. } => {
                        let (due, failed) = match outcome {
                            Outcome::Retry { delay, error } => (now + delay, Some(error)),
                            Outcome::Postpone { delay } => (now + delay, None),
                            _ => (now, None),
                        };
                        if let Some(rec) = state.records.get_mut(&id) {
                            rec.in_flight = false;
                            rec.due = due;
                            if let Some(error) = failed {
                                rec.attempts += 1;
                                rec.last_error = Some(error);
                            }
                        }
                        let ch = state.channels.entry(channel).or_default();
                        ch.in_flight = ch.in_flight.saturating_sub(1);
                        ch.pending += 1;
                        match &key {
                            Some(key) => {
                                if let Some(ks) = ch.keys.get_mut(key) {
                                    ks.in_flight = ks.in_flight.saturating_sub(1);
                                }
                            }
                            None => {
                                ch.ready.insert((due, id));
                            }
                        }
                    }
                }
            }
            // A batch settles runs of a key: arm each key once.
            touched_keys.dedup();
            for (channel, key) in &touched_keys {
                state.arm_key(*channel, key);
            }
        }
        self.notify(touched);
        Ok(())
    }

    async fn next_due(&self, channel: Channel) -> Result<Option<Duration>, OutboxError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(state
            .channels
            .get(&channel)
            .and_then(|ch| ch.ready.first())
            .map(|(due, _)| due.saturating_duration_since(now)))
    }

    fn notifier(&self, channel: Channel) -> Arc<Notify> {
        let mut map = self.notifiers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(channel).or_default())
    }

    async fn release(&self, channel: Channel) -> Result<(), OutboxError> {
        let now = Instant::now();
        {
            let mut state = self.lock();
            let State {
                records, channels, ..
            } = &mut *state;
            let Some(ch) = channels.get_mut(&channel) else {
                return Ok(());
            };
            for (id, rec) in records.iter_mut() {
                if rec.delivery.channel != channel || !rec.in_flight {
                    continue;
                }
                rec.in_flight = false;
                rec.due = now;
                ch.in_flight = ch.in_flight.saturating_sub(1);
                ch.pending += 1;
                if rec.key.is_none() {
                    ch.ready.insert((now, *id));
                }
            }
            let keys: Vec<Arc<str>> = ch.keys.keys().cloned().collect();
            for ks in ch.keys.values_mut() {
                ks.in_flight = 0;
            }
            for key in keys {
                state.arm_key(channel, &key);
            }
        }
        self.notify([channel]);
        Ok(())
    }

    async fn stats(&self, channel: Channel) -> Result<ChannelStats, OutboxError> {
        let state = self.lock();
        let (pending, in_flight) = state
            .channels
            .get(&channel)
            .map_or((0, 0), |c| (c.pending, c.in_flight));
        let dead = state
            .dead
            .iter()
            .filter(|d| d.letter.delivery.channel == channel)
            .count();
        Ok(ChannelStats {
            pending,
            in_flight,
            dead,
        })
    }

    async fn dead_letters(
        &self,
        channel: Option<Channel>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        let state = self.lock();
        Ok(state
            .dead
            .iter()
            .filter(|d| channel.is_none_or(|c| d.letter.delivery.channel == c))
            .take(limit)
            .map(|d| d.letter.clone())
            .collect())
    }

    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        let now = Instant::now();
        let mut touched = BTreeSet::new();
        let count;
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            let (chosen, kept): (Vec<DeadEntry>, Vec<DeadEntry>) = std::mem::take(&mut state.dead)
                .into_iter()
                .partition(|d| filter.matches(&d.letter.delivery));
            state.dead = kept.into();
            count = chosen.len();
            for DeadEntry { letter, key } in chosen {
                let id = letter.delivery.id;
                let channel = letter.delivery.channel;
                touched.insert(channel);
                let ch = state.channels.entry(channel).or_default();
                ch.pending += 1;
                match &key {
                    Some(k) => {
                        // Back in its place by enqueue order: it is the key's head again if it is
                        // older than every pending delivery of the key (which then waits).
                        let ks = ch.keys.entry(Arc::clone(k)).or_default();
                        if ks.in_flight == 0
                            && let Some(head) = ks.queue.front()
                            && let Some(rec) = state.records.get(head)
                        {
                            ch.ready.remove(&(rec.due, *head));
                        }
                        let at = ks.queue.iter().position(|q| *q > id).unwrap_or(ks.queue.len());
                        ks.queue.insert(at, id);
                    }
                    None => {
                        ch.ready.insert((now, id));
                    }
                }
                state.records.insert(
                    id,
                    Record {
                        delivery: letter.delivery,
                        attempts: 0,
                        due: now,
                        key: key.clone(),
                        in_flight: false,
                        // As in the SQL backends: the error it died of, until the next attempt.
                        last_error: Some(letter.error),
                    },
                );
                if let Some(k) = key {
                    state.arm_key(channel, &k);
                }
            }
        }
        self.notify(touched);
        Ok(count)
    }

    async fn purge(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        let mut state = self.lock();
        let before = state.dead.len();
        state.dead.retain(|d| !filter.matches(&d.letter.delivery));
        Ok(before - state.dead.len())
    }

    async fn event(&self, instance: &InstanceName, id: Uuid) -> Result<Option<StoredEvent>, OutboxError> {
        Ok(self
            .lock()
            .events
            .get(&id)
            .filter(|e| e.envelope.instance() == instance)
            .cloned())
    }

    /// The events of its history ([`MemoryOutbox::with_event_history`]).
    async fn events_after(
        &self,
        instance: &InstanceName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError> {
        let state = self.lock();
        let mut events: Vec<StoredEvent> = state
            .events
            .values()
            .filter(|e| e.envelope.instance() == instance && e.envelope.sequence() > after)
            .cloned()
            .collect();
        events.sort_by_key(|e| e.envelope.sequence());
        events.truncate(limit);
        Ok(events)
    }

    /// Always `None`: delivered deliveries are not kept.
    async fn deliveries_after(
        &self,
        _channel: Channel,
        _after: Uuid,
        _instance: Option<&InstanceName>,
        _limit: usize,
    ) -> Result<Option<Vec<Delivery>>, OutboxError> {
        Ok(None)
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, OutboxError> {
        let now = Instant::now();
        let wall = chrono::Utc::now();
        let state = self.lock();
        let record =
            |d: &Delivery, status, attempts: u32, last_error: Option<String>, due: Option<Instant>| {
                DeliveryRecord {
                    id: d.id,
                    event_id: d.envelope.id(),
                    event: d.envelope.kind(),
                    instance: d.envelope.instance().clone(),
                    sequence: d.envelope.sequence(),
                    channel: d.channel,
                    scope: d.scope,
                    destination: d.destination.label(),
                    status,
                    attempts,
                    last_error,
                    next_attempt_at: due.and_then(|due| {
                        chrono::Duration::from_std(due.saturating_duration_since(now))
                            .ok()
                            .map(|d| wall + d)
                    }),
                    created_at: d.envelope.date_time(),
                    attempt_log: Vec::new(),
                }
            };
        let mut out: Vec<DeliveryRecord> = Vec::new();
        let wants = |status: DeliveryStatus, attempts: u32| match query.status {
            None => true,
            Some(StatusFilter::Pending) => {
                matches!(status, DeliveryStatus::Pending | DeliveryStatus::InFlight)
            }
            Some(StatusFilter::Failed) => status == DeliveryStatus::Pending && attempts > 0,
            Some(StatusFilter::Dead) => status == DeliveryStatus::Dead,
            Some(StatusFilter::Delivered) => false,
        };
        let matches = |d: &Delivery| {
            query.channel.is_none_or(|c| c == d.channel)
                && query.instance.as_ref().is_none_or(|i| i == d.envelope.instance())
        };
        for rec in state.records.values() {
            let status = if rec.in_flight {
                DeliveryStatus::InFlight
            } else {
                DeliveryStatus::Pending
            };
            if matches(&rec.delivery) && wants(status, rec.attempts) {
                let due = (!rec.in_flight).then_some(rec.due);
                out.push(record(
                    &rec.delivery,
                    status,
                    rec.attempts,
                    rec.last_error.clone(),
                    due,
                ));
            }
        }
        for dead in &state.dead {
            let d = &dead.letter.delivery;
            if matches(d) && wants(DeliveryStatus::Dead, d.attempt) {
                out.push(record(
                    d,
                    DeliveryStatus::Dead,
                    d.attempt,
                    Some(dead.letter.error.clone()),
                    None,
                ));
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.id));
        out.truncate(query.limit);
        Ok(out)
    }
}
