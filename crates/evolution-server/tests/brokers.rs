//! RabbitMQ and NATS end to end: the real binary publishes to the machine's real brokers
//! (`scripts/services`: `EVOLUTION_TEST_RABBITMQ_URI`, `EVOLUTION_TEST_NATS_URL`), and consumers
//! written like the specification's read what arrives — an amqplib-style consumer (exclusive
//! queue bound to the exchange with `evolution.<instance>.*`) and a NATS subscriber on
//! `evolution.<instance>.>`. Every test uses its own exchange, instance names and stream, so tests
//! running at the same time do not see each other's events.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use common::{Server, assert_seed_payload, service_env, unique};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
/// How long to keep watching for messages that must not arrive.
const SETTLE: Duration = Duration::from_millis(700);

/// Creates `instance` with `body` merged in, posts MESSAGES_UPSERT, CALL, CONNECTION_UPDATE (in
/// that order, one request) and returns their ids.
async fn create_and_post(server: &Server, instance: &str, settings: Value) -> Vec<String> {
    common::create_instance(server, instance, settings).await;
    common::post_three(server, instance).await
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// The specification's consumer: declares the topic exchange, an exclusive server-named queue
/// bound with `pattern`, and consumes from it.
struct AmqpConsumer {
    connection: Connection,
    received: Arc<Mutex<Vec<lapin::message::Delivery>>>,
}

impl AmqpConsumer {
    async fn bind(uri: &str, exchange: &str, pattern: &str) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let connection = common::amqp_consumer(uri, exchange, pattern, move |delivery| {
            sink.lock().unwrap().push(delivery);
        })
        .await;
        Self { connection, received }
    }

    /// Waits for `n` messages, then keeps watching for [`SETTLE`], and returns what arrived.
    async fn wait(&self, n: usize) -> Vec<lapin::message::Delivery> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.received.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(SETTLE).await;
        std::mem::take(&mut *self.received.lock().unwrap())
    }

    /// How many messages wait in the durable queue `queue` (read and removed).
    async fn drain(&self, queue: &str) -> usize {
        let channel = self.connection.create_channel().await.unwrap();
        let mut n = 0;
        while let Ok(Some(_)) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
        {
            n += 1;
        }
        n
    }

    /// Deletes the durable queues and the exchanges a test made (best effort).
    async fn cleanup(&self, queues: &[String], exchanges: &[&str]) {
        for queue in queues {
            if let Ok(channel) = self.connection.create_channel().await {
                let _ignored = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        for exchange in exchanges {
            if let Ok(channel) = self.connection.create_channel().await {
                let _ignored = channel
                    .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
}

fn amqp_header(d: &lapin::message::Delivery, name: &str) -> String {
    match d.properties.headers().as_ref().and_then(|h| h.inner().get(name)) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => format!("{other:?}"),
    }
}

fn check_amqp_message(d: &lapin::message::Delivery, id: &str, kind: &str, instance: &str, key: &str) {
    assert_seed_payload(&d.data, id, kind, instance);
    assert_eq!(d.routing_key.as_str(), key);
    let p = &d.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(id));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert!(p.timestamp().is_some());
    assert_eq!(amqp_header(d, "event"), kind);
    assert_eq!(amqp_header(d, "instance"), instance);
    assert_eq!(amqp_header(d, "id"), id);
}

#[tokio::test]
async fn rabbitmq_instance_settings_reach_a_seed_consumer() {
    let Some(uri) = service_env("EVOLUTION_TEST_RABBITMQ_URI") else {
        return;
    };
    let tag = unique();
    let exchange = format!("evolution-e2e-{tag}");
    let instance = format!("rmq-{tag}");
    let consumer = AmqpConsumer::bind(&uri, &exchange, &format!("evolution.{instance}.*")).await;
    let server = Server::start(
        "rabbitmq-instance",
        &[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &uri),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
        ],
    )
    .await;
    let ids = create_and_post(
        &server,
        &instance,
        json!({"rabbitmq": {"enabled": true, "events": ["MESSAGES_UPSERT", "CONNECTION_UPDATE"]}}),
    )
    .await;

    let got = consumer.wait(2).await;
    assert_eq!(got.len(), 2, "CALL is not in the instance's events");
    check_amqp_message(
        &got[0],
        &ids[0],
        "MESSAGES_UPSERT",
        &instance,
        &format!("evolution.{instance}.messages-upsert"),
    );
    check_amqp_message(
        &got[1],
        &ids[2],
        "CONNECTION_UPDATE",
        &instance,
        &format!("evolution.{instance}.connection-update"),
    );
    // The durable per-instance/event queues were declared, bound, and hold a copy each.
    let queues = [
        format!("evolution.{instance}.messages-upsert"),
        format!("evolution.{instance}.connection-update"),
    ];
    assert_eq!(consumer.drain(&queues[0]).await, 1);
    assert_eq!(consumer.drain(&queues[1]).await, 1);
    consumer.cleanup(&queues, &[&exchange]).await;
}

#[tokio::test]
async fn rabbitmq_global_settings_reach_a_seed_consumer() {
    let Some(uri) = service_env("EVOLUTION_TEST_RABBITMQ_URI") else {
        return;
    };
    let tag = unique();
    let exchange = format!("evolution-e2e-{tag}");
    let instance = format!("rmq-global-{tag}");
    let consumer = AmqpConsumer::bind(&uri, &exchange, &format!("evolution.{instance}.*")).await;
    let server = Server::start(
        "rabbitmq-global",
        &[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &uri),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            ("RABBITMQ_GLOBAL_ENABLED", "true"),
            ("RABBITMQ_EVENTS_MESSAGES_UPSERT", "true"),
            ("RABBITMQ_QUEUE_TYPE", "classic"),
        ],
    )
    .await;
    let ids = create_and_post(&server, &instance, json!({})).await;
    let got = consumer.wait(1).await;
    assert_eq!(got.len(), 1, "only MESSAGES_UPSERT is enabled globally");
    check_amqp_message(
        &got[0],
        &ids[0],
        "MESSAGES_UPSERT",
        &instance,
        &format!("evolution.{instance}.messages-upsert"),
    );
    let queues = [format!("evolution.{instance}.messages-upsert")];
    assert_eq!(consumer.drain(&queues[0]).await, 1);
    consumer.cleanup(&queues, &[&exchange]).await;
}

