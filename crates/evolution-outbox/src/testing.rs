//! The **outbox contract suite**: every rule the dispatcher relies on, checked against any
//! [`Outbox`] backend through an [`OutboxFixture`]. Only tests build it (feature `test-util`).
//!
//! A backend's integration test implements [`OutboxFixture`] and expands
//! [`outbox_contract_suite!`](crate::outbox_contract_suite), which gives one `#[tokio::test]` per
//! case:
//!
//! ```ignore
//! use evolution_outbox::outbox_contract_suite;
//! struct PostgresFixture { /* a fresh schema */ }
//! impl OutboxFixture for PostgresFixture { /* … */ }
//! outbox_contract_suite!(postgres, PostgresFixture);
//! ```
//!
//! Each case is an `async fn` of this module (call one directly to debug it) and panics with a
//! message naming the case and the broken rule. The cases run on the real clock with short delays
//! (a retry after [`RETRY`]), so backends on the tokio clock and on the wall clock run them
//! unchanged; they know nothing of any backend beyond what the fixture declares.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use evolution_events::{
    Channel, CustomTarget, Delivery, DeliveryId, Destination, EventEnvelope, EventFormat, EventKind,
    InstanceName, NamingProfile, RawValue, Scope, TraceContext, Uuid,
};
use tokio::sync::Notify;

use crate::{
    Attempt, ChannelStats, DeliveryQuery, DeliveryRecord, DeliveryStatus, NewDelivery, NewEvent, Outbox,
    OutboxError, Outcome, RedriveFilter, Settlement, StatusFilter, StoredEvent,
};

#[doc(inline)]
pub use crate::outbox_contract_suite;

/// What a backend provides to run the contract suite: storage for one case.
///
/// The suite calls [`setup`](Self::setup) once per case, so each case starts from empty storage.
/// Its futures need not be `Send`: the cases await them on the test's own runtime.
#[allow(
    async_fn_in_trait,
    reason = "the suite awaits the fixture on the test's runtime, never sends it"
)]
pub trait OutboxFixture: Sized + 'static {
    /// The backend under test.
    type Outbox: Outbox;

    /// A fixture on fresh, empty storage (a new temporary file, a new database schema).
    async fn setup() -> Self;

    /// Opens the outbox on the fixture's storage, holding at most `capacity` unsettled (pending
    /// plus in-flight) deliveries per channel. Called once per case.
    async fn open(&self, capacity: usize) -> Arc<Self::Outbox>;

    /// Drops `outbox` (the case holds no other handle to it) and opens the same storage again, with
    /// the same capacity, as a process restarted after a crash would. `None`: the backend is not
    /// durable (it would start empty), and the case that needs it checks nothing.
    async fn reopen(&self, outbox: Arc<Self::Outbox>) -> Option<Arc<Self::Outbox>>;

    /// Whether the backend keeps delivered deliveries and their attempts: a delivery log with
    /// history, and replay through [`Outbox::deliveries_after`]. Default: `false`.
    fn keeps_history(&self) -> bool {
        false
    }

    /// Deletes the delivered deliveries settled before this call, their attempts, and the events
    /// left without deliveries (a backend's retention run, as if the retention had passed).
    /// Returns how many deliveries. Called only when [`keeps_history`](Self::keeps_history).
    ///
    /// # Errors
    /// Storage errors.
    async fn prune(&self, outbox: &Self::Outbox) -> Result<usize, OutboxError> {
        let _ = outbox;
        Ok(0)
    }
}

/// Expands to `mod $name { … }` holding one `#[tokio::test]` (multi-threaded, 2 workers) per
/// contract case, each on a fresh `$fixture` (a type implementing
/// [`OutboxFixture`](crate::testing::OutboxFixture), in scope where the macro is invoked).
///
/// The invoking crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dependency.
#[macro_export]
macro_rules! outbox_contract_suite {
    ($name:ident, $fixture:ty) => {
        $crate::__outbox_contract_suite!(
            $name, $fixture;
            enqueue_stores_every_delivery,
            enqueue_is_all_or_nothing,
            backlog_limit,
            sequences_without_gaps_under_concurrent_producers,
            claims_in_due_order,
            a_claimed_delivery_is_leased_until_settled,
            ordered_key_claims_its_head_run_in_order,
            ordered_key_one_batch_in_flight,
            ordered_key_waits_for_its_head,
            redriven_letter_takes_its_place_again,
            unordered_and_other_keys_go_out_concurrently,
            retry_waits_until_due,
            postpone_waits_without_an_attempt,
            attempts_count_failed_tries_only,
            release_returns_in_flight_work,
            next_due_tells_when_to_claim,
            notifier_wakes_workers,
            stats_count_each_channel,
            dead_letters_keep_delivery_and_error,
            redrive_honours_every_filter_field,
            purge_honours_every_filter_field,
            reopen_keeps_everything,
            event_lookup,
            events_after_fill_a_gap_in_sequence,
            deliveries_after_replays_what_a_client_missed,
            delivery_log_reports_each_delivery,
            trace_context_and_format_travel_with_the_event,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __outbox_contract_suite {
    ($name:ident, $fixture:ty; $($case:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = <$fixture as $crate::testing::OutboxFixture>::setup().await;
                    $crate::testing::$case(&fixture).await;
                }
            )*
        }
    };
}

/// A PostgreSQL schema of one test (`name`, a plain lower-case identifier) in the database at
/// `url`: dropped with everything in it when this is dropped (stop the outboxes and servers using
/// it first). Feature `postgres`.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PostgresSchema {
    /// The database.
    pub url: String,
    /// The schema.
    pub name: String,
}

#[cfg(feature = "postgres")]
impl PostgresSchema {
    /// The schema `name` in the database at `url` (created by whoever opens an outbox on it).
    #[must_use]
    pub fn new(url: &str, name: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
        }
    }
}

#[cfg(feature = "postgres")]
impl Drop for PostgresSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A thread and runtime of its own: the test's runtime may be shutting down, or absent.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                let drop = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                conn.execute(drop.as_str()).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            tracing::warn!(schema = %self.name, "could not drop the test schema");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Builders, also for backend-specific tests.

/// The channel most cases use.
pub const CHANNEL: Channel = Channel::Nats;
/// A second channel, for the rules that keep channels apart.
pub const OTHER: Channel = Channel::Kafka;
/// The retry delay the cases wait for: short enough to keep the suite fast, long enough to see
/// that a delivery is not claimable before it is due.
pub const RETRY: Duration = Duration::from_millis(500);
/// How long a notifier may take to wake a worker (a failure, not a speed limit).
const WAKE: Duration = Duration::from_secs(5);
/// A little more than clock granularity: what the cases wait beyond a due time.
const MARGIN: Duration = Duration::from_millis(30);
/// The capacity of the outboxes of the cases that do not test it.
const ROOMY: usize = 10_000;

/// An event of `instance` (kind `MESSAGES_UPSERT`, profile `Seed`, data with non-ASCII text) with
/// `deliveries` deliveries on `channel` to the custom targets `t0`, `t1`, …, all with the ordering
/// key `key`.
///
/// # Panics
/// If `instance` is not a valid instance name (this is test code).
#[must_use]
pub fn new_event(channel: Channel, instance: &str, deliveries: usize, key: Option<&str>) -> NewEvent {
    let instance = match InstanceName::new(instance) {
        Ok(name) => name,
        Err(e) => panic!("testing::new_event: {e}"),
    };
    let data = match RawValue::from_string(r#"{"key":{"id":"M1"},"text":"olá 👋"}"#.to_owned()) {
        Ok(data) => data,
        Err(e) => panic!("testing::new_event: {e}"),
    };
    NewEvent {
        envelope: EventEnvelope::new(EventKind::MessagesUpsert, instance, data),
        profile: NamingProfile::Seed,
        deliveries: (0..deliveries)
            .map(|i| new_delivery(channel, &format!("t{i}"), key))
            .collect(),
    }
}

/// A delivery on `channel` to the custom target `target`, scope `Instance`.
#[must_use]
pub fn new_delivery(channel: Channel, target: &str, key: Option<&str>) -> NewDelivery {
    NewDelivery {
        channel,
        scope: Scope::Instance,
        destination: Arc::new(Destination::Custom(CustomTarget {
            target: target.to_owned(),
        })),
        ordering_key: key.map(Arc::from),
    }
}

/// A settlement without attempt facts.
#[must_use]
pub fn settlement(id: DeliveryId, outcome: Outcome) -> Settlement {
    Settlement {
        id,
        outcome,
        attempt: None,
    }
}

/// Retry after `delay`.
#[must_use]
pub fn retry(delay: Duration) -> Outcome {
    Outcome::Retry {
        delay,
        error: "down".to_owned(),
    }
}

/// Give up with `error`.
#[must_use]
pub fn dead(error: &str) -> Outcome {
    Outcome::Dead {
        error: error.to_owned(),
    }
}

/// The ids of `deliveries`, in order.
#[must_use]
pub fn ids(deliveries: &[Delivery]) -> Vec<DeliveryId> {
    deliveries.iter().map(|d| d.id).collect()
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Fails the case unless `$cond`, naming the case and the broken rule.
macro_rules! rule {
    ($case:expr, $cond:expr, $($rule:tt)+) => {
        assert!($cond, "outbox contract case `{}`: {}", $case, format_args!($($rule)+))
    };
}

/// Fails the case unless `$got == $want`, naming the case and the broken rule.
macro_rules! rule_eq {
    ($case:expr, $got:expr, $want:expr, $($rule:tt)+) => {{
        let (got, want) = (&$got, &$want);
        assert!(
            got == want,
            "outbox contract case `{}`: {}\n  got:  {:?}\n  want: {:?}",
            $case,
            format_args!($($rule)+),
            got,
            want
        )
    }};
}

fn ok<T>(case: &str, what: &str, result: Result<T, OutboxError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("outbox contract case `{case}`: {what} failed: {e}"),
    }
}

