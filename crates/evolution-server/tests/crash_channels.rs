//! Crash safety with several channels at once: one instance routed to a local webhook receiver,
//! RabbitMQ, NATS JetStream and Kafka (the machine's shared test brokers, `scripts/services`).
//! Producers post batches continuously while the server is SIGKILLed at random moments
//! (`KILLS` times, restarted each time on the same data directory). At the end every event whose
//! `POST /events` was acknowledged (202) must have reached every one of the four channels, as seen
//! by independent consumers running in the test process: duplicates allowed, losses not.
//!
//! The kill delays come from a seeded generator; the seed is printed, and
//! `EVOLUTION_TEST_SEED=<seed>` replays the same delays.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use common::{API_KEY, Receiver, Server, service_env, unique};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Events acknowledged in all (the producers stop once this many were acknowledged).
const EVENTS: usize = 4_000;
/// Events per `POST /events`.
const PER_REQUEST: usize = 50;
/// Concurrent producers.
const PRODUCERS: usize = 3;
/// SIGKILL / restart cycles.
const KILLS: usize = 3;
/// Each kill comes this long (uniformly drawn, milliseconds) after the (re)start.
const KILL_DELAY_MS: std::ops::Range<u64> = 150..1_500;
/// How long every acknowledged id has to reach every channel after the last batch.
const DRAIN: Duration = Duration::from_secs(60);

const CHANNELS: [&str; 4] = ["webhook", "rabbitmq", "nats", "kafka"];

/// splitmix64: a small seeded generator, so that a failing run's delays can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, r: std::ops::Range<u64>) -> u64 {
        r.start + self.next() % (r.end - r.start)
    }
}

/// Event ids seen by one consumer, duplicates included, in arrival order.
type Seen = Arc<Mutex<Vec<String>>>;

// ---------------------------------------------------------------------------------------------
// Consumers (they live in the test process, so they outlive every server kill)
// ---------------------------------------------------------------------------------------------

/// The specification's RabbitMQ consumer: an exclusive queue bound to the topic exchange with
/// `evolution.<instance>.*`.
async fn rabbitmq_consumer(uri: &str, exchange: &str, pattern: &str) -> (Connection, Seen) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let connection = common::amqp_consumer(uri, exchange, pattern, move |delivery| {
        sink.lock().unwrap().push(payload_id(&delivery.data));
    })
    .await;
    (connection, seen)
}

/// Reads the JetStream stream `stream` from its start, as soon as the sink created it.
fn nats_consumer(client: async_nats::Client, stream: String) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let js = async_nats::jetstream::new(client);
        let stream = loop {
            if let Ok(s) = js.get_stream(&stream).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..pull::Config::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        while let Some(message) = messages.next().await {
            if let Ok(m) = message {
                let id = payload_id(&m.payload);
                sink.lock().unwrap().push(id);
            }
        }
    });
    (seen, task)
}

/// Every message now in the JetStream stream `stream`, read by a fresh consumer from the start (a
/// second look when the live consumer seems to have missed some: on a loaded machine it can stall).
async fn reread_stream(client: async_nats::Client, stream: &str) -> Vec<String> {
    let js = async_nats::jetstream::new(client);
    let Ok(stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(consumer) = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..pull::Config::default()
        })
        .await
    else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    loop {
        let Ok(mut batch) = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
        else {
            return ids;
        };
        let before = ids.len();
        while let Some(Ok(message)) = batch.next().await {
            ids.push(payload_id(&message.payload));
        }
        if ids.len() == before {
            return ids;
        }
    }
}

/// Reads partition 0 of `topic` from the beginning (partition assignment, no group: tansu's group
/// joins are slow); a topic that does not exist yet reads as empty until it does.
fn kafka_consumer(brokers: &str, topic: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let consumer = common::kafka_reader(brokers, topic);
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok(message) = consumer.recv().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let header = message.headers().and_then(|h| {
                h.iter()
                    .find(|header| header.key == "id")
                    .and_then(|header| header.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            let id = header.unwrap_or_else(|| payload_id(message.payload().unwrap_or_default()));
            sink.lock().unwrap().push(id);
        }
    });
    (seen, task)
}

/// The payload's `id`.
fn payload_id(raw: &[u8]) -> String {
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Producers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    /// Events in every request sent, answered or not.
    sent: AtomicUsize,
    /// Requests answered with something else than 202 (a server being killed), or not answered.
    failed_requests: AtomicUsize,
    acked: Mutex<Vec<String>>,
}

