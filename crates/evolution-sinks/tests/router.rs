//! Router: which deliveries an event gets, and where they go.

#![allow(clippy::unwrap_used)] // test helpers

use std::collections::BTreeSet;

use evolution_events::{
    Channel, Destination, EventEnvelope, EventKind, GlobalSettings, InstanceName, InstanceSettings,
    NamingProfile, PusherApp, RawValue, Scope, Sensitive,
};
use evolution_sinks::Router;
use serde_json::json;

fn event(kind: EventKind, instance: &str) -> EventEnvelope {
    EventEnvelope::new(
        kind,
        InstanceName::new(instance).unwrap(),
        RawValue::from_string("{}".into()).unwrap(),
    )
}

fn settings(v: serde_json::Value) -> InstanceSettings {
    InstanceSettings::from_json(&v).unwrap()
}

fn all_on() -> GlobalSettings {
    let mut g = GlobalSettings::default();
    g.websocket.enabled = true;
    g.rabbitmq.enabled = true;
    g.sqs.broker.enabled = true;
    g.kafka.enabled = true;
    g.nats.enabled = true;
    g.pusher.enabled = true;
    g
}

fn labels(routes: &[evolution_sinks::Route]) -> Vec<String> {
    routes
        .iter()
        .map(|r| format!("{} {:?} {}", r.channel, r.scope, r.destination.label()))
        .collect()
}

#[test]
fn instance_settings_route_every_enabled_channel_with_registry_names() {
    let router = Router::new(all_on()).unwrap();
    let s = settings(json!({
        "webhook": {"enabled": true, "url": "https://meusite.com/webhook", "byEvents": true, "headers": {"Authorization": "Bearer t"}},
        "websocket": {"enabled": true},
        "rabbitmq": {"enabled": true, "events": ["MESSAGES_UPSERT"]},
        "sqs": {"enabled": true},
        "kafka": {"enabled": true},
        "nats": {"enabled": true},
        "pusher": {"enabled": true, "appId": "1", "key": "k", "secret": "s", "cluster": "us2", "useTLS": true}
    }));
    let routes = router
        .route(&event(EventKind::MessagesUpsert, "minha-instancia"), Some(&s))
        .unwrap();
    assert_eq!(
        labels(&routes),
        [
            "webhook Instance https://meusite.com/webhook/MESSAGES_UPSERT",
            "websocket Instance / minha-instancia (room minha-instancia)",
            "websocket Instance /minha-instancia messages.upsert",
            "rabbitmq Instance evolution evolution.minha-instancia.messages-upsert",
            "sqs Instance evolution-minha-instancia-messages-upsert",
            "kafka Instance evolution.minha-instancia.messages-upsert key=minha-instancia",
            "nats Instance evolution.minha-instancia.messages.upsert",
            "pusher Instance app 1 evolution.minha-instancia MESSAGES_UPSERT",
        ]
    );
    let Destination::Webhook(w) = &routes[0].destination else {
        panic!()
    };
    assert_eq!(w.headers[0].0, "Authorization");
    assert_eq!(w.headers[0].1.expose(), "Bearer t");
    // The event filter: CALL is not selected for RabbitMQ.
    let routes = router
        .route(&event(EventKind::Call, "minha-instancia"), Some(&s))
        .unwrap();
    assert!(!routes.iter().any(|r| r.channel == Channel::Rabbitmq));
    assert_eq!(routes.len(), 7);
}

#[test]
fn a_channel_switched_off_globally_delivers_nothing() {
    let router = Router::new(GlobalSettings::default()).unwrap();
    let s = settings(
        json!({"rabbitmq": {"enabled": true}, "nats": {"enabled": true}, "webhook": {"enabled": false, "url": "http://h/"}}),
    );
    let routes = router
        .route(&event(EventKind::MessagesUpsert, "a"), Some(&s))
        .unwrap();
    assert!(routes.is_empty(), "{:?}", labels(&routes));
}