async fn enqueue(case: &str, o: &dyn Outbox, events: Vec<NewEvent>) -> Vec<Arc<EventEnvelope>> {
    ok(case, "enqueue", o.enqueue(events).await)
}

async fn claim(case: &str, o: &dyn Outbox, channel: Channel, limit: usize) -> Vec<Delivery> {
    let claimed = ok(case, "claim", o.claim(channel, limit).await);
    rule!(
        case,
        claimed.len() <= limit,
        "claim({channel}, {limit}) returned {} deliveries, more than its limit",
        claimed.len()
    );
    claimed
}

async fn claim_all(case: &str, o: &dyn Outbox, channel: Channel) -> Vec<Delivery> {
    claim(case, o, channel, ROOMY).await
}

async fn settle(case: &str, o: &dyn Outbox, settlements: Vec<Settlement>) {
    ok(case, "settle", o.settle(settlements).await);
}

async fn settle_all(case: &str, o: &dyn Outbox, deliveries: &[Delivery], outcome: &Outcome) {
    let settlements = deliveries
        .iter()
        .map(|d| settlement(d.id, outcome.clone()))
        .collect();
    settle(case, o, settlements).await;
}

async fn stats(case: &str, o: &dyn Outbox, channel: Channel) -> (usize, usize, usize) {
    let ChannelStats {
        pending,
        in_flight,
        dead,
    } = ok(case, "stats", o.stats(channel).await);
    (pending, in_flight, dead)
}

async fn next_due(case: &str, o: &dyn Outbox, channel: Channel) -> Option<Duration> {
    ok(case, "next_due", o.next_due(channel).await)
}

async fn dead_ids(case: &str, o: &dyn Outbox, channel: Option<Channel>) -> Vec<DeliveryId> {
    let letters = ok(case, "dead_letters", o.dead_letters(channel, ROOMY).await);
    letters.iter().map(|l| l.delivery.id).collect()
}

async fn log(case: &str, o: &dyn Outbox, query: DeliveryQuery) -> Vec<DeliveryRecord> {
    ok(case, "deliveries", o.deliveries(&query).await)
}

fn query(status: Option<StatusFilter>) -> DeliveryQuery {
    DeliveryQuery {
        instance: None,
        channel: None,
        status,
        limit: ROOMY,
    }
}

fn instance(name: &str) -> InstanceName {
    match InstanceName::new(name) {
        Ok(name) => name,
        Err(e) => panic!("testing: {e}"),
    }
}

fn label(d: &Delivery) -> String {
    d.destination.label()
}

/// Runs `operation` and fails the case unless `notify` wakes a waiter registered before it.
async fn wakes(case: &str, what: &str, notify: Arc<Notify>, operation: impl Future<Output = ()>) {
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    operation.await;
    rule!(
        case,
        tokio::time::timeout(WAKE, notified).await.is_ok(),
        "{what} did not wake a worker waiting on the channel's notifier (within {WAKE:?})"
    );
}

/// Says on stderr that `case` checked nothing more, and why.
#[allow(
    clippy::print_stderr,
    reason = "a case that cannot apply to a backend must say so in the test output"
)]
fn report_skip(case: &str, why: &str) {
    eprintln!("outbox contract case `{case}`: skipped the rest: {why}");
}

/// Joins a task of the case, passing its panic on.
async fn join<T>(case: &str, task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("outbox contract case `{case}`: a task did not finish: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The cases.

/// **Enqueue stores each event with every delivery.** `enqueue` returns the events in input order,
/// each with the next sequence of its instance (an event without deliveries takes one too); every
/// delivery is claimable once on its own channel (custom channels too), with attempt 1, its
/// scope, profile and destination, and an envelope equal to the one returned.
pub async fn enqueue_stores_every_delivery<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "enqueue_stores_every_delivery";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let custom = Channel::Custom("contract-custom");
    let mut mixed = new_event(CHANNEL, "a", 2, None);
    mixed.profile = NamingProfile::EvolutionV2;
    mixed.deliveries.push(NewDelivery {
        scope: Scope::Global,
        ..new_delivery(OTHER, "global", None)
    });
    let events = vec![
        new_event(CHANNEL, "a", 1, None),
        new_event(CHANNEL, "b", 1, None),
        mixed,
        new_event(CHANNEL, "a", 0, None),
        new_event(custom, "a", 1, None),
    ];
    let sent: Vec<Uuid> = events.iter().map(|e| e.envelope.id()).collect();
    let profiles: HashMap<Uuid, NamingProfile> =
        events.iter().map(|e| (e.envelope.id(), e.profile)).collect();
    let stored = enqueue(CASE, o, events).await;
    rule_eq!(
        CASE,
        stored.iter().map(|e| e.id()).collect::<Vec<_>>(),
        sent,
        "enqueue returns the stored events in input order"
    );
    rule_eq!(
        CASE,
        stored.iter().map(|e| e.sequence()).collect::<Vec<_>>(),
        vec![1, 1, 2, 3, 4],
        "each event takes the next sequence of its instance, in input order (one without deliveries too)"
    );
    let by_id: HashMap<Uuid, &Arc<EventEnvelope>> = stored.iter().map(|e| (e.id(), e)).collect();
    let on_channel = claim_all(CASE, o, CHANNEL).await;
    let on_other = claim_all(CASE, o, OTHER).await;
    let on_custom = claim_all(CASE, o, custom).await;
    rule_eq!(
        CASE,
        (on_channel.len(), on_other.len(), on_custom.len()),
        (4, 1, 1),
        "every delivery is claimable on its own channel, once"
    );
    let mut targets: BTreeMap<(u64, String), Vec<String>> = BTreeMap::new();
    for (d, channel) in on_channel
        .iter()
        .map(|d| (d, CHANNEL))
        .chain(on_other.iter().map(|d| (d, OTHER)))
        .chain(on_custom.iter().map(|d| (d, custom)))
    {
        rule_eq!(CASE, d.channel, channel, "a delivery is claimed on its channel");
        rule_eq!(CASE, d.attempt, 1, "a new delivery's first claim is attempt 1");
        let Some(envelope) = by_id.get(&d.envelope.id()) else {
            panic!(
                "outbox contract case `{CASE}`: claimed delivery {} carries event {}, which was never enqueued",
                d.id,
                d.envelope.id()
            );
        };
        rule_eq!(
            CASE,
            (d.envelope.sequence(), d.envelope.instance()),
            (envelope.sequence(), envelope.instance()),
            "a delivery carries its event's sequence and instance"
        );
        let profile = profiles.get(&d.envelope.id()).copied().unwrap_or_default();
        rule_eq!(
            CASE,
            d.profile,
            profile,
            "a delivery keeps its event's naming profile"
        );
        // The same delivery over the event as it was enqueued: the same bytes on the wire.
        let as_enqueued = Delivery {
            envelope: Arc::clone(envelope),
            ..d.clone()
        };
        rule!(
            CASE,
            d.payload() == as_enqueued.payload(),
            "the payload of a claimed delivery differs from the enqueued event's"
        );
        let scope = if d.channel == OTHER {
            Scope::Global
        } else {
            Scope::Instance
        };
        rule_eq!(CASE, d.scope, scope, "a delivery keeps its scope");
        targets
            .entry((d.envelope.sequence(), d.envelope.instance().to_string()))
            .or_default()
            .push(label(d));
    }
    for list in targets.values_mut() {
        list.sort();
    }
    let want: BTreeMap<(u64, String), Vec<String>> = [
        ((1, "a"), vec!["t0"]),
        ((1, "b"), vec!["t0"]),
        ((2, "a"), vec!["global", "t0", "t1"]),
        ((4, "a"), vec!["t0"]),
    ]
    .into_iter()
    .map(|((seq, i), t)| ((seq, i.to_owned()), t.into_iter().map(str::to_owned).collect()))
    .collect();
    rule_eq!(
        CASE,
        targets,
        want,
        "each event's deliveries go to its own destinations, each once"
    );
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (0, 4, 0),
        "stats count the claimed deliveries in flight"
    );
    rule!(
        CASE,
        enqueue(CASE, o, Vec::new()).await.is_empty(),
        "enqueueing no events stores none"
    );
}

/// **Enqueue is all or nothing.** A batch that does not fit stores nothing, not even the events
/// before the one that overflows, nor their deliveries on other channels, and takes no sequence
/// number; the error is [`OutboxError::Full`] naming the full channel and its capacity.
pub async fn enqueue_is_all_or_nothing<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "enqueue_is_all_or_nothing";
    let outbox = fx.open(3).await;
    let o = &*outbox;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 2, None)]).await;
    let fits = new_event(OTHER, "a", 1, None);
    let overflows = new_event(CHANNEL, "b", 2, None);
    let refused = [fits.envelope.id(), overflows.envelope.id()];
    match o.enqueue(vec![fits, overflows]).await {
        Err(OutboxError::Full { channel, capacity }) => rule_eq!(
            CASE,
            (channel, capacity),
            (CHANNEL, 3),
            "Full names the channel that is full and its capacity"
        ),
        Ok(_) => panic!("outbox contract case `{CASE}`: a batch that does not fit was accepted"),
        Err(e) => panic!(
            "outbox contract case `{CASE}`: a batch that does not fit failed with `{e}` instead of Full"
        ),
    }
    rule_eq!(
        CASE,
        stats(CASE, o, OTHER).await,
        (0, 0, 0),
        "a refused batch stored nothing, also not the event before the one that overflowed"
    );
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (2, 0, 0),
        "a refused batch stored nothing on the full channel"
    );
    for (name, id) in ["a", "b"].iter().zip(refused) {
        let found = ok(CASE, "event", o.event(&instance(name), id).await);
        rule!(
            CASE,
            found.is_none(),
            "an event of a refused batch can be looked up"
        );
    }
    let next = enqueue(
        CASE,
        o,
        vec![new_event(CHANNEL, "a", 1, None), new_event(OTHER, "b", 1, None)],
    )
    .await;
    rule_eq!(
        CASE,
        next.iter().map(|e| e.sequence()).collect::<Vec<_>>(),
        vec![2, 1],
        "a refused batch took no sequence numbers"
    );
    let other = claim_all(CASE, o, OTHER).await;
    rule_eq!(
        CASE,
        other.iter().map(|d| d.envelope.id()).collect::<Vec<_>>(),
        vec![next[1].id()],
        "only the accepted batch's delivery is on the other channel"
    );
}

