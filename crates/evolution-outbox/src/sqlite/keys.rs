//! The live deliveries of every ordering key, in the writer's memory (ADR 0027).
//!
//! Only the writer changes deliveries, so it can keep, per channel and ordering key, the ids and
//! states of the key's ready, in-flight and waiting deliveries in enqueue (id) order: what an
//! index on `(channel, okey, state)` gave, without the index. Such an index has one region per key,
//! and every commit that stored events of sixteen instances wrote sixteen of its pages.
//!
//! The queues mirror the database inside the running transaction. Whenever a request fails (its
//! savepoint or the transaction rolled back) they are dropped, and loaded again from the database
//! before their next use.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use evolution_events::Channel;
use rusqlite::{Connection, params};

use super::decode::channel_named;
use super::writer::{WriteError, db};
use super::{IN_FLIGHT, READY, WAITING};

/// One live delivery of an ordering key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    id: i64,
    /// [`READY`], [`IN_FLIGHT`] or [`WAITING`].
    state: i64,
}

/// The live deliveries of one ordering key, by id, and how many are in flight and ready.
#[derive(Debug, Default, PartialEq, Eq)]
struct Queue {
    entries: VecDeque<Entry>,
    in_flight: usize,
    ready: usize,
}

impl Queue {
    fn count(&mut self, state: i64, added: bool) {
        let counter = match state {
            IN_FLIGHT => &mut self.in_flight,
            READY => &mut self.ready,
            _ => return,
        };
        *counter = if added {
            counter.saturating_add(1)
        } else {
            counter.saturating_sub(1)
        };
    }

    fn position(&self, id: i64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Keeps the invariant of an ordering key: while nothing of it is in flight, its oldest pending
    /// delivery is ready and every other one waits; while something is in flight, all wait.
    fn arm(&mut self, conn: &Connection) -> Result<(), WriteError> {
        // With nothing in flight, every live delivery is pending: the oldest is the head.
        let head = if self.in_flight > 0 {
            None
        } else {
            self.entries.front().map(|e| e.id)
        };
        let mut update = conn
            .prepare_cached("UPDATE deliveries SET state = ?2 WHERE id = ?1")
            .map_err(db("update an ordering key"))?;
        let mut ready_left = self.ready;
        let mut head_done = head.is_none();
        for entry in &mut self.entries {
            if ready_left == 0 && head_done {
                break;
            }
            let want = if Some(entry.id) == head {
                head_done = true;
                READY
            } else if entry.state == READY {
                WAITING
            } else {
                continue;
            };
            if entry.state == READY {
                ready_left = ready_left.saturating_sub(1);
            }
            if entry.state != want {
                update
                    .execute(params![entry.id, want])
                    .map_err(db("update an ordering key"))?;
                entry.state = want;
            }
        }
        self.ready = usize::from(head.is_some());
        Ok(())
    }
}

/// Every ordering key with live deliveries, per channel; `None` until loaded (again).
#[derive(Debug, Default)]
pub(super) struct Keys(Option<Queues>);

impl Keys {
    /// Forgets the queues: the next use loads them from the database.
    pub(super) fn unload(&mut self) {
        self.0 = None;
    }

    /// The queues if they are loaded (a run that stored deliveries loaded them).
    pub(super) fn loaded(&mut self) -> Option<&mut Queues> {
        self.0.as_mut()
    }

    /// Debug builds (the tests): whether the loaded queues are what the database holds, checked
    /// after each commit while they hold few deliveries.
    #[cfg(debug_assertions)]
    pub(super) fn check(&self, conn: &Connection) -> Result<(), String> {
        let Some(queues) = &self.0 else {
            return Ok(());
        };
        let held: usize = queues
            .0
            .values()
            .flat_map(HashMap::values)
            .map(|q| q.entries.len())
            .sum();
        if held > 2_000 {
            return Ok(());
        }
        // A database that cannot be read now (a full disk, say) is the failure tests' business.
        let Ok(stored) = Queues::read(conn) else {
            return Ok(());
        };
        if *queues == stored {
            Ok(())
        } else {
            Err(format!(
                "the ordering keys in memory {queues:?} differ from the database {stored:?}"
            ))
        }
    }