// ---------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------

/// A core subscription that records what arrives.
async fn subscribe(client: &async_nats::Client, subject: String) -> Arc<Mutex<Vec<async_nats::Message>>> {
    let mut subscription = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            sink.lock().unwrap().push(message);
        }
    });
    received
}

async fn wait_nats(received: &Mutex<Vec<async_nats::Message>>, n: usize) -> Vec<async_nats::Message> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while received.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE).await;
    std::mem::take(&mut *received.lock().unwrap())
}

fn nats_header(m: &async_nats::Message, name: &str) -> String {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

fn check_nats_message(m: &async_nats::Message, id: &str, kind: &str, instance: &str, subject: &str) {
    assert_seed_payload(&m.payload, id, kind, instance);
    assert_eq!(m.subject.as_str(), subject);
    assert_eq!(nats_header(m, "Nats-Msg-Id"), id);
    assert_eq!(nats_header(m, "event"), kind);
    assert_eq!(nats_header(m, "instance"), instance);
    assert_eq!(nats_header(m, "id"), id);
}

/// Every message of `stream` under `filter`, from the start.
async fn read_stream(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    n: usize,
) -> Vec<async_nats::Message> {
    let js = async_nats::jetstream::new(client.clone());
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..pull::Config::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(n + 10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m.message);
    }
    out
}