/// Enqueues one delivery on `channel`, which must be refused with [`OutboxError::Full`].
async fn expect_full(case: &str, o: &dyn Outbox, channel: Channel, capacity: usize, why: &str) {
    match o.enqueue(vec![new_event(channel, "a", 1, None)]).await {
        Err(OutboxError::Full {
            channel: full,
            capacity: cap,
        }) => rule_eq!(
            case,
            (full, cap),
            (channel, capacity),
            "Full names the channel and capacity"
        ),
        Ok(_) => panic!(
            "outbox contract case `{case}`: a delivery beyond the capacity of {capacity} was accepted ({why})"
        ),
        Err(e) => panic!(
            "outbox contract case `{case}`: an enqueue beyond the capacity failed with `{e}` instead of Full"
        ),
    }
}

/// **The backlog limit.** A channel holds at most `capacity` unsettled deliveries: exactly
/// `capacity` fit, one more is [`OutboxError::Full`]; in-flight deliveries and deliveries waiting
/// for a retry count, delivered ones and dead letters do not; each channel has its own limit.
pub async fn backlog_limit<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "backlog_limit";
    let outbox = fx.open(3).await;
    let o = &*outbox;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 3, None)]).await;
    expect_full(CASE, o, CHANNEL, 3, "the channel was at its limit").await;
    enqueue(CASE, o, vec![new_event(OTHER, "a", 1, None)]).await;
    let batch = claim(CASE, o, CHANNEL, 2).await;
    rule_eq!(CASE, batch.len(), 2, "claim(2) of three due deliveries");
    expect_full(CASE, o, CHANNEL, 3, "in-flight deliveries count").await;
    settle(CASE, o, vec![settlement(batch[0].id, Outcome::Delivered)]).await;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    expect_full(
        CASE,
        o,
        CHANNEL,
        3,
        "a delivered delivery freed one place, which was taken",
    )
    .await;
    settle(CASE, o, vec![settlement(batch[1].id, retry(Duration::ZERO))]).await;
    expect_full(CASE, o, CHANNEL, 3, "a delivery waiting for a retry counts").await;
    let rest = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, rest.len(), 3, "every unsettled delivery is due");
    settle(CASE, o, vec![settlement(rest[0].id, dead("no"))]).await;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    expect_full(
        CASE,
        o,
        CHANNEL,
        3,
        "a dead letter freed one place, which was taken",
    )
    .await;
}

/// **Sequences under concurrent producers.** Tasks enqueueing at once (single events and batches)
/// for the same instances get every instance's sequence numbers 1..=n, none twice, none skipped,
/// and the stored events carry the sequences enqueue returned.
pub async fn sequences_without_gaps_under_concurrent_producers<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "sequences_without_gaps_under_concurrent_producers";
    const TASKS: usize = 8;
    const ROUNDS: usize = 12;
    const INSTANCES: usize = 3;
    let outbox = fx.open(ROOMY).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                let mut got = Vec::new();
                for round in 0..ROUNDS {
                    let events = (0..=round % 2)
                        .map(|i| new_event(CHANNEL, &format!("p{}", (task + round + i) % INSTANCES), 1, None))
                        .collect();
                    for e in enqueue(CASE, &*outbox, events).await {
                        got.push((e.instance().to_string(), e.sequence(), e.id()));
                    }
                }
                got
            })
        })
        .collect();
    let mut returned: Vec<(String, u64, Uuid)> = Vec::new();
    for task in tasks {
        returned.extend(join(CASE, task).await);
    }
    let mut per_instance: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (name, seq, _) in &returned {
        per_instance.entry(name).or_default().push(*seq);
    }
    for (name, seqs) in &mut per_instance {
        seqs.sort_unstable();
        let mut twice: Vec<u64> = seqs.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        twice.dedup();
        rule!(
            CASE,
            twice.is_empty(),
            "sequence numbers given twice, instance {name}: {twice:?}"
        );
        let last = seqs.last().copied().unwrap_or(0);
        let missing: Vec<u64> = (1..=last).filter(|s| seqs.binary_search(s).is_err()).collect();
        rule!(
            CASE,
            missing.is_empty(),
            "sequence numbers skipped, instance {name}: {missing:?} (of 1..={last})"
        );
    }
    let by_sequence: HashMap<(String, u64), Uuid> = returned
        .iter()
        .map(|(name, seq, id)| ((name.clone(), *seq), *id))
        .collect();
    let claimed = claim_all(CASE, &*outbox, CHANNEL).await;
    rule_eq!(
        CASE,
        claimed.len(),
        returned.len(),
        "every enqueued event's delivery is stored"
    );
    for d in &claimed {
        let key = (d.envelope.instance().to_string(), d.envelope.sequence());
        rule_eq!(
            CASE,
            by_sequence.get(&key),
            Some(&d.envelope.id()),
            "the stored event carries the sequence enqueue returned for it"
        );
    }
}

/// **Due order.** `claim` hands out due deliveries earliest due first (enqueue order among
/// equals), at most `limit`, and none before it is due.
pub async fn claims_in_due_order<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "claims_in_due_order";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    rule!(
        CASE,
        claim(CASE, o, CHANNEL, 10).await.is_empty(),
        "an empty outbox has nothing to claim"
    );
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await[0].id());
    }
    rule!(
        CASE,
        claim(CASE, o, CHANNEL, 0).await.is_empty(),
        "claim(0) claims nothing"
    );
    let first = claim(CASE, o, CHANNEL, 1).await;
    let rest = claim(CASE, o, CHANNEL, 2).await;
    let order: Vec<Uuid> = first.iter().chain(&rest).map(|d| d.envelope.id()).collect();
    rule_eq!(
        CASE,
        order,
        sent,
        "deliveries due at once go out in enqueue order"
    );
    let (a, b, c) = (&first[0], &rest[0], &rest[1]);
    settle(
        CASE,
        o,
        vec![
            settlement(a.id, retry(RETRY * 2)),
            settlement(b.id, retry(RETRY)),
            settlement(c.id, Outcome::Requeue),
        ],
    )
    .await;
    rule_eq!(
        CASE,
        ids(&claim(CASE, o, CHANNEL, 10).await),
        vec![c.id],
        "only the requeued delivery is due; the retrying ones are not claimable before their delay"
    );
    tokio::time::sleep(RETRY * 2 + MARGIN).await;
    rule_eq!(
        CASE,
        ids(&claim(CASE, o, CHANNEL, 10).await),
        vec![b.id, a.id],
        "the earlier due goes out first, whatever the enqueue order"
    );
}

/// **Leases.** A claimed delivery is not claimed again until it is settled or released; claims
/// are per channel; a settlement of a delivery that is not in flight (settled already, released,
/// or unknown) changes nothing.
pub async fn a_claimed_delivery_is_leased_until_settled<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "a_claimed_delivery_is_leased_until_settled";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    enqueue(
        CASE,
        o,
        vec![new_event(CHANNEL, "a", 3, None), new_event(OTHER, "a", 1, None)],
    )
    .await;
    let batch = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, batch.len(), 3, "three due deliveries");
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a claimed delivery was claimed again before it was settled or released"
    );
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (0, 3, 0),
        "claimed deliveries are in flight"
    );
    rule_eq!(
        CASE,
        claim_all(CASE, o, OTHER).await.len(),
        1,
        "claims on one channel leave another's deliveries alone"
    );
    settle(CASE, o, vec![settlement(batch[0].id, Outcome::Delivered)]).await;
    settle(
        CASE,
        o,
        vec![
            settlement(batch[0].id, dead("late")),
            settlement(DeliveryId::MAX / 2, dead("unknown")),
        ],
    )
    .await;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (0, 2, 0),
        "a second settlement of a settled delivery, or of an unknown id, changed something"
    );
    ok(CASE, "release", o.release(CHANNEL).await);
    settle(CASE, o, vec![settlement(batch[1].id, dead("after release"))]).await;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (2, 0, 0),
        "a settlement of a released (pending) delivery changed it"
    );
    let again = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(
        CASE,
        ids(&again),
        vec![batch[1].id, batch[2].id],
        "released deliveries are claimable again; a delivered one never"
    );
}

/// Enqueues one event per call: `n` events of `instance` with one delivery on `channel` under
/// `key`. Returns their ids in enqueue order.
async fn keyed(
    case: &str,
    o: &dyn Outbox,
    channel: Channel,
    instance: &str,
    key: &str,
    n: usize,
) -> Vec<Uuid> {
    let mut sent = Vec::with_capacity(n);
    for _ in 0..n {
        sent.push(enqueue(case, o, vec![new_event(channel, instance, 1, Some(key))]).await[0].id());
    }
    sent
}

fn events(deliveries: &[Delivery]) -> Vec<Uuid> {
    deliveries.iter().map(|d| d.envelope.id()).collect()
}

