//! What an operator sees during an outage, through the real binary: a webhook receiver answers 500
//! while events are posted; `GET /metrics` shows the channel's backlog rising to exactly the number
//! of accepted events and the failed attempts being counted, and the delivery log lists the failed
//! attempts; the receiver recovers, every event arrives, and the backlog drains back to 0. Every
//! assertion is on values parsed from the Prometheus text or on what reached the receiver.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{API_KEY, Receiver, Server};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Instances (each its own ordering key, so each has a failing head delivery).
const INSTANCES: usize = 4;
/// Events per `POST /events`.
const PER_REQUEST: usize = 10;
/// Requests; request `r` goes to instance `r % INSTANCES`.
const REQUESTS: usize = 20;
const EVENTS: usize = PER_REQUEST * REQUESTS;
const WAIT: Duration = Duration::from_secs(30);

/// Samples of the Prometheus text exposition: (metric name, labels) → value.
struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("`{line}`: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("`{line}`"));
                    let labels = body
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("`{line}`"));
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Self(samples)
    }

    /// The sample of `name` with exactly `labels`; a missing one fails the test.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics"))
    }

    fn webhook_counter(&self, name: &str) -> u64 {
        self.get(
            &format!("evolution_deliveries_{name}_total"),
            &[("channel", "webhook")],
        ) as u64
    }

    fn webhook_depth(&self, state: &str) -> u64 {
        self.get(
            "evolution_queue_depth",
            &[("channel", "webhook"), ("state", state)],
        ) as u64
    }

    /// Deliveries waiting: pending (including those held behind a failing head) and in flight.
    fn webhook_backlog(&self) -> u64 {
        self.webhook_depth("pending") + self.webhook_depth("in_flight")
    }
}

async fn metrics(server: &Server) -> Metrics {
    let resp = server.client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    Metrics::parse(&resp.text().await.unwrap())
}

