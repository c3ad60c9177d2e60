//! End-to-end benchmarks of the server binary (release build, SQLite outbox, loopback only):
//!
//! - `throughput`: events accepted per second by `POST /events` (single events and batches,
//!   concurrent producers) and events delivered per second to a loopback webhook receiver;
//! - `latency`: p50/p99 from the moment an event is due to be posted until its `202`, and until it
//!   reaches a webhook receiver and a NATS subscriber, at a fixed offered rate below saturation;
//! - `isolation`: healthy webhook + NATS delivery with and without one extra instance whose
//!   webhook never answers;
//! - `footprint`: server RSS idle, with 1 000 000 pending deliveries (receiver down), and the time
//!   to drain them once the receiver is back.
//!
//! Run: `cargo bench -p evolution-server --bench server [-- SCENARIO…]` (all by default). The
//! `latency` and `isolation` scenarios need NATS (`EVOLUTION_TEST_NATS_URL`, from
//! `scripts/services env`). Prints Markdown tables; `docs/benchmarks.md` records the results.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{API_KEY, Server};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A receiver that only counts (so it is never the bottleneck).
async fn counting_receiver() -> (String, Arc<AtomicU64>) {
    counting_receiver_on(0).await
}

/// [`counting_receiver`] on `port` (0: any free port).
async fn counting_receiver_on(port: u16) -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let app = axum::Router::new().fallback(move || {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
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

type Rows = Vec<(String, String)>;

async fn throughput(rows: &mut Rows) {
    // The durable accept path: every event is stored with its webhook delivery, and the receiver
    // never answers, so delivery work does not compete for the CPU.
    let stalled = stalled_receiver().await;
    let (server, names) = setup("bench-ingest", 8, Some(&stalled), &[]).await;
    let single = ingest(&server, &names, 64, 1, 20_000).await;
    rows.push((
        "durable ingest (stored with a webhook delivery each), single events, 64 producers, 20 000 events (accepted)"
            .into(),
        format!("{single:.0} events/s"),
    ));
    let batch = ingest(&server, &names, 8, 500, 200_000).await;
    rows.push((
        "durable ingest (stored with a webhook delivery each), batches of 500, 8 producers, 200 000 events (accepted)"
            .into(),
        format!("{batch:.0} events/s"),
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
        rows.push((format!("{label} (accepted)"), format!("{accepted:.0} events/s")));
        rows.push((
            format!("{label} (accepted and delivered)"),
            format!("{delivered:.0} events/s"),
        ));
        drop(server);
    }
}

/// When each event (by its number `n`, carried as `data.key.id = MSG{n}`) arrived.
type Arrivals = Arc<Mutex<HashMap<usize, Instant>>>;

fn event_number(body: &[u8]) -> Option<usize> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["data"]["key"]["id"].as_str()?.strip_prefix("MSG")?.parse().ok()
}

/// A webhook receiver that records when each event arrived.
async fn timing_receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let a = Arc::clone(&arrivals);
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let a = Arc::clone(&a);
        async move {
            let now = Instant::now();
            if let Some(n) = event_number(&body) {
                a.lock().unwrap().entry(n).or_insert(now);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrivals)
}

/// A NATS subscriber on `subject` that records when each event arrived, skipping subjects that
/// contain `skip`.
async fn nats_subscriber(url: &str, subject: String, skip: Option<String>) -> Arrivals {
    let client = async_nats::connect(url).await.unwrap();
    let mut subscription = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    let arrivals: Arrivals = Arc::default();
    let a = Arc::clone(&arrivals);
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscription.next().await {
            let now = Instant::now();
            if skip
                .as_deref()
                .is_some_and(|s| message.subject.as_str().contains(s))
            {
                continue;
            }
            if let Some(n) = event_number(&message.payload) {
                a.lock().unwrap().entry(n).or_insert(now);
            }
        }
    });
    arrivals
}

fn nats_url() -> String {
    std::env::var("EVOLUTION_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!("EVOLUTION_TEST_NATS_URL is not set: run `eval \"$(scripts/services env)\"` first")
    })
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos % 0xffff_ffff)
}

