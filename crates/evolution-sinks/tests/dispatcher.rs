//! Dispatcher behaviour with in-memory sinks: isolation, retries on the policy's schedule, dead
//! letters, per-instance order under retries, batching, drain on shutdown.

#![allow(clippy::unwrap_used)] // test helpers

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Capabilities, Channel, ErrorKind, EventEnvelope, EventKind, GlobalSettings, InstanceName,
    InstanceSettings, RawValue, RetryPolicy,
};
use evolution_outbox::{MemoryOutbox, Outbox, OutboxError};
use evolution_sink_testkit::{MemorySink, Received};
use evolution_sinks::{ChannelConfig, Dispatcher, EmitError, Router};
use serde_json::json;
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(3600);

fn event(instance: &str, n: usize) -> EventEnvelope {
    let data = RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap();
    EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new(instance).unwrap(),
        data,
    )
}

fn settings(v: serde_json::Value) -> InstanceSettings {
    InstanceSettings::from_json(&v).unwrap()
}

fn router() -> Router {
    let mut g = GlobalSettings::default();
    g.nats.enabled = true;
    g.kafka.enabled = true;
    Router::new(g).unwrap()
}

fn webhook_and_nats() -> InstanceSettings {
    settings(
        json!({"webhook": {"enabled": true, "url": "http://receiver.test/hook"}, "nats": {"enabled": true}}),
    )
}

fn test_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: Some(max_attempts),
        ..RetryPolicy::default()
    }
}

fn config(channel: Channel, retry: RetryPolicy) -> ChannelConfig {
    ChannelConfig {
        retry,
        ..ChannelConfig::default_for(channel)
    }
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_never_answers_does_not_slow_another_channel() {
    let webhook = MemorySink::new(Channel::Webhook);
    let nats = MemorySink::new(Channel::Nats);
    webhook.set_hang(true);
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink(Arc::new(webhook.clone()))
        .sink(Arc::new(nats.clone()))
        .start()
        .unwrap();
    let s = webhook_and_nats();
    let start = Instant::now();
    for i in 0..200 {
        d.emit(event("acme", i), Some(&s)).await.unwrap();
    }
    let got = nats.wait_for(200, LONG).await;
    assert_eq!(got.len(), 200);
    assert!(
        got.iter().all(|r| r.at == start),
        "NATS deliveries waited for the hung webhook"
    );
    assert!(webhook.received().is_empty());
    assert!(webhook.send_calls() > 0, "the webhook was tried");
    // The hung sends time out (30 s), are retried, and succeed once the receiver answers.
    tokio::time::sleep(Duration::from_secs(31)).await;
    webhook.set_hang(false);
    let got = webhook.wait_for(200, LONG).await;
    assert_eq!(got.len(), 200);
    assert!(
        got.iter().all(|r| r.at - start >= Duration::from_secs(30)),
        "delivered only after the hang"
    );
    assert!(got[0].attempt >= 2, "the first send timed out and was retried");
    let c = d.counters(Channel::Webhook).unwrap();
    assert_eq!((c.delivered, c.dead), (200, 0));
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_follow_the_policy_schedule_then_go_dead() {
    let webhook = MemorySink::new(Channel::Webhook);
    let outbox = Arc::new(MemoryOutbox::default());
    let d = Dispatcher::builder(Arc::clone(&outbox) as Arc<dyn Outbox>, router())
        .sink_with(
            Arc::new(webhook.clone()),
            config(Channel::Webhook, test_policy(4)),
        )
        .start()
        .unwrap();
    let s = settings(json!({"webhook": {"enabled": true, "url": "http://receiver.test/hook"}}));

    // Three failures, then success on the fourth attempt: 5 s, ~10 s, ~20 s apart (±20 %).
    webhook.fail_next(3, ErrorKind::Unavailable, Some(503));
    let start = Instant::now();
    d.emit(event("acme", 1), Some(&s)).await.unwrap();
    let got = webhook.wait_for(1, LONG).await;
    let waited = (got[0].at - start).as_secs_f64();
    assert_eq!(got[0].attempt, 4);
    assert!((29.0..=42.0).contains(&waited), "delivered after {waited} s");

    // Four failures with max 4 attempts: dead, never delivered.
    webhook.fail_next(4, ErrorKind::Unavailable, Some(500));
    let start = Instant::now();
    let stored = d.emit(event("acme", 2), Some(&s)).await.unwrap();
    loop {
        if !outbox.dead_letters(None, 10).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        Instant::now() - start >= Duration::from_secs(29),
        "the 4 attempts were spread by the backoff"
    );
    let dead = outbox.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].delivery.envelope.id(), dead[0].delivery.attempt),
        (stored.id(), 4)
    );
    assert!(
        dead[0].error.contains("gave up after 4 attempts"),
        "{}",
        dead[0].error
    );
    assert_eq!(webhook.received().len(), 1, "only the first event was delivered");
    let c = d.counters(Channel::Webhook).unwrap();
    assert_eq!((c.delivered, c.failed_attempts, c.retried, c.dead), (1, 7, 6, 1));
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_and_non_retryable_statuses_are_dead_at_once() {
    let webhook = MemorySink::new(Channel::Webhook);
    let outbox = Arc::new(MemoryOutbox::default());
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&notices);
    let d = Dispatcher::builder(Arc::clone(&outbox) as Arc<dyn Outbox>, router())
        .sink_with(
            Arc::new(webhook.clone()),
            config(Channel::Webhook, test_policy(10)),
        )
        .on_dead(move |n| seen.lock().unwrap().push((n.delivery.id, n.error)))
        .start()
        .unwrap();
    let s = settings(json!({"webhook": {"enabled": true, "url": "http://receiver.test/hook"}}));
    webhook.fail_next(1, ErrorKind::Rejected, None);
    d.emit(event("acme", 1), Some(&s)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    webhook.fail_next(1, ErrorKind::Unavailable, Some(404));
    d.emit(event("acme", 2), Some(&s)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dead = outbox.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|l| l.delivery.attempt == 1));
    assert!(
        dead[0].error.starts_with("permanent failure"),
        "{}",
        dead[0].error
    );
    assert!(
        dead[1]
            .error
            .contains("status 404 is configured as non-retryable"),
        "{}",
        dead[1].error
    );
    assert_eq!(webhook.send_calls(), 2, "no retries");
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 2, "the dead hook saw both");
    assert_eq!(notices[0].0, dead[0].delivery.id);
    assert_eq!(d.counters(Channel::Webhook).unwrap().retried, 0);
}

