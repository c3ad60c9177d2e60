//! The shared contract suite against the real NATS server of `scripts/services`
//! (`EVOLUTION_TEST_NATS_URL`), JetStream mode. Each fixture has a stream of its own (created by
//! the sink, deleted at the end); each destination is a fresh subject in it, read back with a
//! pull consumer filtered on it. The stream drops a redelivery with the same `Nats-Msg-Id`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use evolution_events::{Destination, EventSink, NatsTarget, async_trait};
use evolution_sink_nats::{JetStreamConfig, NatsConfig, NatsMode, NatsSink, NatsUrl};
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};

use common::{closed_port, delete_streams, observed, read_stream, server_url, unique};

/// Payload limit of the sink under test: below the server's 1 MiB.
const LIMIT: usize = 512 * 1024;

struct JetStreamFixture {
    url: String,
    sink: Arc<dyn EventSink>,
    probe: Client,
    stream: String,
    prefix: String,
}

fn jetstream(url: NatsUrl, stream: &str, prefix: &str) -> NatsConfig {
    NatsConfig {
        max_payload_bytes: LIMIT,
        mode: NatsMode::JetStream(JetStreamConfig::new(stream, vec![format!("{prefix}.>")])),
        ..NatsConfig::new(url)
    }
}

async fn nats_jetstream() -> Result<JetStreamFixture, Skip> {
    let url = server_url()?;
    let parsed = NatsUrl::parse(&url).map_err(|e| Skip::new(format!("EVOLUTION_TEST_NATS_URL: {e}")))?;
    let probe = async_nats::connect(&url)
        .await
        .map_err(|e| Skip::new(format!("NATS at {parsed}: {e}")))?;
    let prefix = unique("contract");
    let stream = prefix.replace('-', "_").to_ascii_uppercase();
    let sink = NatsSink::new(jetstream(parsed, &stream, &prefix))
        .map_err(|e| Skip::new(format!("cannot build the sink: {e}")))?;
    Ok(JetStreamFixture {
        url,
        sink: Arc::new(sink),
        probe,
        stream,
        prefix,
    })
}

impl Drop for JetStreamFixture {
    fn drop(&mut self) {
        delete_streams(self.url.clone(), vec![self.stream.clone()]);
    }
}

#[async_trait]
impl ContractFixture for JetStreamFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        Destination::Nats(NatsTarget {
            subject: format!("{}.{}.messages.upsert", self.prefix, unique("instance")),
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Nats(target) = destination else {
            panic!("not a nats destination: {destination:?}");
        };
        read_stream(&self.probe, &self.stream, &target.subject, expected, within)
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
                ..jetstream(url, &self.stream, &self.prefix)
            })
            .unwrap(),
        )
    }

    fn deduplicates_redeliveries(&self) -> bool {
        true
    }
}

contract_suite!(nats_jetstream);
