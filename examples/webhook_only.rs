//! The webhook channel on its own. This package depends on `evolution-sinks` with
//! `default-features = false, features = ["webhook"]` (examples/Cargo.toml), so it builds without
//! librdkafka, cmake, the AWS SDK or any broker client.
//!
//! Events go to a global webhook (what `WEBHOOK_GLOBAL_*` configures in the server), signed with
//! Standard Webhooks, retried with backoff, and given up as dead letters — with a notice — when
//! the receiver refuses them for good.
//!
//! Run with `cargo run -p evolution-examples --example webhook_only`: the receiver on a loopback
//! port answers the first attempt of `/hook` with 503 and the retry with 200, and answers `/gone`
//! with 400 (not retried).
#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use evolution_events::{
    Channel, EventEnvelope, EventKind, GlobalSettings, InstanceName, InstanceSettings, RetryPolicy,
    Sensitive, WebhookSettings,
};
use evolution_outbox::MemoryOutbox;
use evolution_sinks::webhook::network::parse_networks;
use evolution_sinks::webhook::{WebhookConfig, WebhookSink};
use evolution_sinks::{ChannelConfig, Dispatcher, Router};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (receiver, mut received) = common::receiver(|path, attempt| match (path, attempt) {
        ("hook", 1) => StatusCode::SERVICE_UNAVAILABLE,
        ("hook", _) => StatusCode::OK,
        _ => StatusCode::BAD_REQUEST,
    })
    .await?;

    // Every MESSAGES_UPSERT of every instance goes to the global webhook, signed.
    let mut global = GlobalSettings::default();
    global.webhook.enabled = true;
    global.webhook.url = format!("http://{receiver}/hook");
    global.webhook.events.insert(EventKind::MessagesUpsert);
    global.webhook.signing_secrets.push(Sensitive::new(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
    ));

    // Retries a second apart (the server's default waits 5 s, then doubles), at most 3 attempts.
    let dispatch = ChannelConfig {
        retry: RetryPolicy {
            max_attempts: Some(3),
            initial_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        },
        ..ChannelConfig::default_for(Channel::Webhook)
    };
    let sink = WebhookSink::new(WebhookConfig {
        allowed_networks: parse_networks("127.0.0.0/8")?,
        ..WebhookConfig::default()
    })?;
    let dispatcher = Dispatcher::builder(Arc::new(MemoryOutbox::default()), Router::new(global)?)
        .sink_with(Arc::new(sink), dispatch)
        .on_dead(|notice| {
            println!(
                "dead letter: {} to {} after {} attempt(s): {}",
                notice.delivery.envelope.kind(),
                notice.delivery.destination.label(),
                notice.delivery.attempt,
                notice.error
            );
        })
        .start()?;

    // One instance also has a webhook of its own, which refuses everything.
    let gone = json!({"enabled": true, "url": format!("http://{receiver}/gone")});
    let settings = InstanceSettings {
        webhook: Some(WebhookSettings::from_json(&gone, "webhook")?),
        ..InstanceSettings::default()
    };
    let data = serde_json::value::to_raw_value(&json!({"message": {"conversation": "olá"}}))?;
    let event = EventEnvelope::new(EventKind::MessagesUpsert, InstanceName::new("acme")?, data);
    dispatcher.emit(event, Some(&settings)).await?;

    // `/gone` once, `/hook` twice.
    for _ in 0..3 {
        let request = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await?
            .ok_or("the receiver stopped")?;
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "/{}: webhook-id {}, webhook-signature {}\n  {}",
            request.path,
            header("webhook-id"),
            header("webhook-signature"),
            request.body
        );
    }
    let report = dispatcher.shutdown(Duration::from_secs(5)).await;
    println!("drained: {}", report.drained);
    Ok(())
}