/// For each instance: every event arrived, and the last copy of each event arrived after the last
/// copy of every earlier event (a retry re-sends the failed event and what followed it).
fn assert_in_order(received: &[Received], instance: &str, count: u64) {
    let mut last: Vec<(usize, u64)> = Vec::new();
    for seq in 1..=count {
        let pos = received
            .iter()
            .rposition(|r| r.instance == instance && r.sequence == seq)
            .unwrap_or_else(|| panic!("{instance} #{seq} never arrived"));
        last.push((pos, seq));
    }
    assert!(
        last.windows(2).all(|w| w[0].0 < w[1].0),
        "{instance}: out of order: {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn per_instance_order_holds_under_retries() {
    let nats = MemorySink::new(Channel::Nats).with_capabilities(Capabilities::new(5).ordered());
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink(Arc::new(nats.clone()))
        .start()
        .unwrap();
    let s = settings(json!({"nats": {"enabled": true}}));
    let start = Instant::now();
    let mut a7 = None;
    for i in 1..=30 {
        let a = d.emit(event("a", i), Some(&s)).await.unwrap();
        if i == 7 {
            a7 = Some(a.id());
            nats.fail_event(a.id(), 2, ErrorKind::Unavailable, None);
        }
        d.emit(event("b", i), Some(&s)).await.unwrap();
    }
    assert!(a7.is_some());
    let received = nats.wait_for(60, LONG).await;
    // Let every requeued copy go out too.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let received = if received.len() < nats.received().len() {
        nats.received()
    } else {
        received
    };
    assert_in_order(&received, "a", 30);
    assert_in_order(&received, "b", 30);
    let b: Vec<u64> = received
        .iter()
        .filter(|r| r.instance == "b")
        .map(|r| r.sequence)
        .collect();
    assert_eq!(b, (1..=30).collect::<Vec<_>>(), "instance b: once each, in order");
    assert!(
        received
            .iter()
            .filter(|r| r.instance == "b")
            .all(|r| r.at == start),
        "instance a's retries did not hold instance b up"
    );
    let a7_copies: Vec<u32> = received
        .iter()
        .filter(|r| Some(r.event_id) == a7)
        .map(|r| r.attempt)
        .collect();
    assert_eq!(a7_copies, [3], "a#7 arrived once, on its third attempt");
    assert!(
        nats.batch_sizes().iter().all(|n| *n <= 5),
        "batches respect max_batch_size"
    );
}