/// **A redriven letter of an ordered key takes its place again.** A dead letter redriven while later
/// deliveries of its key are pending is the key's oldest pending delivery again: it goes out before
/// them, in enqueue order, one batch of the key at a time.
pub async fn redriven_letter_takes_its_place_again<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "redriven_letter_takes_its_place_again";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let k = keyed(CASE, o, CHANNEL, "a", "a/k", 3).await;
    let first = claim(CASE, o, CHANNEL, 1).await;
    rule_eq!(CASE, events(&first), k[..1].to_vec(), "the key's head");
    settle(CASE, o, vec![settlement(first[0].id, dead("gone"))]).await;
    let filter = RedriveFilter {
        ids: vec![first[0].id],
        ..RedriveFilter::default()
    };
    rule_eq!(
        CASE,
        ok(CASE, "redrive", o.redrive(&filter).await),
        1,
        "one dead letter redriven"
    );
    let next = claim(CASE, o, CHANNEL, 2).await;
    rule_eq!(
        CASE,
        events(&next),
        k[..2].to_vec(),
        "the redriven letter goes out first again, then the delivery behind it, in enqueue order"
    );
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a delivery of a key with a batch in flight was claimed"
    );
    settle_all(CASE, o, &next, &Outcome::Delivered).await;
    rule_eq!(
        CASE,
        events(&claim_all(CASE, o, CHANNEL).await),
        k[2..].to_vec(),
        "then the rest of the key"
    );
}

/// **An ordering key goes out as its head run, in order.** A claim takes the head of a key and
/// the deliveries right behind it, in enqueue order, up to the limit; nothing more of that key
/// while that batch is in flight, while other keys still go out.
pub async fn ordered_key_claims_its_head_run_in_order<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "ordered_key_claims_its_head_run_in_order";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let k = keyed(CASE, o, CHANNEL, "a", "a/k", 5).await;
    let j = keyed(CASE, o, CHANNEL, "b", "b/j", 1).await;
    let run = claim(CASE, o, CHANNEL, 3).await;
    rule_eq!(
        CASE,
        events(&run),
        k[..3].to_vec(),
        "a claim takes the head run of a key, in enqueue order"
    );
    rule!(
        CASE,
        run.iter().all(|d| d.ordering_key.as_deref() == Some("a/k")),
        "a claimed delivery carries the ordering key it was enqueued with"
    );
    let next = claim_all(CASE, o, CHANNEL).await;
    rule!(
        CASE,
        next.iter().all(|d| d.ordering_key.as_deref() == Some("b/j")),
        "a claimed delivery carries the ordering key it was enqueued with"
    );
    rule_eq!(
        CASE,
        events(&next),
        j,
        "only the other key is claimable while a batch of the first is in flight"
    );
}

/// **One batch of a key in flight.** While any delivery of a key is in flight nothing else of that
/// key is claimable, deliveries enqueued meanwhile included, even after part of the batch is
/// settled; once all of it is settled, the next run goes out.
pub async fn ordered_key_one_batch_in_flight<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "ordered_key_one_batch_in_flight";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let mut k = keyed(CASE, o, CHANNEL, "a", "a/k", 3).await;
    let batch = claim(CASE, o, CHANNEL, 2).await;
    rule_eq!(CASE, events(&batch), k[..2].to_vec(), "the head run, in order");
    k.extend(keyed(CASE, o, CHANNEL, "a", "a/k", 1).await);
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a delivery of a key with a batch in flight was claimed"
    );
    settle(CASE, o, vec![settlement(batch[0].id, Outcome::Delivered)]).await;
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a delivery of a key was claimed while the rest of its batch was still in flight"
    );
    settle(CASE, o, vec![settlement(batch[1].id, Outcome::Delivered)]).await;
    rule_eq!(
        CASE,
        events(&claim_all(CASE, o, CHANNEL).await),
        k[2..].to_vec(),
        "once the batch is settled the next run goes out, in order"
    );
}

/// **Later deliveries wait for the head.** Behind a head waiting for its retry nothing of its key is
/// claimable (requeued deliveries included) and `next_due` tells the head's due time; when it is
/// due the head goes out again first, then the rest in order, a requeue not counted as an attempt;
/// a dead head no longer blocks its key.
pub async fn ordered_key_waits_for_its_head<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "ordered_key_waits_for_its_head";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let k = keyed(CASE, o, CHANNEL, "a", "a/k", 5).await;
    let first = claim(CASE, o, CHANNEL, 3).await;
    rule_eq!(CASE, events(&first), k[..3].to_vec(), "the head run, in order");
    settle(
        CASE,
        o,
        vec![
            settlement(first[0].id, Outcome::Delivered),
            settlement(first[1].id, retry(RETRY)),
            settlement(first[2].id, Outcome::Requeue),
        ],
    )
    .await;
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a delivery behind a head waiting for its retry was claimed"
    );
    let wait = next_due(CASE, o, CHANNEL).await;
    rule!(
        CASE,
        wait.is_some_and(|w| w > Duration::ZERO && w <= RETRY),
        "next_due must tell the retrying head's due time (within {RETRY:?}), got {wait:?}"
    );
    tokio::time::sleep(RETRY + MARGIN).await;
    let next = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(
        CASE,
        next.iter()
            .map(|d| (d.envelope.id(), d.attempt))
            .collect::<Vec<_>>(),
        vec![(k[1], 2), (k[2], 1), (k[3], 1), (k[4], 1)],
        "the retried head first, then the rest in order; a requeue is not an attempt"
    );
    let mut settlements = vec![settlement(next[0].id, dead("rejected"))];
    settlements.extend(next[1..].iter().map(|d| settlement(d.id, Outcome::Requeue)));
    settle(CASE, o, settlements).await;
    rule_eq!(
        CASE,
        events(&claim(CASE, o, CHANNEL, 2).await),
        k[2..4].to_vec(),
        "a dead head no longer blocks its key"
    );
}

/// **Unordered deliveries go out concurrently.** Deliveries without a key, and the heads of other
/// keys, are claimable while others are in flight; keys are per channel.
pub async fn unordered_and_other_keys_go_out_concurrently<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "unordered_and_other_keys_go_out_concurrently";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let mut want: Vec<Uuid> = Vec::new();
    for _ in 0..3 {
        want.push(enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await[0].id());
    }
    let k = keyed(CASE, o, CHANNEL, "a", "k", 2).await;
    let j = keyed(CASE, o, CHANNEL, "b", "j", 1).await;
    let x = keyed(CASE, o, OTHER, "a", "k", 1).await;
    want.extend([k[0], j[0]]);
    let mut got = Vec::new();
    for _ in 0..10 {
        let one = claim(CASE, o, CHANNEL, 1).await;
        if one.is_empty() {
            break;
        }
        got.extend(events(&one));
    }
    rule_eq!(
        CASE,
        got,
        want,
        "one claim after another, nothing settled: every unordered delivery and every key's head goes out"
    );
    rule_eq!(
        CASE,
        events(&claim_all(CASE, o, OTHER).await),
        x,
        "the same key on another channel is another key"
    );
}

/// **Retries wait until due.** A delivery settled `Retry { delay }` is not claimable before the
/// delay; `next_due` tells when; then it is claimed again as the next attempt.
pub async fn retry_waits_until_due<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "retry_waits_until_due";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    let d = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, d.len(), 1, "one due delivery");
    settle(CASE, o, vec![settlement(d[0].id, retry(RETRY))]).await;
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a delivery was claimable before its retry delay"
    );
    let wait = next_due(CASE, o, CHANNEL).await;
    let Some(wait) = wait.filter(|w| *w > Duration::ZERO && *w <= RETRY) else {
        panic!(
            "outbox contract case `{CASE}`: next_due must tell the retry's due time (within {RETRY:?}), got {wait:?}"
        );
    };
    tokio::time::sleep(wait + MARGIN).await;
    rule_eq!(
        CASE,
        next_due(CASE, o, CHANNEL).await,
        Some(Duration::ZERO),
        "once its delay passed the retry is due now"
    );
    let again = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(
        CASE,
        again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        vec![(d[0].id, 2)],
        "the retry is claimed again, as attempt 2"
    );
}

/// **Postpone.** A delivery settled `Postpone { delay }` (its destination takes no more now) is not
/// claimable before the delay, is due once it passed, and no attempt was counted.
pub async fn postpone_waits_without_an_attempt<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "postpone_waits_without_an_attempt";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    let d = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, d.len(), 1, "one due delivery");
    settle(
        CASE,
        o,
        vec![Settlement {
            id: d[0].id,
            outcome: Outcome::Postpone { delay: RETRY },
            attempt: None,
        }],
    )
    .await;
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a delivery was claimable before the end of its postponement"
    );
    let wait = next_due(CASE, o, CHANNEL).await;
    let Some(wait) = wait.filter(|w| *w > Duration::ZERO && *w <= RETRY) else {
        panic!(
            "outbox contract case `{CASE}`: next_due must tell when the postponed delivery is due (within {RETRY:?}), got {wait:?}"
        );
    };
    tokio::time::sleep(wait + MARGIN).await;
    claim_one(
        CASE,
        o,
        d[0].id,
        1,
        "a postponed delivery is due after its delay, still at attempt 1",
    )
    .await;
}

/// Claims the one due delivery of the case, which must be `id` at `attempt`.
async fn claim_one(case: &str, o: &dyn Outbox, id: DeliveryId, attempt: u32, rule: &str) {
    let claimed = claim_all(case, o, CHANNEL).await;
    rule_eq!(
        case,
        claimed.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        vec![(id, attempt)],
        "{rule}"
    );
}