#[tokio::test]
async fn nats_instance_settings_reach_a_subscriber() {
    let Some(url) = service_env("EVOLUTION_TEST_NATS_URL") else {
        return;
    };
    let instance = format!("nats-{}", unique());
    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, format!("evolution.{instance}.>")).await;
    let server = Server::start("nats-instance", &[("NATS_ENABLED", "true"), ("NATS_URI", &url)]).await;
    let ids = create_and_post(
        &server,
        &instance,
        json!({"nats": {"enabled": true, "events": ["MESSAGES_UPSERT", "CONNECTION_UPDATE"]}}),
    )
    .await;
    let got = wait_nats(&received, 2).await;
    assert_eq!(got.len(), 2, "CALL is not in the instance's events");
    check_nats_message(
        &got[0],
        &ids[0],
        "MESSAGES_UPSERT",
        &instance,
        &format!("evolution.{instance}.messages.upsert"),
    );
    check_nats_message(
        &got[1],
        &ids[2],
        "CONNECTION_UPDATE",
        &instance,
        &format!("evolution.{instance}.connection.update"),
    );
}

#[tokio::test]
async fn nats_global_settings_in_jetstream_mode_are_stored_and_delivered() {
    let Some(url) = service_env("EVOLUTION_TEST_NATS_URL") else {
        return;
    };
    let tag = unique();
    // A prefix and a stream of its own: the stream captures `{prefix}.>`, which must not overlap
    // another test's stream on the shared server.
    let prefix = format!("evolution{tag}");
    let stream = format!("E2E_{tag}");
    let instance = format!("nats-global-{tag}");
    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, format!("{prefix}.{instance}.>")).await;
    let server = Server::start(
        "nats-global",
        &[
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &url),
            ("NATS_PREFIX_KEY", &prefix),
            ("NATS_GLOBAL_ENABLED", "true"),
            ("NATS_EVENTS_MESSAGES_UPSERT", "true"),
            ("NATS_JETSTREAM", "true"),
            ("NATS_JETSTREAM_STREAM", &stream),
        ],
    )
    .await;
    let ids = create_and_post(&server, &instance, json!({})).await;
    let got = wait_nats(&received, 1).await;
    assert_eq!(got.len(), 1, "only MESSAGES_UPSERT is enabled globally");
    let subject = format!("{prefix}.{instance}.messages.upsert");
    check_nats_message(&got[0], &ids[0], "MESSAGES_UPSERT", &instance, &subject);
    let stored = read_stream(&client, &stream, &format!("{prefix}.>"), 1).await;
    assert_eq!(stored.len(), 1, "the stream holds the event");
    check_nats_message(&stored[0], &ids[0], "MESSAGES_UPSERT", &instance, &subject);
    let js = async_nats::jetstream::new(client.clone());
    let _ignored = js.delete_stream(&stream).await;
}

// ---------------------------------------------------------------------------------------------
// The evolution-v2 naming profile
// ---------------------------------------------------------------------------------------------

