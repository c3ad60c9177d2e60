//! Kafka-specific behaviour against the shared tansu broker (`EVOLUTION_TEST_KAFKA_BROKERS`): the
//! record's key and headers, topic creation with the configured partitions, and isolation — a
//! topic that cannot be used fails only its own deliveries (Evolution API tears down delivery for
//! every instance when one topic is bad).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, Delivery, Destination, ErrorKind, EventEnvelope, EventKind, EventSink, InstanceName,
    KafkaTarget, NamingProfile, Retry, Scope, Uuid,
};
use evolution_sink_kafka::{KafkaConfig, KafkaSink};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::Producer as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn delivery(id: u64, instance: &str, topic: &str) -> Delivery {
    let data = serde_json::value::to_raw_value(&json!({"n": id})).unwrap();
    let envelope = EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new(instance).unwrap(),
        data,
    )
    .with_sequence(id);
    Delivery {
        id,
        channel: Channel::Kafka,
        scope: Scope::Instance,
        profile: NamingProfile::Seed,
        envelope: Arc::new(envelope),
        destination: Arc::new(Destination::Kafka(KafkaTarget {
            topic: topic.to_owned(),
            key: instance.to_owned(),
        })),
        ordering_key: None,
        attempt: 1,
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::now_v7().simple().to_string()[20..])
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn records_carry_the_instance_key_and_the_event_headers_in_created_topics() {
    let Some(brokers) = common::shared_brokers() else {
        return;
    };
    let sink = KafkaSink::new(KafkaConfig {
        auto_create_topics: true,
        num_partitions: 3,
        ..KafkaConfig::new([brokers.as_str()])
    })
    .unwrap();
    let instance = unique("acme");
    let topic = format!("evolution.{instance}.messages-upsert");
    let batch: Vec<Delivery> = (1..=10).map(|i| delivery(i, &instance, &topic)).collect();
    let report = sink.send(&batch).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());

    let records = common::read_topic(&brokers, &topic, 3, 10, WAIT).await;
    assert_eq!(records.len(), 10);
    // One key: one partition, in send order.
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    for (record, sent) in records.iter().zip(&batch) {
        assert_eq!(record.key.as_deref(), Some(instance.as_bytes()));
        assert_eq!(record.header("event"), "MESSAGES_UPSERT");
        assert_eq!(record.header("instance"), instance);
        assert_eq!(record.id(), sent.envelope.id());
        assert_eq!(record.payload, sent.payload().to_vec());
    }
    // The topic was created with KAFKA_NUM_PARTITIONS partitions.
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let metadata = producer
        .client()
        .fetch_metadata(Some(&topic), Duration::from_secs(5))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 3);
    sink.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_topic_that_cannot_be_used_fails_only_its_own_deliveries() {
    let Some(brokers) = common::shared_brokers() else {
        return;
    };
    // No auto-creation, by the sink or (as with a broker whose auto.create.topics.enable is off)
    // by the broker: a missing topic is the operator's to create.
    let sink = KafkaSink::new(KafkaConfig {
        broker_auto_create: false,
        ..KafkaConfig::new([brokers.as_str()])
    })
    .unwrap();
    let good = unique("good");
    let good_topic = format!("evolution.{good}.messages-upsert");
    create_topic(&brokers, &good_topic, 1).await;
    let missing_topic = format!("evolution.{}.messages-upsert", unique("missing"));
    let invalid_topic = "evolution.bad topic!.messages-upsert".to_owned();

    let batch = vec![
        delivery(1, &good, &good_topic),
        delivery(2, "missing", &missing_topic),
        delivery(3, &good, &good_topic),
        delivery(4, "invalid", &invalid_topic),
        delivery(5, &good, &good_topic),
    ];
    let report = sink.send(&batch).await.unwrap();
    let failures = report.into_failures();
    let failed: Vec<usize> = failures.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, [1, 3], "{failures:?}");
    let missing = &failures[0].1;
    // The broker (tansu) does not create topics either: not an endless silent retry, a
    // failure that is not retried (the delivery goes dead), and a health check naming the topic.
    assert_eq!(
        (missing.kind(), missing.retry()),
        (ErrorKind::ConfigInvalid, Retry::Never),
        "{missing}"
    );
    assert!(
        missing.message().contains(&missing_topic) && missing.message().contains("KAFKA_AUTO_CREATE_TOPICS"),
        "{missing}"
    );
    let unhealthy = sink.health_check().await.unwrap_err();
    assert!(unhealthy.message().contains(&missing_topic), "{unhealthy}");
    assert!(!failures[1].1.is_retryable(), "{}", failures[1].1);

    // The producer is not torn down: the good instance keeps flowing.
    let more = vec![delivery(6, &good, &good_topic)];
    assert!(sink.send(&more).await.unwrap().is_success());
    let records = common::read_topic(&brokers, &good_topic, 1, 4, WAIT).await;
    let ids: Vec<Uuid> = records.iter().map(common::Record::id).collect();
    let expected: Vec<Uuid> = [&batch[0], &batch[2], &batch[4], &more[0]]
        .iter()
        .map(|d| d.envelope.id())
        .collect();
    assert_eq!(ids, expected);

    // Once the operator creates the missing topic, the health check is fine again and its
    // delivery, redriven, goes through.
    create_topic(&brokers, &missing_topic, 1).await;
    sink.health_check().await.unwrap();
    let mut retry = batch[1].clone();
    retry.attempt = 2;
    let report = sink.send(std::slice::from_ref(&retry)).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());
    let records = common::read_topic(&brokers, &missing_topic, 1, 1, WAIT).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id(), retry.envelope.id());
}

/// `KAFKA_AUTO_CREATE_TOPICS=false` (the default, as Evolution API's): topic creation is left to
/// the broker, which the producer does not forbid — tansu creates a topic on demand.
#[tokio::test]
async fn without_auto_create_the_broker_may_create_topics() {
    let Some(brokers) = common::shared_brokers() else {
        return;
    };
    let sink = KafkaSink::new(KafkaConfig::new([brokers.as_str()])).unwrap();
    assert!(!sink.config().auto_create_topics);
    let instance = unique("broker-created");
    let topic = format!("evolution.{instance}.messages-upsert");
    let batch = vec![delivery(1, &instance, &topic)];
    let report = sink.send(&batch).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());
    // The broker chose the partitions; the record is in one of them.
    let partitions = common::partitions(&brokers, &topic);
    assert!(partitions > 0, "the broker created {topic}");
    let records = common::read_topic(&brokers, &topic, partitions, 1, WAIT).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id(), batch[0].envelope.id());
    sink.health_check().await.unwrap();
}

#[tokio::test]
async fn prepare_creates_the_topics_of_saved_settings() {
    let Some(brokers) = common::shared_brokers() else {
        return;
    };
    let sink = KafkaSink::new(KafkaConfig {
        auto_create_topics: true,
        ..KafkaConfig::new([brokers.as_str()])
    })
    .unwrap();
    let topic = format!("evolution.{}.call", unique("prep"));
    sink.prepare(&[Destination::Kafka(KafkaTarget {
        topic: topic.clone(),
        key: "prep".into(),
    })])
    .await
    .unwrap();
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = producer
        .client()
        .fetch_metadata(Some(&topic), Duration::from_secs(5))
        .unwrap();
    assert_eq!(metadata.topics()[0].error(), None, "the topic exists");
    assert_eq!(metadata.topics()[0].partitions().len(), 1);
}
