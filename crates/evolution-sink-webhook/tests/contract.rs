//! The shared contract suite, run against a real HTTP receiver (an axum server on 127.0.0.1
//! started by the fixture): no external service needed.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{Destination, EventSink, Sensitive, Uuid, WebhookTarget, async_trait};
use evolution_sink_testkit::fixtures::closed_port;
use evolution_sink_testkit::{ContractFixture, Observed, Skip, contract_suite};
use evolution_sink_webhook::{WebhookConfig, WebhookSink};

use common::Receiver;

/// The sink under test, delivering to a recording receiver.
struct WebhookFixture {
    receiver: Receiver,
    sink: Arc<dyn EventSink>,
    /// A port nothing listens on.
    closed_port: u16,
}

async fn webhook() -> Result<WebhookFixture, Skip> {
    let receiver = Receiver::start().await;
    let sink = WebhookSink::new(WebhookConfig {
        request_timeout: Duration::from_secs(20),
        probe_url: Some(receiver.url("/health")),
        ..loopback()
    })
    .map_err(|e| Skip::new(format!("cannot build the webhook sink: {e}")))?;
    Ok(WebhookFixture {
        receiver,
        sink: Arc::new(sink),
        closed_port: closed_port(),
    })
}

impl WebhookFixture {
    fn path_of(&self, destination: &Destination) -> String {
        let Destination::Webhook(target) = destination else {
            panic!("not a webhook destination: {destination:?}");
        };
        target.url.strip_prefix(&self.receiver.base()).unwrap().to_owned()
    }
}

#[async_trait]
impl ContractFixture for WebhookFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::clone(&self.sink)
    }

    async fn destination(&self) -> Destination {
        Destination::Webhook(WebhookTarget {
            signing_secrets: Vec::new(),
            payload_destination: None,
            base64: true,
            url: self.receiver.url(&format!("/hook/{}", Uuid::now_v7())),
            headers: vec![("x-test".to_owned(), Sensitive::new("1"))],
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        let path = self.path_of(destination);
        self.receiver
            .wait_for(&path, expected, within)
            .await
            .into_iter()
            .map(|r| Observed {
                // A missing or malformed id shows up as the nil UUID, which the cases report.
                id: r.header("webhook-id").parse().unwrap_or(Uuid::nil()),
                payload: r.body,
            })
            .collect()
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let sink = WebhookSink::new(WebhookConfig {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            probe_url: Some(format!("http://127.0.0.1:{}/health", self.closed_port)),
            ..loopback()
        })
        .unwrap();
        Arc::new(sink)
    }

    async fn unreachable_destination(&self) -> Destination {
        Destination::Webhook(WebhookTarget {
            signing_secrets: Vec::new(),
            payload_destination: None,
            base64: true,
            url: format!("http://127.0.0.1:{}/hook/{}", self.closed_port, Uuid::now_v7()),
            headers: vec![("x-test".to_owned(), Sensitive::new("1"))],
        })
    }
}

contract_suite!(webhook);

/// The default settings, allowing the loopback receivers of these tests (SSRF protection refuses
/// them otherwise).
fn loopback() -> WebhookConfig {
    WebhookConfig {
        allowed_networks: evolution_sink_webhook::network::parse_networks("127.0.0.0/8").unwrap(),
        ..WebhookConfig::default()
    }
}