#[tokio::test(start_paused = true)]
async fn batches_respect_the_sink_capability() {
    let kafka = MemorySink::new(Channel::Kafka).with_capabilities(Capabilities::new(10));
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink_with(
            Arc::new(kafka.clone()),
            ChannelConfig {
                workers: 1,
                ..ChannelConfig::default_for(Channel::Kafka)
            },
        )
        .start()
        .unwrap();
    let s = settings(json!({"kafka": {"enabled": true}}));
    let events = (0..35).map(|i| (event("acme", i), Some(&s))).collect();
    d.emit_many(events).await.unwrap();
    assert_eq!(kafka.wait_for(35, LONG).await.len(), 35);
    assert_eq!(kafka.batch_sizes(), [10, 10, 10, 5]);
}

/// A dispatcher with one worker over `sink` (Kafka channel, ordered).
fn one_worker(sink: &MemorySink) -> Dispatcher {
    Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink_with(
            Arc::new(sink.clone()),
            ChannelConfig {
                workers: 1,
                ..ChannelConfig::default_for(Channel::Kafka)
            },
        )
        .start()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_allows_several_batches_per_key_gets_them_at_once_and_in_order() {
    let s = settings(json!({"kafka": {"enabled": true}}));
    for (in_flight, at_once) in [(1, vec![10]), (3, vec![10, 10, 10])] {
        let kafka = MemorySink::new(Channel::Kafka).with_capabilities(
            Capabilities::new(10)
                .ordered()
                .with_max_in_flight_per_key(in_flight),
        );
        kafka.set_hang(true);
        let d = one_worker(&kafka);
        let events = (1..=35).map(|i| (event("acme", i), Some(&s))).collect();
        d.emit_many(events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            kafka.batch_sizes(),
            at_once,
            "batches of one key in flight with max_in_flight_per_key = {in_flight}"
        );
        kafka.set_hang(false);
        let received = kafka.wait_for(35, LONG).await;
        let sequences: Vec<u64> = received.iter().map(|r| r.sequence).collect();
        assert_eq!(sequences, (1..=35).collect::<Vec<_>>(), "once each, in order");
    }
}

/// `total` events of one instance through one worker over a Kafka sink taking batches of 10 with 3
/// in flight (`ordered` or not), #15 failing once; returns once `expected` deliveries arrived and a
/// minute passed without more.
async fn fifteen_fails_once(
    total: usize,
    expected: usize,
    ordered: bool,
) -> (MemorySink, Dispatcher, Vec<Received>) {
    let kafka = MemorySink::new(Channel::Kafka)
        .with_capabilities(Capabilities::new(10).ordered().with_max_in_flight_per_key(3));
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink_with(
            Arc::new(kafka.clone()),
            ChannelConfig {
                workers: 1,
                ordered: Some(ordered),
                ..ChannelConfig::default_for(Channel::Kafka)
            },
        )
        .start()
        .unwrap();
    let s = settings(json!({"kafka": {"enabled": true}}));
    let stored = d
        .emit_many((1..=total).map(|i| (event("acme", i), Some(&s))).collect())
        .await
        .unwrap();
    kafka.fail_event(stored[14].id(), 1, ErrorKind::Unavailable, None);
    let received = kafka.wait_for(expected, LONG).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(kafka.received().len(), received.len(), "nothing more was sent");
    (kafka, d, received)
}

/// The attempt number of each arrival of sequence `seq`, in arrival order.
fn arrivals(received: &[Received], seq: u64) -> Vec<u32> {
    received
        .iter()
        .filter(|r| r.sequence == seq)
        .map(|r| r.attempt)
        .collect()
}

/// Whether every sequence of `seqs` arrived exactly `times` times.
fn each_arrived(received: &[Received], seqs: std::ops::RangeInclusive<u64>, times: usize) -> bool {
    seqs.into_iter().all(|seq| arrivals(received, seq).len() == times)
}

#[tokio::test(start_paused = true)]
async fn order_holds_when_a_middle_batch_of_several_in_flight_fails() {
    // One claim of 30, sent as batches 1–10, 11–20 and 21–30 at once; #15, in the middle batch,
    // fails once (the sink delivers the rest of that batch and the whole third one).
    let (kafka, d, received) = fifteen_fails_once(30, 29 + 16, true).await;
    assert_eq!(
        kafka.batch_sizes(),
        [10, 10, 10, 10, 6],
        "three at once, then the requeued 15–30"
    );
    assert_in_order(&received, "acme", 30);
    assert!(
        each_arrived(&received, 1..=14, 1),
        "what came before #15 was sent once"
    );
    assert!(
        each_arrived(&received, 16..=30, 2),
        "what came after #15 — in its batch and the next — was sent again after it"
    );
    assert_eq!(
        arrivals(&received, 15),
        [2],
        "#15 arrived once, on its second attempt"
    );
    let counters = d.counters(Channel::Kafka).unwrap();
    assert_eq!((counters.delivered, counters.retried), (30, 1));
}

/// A sink over a [`MemorySink`] whose sends each wait for a permit the test hands out, counting
/// how many are in flight at once.
#[derive(Clone, Debug)]
struct Gated {
    inner: MemorySink,
    permits: Arc<tokio::sync::Semaphore>,
    /// (sends in flight now, the most ever at once)
    active: Arc<std::sync::Mutex<(usize, usize)>>,
    /// The size of each batch handed over, in call order (answered or not).
    started: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Gated {
    fn new(inner: MemorySink) -> Self {
        Self {
            inner,
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            active: Arc::default(),
            started: Arc::default(),
        }
    }

    fn most_at_once(&self) -> usize {
        self.active.lock().unwrap().1
    }

    fn started(&self) -> Vec<usize> {
        self.started.lock().unwrap().clone()
    }
}

#[evolution_events::async_trait]
impl evolution_events::EventSink for Gated {
    fn channel(&self) -> Channel {
        self.inner.channel()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn send(
        &self,
        batch: &[evolution_events::Delivery],
    ) -> Result<evolution_events::DeliveryReport, evolution_events::SinkError> {
        self.started.lock().unwrap().push(batch.len());
        {
            let mut active = self.active.lock().unwrap();
            active.0 += 1;
            active.1 = active.1.max(active.0);
        }
        // The semaphore is fair: the oldest waiting send answers first.
        self.permits.acquire().await.unwrap().forget();
        let report = self.inner.send(batch).await;
        self.active.lock().unwrap().0 -= 1;
        report
    }

    async fn health_check(&self) -> Result<(), evolution_events::SinkError> {
        self.inner.health_check().await
    }

    async fn flush(&self) -> Result<(), evolution_events::SinkError> {
        self.inner.flush().await
    }

    async fn shutdown(&self) -> Result<(), evolution_events::SinkError> {
        self.inner.shutdown().await
    }

    async fn prepare(
        &self,
        destinations: &[evolution_events::Destination],
    ) -> Result<(), evolution_events::SinkError> {
        self.inner.prepare(destinations).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_window_of_batches_slides_over_a_claim_each_settled_as_it_answers() {
    let kafka = MemorySink::new(Channel::Kafka)
        .with_capabilities(Capabilities::new(10).ordered().with_max_in_flight_per_key(3));
    let gated = Gated::new(kafka.clone());
    let outbox = Arc::new(MemoryOutbox::default());
    let d = Dispatcher::builder(Arc::clone(&outbox) as Arc<dyn Outbox>, router())
        .sink_with(
            Arc::new(gated.clone()),
            ChannelConfig {
                workers: 1,
                ..ChannelConfig::default_for(Channel::Kafka)
            },
        )
        .start()
        .unwrap();
    let s = settings(json!({"kafka": {"enabled": true}}));
    d.emit_many((1..=100).map(|i| (event("acme", i), Some(&s))).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gated.started(), [10, 10, 10], "three batches in flight");
    let stats = outbox.stats(Channel::Kafka).await.unwrap();
    assert_eq!(
        (stats.in_flight, stats.pending),
        (100, 0),
        "one claim holds four windows of three batches (100 here)"
    );

    // The oldest answers: it is settled while the rest of the claim is in flight, and the next
    // batch starts at once, before the claim's last answer.
    gated.permits.add_permits(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(kafka.received().len(), 10);
    assert_eq!(gated.started(), [10, 10, 10, 10], "the window slid by one batch");
    assert_eq!(
        outbox.stats(Channel::Kafka).await.unwrap().in_flight,
        90,
        "the first batch is settled as soon as it answered"
    );

    gated.permits.add_permits(1000);
    let received = kafka.wait_for(100, LONG).await;
    let sequences: Vec<u64> = received.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (1..=100).collect::<Vec<_>>(), "once each, in order");
    assert_eq!(gated.most_at_once(), 3, "never more than three batches in flight");
    assert_eq!(kafka.batch_sizes(), [10; 10]);
}

#[tokio::test(start_paused = true)]
async fn no_batch_of_a_claim_starts_after_one_failed() {
    // One claim of 60. Batches 1–3 start at once; #15 (batch 2) fails once. When batch 1 answers
    // the window starts batch 4, before batch 2's failure is known; after it, nothing more of the
    // claim starts: 41–60 are put back without an attempt, and 15–60 go again after the retry.
    let (kafka, d, received) = fifteen_fails_once(60, 39 + 46, true).await;
    assert_eq!(kafka.batch_sizes(), [10, 10, 10, 10, 10, 10, 10, 10, 6]);
    assert_in_order(&received, "acme", 60);
    assert!(each_arrived(&received, 1..=15, 1));
    assert!(
        each_arrived(&received, 16..=40, 2),
        "the batches in flight with the failed one were sent again after it"
    );
    assert!(
        each_arrived(&received, 41..=60, 1),
        "the batches not started yet went once, after #15"
    );
    assert_eq!(
        arrivals(&received, 50),
        [1],
        "put back without counting an attempt"
    );
    let counters = d.counters(Channel::Kafka).unwrap();
    assert_eq!((counters.delivered, counters.retried), (60, 1));
}

#[tokio::test(start_paused = true)]
async fn an_unordered_claim_goes_on_after_a_failed_batch() {
    // Nothing waits for #15 on an unordered channel: the whole claim goes once, then #15 alone.
    let (kafka, d, received) = fifteen_fails_once(60, 60, false).await;
    assert_eq!(kafka.batch_sizes(), [10, 10, 10, 10, 10, 10, 1]);
    assert!(each_arrived(&received, 1..=60, 1));
    assert_eq!(arrivals(&received, 15), [2]);
    let counters = d.counters(Channel::Kafka).unwrap();
    assert_eq!((counters.delivered, counters.retried), (60, 1));
}

#[tokio::test]
async fn shutdown_drains_what_is_due_then_refuses_new_events() {
    let nats = MemorySink::new(Channel::Nats);
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink(Arc::new(nats.clone()))
        .start()
        .unwrap();
    let s = settings(json!({"nats": {"enabled": true}}));
    let events = (0..500).map(|i| (event("acme", i), Some(&s))).collect();
    d.emit_many(events).await.unwrap();
    let report = d.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained && report.sink_errors.is_empty(), "{report:?}");
    assert_eq!(nats.received().len(), 500);
    assert!(matches!(
        d.emit(event("acme", 1), Some(&s)).await,
        Err(EmitError::Closed)
    ));
    let again = d.shutdown(Duration::from_secs(1)).await;
    assert!(again.drained, "idempotent");
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_returns_in_flight_work_to_the_outbox() {
    let nats = MemorySink::new(Channel::Nats);
    nats.set_hang(true);
    let outbox = Arc::new(MemoryOutbox::default());
    let d = Dispatcher::builder(Arc::clone(&outbox) as Arc<dyn Outbox>, router())
        .sink(Arc::new(nats.clone()))
        .start()
        .unwrap();
    let s = settings(json!({"nats": {"enabled": true}}));
    d.emit(event("acme", 1), Some(&s)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(outbox.stats(Channel::Nats).await.unwrap().in_flight, 1);
    let report = d.shutdown(Duration::from_secs(2)).await;
    assert!(!report.drained);
    let stats = outbox.stats(Channel::Nats).await.unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight),
        (1, 0),
        "still there for a restart"
    );
}

#[tokio::test]
async fn nothing_is_stored_when_an_event_cannot_be_accepted() {
    let outbox = Arc::new(MemoryOutbox::new(3));
    let nats = MemorySink::new(Channel::Nats);
    nats.set_down(true);
    let d = Dispatcher::builder(Arc::clone(&outbox) as Arc<dyn Outbox>, router())
        .sink(Arc::new(nats.clone()))
        .start()
        .unwrap();
    // Kafka is routed but has no sink.
    let s = settings(json!({"nats": {"enabled": true}, "kafka": {"enabled": true}}));
    let err = d.emit(event("acme", 1), Some(&s)).await.unwrap_err();
    assert!(matches!(err, EmitError::NoSink(Channel::Kafka)), "{err}");
    assert_eq!(outbox.stats(Channel::Nats).await.unwrap().pending, 0);
    // A full queue refuses the whole batch.
    let s = settings(json!({"nats": {"enabled": true}}));
    d.emit_many((0..3).map(|i| (event("acme", i), Some(&s))).collect())
        .await
        .unwrap();
    let err = d
        .emit_many((0..2).map(|i| (event("acme", i), Some(&s))).collect())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EmitError::Outbox(OutboxError::Full { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was stored"));
    // A broker that is down keeps its deliveries pending: nothing is dropped.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = d.counters(Channel::Nats).unwrap();
    assert_eq!(c.dead, 0);
    nats.set_down(false);
    assert_eq!(nats.wait_for(3, Duration::from_secs(10)).await.len(), 3);
}

#[tokio::test]
async fn checked_settings_route_like_unchecked_ones_and_only_on_the_router_that_checked_them() {
    let sqs_router = |prefix: &str| {
        let mut g = GlobalSettings::default();
        g.sqs.broker.enabled = true;
        g.sqs.broker.prefix = prefix.to_owned();
        Router::new(g).unwrap()
    };
    let (plain, prefixed) = (sqs_router(""), sqs_router(&"p".repeat(40)));
    let name = "i".repeat(40);
    let s = settings(json!({"sqs": {"enabled": true}}));
    let checked = plain
        .check(&InstanceName::new(&name).unwrap(), s.clone())
        .unwrap();
    assert!(
        prefixed
            .check(&InstanceName::new(&name).unwrap(), s.clone())
            .is_err(),
        "the prefix makes the queue name too long"
    );

    let sqs = MemorySink::new(Channel::Sqs);
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), plain)
        .sink(Arc::new(sqs.clone()))
        .start()
        .unwrap();
    // The first event of a kind plans its deliveries, the next ones reuse them: same destinations
    // as routing the same settings unchecked.
    for n in 0..3 {
        d.emit(event(&name, n), &checked).await.unwrap();
    }
    d.emit(event(&name, 3), Some(&s)).await.unwrap();
    let received = sqs.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 4);
    assert!(received.iter().all(|r| r.destination == received[0].destination));
    assert!(received[0].destination.label().contains(&name));

    // On a router with other settings the check does not hold: the event is validated, and refused.
    let other = Dispatcher::builder(Arc::new(MemoryOutbox::default()), prefixed)
        .sink(Arc::new(MemorySink::new(Channel::Sqs)))
        .start()
        .unwrap();
    let err = other.emit(event(&name, 0), &checked).await.unwrap_err();
    assert!(matches!(err, EmitError::Routing(_)), "{err}");
    assert!(err.to_string().contains("at most 80"), "{err}");
}

#[tokio::test]
async fn a_filter_is_evaluated_on_every_event_of_a_planned_kind() {
    let mut g = GlobalSettings::default();
    g.nats.enabled = true;
    g.kafka.enabled = true;
    g.kafka.global_enabled = true;
    g.kafka.events.insert(EventKind::MessagesUpsert);
    g.filters.insert(
        Channel::Kafka,
        evolution_events::Filter::parse(&json!({"data.n": {"$nin": [0, 1]}}), "KAFKA_GLOBAL_FILTER").unwrap(),
    );
    let router = Router::new(g).unwrap();
    let s = settings(json!({
        "webhook": {"enabled": true, "url": "http://receiver.test/hook"},
        "nats": {"enabled": true, "filter": {"$or": [{"data.n": 1}, {"data.n": {"$eq": 3}}]}}
    }));
    let checked = router.check(&InstanceName::new("acme").unwrap(), s).unwrap();
    let (webhook, nats, kafka) = (
        MemorySink::new(Channel::Webhook),
        MemorySink::new(Channel::Nats),
        MemorySink::new(Channel::Kafka),
    );
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router)
        .sink(Arc::new(webhook.clone()))
        .sink(Arc::new(nats.clone()))
        .sink(Arc::new(kafka.clone()))
        .start()
        .unwrap();
    // The plan of MESSAGES_UPSERT is made on the first event and reused; the filters are not.
    for n in 0..5 {
        d.emit(event("acme", n), &checked).await.unwrap();
    }
    let n_of =
        |r: &Received| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["data"]["n"].clone();
    assert_eq!(webhook.wait_for(5, Duration::from_secs(10)).await.len(), 5);
    let got: Vec<_> = nats
        .wait_for(2, Duration::from_secs(10))
        .await
        .iter()
        .map(n_of)
        .collect();
    assert_eq!(got, [json!(1), json!(3)]);
    let got: Vec<_> = kafka
        .wait_for(3, Duration::from_secs(10))
        .await
        .iter()
        .map(n_of)
        .collect();
    assert_eq!(got, [json!(2), json!(3), json!(4)]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        nats.received().len(),
        2,
        "filtered-out deliveries were never made"
    );
    assert_eq!(kafka.received().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_hook_sees_every_attempt_with_its_outcome_and_trace() {
    use evolution_events::TraceContext;
    use std::sync::Mutex;
    let webhook = MemorySink::new(Channel::Webhook);
    type Seen = Vec<(u32, Option<ErrorKind>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let hook_seen = Arc::clone(&seen);
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router())
        .sink_with(
            Arc::new(webhook.clone()),
            config(Channel::Webhook, test_policy(4)),
        )
        .on_attempt(move |notice| {
            hook_seen.lock().unwrap().push((
                notice.delivery.attempt,
                notice.error.map(evolution_events::SinkError::kind),
                notice.delivery.envelope.trace().map(TraceContext::traceparent),
            ));
        })
        .start()
        .unwrap();
    let s = settings(json!({"webhook": {"enabled": true, "url": "http://receiver.test/hook"}}));
    webhook.fail_next(2, ErrorKind::Unavailable, Some(503));
    let trace = TraceContext::new_root();
    d.emit(event("acme", 1).with_trace(Some(trace.clone())), Some(&s))
        .await
        .unwrap();
    assert_eq!(webhook.wait_for(1, LONG).await.len(), 1);
    let traceparent = Some(trace.traceparent());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (1, Some(ErrorKind::Unavailable), traceparent.clone()),
            (2, Some(ErrorKind::Unavailable), traceparent.clone()),
            (3, None, traceparent),
        ]
    );
}
