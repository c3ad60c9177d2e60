//! The SQLite outbox: the contract suite on temporary files, plus what only it does (durability
//! against SIGKILL and an aborted writer, one outbox per file, pruning by age, group commit, the
//! instance store, `synchronous=FULL`, closing).

#![cfg(feature = "sqlite")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)] // test helpers

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use evolution_events::{Channel, InstanceName, InstanceSettings, Sensitive, Uuid};
use evolution_outbox::testing::{
    CHANNEL as CH, OutboxFixture, dead, new_event as event_on, retry, settlement as settle,
};
use evolution_outbox::{
    Attempt, DeliveryQuery, Durability, InstanceRecord, NewEvent, Outbox, OutboxError, Outcome,
    RedriveFilter, Settlement, SqliteOptions, SqliteOutbox, StatusFilter, Store, StoreError,
    outbox_contract_suite,
};
use serde_json::json;

/// A database file in a fresh directory (created by `open`), removed on drop.
struct TempDb {
    dir: PathBuf,
    path: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "evolution-outbox-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let path = dir.join("nested").join("outbox.db");
        Self { dir, path }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn options(capacity: usize) -> SqliteOptions {
    SqliteOptions {
        capacity,
        ..SqliteOptions::default()
    }
}

async fn open(db: &TempDb) -> SqliteOutbox {
    SqliteOutbox::open(&db.path, SqliteOptions::default())
        .await
        .unwrap()
}

/// Opens `db` keeping delivered deliveries for `retention`.
async fn open_with_retention(db: &TempDb, retention: Duration) -> SqliteOutbox {
    SqliteOutbox::open(
        &db.path,
        SqliteOptions {
            delivered_retention: retention,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap()
}

fn event(instance: &str, deliveries: usize, key: Option<&str>) -> NewEvent {
    event_on(CH, instance, deliveries, key)
}

fn query(status: Option<StatusFilter>) -> DeliveryQuery {
    DeliveryQuery {
        instance: None,
        channel: None,
        status,
        limit: 1000,
    }
}

fn target(d: &evolution_events::Delivery) -> String {
    d.destination.label()
}

/// A fresh database file per case. Delivered deliveries are kept with no retention, so that
/// [`OutboxFixture::prune`] forgets them at once.
struct SqliteFixture {
    db: TempDb,
    capacity: AtomicUsize,
}

impl SqliteFixture {
    async fn open_file(&self) -> Arc<SqliteOutbox> {
        let options = SqliteOptions {
            capacity: self.capacity.load(Ordering::Relaxed),
            delivered_retention: Duration::ZERO,
            ..SqliteOptions::default()
        };
        Arc::new(SqliteOutbox::open(&self.db.path, options).await.unwrap())
    }
}

impl OutboxFixture for SqliteFixture {
    type Outbox = SqliteOutbox;

    async fn setup() -> Self {
        Self {
            db: TempDb::new("contract"),
            capacity: AtomicUsize::new(0),
        }
    }

    async fn open(&self, capacity: usize) -> Arc<SqliteOutbox> {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.open_file().await
    }

    /// Drops the outbox without closing it, as a process that ends: its writer finishes what was
    /// queued and lets go of the lock file, which `open` waits for.
    async fn reopen(&self, outbox: Arc<SqliteOutbox>) -> Option<Arc<SqliteOutbox>> {
        let outbox = Arc::try_unwrap(outbox).expect("the case holds no other handle to the outbox");
        drop(outbox);
        Some(self.open_file().await)
    }

    fn keeps_history(&self) -> bool {
        true
    }

    async fn prune(&self, outbox: &SqliteOutbox) -> Result<usize, OutboxError> {
        // Settled in an earlier millisecond than the prune's cutoff.
        tokio::time::sleep(Duration::from_millis(2)).await;
        outbox.prune().await
    }
}

outbox_contract_suite!(contract, SqliteFixture);

#[tokio::test]
async fn close_is_idempotent_and_final() {
    let db = TempDb::new("close");
    let outbox = open(&db).await;
    outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    outbox.close().await;
    outbox.close().await;
    let err = outbox.enqueue(vec![event("a", 1, None)]).await.unwrap_err();
    assert!(err.to_string().contains("is closed"), "{err}");
}

#[tokio::test]
async fn the_capacity_count_survives_a_reopen() {
    let db = TempDb::new("full-reopen");
    let outbox = SqliteOutbox::open(&db.path, options(3)).await.unwrap();
    outbox.enqueue(vec![event("a", 3, None)]).await.unwrap();
    outbox.close().await;
    let outbox = SqliteOutbox::open(&db.path, options(3)).await.unwrap();
    assert!(matches!(
        outbox.enqueue(vec![event("a", 1, None)]).await,
        Err(OutboxError::Full { .. })
    ));
    outbox.close().await;
}

#[tokio::test]
async fn purge_deletes_attempts_and_events_left_without_deliveries() {
    let db = TempDb::new("purge");
    let outbox = open(&db).await;
    let stored = outbox
        .enqueue(vec![event("a", 1, None), event("a", 2, None)])
        .await
        .unwrap();
    let batch = outbox.claim(CH, 10).await.unwrap();
    let facts = Some(Attempt {
        latency: Duration::from_millis(3),
        status: Some(410),
    });
    outbox
        .settle(
            batch
                .iter()
                .take(2)
                .map(|d| Settlement {
                    id: d.id,
                    outcome: dead("HTTP 410"),
                    attempt: facts,
                })
                .collect(),
        )
        .await
        .unwrap();
    // The first event's only delivery, and one of the second event's two.
    assert_eq!(outbox.purge(&RedriveFilter::default()).await.unwrap(), 2);
    let a = InstanceName::new("a").unwrap();
    assert!(
        outbox.event(&a, stored[0].id()).await.unwrap().is_none(),
        "an event left without deliveries is deleted"
    );
    assert!(
        outbox.event(&a, stored[1].id()).await.unwrap().is_some(),
        "an event with a delivery left is kept"
    );
    let log = outbox.deliveries(&query(None)).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].id, batch[2].id);
    outbox.close().await;
    // The purge was committed.
    let outbox = open(&db).await;
    assert!(outbox.dead_letters(None, 10).await.unwrap().is_empty());
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 1);
    outbox.close().await;
}