/// **Attempt numbers.** `Delivery::attempt` as seen by claim counts failed tries: each retry adds
/// one; a requeue or a release does not; a dead letter keeps the number of its last attempt; a
/// redriven one starts again from 1.
pub async fn attempts_count_failed_tries_only<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "attempts_count_failed_tries_only";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    let id = claim_all(CASE, o, CHANNEL).await[0].id;
    settle(CASE, o, vec![settlement(id, retry(Duration::ZERO))]).await;
    claim_one(CASE, o, id, 2, "a retry counts as an attempt").await;
    settle(CASE, o, vec![settlement(id, Outcome::Requeue)]).await;
    claim_one(CASE, o, id, 2, "a requeue is not an attempt").await;
    ok(CASE, "release", o.release(CHANNEL).await);
    claim_one(CASE, o, id, 2, "a release is not an attempt").await;
    settle(CASE, o, vec![settlement(id, retry(Duration::ZERO))]).await;
    claim_one(CASE, o, id, 3, "each retry counts").await;
    settle(CASE, o, vec![settlement(id, dead("no"))]).await;
    let letters = ok(CASE, "dead_letters", o.dead_letters(Some(CHANNEL), 10).await);
    rule_eq!(
        CASE,
        letters
            .iter()
            .map(|l| (l.delivery.id, l.delivery.attempt))
            .collect::<Vec<_>>(),
        vec![(id, 3)],
        "a dead letter keeps the number of its last attempt"
    );
    let filter = RedriveFilter {
        ids: vec![id],
        ..RedriveFilter::default()
    };
    rule_eq!(
        CASE,
        ok(CASE, "redrive", o.redrive(&filter).await),
        1,
        "redrive of one dead letter"
    );
    claim_one(CASE, o, id, 1, "a redriven delivery starts again from attempt 1").await;
}

/// **Release.** `release(channel)` puts every in-flight delivery of that channel (ordered ones
/// included) back to pending, due now, attempts unchanged; other channels keep theirs.
pub async fn release_returns_in_flight_work<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "release_returns_in_flight_work";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    ok(CASE, "release", o.release(CHANNEL).await);
    enqueue(
        CASE,
        o,
        vec![
            new_event(CHANNEL, "a", 2, None),
            new_event(CHANNEL, "a", 2, Some("k")),
            new_event(OTHER, "a", 1, None),
        ],
    )
    .await;
    let before = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, before.len(), 4, "four due deliveries");
    rule_eq!(
        CASE,
        claim_all(CASE, o, OTHER).await.len(),
        1,
        "one due delivery on the other channel"
    );
    ok(CASE, "release", o.release(CHANNEL).await);
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (4, 0, 0),
        "release puts every in-flight delivery back to pending"
    );
    rule_eq!(
        CASE,
        stats(CASE, o, OTHER).await,
        (0, 1, 0),
        "release of one channel leaves another's in-flight deliveries alone"
    );
    let again = claim_all(CASE, o, CHANNEL).await;
    let mut want = ids(&before);
    want.sort_unstable();
    let mut got = ids(&again);
    got.sort_unstable();
    rule_eq!(CASE, got, want, "released deliveries are due now, each once");
    rule!(
        CASE,
        again.iter().all(|d| d.attempt == 1),
        "a release is not an attempt"
    );
    let ordered: Vec<DeliveryId> = again
        .iter()
        .filter(|d| d.envelope.sequence() == 2)
        .map(|d| d.id)
        .collect();
    rule!(
        CASE,
        ordered.len() == 2 && ordered[0] < ordered[1],
        "a released key goes out again from its head, in order"
    );
}

/// **`next_due`.** `None` with nothing pending; zero while something is due; in-flight deliveries
/// and deliveries waiting behind their key's batch are not due; a retry is due after its delay.
pub async fn next_due_tells_when_to_claim<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "next_due_tells_when_to_claim";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    rule_eq!(
        CASE,
        next_due(CASE, o, CHANNEL).await,
        None,
        "nothing pending: None"
    );
    enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    rule_eq!(
        CASE,
        next_due(CASE, o, CHANNEL).await,
        Some(Duration::ZERO),
        "a new delivery is due now"
    );
    rule_eq!(
        CASE,
        next_due(CASE, o, OTHER).await,
        None,
        "another channel has nothing due"
    );
    let d = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(
        CASE,
        next_due(CASE, o, CHANNEL).await,
        None,
        "an in-flight delivery is not due"
    );
    settle(CASE, o, vec![settlement(d[0].id, retry(RETRY))]).await;
    keyed(CASE, o, CHANNEL, "a", "k", 2).await;
    rule_eq!(CASE, claim(CASE, o, CHANNEL, 1).await.len(), 1, "the key's head");
    let wait = next_due(CASE, o, CHANNEL).await;
    rule!(
        CASE,
        wait.is_some_and(|w| w > Duration::ZERO && w <= RETRY),
        "with a retry pending and a delivery waiting behind its key's batch, next_due must tell the \
         retry's due time (within {RETRY:?}), got {wait:?}"
    );
}

/// **The notifier.** `notifier(channel)` wakes a waiting worker on enqueue, and when work becomes
/// claimable: a requeue, the head of a key settled with more waiting behind it, a release, a
/// redrive.
pub async fn notifier_wakes_workers<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "notifier_wakes_workers";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let notify = o.notifier(CHANNEL);
    wakes(CASE, "an enqueue", Arc::clone(&notify), async {
        enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await;
    })
    .await;
    let d = claim_all(CASE, o, CHANNEL).await[0].id;
    wakes(CASE, "a requeue", Arc::clone(&notify), async {
        settle(CASE, o, vec![settlement(d, Outcome::Requeue)]).await;
    })
    .await;
    claim_one(CASE, o, d, 1, "the requeued delivery").await;
    keyed(CASE, o, CHANNEL, "a", "k", 2).await;
    let head = claim(CASE, o, CHANNEL, 1).await;
    rule_eq!(CASE, head.len(), 1, "the key's head");
    wakes(
        CASE,
        "settling a key's head with more waiting",
        Arc::clone(&notify),
        async {
            settle(CASE, o, vec![settlement(head[0].id, Outcome::Delivered)]).await;
        },
    )
    .await;
    wakes(CASE, "a release", Arc::clone(&notify), async {
        ok(CASE, "release", o.release(CHANNEL).await);
    })
    .await;
    let all = claim_all(CASE, o, CHANNEL).await;
    settle_all(CASE, o, &all, &dead("no")).await;
    wakes(CASE, "a redrive", Arc::clone(&notify), async {
        ok(CASE, "redrive", o.redrive(&RedriveFilter::default()).await);
    })
    .await;
}

/// **Stats.** Per channel: pending (due or waiting for a retry or behind a key), in flight, and
/// dead letters.
pub async fn stats_count_each_channel<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "stats_count_each_channel";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (0, 0, 0),
        "an empty outbox counts nothing"
    );
    enqueue(
        CASE,
        o,
        vec![
            new_event(CHANNEL, "a", 3, None),
            new_event(CHANNEL, "a", 2, Some("k")),
            new_event(OTHER, "a", 1, None),
        ],
    )
    .await;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (5, 0, 0),
        "(pending, in flight, dead): every new delivery is pending, ordered ones waiting too"
    );
    let two = claim(CASE, o, CHANNEL, 2).await;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (3, 2, 0),
        "(pending, in flight, dead) after a claim"
    );
    settle(
        CASE,
        o,
        vec![
            settlement(two[0].id, dead("no")),
            settlement(two[1].id, retry(RETRY * 20)),
        ],
    )
    .await;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (4, 0, 1),
        "(pending, in flight, dead): a retry is pending, a dead letter dead"
    );
    let rest = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, rest.len(), 3, "everything due except the retry");
    settle_all(CASE, o, &rest, &Outcome::Delivered).await;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (1, 0, 1),
        "(pending, in flight, dead): delivered deliveries are not counted"
    );
    rule_eq!(
        CASE,
        stats(CASE, o, OTHER).await,
        (1, 0, 0),
        "each channel counts its own"
    );
}

/// **Dead letters.** A delivery settled `Dead` is not claimed again and is listed by
/// `dead_letters`, oldest first, with its error and its last attempt, filtered by channel, at most
/// `limit`.
pub async fn dead_letters_keep_delivery_and_error<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "dead_letters_keep_delivery_and_error";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    enqueue(
        CASE,
        o,
        vec![
            new_event(CHANNEL, "a", 1, None),
            new_event(CHANNEL, "b", 1, None),
            new_event(OTHER, "a", 1, None),
        ],
    )
    .await;
    let batch = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(CASE, batch.len(), 2, "two due deliveries");
    let (d1, d2) = (&batch[0], &batch[1]);
    settle(CASE, o, vec![settlement(d1.id, retry(Duration::ZERO))]).await;
    claim_one(CASE, o, d1.id, 2, "the retry").await;
    settle(CASE, o, vec![settlement(d2.id, dead("first"))]).await;
    tokio::time::sleep(MARGIN).await;
    settle(CASE, o, vec![settlement(d1.id, dead("second"))]).await;
    let d3 = claim_all(CASE, o, OTHER).await;
    settle_all(CASE, o, &d3, &dead("third")).await;
    let letters = ok(CASE, "dead_letters", o.dead_letters(Some(CHANNEL), 10).await);
    rule_eq!(
        CASE,
        letters
            .iter()
            .map(|l| (l.delivery.id, l.error.as_str(), l.delivery.attempt))
            .collect::<Vec<_>>(),
        vec![(d2.id, "first", 1), (d1.id, "second", 2)],
        "dead letters of a channel, oldest first, with their error and last attempt"
    );
    for (letter, d) in letters.iter().zip([d2, d1]) {
        rule_eq!(
            CASE,
            (
                letter.delivery.envelope.id(),
                label(&letter.delivery),
                letter.delivery.channel
            ),
            (d.envelope.id(), label(d), d.channel),
            "a dead letter is the delivery as claimed"
        );
    }
    rule_eq!(
        CASE,
        dead_ids(CASE, o, None).await.len(),
        3,
        "dead_letters(None) lists every channel's"
    );
    rule_eq!(
        CASE,
        ok(CASE, "dead_letters", o.dead_letters(None, 2).await).len(),
        2,
        "dead_letters returns at most `limit`"
    );
    rule_eq!(
        CASE,
        dead_ids(CASE, o, Some(OTHER)).await,
        ids(&d3),
        "dead_letters(Some(channel)) lists only that channel's"
    );
    rule!(
        CASE,
        claim_all(CASE, o, CHANNEL).await.is_empty(),
        "a dead letter was claimed"
    );
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (0, 0, 2),
        "stats count dead letters"
    );
}

