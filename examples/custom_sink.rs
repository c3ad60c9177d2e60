//! Adding your own channel: a sink that appends each event to a file (here, stdout).
//!
//! Run with `cargo run -p evolution-examples --example custom_sink`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventEnvelope, EventKind,
    EventSelection, EventSink, GlobalSettings, InstanceName, SinkError, async_trait,
};
use evolution_outbox::MemoryOutbox;
use evolution_sinks::{Dispatcher, Router};

const STDOUT: Channel = Channel::Custom("stdout");

/// Writes one line per event. Retries, batching and ordering come from the dispatcher.
#[derive(Debug, Default)]
struct StdoutSink {
    closed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl EventSink for StdoutSink {
    fn channel(&self) -> Channel {
        STDOUT
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(50).ordered()
    }
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(SinkError::new(STDOUT, ErrorKind::Closed, "the sink is shut down"));
        }
        for delivery in batch {
            println!("{}", String::from_utf8_lossy(&delivery.payload()));
        }
        Ok(DeliveryReport::success())
    }
    async fn health_check(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn shutdown(&self) -> Result<(), SinkError> {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
    async fn prepare(&self, _destinations: &[Destination]) -> Result<(), SinkError> {
        Ok(()) // nothing to create ahead of the first event
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Route every event to the new channel; the built-in channels stay configured as usual.
    let router =
        Router::new(GlobalSettings::default())?.with_custom_route(STDOUT, EventSelection::all(), "stdout");
    let dispatcher = Dispatcher::builder(Arc::new(MemoryOutbox::default()), router)
        .sink(Arc::new(StdoutSink::default()))
        .start()?;
    let instance = InstanceName::new("minha-instancia")?;
    for text in ["olá", "tudo bem?", "tchau"] {
        let data = serde_json::value::to_raw_value(&serde_json::json!({"message": {"conversation": text}}))?;
        dispatcher
            .emit(
                EventEnvelope::new(EventKind::MessagesUpsert, instance.clone(), data),
                None,
            )
            .await?;
    }
    let report = dispatcher.shutdown(Duration::from_secs(5)).await;
    println!("drained: {}", report.drained);
    Ok(())
}
