//! SQS messages per second through `Dispatcher` + `SqsSink` versus a raw aws-sdk-sqs loop doing
//! the same work (same bodies and message attributes, `SendMessageBatch` of 10, the same number
//! of calls in flight), against the same server, in one run.
//!
//! Run: `eval "$(scripts/services env sqs)"; cargo bench -p evolution-sinks --bench sqs` — prints a
//! Markdown table. The server is `EVOLUTION_TEST_SQS_ENDPOINT` (default http://127.0.0.1:5000, the
//! moto of `scripts/services up sqs`). moto's cost per call grows with the length of a queue, so
//! every run sends to fresh queues, spread over [`QUEUES`] instances.
//!
//! A second, fixed-rate phase measures latency: [`PACED`] events offered one at a time at [`RATE`]
//! per second (well below both paths' saturation), each timed from its hand-over (raw: its task
//! starting the call; pipeline: the `Dispatcher::emit` call) to the server's acknowledgement (raw:
//! the `SendMessageBatch` response of that event, sent alone; pipeline: `SqsSink::send` returned it
//! acknowledged, just before the dispatcher settles it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use evolution_events::{
    Channel, EventEnvelope, EventKind, EventSink, GlobalSettings, InstanceName, InstanceSettings,
    NamingProfile,
};
use evolution_outbox::MemoryOutbox;
use evolution_sink_testkit::bench::{Acked, Acks, ms, paced, percentiles};
use evolution_sinks::sqs::{SqsConfig, SqsCredentials, SqsSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};

const EVENTS: usize = 2_000;
const QUEUES: usize = 10;
/// Calls in flight: the dispatcher's 4 workers each send one batch at a time.
const IN_FLIGHT: usize = 4;
/// Events of the fixed-rate (latency) phase, per path.
const PACED: usize = 400;
/// Events per second offered in the latency phase (moto serves ~50–100 calls/s).
const RATE: f64 = 50.0;

