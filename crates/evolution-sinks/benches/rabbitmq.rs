//! Publishes per second to RabbitMQ through `Dispatcher` + `RabbitmqSink` versus a raw lapin loop
//! doing the same work, on the same broker, in one run: 20 000 events of ~1 KB over 16 instances
//! (16 exchange/queue destinations, quorum queues), persistent messages with the same properties,
//! mandatory, publisher confirms, batches of 256 published back to back then their confirms
//! awaited, 4 batches in flight (the dispatcher's 4 workers; the raw loop's 4 tasks on one
//! confirm-mode channel).
//!
//! A second, fixed-rate phase measures latency: [`PACED`] events offered one at a time at [`RATE`]
//! per second (well below both paths' saturation), each timed from its hand-over (raw: the
//! `basic_publish` call; pipeline: the `Dispatcher::emit` call) to the broker's publisher confirm
//! (raw: that message's confirm; pipeline: `RabbitmqSink::send` returned it confirmed, just before
//! the dispatcher settles it).
//!
//! Run: `eval "$(scripts/services env)"; cargo bench -p evolution-sinks --bench rabbitmq`
//! (default broker `amqp://guest:guest@127.0.0.1:5672/%2f`). Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use evolution_events::{Channel, EventEnvelope, EventKind, EventSink, GlobalSettings, NamingProfile};
use evolution_outbox::{MemoryOutbox, Outbox};
use evolution_sink_testkit::bench::{Acked, Acks, ms, paced, percentiles};
use evolution_sinks::rabbitmq::{AmqpUri, RabbitmqConfig, RabbitmqSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use lapin::PublisherConfirm;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

const EVENTS: usize = 20_000;
const INSTANCES: usize = 16;
const BATCH: usize = 256;
const IN_FLIGHT: usize = 4;
/// Events of the fixed-rate (latency) phase, per path.
const PACED: usize = 6_000;
/// Events per second offered in the latency phase.
const RATE: f64 = 2_000.0;

fn envelopes(tag: &str) -> Vec<EventEnvelope> {
    common::envelopes(EVENTS, INSTANCES, tag)
}

fn routing_key(instance: &str) -> String {
    format!("evolution.{instance}.messages-upsert")
}

/// The dispatcher (memory outbox, the channel's defaults) over a `RabbitmqSink` (wrapped to record
/// its confirms when `acks` is given), global route.
fn start(uri: &str, exchange: &str, acks: Option<Acks>) -> Dispatcher {
    let mut global = GlobalSettings::default();
    global.rabbitmq.enabled = true;
    global.rabbitmq.global_enabled = true;
    global.rabbitmq.events.insert(EventKind::MessagesUpsert);
    exchange.clone_into(&mut global.rabbitmq_exchange);
    let sink: Arc<dyn EventSink> =
        Arc::new(RabbitmqSink::new(RabbitmqConfig::new(AmqpUri::parse(uri).unwrap())).unwrap());
    let sink = match acks {
        Some(acks) => Arc::new(Acked::new(sink, acks)),
        None => sink,
    };
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::default());
    Dispatcher::builder(outbox, Router::new(global).unwrap())
        .sink_with(sink, ChannelConfig::default_for(Channel::Rabbitmq))
        .start()
        .unwrap()
}

/// Through the dispatcher: emits every event (global route), waits until all are delivered.
async fn dispatcher(uri: &str, exchange: &str, events: Vec<EventEnvelope>) -> f64 {
    common::throughput(start(uri, exchange, None), Channel::Rabbitmq, events).await
}

/// Publishes one event as the sink does (serializing it, same properties, mandatory).
async fn publish(channel: &lapin::Channel, exchange: &str, envelope: &EventEnvelope) -> PublisherConfirm {
    let id = envelope.id().to_string();
    let mut headers = FieldTable::default();
    headers.insert(
        "event".into(),
        AMQPValue::LongString(LongString::from("MESSAGES_UPSERT")),
    );
    headers.insert(
        "instance".into(),
        AMQPValue::LongString(LongString::from(envelope.instance().as_str())),
    );
    headers.insert("id".into(), AMQPValue::LongString(LongString::from(id.as_str())));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.as_str().into())
        .with_timestamp(u64::try_from(envelope.date_time().timestamp()).unwrap())
        .with_app_id("evolution-events".into())
        .with_headers(headers);
    channel
        .basic_publish(
            exchange.into(),
            routing_key(envelope.instance().as_str()).as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &envelope.payload(NamingProfile::Seed),
            properties,
        )
        .await
        .unwrap()
}

