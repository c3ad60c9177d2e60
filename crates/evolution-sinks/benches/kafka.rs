//! Kafka records per second through `Dispatcher` + `KafkaSink` versus a raw rdkafka loop doing the
//! same work (same payloads, key and headers, same producer settings: idempotent, `acks=all`,
//! 1 ms linger), against the same broker, in one run. Two more raw rows have the dispatcher's
//! shape — batches of 1 024 whose acknowledgements are awaited before the next batch, 1 in flight
//! (one ordered key as before ADR 0012) or 4 — and each pipeline row is also compared with its
//! same-shape raw row. One pipeline row keeps one batch per key in flight (as before ADR 0012),
//! for comparison with the default (the sink's 5) in the same run. The headline ratio — the
//! ordered pipeline (1 instance) against the raw loop — is the median of [`ROUNDS`] paired rounds.
//!
//! A second, fixed-rate phase measures latency: [`PACED`] events offered one at a time at [`RATE`]
//! per second (well below both paths' saturation), each timed from its hand-over (raw: the
//! `send_result` call; pipeline: the `Dispatcher::emit` call) to the broker's acknowledgement
//! (raw: its delivery future resolved; pipeline: `KafkaSink::send` returned it acknowledged, just
//! before the dispatcher settles it).
//!
//! Run: `eval "$(scripts/services env kafka)"; cargo bench -p evolution-sinks --bench kafka` —
//! prints a Markdown table. The broker is `EVOLUTION_TEST_KAFKA_BROKERS` (default
//! 127.0.0.1:9092, the tansu of `scripts/services up kafka`).
//!
//! Profiling: with `KAFKA_BENCH_PROFILE=raw|raw1|raw4|ordered|ordered1|ordered16|unordered` the
//! bench runs only that path (`raw1`/`raw4`: the same-shape raw loops; `ordered1`: one batch per
//! key in flight, as before ADR 0012), [`PROFILE_RUNS`] times (fresh topics each time), and prints
//! each rate — run it under `perf record` or `valgrind --tool=callgrind`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

mod common;

use common::ROUNDS;

use std::sync::Arc;
use std::time::{Duration, Instant};

