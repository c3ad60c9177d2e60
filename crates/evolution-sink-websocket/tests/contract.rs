//! The shared contract suite, against the sink's real Socket.IO endpoint (served by axum on
//! 127.0.0.1) and a real Socket.IO client (node socket.io-client, `tests/node/sio-probe.mjs`)
//! connected with the global key. Needs `EVOLUTION_TEST_NODE_DIR` (`scripts/services up node`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes_free::observed_of;
use common::{Endpoint, GLOBAL_KEY, INSTANCE, Probe};
use evolution_events::{Destination, EventSink, Uuid, WebsocketTarget, async_trait};
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};
use evolution_sink_websocket::{WebsocketConfig, WebsocketSink};

/// The sink, its endpoint, and a client that sees every instance.
struct WebsocketFixture {
    endpoint: Endpoint,
    probe: Probe,
}

async fn websocket() -> Result<WebsocketFixture, Skip> {
    common::node_dir()?;
    let endpoint = Endpoint::start(WebsocketConfig {
        allowed_hosts: Vec::new(),
        ..WebsocketConfig::default()
    })
    .await;
    let probe = Probe::start(&endpoint.url(), Some(GLOBAL_KEY), &["/"]).await?;
    let answers = probe.settled(1).await;
    if !answers.iter().any(|a| a["type"] == "connect") {
        return Err(Skip::new(format!(
            "the Socket.IO client did not connect: {answers:?}"
        )));
    }
    Ok(WebsocketFixture { endpoint, probe })
}

mod bytes_free {
    use evolution_events::Uuid;
    use evolution_sink_testkit::Observed;
    use serde_json::Value;

    /// An event line of the probe as the testkit sees it: the id from the payload, the payload
    /// as the client re-serialized it (`JSON.stringify`).
    pub(crate) fn observed_of(line: &Value) -> Observed {
        let raw = line["raw"].as_str().unwrap_or_default().to_owned();
        let id = serde_json::from_str::<Value>(&raw)
            .ok()
            .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(Uuid::nil());
        Observed {
            id,
            payload: evolution_events::Bytes::from(raw),
        }
    }
}

#[async_trait]
impl ContractFixture for WebsocketFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.endpoint.sink) as Arc<dyn EventSink>
    }

    async fn destination(&self) -> Destination {
        Destination::Websocket(WebsocketTarget {
            namespace: "/".to_owned(),
            event: format!("probe-{}", Uuid::now_v7()),
            room: Some(INSTANCE.to_owned()),
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let Destination::Websocket(target) = destination else {
            panic!("not a websocket destination: {destination:?}");
        };
        self.probe
            .events(expected, within, |l| {
                l["ns"] == target.namespace && l["event"] == target.event
            })
            .await
            .iter()
            .map(observed_of)
            .collect()
    }

    /// A sink whose endpoint is mounted nowhere.
    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let (sink, layer) = WebsocketSink::new(WebsocketConfig::default(), common::authorize).unwrap();
        drop(layer);
        Arc::new(sink)
    }
}

contract_suite!(websocket);