/// Which operation [`filter_rounds`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterOp {
    Redrive,
    Purge,
}

/// The event times of the dead letters of [`filter_rounds`]: 2025-01-01, then an hour apart.
fn hour(n: i64) -> DateTime<Utc> {
    match DateTime::from_timestamp_millis(1_735_689_600_000 + n * 3_600_000) {
        Some(t) => t,
        None => panic!("testing: an impossible time"),
    }
}

/// Makes four dead letters: (instance a, CHANNEL, hour 1), (b, CHANNEL, 2), (a, OTHER, 3),
/// (b, OTHER, 4). Returns their ids in that order.
async fn four_dead(case: &str, o: &dyn Outbox) -> [DeliveryId; 4] {
    let shape = [
        ("a", CHANNEL, 1),
        ("b", CHANNEL, 2),
        ("a", OTHER, 3),
        ("b", OTHER, 4),
    ];
    let events: Vec<NewEvent> = shape
        .iter()
        .map(|(name, channel, at)| {
            let mut e = new_event(*channel, name, 1, None);
            e.envelope = e.envelope.with_date_time(hour(*at));
            e
        })
        .collect();
    let sent: Vec<Uuid> = events.iter().map(|e| e.envelope.id()).collect();
    enqueue(case, o, events).await;
    let mut claimed = claim_all(case, o, CHANNEL).await;
    claimed.extend(claim_all(case, o, OTHER).await);
    rule_eq!(case, claimed.len(), 4, "four due deliveries");
    settle_all(case, o, &claimed, &dead("filter round")).await;
    let mut out = [0; 4];
    for (slot, id) in out.iter_mut().zip(&sent) {
        match claimed.iter().find(|d| d.envelope.id() == *id) {
            Some(d) => *slot = d.id,
            None => panic!("outbox contract case `{case}`: the delivery of event {id} was not claimed"),
        }
    }
    out
}

/// Each field of [`RedriveFilter`] alone (and together, and none) selects exactly the dead letters
/// it should for `op`, and leaves pending and in-flight deliveries alone.
async fn filter_rounds(case: &str, o: &dyn Outbox, op: FilterOp) {
    type Make = fn(&[DeliveryId; 4]) -> RedriveFilter;
    let rounds: [(&str, Make, &[usize]); 7] = [
        (
            "ids",
            |s| RedriveFilter {
                ids: vec![s[0], s[3]],
                ..RedriveFilter::default()
            },
            &[0, 3],
        ),
        (
            "channel",
            |_| RedriveFilter {
                channel: Some(OTHER),
                ..RedriveFilter::default()
            },
            &[2, 3],
        ),
        (
            "instance",
            |_| RedriveFilter {
                instance: Some(instance("b")),
                ..RedriveFilter::default()
            },
            &[1, 3],
        ),
        (
            "since (inclusive)",
            |_| RedriveFilter {
                since: Some(hour(2)),
                ..RedriveFilter::default()
            },
            &[1, 2, 3],
        ),
        (
            "until (exclusive)",
            |_| RedriveFilter {
                until: Some(hour(2)),
                ..RedriveFilter::default()
            },
            &[0],
        ),
        (
            "every field",
            |s| RedriveFilter {
                ids: vec![s[0], s[1], s[2]],
                channel: Some(CHANNEL),
                instance: Some(instance("a")),
                since: Some(hour(1)),
                until: Some(hour(3)),
            },
            &[0],
        ),
        ("no field", |_| RedriveFilter::default(), &[0, 1, 2, 3]),
    ];
    let run = |filter: RedriveFilter| async move {
        match op {
            FilterOp::Redrive => ok(case, "redrive", o.redrive(&filter).await),
            FilterOp::Purge => ok(case, "purge", o.purge(&filter).await),
        }
    };
    let mut left: usize = 0;
    for (field, make, chosen) in rounds {
        // What the previous round left dead, through the operation itself with an empty filter.
        rule_eq!(
            case,
            run(RedriveFilter::default()).await,
            left,
            "{op:?} with an empty filter takes every dead letter"
        );
        if op == FilterOp::Redrive {
            let mut back = claim_all(case, o, CHANNEL).await;
            back.extend(claim_all(case, o, OTHER).await);
            settle_all(case, o, &back, &Outcome::Delivered).await;
        }
        let set = four_dead(case, o).await;
        // A pending and an in-flight delivery that match every filter but ids: not dead letters.
        let mut live = new_event(CHANNEL, "a", 2, None);
        live.envelope = live.envelope.with_date_time(hour(1));
        enqueue(case, o, vec![live]).await;
        let in_flight = claim(case, o, CHANNEL, 1).await;
        let n = run(make(&set)).await;
        rule_eq!(
            case,
            n,
            chosen.len(),
            "{op:?} with {field}: how many dead letters it took"
        );
        let mut want: Vec<DeliveryId> = set
            .iter()
            .enumerate()
            .filter(|(i, _)| !chosen.contains(i))
            .map(|(_, id)| *id)
            .collect();
        want.sort_unstable();
        let mut still_dead = dead_ids(case, o, None).await;
        still_dead.sort_unstable();
        rule_eq!(
            case,
            still_dead,
            want,
            "{op:?} with {field}: the dead letters left"
        );
        left = want.len();
        let mut claimed = claim_all(case, o, CHANNEL).await;
        claimed.extend(claim_all(case, o, OTHER).await);
        let mut got = ids(&claimed);
        got.sort_unstable();
        let mut expect: Vec<DeliveryId> = match op {
            FilterOp::Redrive => chosen.iter().map(|i| set[*i]).collect(),
            FilterOp::Purge => Vec::new(),
        };
        let pending: Vec<DeliveryId> = got.iter().copied().filter(|id| *id > set[3]).collect();
        rule_eq!(
            case,
            pending.len(),
            1,
            "{op:?} with {field}: the pending delivery is claimable, once"
        );
        expect.extend(pending);
        expect.sort_unstable();
        rule_eq!(
            case,
            got,
            expect,
            "{op:?} with {field}: what is claimable afterwards (redriven dead letters and the pending delivery)"
        );
        if op == FilterOp::Redrive {
            rule!(
                case,
                claimed.iter().all(|d| d.attempt == 1),
                "a redriven delivery starts again from attempt 1"
            );
        }
        rule_eq!(
            case,
            stats(case, o, CHANNEL).await.2 + stats(case, o, OTHER).await.2,
            left,
            "{op:?} with {field}: stats count the dead letters left"
        );
        let logged = log(case, o, query(Some(StatusFilter::Dead))).await;
        rule_eq!(
            case,
            logged.len(),
            left,
            "{op:?} with {field}: the delivery log lists the dead letters left"
        );
        settle_all(case, o, &claimed, &Outcome::Delivered).await;
        settle_all(case, o, &in_flight, &Outcome::Delivered).await;
    }
}

/// **Redrive.** `redrive` moves exactly the dead letters matching its filter (each field:
/// `ids`, `channel`, `instance`, `since` inclusive, `until` exclusive; empty fields match
/// everything) back to pending, due now, from attempt 1; returns how many; pending and in-flight
/// deliveries are left alone.
pub async fn redrive_honours_every_filter_field<F: OutboxFixture>(fx: &F) {
    let outbox = fx.open(ROOMY).await;
    filter_rounds("redrive_honours_every_filter_field", &*outbox, FilterOp::Redrive).await;
}

/// **Purge.** `purge` deletes exactly the dead letters matching its filter (the fields as for
/// redrive) and returns how many: they are gone from `dead_letters`, `stats`, the delivery log and
/// redrive; pending and in-flight deliveries are left alone.
pub async fn purge_honours_every_filter_field<F: OutboxFixture>(fx: &F) {
    let outbox = fx.open(ROOMY).await;
    filter_rounds("purge_honours_every_filter_field", &*outbox, FilterOp::Purge).await;
}

