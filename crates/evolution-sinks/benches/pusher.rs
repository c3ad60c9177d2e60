//! Pusher events per second through `Dispatcher` + `PusherSink` versus a raw loop of signed
//! reqwest calls doing the same work (same payloads and channels, `batch_events` of 10, the same
//! number of requests in flight), against the same Pusher-protocol server, in one run.
//!
//! Run: `scripts/services up pusher; eval "$(scripts/services env)"; cargo bench -p evolution-sinks
//! --bench pusher` — prints a Markdown table. The server is soketi (`EVOLUTION_TEST_PUSHER_HOST`,
//! `_PORT`, `_APP_ID`, `_KEY`, `_SECRET`; by default the values of `scripts/services`).
//!
//! A second, fixed-rate phase measures latency: [`PACED`] events offered one at a time at [`RATE`]
//! per second (well below both paths' saturation), each timed from its hand-over (raw: its task
//! starting the call; pipeline: the `Dispatcher::emit` call) to the server's acknowledgement (raw:
//! the answer to its own `POST /apps/{id}/events`; pipeline: `PusherSink::send` returned it
//! acknowledged, just before the dispatcher settles it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use evolution_events::{
    Channel, Destination, EventEnvelope, EventKind, EventSink, GlobalSettings, InstanceName,
    InstanceSettings, NamingProfile,
};
use evolution_outbox::MemoryOutbox;
use evolution_sink_testkit::bench::{Acked, Acks, ms, paced, percentiles};
use evolution_sinks::pusher::sign::signed_query;
use evolution_sinks::pusher::{PUSHER_MAX_BATCH, PusherConfig, PusherSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};

const EVENTS: usize = 20_000;
/// Instances (one Pusher channel each), so that the dispatcher's workers are not held back by
/// the order of one instance.
const INSTANCES: usize = 16;
/// Requests in flight: the dispatcher's 4 workers each send one request at a time.
const IN_FLIGHT: usize = 4;
/// Events of the fixed-rate (latency) phase, per path.
const PACED: usize = 2_000;
/// Events per second offered in the latency phase.
const RATE: f64 = 500.0;

/// The Pusher-protocol server and its app.
#[derive(Clone, Debug)]
struct Server {
    host: String,
    port: u16,
    app_id: String,
    key: String,
    secret: String,
}

impl Server {
    fn from_env() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Self {
            host: var("EVOLUTION_TEST_PUSHER_HOST", "127.0.0.1"),
            port: var("EVOLUTION_TEST_PUSHER_PORT", "6001").parse().unwrap(),
            app_id: var("EVOLUTION_TEST_PUSHER_APP_ID", "your-app-id"),
            key: var("EVOLUTION_TEST_PUSHER_KEY", "your-key"),
            secret: var("EVOLUTION_TEST_PUSHER_SECRET", "your-secret"),
        }
    }

    /// An instance's settings delivering `MESSAGES_UPSERT` to the app on this server.
    fn settings(&self) -> InstanceSettings {
        InstanceSettings::from_json(&serde_json::json!({"pusher": {
            "enabled": true, "appId": self.app_id, "key": self.key, "secret": self.secret,
            "cluster": "mt1", "useTLS": false, "host": self.host, "port": self.port,
            "events": ["MESSAGES_UPSERT"]}}))
        .unwrap()
    }
}

fn envelope(instance: &str, i: usize) -> EventEnvelope {
    let data = serde_json::json!({"key": {"id": format!("MSG{i:08}")}, "message": {"conversation": "x".repeat(800)}});
    EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new(instance).unwrap(),
        serde_json::value::to_raw_value(&data).unwrap(),
    )
}

/// The events of the throughput phase: runs of 10 of one instance, the instances in turn.
fn events(instances: &[String]) -> Vec<EventEnvelope> {
    (0..EVENTS)
        .map(|i| envelope(&instances[(i / PUSHER_MAX_BATCH) % instances.len()], i))
        .collect()
}

