//! The delivery queue of evolution events.
//!
//! An [`Outbox`] stores each accepted event together with all of its deliveries in one step,
//! hands due deliveries to the dispatcher's per-channel workers in batches ([`Outbox::claim`]),
//! and records what happened to them ([`Outbox::settle`]): delivered, retry later, or dead.
//!
//! Backends: [`MemoryOutbox`] (the library default, bounded, lost on exit, keeps no delivery
//! history); `SqliteOutbox` (feature `sqlite`: the server's embedded default, durable across
//! crashes, with a delivery log) and `PostgresOutbox` (feature `postgres`: several server
//! replicas on one database) implement the same trait and [`Store`].
//!
//! Ordering: a delivery enqueued with an ordering key is claimable only when every earlier
//! delivery with that key has been delivered or given up, and never while another batch of that
//! key is in flight. Deliveries without a key go out concurrently.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use evolution_events::{
    Bytes, Channel, Delivery, DeliveryId, Destination, EventEnvelope, EventKind, InstanceName,
    InstanceSettings, NamingProfile, Scope, Sensitive, Uuid,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use memory::{DEFAULT_CAPACITY, DEFAULT_EVENT_HISTORY, MemoryOutbox};
#[cfg(feature = "postgres")]
pub use postgres::{DEFAULT_SCHEMA, PostgresOptions, PostgresOutbox};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteOptions, SqliteOutbox, WriteStats};

/// Default unsettled deliveries per channel of the durable backends (SQLite, PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const DURABLE_CAPACITY: usize = 1_000_000;
/// Default time the durable backends keep delivered deliveries for the delivery log.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A delivery to store with its event.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    /// The channel.
    pub channel: Channel,
    /// Instance or global settings produced it.
    pub scope: Scope,
    /// Where it goes.
    pub destination: Arc<Destination>,
    /// Deliveries sharing a key go out one batch at a time, in enqueue order. `None`: no order.
    pub ordering_key: Option<Arc<str>>,
}

/// An event to store, with every delivery the Router computed for it.
#[derive(Debug)]
pub struct NewEvent {
    /// The event; its sequence is assigned by the outbox.
    pub envelope: EventEnvelope,
    /// Payload and naming profile of its deliveries.
    pub profile: NamingProfile,
    /// Its deliveries (may be empty).
    pub deliveries: Vec<NewDelivery>,
}

/// What happened to a claimed delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: forget it.
    Delivered,
    /// This attempt failed: try again after `delay` (the attempt counts).
    Retry {
        /// How long to wait.
        delay: Duration,
        /// What went wrong (no secrets).
        error: String,
    },
    /// Not attempted to completion through no fault of its own (an earlier delivery of its ordering
    /// key failed in the same batch): put it back, due now, without counting an attempt.
    Requeue,
    /// Not attempted (its destination takes no more now: a rate limit, or a receiver that asked to
    /// slow down): put it back, due after `delay`, without counting an attempt.
    Postpone {
        /// How long to wait.
        delay: Duration,
    },
    /// Give up: keep it as a dead letter.
    Dead {
        /// Why (no secrets).
        error: String,
    },
}

/// Facts about one attempt, for the delivery log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// How long the send took.
    pub latency: Duration,
    /// The protocol status the backend answered (an HTTP status), if any.
    pub status: Option<u16>,
}

/// The outcome of one claimed delivery.
#[derive(Clone, Debug)]
pub struct Settlement {
    /// The delivery.
    pub id: DeliveryId,
    /// What happened.
    pub outcome: Outcome,
    /// The attempt's facts (`None` for [`Outcome::Requeue`] and [`Outcome::Postpone`], which are not
    /// attempts).
    pub attempt: Option<Attempt>,
}

/// Which dead letters to move back to pending ([`Outbox::redrive`]) or delete ([`Outbox::purge`]).
/// Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct RedriveFilter {
    /// Only these deliveries.
    pub ids: Vec<DeliveryId>,
    /// Only this channel.
    pub channel: Option<Channel>,
    /// Only this instance.
    pub instance: Option<InstanceName>,
    /// Only events accepted at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events accepted before this time.
    pub until: Option<DateTime<Utc>>,
}

impl RedriveFilter {
    /// Whether a dead letter matches.
    #[must_use]
    pub fn matches(&self, delivery: &Delivery) -> bool {
        let at = delivery.envelope.date_time();
        (self.ids.is_empty() || self.ids.contains(&delivery.id))
            && self.channel.is_none_or(|c| c == delivery.channel)
            && self
                .instance
                .as_ref()
                .is_none_or(|i| i == delivery.envelope.instance())
            && self.since.is_none_or(|s| at >= s)
            && self.until.is_none_or(|u| at < u)
    }
}