use evolution_events::{
    Channel, EventEnvelope, EventKind, EventSink, GlobalSettings, InstanceName, InstanceSettings,
    NamingProfile,
};
use evolution_outbox::MemoryOutbox;
use evolution_sink_testkit::bench::{Acked, Acks, ms, paced, percentiles};
use evolution_sinks::kafka::{KafkaConfig, KafkaSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

const EVENTS: usize = 20_000;
/// The dispatcher's batch for Kafka (the sink's largest).
const BATCH: usize = 1024;
/// Events of the fixed-rate (latency) phase, per path.
const PACED: usize = 6_000;
/// Events per second offered in the latency phase.
const RATE: f64 = 2_000.0;

/// Runs of one path in profiling mode (`KAFKA_BENCH_PROFILE`).
const PROFILE_RUNS: usize = 10;

/// `KAFKA_LINGER_MS` (default 1, the sink's default), for both paths.
fn linger() -> Duration {
    Duration::from_millis(
        std::env::var("KAFKA_LINGER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
    )
}

fn brokers() -> String {
    std::env::var("EVOLUTION_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn envelope(instance: &str, i: usize) -> EventEnvelope {
    let data = serde_json::json!({"key": {"id": format!("MSG{i:08}")}, "message": {"conversation": "x".repeat(800)}});
    EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new(instance).unwrap(),
        serde_json::value::to_raw_value(&data).unwrap(),
    )
}

fn tag() -> String {
    evolution_events::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

#[allow(clippy::cast_precision_loss)]
fn rate(n: usize, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

/// A producer configured as the sink's (idempotent, `acks=all`, the same linger).
fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger().as_millis().to_string())
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap()
}

/// Produces every event (serialized once, key = instance, headers event/instance/id) with one
/// connected producer, then waits for every acknowledgement.
async fn raw(producer: &FutureProducer, topic: &str, instance: &str, envelopes: Vec<EventEnvelope>) -> f64 {
    // The topic's metadata is known before the clock starts (the sink looked its topics up when
    // they were prepared).
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let start = Instant::now();
    let mut pending = Vec::with_capacity(envelopes.len());
    for envelope in &envelopes {
        let payload = envelope.payload(NamingProfile::Seed);
        let headers = headers(instance, &envelope.id().to_string());
        loop {
            let record = FutureRecord::to(topic)
                .key(instance)
                .payload(&payload[..])
                .headers(headers.clone());
            match producer.send_result(record) {
                Ok(future) => {
                    pending.push(future);
                    break;
                }
                Err((e, _)) => {
                    assert!(e.to_string().contains("Queue full"), "cannot produce: {e}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for future in pending {
        future.await.unwrap().unwrap();
    }
    rate(envelopes.len(), start)
}

/// The raw loop shaped like the dispatcher's delivery: `in_flight` tasks on one producer each take
/// [`BATCH`] events at a time, produce them, and await every acknowledgement before taking the next
/// batch (ordered delivery of one key is `in_flight` = 1: one batch per key in flight, ADR 0002).
async fn raw_batched(
    producer: &FutureProducer,
    topic: &str,
    instance: &str,
    envelopes: Vec<EventEnvelope>,
    in_flight: usize,
) -> f64 {
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let n = envelopes.len();
    let envelopes = Arc::new(envelopes);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (producer, envelopes, next) = (producer.clone(), Arc::clone(&envelopes), Arc::clone(&next));
            let (topic, instance) = (topic.to_owned(), instance.to_owned());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(BATCH, std::sync::atomic::Ordering::Relaxed);
                    let Some(batch) = envelopes.get(first..(first + BATCH).min(envelopes.len())) else {
                        break;
                    };
                    if batch.is_empty() {
                        break;
                    }
                    let mut pending = Vec::with_capacity(batch.len());
                    for envelope in batch {
                        let payload = envelope.payload(NamingProfile::Seed);
                        let record = FutureRecord::to(&topic)
                            .key(instance.as_str())
                            .payload(&payload[..])
                            .headers(headers(&instance, &envelope.id().to_string()));
                        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                    }
                    for future in pending {
                        future.await.unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    rate(n, start)
}

/// The sink's headers: event, instance, id.
fn headers(instance: &str, id: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: "event",
            value: Some("MESSAGES_UPSERT"),
        })
        .insert(Header {
            key: "instance",
            value: Some(instance),
        })
        .insert(Header {
            key: "id",
            value: Some(id),
        })
}

/// Latency phase of the raw loop: each event produced at its time (event `i` to `topics[i % n]`,
/// key = the topic's instance), its acknowledgement awaited in its own task.
async fn raw_paced(producer: &FutureProducer, topics: &[(String, String)]) -> (Duration, Duration) {
    for (topic, _) in topics {
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
    }
    let acks: Acks = Acks::default();
    let envelopes = (0..PACED)
        .map(|i| envelope(&topics[i % topics.len()].1, i))
        .collect();
    let mut i = 0;
    let sent = paced(envelopes, RATE, async |envelope| {
        let (topic, instance) = &topics[i % topics.len()];
        i += 1;
        let payload = envelope.payload(NamingProfile::Seed);
        let id = envelope.id().to_string();
        let record = FutureRecord::to(topic)
            .key(instance.as_str())
            .payload(&payload[..])
            .headers(headers(instance, &id));
        let future = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        let acks = acks.clone();
        tokio::spawn(async move {
            future.await.unwrap().unwrap();
            acks.note(id, Instant::now());
        });
    })
    .await;
    percentiles(&sent, &acks).await
}

async fn create_topics(brokers: &str, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    admin.create_topics(&new, &AdminOptions::new()).await.unwrap();
}

/// A dispatcher (memory outbox, 4 workers) over a `KafkaSink` (wrapped to record its
/// acknowledgements when `acks` is given), with the topics of `instances` created.
async fn start(
    brokers: &str,
    prefix: &str,
    instances: &[String],
    ordered: bool,
    in_flight: Option<usize>,
    acks: Option<Acks>,
) -> (Dispatcher, InstanceSettings) {
    let sink: Arc<dyn EventSink> = Arc::new(
        KafkaSink::new(KafkaConfig {
            auto_create_topics: true,
            linger: linger(),
            ..KafkaConfig::new([brokers])
        })
        .unwrap(),
    );
    let sink = match acks {
        Some(acks) => Arc::new(Acked::new(sink, acks)),
        None => sink,
    };
    let mut global = GlobalSettings::default();
    global.kafka.enabled = true;
    global.kafka.prefix = prefix.to_owned();
    let dispatcher = Dispatcher::builder(Arc::new(MemoryOutbox::default()), Router::new(global).unwrap())
        .sink_with(
            sink,
            ChannelConfig {
                ordered: Some(ordered),
                max_in_flight_per_key: in_flight,
                ..ChannelConfig::default_for(Channel::Kafka)
            },
        )
        .start()
        .unwrap();
    let settings = InstanceSettings::from_json(
        &serde_json::json!({"kafka": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .unwrap();
    // Topics exist before the clock starts, as for the raw loop.
    for instance in instances {
        assert!(
            dispatcher
                .prepare(&InstanceName::new(instance).unwrap(), &settings)
                .await
                .is_empty()
        );
    }
    (dispatcher, settings)
}

/// The same events through the dispatcher (memory outbox, 4 workers), `instances` instances;
/// `in_flight` batches per key (`None`: the sink's 5).
async fn pipeline(
    brokers: &str,
    prefix: &str,
    instances: &[String],
    ordered: bool,
    in_flight: Option<usize>,
) -> f64 {
    let (dispatcher, settings) = start(brokers, prefix, instances, ordered, in_flight, None).await;
    let envelopes: Vec<EventEnvelope> = (0..EVENTS)
        .map(|i| envelope(&instances[i % instances.len()], i))
        .collect();
    let start = Instant::now();
    common::emit_all(&dispatcher, envelopes, Some(&settings)).await;
    while dispatcher.counters(Channel::Kafka).unwrap().delivered < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = rate(EVENTS, start);
    dispatcher.shutdown(Duration::from_secs(10)).await;
    r
}

/// Latency phase of the pipeline: each event given to `Dispatcher::emit` at its time.
async fn pipeline_paced(
    brokers: &str,
    prefix: &str,
    instances: &[String],
    ordered: bool,
) -> (Duration, Duration) {
    let acks: Acks = Acks::default();
    let (dispatcher, settings) = start(brokers, prefix, instances, ordered, None, Some(acks.clone())).await;
    let envelopes = (0..PACED)
        .map(|i| envelope(&instances[i % instances.len()], i))
        .collect();
    let sent = common::emit_paced(&dispatcher, envelopes, RATE, Some(&settings)).await;
    let latency = percentiles(&sent, &acks).await;
    dispatcher.shutdown(Duration::from_secs(10)).await;
    latency
}

/// [`ROUNDS`] rounds of (raw loop, ordered pipeline), alternately first, fresh topics each time:
/// `(raw, pipeline)` records/s per round.
async fn paired_rounds(
    brokers: &str,
    run: &str,
    producer: &FutureProducer,
    instance: &str,
    one: &[String],
) -> Vec<(f64, f64)> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let topic = format!("raw{run}.r{round}");
        create_topics(brokers, std::slice::from_ref(&topic)).await;
        let mut rates = [0.0f64; 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for slot in order {
            rates[slot] = if slot == 0 {
                let events = (0..EVENTS).map(|i| envelope(instance, i)).collect();
                raw(producer, &topic, instance, events).await
            } else {
                pipeline(brokers, &format!("r{round}{run}"), one, true, None).await
            };
        }
        rounds.push((rates[0], rates[1]));
    }
    rounds
}

/// Profiling mode: one path only, [`PROFILE_RUNS`] times.
async fn profile(brokers: &str, run: &str, producer: &FutureProducer, path: &str) {
    let instance = format!("bench-{run}");
    let sixteen: Vec<String> = (0..16).map(|i| format!("bench-{run}-{i}")).collect();
    for i in 0..PROFILE_RUNS {
        let r = match path {
            "raw" => {
                let topic = format!("prof{run}.{i}");
                create_topics(brokers, std::slice::from_ref(&topic)).await;
                let envelopes = (0..EVENTS).map(|i| envelope(&instance, i)).collect();
                raw(producer, &topic, &instance, envelopes).await
            }
            "raw1" | "raw4" => {
                let topic = format!("prof{run}.{i}");
                create_topics(brokers, std::slice::from_ref(&topic)).await;
                let envelopes = (0..EVENTS).map(|i| envelope(&instance, i)).collect();
                let in_flight = if path == "raw1" { 1 } else { 4 };
                raw_batched(producer, &topic, &instance, envelopes, in_flight).await
            }
            "ordered" | "ordered1" => {
                pipeline(
                    brokers,
                    &format!("prof{i}{run}"),
                    std::slice::from_ref(&instance),
                    true,
                    (path == "ordered1").then_some(1),
                )
                .await
            }
            "ordered16" => pipeline(brokers, &format!("prof{i}{run}"), &sixteen, true, None).await,
            "unordered" => {
                pipeline(
                    brokers,
                    &format!("prof{i}{run}"),
                    std::slice::from_ref(&instance),
                    false,
                    None,
                )
                .await
            }
            other => {
                panic!(
                    "KAFKA_BENCH_PROFILE={other}: use raw, raw1, raw4, ordered, ordered1, ordered16 or unordered"
                )
            }
        };
        println!("{path} run {}: {r:.0} records/s", i + 1);
    }
}

#[tokio::main]
async fn main() {
    let brokers = brokers();
    let run = tag();
    let instance = format!("bench-{run}");
    let raw_topics = [
        format!("raw{run}.a"),
        format!("raw{run}.b"),
        format!("raw{run}.c"),
        format!("raw{run}.d"),
        format!("raw{run}.e"),
    ];
    create_topics(&brokers, &raw_topics).await;
    // Warm up once, then measure both paths on the same number of events, each serializing every
    // payload once. The raw loop's second topic is fresh, but the producer knows the broker.
    // One producer for both runs (connected and warmed up by the first), as the sink's is before
    // the pipeline's clock starts.
    let producer = producer(&brokers);
    if let Ok(path) = std::env::var("KAFKA_BENCH_PROFILE") {
        profile(&brokers, &run, &producer, &path).await;
        return;
    }
    let _warm = raw(
        &producer,
        &raw_topics[0],
        &instance,
        (0..EVENTS).map(|i| envelope(&instance, i)).collect(),
    )
    .await;
    let raw_rate = raw(
        &producer,
        &raw_topics[1],
        &instance,
        (0..EVENTS).map(|i| envelope(&instance, i)).collect(),
    )
    .await;
    let raw_latency = raw_paced(&producer, &[(raw_topics[2].clone(), instance.clone())]).await;
    // The same over 16 topics (one per instance), as the pipeline's 16-instance row.
    let raw16: Vec<(String, String)> = (0..16)
        .map(|i| (format!("raw{run}.t{i}"), format!("bench-{run}-{i}")))
        .collect();
    create_topics(
        &brokers,
        &raw16.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
    )
    .await;
    let raw16_latency = raw_paced(&producer, &raw16).await;
    // The raw loop shaped like the dispatcher's delivery (batches of 1 024, acknowledgements
    // awaited per batch): 1 batch in flight (one ordered key) and 4 (4 workers).
    let raw1 = raw_batched(
        &producer,
        &raw_topics[3],
        &instance,
        (0..EVENTS).map(|i| envelope(&instance, i)).collect(),
        1,
    )
    .await;
    let raw4 = raw_batched(
        &producer,
        &raw_topics[4],
        &instance,
        (0..EVENTS).map(|i| envelope(&instance, i)).collect(),
        4,
    )
    .await;
    let one = [instance.clone()];
    let paired = paired_rounds(&brokers, &run, &producer, &instance, &one).await;
    let sixteen: Vec<String> = (0..16).map(|i| format!("bench-{run}-{i}")).collect();
    // As before ADR 0012 (one batch per key in flight), for comparison in the same run.
    let before = pipeline(&brokers, &format!("b1{run}"), &one, true, Some(1)).await;
    let mut rows = Vec::new();
    for (label, prefix, instances, ordered, shape) in [
        (
            "Dispatcher + KafkaSink, ordered (default), 1 instance",
            "p1",
            &one[..],
            true,
            raw4,
        ),
        (
            "Dispatcher + KafkaSink, ordered (default), 16 instances",
            "p16",
            &sixteen[..],
            true,
            raw4,
        ),
        (
            "Dispatcher + KafkaSink, unordered, 1 instance",
            "u1",
            &one[..],
            false,
            raw4,
        ),
    ] {
        let r = pipeline(&brokers, &format!("{prefix}{run}"), instances, ordered, None).await;
        let latency = pipeline_paced(&brokers, &format!("l{prefix}{run}"), instances, ordered).await;
        rows.push((label, r, shape, latency));
    }
    println!(
        "\n| path ({EVENTS} events of ~1 KB, broker {brokers}) | records/s | ratio | ratio to the same-shape raw loop | p50 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| raw rdkafka loop (one topic, produce all, then await every ack) | {raw_rate:.0} | 1.00× | | {} | {} |",
        ms(raw_latency.0),
        ms(raw_latency.1)
    );
    for (label, r) in [
        (
            "raw rdkafka loop, batches of 1 024, acks awaited per batch, 1 in flight",
            raw1,
        ),
        (
            "raw rdkafka loop, batches of 1 024, acks awaited per batch, 4 in flight",
            raw4,
        ),
    ] {
        println!("| {label} | {r:.0} | {:.2}× | | | |", r / raw_rate);
    }
    println!(
        "| raw rdkafka loop, latency over 16 topics (one per instance) | | | | {} | {} |",
        ms(raw16_latency.0),
        ms(raw16_latency.1)
    );
    println!(
        "| Dispatcher + KafkaSink, ordered, 1 instance, 1 batch per key in flight (before ADR 0012) | {before:.0} | {:.2}× | {:.2}× | | |",
        before / raw_rate,
        before / raw1
    );
    for (label, r, shape, (p50, p99)) in rows {
        println!(
            "| {label} | {r:.0} | {:.2}× | {:.2}× | {} | {} |",
            r / raw_rate,
            r / shape,
            ms(p50),
            ms(p99)
        );
    }
    println!(
        "\n| paired rounds: raw rdkafka loop vs Dispatcher + KafkaSink, ordered (default), 1 instance | raw records/s | pipeline records/s | ratio |"
    );
    println!("|---|---:|---:|---:|");
    let mut ratios = Vec::with_capacity(ROUNDS);
    for (round, (raw, pipe)) in paired.iter().enumerate() {
        println!(
            "| round {} | {raw:.0} | {pipe:.0} | {:.2}× |",
            round + 1,
            pipe / raw
        );
        ratios.push(pipe / raw);
    }
    println!(
        "| **median of the {ROUNDS} rounds' ratios** | | | **{:.2}×** |",
        common::median(ratios)
    );
    println!(
        "\nrecords/s: {EVENTS} events handed over at once, until the last is acknowledged. p50/p99: \
         {PACED} events offered one at a time at {RATE:.0}/s, each from its hand-over (raw: `send_result`; \
         pipeline: `Dispatcher::emit`) to the broker's acknowledgement (raw: its delivery future; pipeline: \
         `KafkaSink::send` returned it acknowledged). Same-shape raw loop: the row with 1 batch per key in \
         flight against 1 batch in flight, the others against 4 (the closest to 5 per key)."
    );
}
