//! Against the real Pusher-protocol server (soketi): a wrong secret is `Unauthorized` (soketi
//! answers it with HTTP 200 and `"code":401`), and one-request-per-event mode delivers in order.
//! Needs `EVOLUTION_TEST_PUSHER_*` and `EVOLUTION_TEST_NODE_DIR`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Probe, PusherServer};
use evolution_events::{
    Channel, Delivery, Destination, ErrorKind, EventEnvelope, EventKind, EventSink, InstanceName,
    NamingProfile, PusherApp, PusherTarget, RawValue, Retry, Scope, Sensitive, Uuid,
};
use evolution_sink_pusher::{PusherConfig, PusherSink};

fn server() -> Option<PusherServer> {
    match PusherServer::from_env().and_then(|s| common::node_dir().map(|_| s)) {
        Ok(server) => Some(server),
        Err(skip) if matches!(std::env::var("CI").as_deref(), Ok("true" | "1")) => {
            panic!("the Pusher server is required in CI: {skip}")
        }
        Err(skip) => {
            eprintln!("skipped: {skip}");
            None
        }
    }
}

fn delivery(app: PusherApp, channel: &str, n: u64) -> Delivery {
    let data = RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap();
    let envelope = EventEnvelope::new(
        EventKind::MessagesUpsert,
        InstanceName::new("acme").unwrap(),
        data,
    )
    .with_sequence(n);
    Delivery {
        body: None,
        id: n,
        channel: Channel::Pusher,
        scope: Scope::Instance,
        profile: NamingProfile::Seed,
        envelope: Arc::new(envelope),
        destination: Arc::new(Destination::Pusher(PusherTarget {
            app,
            channel: channel.to_owned(),
            event: "MESSAGES_UPSERT".to_owned(),
        })),
        ordering_key: None,
        attempt: 1,
    }
}

#[tokio::test]
async fn a_wrong_secret_is_unauthorized_and_not_retried() {
    let Some(server) = server() else { return };
    let wrong = PusherApp {
        secret: Sensitive::new("not-the-secret"),
        ..server.app()
    };
    let sink = PusherSink::new(PusherConfig {
        probe: Some(wrong.clone()),
        ..PusherConfig::default()
    })
    .unwrap();
    let report = sink.send(&[delivery(wrong, "acme-wrong", 1)]).await.unwrap();
    let [(0, e)] = report.failures() else {
        panic!("expected one failure: {:?}", report.failures());
    };
    assert_eq!(
        (e.kind(), e.retry()),
        (ErrorKind::Unauthorized, Retry::Never),
        "{e}"
    );
    assert_eq!(e.status(), Some(401));
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    let health = sink.health_check().await.unwrap_err();
    assert_eq!(health.kind(), ErrorKind::Unauthorized, "{health}");
}

#[tokio::test]
async fn one_request_per_event_keeps_order() {
    let Some(server) = server() else { return };
    let probe = Probe::start(&server).await.unwrap();
    let channel = format!("single-{}", Uuid::now_v7());
    probe.subscribe(&channel).await;
    let sink = PusherSink::new(PusherConfig {
        batch_events: false,
        ..PusherConfig::default()
    })
    .unwrap();
    let batch: Vec<Delivery> = (1..=12).map(|n| delivery(server.app(), &channel, n)).collect();
    let report = sink.send(&batch).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());
    let events = probe.events(&channel, 12, Duration::from_secs(10)).await;
    let order: Vec<u64> = events
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e["raw"].as_str().unwrap()).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, (1..=12).collect::<Vec<u64>>());
}
