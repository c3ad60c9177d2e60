//! Proof that every case of the outbox contract suite can fail: a fixture wrapping
//! [`MemoryOutbox`] that breaks one rule at a time, and a test per break asserting that the
//! matching case panics with its rule. Without a break the same fixture passes the whole suite
//! (`sound`), reopen included: it keeps its memory across a "restart", putting in-flight work back.

#![allow(clippy::unwrap_used)] // test helpers

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use evolution_events::{Channel, Delivery, EventEnvelope, InstanceName, Uuid};
use evolution_outbox::testing::{self, CHANNEL, OutboxFixture, new_event, settlement};
use evolution_outbox::{
    ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, MemoryOutbox, NewEvent, Outbox, OutboxError,
    Outcome, RedriveFilter, Settlement, StoredEvent, outbox_contract_suite,
};
use tokio::sync::Notify;

/// A field of [`RedriveFilter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Ids,
    Channel,
    Instance,
    Since,
    Until,
}

fn without(field: Field, filter: &RedriveFilter) -> RedriveFilter {
    let mut filter = filter.clone();
    match field {
        Field::Ids => filter.ids.clear(),
        Field::Channel => filter.channel = None,
        Field::Instance => filter.instance = None,
        Field::Since => filter.since = None,
        Field::Until => filter.until = None,
    }
    filter
}

/// The rule the outbox breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// None: a correct (and, through `reopen`, durable) outbox.
    None,
    /// Loses the last delivery of every event with several.
    DropsADelivery,
    /// Stores a batch event by event, keeping those before the one that does not fit.
    StoresUntilFull,
    /// Ignores the capacity.
    Unbounded,
    /// Gives away a sequence number on the third enqueue.
    SkipsSequence,
    /// Hands out every claimed batch in reverse.
    ReversesClaims,
    /// Puts in-flight deliveries back before every claim (so they are claimed twice).
    ReleasesBeforeClaim,
    /// Retries at once, whatever the delay.
    IgnoresRetryDelay,
    /// Puts every unordered delivery under one ordering key.
    OrdersEverything,
    /// Counts a requeue as an attempt.
    RequeueCountsAttempt,
    /// `release` does nothing.
    ReleaseIsNoop,
    /// `next_due` always says "now".
    NextDueAlwaysNow,
    /// The notifier is never signalled.
    SilentNotifier,
    /// `stats` counts in-flight deliveries as pending.
    InFlightCountedPending,
    /// `dead_letters` ignores its channel.
    DeadLettersOfEveryChannel,
    /// `redrive` ignores one field of its filter.
    RedriveIgnores(Field),
    /// `purge` ignores one field of its filter (deleting too much).
    PurgeIgnores(Field),
    /// A delivery is lost across a reopen.
    ReopenLosesDelivery,
    /// In-flight deliveries stay in flight across a reopen.
    ReopenKeepsInFlight,
    /// `event` finds nothing.
    ForgetsEvents,
    /// `deliveries_after` replays although no history is kept.
    ReplaysWithoutHistory,
    /// The delivery log lists the oldest first.
    LogsOldestFirst,
}

/// [`MemoryOutbox`] with one [`Fault`].
#[derive(Debug)]
struct FaultyOutbox {
    inner: MemoryOutbox,
    fault: Fault,
    enqueues: AtomicUsize,
    channels: Mutex<BTreeSet<Channel>>,
}

#[async_trait]
impl Outbox for FaultyOutbox {
    async fn enqueue(&self, mut events: Vec<NewEvent>) -> Result<Vec<Arc<EventEnvelope>>, OutboxError> {
        self.channels
            .lock()
            .unwrap()
            .extend(events.iter().flat_map(|e| e.deliveries.iter().map(|d| d.channel)));
        let call = self.enqueues.fetch_add(1, Ordering::Relaxed);
        match self.fault {
            Fault::DropsADelivery => {
                for e in events.iter_mut().filter(|e| e.deliveries.len() > 1) {
                    e.deliveries.pop();
                }
            }
            Fault::StoresUntilFull => {
                let mut stored = Vec::new();
                for e in events {
                    stored.extend(self.inner.enqueue(vec![e]).await?);
                }
                return Ok(stored);
            }
            Fault::SkipsSequence if call == 2 => {
                if let Some(first) = events.first() {
                    let instance = first.envelope.instance().as_str().to_owned();
                    self.inner
                        .enqueue(vec![new_event(CHANNEL, &instance, 0, None)])
                        .await?;
                }
            }
            Fault::OrdersEverything => {
                for d in events.iter_mut().flat_map(|e| e.deliveries.iter_mut()) {
                    d.ordering_key.get_or_insert_with(|| Arc::from("everything"));
                }
            }
            _ => {}
        }
        self.inner.enqueue(events).await
    }