#[test]
fn global_and_instance_on_the_same_target_deliver_once() {
    let mut g = all_on();
    g.rabbitmq.global_enabled = true;
    g.rabbitmq.events = BTreeSet::from([EventKind::MessagesUpsert]);
    g.nats.global_enabled = true;
    g.nats.events = BTreeSet::from([EventKind::MessagesUpsert]);
    let router = Router::new(g.clone()).unwrap();
    let s = settings(json!({"rabbitmq": {"enabled": true}}));
    let routes = router
        .route(&event(EventKind::MessagesUpsert, "a"), Some(&s))
        .unwrap();
    assert_eq!(
        labels(&routes),
        [
            "rabbitmq Instance evolution evolution.a.messages-upsert",
            "nats Global evolution.a.messages.upsert"
        ]
    );
    // Global toggles never filter instance deliveries and vice versa.
    let routes = router.route(&event(EventKind::Call, "a"), Some(&s)).unwrap();
    assert_eq!(labels(&routes), ["rabbitmq Instance evolution evolution.a.call"]);
    // In the evolution-v2 profile the two are different exchanges: both fire.
    g.naming = NamingProfile::EvolutionV2;
    let router = Router::new(g).unwrap();
    let routes = router
        .route(&event(EventKind::MessagesUpsert, "a"), Some(&s))
        .unwrap();
    assert_eq!(
        labels(&routes),
        [
            "rabbitmq Instance a messages.upsert",
            "rabbitmq Global evolution messages.upsert",
            "nats Global evolution.messages.upsert"
        ]
    );
}

#[test]
fn global_webhook_and_websocket() {
    let mut g = all_on();
    g.webhook.enabled = true;
    g.webhook.url = "https://hooks.example/wa?token=x".into();
    g.webhook.by_events = true;
    g.webhook.events = BTreeSet::from([EventKind::ConnectionUpdate]);
    g.websocket.global_events = true;
    let router = Router::new(g).unwrap();
    let routes = router
        .route(&event(EventKind::ConnectionUpdate, "acme"), None)
        .unwrap();
    assert_eq!(
        labels(&routes),
        [
            "webhook Global https://hooks.example/wa/CONNECTION_UPDATE",
            "websocket Global / * (room *)",
        ]
    );
    let Destination::Webhook(w) = &routes[0].destination else {
        panic!()
    };
    assert_eq!(
        w.url, "https://hooks.example/wa/CONNECTION_UPDATE?token=x",
        "query kept, label hides it"
    );
    assert!(routes.iter().all(|r| r.scope == Scope::Global));
    let routes = router.route(&event(EventKind::Call, "acme"), None).unwrap();
    assert_eq!(
        routes.len(),
        1,
        "the global webhook filter excludes CALL; websocket global has no filter"
    );
}

/// `WEBSOCKET_EVENTS_<KEY>`: with toggles given, the global stream carries only their events.
#[test]
fn the_global_websocket_stream_follows_its_event_toggles() {
    let mut g = all_on();
    g.websocket.global_events = true;
    g.websocket.events = Some(BTreeSet::from([EventKind::ConnectionUpdate]));
    let router = Router::new(g).unwrap();
    let routes = router
        .route(&event(EventKind::ConnectionUpdate, "acme"), None)
        .unwrap();
    assert_eq!(labels(&routes), ["websocket Global / * (room *)"]);
    let routes = router.route(&event(EventKind::Call, "acme"), None).unwrap();
    assert!(routes.is_empty(), "{:?}", labels(&routes));
}

#[test]
fn bad_global_settings_are_refused_naming_the_variable() {
    let mut g = GlobalSettings::default();
    g.webhook.enabled = true;
    g.webhook.url = "ftp://x".into();
    g.pusher.enabled = true;
    g.pusher.global_enabled = true;
    g.kafka.enabled = true;
    g.kafka.global_enabled = true;
    g.kafka.prefix = "bad prefix".into();
    let err = Router::new(g).unwrap_err().to_string();
    assert!(err.contains("WEBHOOK_GLOBAL_URL"), "{err}");
    assert!(err.contains("PUSHER_GLOBAL_APP_ID"), "{err}");
    assert!(err.contains("KAFKA_*") && err.contains("bad prefix"), "{err}");
}

