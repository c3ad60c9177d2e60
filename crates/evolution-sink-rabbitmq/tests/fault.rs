//! RabbitMQ restarts in the middle of a 20 000-event stream: every event id still reaches the
//! consumer (duplicates allowed, losses not). Library level — `Dispatcher` over a `MemoryOutbox`,
//! the real sink, a real consumer — on a **private** RabbitMQ node (own name, ports and data
//! directory), so that the restart never disturbs the tests using the shared broker.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, EventEnvelope, EventKind, GlobalSettings, InstanceName, RawValue, RetryPolicy, Uuid,
};
use evolution_outbox::{MemoryOutbox, Outbox};
use evolution_sink_rabbitmq::{AmqpUri, RabbitmqConfig, RabbitmqSink};
use evolution_sink_testkit::require;
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use common::PrivateBroker;

const EVENTS: usize = 20_000;
const INSTANCES: usize = 4;

#[test]
fn a_broker_restart_loses_no_event() {
    evolution_sink_testkit::__run_case(async {
        let Some(mut broker) = require(PrivateBroker::start().await) else {
            return;
        };
        let exchange = "evolution-fault";
        let mut global = GlobalSettings::default();
        global.rabbitmq.enabled = true;
        global.rabbitmq.global_enabled = true;
        global.rabbitmq.events.insert(EventKind::MessagesUpsert);
        exchange.clone_into(&mut global.rabbitmq_exchange);
        let sink = RabbitmqSink::new(RabbitmqConfig {
            reconnect_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            ..RabbitmqConfig::new(AmqpUri::parse(&broker.uri()).unwrap())
        })
        .unwrap();
        let outbox = Arc::new(MemoryOutbox::default());
        let config = ChannelConfig {
            // The broker default (retry for ever), with a shorter cap so the test ends sooner.
            retry: RetryPolicy {
                max_delay: Duration::from_secs(2),
                ..RetryPolicy::forever()
            },
            ..ChannelConfig::default_for(Channel::Rabbitmq)
        };
        let dispatcher = Dispatcher::builder(
            Arc::clone(&outbox) as Arc<dyn Outbox>,
            Router::new(global).unwrap(),
        )
        .sink_with(Arc::new(sink), config)
        .start()
        .unwrap();

        // The producer: 20 000 events over 4 instances, in chunks, for a few seconds.
        let producer = {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EVENTS);
                for chunk in 0..EVENTS / 100 {
                    let events = (0..100)
                        .map(|i| {
                            let n = chunk * 100 + i;
                            let data =
                                RawValue::from_string(format!(r#"{{"n":{n},"text":"{}"}}"#, "x".repeat(900)))
                                    .unwrap();
                            let instance = InstanceName::new(&format!("fault-{}", n % INSTANCES)).unwrap();
                            (
                                EventEnvelope::new(EventKind::MessagesUpsert, instance, data),
                                None,
                            )
                        })
                        .collect();
                    for stored in dispatcher.emit_many(events).await.unwrap() {
                        ids.push(stored.id());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ids
            })
        };

        // Restart the broker once a quarter of the stream went out.
        let delivered = |d: &Dispatcher| d.counters(Channel::Rabbitmq).unwrap().delivered;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while delivered(&dispatcher) < (EVENTS / 4) as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress before the restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        broker.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.boot().await;

        let ids = producer.await.unwrap();
        assert_eq!(ids.len(), EVENTS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let stats = outbox.stats(Channel::Rabbitmq).await.unwrap();
            if stats.pending == 0 && stats.in_flight == 0 {
                assert_eq!(stats.dead, 0, "nothing may go to the dead letters");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deliveries still pending 90 s after the restart: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let counters = dispatcher.counters(Channel::Rabbitmq).unwrap();
        assert!(
            counters.failed_attempts > 0,
            "the restart must have failed some sends: {counters:?}"
        );
        dispatcher.shutdown(Duration::from_secs(5)).await;

        // The consumer reads the four durable queues.
        let connection = Connection::connect(&broker.uri(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut messages = 0usize;
        for i in 0..INSTANCES {
            let queue = format!("evolution.fault-{i}.messages-upsert");
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut last = None;
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
            {
                messages += 1;
                let id: Uuid = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap();
                let n = serde_json::from_slice::<serde_json::Value>(&delivery.data).unwrap()["data"]["n"]
                    .as_u64()
                    .unwrap();
                // Per queue, the last copy of each event arrives in order (at-least-once).
                if seen.insert(id) {
                    if let Some(prev) = last {
                        assert!(
                            n > prev,
                            "queue {queue}: event {n} arrived after {prev} the first time"
                        );
                    }
                    last = Some(n);
                }
            }
        }
        let missing = ids.iter().filter(|id| !seen.contains(id)).count();
        assert_eq!(
            missing,
            0,
            "{missing} of {EVENTS} events never reached the consumer ({messages} messages read, {} distinct)",
            seen.len()
        );
        #[allow(clippy::print_stderr, reason = "the numbers of the run are worth seeing")]
        {
            eprintln!(
                "rabbitmq fault test: {EVENTS} events, {messages} messages read ({} duplicates), {} failed attempts",
                messages - seen.len(),
                counters.failed_attempts
            );
        }
    });
}