/// Where a delivery is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// Being sent now.
    InFlight,
    /// Reached the backend.
    Delivered,
    /// Given up; can be redriven.
    Dead,
}

/// Filter of the delivery log (`GET /deliveries/{instance}?status=`): `failed` means pending
/// after at least one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    /// Pending or in flight.
    Pending,
    /// Pending with at least one failed attempt.
    Failed,
    /// Dead.
    Dead,
    /// Delivered.
    Delivered,
}

/// A query of the delivery log. Newest deliveries first.
#[derive(Clone, Debug)]
pub struct DeliveryQuery {
    /// Only this instance.
    pub instance: Option<InstanceName>,
    /// Only this channel.
    pub channel: Option<Channel>,
    /// Only this status.
    pub status: Option<StatusFilter>,
    /// At most this many.
    pub limit: usize,
}

/// One recorded attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// `delivered`, `retry` or `dead`.
    pub outcome: &'static str,
    /// Protocol status (HTTP status), if any.
    pub status: Option<u16>,
    /// The error, if it failed (no secrets).
    pub error: Option<String>,
    /// How long the send took, in milliseconds.
    pub latency_ms: u64,
}

/// One delivery as the delivery log shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryRecord {
    /// The delivery.
    pub id: DeliveryId,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's kind.
    pub event: EventKind,
    /// The instance.
    pub instance: InstanceName,
    /// The event's per-instance sequence.
    pub sequence: u64,
    /// The channel.
    pub channel: Channel,
    /// Instance or global settings.
    pub scope: Scope,
    /// The destination's label (no secrets).
    pub destination: String,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// When the next attempt is due, if pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the event was accepted.
    pub created_at: DateTime<Utc>,
    /// Every attempt, oldest first (backends that keep no history return none).
    pub attempt_log: Vec<AttemptRecord>,
}

/// A delivery that was given up.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The delivery as last attempted.
    pub delivery: Delivery,
    /// The last error.
    pub error: String,
}

/// Counts for one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Waiting (due now or scheduled for a retry).
    pub pending: usize,
    /// Claimed by a worker, not settled yet.
    pub in_flight: usize,
    /// Dead letters kept.
    pub dead: usize,
}

/// Why the outbox refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The channel's queue is full: nothing was stored. Retry later (HTTP 503/429).
    #[error(
        "the {channel} delivery queue is full ({capacity} deliveries pending); nothing was stored: retry later, \
         or raise the queue capacity"
    )]
    Full {
        /// The full channel.
        channel: Channel,
        /// Its capacity.
        capacity: usize,
    },
    /// The storage backend failed.
    #[error("outbox storage failed: {0}")]
    Storage(String),
}