/// The NATS settings of a server delivering every instance's `MESSAGES_UPSERT` under `prefix`.
fn nats_env(url: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("NATS_ENABLED", "true"),
        ("NATS_URI", url),
        ("NATS_PREFIX_KEY", prefix),
        ("NATS_GLOBAL_ENABLED", "true"),
        ("NATS_EVENTS_MESSAGES_UPSERT", "true"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Latencies from each event's due time to its arrival; (count, p50, p99, max).
fn latencies(due: &HashMap<usize, Instant>, arrivals: &HashMap<usize, Instant>) -> (usize, String) {
    let mut all: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(n, at)| due.get(n).map(|d| at.saturating_duration_since(*d)))
        .collect();
    all.sort();
    let text = format!(
        "p50 {}, p99 {}, max {}",
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    (all.len(), text)
}

/// Single events at a fixed rate (`BENCH_LATENCY_RATE`, default 1 000/s, for 10 s), each posted
/// at its due time whatever the earlier ones are doing, so a slow answer does not hide the wait of
/// the next (no coordinated omission), to 16 instances whose events go to a webhook receiver and
/// to NATS.
async fn latency(rows: &mut Rows) {
    let rate: u64 = std::env::var("BENCH_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(1_000);
    let events = usize::try_from(rate * 10).unwrap();
    let url = nats_url();
    let prefix = format!("lat{}", unique());
    let nats = nats_subscriber(&url, format!("{prefix}.>"), None).await;
    let (hook, webhook) = timing_receiver().await;
    let env = nats_env(&url, &prefix);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (server, names) = setup("bench-latency", 16, Some(&hook), &env).await;
    let accepted: Arrivals = Arc::default();
    let mut due = HashMap::new();
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(events);
    for n in 0..events {
        let at = start + Duration::from_micros(1_000_000 * n as u64 / rate);
        due.insert(n, at);
        tokio::time::sleep_until(at.into()).await;
        let client = server.client.clone();
        let target = server.url(&format!("/events/{}", names[n % names.len()]));
        let accepted = Arc::clone(&accepted);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(target)
                .header("apikey", API_KEY)
                .json(&payload(n))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            accepted.lock().unwrap().insert(n, Instant::now());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (webhook.lock().unwrap().len() < events || nats.lock().unwrap().len() < events)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let label = format!("{events} single events at {rate}/s over 16 instances, ~1 KB");
    for (what, arrivals) in [
        ("due → 202 (durably stored)", &accepted),
        ("due → webhook receiver", &webhook),
        ("due → NATS subscriber", &nats),
    ] {
        let (n, text) = latencies(&due, &arrivals.lock().unwrap());
        rows.push((format!("{label}: {what}"), format!("{n} / {events}; {text}")));
    }
    drop(server);
}

/// Events delivered per second to the healthy destinations (a webhook receiver and NATS, 16
/// instances, batches of 100 from 8 producers), with and without one extra instance whose
/// webhook never answers getting a 17th share of the events on top.
async fn isolation(rows: &mut Rows) {
    const EVENTS: usize = 20_000;
    let url = nats_url();
    let mut runs: Vec<(bool, f64)> = Vec::new();
    // Alternate, twice each: the machine's noise is larger than the effect measured.
    for stalled in [false, true, true, false] {
        let prefix = format!("iso{}", unique());
        let nats = nats_subscriber(&url, format!("{prefix}.>"), Some(".stalled.".into())).await;
        let (hook, webhook) = timing_receiver().await;
        let env = nats_env(&url, &prefix);
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("WEBHOOK_WORKERS", "64"));
        let (server, names) = setup("bench-isolation", 16, Some(&hook), &env).await;
        let mut side = None;
        if stalled {
            let never = stalled_receiver().await;
            let body = json!({"instanceName": "stalled",
                "webhook": {"url": never, "events": ["MESSAGES_UPSERT"]}});
            let (status, resp) = server
                .call("POST", "/instance/create", Some(API_KEY), Some(body))
                .await;
            assert_eq!(status, 201, "{resp}");
            // One producer keeps feeding the stalled instance while the healthy ones run.
            let client = server.client.clone();
            let target = server.url("/events/stalled");
            side = Some(tokio::spawn(async move {
                for n in 0..EVENTS / 16 / 100 {
                    let body: Vec<Value> = (0..100).map(|i| payload(1_000_000 + n * 100 + i)).collect();
                    let resp = client
                        .post(&target)
                        .header("apikey", API_KEY)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 202);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        let start = Instant::now();
        ingest(&server, &names, 8, 100, EVENTS).await;
        let deadline = start + Duration::from_secs(300);
        while (webhook.lock().unwrap().len() < EVENTS || nats.lock().unwrap().len() < EVENTS)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = (2 * EVENTS) as f64 / start.elapsed().as_secs_f64();
        assert_eq!(
            webhook.lock().unwrap().len(),
            EVENTS,
            "every healthy webhook delivery"
        );
        assert_eq!(nats.lock().unwrap().len(), EVENTS, "every healthy NATS delivery");
        if let Some(side) = side {
            side.await.unwrap();
        }
        runs.push((stalled, rate));
        drop(server);
    }
    let best = |stalled: bool| {
        runs.iter()
            .filter(|(s, _)| *s == stalled)
            .map(|(_, r)| *r)
            .fold(0.0_f64, f64::max)
    };
    let list = |stalled: bool| {
        runs.iter()
            .filter(|(s, _)| *s == stalled)
            .map(|(_, r)| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (healthy, with_stall) = (best(false), best(true));
    let label = format!(
        "{EVENTS} events in batches of 100 → webhook + NATS (16 instances): healthy deliveries/s, best of 2"
    );
    rows.push((
        format!("{label}, alone (runs: {})", list(false)),
        format!("{healthy:.0}"),
    ));
    rows.push((
        format!(
            "{label}, with a 17th instance whose webhook never answers (runs: {})",
            list(true)
        ),
        format!("{with_stall:.0} ({:+.1} %)", (with_stall / healthy - 1.0) * 100.0),
    ));
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_size_mb(dir: &std::path::Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / 1_048_576.0;
    mb
}

/// RSS idle; 1 000 000 events accepted for a webhook whose receiver is down (connection refused,
/// retried every 1–2 s, ordered per instance over 16 instances); RSS then; the receiver comes
/// back on the same port and the backlog drains.
async fn footprint(rows: &mut Rows) {
    const EVENTS: usize = 1_000_000;
    let port = common::free_port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let (server, names) = setup(
        "bench-footprint",
        16,
        Some(&hook),
        &[
            ("EVENTS_MAX_BACKLOG", "2000000"),
            ("WEBHOOK_WORKERS", "64"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "100000"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "2"),
        ],
    )
    .await;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = rss(pid);
    let start = Instant::now();
    let accepted = ingest(&server, &names, 8, 500, EVENTS).await;
    let ingest_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (pending, peak_ingest) = rss(pid);
    let disk = dir_size_mb(&server.data_dir);

    // The receiver comes back on the same port.
    let back = Instant::now();
    let (_, count) = counting_receiver_on(port).await;
    let mut first = None;
    let deadline = back + Duration::from_secs(1_800);
    let total = u64::try_from(EVENTS).unwrap();
    while count.load(Ordering::Relaxed) < total {
        if first.is_none() && count.load(Ordering::Relaxed) > 0 {
            first = Some(back.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "drain stalled at {} of {EVENTS}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = back.elapsed();
    let (after, peak) = rss(pid);
    rows.push((
        "server RSS, idle (16 instances, no events)".into(),
        format!("{idle:.1} MB"),
    ));
    rows.push((
        format!("accepting {EVENTS} events in batches of 500, receiver down"),
        format!(
            "{:.1} s ({accepted:.0} events/s), SQLite files {disk:.0} MB",
            ingest_time.as_secs_f64()
        ),
    ));
    rows.push((
        format!("server RSS with {EVENTS} pending deliveries (peak while accepting)"),
        format!("{pending:.1} MB ({peak_ingest:.1} MB)"),
    ));
    rows.push((
        format!("drain of {EVENTS} once the receiver is back (first delivery after)"),
        format!(
            "{:.1} s, {:.0} deliveries/s ({:.1} s)",
            drain.as_secs_f64(),
            EVENTS as f64 / drain.as_secs_f64(),
            first.unwrap_or_default().as_secs_f64()
        ),
    ));
    rows.push((
        "server RSS after the drain (peak over the run)".into(),
        format!("{after:.1} MB ({peak:.1} MB)"),
    ));
    drop(server);
}

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = ["throughput", "latency", "isolation", "footprint"];
    if let Some(unknown) = wanted.iter().find(|w| !all.contains(&w.as_str())) {
        panic!("unknown scenario `{unknown}`: choose from {all:?}");
    }
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    for name in all {
        if !run(name) {
            continue;
        }
        let mut rows = Rows::new();
        match name {
            "throughput" => throughput(&mut rows).await,
            "latency" => latency(&mut rows).await,
            "isolation" => isolation(&mut rows).await,
            _ => footprint(&mut rows).await,
        }
        println!("\n| {name} | result |");
        println!("|---|---:|");
        for (label, value) in &rows {
            println!("| {label} | {value} |");
        }
    }
}