/// A database written by the versions that ran their schema steps with sqlx: the steps recorded
/// in `_sqlx_migrations`, `user_version` 0, and data in it.
#[tokio::test]
async fn a_database_of_an_earlier_version_opens_with_its_data() {
    let db = TempDb::new("legacy");
    std::fs::create_dir_all(db.path.parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        conn.execute_batch(include_str!("../migrations/0001_outbox.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../migrations/0002_event_uuid.sql"))
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL); \
             INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (1, 'outbox', TRUE, x'00', 1), (2, 'event uuid', TRUE, x'00', 1); \
             INSERT INTO sequences (instance, last) VALUES ('a', 41);",
        )
        .unwrap();
    }
    let outbox = open(&db).await;
    let stored = outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    assert_eq!(
        stored[0].sequence(),
        42,
        "the sequence continues from the old data"
    );
    outbox.close().await;
    let version: i64 = rusqlite::Connection::open(&db.path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(
        version, 6,
        "the steps recorded by sqlx count as applied, and the later ones ran once"
    );
    // And it opens again (no step runs twice).
    let outbox = open(&db).await;
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 1);
    outbox.close().await;
}

/// A schema newer than this build is refused with a message saying so.
#[tokio::test]
async fn a_database_of_a_newer_version_is_refused() {
    let db = TempDb::new("newer");
    std::fs::create_dir_all(db.path.parent().unwrap()).unwrap();
    rusqlite::Connection::open(&db.path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteOutbox::open(&db.path, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer version"), "{err}");
}

#[tokio::test]
async fn one_outbox_per_file_at_a_time() {
    let db = TempDb::new("lock");
    let first = open(&db).await;
    first.enqueue(vec![event("a", 1, None)]).await.unwrap();
    let second = tokio::time::timeout(
        Duration::from_millis(300),
        SqliteOutbox::open(&db.path, SqliteOptions::default()),
    )
    .await;
    assert!(second.is_err(), "the second open waits for the first outbox");
    first.close().await;
    let second = open(&db).await;
    assert_eq!(second.stats(CH).await.unwrap().pending, 1);
    second.close().await;
    // Reads after close say so.
    let err = second.stats(CH).await.unwrap_err();
    assert!(err.to_string().contains("is closed"), "{err}");
}

/// What the crash tests leave behind in the first process.
struct Before {
    delivered: HashSet<u64>,
    retrying: HashSet<u64>,
    dead: HashSet<u64>,
    in_flight: HashSet<u64>,
    all: HashSet<u64>,
}

/// 1000 events × 2 deliveries (instance `a`), 10 ordered events on Kafka (instance `b`); 300
/// claimed: 100 delivered, 50 retrying in an hour, 50 dead, 100 left in flight, then 100 more
/// claimed; 3 Kafka in flight.
async fn before_crash(outbox: &SqliteOutbox) -> Before {
    for _ in 0..10 {
        let events = (0..100).map(|_| event("a", 2, None)).collect();
        outbox.enqueue(events).await.unwrap();
    }
    for _ in 0..10 {
        outbox
            .enqueue(vec![event_on(Channel::Kafka, "b", 1, Some("b/k"))])
            .await
            .unwrap();
    }
    let claimed = outbox.claim(CH, 300).await.unwrap();
    assert_eq!(claimed.len(), 300);
    let ids: Vec<u64> = claimed.iter().map(|d| d.id).collect();
    let mut settlements = Vec::new();
    settlements.extend(ids[..100].iter().map(|id| settle(*id, Outcome::Delivered)));
    settlements.extend(
        ids[100..150]
            .iter()
            .map(|id| settle(*id, retry(Duration::from_secs(3600)))),
    );
    settlements.extend(ids[150..200].iter().map(|id| settle(*id, dead("gone"))));
    outbox.settle(settlements).await.unwrap();
    let kafka = outbox.claim(Channel::Kafka, 3).await.unwrap();
    assert_eq!(kafka.len(), 3);
    let more = outbox.claim(CH, 100).await.unwrap();
    assert_eq!(more.len(), 100);
    let all: HashSet<u64> = outbox
        .deliveries(&DeliveryQuery {
            instance: None,
            channel: Some(CH),
            status: None,
            limit: 5000,
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all.len(), 2000);
    Before {
        delivered: ids[..100].iter().copied().collect(),
        retrying: ids[100..150].iter().copied().collect(),
        dead: ids[150..200].iter().copied().collect(),
        in_flight: more
            .iter()
            .map(|d| d.id)
            .chain(ids[200..].iter().copied())
            .collect(),
        all,
    }
}

async fn after_crash(outbox: &SqliteOutbox, before: &Before) {
    let stats = outbox.stats(CH).await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.dead), (1850, 0, 50));
    let claimed = outbox.claim(CH, 10_000).await.unwrap();
    let ids: Vec<u64> = claimed.iter().map(|d| d.id).collect();
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "each delivery exactly once");
    let expected: HashSet<u64> = before
        .all
        .iter()
        .copied()
        .filter(|id| {
            !before.delivered.contains(id) && !before.dead.contains(id) && !before.retrying.contains(id)
        })
        .collect();
    assert_eq!(
        unique, expected,
        "everything not delivered, dead or retrying later is due"
    );
    for d in &claimed {
        assert_eq!(d.attempt, 1, "in-flight deliveries kept their attempts");
    }
    assert_eq!(before.in_flight.len(), 200);
    assert!(before.in_flight.iter().all(|id| unique.contains(id)));
    // Every event, with both of its deliveries, and each (event, target) once.
    let mut per_event: HashMap<Uuid, Vec<String>> = HashMap::new();
    for d in &claimed {
        per_event.entry(d.envelope.id()).or_default().push(target(d));
    }
    for targets in per_event.values() {
        let set: HashSet<&String> = targets.iter().collect();
        assert_eq!(set.len(), targets.len());
    }
    // Retry due times survived.
    let wait = outbox.next_due(CH).await.unwrap().unwrap();
    assert!(wait > Duration::from_secs(3500), "{wait:?}");
    let failed = outbox
        .deliveries(&DeliveryQuery {
            instance: Some(InstanceName::new("a").unwrap()),
            channel: Some(CH),
            status: Some(StatusFilter::Failed),
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 50);
    assert!(
        failed
            .iter()
            .all(|r| r.attempts == 1 && r.next_attempt_at.is_some())
    );
    // Dead letters survived.
    let dead_letters = outbox.dead_letters(Some(CH), 1000).await.unwrap();
    let dead_ids: HashSet<u64> = dead_letters.iter().map(|d| d.delivery.id).collect();
    assert_eq!(dead_ids, before.dead);
    assert!(dead_letters.iter().all(|d| d.error == "gone"));
    // The ordered key starts again from its head.
    let kafka = outbox.claim(Channel::Kafka, 100).await.unwrap();
    let seqs: Vec<u64> = kafka.iter().map(|d| d.envelope.sequence()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    // Sequences go on.
    let next = outbox
        .enqueue(vec![
            event("a", 1, None),
            event_on(Channel::Kafka, "b", 1, Some("b/k")),
        ])
        .await
        .unwrap();
    assert_eq!((next[0].sequence(), next[1].sequence()), (1001, 11));
}

#[test]
fn an_aborted_writer_loses_nothing() {
    let db = TempDb::new("abort");
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (outbox, before) = first.block_on(async {
        let outbox = open(&db).await;
        let before = before_crash(&outbox).await;
        // Requests that may or may not be committed when the writer dies.
        let pending = Arc::new(outbox);
        for _ in 0..4 {
            let o = Arc::clone(&pending);
            tokio::spawn(async move { o.enqueue(vec![event_on(Channel::Sqs, "z", 1, None)]).await });
        }
        tokio::task::yield_now().await;
        (pending, before)
    });
    // Dropping the runtime aborts the writer wherever it is.
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        drop(outbox);
        let outbox = open(&db).await;
        let z = InstanceName::new("z").unwrap();
        let stored_z = outbox
            .deliveries(&DeliveryQuery {
                instance: Some(z),
                channel: None,
                status: None,
                limit: 100,
            })
            .await
            .unwrap();
        let mut seqs: Vec<u64> = stored_z.iter().map(|r| r.sequence).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=u64::try_from(seqs.len()).unwrap()).collect::<Vec<_>>(),
            "commits are all or nothing"
        );
        after_crash(&outbox, &before).await;
        outbox.close().await;
    });
}

