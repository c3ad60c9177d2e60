//! What the channel benches of this crate do the same way with the Dispatcher: hand it every
//! event at once, or one at a time at a fixed rate.

use std::collections::HashMap;
use std::time::Instant;

use evolution_events::{EventEnvelope, InstanceSettings};
use evolution_sink_testkit::bench::paced;
use evolution_sinks::Dispatcher;

/// Hands every event to `dispatcher`, 500 per `emit_many` call, all with `settings` (`None`: the
/// global routes only).
pub(crate) async fn emit_all(
    dispatcher: &Dispatcher,
    envelopes: Vec<EventEnvelope>,
    settings: Option<&InstanceSettings>,
) {
    let mut envelopes = envelopes.into_iter();
    loop {
        let chunk: Vec<_> = envelopes.by_ref().take(500).map(|e| (e, settings)).collect();
        if chunk.is_empty() {
            return;
        }
        dispatcher.emit_many(chunk).await.unwrap();
    }
}

/// Offers each event to `Dispatcher::emit` at `rate` per second, with `settings` (`None`: the
/// global routes only); returns when each was handed over.
pub(crate) async fn emit_paced(
    dispatcher: &Dispatcher,
    envelopes: Vec<EventEnvelope>,
    rate: f64,
    settings: Option<&InstanceSettings>,
) -> HashMap<String, Instant> {
    paced(envelopes, rate, async |envelope| {
        dispatcher.emit(envelope, settings).await.unwrap();
    })
    .await
}
