//! Publishes per second to NATS through `Dispatcher` + `NatsSink` versus a raw async-nats loop
//! doing the same work, on the same server, in one run: 20 000 events of ~1 KB over 16 instances
//! (16 subjects), the sink's headers, batches of 256, 4 batches in flight (the dispatcher's 4
//! workers; the raw loop's 4 tasks on one client), [`ROUNDS`] rounds that each time both paths
//! back to back; the ratio is the median of the rounds' ratios. Core: publish the batch, then flush. JetStream:
//! publish the batch into a stream, then await every acknowledgement.
//!
//! A second, fixed-rate phase per mode measures latency: [`PACED`] events offered one at a time at
//! [`RATE`] per second (well below both paths' saturation), each timed from its hand-over (raw: its
//! task starting the publish; pipeline: the `Dispatcher::emit` call) to its arrival at a subscriber
//! of the subjects (its own connection, keyed by the `id` header) — one clock, one definition for
//! both paths and both modes.
//!
//! Run: `eval "$(scripts/services env)"; cargo bench -p evolution-sinks --bench nats`
//! (default server `nats://127.0.0.1:4222`, JetStream enabled). Prints a Markdown table.
//!
//! Profiling: with `NATS_BENCH_PROFILE=raw|core` the bench runs only that core-mode path (`raw`:
//! the raw loop; `core`: the pipeline), [`PROFILE_RUNS`] times, and prints each rate — run it
//! under `perf record`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

mod common;

use common::ROUNDS;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use evolution_events::{Channel, EventEnvelope, EventKind, GlobalSettings, NamingProfile};
use evolution_outbox::{MemoryOutbox, Outbox};
use evolution_sink_testkit::bench::{Acks, ms, paced, percentiles};
use evolution_sinks::nats::{JetStreamConfig, NatsConfig, NatsMode, NatsSink, NatsUrl};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use futures_util::StreamExt as _;

const EVENTS: usize = 20_000;
const INSTANCES: usize = 16;
const BATCH: usize = 256;
const IN_FLIGHT: usize = 4;
/// Events of the fixed-rate (latency) phase, per path.
const PACED: usize = 6_000;
/// Events per second offered in the latency phase.
const RATE: f64 = 2_000.0;
/// Runs of one path in profiling mode (`NATS_BENCH_PROFILE`).
const PROFILE_RUNS: usize = 20;

/// Profiling mode: one core-mode path only, [`PROFILE_RUNS`] times.
async fn profile(url: &str, path: &str) {
    for i in 0..PROFILE_RUNS {
        let tag = format!(
            "prof{i}{}",
            &evolution_events::Uuid::now_v7().simple().to_string()[20..]
        );
        let prefix = format!("evolution{tag}");
        let events = envelopes(&tag);
        let r = match path {
            "raw" => raw(url, &prefix, false, events).await,
            "core" => dispatcher(url, &prefix, None, events).await,
            other => panic!("NATS_BENCH_PROFILE={other}: use raw or core"),
        };
        println!("{path} run {}: {r:.0} events/s", i + 1);
    }
}

/// Subscribes to `{prefix}.>` on its own connection; notes when each event (`id` header) arrives.
async fn subscriber(url: &str, prefix: &str) -> Acks {
    let client = async_nats::connect(url).await.unwrap();
    let mut subscription = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    let acks: Acks = Acks::default();
    let arrivals = acks.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscription.next().await {
            let now = Instant::now();
            if let Some(id) = message.headers.as_ref().and_then(|h| h.get("id")) {
                arrivals.note(id.as_str().to_owned(), now);
            }
        }
    });
    acks
}

fn envelopes(tag: &str) -> Vec<EventEnvelope> {
    common::envelopes(EVENTS, INSTANCES, tag)
}

fn headers(envelope: &EventEnvelope) -> HeaderMap {
    let id = envelope.id().to_string();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    headers.insert("event", "MESSAGES_UPSERT");
    headers.insert("instance", envelope.instance().as_str());
    headers.insert("id", id.as_str());
    headers.insert("Content-Type", "application/json");
    headers
}

