//! End-to-end throughput of the server binary: events accepted per second by `POST /events`
//! (single events and batches, concurrent producers, SQLite outbox) and events delivered per
//! second to a loopback webhook receiver.
//!
//! Run: `cargo bench -p evolution-server --bench server` (builds the release binary). Prints a
//! Markdown table; `docs/benchmarks.md` records the results.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{API_KEY, Server};
use serde_json::{Value, json};

/// A receiver that only counts (so it is never the bottleneck).
async fn counting_receiver() -> (String, Arc<AtomicU64>) {
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

/// A receiver that accepts connections and never answers.
async fn stalled_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

fn payload(i: usize) -> Value {
    json!({"event": "MESSAGES_UPSERT", "sender": "5511999999999@s.whatsapp.net", "data": {
        "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": format!("MSG{i:08}")},
        "message": {"conversation": "x".repeat(800)}, "messageTimestamp": "1234567890"}})
}

/// Posts `total` events to `instances` round-robin from `producers` tasks, `per_request` per
/// request; returns events/s.
async fn ingest(
    server: &Server,
    instances: &[String],
    producers: usize,
    per_request: usize,
    total: usize,
) -> f64 {
    let requests = total / per_request;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let client = server.client.clone();
            let base = server.url("");
            let next = Arc::clone(&next);
            let instances = instances.to_vec();
            tokio::spawn(async move {
                loop {
                    let n = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                    if n >= requests {
                        break;
                    }
                    let instance = &instances[n % instances.len()];
                    let body = if per_request == 1 {
                        payload(n)
                    } else {
                        Value::Array((0..per_request).map(|i| payload(n * per_request + i)).collect())
                    };
                    let resp = client
                        .post(format!("{base}/events/{instance}"))
                        .header("apikey", API_KEY)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = (requests * per_request) as f64 / start.elapsed().as_secs_f64();
    rate
}

async fn setup(
    name: &str,
    instances: usize,
    hook: Option<&str>,
    env: &[(&str, &str)],
) -> (Server, Vec<String>) {
    let server = Server::start(name, env).await;
    let mut names = Vec::new();
    for i in 0..instances {
        let name = format!("bench-{i}");
        let mut body = json!({"instanceName": name});
        if let Some(url) = hook {
            body["webhook"] = json!({"url": url, "events": ["MESSAGES_UPSERT"]});
        }
        let (status, resp) = server
            .call("POST", "/instance/create", Some(API_KEY), Some(body))
            .await;
        assert_eq!(status, 201, "{resp}");
        names.push(name);
    }
    (server, names)
}

async fn wait_delivered(count: &AtomicU64, expected: u64, start: Instant) -> f64 {
    let deadline = start + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < expected {
        assert!(
            Instant::now() < deadline,
            "delivery stalled at {} of {expected}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = expected as f64 / start.elapsed().as_secs_f64();
    rate
}

#[tokio::main]
async fn main() {
    let mut rows = Vec::new();

    // The durable accept path: every event is stored with its webhook delivery, and the receiver
    // never answers, so delivery work does not compete for the CPU.
    let stalled = stalled_receiver().await;
    let (server, names) = setup("bench-ingest", 8, Some(&stalled), &[]).await;
    let single = ingest(&server, &names, 64, 1, 20_000).await;
    rows.push((
        "durable ingest (stored with a webhook delivery each), single events, 64 producers, 20 000 events",
        "accepted",
        single,
    ));
    let batch = ingest(&server, &names, 8, 500, 200_000).await;
    rows.push((
        "durable ingest (stored with a webhook delivery each), batches of 500, 8 producers, 200 000 events",
        "accepted",
        batch,
    ));
    drop(server);

    // Accept and deliver to a loopback webhook receiver, per-instance order kept (default).
    for (label, ordered, producers, per_request) in [
        (
            "single events → webhook, ordered per instance, 64 producers, 16 instances",
            "true",
            64,
            1,
        ),
        (
            "single events → webhook, unordered, 64 producers, 16 instances",
            "false",
            64,
            1,
        ),
        (
            "batches of 100 → webhook, ordered per instance, 8 producers, 16 instances",
            "true",
            8,
            100,
        ),
    ] {
        let (url, count) = counting_receiver().await;
        let (server, names) = setup(
            "bench-deliver",
            16,
            Some(&url),
            &[("WEBHOOK_ORDERED", ordered), ("WEBHOOK_WORKERS", "64")],
        )
        .await;
        let total = 20_000;
        let start = Instant::now();
        let accepted = ingest(&server, &names, producers, per_request, total).await;
        let delivered = wait_delivered(&count, u64::try_from(total).unwrap(), start).await;
        rows.push((label, "accepted", accepted));
        rows.push((label, "accepted and delivered", delivered));
        drop(server);
    }

    println!("\n| scenario | events/s |");
    println!("|---|---:|");
    for (label, kind, rate) in &rows {
        println!("| {label} ({kind}) | {rate:.0} |");
    }
}