/// **Reopen after a crash** (durable backends). Everything enqueued is still there: pending
/// deliveries, retries with their due time, dead letters with their error; in-flight work is
/// pending again with its attempts unchanged; an ordered key starts again from its head; sequences
/// go on without a gap and delivery ids are not reused.
pub async fn reopen_keeps_everything<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "reopen_keeps_everything";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let mut u = Vec::new();
    for _ in 0..6 {
        u.push(enqueue(CASE, o, vec![new_event(CHANNEL, "a", 1, None)]).await[0].id());
    }
    let k = keyed(CASE, o, OTHER, "b", "b/k", 3).await;
    let batch = claim(CASE, o, CHANNEL, 5).await;
    rule_eq!(
        CASE,
        events(&batch),
        u[..5].to_vec(),
        "five due deliveries, in enqueue order"
    );
    settle(
        CASE,
        o,
        vec![
            settlement(batch[0].id, Outcome::Delivered),
            settlement(batch[1].id, retry(Duration::from_secs(3600))),
            settlement(batch[2].id, dead("gone")),
        ],
    )
    .await;
    let keyed_batch = claim(CASE, o, OTHER, 2).await;
    rule_eq!(CASE, keyed_batch.len(), 2, "the key's head run");
    let mut seen = ids(&batch);
    seen.extend(ids(&keyed_batch));
    let Some(outbox) = fx.reopen(outbox).await else {
        report_skip(CASE, "the backend is not durable");
        return;
    };
    let o = &*outbox;
    rule_eq!(
        CASE,
        stats(CASE, o, CHANNEL).await,
        (4, 0, 1),
        "(pending, in flight, dead) after reopening: in-flight work is pending again, nothing lost"
    );
    let again = claim_all(CASE, o, CHANNEL).await;
    let mut got: Vec<(Uuid, u32)> = again.iter().map(|d| (d.envelope.id(), d.attempt)).collect();
    got.sort_unstable();
    let mut want = vec![(u[3], 1), (u[4], 1), (u[5], 1)];
    want.sort_unstable();
    rule_eq!(
        CASE,
        got,
        want,
        "the in-flight and the pending deliveries are due, each once, attempts unchanged"
    );
    seen.extend(ids(&again));
    let wait = next_due(CASE, o, CHANNEL).await;
    rule!(
        CASE,
        wait.is_some_and(|w| w > Duration::from_secs(3000)),
        "a retry's due time survived the reopen (got next_due {wait:?})"
    );
    let letters = ok(CASE, "dead_letters", o.dead_letters(Some(CHANNEL), 10).await);
    rule_eq!(
        CASE,
        letters
            .iter()
            .map(|l| (l.delivery.id, l.error.as_str()))
            .collect::<Vec<_>>(),
        vec![(batch[2].id, "gone")],
        "dead letters survive the reopen"
    );
    let keyed_again = claim_all(CASE, o, OTHER).await;
    rule_eq!(
        CASE,
        events(&keyed_again),
        k,
        "an ordered key starts again from its head, in order"
    );
    seen.extend(ids(&keyed_again));
    let newest = seen.iter().copied().max().unwrap_or(0);
    let next = enqueue(
        CASE,
        o,
        vec![new_event(CHANNEL, "a", 1, None), new_event(OTHER, "b", 1, None)],
    )
    .await;
    rule_eq!(
        CASE,
        next.iter().map(|e| e.sequence()).collect::<Vec<_>>(),
        vec![7, 4],
        "sequences go on after a reopen without a gap"
    );
    let fresh = claim_all(CASE, o, CHANNEL).await;
    rule!(
        CASE,
        fresh.len() == 1 && fresh[0].id > newest,
        "a delivery enqueued after the reopen takes a new id (got {:?}, earlier ids up to {newest})",
        ids(&fresh)
    );
    let found = ok(CASE, "event", o.event(&instance("a"), u[0]).await);
    rule!(
        CASE,
        found.is_some(),
        "a delivered event can still be looked up after the reopen"
    );
}

/// **Event lookup.** `event(instance, id)` finds an accepted event (with its sequence, profile
/// and payload) under its own instance only, also once delivered, and nothing for an id never
/// accepted; a backend that keeps history forgets it once pruned.
pub async fn event_lookup<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "event_lookup";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let mut first = new_event(CHANNEL, "a", 1, None);
    first.profile = NamingProfile::EvolutionV2;
    let stored = enqueue(CASE, o, vec![first, new_event(CHANNEL, "b", 1, None)]).await;
    let (a, b) = (instance("a"), instance("b"));
    let Some(found) = ok(CASE, "event", o.event(&a, stored[0].id()).await) else {
        panic!("outbox contract case `{CASE}`: an accepted event was not found");
    };
    rule_eq!(
        CASE,
        (found.envelope.id(), found.envelope.sequence(), found.profile),
        (stored[0].id(), 1, NamingProfile::EvolutionV2),
        "the event found is the one accepted, with its sequence and profile"
    );
    rule!(
        CASE,
        found.payload() == stored[0].payload(NamingProfile::EvolutionV2),
        "the event found has the accepted event's payload"
    );
    rule!(
        CASE,
        ok(CASE, "event", o.event(&b, stored[0].id()).await).is_none(),
        "an event was found under another instance"
    );
    rule!(
        CASE,
        ok(CASE, "event", o.event(&a, Uuid::now_v7()).await).is_none(),
        "an event never accepted was found"
    );
    let claimed = claim_all(CASE, o, CHANNEL).await;
    settle_all(CASE, o, &claimed, &Outcome::Delivered).await;
    rule!(
        CASE,
        ok(CASE, "event", o.event(&a, stored[0].id()).await).is_some(),
        "a delivered event can no longer be looked up"
    );
    if fx.keeps_history() {
        let pruned = ok(CASE, "prune", fx.prune(&outbox).await);
        rule_eq!(CASE, pruned, 2, "prune deletes the delivered deliveries");
        rule!(
            CASE,
            ok(CASE, "event", o.event(&a, stored[0].id()).await).is_none(),
            "an event was found after its deliveries were pruned"
        );
    }
}

/// **Catch-up** (`events_after`): the kept events of one instance whose sequence is greater than a
/// given one, in sequence order, at most `limit`, delivered ones included, with their payloads;
/// never another instance's; none once pruned.
pub async fn events_after_fill_a_gap_in_sequence<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "events_after_fill_a_gap_in_sequence";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let mut second = new_event(OTHER, "a", 1, None);
    second.profile = NamingProfile::EvolutionV2;
    let stored = enqueue(
        CASE,
        o,
        vec![
            new_event(CHANNEL, "a", 1, None),
            new_event(CHANNEL, "b", 1, None),
            second,
            new_event(CHANNEL, "a", 2, None),
        ],
    )
    .await;
    let claimed = claim_all(CASE, o, CHANNEL).await;
    settle_all(CASE, o, &claimed, &Outcome::Delivered).await;
    let (a, b) = (instance("a"), instance("b"));
    let after = |who: &InstanceName, after: u64, limit: usize| {
        let who = who.clone();
        async move {
            let found = ok(CASE, "events_after", o.events_after(&who, after, limit).await);
            found
                .iter()
                .map(|e| (e.envelope.id(), e.envelope.sequence()))
                .collect::<Vec<_>>()
        }
    };
    rule_eq!(
        CASE,
        after(&a, 0, 10).await,
        vec![(stored[0].id(), 1), (stored[2].id(), 2), (stored[3].id(), 3)],
        "every kept event of the instance, delivered ones included, in sequence order"
    );
    rule_eq!(
        CASE,
        after(&a, 1, 1).await,
        vec![(stored[2].id(), 2)],
        "only after the sequence, at most `limit`"
    );
    rule_eq!(CASE, after(&a, 3, 10).await, vec![], "nothing after the last");
    rule_eq!(
        CASE,
        after(&b, 0, 10).await,
        vec![(stored[1].id(), 1)],
        "only the instance's own"
    );
    let found = ok(CASE, "events_after", o.events_after(&a, 1, 1).await);
    rule!(
        CASE,
        found.first().map(StoredEvent::payload) == Some(stored[2].payload(NamingProfile::EvolutionV2)),
        "each event comes with the payload its deliveries carry (its naming profile)"
    );
    if fx.keeps_history() {
        let claimed = claim_all(CASE, o, OTHER).await;
        settle_all(CASE, o, &claimed, &Outcome::Delivered).await;
        ok(CASE, "prune", fx.prune(&outbox).await);
        rule_eq!(CASE, after(&a, 0, 10).await, vec![], "pruned events are gone");
    }
}

/// **Replay** (`deliveries_after`). With history: the deliveries of one channel made for the events
/// accepted after a given one, delivered ones included, oldest first, at most `limit`, only of an
/// instance when given; `None` for an event never accepted or another instance's. Without
/// history: `None`.
pub async fn deliveries_after_replays_what_a_client_missed<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "deliveries_after_replays_what_a_client_missed";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let stored = enqueue(
        CASE,
        o,
        vec![
            new_event(CHANNEL, "a", 1, None),
            new_event(CHANNEL, "b", 1, None),
            new_event(OTHER, "a", 1, None),
            new_event(CHANNEL, "a", 2, None),
        ],
    )
    .await;
    let claimed = claim_all(CASE, o, CHANNEL).await;
    settle_all(CASE, o, &claimed, &Outcome::Delivered).await;
    let a = instance("a");
    let after = |id: Uuid, only: Option<&InstanceName>, limit: usize| {
        let only = only.cloned();
        async move {
            let found = ok(
                CASE,
                "deliveries_after",
                o.deliveries_after(CHANNEL, id, only.as_ref(), limit).await,
            );
            found.map(|d| events(&d))
        }
    };
    if !fx.keeps_history() {
        rule_eq!(
            CASE,
            after(stored[0].id(), None, 10).await,
            None,
            "a backend that keeps no history has nothing to replay"
        );
        return;
    }
    rule_eq!(
        CASE,
        after(stored[0].id(), None, 10).await,
        Some(vec![stored[1].id(), stored[3].id(), stored[3].id()]),
        "the channel's deliveries of the later events, delivered ones included, oldest first"
    );
    rule_eq!(
        CASE,
        after(stored[0].id(), Some(&a), 10).await,
        Some(vec![stored[3].id(), stored[3].id()]),
        "only the instance's"
    );
    rule_eq!(
        CASE,
        after(stored[0].id(), None, 1).await,
        Some(vec![stored[1].id()]),
        "at most `limit`"
    );
    rule_eq!(
        CASE,
        after(stored[1].id(), Some(&a), 10).await,
        None,
        "another instance's event: nothing to resume after"
    );
    rule_eq!(
        CASE,
        after(Uuid::now_v7(), None, 10).await,
        None,
        "an event never accepted: nothing to resume after"
    );
}