/// Posts batches to `events_url` (`…/events/{instance}`) until `EVENTS` are acknowledged in all or the server goes away.
async fn produce(events_url: String, client: reqwest::Client, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) && tally.acked.lock().unwrap().len() < EVENTS {
        let events: Vec<Value> = (0..PER_REQUEST)
            .map(|i| json!({"event": "MESSAGES_UPSERT", "data": {"n": n + i, "text": "crash test"}}))
            .collect();
        n += PER_REQUEST;
        tally.sent.fetch_add(PER_REQUEST, Ordering::Relaxed);
        let sent = client
            .post(&events_url)
            .header("apikey", API_KEY)
            .timeout(Duration::from_secs(30))
            .json(&events)
            .send()
            .await;
        let body = match sent {
            Ok(resp) if resp.status().as_u16() == 202 => resp.json::<Value>().await.ok(),
            _ => None,
        };
        let Some(body) = body else {
            tally.failed_requests.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ids = body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned());
        tally.acked.lock().unwrap().extend(ids);
    }
}

/// Distinct ids of `seen` that are in `acked`.
fn covered(seen: &Seen, acked: &HashSet<String>) -> usize {
    let seen = seen.lock().unwrap();
    let distinct: HashSet<&String> = seen.iter().collect();
    distinct.iter().filter(|id| acked.contains(**id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_event_on_any_channel() {
    let (Some(amqp), Some(nats), Some(brokers)) = (
        service_env("EVOLUTION_TEST_RABBITMQ_URI"),
        service_env("EVOLUTION_TEST_NATS_URL"),
        service_env("EVOLUTION_TEST_KAFKA_BROKERS"),
    ) else {
        return;
    };
    let seed = std::env::var("EVOLUTION_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (EVOLUTION_TEST_SEED={seed} replays the kill delays)");
    let mut rng = Rng(seed);

    // Names of this run only: the brokers are shared with other tests and earlier runs.
    let tag = unique();
    let instance = format!("crash-{tag}");
    let exchange = format!("evolution-crash-{tag}");
    let nats_prefix = format!("evocrash{tag}");
    let stream = format!("CRASH_{tag}");
    let topic = format!("evolution.{instance}.messages-upsert");

    let receiver = Receiver::start().await;
    let (amqp_connection, rabbitmq_seen) =
        rabbitmq_consumer(&amqp, &exchange, &format!("evolution.{instance}.*")).await;
    let nats_client = async_nats::connect(&nats).await.unwrap();
    let (nats_seen, nats_task) = nats_consumer(nats_client.clone(), stream.clone());

    let log_dir = common::temp_dir("crash-channels-log");
    let log = log_dir.join("server.log");
    let mut server = Server::start(
        "crash-channels",
        &[
            ("EVOLUTION_TEST_LOG", log.to_str().unwrap()),
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &amqp),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            // The per-event durable queue only piles up copies here (the consumer reads its own
            // exclusive queue): classic spares the shared broker quorum queues' disk writes.
            ("RABBITMQ_QUEUE_TYPE", "classic"),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &nats),
            ("NATS_PREFIX_KEY", &nats_prefix),
            ("NATS_JETSTREAM", "true"),
            ("NATS_JETSTREAM_STREAM", &stream),
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_BROKERS", &brokers),
            ("KAFKA_AUTO_CREATE_TOPICS", "true"),
        ],
    )
    .await;
    let events = json!(["MESSAGES_UPSERT"]);
    let (status, body) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({
                "instanceName": instance,
                "webhook": {"enabled": true, "url": receiver.url("/hook"), "events": events},
                "rabbitmq": {"enabled": true, "events": events},
                "nats": {"enabled": true, "events": events},
                "kafka": {"enabled": true, "events": events},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (kafka_seen, kafka_task) = kafka_consumer(&brokers, &topic);

    let webhook_seen: Seen = Arc::default();
    let seen_of = |channel: &str| -> Seen {
        match channel {
            "webhook" => {
                let ids: Vec<String> = receiver
                    .hits()
                    .iter()
                    .filter_map(|h| h.body["id"].as_str().map(str::to_owned))
                    .collect();
                *webhook_seen.lock().unwrap() = ids;
                Arc::clone(&webhook_seen)
            }
            "rabbitmq" => Arc::clone(&rabbitmq_seen),
            "nats" => Arc::clone(&nats_seen),
            _ => Arc::clone(&kafka_seen),
        }
    };

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let mut interrupted = 0;
    for kill in 1..=KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                tokio::spawn(produce(
                    server.url(&format!("/events/{instance}")),
                    server.client.clone(),
                    Arc::clone(&tally),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        let delay = rng.range(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            p.await.unwrap();
        }
        let acked: HashSet<String> = tally.acked.lock().unwrap().iter().cloned().collect();
        let delivered: Vec<usize> = CHANNELS.iter().map(|c| covered(&seen_of(c), &acked)).collect();
        if delivered.iter().any(|d| *d < acked.len()) {
            interrupted += 1;
        }
        eprintln!(
            "kill {kill}: SIGKILL {delay} ms after the start, {} acknowledged so far, delivered so far: {}",
            acked.len(),
            CHANNELS
                .iter()
                .zip(&delivered)
                .map(|(c, d)| format!("{c} {d}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        server = server.restart().await;
    }
    // The rest, on the last server.
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            tokio::spawn(produce(
                server.url(&format!("/events/{instance}")),
                server.client.clone(),
                Arc::clone(&tally),
                Arc::clone(&stop),
            ))
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let acked: HashSet<String> = tally.acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() >= EVENTS,
        "the last server acknowledged the rest ({} of {EVENTS}); server log: {}",
        acked.len(),
        log.display()
    );
    assert_eq!(
        acked.len(),
        tally.acked.lock().unwrap().len(),
        "acknowledged ids are unique"
    );

    let deadline = Instant::now() + DRAIN;
    let lost: HashMap<&str, usize> = loop {
        let lost: HashMap<&str, usize> = CHANNELS
            .iter()
            .map(|c| (*c, acked.len() - covered(&seen_of(c), &acked)))
            .collect();
        if lost.values().all(|n| *n == 0) || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut lost = lost;
    if lost.values().any(|n| *n > 0) {
        // What the server still holds, and what the NATS stream itself holds: tells a delivery
        // stuck in the outbox from a test consumer that fell behind.
        for channel in CHANNELS {
            let (_, pending) = server
                .call(
                    "GET",
                    &format!("/deliveries/{instance}?status=pending&channel={channel}&limit=10000"),
                    Some(API_KEY),
                    None,
                )
                .await;
            eprintln!(
                "  {channel:>8}: {} deliveries still pending in the server",
                pending.as_array().map_or(0, Vec::len)
            );
        }
        let reread = reread_stream(nats_client.clone(), &stream).await;
        let reread: Seen = Arc::new(Mutex::new(reread));
        let missing = acked.len() - covered(&reread, &acked);
        eprintln!(
            "      nats: the stream read again from the start holds {} of the acknowledged ids",
            acked.len() - missing
        );
        lost.insert("nats", lost["nats"].min(missing));
    }
    let sent = tally.sent.load(Ordering::Relaxed);
    eprintln!(
        "sent {sent} events, acknowledged {} ({} requests unanswered or refused at a kill), {KILLS} kills, {:.1} s",
        acked.len(),
        tally.failed_requests.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    for channel in CHANNELS {
        let seen = seen_of(channel);
        let seen = seen.lock().unwrap();
        let distinct: HashSet<&String> = seen.iter().collect();
        eprintln!(
            "  {channel:>8}: received {}, distinct ids {} (acknowledged {}, stored but unacknowledged {}), \
             duplicates {}, lost {}",
            seen.len(),
            distinct.len(),
            distinct.iter().filter(|id| acked.contains(**id)).count(),
            distinct.iter().filter(|id| !acked.contains(**id)).count(),
            seen.len() - distinct.len(),
            lost[channel]
        );
    }

    // Clean up what this run created on the shared brokers (the Kafka topic stays, as in the
    // other tests: tansu keeps it in memory until it stops).
    drop(server);
    nats_task.abort();
    kafka_task.abort();
    let js = async_nats::jetstream::new(nats_client);
    let _ignored = js.delete_stream(&stream).await;
    if let Ok(channel) = amqp_connection.create_channel().await {
        let _ignored = channel
            .queue_delete(
                format!("evolution.{instance}.messages-upsert").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ignored = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }

    assert!(
        interrupted > 0,
        "no kill left an acknowledged event undelivered: the kills did not interrupt delivery"
    );
    assert!(
        lost.values().all(|n| *n == 0),
        "acknowledged events lost after SIGKILL: {lost:?}; server log: {}",
        log.display()
    );
    std::fs::remove_dir_all(&log_dir).ok();
}
