//! Order across a Kafka broker restart with several batches of one key in flight (ADRs 0012 and
//! 0025): the Dispatcher (memory outbox) over a `KafkaSink` with the idempotent producer — 5
//! batches per key in flight — delivers a stream to a private tansu (`EVOLUTION_TEST_TANSU`, its
//! log in a private moto's S3, `EVOLUTION_TEST_MOTO`, so that a restarted broker keeps what it
//! acknowledged). The broker is killed (SIGKILL) mid-stream and started again; an independent
//! consumer then reads every topic and the test checks, per instance (ordering key), that every
//! event arrived and that the last copy of each arrived after the last copy of every earlier one.
//!
//! The harness (consumer, private processes, ports) is the Kafka sink's test helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../evolution-sink-kafka/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Process, TopicWatcher, env_or_skip, wait_port};
use evolution_events::{
    Channel, EventEnvelope, EventKind, EventSink, GlobalSettings, InstanceName, InstanceSettings, RawValue,
    Uuid,
};
use evolution_outbox::{MemoryOutbox, Outbox};
use evolution_sink_testkit::fixtures::closed_port;
use evolution_sinks::kafka::{KafkaConfig, KafkaSink};
use evolution_sinks::{Dispatcher, Router};
use tokio::time::Instant;

/// Ordering keys (instances, one topic each).
const INSTANCES: usize = 2;
/// Events per instance.
const PER_INSTANCE: usize = 5_000;
/// The sink's request (and record delivery) timeout; the broker stays down longer, so the sends in
/// flight fail and the dispatcher retries them and puts back what followed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The Kafka sink's batch (the dispatcher's batch size).
const BATCH: usize = 1024;

/// A private tansu on `port` keeping its log in the S3 of the moto on `s3_port`.
fn tansu(program: &str, port: u16, s3_port: u16, log: std::path::PathBuf) -> Process {
    let listener = format!("tcp://127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    Process::spawn(
        program,
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            "s3://tansu/",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", &endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ],
        log,
    )
}