/// The dispatcher (memory outbox, the channel's defaults) over a `NatsSink`, global route.
fn start(url: &str, prefix: &str, stream: Option<&str>) -> Dispatcher {
    let mut global = GlobalSettings::default();
    global.nats.enabled = true;
    global.nats.global_enabled = true;
    global.nats.events.insert(EventKind::MessagesUpsert);
    prefix.clone_into(&mut global.nats.prefix);
    let mode = match stream {
        None => NatsMode::Core,
        Some(name) => NatsMode::JetStream(JetStreamConfig::new(name, vec![format!("{prefix}.>")])),
    };
    let sink = NatsSink::new(NatsConfig {
        mode,
        ..NatsConfig::new(NatsUrl::parse(url).unwrap())
    })
    .unwrap();
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::default());
    Dispatcher::builder(outbox, Router::new(global).unwrap())
        .sink_with(Arc::new(sink), ChannelConfig::default_for(Channel::Nats))
        .start()
        .unwrap()
}

async fn dispatcher(url: &str, prefix: &str, stream: Option<&str>, events: Vec<EventEnvelope>) -> f64 {
    common::throughput(start(url, prefix, stream), Channel::Nats, events).await
}

/// Latency phase of the pipeline: each event given to `Dispatcher::emit` at its time.
async fn dispatcher_paced(
    url: &str,
    prefix: &str,
    stream: Option<&str>,
    events: Vec<EventEnvelope>,
) -> (Duration, Duration) {
    let acks = subscriber(url, prefix).await;
    let dispatcher = start(url, prefix, stream);
    let sent = common::emit_paced(&dispatcher, events, RATE, None).await;
    let latency = percentiles(&sent, &acks).await;
    dispatcher.shutdown(Duration::from_secs(5)).await;
    latency
}

/// Latency phase of the raw loop: each event published at its time by its own task (core: then
/// flushed; JetStream: its acknowledgement awaited), one connected client.
async fn raw_paced(
    url: &str,
    prefix: &str,
    jetstream: bool,
    events: Vec<EventEnvelope>,
) -> (Duration, Duration) {
    let acks = subscriber(url, prefix).await;
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client.clone());
    let sent = paced(events, RATE, async |envelope| {
        let (client, js) = (client.clone(), js.clone());
        let subject = format!("{prefix}.{}.messages.upsert", envelope.instance());
        tokio::spawn(async move {
            let payload = envelope.payload(NamingProfile::Seed);
            if jetstream {
                js.publish_with_headers(subject, headers(&envelope), payload)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            } else {
                client
                    .publish_with_headers(subject, headers(&envelope), payload)
                    .await
                    .unwrap();
                client.flush().await.unwrap();
            }
        });
    })
    .await;
    percentiles(&sent, &acks).await
}

async fn raw(url: &str, prefix: &str, jetstream: bool, events: Vec<EventEnvelope>) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let events = Arc::new(events);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, events, next, prefix) = (
                client.clone(),
                Arc::clone(&events),
                Arc::clone(&next),
                prefix.to_owned(),
            );
            let js = jetstream::new(client.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(BATCH, Ordering::Relaxed);
                    if first >= events.len() {
                        break;
                    }
                    let batch = &events[first..(first + BATCH).min(events.len())];
                    let mut acks = Vec::with_capacity(batch.len());
                    for envelope in batch {
                        let subject = format!("{prefix}.{}.messages.upsert", envelope.instance());
                        let payload = envelope.payload(NamingProfile::Seed);
                        if jetstream {
                            acks.push(
                                js.publish_with_headers(subject, headers(envelope), payload)
                                    .await
                                    .unwrap(),
                            );
                        } else {
                            client
                                .publish_with_headers(subject, headers(envelope), payload)
                                .await
                                .unwrap();
                        }
                    }
                    if jetstream {
                        for ack in acks {
                            ack.await.unwrap();
                        }
                    } else {
                        client.flush().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    EVENTS as f64 / start.elapsed().as_secs_f64()
}

/// The stream `name` (file storage) over `{prefix}.>`.
async fn create_stream(js: &jetstream::Context, name: &str, prefix: &str) {
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        ..stream::Config::default()
    })
    .await
    .unwrap();
}

