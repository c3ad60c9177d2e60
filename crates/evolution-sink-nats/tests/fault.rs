//! NATS (JetStream mode) restarts in the middle of a 20 000-event stream: every event id is in
//! the stream afterwards (the stream drops redeliveries by `Nats-Msg-Id`; losses are not allowed).
//! Library level — `Dispatcher` over a `MemoryOutbox`, the real sink, a real consumer — on a
//! **private** `nats-server -js` (own port and store), so the restart never disturbs the tests
//! using the shared server.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use evolution_events::{
    Channel, EventEnvelope, EventKind, GlobalSettings, InstanceName, RawValue, RetryPolicy, Uuid,
};
use evolution_outbox::{MemoryOutbox, Outbox};
use evolution_sink_nats::{JetStreamConfig, NatsConfig, NatsMode, NatsSink, NatsUrl};
use evolution_sink_testkit::require;
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use futures_util::StreamExt;

use common::{PrivateServer, header};

const EVENTS: usize = 20_000;
const INSTANCES: usize = 4;

#[test]
fn a_server_restart_loses_no_event_in_jetstream_mode() {
    evolution_sink_testkit::__run_case(async {
        let Some(mut server) = require(PrivateServer::start().await) else {
            return;
        };
        let mut global = GlobalSettings::default();
        global.nats.enabled = true;
        global.nats.global_enabled = true;
        global.nats.events.insert(EventKind::MessagesUpsert);
        let sink = NatsSink::new(NatsConfig {
            mode: NatsMode::JetStream(JetStreamConfig::new("FAULT", vec!["evolution.>".into()])),
            reconnect_max: Duration::from_secs(1),
            ..NatsConfig::new(NatsUrl::parse(&server.url()).unwrap())
        })
        .unwrap();
        let outbox = Arc::new(MemoryOutbox::default());
        let config = ChannelConfig {
            retry: RetryPolicy {
                max_delay: Duration::from_secs(2),
                ..RetryPolicy::forever()
            },
            ..ChannelConfig::default_for(Channel::Nats)
        };
        let dispatcher = Dispatcher::builder(
            Arc::clone(&outbox) as Arc<dyn Outbox>,
            Router::new(global).unwrap(),
        )
        .sink_with(Arc::new(sink), config)
        .start()
        .unwrap();

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

        let delivered = |d: &Dispatcher| d.counters(Channel::Nats).unwrap().delivered;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while delivered(&dispatcher) < (EVENTS / 4) as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress before the restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered_at_stop = delivered(&dispatcher);
        server.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.boot().await;

        let ids = producer.await.unwrap();
        assert_eq!(ids.len(), EVENTS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let stats = outbox.stats(Channel::Nats).await.unwrap();
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
        // The restart came mid-stream. Whether it failed sends (retried by the dispatcher) or
        // async-nats absorbed it by reconnecting and publishing its buffer depends on timing;
        // either way every event must be in the stream.
        assert!(
            delivered_at_stop < EVENTS as u64,
            "the restart must come while events are still being delivered ({delivered_at_stop} of {EVENTS})"
        );
        let counters = dispatcher.counters(Channel::Nats).unwrap();
        eprintln!(
            "nats fault: delivered before the stop {delivered_at_stop}, failed attempts {}, retried {}",
            counters.failed_attempts, counters.retried
        );
        dispatcher.shutdown(Duration::from_secs(5)).await;

        // The consumer reads the whole stream.
        let client = async_nats::connect(server.url()).await.unwrap();
        let stream = async_nats::jetstream::new(client)
            .get_stream("FAULT")
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..pull::Config::default()
            })
            .await
            .unwrap();
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut messages = 0usize;
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(5000)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .unwrap();
            let before = messages;
            while let Some(Ok(message)) = batch.next().await {
                messages += 1;
                seen.insert(header(&message, "Nats-Msg-Id").unwrap().parse().unwrap());
            }
            if messages == before {
                break;
            }
        }
        let missing = ids.iter().filter(|id| !seen.contains(id)).count();
        assert_eq!(
            missing,
            0,
            "{missing} of {EVENTS} events are not in the stream ({messages} messages read, {} distinct)",
            seen.len()
        );
        #[allow(clippy::print_stderr, reason = "the numbers of the run are worth seeing")]
        {
            eprintln!(
                "nats fault test: {EVENTS} events, {messages} messages in the stream ({} duplicates), {} failed attempts",
                messages - seen.len(),
                counters.failed_attempts
            );
        }
    });
}
