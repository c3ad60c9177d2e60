//! The shared contract suite against a real SQS-protocol server: moto, started by
//! `scripts/services up sqs` (`EVOLUTION_TEST_SQS_ENDPOINT`), twice — standard queues (two copies
//! of a redelivery reach the queue) and FIFO queues (SQS drops a redelivery with the same
//! `MessageDeduplicationId`, the event id). Every case gets fresh queues, which the sink creates;
//! an independent receiver drains them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evolution_events::{Destination, EventSink, SqsTarget, Uuid, async_trait};
use evolution_sink_sqs::{SqsConfig, SqsCredentials, SqsSink};
use evolution_sink_testkit::fixtures::closed_port;
use evolution_sink_testkit::{ContractFixture, Observed, Skip};

struct SqsFixture {
    fifo: bool,
    sink: Arc<dyn EventSink>,
    max_payload_bytes: usize,
    client: aws_sdk_sqs::Client,
    /// One receiver per queue, started on the first look and kept.
    watchers: Mutex<HashMap<String, Arc<common::QueueWatcher>>>,
}

fn config(endpoint: String) -> SqsConfig {
    SqsConfig {
        endpoint: Some(endpoint),
        credentials: Some(SqsCredentials::new("test", "test")),
        ..SqsConfig::new("us-east-1")
    }
}

async fn fixture(fifo: bool) -> Result<SqsFixture, Skip> {
    let endpoint = std::env::var("EVOLUTION_TEST_SQS_ENDPOINT").map_err(|_| {
        Skip::new(
            "set EVOLUTION_TEST_SQS_ENDPOINT=http://127.0.0.1:5000 (eval \"$(scripts/services env sqs)\")",
        )
    })?;
    let sink = SqsSink::new(config(endpoint.clone()))
        .map_err(|e| Skip::new(format!("cannot build the SQS sink for {endpoint}: {e}")))?;
    sink.health_check()
        .await
        .map_err(|e| Skip::new(format!("SQS at {endpoint} is not answering: {e}")))?;
    Ok(SqsFixture {
        client: common::client(&endpoint).await,
        fifo,
        max_payload_bytes: sink.body_limit(),
        sink: Arc::new(sink),
        watchers: Mutex::new(HashMap::new()),
    })
}

async fn standard() -> Result<SqsFixture, Skip> {
    fixture(false).await
}

async fn fifo() -> Result<SqsFixture, Skip> {
    fixture(true).await
}

#[async_trait]
impl ContractFixture for SqsFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        let base = format!("evolution-contract-{}-messages-upsert", Uuid::now_v7().simple());
        Destination::Sqs(SqsTarget {
            queue: if self.fifo { format!("{base}.fifo") } else { base },
            fifo: self.fifo,
            group_id: self.fifo.then(|| "contract-instance".to_owned()),
            server: None,
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Sqs(target) = destination else {
            panic!("not an SQS destination: {destination:?}");
        };
        let watcher = Arc::clone(
            self.watchers
                .lock()
                .unwrap()
                .entry(target.queue.clone())
                .or_insert_with(|| Arc::new(common::QueueWatcher::start(self.client.clone(), &target.queue))),
        );
        watcher
            .wait(expected, within)
            .await
            .into_iter()
            .map(|m| Observed {
                id: m.id(),
                payload: m.body.into_bytes().into(),
            })
            .collect()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.max_payload_bytes)
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let sink = SqsSink::new(SqsConfig {
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            ..config(format!("http://127.0.0.1:{}", closed_port()))
        })
        .unwrap();
        Arc::new(sink)
    }

    fn deduplicates_redeliveries(&self) -> bool {
        self.fifo
    }
}

/// The suite on standard queues.
mod standard_queues {
    use super::standard;
    evolution_sink_testkit::contract_suite!(standard);
}

/// The suite on FIFO queues.
mod fifo_queues {
    use super::fifo;
    evolution_sink_testkit::contract_suite!(fifo);
}