/// The delivery queue. See the crate documentation.
#[async_trait]
pub trait Outbox: Send + Sync + Debug + 'static {
    /// Stores the events and all their deliveries: all of them, or none (an error). Assigns each
    /// event the next sequence number of its instance, in input order. Returns the stored events.
    ///
    /// # Errors
    /// [`OutboxError::Full`] when a channel's queue cannot take the deliveries; storage errors.
    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<EventEnvelope>>, OutboxError>;

    /// Claims up to `limit` due deliveries of `channel`, in due order. For an ordered key only its
    /// first pending deliveries, in order, and only while no other batch of that key is in flight.
    /// `Delivery::attempt` tells which attempt this is.
    ///
    /// # Errors
    /// Storage errors.
    async fn claim(&self, channel: Channel, limit: usize) -> Result<Vec<Delivery>, OutboxError>;

    /// Records the outcomes of claimed deliveries.
    ///
    /// # Errors
    /// Storage errors.
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), OutboxError>;

    /// Time until the next claimable delivery of `channel` is due (zero: now), `None` if there is
    /// none.
    ///
    /// # Errors
    /// Storage errors.
    async fn next_due(&self, channel: Channel) -> Result<Option<Duration>, OutboxError>;

    /// Signalled (`notify_waiters`) whenever a delivery of `channel` may have become claimable.
    fn notifier(&self, channel: Channel) -> Arc<Notify>;

    /// Puts every in-flight delivery of `channel` back to pending, due now (after a shutdown
    /// deadline cut sends short).
    ///
    /// # Errors
    /// Storage errors.
    async fn release(&self, channel: Channel) -> Result<(), OutboxError>;

    /// Counts for `channel`.
    ///
    /// # Errors
    /// Storage errors.
    async fn stats(&self, channel: Channel) -> Result<ChannelStats, OutboxError>;

    /// Up to `limit` dead letters, oldest first, optionally of one channel.
    ///
    /// # Errors
    /// Storage errors.
    async fn dead_letters(
        &self,
        channel: Option<Channel>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError>;

    /// Moves the dead letters that match `filter` back to pending, due now, attempts counted from
    /// 1 again; an ordered one takes its place in its key again by enqueue order (before the
    /// key's later pending deliveries). Returns how many.
    ///
    /// # Errors
    /// Storage errors.
    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, OutboxError>;

    /// Deletes the dead letters that match `filter` (for good: they cannot be redriven). Returns
    /// how many.
    ///
    /// # Errors
    /// Storage errors.
    async fn purge(&self, filter: &RedriveFilter) -> Result<usize, OutboxError>;

    /// The delivery log, newest first.
    ///
    /// # Errors
    /// Storage errors.
    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, OutboxError>;

    /// The event `id` of `instance`, while the outbox still keeps it (`GET /events/{instance}/{id}`:
    /// how a client resolves a reference, such as the Pusher channel's `truncated` events). `None`
    /// when it was never accepted, belongs to another instance, or was pruned.
    ///
    /// # Errors
    /// Storage errors.
    async fn event(&self, instance: &InstanceName, id: Uuid) -> Result<Option<StoredEvent>, OutboxError>;

    /// The kept events of `instance` whose sequence is greater than `after`, in sequence order, at
    /// most `limit` (`GET /events/{instance}?after=`: how a consumer fills a gap in `sequence`).
    /// An event is kept while any of its deliveries is (delivered ones for the retention period;
    /// an event no destination wanted is not stored at all); the memory outbox keeps the last
    /// events of its history only.
    ///
    /// # Errors
    /// Storage errors.
    async fn events_after(
        &self,
        instance: &InstanceName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError>;

    /// The deliveries of `channel` made for the events accepted after the event `after`, oldest
    /// event first, at most `limit`, only of `instance` when given (then `after` must be one of
    /// its events): what a reconnecting Socket.IO client missed. `None` when `after` is not kept
    /// (never accepted, another instance's, or pruned), or the backend keeps no delivery history
    /// (the memory outbox forgets delivered deliveries at once).
    ///
    /// # Errors
    /// Storage errors.
    async fn deliveries_after(
        &self,
        channel: Channel,
        after: Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>, OutboxError>;
}

/// An accepted event as the outbox keeps it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// The event, with its sequence.
    pub envelope: Arc<EventEnvelope>,
    /// The naming profile of its payloads.
    pub profile: NamingProfile,
}

impl StoredEvent {
    /// The JSON payload its deliveries carry.
    #[must_use]
    pub fn payload(&self) -> Bytes {
        self.envelope.payload(self.profile)
    }
}

/// A stored instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Stable id (`instanceId`).
    pub id: Uuid,
    /// Name.
    pub name: InstanceName,
    /// Its API token (the `apikey` that gives access to this instance only).
    pub token: Sensitive,
    /// Its channel settings.
    pub settings: InstanceSettings,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An instance with that name (or token) exists already.
    #[error("an instance named `{0}` already exists (or its token is taken): choose another name or token")]
    Conflict(String),
    /// The storage backend failed.
    #[error("instance storage failed: {0}")]
    Storage(String),
}

/// Where instances and their settings live (the server's; durable backends implement it next to
/// [`Outbox`]).
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Stores a new instance.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the name or token is taken; storage errors.
    async fn create_instance(&self, record: &InstanceRecord) -> Result<(), StoreError>;

    /// Every instance, by name.
    ///
    /// # Errors
    /// Storage errors.
    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;

    /// Replaces an instance's settings. `false` if there is no such instance.
    ///
    /// # Errors
    /// Storage errors.
    async fn update_settings(
        &self,
        name: &InstanceName,
        settings: &InstanceSettings,
    ) -> Result<bool, StoreError>;

    /// Deletes an instance and its settings (its pending deliveries are still delivered). `false`
    /// if there is no such instance.
    ///
    /// # Errors
    /// Storage errors.
    async fn delete_instance(&self, name: &InstanceName) -> Result<bool, StoreError>;

    /// A receiver whose value changes whenever instances or their settings may have been changed
    /// by another process sharing the storage (server replicas on one database), so that the
    /// caller reloads them; `None` when no other process can (the default).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
