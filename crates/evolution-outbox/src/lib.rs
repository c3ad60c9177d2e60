//! The delivery queue of evolution events.
//!
//! An [`Outbox`] stores each accepted event together with all of its deliveries in one step,
//! hands due deliveries to the dispatcher's per-channel workers in batches ([`Outbox::claim`]),
//! and records what happened to them ([`Outbox::settle`]): delivered, retry later, or dead.
//!
//! Backends: [`MemoryOutbox`] (the library default, bounded, lost on exit); SQLite (the server's
//! embedded default) and PostgreSQL (several replicas) implement the same trait.
//!
//! Ordering: a delivery enqueued with an ordering key is claimable only when every earlier
//! delivery with that key has been delivered or given up, and never while another batch of that
//! key is in flight. Deliveries without a key go out concurrently.

mod memory;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use evolution_events::{Channel, Delivery, DeliveryId, Destination, EventEnvelope, NamingProfile, Scope};
use tokio::sync::Notify;

pub use memory::{DEFAULT_CAPACITY, MemoryOutbox};

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
    /// Give up: keep it as a dead letter.
    Dead {
        /// Why (no secrets).
        error: String,
    },
}

/// The outcome of one claimed delivery.
#[derive(Clone, Debug)]
pub struct Settlement {
    /// The delivery.
    pub id: DeliveryId,
    /// What happened.
    pub outcome: Outcome,
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

    /// Moves dead letters back to pending, due now, attempts counted from 1 again: the given ids,
    /// or every one of `channel` (all channels if `None`) when `ids` is empty. Returns how many.
    ///
    /// # Errors
    /// Storage errors.
    async fn redrive(&self, channel: Option<Channel>, ids: &[DeliveryId]) -> Result<usize, OutboxError>;
}
