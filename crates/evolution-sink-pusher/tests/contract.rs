//! The shared contract suite against a real Pusher-protocol server (soketi, `scripts/services up
//! pusher`) observed by a real Pusher client (node pusher-js). Needs `EVOLUTION_TEST_PUSHER_*`
//! and `EVOLUTION_TEST_NODE_DIR` (`eval "$(scripts/services env)"`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Probe, PusherServer};
use evolution_events::{Bytes, Destination, EventSink, PusherApp, PusherTarget, Uuid, async_trait};
use evolution_sink_pusher::{PusherConfig, PusherSink};
use evolution_sink_testkit::fixtures::closed_port;
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};
use serde_json::Value;

struct PusherFixture {
    server: PusherServer,
    sink: Arc<dyn EventSink>,
    max_payload_bytes: usize,
    probe: Probe,
    closed_port: u16,
}

async fn pusher() -> Result<PusherFixture, Skip> {
    let server = PusherServer::from_env()?;
    common::node_dir()?;
    let sink = PusherSink::new(PusherConfig {
        probe: Some(server.app()),
        ..PusherConfig::default()
    })
    .map_err(|e| Skip::new(format!("cannot build the Pusher sink: {e}")))?;
    let probe = Probe::start(&server).await?;
    Ok(PusherFixture {
        server,
        max_payload_bytes: sink.config().max_payload_bytes,
        sink: Arc::new(sink),
        probe,
        closed_port: closed_port(),
    })
}

impl PusherFixture {
    fn unreachable_app(&self) -> PusherApp {
        PusherApp {
            port: Some(self.closed_port),
            ..self.server.app()
        }
    }
}

#[async_trait]
impl ContractFixture for PusherFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        let channel = format!("contract-{}", Uuid::now_v7());
        self.probe.subscribe(&channel).await;
        Destination::Pusher(PusherTarget {
            app: self.server.app(),
            channel,
            event: "MESSAGES_UPSERT".to_owned(),
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Pusher(target) = destination else {
            panic!("not a Pusher destination: {destination:?}");
        };
        self.probe
            .events(&target.channel, expected, within)
            .await
            .iter()
            .filter(|l| l["event"] == target.event.as_str())
            .map(|l| {
                let raw = l["raw"].as_str().unwrap_or_default().to_owned();
                let id = serde_json::from_str::<Value>(&raw)
                    .ok()
                    .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(Uuid::nil());
                Observed {
                    id,
                    payload: Bytes::from(raw),
                }
            })
            .collect()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.max_payload_bytes)
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let sink = PusherSink::new(PusherConfig {
            probe: Some(self.unreachable_app()),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            ..PusherConfig::default()
        })
        .unwrap();
        Arc::new(sink)
    }

    async fn unreachable_destination(&self) -> Destination {
        Destination::Pusher(PusherTarget {
            app: self.unreachable_app(),
            channel: format!("contract-{}", Uuid::now_v7()),
            event: "MESSAGES_UPSERT".to_owned(),
        })
    }
}

contract_suite!(pusher);
