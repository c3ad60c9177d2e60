//! Kafka records per second through `Dispatcher` + `KafkaSink` versus a raw rdkafka loop doing the
//! same work (same payloads, key and headers, same producer settings: idempotent, `acks=all`,
//! 1 ms linger), against the same broker, in one run.
//!
//! Run: `eval "$(scripts/services env kafka)"; cargo bench -p evolution-sinks --bench kafka` —
//! prints a Markdown table. The broker is `EVOLUTION_TEST_KAFKA_BROKERS` (default 127.0.0.1:9092,
//! the tansu of `scripts/services up kafka`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use evolution_events::{
    Channel, EventEnvelope, EventKind, GlobalSettings, InstanceName, InstanceSettings, NamingProfile,
};
use evolution_outbox::MemoryOutbox;
use evolution_sinks::kafka::{KafkaConfig, KafkaSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

const EVENTS: usize = 20_000;

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
        let id = envelope.id().to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
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
                value: Some(id.as_str()),
            });
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

/// The same events through the dispatcher (memory outbox, 4 workers), `instances` instances.
async fn pipeline(brokers: &str, prefix: &str, instances: &[String], ordered: bool) -> f64 {
    let sink = KafkaSink::new(KafkaConfig {
        auto_create_topics: true,
        linger: linger(),
        ..KafkaConfig::new([brokers])
    })
    .unwrap();
    let mut global = GlobalSettings::default();
    global.kafka.enabled = true;
    global.kafka.prefix = prefix.to_owned();
    let dispatcher = Dispatcher::builder(Arc::new(MemoryOutbox::default()), Router::new(global).unwrap())
        .sink_with(
            Arc::new(sink),
            ChannelConfig {
                ordered: Some(ordered),
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
    let envelopes: Vec<EventEnvelope> = (0..EVENTS)
        .map(|i| envelope(&instances[i % instances.len()], i))
        .collect();
    let start = Instant::now();
    let mut envelopes = envelopes.into_iter();
    loop {
        let chunk: Vec<_> = envelopes
            .by_ref()
            .take(500)
            .map(|e| (e, Some(&settings)))
            .collect();
        if chunk.is_empty() {
            break;
        }
        dispatcher.emit_many(chunk).await.unwrap();
    }
    while dispatcher.counters(Channel::Kafka).unwrap().delivered < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = rate(EVENTS, start);
    dispatcher.shutdown(Duration::from_secs(10)).await;
    r
}

#[tokio::main]
async fn main() {
    let brokers = brokers();
    let run = tag();
    let instance = format!("bench-{run}");
    let raw_topics = [format!("raw{run}.a"), format!("raw{run}.b")];
    create_topics(&brokers, &raw_topics).await;
    // Warm up once, then measure both paths on the same number of events, each serializing every
    // payload once. The raw loop's second topic is fresh, but the producer knows the broker.
    // One producer for both runs (connected and warmed up by the first), as the sink's is before
    // the pipeline's clock starts.
    let producer = producer(&brokers);
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
    let one = [instance.clone()];
    let sixteen: Vec<String> = (0..16).map(|i| format!("bench-{run}-{i}")).collect();
    let ordered_one = pipeline(&brokers, &format!("p1{run}"), &one, true).await;
    let ordered_sixteen = pipeline(&brokers, &format!("p16{run}"), &sixteen, true).await;
    let unordered_one = pipeline(&brokers, &format!("u1{run}"), &one, false).await;
    println!("\n| path ({EVENTS} events of ~1 KB, broker {brokers}) | records/s | ratio |");
    println!("|---|---:|---:|");
    println!("| raw rdkafka loop (one topic, produce all, then await every ack) | {raw_rate:.0} | 1.00× |");
    for (label, r) in [
        (
            "Dispatcher + KafkaSink, ordered (default), 1 instance",
            ordered_one,
        ),
        (
            "Dispatcher + KafkaSink, ordered (default), 16 instances",
            ordered_sixteen,
        ),
        ("Dispatcher + KafkaSink, unordered, 1 instance", unordered_one),
    ] {
        println!("| {label} | {r:.0} | {:.2}× |", r / raw_rate);
    }
}