    async fn claim(&self, channel: Channel, limit: usize) -> Result<Vec<Delivery>, OutboxError> {
        if self.fault == Fault::ReleasesBeforeClaim {
            self.inner.release(channel).await?;
        }
        let mut claimed = self.inner.claim(channel, limit).await?;
        if self.fault == Fault::ReversesClaims {
            claimed.reverse();
        }
        Ok(claimed)
    }

    async fn settle(&self, mut settlements: Vec<Settlement>) -> Result<(), OutboxError> {
        for s in &mut settlements {
            match (&mut s.outcome, self.fault) {
                (Outcome::Retry { delay, .. }, Fault::IgnoresRetryDelay) => *delay = Duration::ZERO,
                (outcome @ Outcome::Requeue, Fault::RequeueCountsAttempt) => {
                    *outcome = Outcome::Retry {
                        delay: Duration::ZERO,
                        error: "requeued".to_owned(),
                    };
                }
                _ => {}
            }
        }
        self.inner.settle(settlements).await
    }

    async fn next_due(&self, channel: Channel) -> Result<Option<Duration>, OutboxError> {
        if self.fault == Fault::NextDueAlwaysNow {
            return Ok(Some(Duration::ZERO));
        }
        self.inner.next_due(channel).await
    }

    fn notifier(&self, channel: Channel) -> Arc<Notify> {
        if self.fault == Fault::SilentNotifier {
            return Arc::new(Notify::new());
        }
        self.inner.notifier(channel)
    }

    async fn release(&self, channel: Channel) -> Result<(), OutboxError> {
        if self.fault == Fault::ReleaseIsNoop {
            return Ok(());
        }
        self.inner.release(channel).await
    }

    async fn stats(&self, channel: Channel) -> Result<ChannelStats, OutboxError> {
        let mut stats = self.inner.stats(channel).await?;
        if self.fault == Fault::InFlightCountedPending {
            stats.pending += stats.in_flight;
            stats.in_flight = 0;
        }
        Ok(stats)
    }