/// **The delivery log** (`deliveries`): pending, in-flight and dead deliveries (and, with
/// history, delivered ones with every attempt), newest first, with their event, status, attempts,
/// error and next attempt, filtered by instance, channel and status, at most `limit`.
pub async fn delivery_log_reports_each_delivery<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "delivery_log_reports_each_delivery";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let stored = enqueue(
        CASE,
        o,
        vec![
            new_event(CHANNEL, "a", 1, None),
            new_event(CHANNEL, "b", 1, None),
            new_event(CHANNEL, "a", 1, None),
            new_event(OTHER, "a", 1, None),
        ],
    )
    .await;
    let batch = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(
        CASE,
        events(&batch),
        stored[..3].iter().map(|e| e.id()).collect::<Vec<_>>(),
        "three due"
    );
    let (d1, d2, d3) = (&batch[0], &batch[1], &batch[2]);
    let facts = |ms: u64, status: u16| {
        Some(Attempt {
            latency: Duration::from_millis(ms),
            status: Some(status),
        })
    };
    settle(
        CASE,
        o,
        vec![
            Settlement {
                id: d1.id,
                outcome: Outcome::Delivered,
                attempt: facts(12, 200),
            },
            Settlement {
                id: d2.id,
                outcome: Outcome::Retry {
                    delay: Duration::ZERO,
                    error: "HTTP 503".to_owned(),
                },
                attempt: facts(30, 503),
            },
            Settlement {
                id: d3.id,
                outcome: dead("HTTP 404"),
                attempt: facts(5, 404),
            },
        ],
    )
    .await;
    let d4 = claim_all(CASE, o, OTHER).await;
    rule_eq!(CASE, d4.len(), 1, "one due on the other channel");
    let d4 = &d4[0];
    let history = fx.keeps_history();
    let all = log(CASE, o, query(None)).await;
    let mut want = vec![d4.id, d3.id, d2.id];
    if history {
        want.push(d1.id);
    }
    rule_eq!(
        CASE,
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        want,
        "every delivery kept, newest first (delivered ones only with history)"
    );
    let find = |id: DeliveryId| all.iter().find(|r| r.id == id);
    if let Some(r) = find(d2.id) {
        rule_eq!(
            CASE,
            (
                r.event_id,
                r.event,
                r.instance.as_str(),
                r.sequence,
                r.channel,
                r.scope,
                r.destination.as_str()
            ),
            (
                d2.envelope.id(),
                EventKind::MessagesUpsert,
                "b",
                1,
                CHANNEL,
                Scope::Instance,
                "t0"
            ),
            "a record names its event, instance, sequence, channel, scope and destination"
        );
        rule_eq!(
            CASE,
            (
                r.status,
                r.attempts,
                r.next_attempt_at.is_some(),
                r.last_error.as_deref()
            ),
            (DeliveryStatus::Pending, 1, true, Some("HTTP 503")),
            "a delivery waiting for its retry: pending, one attempt, a next attempt time, its error"
        );
        rule_eq!(
            CASE,
            r.created_at.timestamp_millis(),
            d2.envelope.date_time().timestamp_millis(),
            "created_at is the event's time (to the millisecond)"
        );
    }
    if let Some(r) = find(d3.id) {
        rule_eq!(
            CASE,
            (r.status, r.attempts, r.last_error.as_deref(), r.next_attempt_at),
            (DeliveryStatus::Dead, 1, Some("HTTP 404"), None),
            "a dead letter: dead, its attempts, its error, no next attempt"
        );
    }
    if let Some(r) = find(d4.id) {
        rule_eq!(
            CASE,
            (r.status, r.attempts, r.instance.as_str(), r.channel),
            (DeliveryStatus::InFlight, 0, "a", OTHER),
            "an in-flight delivery: in flight, no attempt finished"
        );
    }
    let only = |status| log(CASE, o, query(Some(status)));
    rule_eq!(
        CASE,
        only(StatusFilter::Pending)
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![d4.id, d2.id],
        "status=pending: pending and in flight"
    );
    rule_eq!(
        CASE,
        only(StatusFilter::Failed)
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![d2.id],
        "status=failed: pending after a failed attempt"
    );
    rule_eq!(
        CASE,
        only(StatusFilter::Dead)
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![d3.id],
        "status=dead"
    );
    let by = |name: Option<&str>, channel: Option<Channel>, limit: usize| DeliveryQuery {
        instance: name.map(instance),
        channel,
        status: None,
        limit,
    };
    rule_eq!(
        CASE,
        log(CASE, o, by(None, Some(OTHER), 10))
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![d4.id],
        "filtered by channel"
    );
    rule_eq!(
        CASE,
        log(CASE, o, by(Some("b"), None, 10))
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![d2.id],
        "filtered by instance"
    );
    rule_eq!(
        CASE,
        log(CASE, o, by(Some("a"), Some(CHANNEL), 1))
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![d3.id],
        "at most `limit`, newest first"
    );
    let delivered = only(StatusFilter::Delivered).await;
    if !history {
        rule!(
            CASE,
            delivered.is_empty(),
            "a backend without history listed delivered deliveries"
        );
        return;
    }
    rule_eq!(
        CASE,
        delivered.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![d1.id],
        "status=delivered"
    );
    let r = &delivered[0];
    rule_eq!(
        CASE,
        (r.status, r.attempts, r.next_attempt_at, r.last_error.as_deref()),
        (DeliveryStatus::Delivered, 1, None, None),
        "a delivered delivery: delivered, one attempt, nothing next, no error"
    );
    let attempts: Vec<_> = r
        .attempt_log
        .iter()
        .map(|a| (a.attempt, a.outcome, a.status, a.latency_ms, a.error.clone()))
        .collect();
    rule_eq!(
        CASE,
        attempts,
        vec![(1, "delivered", Some(200), 12, None)],
        "the attempt log of a delivered delivery"
    );
    let dead_log = find(d3.id).map(|r| {
        r.attempt_log
            .iter()
            .map(|a| (a.outcome, a.error.clone()))
            .collect::<Vec<_>>()
    });
    rule_eq!(
        CASE,
        dead_log,
        Some(vec![("dead", Some("HTTP 404".to_owned()))]),
        "the attempt log of a dead letter"
    );
    // The retry goes out again and is delivered: two attempts.
    let again = claim_all(CASE, o, CHANNEL).await;
    rule_eq!(
        CASE,
        again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        vec![(d2.id, 2)],
        "the retry"
    );
    settle(
        CASE,
        o,
        vec![Settlement {
            id: d2.id,
            outcome: Outcome::Delivered,
            attempt: facts(7, 204),
        }],
    )
    .await;
    let log2 = log(CASE, o, by(Some("b"), None, 10)).await;
    let outcomes: Vec<_> = log2
        .iter()
        .flat_map(|r| r.attempt_log.iter().map(|a| (a.attempt, a.outcome, a.status)))
        .collect();
    rule_eq!(
        CASE,
        outcomes,
        vec![(1, "retry", Some(503)), (2, "delivered", Some(204))],
        "every attempt is logged, oldest first"
    );
    rule_eq!(
        CASE,
        log2.iter().map(|r| (r.status, r.attempts)).collect::<Vec<_>>(),
        vec![(DeliveryStatus::Delivered, 2)],
        "a delivery delivered at its second attempt"
    );
}

/// **Trace context and format.** An event's W3C trace context (`traceparent` and `tracestate`)
/// and its format come back with every claimed delivery of the event, from the event lookup and
/// the dead letters, and after reopening a durable outbox; an event without a trace context comes
/// back without one, an event of the default format in the default format.
pub async fn trace_context_and_format_travel_with_the_event<F: OutboxFixture>(fx: &F) {
    const CASE: &str = "trace_context_and_format_travel_with_the_event";
    let outbox = fx.open(ROOMY).await;
    let o = &*outbox;
    let trace = match TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ) {
        Ok(trace) => trace,
        Err(e) => panic!("outbox contract case `{CASE}`: {e}"),
    };
    let mut traced = new_event(CHANNEL, "a", 2, None);
    traced.envelope = traced
        .envelope
        .with_trace(Some(trace.clone()))
        .with_format(EventFormat::CloudEventsStructured);
    let stored = enqueue(CASE, o, vec![traced, new_event(CHANNEL, "a", 1, None)]).await;
    rule_eq!(
        CASE,
        stored[0].trace(),
        Some(&trace),
        "enqueue returns the event with its trace context"
    );
    let claimed = claim_all(CASE, o, CHANNEL).await;
    let mut got: Vec<(Uuid, Option<TraceContext>, EventFormat)> = claimed
        .iter()
        .map(|d| (d.envelope.id(), d.envelope.trace().cloned(), d.envelope.format()))
        .collect();
    got.sort_by_key(|(id, _, _)| *id);
    let structured = EventFormat::CloudEventsStructured;
    let mut want = vec![
        (stored[0].id(), Some(trace.clone()), structured),
        (stored[0].id(), Some(trace.clone()), structured),
        (stored[1].id(), None, EventFormat::Evolution),
    ];
    want.sort_by_key(|(id, _, _)| *id);
    rule_eq!(
        CASE,
        got,
        want,
        "each claimed delivery carries its event's trace context (none for an event without one) and format"
    );
    let found = ok(CASE, "event", o.event(&instance("a"), stored[0].id()).await);
    rule_eq!(
        CASE,
        found
            .as_ref()
            .map(|f| (f.envelope.trace().cloned(), f.envelope.format())),
        Some((Some(trace.clone()), structured)),
        "the event lookup returns the trace context and the format"
    );
    let first = claimed.iter().find(|d| d.envelope.id() == stored[0].id());
    if let Some(first) = first {
        settle(CASE, o, vec![settlement(first.id, dead("gone"))]).await;
    }
    let letters = ok(CASE, "dead_letters", o.dead_letters(Some(CHANNEL), 10).await);
    rule_eq!(
        CASE,
        letters
            .iter()
            .map(|d| d.delivery.envelope.trace().cloned())
            .collect::<Vec<_>>(),
        vec![Some(trace.clone())],
        "a dead letter keeps its event's trace context"
    );
    let Some(outbox) = fx.reopen(outbox).await else {
        report_skip(CASE, "the backend is not durable");
        return;
    };
    let again = claim_all(CASE, &*outbox, CHANNEL).await;
    rule!(
        CASE,
        again.iter().all(|d| {
            let traced = d.envelope.id() == stored[0].id();
            d.envelope.trace().cloned() == traced.then(|| trace.clone())
                && (d.envelope.format() == structured) == traced
        }),
        "after reopening, claimed deliveries still carry their trace contexts and formats"
    );
    rule_eq!(
        CASE,
        again.len(),
        2,
        "the in-flight deliveries are due again after reopening"
    );
}