const CHILD_ENV: &str = "EVOLUTION_OUTBOX_SIGKILL_CHILD";

/// The process `survives_sigkill` kills: enqueues for ever, printing each acknowledged event. Does
/// nothing when run as a normal test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let outbox = Arc::new(
        SqliteOutbox::open(Path::new(&path), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for producer in 0..4 {
        let outbox = Arc::clone(&outbox);
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let events = (0..=producer % 2).map(|_| event("a", 2, Some("a/k"))).collect();
                let stored = outbox.enqueue(events).await.unwrap();
                for e in stored {
                    tx.send(format!("acked {} {}", e.id(), e.sequence())).unwrap();
                }
            }
        });
    }
    let claimer = Arc::clone(&outbox);
    tokio::spawn(async move {
        loop {
            let batch = claimer.claim(CH, 20).await.unwrap();
            // Leave every other batch in flight, put the others back.
            if batch.first().is_some_and(|d| d.id % 2 == 0) {
                claimer
                    .settle(batch.iter().map(|d| settle(d.id, Outcome::Requeue)).collect())
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    while let Some(line) = rx.recv().await {
        println!("{line}");
    }
}

#[test]
fn survives_sigkill() {
    let db = TempDb::new("sigkill");
    std::fs::create_dir_all(db.path.parent().unwrap()).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["sigkill_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db.path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: HashMap<Uuid, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < 3000 && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("acked ") {
                    let (id, seq) = rest.split_once(' ').unwrap();
                    acked.insert(Uuid::parse_str(id).unwrap(), seq.parse().unwrap());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        acked.len() >= 3000,
        "the child acknowledged only {} events",
        acked.len()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let outbox = open(&db).await;
        assert_eq!(outbox.stats(CH).await.unwrap().in_flight, 0);
        let claimed = outbox.claim(CH, 1_000_000).await.unwrap();
        let mut per_event: BTreeMap<u64, (Uuid, usize)> = BTreeMap::new();
        let mut seen = HashSet::new();
        for d in &claimed {
            assert!(seen.insert(d.id), "delivery {} claimed twice", d.id);
            assert_eq!(d.attempt, 1);
            let entry = per_event
                .entry(d.envelope.sequence())
                .or_insert((d.envelope.id(), 0));
            assert_eq!(entry.0, d.envelope.id(), "one event per sequence number");
            entry.1 += 1;
        }
        assert!(
            per_event.values().all(|(_, n)| *n == 2),
            "both deliveries of every event"
        );
        let stored: HashMap<Uuid, u64> = per_event.iter().map(|(seq, (id, _))| (*id, *seq)).collect();
        for (id, seq) in &acked {
            assert_eq!(
                stored.get(id),
                Some(seq),
                "acknowledged event {id} (sequence {seq}) was lost"
            );
        }
        let n = u64::try_from(per_event.len()).unwrap();
        assert_eq!(
            per_event.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "sequences without gaps"
        );
        let seqs: Vec<u64> = claimed.iter().map(|d| d.envelope.sequence()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "the ordered key comes back in order"
        );
        let next = outbox.enqueue(vec![event("a", 0, None)]).await.unwrap();
        assert_eq!(next[0].sequence(), n + 1);
        eprintln!(
            "sigkill: {} acknowledged, {} stored, none lost",
            acked.len(),
            per_event.len()
        );
        outbox.close().await;
    });
}

#[tokio::test]
async fn pruning_forgets_old_deliveries() {
    let db = TempDb::new("prune");
    let outbox = open_with_retention(&db, Duration::ZERO).await;
    outbox
        .enqueue(vec![event("a", 2, None), event("a", 1, None)])
        .await
        .unwrap();
    let batch = outbox.claim(CH, 10).await.unwrap();
    outbox
        .settle(vec![
            Settlement {
                id: batch[0].id,
                outcome: Outcome::Delivered,
                attempt: Some(Attempt::default()),
            },
            settle(batch[2].id, Outcome::Delivered),
            settle(batch[1].id, Outcome::Requeue),
        ])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(outbox.prune().await.unwrap(), 2);
    assert_eq!(outbox.prune().await.unwrap(), 0);
    assert!(
        outbox
            .deliveries(&query(Some(StatusFilter::Delivered)))
            .await
            .unwrap()
            .is_empty()
    );
    let left = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(left.len(), 1, "the event of an unsettled delivery stays");
    assert_eq!(left[0].envelope.id(), batch[1].envelope.id());
    outbox.close().await;
    // Ids are never reused, even after the newest deliveries were pruned.
    let outbox = open(&db).await;
    outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    let next = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(next.len(), 2, "the recovered delivery and the new one");
    assert!(
        next.iter().all(|d| d.id == batch[1].id || d.id > batch[2].id),
        "{:?}",
        next.iter().map(|d| d.id).collect::<Vec<_>>()
    );
    outbox.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_prunes_by_itself() {
    let db = TempDb::new("auto-prune");
    let outbox = open_with_retention(&db, Duration::from_secs(1)).await;
    // More than two prune steps (1 000 each) of delivered deliveries, and one that stays pending.
    for _ in 0..5 {
        let events = (0..500).map(|_| event("a", 1, None)).collect();
        outbox.enqueue(events).await.unwrap();
    }
    let delivered = outbox.claim(CH, 10_000).await.unwrap();
    assert_eq!(delivered.len(), 2_500);
    outbox
        .settle(
            delivered
                .iter()
                .map(|d| settle(d.id, Outcome::Delivered))
                .collect(),
        )
        .await
        .unwrap();
    let kept = outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    // Nobody calls prune(): the writer's timer (every second with this retention) and the steps
    // that follow a full one must delete all 2 500 within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = outbox
            .deliveries(&DeliveryQuery {
                limit: 10_000,
                ..query(Some(StatusFilter::Delivered))
            })
            .await
            .unwrap()
            .len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} delivered deliveries still kept after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(pending.len(), 1, "pending work is never pruned");
    assert_eq!(pending[0].envelope.id(), kept[0].id());
    assert!(
        outbox
            .event(&InstanceName::new("a").unwrap(), kept[0].id())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        outbox
            .event(&InstanceName::new("a").unwrap(), delivered[0].envelope.id())
            .await
            .unwrap()
            .is_none(),
        "events left with no delivery are pruned with them"
    );
    outbox.close().await;
}

#[tokio::test]
async fn dead_letters_are_kept_until_purged() {
    let db = TempDb::new("purge-kept");
    let outbox = open_with_retention(&db, Duration::ZERO).await;
    outbox
        .enqueue(vec![
            event("a", 1, None),
            event("b", 1, None),
            event("a", 1, None),
        ])
        .await
        .unwrap();
    let batch = outbox.claim(CH, 10).await.unwrap();
    outbox
        .settle(batch.iter().map(|d| settle(d.id, dead("gone"))).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(outbox.prune().await.unwrap(), 0, "pruning keeps dead letters");
    let only_b = RedriveFilter {
        instance: Some(InstanceName::new("b").unwrap()),
        ..RedriveFilter::default()
    };
    assert_eq!(outbox.purge(&only_b).await.unwrap(), 1);
    assert_eq!(outbox.purge(&only_b).await.unwrap(), 0);
    assert_eq!(outbox.stats(CH).await.unwrap().dead, 2);
    assert!(
        outbox
            .event(&InstanceName::new("b").unwrap(), batch[1].envelope.id())
            .await
            .unwrap()
            .is_none(),
        "the purged dead letter's event is gone with it"
    );
    assert_eq!(outbox.purge(&RedriveFilter::default()).await.unwrap(), 2);
    assert_eq!(outbox.stats(CH).await.unwrap().dead, 0);
    assert_eq!(outbox.redrive(&RedriveFilter::default()).await.unwrap(), 0);
    outbox.close().await;
}

fn settings() -> InstanceSettings {
    InstanceSettings::from_json(&json!({
        "webhook": {
            "enabled": true,
            "url": "https://example.com/hook",
            "events": ["MESSAGES_UPSERT"],
            "headers": {"Authorization": "Bearer s3cret", "X-Tenant": "t1"},
            "base64": false,
            "byEvents": true
        },
        "pusher": {
            "enabled": true, "appId": "123", "key": "k", "secret": "pusher-secret", "cluster": "us2",
            "useTLS": true, "events": [], "host": "localhost", "port": 6001
        },
        "nats": {"enabled": true, "events": []}
    }))
    .unwrap()
}

fn record(name: &str, token: &str, settings: InstanceSettings) -> InstanceRecord {
    InstanceRecord {
        id: Uuid::now_v7(),
        name: InstanceName::new(name).unwrap(),
        token: Sensitive::new(token),
        settings,
        created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
    }
}

#[tokio::test]
async fn the_store_keeps_instances() {
    let db = TempDb::new("store");
    let outbox = open(&db).await;
    let a = record("alpha", "token-a", settings());
    let b = record("beta", "token-b", InstanceSettings::default());
    outbox.create_instance(&b).await.unwrap();
    outbox.create_instance(&a).await.unwrap();
    let same_name = record("alpha", "token-c", InstanceSettings::default());
    let err = outbox.create_instance(&same_name).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(name) if name == "alpha"),
        "{err}"
    );
    let same_token = record("gamma", "token-a", InstanceSettings::default());
    assert!(matches!(
        outbox.create_instance(&same_token).await,
        Err(StoreError::Conflict(name)) if name == "gamma"
    ));
    let list = outbox.instances().await.unwrap();
    assert_eq!(
        list,
        [a.clone(), b.clone()],
        "by name, settings and secrets round-trip"
    );
    assert_eq!(
        list[0].settings.webhook.as_ref().unwrap().headers["Authorization"].expose(),
        "Bearer s3cret"
    );
    assert_eq!(
        list[0].settings.pusher.as_ref().unwrap().secret.expose(),
        "pusher-secret"
    );

    let mut changed = settings();
    changed.webhook = None;
    assert!(outbox.update_settings(&a.name, &changed).await.unwrap());
    let nobody = InstanceName::new("nobody").unwrap();
    assert!(!outbox.update_settings(&nobody, &changed).await.unwrap());
    assert!(outbox.delete_instance(&b.name).await.unwrap());
    assert!(!outbox.delete_instance(&b.name).await.unwrap());
    outbox.close().await;

    let outbox = open(&db).await;
    let list = outbox.instances().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].settings, changed);
    assert_eq!(list[0].id, a.id);
    assert_eq!(list[0].created_at, a.created_at);
    // A deleted instance's name and token are free again.
    outbox.create_instance(&b).await.unwrap();
    outbox.close().await;
}

