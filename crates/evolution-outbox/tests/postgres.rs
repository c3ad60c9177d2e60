//! The PostgreSQL outbox against the real server (`EVOLUTION_TEST_POSTGRES`, default
//! `postgresql://postgres@127.0.0.1:5432/postgres`; `scripts/services` starts or verifies it): the
//! contract suite, each case in a schema of its own, plus what only it does — several replicas on
//! one schema (exclusive claims, one batch of a key in flight in the cluster, gap-free sequences,
//! leases of a replica that is gone, notifications), migrations racing, and start-up errors.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test helpers

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use evolution_events::{InstanceName, InstanceSettings, Sensitive, Uuid};
use evolution_outbox::testing::{CHANNEL as CH, OutboxFixture, PostgresSchema, new_event, settlement};
use evolution_outbox::{
    InstanceRecord, Outbox, OutboxError, Outcome, PostgresOptions, PostgresOutbox, Store,
    outbox_contract_suite,
};

/// The database the tests use.
fn url() -> String {
    std::env::var("EVOLUTION_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema name no other test (of this or another run) uses.
fn fresh_schema(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "test_{name}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh schema, dropped (with everything in it) when the value is dropped.
struct Schema(PostgresSchema);

impl Schema {
    fn new(name: &str) -> Self {
        Self(PostgresSchema::new(&url(), &fresh_schema(name)))
    }

    fn options(&self, replica: &str) -> PostgresOptions {
        PostgresOptions {
            schema: self.0.name.clone(),
            replica: Some(replica.to_owned()),
            delivered_retention: Duration::ZERO,
            lease: Duration::from_millis(800),
            max_connections: 4,
            ..PostgresOptions::default()
        }
    }

    async fn open(&self, replica: &str) -> PostgresOutbox {
        PostgresOutbox::open(&url(), self.options(replica)).await.unwrap()
    }
}

/// A fresh schema per case; one replica name, so that `reopen` recovers its in-flight work at once
/// (as a restarted process of a stable replica would).
struct PostgresFixture {
    schema: Schema,
    capacity: AtomicUsize,
}

impl PostgresFixture {
    async fn open_schema(&self) -> Arc<PostgresOutbox> {
        let options = PostgresOptions {
            capacity: self.capacity.load(Ordering::Relaxed),
            ..self.schema.options("fixture")
        };
        Arc::new(PostgresOutbox::open(&url(), options).await.unwrap())
    }
}

impl OutboxFixture for PostgresFixture {
    type Outbox = PostgresOutbox;

    async fn setup() -> Self {
        Self {
            schema: Schema::new("contract"),
            capacity: AtomicUsize::new(0),
        }
    }

    async fn open(&self, capacity: usize) -> Arc<PostgresOutbox> {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.open_schema().await
    }

    /// Drops the outbox without closing it, as a process that ends, and opens the schema again
    /// under the same replica name.
    async fn reopen(&self, outbox: Arc<PostgresOutbox>) -> Option<Arc<PostgresOutbox>> {
        let outbox = Arc::try_unwrap(outbox).expect("the case holds no other handle to the outbox");
        drop(outbox);
        Some(self.open_schema().await)
    }

    fn keeps_history(&self) -> bool {
        true
    }

    async fn prune(&self, outbox: &PostgresOutbox) -> Result<usize, OutboxError> {
        // Settled in an earlier millisecond than the prune's cutoff.
        tokio::time::sleep(Duration::from_millis(2)).await;
        outbox.prune(Duration::ZERO).await
    }
}

outbox_contract_suite!(contract, PostgresFixture);

/// Claims and settles (delivered) on `outbox` until `total` deliveries were claimed by all
/// replicas together (`claimed`), checking with `busy` that no ordering key is in flight on two
/// replicas at once. Returns what this replica claimed: (key, instance sequence, delivery id).
async fn work(
    outbox: Arc<PostgresOutbox>,
    busy: Arc<std::sync::Mutex<HashSet<String>>>,
    claimed: Arc<AtomicUsize>,
    total: usize,
) -> Vec<(Option<String>, u64, u64)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while claimed.load(Ordering::SeqCst) < total {
        assert!(tokio::time::Instant::now() < deadline, "the replicas stalled");
        let batch = outbox.claim(CH, 7).await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        claimed.fetch_add(batch.len(), Ordering::SeqCst);
        let keys: HashSet<String> = batch.iter().map(|d| d.envelope.instance().to_string()).collect();
        {
            let mut busy = busy.lock().unwrap();
            for key in &keys {
                assert!(
                    busy.insert(key.clone()),
                    "the key {key} was in flight on two replicas at once"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        {
            let mut busy = busy.lock().unwrap();
            for key in &keys {
                busy.remove(key);
            }
        }
        for d in &batch {
            got.push((
                Some(d.envelope.instance().to_string()),
                d.envelope.sequence(),
                d.id,
            ));
        }
        let settlements = batch
            .iter()
            .map(|d| settlement(d.id, Outcome::Delivered))
            .collect();
        outbox.settle(settlements).await.unwrap();
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_claiming_each_delivery_once_and_keys_in_order() {
    let schema = Schema::new("share");
    let replicas: Vec<Arc<PostgresOutbox>> = vec![
        Arc::new(schema.open("a").await),
        Arc::new(schema.open("b").await),
        Arc::new(schema.open("c").await),
    ];
    // Five instances, each its own ordering key, 40 events each, enqueued through all replicas.
    let mut enqueued = 0;
    for round in 0..40 {
        for i in 0..5 {
            let name = format!("k{i}");
            let outbox = &replicas[(round + i) % 3];
            outbox
                .enqueue(vec![new_event(CH, &name, 1, Some(&name))])
                .await
                .unwrap();
            enqueued += 1;
        }
    }
    let busy = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let claimed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = replicas
        .iter()
        .map(|o| {
            tokio::spawn(work(
                Arc::clone(o),
                Arc::clone(&busy),
                Arc::clone(&claimed),
                enqueued,
            ))
        })
        .collect();
    let mut all = Vec::new();
    let mut per_replica = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        per_replica.push(got.len());
        all.extend(got);
    }
    let ids: HashSet<u64> = all.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(
        all.len(),
        enqueued,
        "each delivery claimed exactly once ({per_replica:?})"
    );
    assert_eq!(ids.len(), enqueued, "no delivery claimed twice");
    // Per key, deliveries were claimed in sequence order (ids grow with the sequence).
    let mut by_key: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (key, sequence, id) in &all {
        by_key
            .entry(key.clone().unwrap())
            .or_default()
            .push((*id, *sequence));
    }
    for (key, mut list) in by_key {
        list.sort_unstable();
        let sequences: Vec<u64> = list.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            sequences,
            (1..=40).collect::<Vec<u64>>(),
            "key {key}: every sequence once, in id order"
        );
    }
    for o in &replicas {
        assert_eq!(o.stats(CH).await.unwrap().pending, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_have_no_gap_when_replicas_ingest_one_instance_at_once() {
    let schema = Schema::new("sequences");
    let a = Arc::new(schema.open("a").await);
    let b = Arc::new(schema.open("b").await);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let outbox = Arc::clone(if t % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for _ in 0..25 {
                let stored = outbox
                    .enqueue(vec![
                        new_event(CH, "one", 1, Some("one")),
                        new_event(CH, "one", 0, None),
                    ])
                    .await
                    .unwrap();
                sequences.extend(stored.iter().map(|e| e.sequence()));
            }
            sequences
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=800).collect::<Vec<u64>>(),
        "every sequence once, none skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_gone_loses_its_leases() {
    let schema = Schema::new("lease");
    let a = schema.open("a").await;
    let b = schema.open("b").await;
    a.enqueue(vec![
        new_event(CH, "x", 3, None),
        new_event(CH, "y", 2, Some("y")),
    ])
    .await
    .unwrap();
    let taken = a.claim(CH, 10).await.unwrap();
    assert_eq!(taken.len(), 5, "three unordered and the run of key y");
    assert!(b.claim(CH, 10).await.unwrap().is_empty(), "leased to a");
    // a dies: no close, its heartbeat stops.
    drop(a);
    let started = tokio::time::Instant::now();
    let mut again = Vec::new();
    while again.len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a's deliveries never came back"
        );
        again.extend(b.claim(CH, 10).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "taken over before the lease (800 ms) could expire: {:?}",
        started.elapsed()
    );
    let mut before: Vec<u64> = taken.iter().map(|d| d.id).collect();
    let mut after: Vec<u64> = again.iter().map(|d| d.id).collect();
    before.sort_unstable();
    after.sort_unstable();
    assert_eq!(before, after, "the same deliveries, once each");
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "the lost attempt is not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_work_and_instance_changes_reach_the_other_replicas() {
    let schema = Schema::new("notify");
    let a = schema.open("a").await;
    let b = schema.open("b").await;
    // a learns of b at its next heartbeat (a quarter of the lease).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let notify = b.notifier(CH);
    let woken = notify.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    a.enqueue(vec![new_event(CH, "x", 1, None)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), woken)
        .await
        .expect("b's workers were not woken by work enqueued on a");

    let mut changes = b.changes().expect("the PostgreSQL store announces changes");
    changes.borrow_and_update();
    let record = InstanceRecord {
        id: Uuid::now_v7(),
        name: InstanceName::new("shared").unwrap(),
        token: Sensitive::new("token-shared".to_owned()),
        settings: InstanceSettings::default(),
        created_at: chrono::Utc::now(),
    };
    a.create_instance(&record).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("b did not hear of the instance created on a")
        .unwrap();
    let seen = b.instances().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].name.as_str(), "shared");
    assert!(matches!(
        b.create_instance(&record).await,
        Err(evolution_outbox::StoreError::Conflict(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let schema = Schema::new("migrate");
    let opens = (0..3).map(|i| {
        let options = schema.options(&format!("r{i}"));
        tokio::spawn(async move { PostgresOutbox::open(&url(), options).await })
    });
    for open in opens.collect::<Vec<_>>() {
        let outbox = open.await.unwrap().unwrap();
        outbox.enqueue(vec![new_event(CH, "x", 1, None)]).await.unwrap();
    }
}

#[tokio::test]
async fn start_up_errors_are_clear_and_never_show_the_password() {
    let malformed = PostgresOutbox::open("postgresql://user:s3cret@[::1/db", PostgresOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(malformed.contains("malformed"), "{malformed}");
    assert!(!malformed.contains("s3cret"), "{malformed}");
    let unreachable = PostgresOutbox::open(
        "postgresql://user:s3cret@127.0.0.1:1/db",
        PostgresOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        unreachable.contains("could not connect to PostgreSQL at postgres://user@127.0.0.1:1/db"),
        "{unreachable}"
    );
    assert!(!unreachable.contains("s3cret"), "{unreachable}");
    let schema = PostgresOutbox::open(
        &url(),
        PostgresOptions {
            schema: "Bad-Name".to_owned(),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(schema.contains("not a valid schema name"), "{schema}");
}