    async fn dead_letters(
        &self,
        channel: Option<Channel>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        let channel = if self.fault == Fault::DeadLettersOfEveryChannel {
            None
        } else {
            channel
        };
        self.inner.dead_letters(channel, limit).await
    }

    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        match self.fault {
            Fault::RedriveIgnores(field) => self.inner.redrive(&without(field, filter)).await,
            _ => self.inner.redrive(filter).await,
        }
    }

    async fn purge(&self, filter: &RedriveFilter) -> Result<usize, OutboxError> {
        match self.fault {
            Fault::PurgeIgnores(field) => self.inner.purge(&without(field, filter)).await,
            _ => self.inner.purge(filter).await,
        }
    }

    async fn deliveries(&self, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, OutboxError> {
        let mut records = self.inner.deliveries(query).await?;
        if self.fault == Fault::LogsOldestFirst {
            records.reverse();
        }
        Ok(records)
    }

    async fn event(&self, instance: &InstanceName, id: Uuid) -> Result<Option<StoredEvent>, OutboxError> {
        if self.fault == Fault::ForgetsEvents {
            return Ok(None);
        }
        self.inner.event(instance, id).await
    }

    async fn events_after(
        &self,
        instance: &InstanceName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError> {
        self.inner.events_after(instance, after, limit).await
    }

    async fn deliveries_after(
        &self,
        channel: Channel,
        after: Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>, OutboxError> {
        if self.fault == Fault::ReplaysWithoutHistory {
            return Ok(Some(Vec::new()));
        }
        self.inner.deliveries_after(channel, after, instance, limit).await
    }
}

/// The fixture of [`FaultyOutbox`]: durable in that `reopen` keeps the same memory and puts
/// in-flight work back to pending, as a restarted durable backend does.
struct Faulty {
    fault: Fault,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Self { fault }
    }
}

impl OutboxFixture for Faulty {
    type Outbox = FaultyOutbox;

    async fn setup() -> Self {
        Self::new(Fault::None)
    }

    async fn open(&self, capacity: usize) -> Arc<FaultyOutbox> {
        let capacity = if self.fault == Fault::Unbounded {
            capacity * 1000
        } else {
            capacity
        };
        Arc::new(FaultyOutbox {
            inner: MemoryOutbox::new(capacity),
            fault: self.fault,
            enqueues: AtomicUsize::new(0),
            channels: Mutex::new(BTreeSet::new()),
        })
    }

    async fn reopen(&self, outbox: Arc<FaultyOutbox>) -> Option<Arc<FaultyOutbox>> {
        let channels = outbox.channels.lock().unwrap().clone();
        if self.fault != Fault::ReopenKeepsInFlight {
            for channel in channels {
                outbox.inner.release(channel).await.unwrap();
            }
        }
        if self.fault == Fault::ReopenLosesDelivery {
            let lost = outbox.inner.claim(CHANNEL, 1).await.unwrap();
            let settlements = lost
                .iter()
                .map(|d| settlement(d.id, Outcome::Delivered))
                .collect();
            outbox.inner.settle(settlements).await.unwrap();
        }
        Some(outbox)
    }
}

outbox_contract_suite!(sound, Faulty);

/// One `#[should_panic]` test per break: `name: fault => case, "the expected panic message"`.
macro_rules! breaks {
    ($($name:ident: $fault:expr => $case:ident, $expected:literal;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[should_panic(expected = $expected)]
            async fn $name() {
                testing::$case(&Faulty::new($fault)).await;
            }
        )*
    };
}

breaks! {
    a_lost_delivery_fails_enqueue: Fault::DropsADelivery => enqueue_stores_every_delivery,
        "case `enqueue_stores_every_delivery`: every delivery is claimable on its own channel, once";
    a_partly_stored_batch_fails_all_or_nothing: Fault::StoresUntilFull => enqueue_is_all_or_nothing,
        "case `enqueue_is_all_or_nothing`: a refused batch stored nothing, also not the event before";
    no_limit_fails_backlog_limit: Fault::Unbounded => backlog_limit,
        "case `backlog_limit`: a delivery beyond the capacity of 3 was accepted (the channel was at its limit)";
    a_skipped_sequence_fails_sequences: Fault::SkipsSequence => sequences_without_gaps_under_concurrent_producers,
        "case `sequences_without_gaps_under_concurrent_producers`: sequence numbers skipped";
    reversed_claims_fail_due_order: Fault::ReversesClaims => claims_in_due_order,
        "case `claims_in_due_order`: deliveries due at once go out in enqueue order";
    reversed_claims_fail_the_head_run: Fault::ReversesClaims => ordered_key_claims_its_head_run_in_order,
        "case `ordered_key_claims_its_head_run_in_order`: a claim takes the head run of a key, in enqueue order";
    reversed_claims_fail_a_redriven_head: Fault::ReversesClaims => redriven_letter_takes_its_place_again,
        "case `redriven_letter_takes_its_place_again`: the redriven letter goes out first again";
    claiming_twice_fails_leases: Fault::ReleasesBeforeClaim => a_claimed_delivery_is_leased_until_settled,
        "case `a_claimed_delivery_is_leased_until_settled`: a claimed delivery was claimed again";
    claiming_an_in_flight_key_fails_one_batch: Fault::ReleasesBeforeClaim => ordered_key_one_batch_in_flight,
        "case `ordered_key_one_batch_in_flight`: a delivery of a key with a batch in flight was claimed";
    an_ignored_delay_fails_retries: Fault::IgnoresRetryDelay => retry_waits_until_due,
        "case `retry_waits_until_due`: a delivery was claimable before its retry delay";
    an_ignored_delay_fails_the_head_wait: Fault::IgnoresRetryDelay => ordered_key_waits_for_its_head,
        "case `ordered_key_waits_for_its_head`: a delivery behind a head waiting for its retry was claimed";
    ordering_everything_fails_concurrency: Fault::OrdersEverything => unordered_and_other_keys_go_out_concurrently,
        "case `unordered_and_other_keys_go_out_concurrently`: one claim after another";
    a_counted_requeue_fails_attempts: Fault::RequeueCountsAttempt => attempts_count_failed_tries_only,
        "case `attempts_count_failed_tries_only`: a requeue is not an attempt";
    a_noop_release_fails_release: Fault::ReleaseIsNoop => release_returns_in_flight_work,
        "case `release_returns_in_flight_work`: release puts every in-flight delivery back to pending";
    always_due_fails_next_due: Fault::NextDueAlwaysNow => next_due_tells_when_to_claim,
        "case `next_due_tells_when_to_claim`: nothing pending: None";
    a_silent_notifier_fails_notifier: Fault::SilentNotifier => notifier_wakes_workers,
        "case `notifier_wakes_workers`: an enqueue did not wake a worker";
    miscounted_stats_fail_stats: Fault::InFlightCountedPending => stats_count_each_channel,
        "case `stats_count_each_channel`: (pending, in flight, dead) after a claim";
    an_ignored_channel_fails_dead_letters: Fault::DeadLettersOfEveryChannel => dead_letters_keep_delivery_and_error,
        "case `dead_letters_keep_delivery_and_error`: dead letters of a channel, oldest first";
    redrive_ignoring_ids_fails: Fault::RedriveIgnores(Field::Ids) => redrive_honours_every_filter_field,
        "case `redrive_honours_every_filter_field`: Redrive with ids: how many";
    redrive_ignoring_channel_fails: Fault::RedriveIgnores(Field::Channel) => redrive_honours_every_filter_field,
        "case `redrive_honours_every_filter_field`: Redrive with channel: how many";
    redrive_ignoring_instance_fails: Fault::RedriveIgnores(Field::Instance) => redrive_honours_every_filter_field,
        "case `redrive_honours_every_filter_field`: Redrive with instance: how many";
    redrive_ignoring_since_fails: Fault::RedriveIgnores(Field::Since) => redrive_honours_every_filter_field,
        "case `redrive_honours_every_filter_field`: Redrive with since (inclusive): how many";
    redrive_ignoring_until_fails: Fault::RedriveIgnores(Field::Until) => redrive_honours_every_filter_field,
        "case `redrive_honours_every_filter_field`: Redrive with until (exclusive): how many";
    purge_ignoring_ids_fails: Fault::PurgeIgnores(Field::Ids) => purge_honours_every_filter_field,
        "case `purge_honours_every_filter_field`: Purge with ids: how many";
    purge_ignoring_channel_fails: Fault::PurgeIgnores(Field::Channel) => purge_honours_every_filter_field,
        "case `purge_honours_every_filter_field`: Purge with channel: how many";
    purge_ignoring_instance_fails: Fault::PurgeIgnores(Field::Instance) => purge_honours_every_filter_field,
        "case `purge_honours_every_filter_field`: Purge with instance: how many";
    purge_ignoring_since_fails: Fault::PurgeIgnores(Field::Since) => purge_honours_every_filter_field,
        "case `purge_honours_every_filter_field`: Purge with since (inclusive): how many";
    purge_ignoring_until_fails: Fault::PurgeIgnores(Field::Until) => purge_honours_every_filter_field,
        "case `purge_honours_every_filter_field`: Purge with until (exclusive): how many";
    a_lost_delivery_fails_reopen: Fault::ReopenLosesDelivery => reopen_keeps_everything,
        "case `reopen_keeps_everything`: (pending, in flight, dead) after reopening";
    stuck_in_flight_work_fails_reopen: Fault::ReopenKeepsInFlight => reopen_keeps_everything,
        "case `reopen_keeps_everything`: (pending, in flight, dead) after reopening";
    forgotten_events_fail_event_lookup: Fault::ForgetsEvents => event_lookup,
        "case `event_lookup`: an accepted event was not found";
    replay_without_history_fails: Fault::ReplaysWithoutHistory => deliveries_after_replays_what_a_client_missed,
        "case `deliveries_after_replays_what_a_client_missed`: a backend that keeps no history has nothing to replay";
    oldest_first_fails_the_delivery_log: Fault::LogsOldestFirst => delivery_log_reports_each_delivery,
        "case `delivery_log_reports_each_delivery`: every delivery kept, newest first";
}