/// Evolution API's names, and its bodies on RabbitMQ and NATS (golden).
#[tokio::test]
async fn evolution_v2_profile_uses_evolution_api_names() {
    let (Some(uri), Some(url)) = (
        service_env("EVOLUTION_TEST_RABBITMQ_URI"),
        service_env("EVOLUTION_TEST_NATS_URL"),
    ) else {
        return;
    };
    let tag = unique();
    let instance = format!("v2-{tag}");
    let stream = format!("E2E_V2_{tag}");
    // Evolution API 2.3.6: one exchange per instance, routing key = wire name.
    let consumer = AmqpConsumer::bind(&uri, &instance, "messages.upsert").await;
    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, format!("{instance}.>")).await;
    let server = Server::start(
        "v2",
        &[
            ("EVENT_NAMING", "evolution-v2"),
            ("SERVER_URL", common::GOLDEN_SERVER_URL),
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &uri),
            ("RABBITMQ_EXCHANGE_NAME", &format!("evolution-e2e-{tag}")),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &url),
            ("NATS_JETSTREAM", "true"),
            ("NATS_JETSTREAM_STREAM", &stream),
        ],
    )
    .await;
    let ids = create_and_post(
        &server,
        &instance,
        json!({
            "rabbitmq": {"enabled": true, "events": ["MESSAGES_UPSERT"]},
            "nats": {"enabled": true, "events": ["MESSAGES_UPSERT"]}
        }),
    )
    .await;
    let got = consumer.wait(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].routing_key.as_str(), "messages.upsert");
    assert_eq!(got[0].exchange.as_str(), instance);
    let body: Value = serde_json::from_slice(&got[0].data).unwrap();
    assert_eq!(
        (body["id"].as_str(), body["event"].as_str()),
        (Some(ids[0].as_str()), Some("messages.upsert"))
    );
    // Evolution API's body (golden); this system's message properties on top of it.
    common::assert_golden(
        "rabbitmq",
        &got[0].data,
        &[("INSTANCE", &instance), ("ID", &ids[0])],
    );
    assert_eq!(
        got[0].properties.message_id().as_ref().map(|m| m.as_str()),
        Some(ids[0].as_str())
    );
    let queue = format!("{instance}.messages.upsert");
    assert_eq!(consumer.drain(&queue).await, 1, "Evolution's queue name");

    let got = wait_nats(&received, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject.as_str(), format!("{instance}.messages.upsert"));
    common::assert_golden(
        "nats",
        &got[0].payload,
        &[("INSTANCE", &instance), ("ID", &ids[0])],
    );
    // The stream had no subject for this instance: `{instance}.>` was added when first seen.
    let stored = read_stream(&client, &stream, &format!("{instance}.>"), 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(nats_header(&stored[0], "Nats-Msg-Id"), ids[0]);
    let js = async_nats::jetstream::new(client.clone());
    let _ignored = js.delete_stream(&stream).await;
    consumer.cleanup(&[queue], &[&instance]).await;
}

// ---------------------------------------------------------------------------------------------
// Payload filters
// ---------------------------------------------------------------------------------------------

fn payload_id(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn rabbitmq_filter_lets_only_matching_events_through() {
    let Some(uri) = service_env("EVOLUTION_TEST_RABBITMQ_URI") else {
        return;
    };
    let tag = unique();
    let exchange = format!("evolution-e2e-{tag}");
    let instance = format!("rmq-filter-{tag}");
    let consumer = AmqpConsumer::bind(&uri, &exchange, &format!("evolution.{instance}.*")).await;
    let server = Server::start(
        "rabbitmq-filter",
        &[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &uri),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
        ],
    )
    .await;
    let settings = json!({"enabled": true, "events": ["MESSAGES_UPSERT"], "filter": common::group_filter()});
    common::create_instance(&server, &instance, json!({ "rabbitmq": settings })).await;
    let ids = common::post_filtered(&server, &instance).await;
    let got: Vec<String> = consumer
        .wait(1)
        .await
        .iter()
        .map(|d| payload_id(&d.data))
        .collect();
    assert_eq!(got, [ids[2].clone()]);
    common::assert_only_logged(&server, &instance, "rabbitmq", &[&ids[2]]).await;
    common::assert_bad_filter_refused(&server, &instance, "rabbitmq", json!({"enabled": true})).await;
    let queues = [format!("evolution.{instance}.messages-upsert")];
    assert_eq!(consumer.drain(&queues[0]).await, 1);
    consumer.cleanup(&queues, &[&exchange]).await;
}

#[tokio::test]
async fn nats_filter_lets_only_matching_events_through() {
    let Some(url) = service_env("EVOLUTION_TEST_NATS_URL") else {
        return;
    };
    let instance = format!("nats-filter-{}", unique());
    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, format!("evolution.{instance}.>")).await;
    let server = Server::start("nats-filter", &[("NATS_ENABLED", "true"), ("NATS_URI", &url)]).await;
    let settings = json!({"enabled": true, "events": ["MESSAGES_UPSERT"], "filter": common::group_filter()});
    common::create_instance(&server, &instance, json!({ "nats": settings })).await;
    let ids = common::post_filtered(&server, &instance).await;
    let got: Vec<String> = wait_nats(&received, 1)
        .await
        .iter()
        .map(|m| payload_id(&m.payload))
        .collect();
    assert_eq!(got, [ids[2].clone()]);
    common::assert_only_logged(&server, &instance, "nats", &[&ids[2]]).await;
    common::assert_bad_filter_refused(&server, &instance, "nats", json!({"enabled": true})).await;
}

