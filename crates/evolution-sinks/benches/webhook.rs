//! Webhook deliveries per second through `Dispatcher` + `WebhookSink` versus a raw reqwest loop
//! doing the same work (same payloads, same number of requests in flight, same loopback
//! receiver), in one run.
//!
//! A second, fixed-rate phase measures latency: [`PACED`] events offered one at a time at [`RATE`]
//! per second (well below both paths' saturation), each timed from its hand-over (raw: the task
//! starting its POST; pipeline: the `Dispatcher::emit` call) to its arrival at the receiver (the
//! handler, keyed by the `webhook-id` header) — one clock, one definition for both.
//!
//! Run: `cargo bench -p evolution-sinks --bench webhook` — prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use evolution_events::{Channel, EventEnvelope, EventKind, GlobalSettings, InstanceName, InstanceSettings};
use evolution_outbox::MemoryOutbox;
use evolution_sink_testkit::bench::{Acks, ms, paced, percentiles};
use evolution_sinks::webhook::network::parse_networks;
use evolution_sinks::webhook::{WebhookConfig, WebhookSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};

const EVENTS: usize = 20_000;
const IN_FLIGHT: usize = 32;
/// Events of the fixed-rate (latency) phase, per path.
const PACED: usize = 6_000;
/// Events per second offered in the latency phase.
const RATE: f64 = 2_000.0;

/// The loopback receiver: counts requests; while `recording`, notes when each `webhook-id`
/// arrived.
struct Receiver {
    url: String,
    count: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    arrivals: Acks,
}

async fn receiver() -> Receiver {
    let count = Arc::new(AtomicU64::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let arrivals: Acks = Acks::default();
    let (c, r, a) = (Arc::clone(&count), Arc::clone(&recording), arrivals.clone());
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let (c, r, a) = (Arc::clone(&c), Arc::clone(&r), a.clone());
        async move {
            if r.load(Ordering::Relaxed)
                && let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok())
            {
                a.note(id.to_owned(), Instant::now());
            }
            c.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        count,
        recording,
        arrivals,
    }
}

/// Runs `phase` with the receiver noting arrivals; returns its p50 and p99.
async fn measured(
    receiver: &Receiver,
    phase: impl AsyncFnOnce() -> HashMap<String, Instant>,
) -> (Duration, Duration) {
    receiver.arrivals.clear();
    receiver.recording.store(true, Ordering::Relaxed);
    let sent = phase().await;
    let latency = percentiles(&sent, &receiver.arrivals).await;
    receiver.recording.store(false, Ordering::Relaxed);
    latency
}

fn envelope(i: usize) -> EventEnvelope {
    let data = serde_json::json!({"key": {"id": format!("MSG{i:08}")}, "message": {"conversation": "x".repeat(800)}});
    EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new("bench").unwrap(),
        serde_json::value::to_raw_value(&data).unwrap(),
    )
}

async fn wait(count: &AtomicU64, expected: u64) {
    while count.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One POST with the headers the sink sends (content type, user agent, idempotency key).
async fn post(client: &reqwest::Client, url: &str, envelope: &EventEnvelope) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", evolution_sinks::webhook::DEFAULT_USER_AGENT)
        .header("webhook-id", envelope.id().to_string())
        .body(envelope.payload(evolution_events::NamingProfile::Seed))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let _body = resp.bytes().await.unwrap();
}

/// Latency phase of the raw loop: each event POSTed at its time by its own task (one shared,
/// warmed-up client).
async fn raw_paced(
    client: &reqwest::Client,
    url: &str,
    envelopes: Vec<EventEnvelope>,
) -> HashMap<String, Instant> {
    paced(envelopes, RATE, async |envelope| {
        let (client, url) = (client.clone(), url.to_owned());
        tokio::spawn(async move { post(&client, &url, &envelope).await });
    })
    .await
}

/// `IN_FLIGHT` tasks serialize each event and POST it with one shared client, with the same
/// headers the sink sends (content type, user agent, idempotency key).
async fn raw(url: &str, envelopes: Arc<Vec<EventEnvelope>>) -> f64 {
    let client = client();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, next, envelopes, url) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&envelopes),
                url.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    // Fresh envelopes (cloned before the clock started): `payload` serializes once.
                    let Some(envelope) = envelopes.get(i) else { break };
                    post(&client, &url, envelope).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    rate(start)
}

#[allow(clippy::cast_precision_loss)]
fn rate(start: Instant) -> f64 {
    EVENTS as f64 / start.elapsed().as_secs_f64()
}

