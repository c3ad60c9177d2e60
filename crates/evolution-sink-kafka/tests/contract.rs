//! The shared contract suite against a real Kafka-protocol broker: tansu, started by
//! `scripts/services up kafka` (`EVOLUTION_TEST_KAFKA_BROKERS`). Each case gets fresh topics (the
//! sink creates them: `auto_create_topics`), read back by an independent consumer.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evolution_events::{Destination, EventSink, KafkaTarget, Uuid, async_trait};
use evolution_sink_kafka::{KafkaConfig, KafkaSink};
use evolution_sink_testkit::fixtures::closed_port;
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};

struct KafkaFixture {
    brokers: String,
    sink: Arc<dyn EventSink>,
    max_payload_bytes: usize,
    /// One consumer per destination, started on the first look and kept (a fresh consumer needs
    /// a moment to start, longer than the suite's short "nothing more arrives" windows).
    watchers: Mutex<HashMap<String, Arc<common::TopicWatcher>>>,
}

async fn kafka() -> Result<KafkaFixture, Skip> {
    let brokers = std::env::var("EVOLUTION_TEST_KAFKA_BROKERS").map_err(|_| {
        Skip::new("set EVOLUTION_TEST_KAFKA_BROKERS=127.0.0.1:9092 (eval \"$(scripts/services env kafka)\")")
    })?;
    let sink = KafkaSink::new(KafkaConfig {
        auto_create_topics: true,
        request_timeout: Duration::from_secs(20),
        ..KafkaConfig::new([brokers.as_str()])
    })
    .map_err(|e| Skip::new(format!("cannot build the Kafka sink for {brokers}: {e}")))?;
    sink.health_check()
        .await
        .map_err(|e| Skip::new(format!("Kafka at {brokers} is not answering: {e}")))?;
    Ok(KafkaFixture {
        brokers,
        max_payload_bytes: sink.config().max_payload_bytes,
        sink: Arc::new(sink),
        watchers: Mutex::new(HashMap::new()),
    })
}

#[async_trait]
impl ContractFixture for KafkaFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        Destination::Kafka(KafkaTarget {
            topic: format!("evolution.contract-{}.messages-upsert", Uuid::now_v7().simple()),
            key: "contract-instance".to_owned(),
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Kafka(target) = destination else {
            panic!("not a Kafka destination: {destination:?}");
        };
        let watcher = Arc::clone(
            self.watchers
                .lock()
                .unwrap()
                .entry(target.topic.clone())
                .or_insert_with(|| Arc::new(common::TopicWatcher::start(&self.brokers, &target.topic, 1))),
        );
        watcher
            .wait(expected, within)
            .await
            .into_iter()
            .map(|r| Observed {
                id: r.id(),
                payload: r.payload.into(),
            })
            .collect()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.max_payload_bytes)
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let sink = KafkaSink::new(KafkaConfig {
            request_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(1),
            ..KafkaConfig::new([format!("127.0.0.1:{}", closed_port())])
        })
        .unwrap();
        Arc::new(sink)
    }
}

contract_suite!(kafka);