async fn log(server: &Server, instance: &str, status: &str) -> Vec<Value> {
    let path = format!("/deliveries/{instance}?status={status}&limit=1000");
    let (code, body) = server.call("GET", &path, Some(API_KEY), None).await;
    assert_eq!(code, 200, "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test]
async fn metrics_show_the_backlog_rising_during_an_outage_and_draining_after() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let server = Server::start(
        "metrics-outage",
        &[
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "100"),
        ],
    )
    .await;
    let instances: Vec<String> = (0..INSTANCES).map(|i| format!("outage-{i}")).collect();
    for (i, name) in instances.iter().enumerate() {
        let hook = json!({"url": receiver.url(&format!("/hook/{i}")), "events": ["MESSAGES_UPSERT"]});
        let (status, body) = server
            .call(
                "POST",
                "/instance/create",
                Some(API_KEY),
                Some(json!({"instanceName": name, "webhook": hook})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let m = metrics(&server).await;
    assert_eq!(m.webhook_backlog(), 0, "nothing waits before the first event");
    assert_eq!(m.webhook_counter("failed_attempts"), 0);

    // The receiver is down: every accepted event stays in the backlog, which grows by exactly what
    // was acknowledged.
    let mut acked: Vec<String> = Vec::new();
    let mut rising = Vec::new();
    for r in 0..REQUESTS {
        let events: Vec<Value> = (0..PER_REQUEST)
            .map(|j| json!({"event": "MESSAGES_UPSERT", "data": {"n": r * PER_REQUEST + j}}))
            .collect();
        let instance = &instances[r % INSTANCES];
        let (status, body) = server
            .call(
                "POST",
                &format!("/events/{instance}"),
                Some(API_KEY),
                Some(Value::Array(events)),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        acked.extend(
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned()),
        );
        let m = metrics(&server).await;
        let backlog = m.webhook_backlog();
        rising.push(backlog);
        assert_eq!(
            backlog,
            acked.len() as u64,
            "backlog after {} accepted events (samples so far: {rising:?})",
            acked.len()
        );
        assert_eq!(m.webhook_counter("delivered"), 0);
        assert_eq!(m.webhook_counter("dead"), 0);
    }
    assert_eq!(acked.len(), EVENTS);

    // Failed attempts are counted, and keep being counted while the outage lasts (retries every
    // second); the backlog stays at N.
    let deadline = Instant::now() + WAIT;
    let during = loop {
        let m = metrics(&server).await;
        if m.webhook_counter("failed_attempts") >= 2 * INSTANCES as u64 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let failed_before = during.webhook_counter("failed_attempts");
    assert!(
        failed_before >= 2 * INSTANCES as u64,
        "failed attempts counted: {failed_before}"
    );
    assert!(during.webhook_counter("retried") >= 2 * INSTANCES as u64);
    assert_eq!(during.webhook_backlog(), EVENTS as u64);
    assert_eq!(during.webhook_counter("delivered"), 0);
    assert_eq!(during.webhook_counter("dead"), 0);
    assert_eq!(during.webhook_depth("dead"), 0);
    assert!(
        receiver.hits().is_empty(),
        "the receiver recorded nothing while answering 500"
    );

    // The delivery log shows the failed attempts: the head of each instance, with the 500.
    let mut logged_attempts = 0;
    for instance in &instances {
        // `failed` lists waiting deliveries with a failed attempt; a head being retried at that
        // moment is in flight, so ask again until it is listed.
        let deadline = Instant::now() + WAIT;
        let failed = loop {
            let failed = log(&server, instance, "failed").await;
            if !failed.is_empty() || Instant::now() > deadline {
                break failed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!failed.is_empty(), "{instance}: failed attempts in the log");
        for d in &failed {
            assert_eq!(d["channel"], "webhook", "{d}");
            assert!(
                matches!(d["status"].as_str(), Some("pending" | "in_flight")),
                "{d}"
            );
            let attempts = d["attempts"].as_u64().unwrap();
            assert!(attempts >= 1, "{d}");
            logged_attempts += attempts;
            assert!(
                d["last_error"].as_str().unwrap_or_default().contains("500"),
                "{d}"
            );
            let log = d["attempt_log"].as_array().unwrap();
            assert!(!log.is_empty(), "{d}");
            assert!(
                log.iter().all(|a| a["status"] == 500 && a["outcome"] == "retry"),
                "{d}"
            );
        }
    }
    // Retries go on every second: the counter keeps rising while the outage lasts.
    let deadline = Instant::now() + WAIT;
    let m = loop {
        let m = metrics(&server).await;
        if m.webhook_counter("failed_attempts") > failed_before || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let failed_after = m.webhook_counter("failed_attempts");
    assert!(
        failed_after > failed_before,
        "failed attempts keep being counted while the receiver is down ({failed_before} → {failed_after})"
    );
    assert!(
        logged_attempts <= failed_after && logged_attempts >= INSTANCES as u64,
        "the log's attempts ({logged_attempts}) are among those counted ({failed_after})"
    );
    assert_eq!(m.webhook_backlog(), EVENTS as u64, "still N waiting");

    // The receiver recovers: every event arrives and the backlog drains to 0, never rising.
    receiver.set_status(200);
    let recovered = Instant::now();
    let mut draining = Vec::new();
    let drained = loop {
        let m = metrics(&server).await;
        let backlog = m.webhook_backlog();
        draining.push(backlog);
        if backlog == 0 || recovered.elapsed() > WAIT {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drain_time = recovered.elapsed();
    assert!(
        draining.windows(2).all(|w| w[0] >= w[1]),
        "the backlog only shrinks once nothing new arrives: {draining:?}"
    );
    assert_eq!(drained.webhook_backlog(), 0, "drained: {draining:?}");
    let hits = receiver.wait_for(EVENTS, WAIT).await;
    let got: HashSet<&str> = hits.iter().filter_map(|h| h.body["id"].as_str()).collect();
    let lost = acked.iter().filter(|id| !got.contains(id.as_str())).count();
    assert_eq!(lost, 0, "every accepted event reached the receiver");
    assert_eq!(drained.webhook_counter("delivered"), EVENTS as u64);
    assert_eq!(drained.webhook_counter("dead"), 0);
    assert_eq!(drained.webhook_depth("dead"), 0);
    let failed_total = drained.webhook_counter("failed_attempts");
    assert!(failed_total >= failed_after, "a counter never goes down");
    for instance in &instances {
        assert!(log(&server, instance, "failed").await.is_empty(), "{instance}");
        let delivered = log(&server, instance, "delivered").await;
        assert_eq!(delivered.len(), EVENTS / INSTANCES, "{instance}");
    }
    eprintln!(
        "outage: {EVENTS} events over {INSTANCES} instances; backlog while down {rising:?}; \
         failed attempts {failed_before} → {failed_total} (delivery log: {logged_attempts} on the \
         failing heads); receiver up: backlog {draining:?} → 0 in {:.1} s, received {} ({} distinct), \
         delivered_total {}, lost {lost}",
        drain_time.as_secs_f64(),
        hits.len(),
        got.len(),
        drained.webhook_counter("delivered"),
    );
}