#[test]
fn instance_settings_that_make_invalid_names_are_refused() {
    let router = Router::new(all_on()).unwrap();
    let long = InstanceName::new(&"x".repeat(64)).unwrap();
    let s = settings(json!({"sqs": {"enabled": false}, "kafka": {"enabled": true}}));
    let err = router.validate_instance(&long, &s).unwrap_err();
    assert!(err.0.iter().all(|e| e.field == "sqs"), "{err}");
    assert!(err.to_string().contains("at most 80"), "{err}");
    let short = InstanceName::new("acme").unwrap();
    router.validate_instance(&short, &s).unwrap();
    assert!(
        InstanceName::new("connect").is_err(),
        "a Socket.IO reserved event name"
    );
}

#[test]
fn pusher_host_override_applies_to_instance_apps() {
    let mut g = all_on();
    g.pusher.host = Some("127.0.0.1".into());
    g.pusher.port = Some(6001);
    g.pusher.global_enabled = true;
    g.pusher.events = BTreeSet::from([EventKind::MessagesUpsert]);
    g.pusher.app = Some(PusherApp {
        app_id: "g".into(),
        key: "gk".into(),
        secret: Sensitive::new("gs"),
        cluster: "mt1".into(),
        use_tls: false,
        host: None,
        port: None,
    });
    let router = Router::new(g).unwrap();
    let s = settings(
        json!({"pusher": {"enabled": true, "appId": "1", "key": "k", "secret": "s", "cluster": "us2", "useTLS": false}}),
    );
    let routes = router
        .route(&event(EventKind::MessagesUpsert, "a"), Some(&s))
        .unwrap();
    assert_eq!(
        routes.len(),
        2,
        "instance app and global app are different destinations"
    );
    for r in &routes {
        let Destination::Pusher(p) = &r.destination else {
            panic!()
        };
        assert_eq!(
            (p.app.host.as_deref(), p.app.port),
            (Some("127.0.0.1"), Some(6001))
        );
        assert_eq!(p.channel, "evolution.a");
    }
}

#[test]
fn custom_routes() {
    let router = Router::new(GlobalSettings::default()).unwrap().with_custom_route(
        Channel::Custom("audit"),
        evolution_events::EventSelection::only([EventKind::Call]),
        "log",
    );
    assert_eq!(router.route(&event(EventKind::Call, "a"), None).unwrap().len(), 1);
    assert!(
        router
            .route(&event(EventKind::MessagesUpsert, "a"), None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_errors_webhook_receives_errors_events_only() {
    let mut g = GlobalSettings::default();
    g.webhook.errors_url = Some("http://errors.example/hook".into());
    let router = Router::new(g.clone()).unwrap();
    let routes = router.route(&event(EventKind::Errors, "a"), None).unwrap();
    assert_eq!(labels(&routes), ["webhook Global http://errors.example/hook"]);
    assert!(
        router
            .route(&event(EventKind::Call, "a"), None)
            .unwrap()
            .is_empty()
    );
    g.webhook.errors_url = Some("nope".into());
    assert!(
        Router::new(g)
            .unwrap_err()
            .to_string()
            .contains("WEBHOOK_EVENTS_ERRORS_WEBHOOK")
    );
}

#[test]
fn check_also_refuses_names_the_global_settings_give_the_instance() {
    let mut g = GlobalSettings::default();
    g.sqs.broker.enabled = true;
    g.sqs.broker.global_enabled = true;
    g.sqs.broker.events = EventKind::all().collect();
    let router = Router::new(g).unwrap();
    let long = InstanceName::new(&"x".repeat(64)).unwrap();
    // The instance's own settings name nothing, but the global SQS queue of this name is too long:
    // refused when the instance is saved, not on its first event.
    router
        .validate_instance(&long, &InstanceSettings::default())
        .unwrap();
    let err = router.check(&long, InstanceSettings::default()).unwrap_err();
    assert!(err.0.iter().all(|e| e.field == "sqs"), "{err}");
    assert!(err.to_string().contains("at most 80"), "{err}");
    let checked = router
        .check(&InstanceName::new("acme").unwrap(), InstanceSettings::default())
        .unwrap();
    assert_eq!(checked.instance().as_str(), "acme");
}