/// The dispatcher (memory outbox, unordered, `IN_FLIGHT` workers) over a `WebhookSink`.
fn start(url: &str) -> (Dispatcher, InstanceSettings) {
    let sink = WebhookSink::new(WebhookConfig {
        allowed_networks: parse_networks("127.0.0.0/8").unwrap(),
        max_concurrency_per_host: IN_FLIGHT,
        ..WebhookConfig::default()
    })
    .unwrap();
    let config = ChannelConfig {
        workers: IN_FLIGHT,
        ordered: Some(false),
        ..ChannelConfig::default_for(Channel::Webhook)
    };
    let dispatcher = Dispatcher::builder(
        Arc::new(MemoryOutbox::default()),
        Router::new(GlobalSettings::default()).unwrap(),
    )
    .sink_with(Arc::new(sink), config)
    .start()
    .unwrap();
    let settings =
        InstanceSettings::from_json(&serde_json::json!({"webhook": {"enabled": true, "url": url}})).unwrap();
    (dispatcher, settings)
}

/// The same events through the dispatcher (memory outbox, unordered, `IN_FLIGHT` workers).
async fn pipeline(url: &str, envelopes: Vec<EventEnvelope>, count: &AtomicU64) -> f64 {
    let (dispatcher, settings) = start(url);
    let before = count.load(Ordering::Relaxed);
    let start = Instant::now();
    common::emit_all(&dispatcher, envelopes, Some(&settings)).await;
    wait(count, before + EVENTS as u64).await;
    let r = rate(start);
    dispatcher.shutdown(Duration::from_secs(5)).await;
    r
}

/// Latency phase of the pipeline: each event given to `Dispatcher::emit` at its time.
async fn pipeline_paced(url: &str, envelopes: Vec<EventEnvelope>) -> HashMap<String, Instant> {
    let (dispatcher, settings) = start(url);
    // One delivery first, so that the sink's connection is open, as the raw client's is.
    let before = envelope(usize::MAX);
    dispatcher.emit(before, Some(&settings)).await.unwrap();
    while dispatcher.counters(Channel::Webhook).unwrap().delivered < 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sent = common::emit_paced(&dispatcher, envelopes, RATE, Some(&settings)).await;
    // Delivered by now or soon: the caller waits for the arrivals before shutting down.
    let watcher = dispatcher.clone();
    tokio::spawn(async move {
        while watcher.counters(Channel::Webhook).unwrap().delivered < PACED as u64 + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watcher.shutdown(Duration::from_secs(5)).await;
    });
    sent
}

#[tokio::main]
async fn main() {
    let receiver = receiver().await;
    let (url, count) = (receiver.url.clone(), Arc::clone(&receiver.count));
    let envelopes: Vec<EventEnvelope> = (0..EVENTS).map(envelope).collect();
    // Warm up once, then measure both paths on the same events, each serializing every payload once.
    let _warm = raw(&url, Arc::new(envelopes.clone())).await;
    let raw_rate = raw(&url, Arc::new(envelopes.clone())).await;
    let pipe_rate = pipeline(&url, envelopes, &count).await;
    let client = client();
    post(&client, &url, &envelope(usize::MAX)).await;
    let raw_latency = measured(&receiver, async || {
        raw_paced(&client, &url, (0..PACED).map(envelope).collect()).await
    })
    .await;
    let pipe_latency = measured(&receiver, async || {
        pipeline_paced(&url, (0..PACED).map(envelope).collect()).await
    })
    .await;
    println!(
        "\n| path ({IN_FLIGHT} requests in flight, {EVENTS} events of ~1 KB, loopback receiver) | deliveries/s | ratio | p50 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| raw reqwest loop | {raw_rate:.0} | 1.00× | {} | {} |",
        ms(raw_latency.0),
        ms(raw_latency.1)
    );
    println!(
        "| Dispatcher + WebhookSink (memory outbox, unordered) | {pipe_rate:.0} | {:.2}× | {} | {} |",
        pipe_rate / raw_rate,
        ms(pipe_latency.0),
        ms(pipe_latency.1)
    );
    println!(
        "\ndeliveries/s: {EVENTS} events handed over at once, until the receiver counted the last. p50/p99: \
         {PACED} events offered one at a time at {RATE:.0}/s, each from its hand-over (raw: its POST started; \
         pipeline: `Dispatcher::emit`) to its arrival at the receiver."
    );
}
