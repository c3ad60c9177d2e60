//! What a sink crate provides to run the contract suite: a [`ContractFixture`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use evolution_events::{Destination, EventSink, Uuid};

/// A sink connected to a real server, and a probe that observes what reaches the wire.
///
/// A fixture is built once per case (the suite calls the fixture function in every test), so
/// [`sink`](Self::sink) may be shut down by a case without affecting the others.
#[async_trait]
pub trait ContractFixture: Send + Sync + 'static {
    /// The sink under test, connected to the real server. Every call returns the same sink.
    fn sink(&self) -> Arc<dyn EventSink>;

    /// A fresh destination on that server that the probe observes (unique per call, so cases do
    /// not interfere): a new queue, subject, topic, URL path, channel or room.
    async fn destination(&self) -> Destination;

    /// What reached the wire at `destination`: every message observed there since the
    /// destination was created, in arrival order. Returns as soon as at least `expected` arrived,
    /// or after `within` with what there is.
    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed>;

    /// The same kind of sink, pointed where nothing listens (a closed port).
    async fn unreachable_sink(&self) -> Arc<dyn EventSink>;

    /// The destination `unreachable_is_retryable` sends to through
    /// [`unreachable_sink`](Self::unreachable_sink). By default a fresh
    /// [`destination`](Self::destination); override it for channels whose destination says where
    /// the server is (a webhook URL, a Pusher app's host and port) to point at a closed port.
    async fn unreachable_destination(&self) -> Destination {
        self.destination().await
    }

    /// The largest payload the sink sends, in bytes, if it has a limit (its `max_payload_bytes`):
    /// `oversize_item_rejected_per_item` then sends an item over it, and
    /// `unicode_and_near_limit_payloads` one just under it. Default: `None`, no limit (the first
    /// case is skipped, the second sends 256 KiB).
    fn max_payload_bytes(&self) -> Option<usize> {
        None
    }

    /// Whether the server itself drops a redelivery that carries the same idempotency key (a
    /// JetStream stream with `Nats-Msg-Id`, an SQS FIFO queue with `MessageDeduplicationId`).
    /// `same_id_on_redelivery` then expects one message on the wire instead of two. Default:
    /// `false`.
    fn deduplicates_redeliveries(&self) -> bool {
        false
    }
}

/// One message as read from the wire by a fixture's probe.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The idempotency key as read from the wire (a header, the message id, or the body's `id`).
    pub id: Uuid,
    /// The message body.
    pub payload: Bytes,
}

/// Why a fixture is unavailable, e.g.
/// `"set EVOLUTION_TEST_RABBITMQ_URI=amqp://guest:guest@127.0.0.1:5672/%2f"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

impl Skip {
    /// A skip with this reason.
    #[must_use]
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fixture, or `None` when it is unavailable outside CI.
///
/// # Panics
/// When the fixture is unavailable and the environment is strict: `CI` is `true` or `1`, or
/// `EVOLUTION_CONTRACT_STRICT=1`. Outside CI, prints `skipped: <reason>` to stderr instead.
#[must_use]
pub fn require<F>(fixture: Result<F, Skip>) -> Option<F> {
    match fixture {
        Ok(fixture) => Some(fixture),
        Err(Skip(reason)) if strict() => panic!("contract fixture unavailable in CI: {reason}"),
        Err(Skip(reason)) => {
            report_skip(format_args!("skipped: {reason}"));
            None
        }
    }
}

#[allow(
    clippy::print_stderr,
    reason = "a skipped contract case must be visible in the test output"
)]
pub(crate) fn report_skip(line: fmt::Arguments<'_>) {
    eprintln!("{line}");
}

fn strict() -> bool {
    let set = |name: &str, accepted: &[&str]| {
        std::env::var(name).is_ok_and(|value| accepted.iter().any(|a| value.trim().eq_ignore_ascii_case(a)))
    };
    set("CI", &["true", "1"]) || set("EVOLUTION_CONTRACT_STRICT", &["1", "true"])
}

/// Runs one contract case on a fresh multi-threaded runtime (2 workers). Used by
/// [`contract_suite!`](crate::contract_suite).
#[doc(hidden)]
pub fn run_case(case: impl Future<Output = ()>) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => panic!("cannot start the tokio runtime of a contract case: {e}"),
    };
    runtime.block_on(case);
}
