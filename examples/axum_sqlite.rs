//! Emitting events from an axum application, durably: the handler answers `202` only once the
//! event and all its deliveries are committed to an SQLite file, and the dispatcher delivers them
//! in the background — after a crash too, since what is committed stays in the file.
//!
//! Run with `cargo run -p evolution-examples --example axum_sqlite`: it starts the app and a
//! webhook receiver on loopback ports, places one order through the app, prints what the
//! receiver got and stops.
#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router as Http};
use evolution_events::{
    EventEnvelope, EventKind, GlobalSettings, InstanceName, InstanceSettings, WebhookSettings,
};
use evolution_outbox::{SqliteOptions, SqliteOutbox};
use evolution_sinks::webhook::network::parse_networks;
use evolution_sinks::webhook::{WebhookConfig, WebhookSink};
use evolution_sinks::{Dispatcher, EmitError, Router};
use serde_json::{Value, json};

/// What the handlers share.
#[derive(Clone, Debug)]
struct App {
    dispatcher: Dispatcher,
    /// Where each shop's events go; an application keeps these with its shops (here: one for all).
    settings: Arc<InstanceSettings>,
}

/// `POST /orders/{shop}`: records the order's event and answers with its id once it is durable.
async fn place_order(
    State(app): State<App>,
    Path(shop): Path<String>,
    Json(order): Json<Value>,
) -> Result<(StatusCode, Json<Value>), (StatusCode, String)> {
    let shop = InstanceName::new(&shop).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let data =
        serde_json::value::to_raw_value(&order).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let event = EventEnvelope::new(EventKind::MessagesUpsert, shop, data);
    match app.dispatcher.emit(event, Some(app.settings.as_ref())).await {
        Ok(stored) => Ok((StatusCode::ACCEPTED, Json(json!({"id": stored.id()})))),
        Err(e @ EmitError::Routing(_)) => Err((StatusCode::BAD_REQUEST, e.to_string())),
        // The outbox is full, unreachable or shutting down: nothing was stored; the client retries.
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (receiver, mut received) = common::receiver(|_, _| StatusCode::OK).await?;

    // The outbox: an SQLite file (here in a temporary directory; an application keeps it).
    let dir = std::env::temp_dir().join(format!("evolution-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outbox = Arc::new(SqliteOutbox::open(&dir.join("events.db"), SqliteOptions::default()).await?);

    // The webhook channel. Loopback addresses are refused (SSRF protection) unless allowed.
    let webhook = WebhookSink::new(WebhookConfig {
        allowed_networks: parse_networks("127.0.0.0/8")?,
        ..WebhookConfig::default()
    })?;
    let dispatcher = Dispatcher::builder(
        Arc::clone(&outbox) as Arc<dyn evolution_outbox::Outbox>,
        Router::new(GlobalSettings::default())?,
    )
    .sink(Arc::new(webhook))
    .start()?;
    let webhook =
        json!({"enabled": true, "url": format!("http://{receiver}/orders"), "events": ["MESSAGES_UPSERT"]});
    let settings = InstanceSettings {
        webhook: Some(WebhookSettings::from_json(&webhook, "webhook")?),
        ..InstanceSettings::default()
    };
    let app = Http::new()
        .route("/orders/{shop}", post(place_order))
        .with_state(App {
            dispatcher: dispatcher.clone(),
            settings: Arc::new(settings),
        });
    let address = common::serve(app).await?;

    // A client places an order.
    let answer = reqwest::Client::new()
        .post(format!("http://{address}/orders/acme"))
        .json(&json!({"item": "coffee", "quantity": 2}))
        .send()
        .await?;
    println!("POST /orders/acme → {} {}", answer.status(), answer.text().await?);
    let delivery = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await?
        .ok_or("the receiver stopped")?;
    let id = delivery.headers.get("webhook-id").and_then(|v| v.to_str().ok());
    println!(
        "the webhook at /{} received (webhook-id {}):\n  {}",
        delivery.path,
        id.unwrap_or("-"),
        delivery.body
    );

    // Stop: finish what is in flight (anything left would be sent at the next start), then close.
    dispatcher.shutdown(Duration::from_secs(5)).await;
    outbox.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
