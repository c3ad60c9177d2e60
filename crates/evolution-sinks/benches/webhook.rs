//! Webhook deliveries per second through `Dispatcher` + `WebhookSink` versus a raw reqwest loop
//! doing the same work (same payloads, same number of requests in flight, same loopback
//! receiver), in one run.
//!
//! Run: `cargo bench -p evolution-sinks --bench webhook` — prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use evolution_events::{Channel, EventEnvelope, EventKind, GlobalSettings, InstanceName, InstanceSettings};
use evolution_outbox::MemoryOutbox;
use evolution_sinks::webhook::network::parse_networks;
use evolution_sinks::webhook::{WebhookConfig, WebhookSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};

const EVENTS: usize = 20_000;
const IN_FLIGHT: usize = 32;

async fn receiver() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let app = axum::Router::new().fallback(move || {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, count)
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

/// `IN_FLIGHT` tasks serialize each event and POST it with one shared client, with the same
/// headers the sink sends (content type, user agent, idempotency key).
async fn raw(url: &str, envelopes: Arc<Vec<EventEnvelope>>) -> f64 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
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
                    let resp = client
                        .post(&url)
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

/// The same events through the dispatcher (memory outbox, unordered, `IN_FLIGHT` workers).
async fn pipeline(url: &str, envelopes: Vec<EventEnvelope>, count: &AtomicU64) -> f64 {
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
    let before = count.load(Ordering::Relaxed);
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
    wait(count, before + EVENTS as u64).await;
    let r = rate(start);
    dispatcher.shutdown(Duration::from_secs(5)).await;
    r
}

#[tokio::main]
async fn main() {
    let (url, count) = receiver().await;
    let envelopes: Vec<EventEnvelope> = (0..EVENTS).map(envelope).collect();
    // Warm up once, then measure both paths on the same events, each serializing every payload once.
    let _warm = raw(&url, Arc::new(envelopes.clone())).await;
    let raw_rate = raw(&url, Arc::new(envelopes.clone())).await;
    let pipe_rate = pipeline(&url, envelopes, &count).await;
    println!(
        "\n| path ({IN_FLIGHT} requests in flight, {EVENTS} events of ~1 KB, loopback receiver) | deliveries/s |"
    );
    println!("|---|---:|");
    println!("| raw reqwest loop | {raw_rate:.0} |");
    println!("| Dispatcher + WebhookSink (memory outbox) | {pipe_rate:.0} |");
    println!("| ratio | {:.2}× |", pipe_rate / raw_rate);
}
