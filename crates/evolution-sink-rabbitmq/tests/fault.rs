//! RabbitMQ restarts in the middle of a 20 000-event stream: every event id still reaches the
//! consumer (duplicates allowed, losses not). Library level — `Dispatcher` over a `MemoryOutbox`,
//! the real sink, a real consumer — on a **private** RabbitMQ node (own name, ports and data
//! directory), so that the restart never disturbs the tests using the shared broker.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{EventKind, GlobalSettings, Uuid};
use evolution_sink_rabbitmq::{AmqpUri, RabbitmqConfig, RabbitmqSink};
use evolution_sink_testkit::require;
use evolution_sinks::testing::restart_mid_stream;
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
        let run = restart_mid_stream(Arc::new(sink), global, EVENTS, INSTANCES, async {
            broker.stop();
            tokio::time::sleep(Duration::from_secs(1)).await;
            broker.boot().await;
        })
        .await;
        let (ids, counters) = (run.ids, run.counters);
        assert!(
            counters.failed_attempts > 0,
            "the restart must have failed some sends: {counters:?}"
        );

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
