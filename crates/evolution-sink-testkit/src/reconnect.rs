//! Checks for the sinks that hold a broker connection
//! ([`Reconnect`](evolution_events::reconnect::Reconnect)); call them from the sink's own tests.

use evolution_events::{ErrorKind, EventSink};

/// **An unreachable broker fails fast, then waits for the backoff, and never shows a secret.**
/// `sink` points at a [`closed_port`](crate::fixtures::closed_port) with `secret` in its URL and
/// a reconnect backoff of at least a few seconds: the first health check fails retryably as
/// `Unavailable`, the second at once with "next connection attempt in", neither shows `secret`;
/// `shutdown` is idempotent and a later `send` fails with `Closed`.
///
/// # Panics
/// When a rule is broken (this is test code).
pub async fn unreachable_waits_for_the_backoff(sink: &dyn EventSink, secret: &str) {
    let Err(first) = sink.health_check().await else {
        panic!("a health check of a sink pointed where nothing listens returned Ok");
    };
    assert!(
        first.kind() == ErrorKind::Unavailable && first.is_retryable(),
        "an unreachable broker must give a retryable unavailable error: {first}"
    );
    let Err(second) = sink.health_check().await else {
        panic!("the second health check of an unreachable sink returned Ok");
    };
    assert!(
        second.message().contains("next connection attempt in"),
        "a second attempt within the backoff must fail at once, saying when the next one is: {second}"
    );
    for e in [first, second] {
        assert!(!e.to_string().contains(secret), "an error shows the secret: {e}");
    }
    for call in ["first", "second"] {
        if let Err(e) = sink.shutdown().await {
            panic!("the {call} shutdown failed: {e}");
        }
    }
    match sink.send(&[]).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Closed, "a send after shutdown: {e}"),
        Ok(_) => panic!("a send after shutdown must fail with kind closed"),
    }
}