#[tokio::test]
async fn a_deleted_instance_events_still_go_out() {
    let db = TempDb::new("deleted");
    let outbox = open(&db).await;
    let a = record("a", "token-a", InstanceSettings::default());
    outbox.create_instance(&a).await.unwrap();
    outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    assert!(outbox.delete_instance(&a.name).await.unwrap());
    assert_eq!(outbox.claim(CH, 10).await.unwrap().len(), 1);
    outbox.close().await;
}

/// 32 tasks each enqueueing 200 single-event batches (4 instances): every instance's sequences are
/// 1..=1600, and the requests shared transactions.
async fn concurrent_producers(name: &str, options: SqliteOptions) {
    let db = TempDb::new(name);
    let outbox = Arc::new(SqliteOutbox::open(&db.path, options).await.unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                let instance = format!("i{}", t % 4);
                let mut seqs = Vec::with_capacity(200);
                for _ in 0..200 {
                    let stored = outbox.enqueue(vec![event(&instance, 1, None)]).await.unwrap();
                    seqs.push(stored[0].sequence());
                }
                (instance, seqs)
            })
        })
        .collect();
    let mut per_instance: HashMap<String, Vec<u64>> = HashMap::new();
    for task in tasks {
        let (instance, seqs) = task.await.unwrap();
        per_instance.entry(instance).or_default().extend(seqs);
    }
    let elapsed = started.elapsed();
    for (instance, mut seqs) in per_instance {
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=1600).collect::<Vec<u64>>(),
            "{instance}: no gaps, no duplicates"
        );
    }
    let stats = outbox.write_stats();
    eprintln!(
        "group commit ({name}): 6400 single-event enqueues from 32 tasks in {elapsed:?} ({:.0} events/s), \
         {} requests in {} transactions ({:.1} per commit)",
        6400.0 / elapsed.as_secs_f64(),
        stats.requests,
        stats.transactions,
        stats.requests as f64 / stats.transactions as f64
    );
    assert!(
        stats.transactions * 2 < stats.requests,
        "concurrent requests share transactions: {stats:?}"
    );
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 6400);
    outbox.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_share_commits() {
    let options = SqliteOptions {
        durability: Durability::ProcessCrash,
        ..SqliteOptions::default()
    };
    concurrent_producers("synchronous=NORMAL", options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_share_commits_synchronous_full() {
    let options = SqliteOptions {
        durability: Durability::PowerLoss,
        ..SqliteOptions::default()
    };
    concurrent_producers("synchronous=FULL", options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_only_the_excess_of_a_group() {
    let db = TempDb::new("group-full");
    let outbox = Arc::new(SqliteOutbox::open(&db.path, options(10)).await.unwrap());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move { outbox.enqueue(vec![event("a", 1, None)]).await })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut full = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(stored) => seqs.push(stored[0].sequence()),
            Err(OutboxError::Full { capacity: 10, .. }) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<u64>>(),
        "refused events take no sequence"
    );
    assert_eq!(full, 22);
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 10);
    outbox.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_of_one_key_keep_one_head() {
    let db = TempDb::new("group-key");
    let outbox = Arc::new(open(&db).await);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                for _ in 0..5 {
                    outbox.enqueue(vec![event("a", 1, Some("a/k"))]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let batch = outbox.claim(CH, 1000).await.unwrap();
    let seqs: Vec<u64> = batch.iter().map(|d| d.envelope.sequence()).collect();
    assert_eq!(
        seqs,
        (1..=80).collect::<Vec<u64>>(),
        "one run, in order, each once"
    );
    assert!(outbox.claim(CH, 1000).await.unwrap().is_empty());
    outbox.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_enqueue_rate() {
    let db = TempDb::new("rate");
    let outbox = open(&db).await;
    let started = Instant::now();
    for _ in 0..40 {
        let events = (0..500).map(|i| event(&format!("i{}", i % 8), 1, None)).collect();
        outbox.enqueue(events).await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "batch enqueue: 20000 events (batches of 500, 1 delivery each) in {elapsed:?}: {:.0} events/s",
        20_000.0 / elapsed.as_secs_f64()
    );
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 20_000);
    let started = Instant::now();
    let mut claimed = 0;
    loop {
        let batch = outbox.claim(CH, 500).await.unwrap();
        if batch.is_empty() {
            break;
        }
        claimed += batch.len();
        outbox
            .settle(batch.iter().map(|d| settle(d.id, Outcome::Delivered)).collect())
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "claim + settle: {claimed} deliveries (batches of 500) in {elapsed:?}: {:.0} deliveries/s",
        claimed as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(claimed, 20_000);
    outbox.close().await;
}

/// The whole ordered path at once, the shape of single events to a webhook: 64 producers enqueue
/// single events of 16 instances (one ordering key each) while 16 workers claim up to 16, and
/// settle them delivered with an attempt. Every event is delivered once, each key in sequence
/// order; prints the rate and the group sizes (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_share_commits_in_order() {
    const TOTAL: usize = 20_000;
    let db = TempDb::new("lifecycle");
    let outbox = Arc::new(open(&db).await);
    let produced = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producers: Vec<_> = (0..64)
        .map(|t| {
            let outbox = Arc::clone(&outbox);
            let produced = Arc::clone(&produced);
            tokio::spawn(async move {
                let instance = format!("i{}", t % 16);
                let key = format!("{instance}/hook");
                while produced.fetch_add(1, Ordering::Relaxed) < TOTAL {
                    outbox
                        .enqueue(vec![event(&instance, 1, Some(&key))])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let outbox = Arc::clone(&outbox);
            let delivered = Arc::clone(&delivered);
            tokio::spawn(async move {
                let mut claims = 0;
                let mut seen: Vec<(String, u64)> = Vec::new();
                while delivered.load(Ordering::Relaxed) < TOTAL {
                    let batch = outbox.claim(CH, 16).await.unwrap();
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    claims += 1;
                    seen.extend(
                        batch
                            .iter()
                            .map(|d| (d.envelope.instance().to_string(), d.envelope.sequence())),
                    );
                    let settlements = batch
                        .iter()
                        .map(|d| Settlement {
                            id: d.id,
                            outcome: Outcome::Delivered,
                            attempt: Some(Attempt {
                                latency: Duration::from_millis(1),
                                status: Some(200),
                            }),
                        })
                        .collect();
                    outbox.settle(settlements).await.unwrap();
                    delivered.fetch_add(batch.len(), Ordering::Relaxed);
                }
                (claims, seen)
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    let mut claims = 0;
    // Claims of one key never overlap (its next claim waits for the settlement), so a key's
    // deliveries, in the order each worker saw them and merged by sequence, must be 1, 2, 3, …
    let mut per_instance: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for worker in workers {
        let (n, seen) = worker.await.unwrap();
        claims += n;
        let mut last: HashMap<String, u64> = HashMap::new();
        for (instance, sequence) in seen {
            let previous = last.insert(instance.clone(), sequence).unwrap_or(0);
            assert!(
                sequence > previous,
                "{instance}: a worker saw {sequence} after {previous}"
            );
            per_instance.entry(instance).or_default().push(sequence);
        }
    }
    let elapsed = started.elapsed();
    let mut total = 0;
    for (instance, mut sequences) in per_instance {
        sequences.sort_unstable();
        total += sequences.len();
        assert_eq!(
            sequences,
            (1..=sequences.len() as u64).collect::<Vec<u64>>(),
            "{instance}: each event delivered once, none missing"
        );
    }
    assert_eq!(total, TOTAL);
    let stats = outbox.write_stats();
    eprintln!(
        "ordered lifecycle: {TOTAL} events enqueued, claimed and settled in {elapsed:?} ({:.0} events/s), \
         {claims} claims ({:.1} deliveries each), {} requests in {} transactions ({:.1} per commit)",
        TOTAL as f64 / elapsed.as_secs_f64(),
        TOTAL as f64 / claims as f64,
        stats.requests,
        stats.transactions,
        stats.requests as f64 / stats.transactions as f64
    );
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 0);
    outbox.close().await;
}