/// A connection and a channel in confirm mode on it, as the raw loops publish.
async fn confirm_channel(uri: &str) -> (Connection, lapin::Channel) {
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Latency phase of the raw loop: each event published at its time on one confirm-mode channel,
/// its confirm awaited in its own task.
async fn raw_paced(uri: &str, exchange: &str, events: Vec<EventEnvelope>) -> (Duration, Duration) {
    let (connection, channel) = confirm_channel(uri).await;
    let acks: Acks = Acks::default();
    let sent = paced(events, RATE, async |envelope| {
        let confirm = publish(&channel, exchange, &envelope).await;
        let acks = acks.clone();
        tokio::spawn(async move {
            let confirmation = confirm.await.unwrap();
            assert!(confirmation.is_ack() && confirmation.take_message().is_none());
            acks.note(envelope.id().to_string(), Instant::now());
        });
    })
    .await;
    let latency = percentiles(&sent, &acks).await;
    let _ignored = connection.close(200, "done".into()).await;
    latency
}

/// Latency phase of the pipeline: each event given to `Dispatcher::emit` at its time.
async fn dispatcher_paced(uri: &str, exchange: &str, events: Vec<EventEnvelope>) -> (Duration, Duration) {
    let acks: Acks = Acks::default();
    let dispatcher = start(uri, exchange, Some(acks.clone()));
    let sent = common::emit_paced(&dispatcher, events, RATE, None).await;
    let latency = percentiles(&sent, &acks).await;
    dispatcher.shutdown(Duration::from_secs(5)).await;
    latency
}

/// The raw loop: the same topology declared up front, then `IN_FLIGHT` tasks take batches of
/// `BATCH` events, publish each (serializing it, same properties as the sink) and await the
/// batch's confirms.
async fn raw(uri: &str, exchange: &str, events: Vec<EventEnvelope>) -> f64 {
    let (connection, channel) = confirm_channel(uri).await;
    let events = Arc::new(events);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (channel, events, next, exchange) = (
                channel.clone(),
                Arc::clone(&events),
                Arc::clone(&next),
                exchange.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(BATCH, Ordering::Relaxed);
                    if first >= events.len() {
                        break;
                    }
                    let mut confirms = Vec::with_capacity(BATCH);
                    for envelope in &events[first..(first + BATCH).min(events.len())] {
                        confirms.push(publish(&channel, &exchange, envelope).await);
                    }
                    for confirm in confirms {
                        let confirmation = confirm.await.unwrap();
                        assert!(confirmation.is_ack() && confirmation.take_message().is_none());
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let _ignored = connection.close(200, "done".into()).await;
    EVENTS as f64 / elapsed.as_secs_f64()
}

/// Declares the exchange and the 16 quorum queues as the sink does (so the raw loop does not pay
/// for declarations the sink makes once).
async fn declare(uri: &str, exchange: &str, tag: &str) {
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..INSTANCES {
        let key = routing_key(&format!("{tag}-{i}"));
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        channel
            .queue_declare(
                key.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                key.as_str().into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let _ignored = connection.close(200, "done".into()).await;
}

async fn cleanup(uri: &str, exchange: &str, tag: &str) {
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for i in 0..INSTANCES {
        let key = routing_key(&format!("{tag}-{i}"));
        let _ignored = channel
            .queue_delete(key.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ignored = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
    let _ignored = connection.close(200, "done".into()).await;
}

fn main() {
    let uri = std::env::var("EVOLUTION_TEST_RABBITMQ_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut rows = Vec::new();
        // Alternate the two, three times, each on fresh queues; report the best of each.
        let (mut best_raw, mut best_dispatcher) = (0.0f64, 0.0f64);
        for round in 0..3 {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for through_dispatcher in order {
                let tag = format!("bench{round}{}", u8::from(through_dispatcher));
                let exchange = format!("evolution-bench-{tag}");
                declare(&uri, &exchange, &tag).await;
                let events = envelopes(&tag);
                let rate = if through_dispatcher {
                    dispatcher(&uri, &exchange, events).await
                } else {
                    raw(&uri, &exchange, events).await
                };
                cleanup(&uri, &exchange, &tag).await;
                if through_dispatcher {
                    best_dispatcher = best_dispatcher.max(rate);
                } else {
                    best_raw = best_raw.max(rate);
                }
                rows.push((round, through_dispatcher, rate));
            }
        }
        // Latency: both paths at a fixed rate, fresh queues, raw first.
        let mut latency = Vec::new();
        for through_dispatcher in [false, true] {
            let tag = format!("benchlat{}", u8::from(through_dispatcher));
            let exchange = format!("evolution-bench-{tag}");
            declare(&uri, &exchange, &tag).await;
            let events: Vec<EventEnvelope> = envelopes(&tag).into_iter().take(PACED).collect();
            latency.push(if through_dispatcher {
                dispatcher_paced(&uri, &exchange, events).await
            } else {
                raw_paced(&uri, &exchange, events).await
            });
            cleanup(&uri, &exchange, &tag).await;
        }
        println!("| run | path | events/s |");
        println!("|---|---|---:|");
        for (round, through_dispatcher, rate) in rows {
            let path = if through_dispatcher {
                "Dispatcher + RabbitmqSink"
            } else {
                "raw lapin loop"
            };
            println!("| {} | {path} | {rate:.0} |", round + 1);
        }
        println!(
            "\n| path ({EVENTS} events of ~1 KB, {INSTANCES} quorum queues, batches of {BATCH}, {IN_FLIGHT} in flight) | events/s (best of 3) | ratio | p50 | p99 |"
        );
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| raw lapin loop | {best_raw:.0} | 1.00× | {} | {} |",
            ms(latency[0].0),
            ms(latency[0].1)
        );
        println!(
            "| Dispatcher + RabbitmqSink | {best_dispatcher:.0} | {:.2}× | {} | {} |",
            best_dispatcher / best_raw,
            ms(latency[1].0),
            ms(latency[1].1)
        );
        println!(
            "\nevents/s: {EVENTS} events handed over at once, until the last is confirmed. p50/p99: {PACED} \
             events offered one at a time at {RATE:.0}/s, each from its hand-over (raw: `basic_publish`; \
             pipeline: `Dispatcher::emit`) to the publisher confirm (raw: its own; pipeline: \
             `RabbitmqSink::send` returned it confirmed)."
        );
    });
}