    /// The queues, loaded from the database (inside the writer's transaction) if needed.
    pub(super) fn load(&mut self, conn: &Connection) -> Result<&mut Queues, WriteError> {
        if self.0.is_none() {
            self.0 = Some(Queues::read(conn)?);
        }
        Ok(self.0.get_or_insert_with(Queues::default))
    }
}

/// The live deliveries of every ordering key (see the module).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Queues(HashMap<Channel, HashMap<Arc<str>, Queue>>);

impl Queues {
    fn read(conn: &Connection) -> Result<Self, WriteError> {
        let failed = db("read the deliveries of the ordering keys");
        let mut statement = conn
            .prepare(
                "SELECT id, channel, okey, state FROM deliveries \
                 WHERE (state = 0 OR state = 1 OR state = 4) AND okey IS NOT NULL",
            )
            .map_err(&failed)?;
        let mut rows = statement.query([]).map_err(&failed)?;
        let mut queues = Self::default();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        while let Some(row) = rows.next().map_err(&failed)? {
            let id: i64 = row.get(0).map_err(&failed)?;
            let channel = channel_named(&row.get::<_, String>(1).map_err(&failed)?);
            let key: String = row.get(2).map_err(&failed)?;
            let state: i64 = row.get(3).map_err(&failed)?;
            let key = Arc::clone(names.entry(key).or_insert_with_key(|k| Arc::from(k.as_str())));
            let queue = queues.0.entry(channel).or_default().entry(key).or_default();
            queue.entries.push_back(Entry { id, state });
            queue.count(state, true);
        }
        for queue in queues.0.values_mut().flat_map(HashMap::values_mut) {
            queue.entries.make_contiguous().sort_unstable_by_key(|e| e.id);
        }
        Ok(queues)
    }

    fn queue(&self, channel: Channel, key: &str) -> Option<&Queue> {
        self.0.get(&channel).and_then(|keys| keys.get(key))
    }

    /// Whether `key` has live deliveries.
    pub(super) fn busy(&self, channel: Channel, key: &str) -> bool {
        self.queue(channel, key).is_some()
    }

    /// Adds a live delivery (by id: a redriven one takes its place again).
    pub(super) fn add(&mut self, channel: Channel, key: &Arc<str>, id: i64, state: i64) {
        let queue = self
            .0
            .entry(channel)
            .or_default()
            .entry(Arc::clone(key))
            .or_default();
        match queue.entries.back() {
            Some(last) if last.id >= id => match queue.entries.binary_search_by_key(&id, |e| e.id) {
                Ok(at) => {
                    let old = queue.entries[at].state;
                    queue.count(old, false);
                    queue.entries[at].state = state;
                }
                Err(at) => queue.entries.insert(at, Entry { id, state }),
            },
            _ => queue.entries.push_back(Entry { id, state }),
        }
        queue.count(state, true);
    }

    /// Records the new state of a delivery of `key`: live, or gone (delivered or dead).
    pub(super) fn set(&mut self, channel: Channel, key: &str, id: i64, state: i64) {
        let Some(keys) = self.0.get_mut(&channel) else {
            return;
        };
        let Some(queue) = keys.get_mut(key) else {
            return;
        };
        let Some(at) = queue.position(id) else {
            return;
        };
        let old = queue.entries[at].state;
        queue.count(old, false);
        if state == READY || state == IN_FLIGHT || state == WAITING {
            queue.entries[at].state = state;
            queue.count(state, true);
        } else {
            queue.entries.remove(at);
            if queue.entries.is_empty() {
                keys.remove(key);
                if keys.is_empty() {
                    self.0.remove(&channel);
                }
            }
        }
    }

    /// The waiting deliveries right behind `head` (a ready delivery of `key`), in order.
    pub(super) fn behind(&self, channel: Channel, key: &str, head: i64) -> impl Iterator<Item = i64> + '_ {
        let queue = self.queue(channel, key);
        let from = queue
            .and_then(|q| q.position(head))
            .map_or(usize::MAX, |at| at + 1);
        queue
            .into_iter()
            .flat_map(move |q| q.entries.range(from.min(q.entries.len())..))
            .take_while(|e| e.state == WAITING)
            .map(|e| e.id)
    }

    /// Keeps the invariant of an ordering key (see [`Queue::arm`]).
    pub(super) fn arm(&mut self, conn: &Connection, channel: Channel, key: &str) -> Result<(), WriteError> {
        match self.0.get_mut(&channel).and_then(|keys| keys.get_mut(key)) {
            Some(queue) => queue.arm(conn),
            None => Ok(()),
        }
    }

    /// Keeps the invariant of every ordering key (at open, once in-flight deliveries are pending).
    pub(super) fn arm_all(&mut self, conn: &Connection) -> Result<(), WriteError> {
        self.0
            .values_mut()
            .flat_map(HashMap::values_mut)
            .try_for_each(|queue| queue.arm(conn))
    }
}
