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
use evolution_events::{EventKind, GlobalSettings, Uuid};
use evolution_sink_nats::{JetStreamConfig, NatsConfig, NatsMode, NatsSink, NatsUrl};
use evolution_sink_testkit::require;
use evolution_sinks::testing::restart_mid_stream;
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
        let run = restart_mid_stream(Arc::new(sink), global, EVENTS, INSTANCES, async {
            server.stop().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            server.boot().await;
        })
        .await;
        let (ids, counters) = (run.ids, run.counters);
        // The restart came mid-stream. Whether it failed sends (retried by the dispatcher) or
        // async-nats absorbed it by reconnecting and publishing its buffer depends on timing;
        // either way every event must be in the stream.
        assert!(
            run.delivered_at_stop < EVENTS as u64,
            "the restart must come while events are still being delivered ({} of {EVENTS})",
            run.delivered_at_stop
        );

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