fn main() {
    let url = std::env::var("EVOLUTION_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Ok(path) = std::env::var("NATS_BENCH_PROFILE") {
            profile(&url, &path).await;
            return;
        }
        let client = async_nats::connect(&url).await.unwrap();
        let js = jetstream::new(client);
        let mut latencies = Vec::new();
        println!("| mode | run | raw async-nats loop, events/s | Dispatcher + NatsSink, events/s | ratio |");
        println!("|---|---|---:|---:|---:|");
        for jetstream in [false, true] {
            let mode = if jetstream {
                "JetStream (acks)"
            } else {
                "core (flush)"
            };
            let (mut best_raw, mut best_dispatcher) = (0.0f64, 0.0f64);
            let mut ratios = Vec::with_capacity(ROUNDS);
            for round in 0..ROUNDS {
                let mut rates = [0.0f64; 2];
                // Alternate which path goes first, so that neither always runs on a warmer server.
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for through_dispatcher in order {
                    let slot = usize::from(through_dispatcher);
                    let tag = format!("bench{round}{slot}{}", u8::from(jetstream));
                    let prefix = format!("evolution{tag}");
                    let name = format!("BENCH_{}", tag.to_ascii_uppercase());
                    if jetstream {
                        create_stream(&js, &name, &prefix).await;
                    }
                    let events = envelopes(&tag);
                    rates[slot] = if through_dispatcher {
                        dispatcher(&url, &prefix, jetstream.then_some(name.as_str()), events).await
                    } else {
                        raw(&url, &prefix, jetstream, events).await
                    };
                    if jetstream {
                        let _ignored = js.delete_stream(&name).await;
                    }
                }
                best_raw = best_raw.max(rates[0]);
                best_dispatcher = best_dispatcher.max(rates[1]);
                ratios.push(rates[1] / rates[0]);
                println!(
                    "| {mode} | {} | {:.0} | {:.0} | {:.2} |",
                    round + 1,
                    rates[0],
                    rates[1],
                    rates[1] / rates[0]
                );
            }
            println!(
                "| {mode} | best | {best_raw:.0} | {best_dispatcher:.0} | {:.2} |",
                best_dispatcher / best_raw
            );
            let median = common::median(ratios);
            println!("| {mode} | median of the {ROUNDS} paired ratios | | | **{median:.2}** |");
            // Latency: both paths at a fixed rate, fresh subjects (and stream), raw first.
            let mut latency = Vec::new();
            for through_dispatcher in [false, true] {
                let tag = format!("lat{}{}", u8::from(through_dispatcher), u8::from(jetstream));
                let prefix = format!("evolution{tag}{}", evolution_events::Uuid::now_v7().simple());
                let name = format!("BENCH_{}", tag.to_ascii_uppercase());
                if jetstream {
                    let _ignored = js.delete_stream(&name).await;
                    create_stream(&js, &name, &prefix).await;
                }
                let events: Vec<EventEnvelope> = envelopes(&tag).into_iter().take(PACED).collect();
                latency.push(if through_dispatcher {
                    dispatcher_paced(&url, &prefix, jetstream.then_some(name.as_str()), events).await
                } else {
                    raw_paced(&url, &prefix, jetstream, events).await
                });
                if jetstream {
                    let _ignored = js.delete_stream(&name).await;
                }
            }
            latencies.push((mode, best_raw, best_dispatcher, median, latency[0], latency[1]));
        }
        println!(
            "\n| mode ({EVENTS} events of ~1 KB, {INSTANCES} subjects) | raw async-nats loop, events/s (best) | p50 | p99 | Dispatcher + NatsSink, events/s (best) | p50 | p99 | ratio (median of paired runs) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (mode, best_raw, best_dispatcher, median, raw_latency, pipe_latency) in latencies {
            println!(
                "| {mode} | {best_raw:.0} | {} | {} | {best_dispatcher:.0} | {} | {} | {:.2}× |",
                ms(raw_latency.0),
                ms(raw_latency.1),
                ms(pipe_latency.0),
                ms(pipe_latency.1),
                median
            );
        }
        println!(
            "\nevents/s: best of {ROUNDS} runs of {EVENTS} events handed over at once (ratio: the median of the \
             {ROUNDS} runs' ratios, each run timing both paths back to back, alternately first), until the last is published \
             (core: flushed; JetStream: acknowledged). p50/p99: {PACED} events offered one at a time at \
             {RATE:.0}/s, each from its hand-over (raw: its task starting the publish; pipeline: \
             `Dispatcher::emit`) to its arrival at a subscriber of the subjects."
        );
    });
}
