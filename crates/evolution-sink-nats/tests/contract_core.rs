//! The shared contract suite against the real NATS server of `scripts/services`
//! (`EVOLUTION_TEST_NATS_URL`), core publish. Each destination is a fresh subject; the probe is a
//! core subscription made before anything is sent to it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use evolution_events::{Destination, EventSink, NatsTarget, async_trait};
use evolution_sink_nats::{NatsConfig, NatsSink, NatsUrl};
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};

use common::{Recorder, closed_port, observed, server_url, unique};

/// Payload limit of the sink under test: below the server's 1 MiB.
const LIMIT: usize = 512 * 1024;

struct CoreFixture {
    sink: Arc<dyn EventSink>,
    probe: Client,
    recorders: Mutex<HashMap<String, Recorder>>,
}

async fn nats_core() -> Result<CoreFixture, Skip> {
    let url = server_url()?;
    let parsed = NatsUrl::parse(&url).map_err(|e| Skip::new(format!("EVOLUTION_TEST_NATS_URL: {e}")))?;
    let probe = async_nats::connect(&url)
        .await
        .map_err(|e| Skip::new(format!("NATS at {parsed}: {e}")))?;
    let sink = NatsSink::new(NatsConfig {
        max_payload_bytes: LIMIT,
        ..NatsConfig::new(parsed)
    })
    .map_err(|e| Skip::new(format!("cannot build the sink: {e}")))?;
    Ok(CoreFixture {
        sink: Arc::new(sink),
        probe,
        recorders: Mutex::new(HashMap::new()),
    })
}

#[async_trait]
impl ContractFixture for CoreFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        let subject = format!("{}.contract-instance.messages.upsert", unique("contract"));
        let recorder = Recorder::subscribe(&self.probe, subject.clone()).await;
        self.recorders.lock().unwrap().insert(subject.clone(), recorder);
        Destination::Nats(NatsTarget { subject })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Nats(target) = destination else {
            panic!("not a nats destination: {destination:?}");
        };
        let recorder = self
            .recorders
            .lock()
            .unwrap()
            .get(&target.subject)
            .cloned()
            .unwrap();
        recorder
            .wait(expected, within)
            .await
            .iter()
            .map(observed)
            .collect()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(LIMIT)
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let url = NatsUrl::parse(&format!("nats://127.0.0.1:{}", closed_port())).unwrap();
        Arc::new(
            NatsSink::new(NatsConfig {
                connect_timeout: Duration::from_secs(2),
                ..NatsConfig::new(url)
            })
            .unwrap(),
        )
    }
}

contract_suite!(nats_core);