fn endpoint() -> String {
    std::env::var("EVOLUTION_TEST_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".to_owned())
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

async fn client(endpoint: &str) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .endpoint_url(endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    Client::new(&config)
}

fn attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

/// Fresh queues, one per instance; their URLs.
async fn queues(client: &Client, run: &str, instances: &[String]) -> Vec<String> {
    let mut urls = Vec::new();
    for instance in instances {
        let queue = format!("raw{run}-{instance}");
        let url = client
            .create_queue()
            .queue_name(queue)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        urls.push(url);
    }
    urls
}

/// The entry of one event (body serialized once, the sink's three attributes).
fn entry(i: usize, e: &EventEnvelope) -> SendMessageBatchRequestEntry {
    let payload = e.payload(NamingProfile::Seed);
    SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(std::str::from_utf8(&payload).unwrap())
        .message_attributes("event", attribute("MESSAGES_UPSERT"))
        .message_attributes("instance", attribute(e.instance().as_str()))
        .message_attributes("id", attribute(&e.id().to_string()))
        .build()
        .unwrap()
}

/// Latency phase of the raw loop: each event sent at its time, alone, by its own task.
async fn raw_paced(client: &Client, run: &str, instances: &[String]) -> (Duration, Duration) {
    let urls = Arc::new(queues(client, run, instances).await);
    let acks: Acks = Acks::default();
    let envelopes = (0..PACED)
        .map(|i| envelope(&instances[i % instances.len()], i))
        .collect();
    let mut n = 0;
    let sent = paced(envelopes, RATE, async |envelope| {
        let (client, urls, acks) = (client.clone(), Arc::clone(&urls), acks.clone());
        let url = n % urls.len();
        n += 1;
        tokio::spawn(async move {
            let out = client
                .send_message_batch()
                .queue_url(&urls[url])
                .entries(entry(0, &envelope))
                .send()
                .await
                .unwrap();
            assert!(out.failed().is_empty());
            acks.note(envelope.id().to_string(), Instant::now());
        });
    })
    .await;
    percentiles(&sent, &acks).await
}

/// `IN_FLIGHT` tasks take 10 events of one queue at a time and send them with one
/// `SendMessageBatch` (bodies serialized once, the sink's three attributes).
async fn raw(client: &Client, run: &str, instances: &[String]) -> f64 {
    let urls = queues(client, run, instances).await;
    let envelopes: Vec<EventEnvelope> = (0..EVENTS)
        .map(|i| envelope(&instances[(i / 10) % instances.len()], i))
        .collect();
    let (urls, envelopes) = (Arc::new(urls), Arc::new(envelopes));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, urls, envelopes, next) = (
                client.clone(),
                Arc::clone(&urls),
                Arc::clone(&envelopes),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                loop {
                    let chunk = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = envelopes.get(chunk * 10..(chunk * 10 + 10).min(envelopes.len()))
                    else {
                        break;
                    };
                    if batch.is_empty() {
                        break;
                    }
                    let entries: Vec<SendMessageBatchRequestEntry> =
                        batch.iter().enumerate().map(|(i, e)| entry(i, e)).collect();
                    let out = client
                        .send_message_batch()
                        .queue_url(&urls[chunk % urls.len()])
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .unwrap();
                    assert!(out.failed().is_empty());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    rate(EVENTS, start)
}

/// A dispatcher (memory outbox, 4 workers, ordered per instance) over an `SqsSink` (wrapped to
/// record its acknowledgements when `acks` is given), with the queues of `instances` created.
async fn start(
    endpoint: &str,
    run: &str,
    instances: &[String],
    acks: Option<Acks>,
) -> (Dispatcher, InstanceSettings) {
    let sink: Arc<dyn EventSink> = Arc::new(
        SqsSink::new(SqsConfig {
            endpoint: Some(endpoint.to_owned()),
            credentials: Some(SqsCredentials::new("test", "test")),
            ..SqsConfig::new("us-east-1")
        })
        .unwrap(),
    );
    let sink = match acks {
        Some(acks) => Arc::new(Acked::new(sink, acks)),
        None => sink,
    };
    let mut global = GlobalSettings::default();
    global.sqs.broker.enabled = true;
    global.sqs.broker.prefix = format!("pipe{run}");
    let dispatcher = Dispatcher::builder(Arc::new(MemoryOutbox::default()), Router::new(global).unwrap())
        .sink_with(sink, ChannelConfig::default_for(Channel::Sqs))
        .start()
        .unwrap();
    let settings = InstanceSettings::from_json(
        &serde_json::json!({"sqs": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .unwrap();
    // Queues exist before the clock starts, as for the raw loop.
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

/// The same events through the dispatcher (memory outbox, 4 workers, ordered per instance).
async fn pipeline(endpoint: &str, run: &str, instances: &[String]) -> f64 {
    let (dispatcher, settings) = start(endpoint, run, instances, None).await;
    let envelopes: Vec<EventEnvelope> = (0..EVENTS)
        .map(|i| envelope(&instances[(i / 10) % instances.len()], i))
        .collect();
    let start = Instant::now();
    common::emit_all(&dispatcher, envelopes, Some(&settings)).await;
    while dispatcher.counters(Channel::Sqs).unwrap().delivered < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = rate(EVENTS, start);
    dispatcher.shutdown(Duration::from_secs(10)).await;
    r
}

/// Latency phase of the pipeline: each event given to `Dispatcher::emit` at its time.
async fn pipeline_paced(endpoint: &str, run: &str, instances: &[String]) -> (Duration, Duration) {
    let acks: Acks = Acks::default();
    let (dispatcher, settings) = start(endpoint, run, instances, Some(acks.clone())).await;
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
    let endpoint = endpoint();
    let client = client(&endpoint).await;
    let run = tag();
    let instances: Vec<String> = (0..QUEUES).map(|i| format!("b{i}")).collect();
    // Warm up once (fresh queues every time), then measure both paths.
    let _warm = raw(&client, &format!("w{run}"), &instances).await;
    let raw_rate = raw(&client, &run, &instances).await;
    let pipe_rate = pipeline(&endpoint, &run, &instances).await;
    let raw_latency = raw_paced(&client, &format!("l{run}"), &instances).await;
    let pipe_latency = pipeline_paced(&endpoint, &format!("l{run}"), &instances).await;
    println!(
        "\n| path ({EVENTS} events of ~1 KB over {QUEUES} queues, {IN_FLIGHT} calls in flight, {endpoint}) | messages/s | ratio | p50 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| raw aws-sdk-sqs loop (SendMessageBatch of 10) | {raw_rate:.0} | 1.00× | {} | {} |",
        ms(raw_latency.0),
        ms(raw_latency.1)
    );
    println!(
        "| Dispatcher + SqsSink (memory outbox, ordered per instance) | {pipe_rate:.0} | {:.2}× | {} | {} |",
        pipe_rate / raw_rate,
        ms(pipe_latency.0),
        ms(pipe_latency.1)
    );
    println!(
        "\nmessages/s: {EVENTS} events handed over at once, until the last is acknowledged. p50/p99: {PACED} \
         events offered one at a time at {RATE:.0}/s over {QUEUES} fresh queues, each from its hand-over (raw: \
         its call started; pipeline: `Dispatcher::emit`) to the server's acknowledgement (raw: the response to \
         its own SendMessageBatch; pipeline: `SqsSink::send` returned it acknowledged)."
    );
}