#[allow(clippy::cast_precision_loss)]
fn rate(n: usize, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

fn router() -> Router {
    let mut global = GlobalSettings::default();
    global.pusher.enabled = true;
    Router::new(global).unwrap()
}

/// The raw loop's side: the channel and event name of each instance, as the router computes them
/// for the pipeline, and a plain HTTP client.
struct Raw {
    server: Server,
    client: reqwest::Client,
    targets: HashMap<String, (String, String)>,
}

impl Raw {
    fn new(server: &Server, instances: &[String]) -> Self {
        let (router, settings) = (router(), server.settings());
        let targets = instances
            .iter()
            .map(|instance| {
                let routes = router.route(&envelope(instance, 0), Some(&settings)).unwrap();
                let [route] = routes.as_slice() else {
                    panic!("one Pusher route expected: {routes:?}")
                };
                let Destination::Pusher(target) = &route.destination else {
                    panic!("not a Pusher destination: {route:?}")
                };
                (instance.clone(), (target.channel.clone(), target.event.clone()))
            })
            .collect();
        Self {
            server: server.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            targets,
        }
    }

    /// One signed call: `events` alone through `/events`, several through `/batch_events`
    /// (payloads serialized once, as the sink does); panics unless the server acknowledged.
    async fn trigger(&self, events: &[EventEnvelope]) {
        let payloads: Vec<_> = events.iter().map(|e| e.payload(NamingProfile::Seed)).collect();
        let data = |i: usize| std::str::from_utf8(&payloads[i]).unwrap();
        let target = |e: &EventEnvelope| &self.targets[e.instance().as_str()];
        let (path, body) = if let [one] = events {
            let (channel, name) = target(one);
            (
                "events",
                serde_json::json!({"name": name, "channels": [channel], "data": data(0)}),
            )
        } else {
            let batch: Vec<_> = events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let (channel, name) = target(e);
                    serde_json::json!({"channel": channel, "name": name, "data": data(i)})
                })
                .collect();
            ("batch_events", serde_json::json!({ "batch": batch }))
        };
        let body = serde_json::to_vec(&body).unwrap();
        let path = format!("/apps/{}/{path}", self.server.app_id);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let query = signed_query(
            "POST",
            &path,
            &self.server.key,
            &self.server.secret,
            now,
            Some(&body),
            &[],
        );
        let url = format!("http://{}:{}{path}?{query}", self.server.host, self.server.port);
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer = resp.bytes().await.unwrap();
        assert!(
            status.is_success() && !answer.windows(7).any(|w| w == b"\"error\""),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// `IN_FLIGHT` tasks take 10 events of one instance at a time and trigger them with one
/// `batch_events` call.
async fn raw(raw: &Arc<Raw>, instances: &[String]) -> f64 {
    let envelopes = Arc::new(events(instances));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (raw, envelopes, next) = (Arc::clone(raw), Arc::clone(&envelopes), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let chunk = next.fetch_add(1, Ordering::Relaxed) * PUSHER_MAX_BATCH;
                    let Some(batch) = envelopes.get(chunk..(chunk + PUSHER_MAX_BATCH).min(envelopes.len()))
                    else {
                        break;
                    };
                    if batch.is_empty() {
                        break;
                    }
                    raw.trigger(batch).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    rate(EVENTS, start)
}

/// Latency phase of the raw loop: each event triggered at its time, alone, by its own task.
async fn raw_paced(raw: &Arc<Raw>, instances: &[String]) -> (Duration, Duration) {
    let acks = Acks::default();
    let envelopes = (0..PACED)
        .map(|i| envelope(&instances[i % instances.len()], i))
        .collect();
    let sent = paced(envelopes, RATE, async |envelope| {
        let (raw, acks) = (Arc::clone(raw), acks.clone());
        tokio::spawn(async move {
            raw.trigger(std::slice::from_ref(&envelope)).await;
            acks.note(envelope.id().to_string(), Instant::now());
        });
    })
    .await;
    percentiles(&sent, &acks).await
}

/// A dispatcher (memory outbox, 4 workers, ordered per instance, batches of 10 per request) over
/// a `PusherSink` (wrapped to record its acknowledgements when `acks` is given).
fn start(acks: Option<Acks>) -> Dispatcher {
    let sink: Arc<dyn EventSink> = Arc::new(PusherSink::new(PusherConfig::default()).unwrap());
    let sink = match acks {
        Some(acks) => Arc::new(Acked::new(sink, acks)),
        None => sink,
    };
    let config = ChannelConfig {
        workers: IN_FLIGHT,
        ..ChannelConfig::default_for(Channel::Pusher)
    };
    Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink_with(sink, config)
        .start()
        .unwrap()
}

/// The same events through the dispatcher.
async fn pipeline(server: &Server, instances: &[String]) -> f64 {
    let dispatcher = start(None);
    let settings = server.settings();
    let start = Instant::now();
    common::emit_all(&dispatcher, events(instances), Some(&settings)).await;
    while dispatcher.counters(Channel::Pusher).unwrap().delivered < EVENTS as u64 {
        let counters = dispatcher.counters(Channel::Pusher).unwrap();
        assert_eq!(counters.dead, 0, "dead Pusher deliveries: {counters:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = rate(EVENTS, start);
    dispatcher.shutdown(Duration::from_secs(10)).await;
    r
}

/// Latency phase of the pipeline: each event given to `Dispatcher::emit` at its time.
async fn pipeline_paced(server: &Server, instances: &[String]) -> (Duration, Duration) {
    let acks = Acks::default();
    let dispatcher = start(Some(acks.clone()));
    let settings = server.settings();
    let envelopes = (0..PACED)
        .map(|i| envelope(&instances[i % instances.len()], i))
        .collect();
    let sent = common::emit_paced(&dispatcher, envelopes, RATE, Some(&settings)).await;
    let latency = percentiles(&sent, &acks).await;
    dispatcher.shutdown(Duration::from_secs(10)).await;
    latency
}

#[tokio::main]
async fn main() {
    let server = Server::from_env();
    let instances: Vec<String> = (0..INSTANCES).map(|i| format!("b{i}")).collect();
    let raw_side = Arc::new(Raw::new(&server, &instances));
    // Warm up once, then measure both paths on the same events.
    let _warm = raw(&raw_side, &instances).await;
    let raw_rate = raw(&raw_side, &instances).await;
    let pipe_rate = pipeline(&server, &instances).await;
    let raw_latency = raw_paced(&raw_side, &instances).await;
    let pipe_latency = pipeline_paced(&server, &instances).await;
    println!(
        "\n| path ({EVENTS} events of ~1 KB over {INSTANCES} channels, {IN_FLIGHT} requests in flight, soketi at {}:{}) | events/s | ratio | p50 | p99 |",
        server.host, server.port
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| raw signed reqwest loop (batch_events of {PUSHER_MAX_BATCH}) | {raw_rate:.0} | 1.00× | {} | {} |",
        ms(raw_latency.0),
        ms(raw_latency.1)
    );
    println!(
        "| Dispatcher + PusherSink (memory outbox, ordered per instance) | {pipe_rate:.0} | {:.2}× | {} | {} |",
        pipe_rate / raw_rate,
        ms(pipe_latency.0),
        ms(pipe_latency.1)
    );
    println!(
        "\nevents/s: {EVENTS} events handed over at once, until the last is acknowledged. p50/p99: {PACED} \
         events offered one at a time at {RATE:.0}/s over {INSTANCES} channels, each from its hand-over (raw: \
         its call started; pipeline: `Dispatcher::emit`) to the server's acknowledgement (raw: the answer to \
         its own `POST /apps/{{id}}/events`; pipeline: `PusherSink::send` returned it acknowledged)."
    );
}
