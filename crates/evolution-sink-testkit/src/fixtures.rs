//! Builders of envelopes and deliveries for tests.

use std::sync::Arc;

use evolution_events::{
    Channel, Delivery, DeliveryId, Destination, EventEnvelope, EventKind, InstanceName, NamingProfile, Scope,
};

/// An envelope of `kind` for `instance` with `data`, a fresh UUIDv7 id and sequence 0.
///
/// # Panics
/// If `instance` is not a valid instance name (this is test code).
#[must_use]
pub fn envelope(kind: EventKind, instance: &str, data: serde_json::Value) -> Arc<EventEnvelope> {
    Arc::new(raw_envelope(kind, instance, &data))
}

/// Like [`envelope`], not yet shared, so its builder methods (`with_sequence`, …) still apply.
pub(crate) fn raw_envelope(kind: EventKind, instance: &str, data: &serde_json::Value) -> EventEnvelope {
    let instance = match InstanceName::new(instance) {
        Ok(instance) => instance,
        Err(e) => panic!("fixtures::envelope: {e}"),
    };
    let data = match serde_json::value::to_raw_value(data) {
        Ok(data) => data,
        Err(e) => panic!("fixtures::envelope: cannot serialize data: {e}"),
    };
    EventEnvelope::new(kind, instance, data)
}

/// A first-attempt delivery of `envelope` to `destination`, scope `Instance`, profile `Seed`.
#[must_use]
pub fn delivery(
    id: DeliveryId,
    channel: Channel,
    destination: Destination,
    envelope: Arc<EventEnvelope>,
) -> Delivery {
    Delivery {
        body: None,
        id,
        channel,
        scope: Scope::Instance,
        profile: NamingProfile::Seed,
        envelope,
        destination: Arc::new(destination),
        ordering_key: None,
        attempt: 1,
    }
}

/// A local TCP port where nothing listens (bound, then released): where an unreachable sink
/// points.
///
/// # Panics
/// If no local port can be bound (this is test code).
#[must_use]
pub fn closed_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(address) => address.port(),
        Err(e) => panic!("fixtures::closed_port: cannot bind a local port: {e}"),
    }
}