// Several threads: the test watches the outbox while a worker queues thousands of records without
// yielding, which on one thread would hide the claim until batches of it are already settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_a_broker_restart_with_several_batches_in_flight() {
    let (Some(tansu_bin), Some(moto)) = (
        env_or_skip("EVOLUTION_TEST_TANSU"),
        env_or_skip("EVOLUTION_TEST_MOTO"),
    ) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("evolution-kafka-restart-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let s3_port = closed_port();
    let _s3 = Process::spawn(
        &moto,
        &["-H", "127.0.0.1", "-p", &s3_port.to_string()],
        &[],
        dir.join("moto.log"),
    );
    assert!(
        wait_port(s3_port, Duration::from_secs(30)).await,
        "moto did not start"
    );
    let bucket = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{s3_port}/tansu"))
        .send()
        .await
        .unwrap();
    assert!(bucket.status().is_success(), "{}", bucket.status());
    let port = closed_port();
    let mut broker = tansu(&tansu_bin, port, s3_port, dir.join("tansu.log"));
    assert!(
        wait_port(port, Duration::from_secs(30)).await,
        "tansu did not start"
    );
    let brokers = format!("127.0.0.1:{port}");

    let sink = KafkaSink::new(KafkaConfig {
        auto_create_topics: true,
        request_timeout: REQUEST_TIMEOUT,
        ..KafkaConfig::new([brokers.as_str()])
    })
    .unwrap();
    assert_eq!(
        sink.capabilities().max_in_flight_per_key,
        5,
        "the idempotent producer lets 5 batches of a key be in flight"
    );
    let mut global = GlobalSettings::default();
    global.kafka.enabled = true;
    let outbox = Arc::new(MemoryOutbox::default());
    let dispatcher = Dispatcher::builder(
        Arc::clone(&outbox) as Arc<dyn Outbox>,
        Router::new(global).unwrap(),
    )
    .sink(Arc::new(sink))
    .start()
    .unwrap();
    let settings = InstanceSettings::from_json(
        &serde_json::json!({"kafka": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .unwrap();
    let tag = &Uuid::now_v7().simple().to_string()[20..];
    let instances: Vec<String> = (0..INSTANCES).map(|i| format!("order-{tag}-{i}")).collect();
    for instance in &instances {
        assert!(
            dispatcher
                .prepare(&InstanceName::new(instance).unwrap(), &settings)
                .await
                .is_empty()
        );
    }
    let watchers: Vec<TopicWatcher> = instances
        .iter()
        .map(|i| TopicWatcher::start(&brokers, &format!("evolution.{i}.messages-upsert"), 1))
        .collect();

    // Each event's id → (instance, sequence), as the outbox numbered them.
    let mut sequences: HashMap<Uuid, (usize, u64)> = HashMap::new();
    let mut emit = async |from: usize, to: usize| {
        let events: Vec<EventEnvelope> = (from..to)
            .flat_map(|n| {
                instances.iter().map(move |instance| {
                    EventEnvelope::new(
                        EventKind::MessagesUpsert,
                        InstanceName::new(instance).unwrap(),
                        RawValue::from_string(format!(r#"{{"n":{n},"text":"{}"}}"#, "x".repeat(500)))
                            .unwrap(),
                    )
                })
            })
            .collect();
        let stored = dispatcher
            .emit_many(events.into_iter().map(|e| (e, Some(&settings))).collect())
            .await
            .unwrap();
        for event in stored {
            let index = instances
                .iter()
                .position(|i| i == event.instance().as_str())
                .unwrap();
            sequences.insert(event.id(), (index, event.sequence()));
        }
    };

    // The first half goes out; the broker dies while more than one batch per key is in flight
    // (at most one was, before ADR 0012), more events come while it is down, then it comes back
    // and the rest follows.
    emit(0, PER_INSTANCE / 2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let in_flight = outbox.stats(Channel::Kafka).await.unwrap().in_flight;
        if in_flight > INSTANCES * BATCH {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never more than one batch per key in flight within 60 s ({in_flight} deliveries)"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    broker.kill();
    emit(PER_INSTANCE / 2, 3 * PER_INSTANCE / 4).await;
    tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_secs(1)).await;
    let broker = tansu(&tansu_bin, port, s3_port, dir.join("tansu.log"));
    assert!(
        wait_port(port, Duration::from_secs(30)).await,
        "tansu did not restart"
    );
    emit(3 * PER_INSTANCE / 4, PER_INSTANCE).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    while dispatcher.counters(Channel::Kafka).unwrap().delivered < (INSTANCES * PER_INSTANCE) as u64 {
        assert!(
            Instant::now() < deadline,
            "not everything was acknowledged within 120 s: {:?}\n{}",
            dispatcher.counters(Channel::Kafka),
            broker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counters = dispatcher.counters(Channel::Kafka).unwrap();
    dispatcher.shutdown(Duration::from_secs(10)).await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "kafka restart: {} failed attempts, {} retried, {} batches",
            counters.failed_attempts, counters.retried, counters.batches
        );
    }
    assert!(
        counters.failed_attempts > 0,
        "the broker's death made sends in flight fail (the case under test)"
    );

    for (index, watcher) in watchers.iter().enumerate() {
        let records = watcher.wait(PER_INSTANCE, Duration::from_secs(60)).await;
        // The position of the last copy of each sequence number.
        let mut last: HashMap<u64, usize> = HashMap::new();
        for (position, record) in records.iter().enumerate() {
            let &(instance, sequence) = sequences
                .get(&record.id())
                .unwrap_or_else(|| panic!("record with an unknown id: {:?}", record.headers));
            assert_eq!(instance, index, "a record of another instance in its topic");
            last.insert(sequence, position);
        }
        let missing: Vec<u64> = (1..=PER_INSTANCE as u64)
            .filter(|s| !last.contains_key(s))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: {} of {PER_INSTANCE} events missing (first: {:?}); tansu log:\n{}",
            instances[index],
            missing.len(),
            &missing[..missing.len().min(10)],
            broker.log_tail()
        );
        let out_of_order: Vec<u64> = (2..=PER_INSTANCE as u64)
            .filter(|s| last[s] < last[&(s - 1)])
            .collect();
        assert!(
            out_of_order.is_empty(),
            "{}: the last copy of {} event(s) arrived before an earlier event's (first: {:?})",
            instances[index],
            out_of_order.len(),
            &out_of_order[..out_of_order.len().min(10)]
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{}: {PER_INSTANCE} events, {} records read ({} copies sent again)",
                instances[index],
                records.len(),
                records.len() - PER_INSTANCE
            );
        }
    }
}
