//! Who sees what, with real Socket.IO clients (node socket.io-client) against the sink's
//! endpoint: rooms by access on `/`, per-instance namespaces from the start, refusals, allowed
//! hosts, the endpoint's lifecycle. Needs `EVOLUTION_TEST_NODE_DIR` (`scripts/services up node`).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Endpoint, GLOBAL_KEY, INSTANCE, INSTANCE_TOKEN, OTHER, OTHER_TOKEN, Probe, deliveries, names, ready, send,
};
use evolution_events::naming::{GLOBAL_EVENT, GLOBAL_ROOM};
use evolution_events::{
    Channel, Delivery, Destination, ErrorKind, EventSink, InstanceName, NamingProfile, Scope, WebsocketTarget,
};
use evolution_sink_websocket::WebsocketConfig;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn each_key_sees_what_it_may() {
    if !ready() {
        return;
    }
    let endpoint = Endpoint::start(WebsocketConfig::default()).await;
    let url = endpoint.url();
    let own_ns = format!("/{INSTANCE}");
    let other_ns = format!("/{OTHER}");
    // Per-instance namespaces exist before any event (no "Invalid namespace").
    let global = Probe::start(&url, Some(GLOBAL_KEY), &["/", &own_ns])
        .await
        .unwrap();
    let own = Probe::start(&url, Some(INSTANCE_TOKEN), &["/", &own_ns])
        .await
        .unwrap();
    let other = Probe::start(&url, Some(OTHER_TOKEN), &["/", &other_ns])
        .await
        .unwrap();
    global.connected(2).await;
    own.connected(2).await;
    other.connected(2).await;

    let (_, batch) = deliveries(INSTANCE, true);
    send(&endpoint, &batch).await;
    let global_events = global.events(3, WAIT, |_| true).await;
    assert_eq!(
        names(&global_events),
        [
            format!("/ {GLOBAL_EVENT}"),
            format!("/ {INSTANCE}"),
            format!("{own_ns} messages.upsert")
        ]
    );
    let own_events = own.events(2, WAIT, |_| true).await;
    tokio::time::sleep(QUIET).await;
    let own_events = if own_events.len() == 2 {
        own.events(3, Duration::ZERO, |_| true).await
    } else {
        own_events
    };
    assert_eq!(
        names(&own_events),
        [format!("/ {INSTANCE}"), format!("{own_ns} messages.upsert")],
        "an instance token does not get the global stream"
    );
    let payload: serde_json::Value = serde_json::from_str(own_events[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(payload["instance"], INSTANCE);
    assert_eq!(payload["event"], "MESSAGES_UPSERT");
    assert!(
        other.events(1, QUIET, |_| true).await.is_empty(),
        "another instance's token receives nothing of this instance"
    );
}

#[tokio::test]
async fn refusals_say_why() {
    if !ready() {
        return;
    }
    let endpoint = Endpoint::start(WebsocketConfig {
        allowed_hosts: Vec::new(),
        ..WebsocketConfig::default()
    })
    .await;
    let url = endpoint.url();
    let foreign = Probe::start(&url, Some(OTHER_TOKEN), &[&format!("/{INSTANCE}")])
        .await
        .unwrap();
    let keyless = Probe::start(&url, None, &["/"]).await.unwrap();
    let wrong = Probe::start(&url, Some("not-a-key"), &["/"]).await.unwrap();
    let bad_ns = Probe::start(&url, Some(GLOBAL_KEY), &["/a.b"]).await.unwrap();
    let message = |answers: Vec<serde_json::Value>| {
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0]["type"], "connect_error", "{answers:?}");
        answers[0]["message"].as_str().unwrap().to_owned()
    };
    let m = message(foreign.settled(1).await);
    assert!(m.contains("belongs to another instance"), "{m}");
    assert!(message(keyless.settled(1).await).starts_with("apikey is required"));
    assert_eq!(message(wrong.settled(1).await), "invalid apikey");
    assert!(message(bad_ns.settled(1).await).contains("no such namespace /a.b"));
    // The refused client receives nothing.
    let (_, batch) = deliveries(INSTANCE, true);
    send(&endpoint, &batch).await;
    assert!(foreign.events(1, QUIET, |_| true).await.is_empty());
}

#[tokio::test]
async fn allowed_hosts_connect_without_a_key_and_see_everything() {
    if !ready() {
        return;
    }
    let endpoint = Endpoint::start(WebsocketConfig {
        allowed_hosts: vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
        ..WebsocketConfig::default()
    })
    .await;
    let keyless = Probe::start(&endpoint.url(), None, &["/"]).await.unwrap();
    keyless.connected(1).await;
    let (_, batch) = deliveries(OTHER, true);
    send(&endpoint, &batch).await;
    let events = keyless.events(2, WAIT, |_| true).await;
    assert_eq!(
        names(&events),
        [format!("/ {GLOBAL_EVENT}"), format!("/ {OTHER}")]
    );
}

#[tokio::test]
async fn the_endpoint_must_be_served_and_deleted_instances_are_cut_off() {
    if !ready() {
        return;
    }
    let endpoint = Endpoint::start(WebsocketConfig::default()).await;
    let own = Probe::start(&endpoint.url(), Some(INSTANCE_TOKEN), &["/"])
        .await
        .unwrap();
    let global = Probe::start(&endpoint.url(), Some(GLOBAL_KEY), &["/"])
        .await
        .unwrap();
    own.connected(1).await;
    global.connected(1).await;
    assert_eq!(endpoint.sink.connections(), 2);
    endpoint
        .sink
        .disconnect_instance(&InstanceName::new(INSTANCE).unwrap())
        .await;
    let gone = own.settled(1).await;
    assert!(!gone.is_empty());
    let deadline = std::time::Instant::now() + WAIT;
    while endpoint.sink.connections() != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(endpoint.sink.connections(), 1, "only the global socket stays");

    assert!(endpoint.sink.health_check().await.is_ok());
    endpoint.stop().await;
    let target = WebsocketTarget {
        namespace: "/".into(),
        event: INSTANCE.into(),
        room: Some(GLOBAL_ROOM.into()),
    };
    let (envelope, _) = deliveries(INSTANCE, false);
    let delivery = Delivery {
        body: None,
        id: 1,
        channel: Channel::Websocket,
        scope: Scope::Instance,
        profile: NamingProfile::Seed,
        envelope,
        destination: Arc::new(Destination::Websocket(target)),
        ordering_key: None,
        attempt: 1,
    };
    let e = endpoint.sink.send(&[delivery]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(endpoint.sink.health_check().await.is_err());
}
