//! SQS-specific behaviour against the shared moto server (`EVOLUTION_TEST_SQS_ENDPOINT`): message
//! attributes and FIFO ids, per-entry failures mapped to the report, the size limit, queue
//! provisioning, and re-creating a queue that disappeared.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, Delivery, Destination, ErrorKind, EventEnvelope, EventKind, EventSink, InstanceName,
    NamingProfile, Scope, SqsTarget, Uuid,
};
use evolution_sink_sqs::{SqsConfig, SqsCredentials, SqsSink};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn sink(endpoint: &str) -> SqsSink {
    SqsSink::new(SqsConfig {
        endpoint: Some(endpoint.to_owned()),
        credentials: Some(SqsCredentials::new("test", "test")),
        ..SqsConfig::new("us-east-1")
    })
    .unwrap()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::now_v7().simple().to_string()[20..])
}

fn target(instance: &str, fifo: bool) -> SqsTarget {
    let base = format!("evolution-{instance}-messages-upsert");
    SqsTarget {
        queue: if fifo { format!("{base}.fifo") } else { base },
        fifo,
        group_id: fifo.then(|| instance.to_owned()),
        server: None,
    }
}

fn delivery(id: u64, instance: &str, target: &SqsTarget, data: &Value) -> Delivery {
    let envelope = EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new(instance).unwrap(),
        serde_json::value::to_raw_value(data).unwrap(),
    )
    .with_sequence(id);
    Delivery {
        id,
        channel: Channel::Sqs,
        scope: Scope::Instance,
        profile: NamingProfile::Seed,
        envelope: Arc::new(envelope),
        destination: Arc::new(Destination::Sqs(target.clone())),
        ordering_key: None,
        attempt: 1,
    }
}

#[tokio::test]
async fn fifo_messages_carry_attributes_group_and_event_id_dedup() {
    let Some(endpoint) = common::env_or_skip("EVOLUTION_TEST_SQS_ENDPOINT") else {
        return;
    };
    let sink = sink(&endpoint);
    let instance = unique("acme");
    let target = target(&instance, true);
    // Two events of one kind accepted in the same millisecond: Evolution API's dedup id
    // (`{instance}_{event}_{epochMs}`) made SQS drop the second; the event id keeps both.
    let at = "2026-01-01T12:00:00.123Z".parse().unwrap();
    let batch: Vec<Delivery> = (1..=2)
        .map(|i| {
            let mut d = delivery(i, &instance, &target, &json!({"n": i}));
            let envelope = (*d.envelope).clone().with_date_time(at);
            d.envelope = Arc::new(envelope);
            d
        })
        .collect();
    let report = sink.send(&batch).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());

    let client = common::client(&endpoint).await;
    let watcher = common::QueueWatcher::start(client, &target.queue);
    let got = watcher.wait(2, WAIT).await;
    assert_eq!(got.len(), 2, "both events of the same millisecond arrive");
    for (message, sent) in got.iter().zip(&batch) {
        let id = sent.envelope.id().to_string();
        assert_eq!(message.body.as_bytes(), &sent.payload()[..]);
        assert_eq!(message.attribute("event"), "MESSAGES_UPSERT");
        assert_eq!(message.attribute("instance"), instance);
        assert_eq!(message.attribute("id"), id);
        assert_eq!(message.group_id.as_deref(), Some(instance.as_str()));
        assert_eq!(message.deduplication_id.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test]
async fn an_item_sqs_refuses_fails_alone_and_oversize_is_rejected_with_both_sizes() {
    let Some(endpoint) = common::env_or_skip("EVOLUTION_TEST_SQS_ENDPOINT") else {
        return;
    };
    let client = common::client(&endpoint).await;
    let instance = unique("entries");
    let target = target(&instance, false);
    // A queue the operator created with a smaller message limit than SQS_MAX_PAYLOAD_SIZE: SQS
    // refuses the whole call for the one message over it, and the sink isolates that message.
    client
        .create_queue()
        .queue_name(&target.queue)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize, "2048")
        .send()
        .await
        .unwrap();
    let sink = SqsSink::new(SqsConfig {
        max_payload_bytes: 8192,
        ..sink(&endpoint).config().clone()
    })
    .unwrap();
    let batch = vec![
        delivery(1, &instance, &target, &json!({"n": 1})),
        delivery(2, &instance, &target, &json!({"pad": "y".repeat(3000)})),
        delivery(3, &instance, &target, &json!({"pad": "x".repeat(9000)})),
        delivery(4, &instance, &target, &json!({"n": 4})),
    ];
    let failures = sink.send(&batch).await.unwrap().into_failures();
    let failed: Vec<usize> = failures.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, [1, 2], "{failures:?}");
    let refused = &failures[0].1;
    assert_eq!(
        (refused.kind(), refused.is_retryable()),
        (ErrorKind::Rejected, false),
        "{refused}"
    );
    assert!(refused.message().contains("InvalidParameterValue"), "{refused}");
    let oversize = &failures[1].1;
    assert_eq!(
        (oversize.kind(), oversize.is_retryable()),
        (ErrorKind::Rejected, false)
    );
    assert!(
        oversize.message().contains("SQS_MAX_PAYLOAD_SIZE allows 8192")
            && oversize
                .message()
                .contains(&format!("{} bytes", batch[2].payload().len())),
        "{oversize}"
    );
    let watcher = common::QueueWatcher::start(client, &target.queue);
    let got = watcher.wait(2, WAIT).await;
    let ids: Vec<Uuid> = got.iter().map(common::Received::id).collect();
    assert_eq!(ids, [batch[0].envelope.id(), batch[3].envelope.id()]);
}

#[tokio::test]
async fn queues_are_created_by_prepare_and_again_when_they_disappear() {
    let Some(endpoint) = common::env_or_skip("EVOLUTION_TEST_SQS_ENDPOINT") else {
        return;
    };
    let sink = sink(&endpoint);
    let client = common::client(&endpoint).await;
    let instance = unique("prep");
    let fifo = target(&instance, true);
    sink.prepare(&[Destination::Sqs(fifo.clone())]).await.unwrap();
    let url = common::queue_url(&client, &fifo.queue)
        .await
        .expect("created by prepare");
    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = attributes.attributes().unwrap();
    assert_eq!(
        attributes
            .get(&aws_sdk_sqs::types::QueueAttributeName::FifoQueue)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        attributes
            .get(&aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize)
            .map(String::as_str),
        Some("1048576")
    );

    // Deleted behind the sink's back (or lost by a server restart): the next send creates it again.
    let standard = target(&instance, false);
    let first = delivery(1, &instance, &standard, &json!({"n": 1}));
    assert!(
        sink.send(std::slice::from_ref(&first))
            .await
            .unwrap()
            .is_success()
    );
    let url = common::queue_url(&client, &standard.queue).await.unwrap();
    client.delete_queue().queue_url(&url).send().await.unwrap();
    let second = delivery(2, &instance, &standard, &json!({"n": 2}));
    let report = sink.send(std::slice::from_ref(&second)).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());
    let watcher = common::QueueWatcher::start(client, &standard.queue);
    let got = watcher.wait(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id(), second.envelope.id());
}