// ---------------------------------------------------------------------------------------------
// Catch-up by sequence
// ---------------------------------------------------------------------------------------------

/// `GET /events/{instance}?after=` with `key`, every page until `more` is false.
async fn catch_up(server: &Server, key: &str, instance: &str, after: u64) -> Vec<Value> {
    let mut after = after;
    let mut events = Vec::new();
    loop {
        let (status, page) = server
            .call(
                "GET",
                &format!("/events/{instance}?after={after}&limit=2"),
                Some(key),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["after"], after);
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        after = page["next"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            return events;
        }
    }
}

/// A core NATS subscriber is offline for a while (core NATS keeps nothing for it): when it is back,
/// the sequence of the next event shows a gap, and the catch-up route, with the instance's own
/// token, gives it the missed events with the bodies NATS carries.
#[tokio::test]
async fn a_subscriber_that_missed_events_fills_the_gap_through_the_catch_up_route() {
    let Some(url) = service_env("EVOLUTION_TEST_NATS_URL") else {
        return;
    };
    let instance = format!("catchup-{}", unique());
    let token = format!("token-{instance}");
    let server = Server::start("nats-catchup", &[("NATS_ENABLED", "true"), ("NATS_URI", &url)]).await;
    for (name, token) in [
        (instance.as_str(), token.as_str()),
        ("catchup-other", "token-catchup-other"),
    ] {
        let (status, body) = server
            .call(
                "POST",
                "/instance/create",
                Some(common::API_KEY),
                Some(json!({"instanceName": name, "token": token,
                            "nats": {"enabled": true, "events": ["MESSAGES_UPSERT"]}})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let subject = format!("evolution.{instance}.>");
    let post = |n: usize| {
        let events: Vec<Value> = (0..n).map(|_| common::message(false, "1@g.us")).collect();
        common::post_events(&server, &instance, Value::Array(events))
    };
    let seq = |m: &async_nats::Message| {
        serde_json::from_slice::<Value>(&m.payload).unwrap()["sequence"]
            .as_u64()
            .unwrap()
    };

    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, subject.clone()).await;
    post(2).await;
    let before = wait_nats(&received, 2).await;
    assert_eq!(before.len(), 2);
    let last_seen = seq(&before[1]);
    drop(client);
    let missed = post(3).await;
    // The missed events are published (to no subscriber) before the subscriber comes back: on a
    // busy machine a late one would otherwise reach the new subscription.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = server
            .call(
                "GET",
                &format!("/deliveries/{instance}?channel=nats&status=delivered"),
                Some(common::API_KEY),
                None,
            )
            .await;
        if body.as_array().map_or(0, Vec::len) >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the missed events were not published: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, subject).await;
    let live = post(1).await;
    let after = wait_nats(&received, 1).await;
    assert_eq!(after.len(), 1);
    assert!(seq(&after[0]) > last_seen + 1, "the subscriber sees a gap");

    let filled = catch_up(&server, &token, &instance, last_seen).await;
    let ids: Vec<&str> = filled.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = missed.iter().map(String::as_str).collect();
    want.push(&live[0]);
    assert_eq!(
        ids, want,
        "the missed events, then the live one, in sequence order"
    );
    let sequences: Vec<u64> = filled.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(
        sequences,
        (last_seen + 1..=seq(&after[0])).collect::<Vec<_>>(),
        "no gap left"
    );
    let live_body: Value = serde_json::from_slice(&after[0].payload).unwrap();
    assert_eq!(filled[3], live_body, "the body NATS carried");
    let earlier = catch_up(&server, common::API_KEY, &instance, last_seen - 1).await;
    let first_body: Value = serde_json::from_slice(&before[1].payload).unwrap();
    assert_eq!(earlier[0], first_body, "the global key reads it too");

    // Visibility: another instance's token cannot read it; bad parameters are named.
    let (status, body) = server
        .call(
            "GET",
            &format!("/events/{instance}?after=0"),
            Some("token-catchup-other"),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    for (query, field) in [("after=-1", "after"), ("limit=0", "limit"), ("after=0&x=1", "x")] {
        let (status, body) = server
            .call("GET", &format!("/events/{instance}?{query}"), Some(&token), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(field), "{query}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Oversize events by reference
// ---------------------------------------------------------------------------------------------

/// With `NATS_OVERSIZE=reference`, an event over `NATS_MAX_PAYLOAD_BYTES` reaches the subscriber
/// as a reference whose signed URL returns it whole until `EVENTS_REFERENCE_TTL` passes (then 403);
/// a small event arrives whole.
#[tokio::test]
async fn nats_oversize_events_arrive_as_signed_expiring_references() {
    let Some(url) = service_env("EVOLUTION_TEST_NATS_URL") else {
        return;
    };
    let instance = format!("nats-ref-{}", unique());
    let client = async_nats::connect(&url).await.unwrap();
    let received = subscribe(&client, format!("evolution.{instance}.>")).await;
    let server = Server::start(
        "nats-reference",
        &[
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &url),
            ("NATS_OVERSIZE", "reference"),
            ("NATS_MAX_PAYLOAD_BYTES", "4096"),
            ("EVENTS_REFERENCE_TTL", "3s"),
        ],
    )
    .await;
    common::create_instance(
        &server,
        &instance,
        json!({"nats": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    let pad = "x".repeat(8_000);
    let ids = common::post_events(
        &server,
        &instance,
        json!([common::message(false, "1@g.us"), common::padded(&pad)]),
    )
    .await;
    let got = wait_nats(&received, 2).await;
    assert_eq!(got.len(), 2);
    let small: Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(small["id"], ids[0].as_str());
    assert_eq!(
        small["data"]["key"]["fromMe"], false,
        "a small event arrives whole"
    );
    assert!(got[1].payload.len() < 1024, "{} bytes", got[1].payload.len());
    let reference: Value = serde_json::from_slice(&got[1].payload).unwrap();
    let link = common::check_reference(&reference, &ids[1], &instance, &pad).await;
    assert_eq!(
        nats_header(&got[1], "id"),
        ids[1],
        "the headers still name the event"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let expired = reqwest::get(&link).await.unwrap();
    assert_eq!(expired.status(), 403, "expired");
    assert!(expired.text().await.unwrap().contains("expired"));
}

/// With `RABBITMQ_OVERSIZE=reference`, an event over `RABBITMQ_MAX_PAYLOAD_BYTES` reaches the
/// consumer as a reference whose signed URL returns it whole.
#[tokio::test]
async fn rabbitmq_oversize_events_arrive_as_references() {
    let Some(uri) = service_env("EVOLUTION_TEST_RABBITMQ_URI") else {
        return;
    };
    let tag = unique();
    let exchange = format!("evolution-e2e-{tag}");
    let instance = format!("rmq-ref-{tag}");
    let consumer = AmqpConsumer::bind(&uri, &exchange, &format!("evolution.{instance}.*")).await;
    let server = Server::start(
        "rabbitmq-reference",
        &[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &uri),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            ("RABBITMQ_OVERSIZE", "reference"),
            ("RABBITMQ_MAX_PAYLOAD_BYTES", "4096"),
        ],
    )
    .await;
    common::create_instance(
        &server,
        &instance,
        json!({"rabbitmq": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    let pad = "y".repeat(8_000);
    let ids = common::post_events(
        &server,
        &instance,
        json!([common::message(false, "1@g.us"), common::padded(&pad)]),
    )
    .await;
    let got = consumer.wait(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(payload_id(&got[0].data), ids[0]);
    let reference: Value = serde_json::from_slice(&got[1].data).unwrap();
    common::check_reference(&reference, &ids[1], &instance, &pad).await;
    let queues = [format!("evolution.{instance}.messages-upsert")];
    consumer.drain(&queues[0]).await;
    consumer.cleanup(&queues, &[&exchange]).await;
}
