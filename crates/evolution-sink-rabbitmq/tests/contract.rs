//! The shared contract suite against the real RabbitMQ broker of `scripts/services`
//! (`EVOLUTION_TEST_RABBITMQ_URI`). Each destination is a fresh queue bound under a test exchange
//! of its own; the probe reads the queue with `basic.get`. Everything created is deleted at the end.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evolution_events::{Destination, EventSink, RabbitmqTarget, Uuid, async_trait};
use evolution_sink_rabbitmq::{AmqpUri, RabbitmqConfig, RabbitmqSink};
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};
use lapin::message::Delivery;

use common::{Created, Probe, broker_uri, cleanup, closed_port, unique};

struct RabbitFixture {
    uri: String,
    sink: Arc<dyn EventSink>,
    probe: Probe,
    exchange: String,
    seen: Mutex<HashMap<String, Arc<Mutex<Vec<Delivery>>>>>,
    created: Created,
}

/// Payload limit of the sink under test (the default, 16 MiB, would make the near-limit case slow).
const LIMIT: usize = 1024 * 1024;

async fn rabbitmq() -> Result<RabbitFixture, Skip> {
    let uri = broker_uri()?;
    let parsed = AmqpUri::parse(&uri).map_err(|e| Skip::new(format!("EVOLUTION_TEST_RABBITMQ_URI: {e}")))?;
    let sink = RabbitmqSink::new(RabbitmqConfig {
        max_payload_bytes: LIMIT,
        connect_timeout: Duration::from_secs(5),
        ..RabbitmqConfig::new(parsed.clone())
    })
    .map_err(|e| Skip::new(format!("cannot build the sink: {e}")))?;
    let probe = Probe::connect(&uri)
        .await
        .map_err(|e| Skip::new(format!("RabbitMQ at {parsed}: {e}")))?;
    let created = Created::default();
    let exchange = unique("evolution-contract");
    created.exchange(&exchange);
    Ok(RabbitFixture {
        uri,
        sink: Arc::new(sink),
        probe,
        exchange,
        seen: Mutex::new(HashMap::new()),
        created,
    })
}

impl Drop for RabbitFixture {
    fn drop(&mut self) {
        let (queues, exchanges) = self.created.take();
        cleanup(self.uri.clone(), queues, exchanges);
    }
}

#[async_trait]
impl ContractFixture for RabbitFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        let queue = format!("evolution.contract-{}.messages-upsert", Uuid::now_v7().simple());
        self.created.queue(&queue);
        Destination::Rabbitmq(RabbitmqTarget {
            exchange: self.exchange.clone(),
            routing_key: queue.clone(),
            queue,
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Rabbitmq(target) = destination else {
            panic!("not a rabbitmq destination: {destination:?}");
        };
        let seen = Arc::clone(self.seen.lock().unwrap().entry(target.queue.clone()).or_default());
        self.probe.wait(&target.queue, &seen, expected, within).await;
        let seen = seen.lock().unwrap();
        seen.iter()
            .map(|d| Observed {
                id: d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| id.as_str().parse().ok())
                    .unwrap_or(Uuid::nil()),
                payload: d.data.clone().into(),
            })
            .collect()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(LIMIT)
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let uri = AmqpUri::parse(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port())).unwrap();
        Arc::new(
            RabbitmqSink::new(RabbitmqConfig {
                connect_timeout: Duration::from_secs(2),
                ..RabbitmqConfig::new(uri)
            })
            .unwrap(),
        )
    }
}

contract_suite!(rabbitmq);
