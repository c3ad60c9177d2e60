//! [`MemorySink`]: the in-memory reference sink, with failure injection, and [`MemoryFixture`], the
//! contract fixture that runs the suite against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use evolution_events::{
    Capabilities, Channel, CustomTarget, Delivery, DeliveryId, DeliveryReport, Destination, ErrorKind,
    EventSink, SinkError, Uuid,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::contract::{ContractFixture, Observed};

/// One delivery as the [`MemorySink`] received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The delivery's id.
    pub delivery_id: DeliveryId,
    /// The event id (the idempotency key).
    pub event_id: Uuid,
    /// The event's per-instance sequence.
    pub sequence: u64,
    /// The event's instance.
    pub instance: String,
    /// Where it was sent.
    pub destination: Destination,
    /// The payload bytes, as `Delivery::payload` gave them.
    pub payload: Bytes,
    /// The delivery's attempt number.
    pub attempt: u32,
    /// When it arrived (tokio clock, so it follows `tokio::time::pause`).
    pub at: Instant,
}

/// An in-memory [`EventSink`]: records what it receives, in arrival order, and fails on demand.
///
/// Cheap to clone: clones share the same state, so a test keeps one clone to inspect and inject
/// failures while the code under test owns another as `Arc<dyn EventSink>`.
///
/// Default capabilities: batches of 100, ordered; no payload limit.
#[derive(Clone, Debug)]
pub struct MemorySink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channel: Channel,
    state: Mutex<State>,
    /// How many deliveries were received so far; bumped on every arrival.
    arrivals: watch::Sender<usize>,
    /// Whether `send` and `health_check` hang.
    hang: watch::Sender<bool>,
}

#[derive(Debug)]
struct State {
    capabilities: Capabilities,
    max_payload_bytes: Option<usize>,
    down: bool,
    closed: bool,
    fail_next: Option<Injected>,
    fail_events: HashMap<Uuid, EventRule>,
    received: Vec<Received>,
    batch_sizes: Vec<usize>,
}

/// A whole-send failure to inject `remaining` more times.
#[derive(Debug)]
struct Injected {
    remaining: usize,
    kind: ErrorKind,
    status: Option<u16>,
}

/// Per-item failures of one event: each of its deliveries fails its first `times` sends.
#[derive(Debug)]
struct EventRule {
    times: usize,
    kind: ErrorKind,
    status: Option<u16>,
    sent: HashMap<DeliveryId, usize>,
}

impl MemorySink {
    /// A sink of `channel` with capabilities `Capabilities::new(100).ordered()` and no payload
    /// limit.
    #[must_use]
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: Arc::new(Inner {
                channel,
                state: Mutex::new(State {
                    capabilities: Capabilities::new(100).ordered(),
                    max_payload_bytes: None,
                    down: false,
                    closed: false,
                    fail_next: None,
                    fail_events: HashMap::new(),
                    received: Vec::new(),
                    batch_sizes: Vec::new(),
                }),
                arrivals: watch::Sender::new(0),
                hang: watch::Sender::new(false),
            }),
        }
    }

    /// Replaces the capabilities (for every clone).
    #[must_use]
    pub fn with_capabilities(self, caps: Capabilities) -> Self {
        self.state().capabilities = caps;
        self
    }

    /// Rejects (per item, `Rejected`) every payload longer than `limit` bytes (for every clone).
    #[must_use]
    pub fn with_max_payload_bytes(self, limit: usize) -> Self {
        self.state().max_payload_bytes = Some(limit);
        self
    }

    /// While down, `send` fails as a whole and `health_check` fails, both with
    /// [`ErrorKind::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// While hanging, `send` and `health_check` do not complete; they resume when the hang is
    /// cleared.
    pub fn set_hang(&self, hang: bool) {
        self.inner.hang.send_replace(hang);
    }

    /// The next `sends` calls of `send` with a non-empty batch fail as a whole with `kind` (and
    /// `status`, if given), delivering nothing. Replaces a previous `fail_next`.
    pub fn fail_next(&self, sends: usize, kind: ErrorKind, status: Option<u16>) {
        self.state().fail_next = (sends > 0).then_some(Injected {
            remaining: sends,
            kind,
            status,
        });
    }

    /// Every delivery of event `event_id` is reported failed (per item, in the
    /// [`DeliveryReport`]) with `kind` (and `status`) the next `times` times it is sent; the other
    /// items of the batch are delivered. Each delivery of the event (one per destination) counts
    /// its own sends. Replaces a previous rule for that event.
    pub fn fail_event(&self, event_id: Uuid, times: usize, kind: ErrorKind, status: Option<u16>) {
        let rule = EventRule {
            times,
            kind,
            status,
            sent: HashMap::new(),
        };
        self.state().fail_events.insert(event_id, rule);
    }

    /// Everything delivered so far, in arrival order.
    #[must_use]
    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// Waits until at least `n` deliveries were received, or `within` elapsed, and returns
    /// everything received. Follows the tokio clock (works under `tokio::time::pause`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait_until(within, |received| received.len() >= n).await;
        self.received()
    }

    /// Waits until at least `n` deliveries to `destination` were received, or `within` elapsed, and
    /// returns those received at `destination`, in arrival order.
    pub async fn wait_for_destination(
        &self,
        destination: &Destination,
        n: usize,
        within: Duration,
    ) -> Vec<Received> {
        let at = |received: &[Received]| {
            received
                .iter()
                .filter(|r| r.destination == *destination)
                .cloned()
                .collect::<Vec<_>>()
        };
        self.wait_until(within, |received| {
            received.iter().filter(|r| r.destination == *destination).count() >= n
        })
        .await;
        at(&self.state().received)
    }

    /// How many times `send` was called with a non-empty batch (whatever the outcome).
    #[must_use]
    pub fn send_calls(&self) -> usize {
        self.state().batch_sizes.len()
    }

    /// The size of each non-empty batch `send` was called with (whatever the outcome), in call
    /// order.
    #[must_use]
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.state().batch_sizes.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn wait_until(&self, within: Duration, mut done: impl FnMut(&[Received]) -> bool) {
        let deadline = Instant::now() + within;
        // Subscribe before checking, so an arrival between the check and the wait is not missed.
        let mut arrivals = self.inner.arrivals.subscribe();
        loop {
            if done(&self.state().received) {
                return;
            }
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    async fn wait_while_hanging(&self) {
        let mut hang = self.inner.hang.subscribe();
        // The sender lives as long as `self`: `wait_for` only fails if it were dropped.
        if hang.wait_for(|hanging| !*hanging).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn error(&self, kind: ErrorKind, message: impl Into<String>, status: Option<u16>) -> SinkError {
        let error = SinkError::new(self.inner.channel, kind, message.into());
        match status {
            Some(status) => error.with_status(status),
            None => error,
        }
    }
}

#[async_trait]
impl EventSink for MemorySink {
    fn channel(&self) -> Channel {
        self.inner.channel
    }

    fn capabilities(&self) -> Capabilities {
        self.state().capabilities
    }

    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        if batch.is_empty() {
            return Ok(DeliveryReport::success());
        }
        self.state().batch_sizes.push(batch.len());
        self.wait_while_hanging().await;

        let mut state = self.state();
        if state.closed {
            return Err(self.error(ErrorKind::Closed, "memory sink is shut down", None));
        }
        if state.down {
            return Err(self.error(ErrorKind::Unavailable, "memory sink is down", None));
        }
        if let Some(injected) = &mut state.fail_next {
            injected.remaining -= 1;
            let (kind, status) = (injected.kind, injected.status);
            if injected.remaining == 0 {
                state.fail_next = None;
            }
            return Err(self.error(kind, "injected failure (fail_next)", status));
        }

        let limit = state.max_payload_bytes;
        let now = Instant::now();
        let mut report = DeliveryReport::success();
        let mut delivered = 0;
        for (index, delivery) in batch.iter().enumerate() {
            let payload = delivery.payload();
            if let Some(limit) = limit.filter(|&limit| payload.len() > limit) {
                let message = format!(
                    "payload of {} bytes exceeds the limit of {limit} bytes",
                    payload.len()
                );
                report.fail(index, self.error(ErrorKind::Rejected, message, None));
                continue;
            }
            let event_id = delivery.envelope.id();
            if let Some(rule) = state.fail_events.get_mut(&event_id) {
                let sent = rule.sent.entry(delivery.id).or_insert(0);
                if *sent < rule.times {
                    *sent += 1;
                    let message = format!("injected failure of event {event_id} (fail_event)");
                    report.fail(index, self.error(rule.kind, message, rule.status));
                    continue;
                }
            }
            state.received.push(Received {
                delivery_id: delivery.id,
                event_id,
                sequence: delivery.envelope.sequence(),
                instance: delivery.envelope.instance().as_str().to_owned(),
                destination: Destination::clone(&delivery.destination),
                payload,
                attempt: delivery.attempt,
                at: now,
            });
            delivered += 1;
        }
        drop(state);
        if delivered > 0 {
            self.inner.arrivals.send_modify(|count| *count += delivered);
        }
        Ok(report)
    }

    async fn health_check(&self) -> Result<(), SinkError> {
        self.wait_while_hanging().await;
        let state = self.state();
        if state.closed {
            Err(self.error(ErrorKind::Closed, "memory sink is shut down", None))
        } else if state.down {
            Err(self.error(ErrorKind::Unavailable, "memory sink is down", None))
        } else {
            Ok(())
        }
    }

    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        self.state().closed = true;
        Ok(())
    }

    /// Nothing to provision in memory.
    async fn prepare(&self, _destinations: &[Destination]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The contract fixture over a [`MemorySink`] (channel `Custom("memory")`, capabilities
/// `Capabilities::new(100).ordered()`, payloads up to 64 KiB, so every capability-gated case
/// runs). Destinations are `Destination::Custom` with a fresh UUID target.
#[derive(Clone, Debug)]
pub struct MemoryFixture {
    sink: MemorySink,
}

impl MemoryFixture {
    /// The channel of the fixture's sinks.
    pub const CHANNEL: Channel = Channel::Custom("memory");
    /// The payload limit of the fixture's sinks.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

    /// A fixture with a fresh sink.
    #[must_use]
    pub fn new() -> Self {
        Self {
            sink: Self::memory_sink(),
        }
    }

    /// The sink under test, to inspect it or inject failures.
    #[must_use]
    pub fn memory(&self) -> &MemorySink {
        &self.sink
    }

    fn memory_sink() -> MemorySink {
        MemorySink::new(Self::CHANNEL).with_max_payload_bytes(Self::MAX_PAYLOAD_BYTES)
    }
}

impl Default for MemoryFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ContractFixture for MemoryFixture {
    fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(self.sink.clone())
    }

    async fn destination(&self) -> Destination {
        Destination::Custom(CustomTarget {
            target: Uuid::now_v7().to_string(),
        })
    }

    async fn observed(&self, destination: &Destination, expected: usize, within: Duration) -> Vec<Observed> {
        self.sink
            .wait_for_destination(destination, expected, within)
            .await
            .into_iter()
            .map(|r| Observed {
                id: r.event_id,
                payload: r.payload,
            })
            .collect()
    }

    async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
        let sink = Self::memory_sink();
        sink.set_down(true);
        Arc::new(sink)
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(Self::MAX_PAYLOAD_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use evolution_events::{EventKind, NamingProfile};
    use serde_json::json;

    use super::*;
    use crate::fixtures::{delivery, envelope};

    fn dest(name: &str) -> Destination {
        Destination::Custom(CustomTarget { target: name.into() })
    }

    fn one(id: DeliveryId, sink: &MemorySink) -> Delivery {
        let env = envelope(EventKind::MessagesUpsert, "inst-1", json!({"n": id}));
        delivery(id, sink.channel(), dest("d"), env)
    }

    #[tokio::test]
    async fn delivers_and_records_in_order() {
        let sink = MemorySink::new(Channel::Webhook);
        assert_eq!(sink.channel(), Channel::Webhook);
        assert_eq!(sink.capabilities(), Capabilities::new(100).ordered());
        let batch = [one(1, &sink), one(2, &sink)];
        let report = sink.send(&batch).await.unwrap();
        assert!(report.is_success());
        assert!(sink.send(&[]).await.unwrap().is_success());
        let received = sink.received();
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].delivery_id, 1);
        assert_eq!(received[1].delivery_id, 2);
        assert_eq!(received[0].event_id, batch[0].envelope.id());
        assert_eq!(
            received[0].payload,
            batch[0].envelope.payload(NamingProfile::Seed)
        );
        assert_eq!(received[0].instance, "inst-1");
        assert_eq!(received[0].attempt, 1);
        assert_eq!(received[0].destination, dest("d"));
        assert_eq!(sink.send_calls(), 1);
        assert_eq!(sink.batch_sizes(), vec![2]);
    }

    #[tokio::test]
    async fn down_fails_sends_and_health_checks() {
        let sink = MemorySink::new(Channel::Nats);
        sink.set_down(true);
        let err = sink.send(&[one(1, &sink)]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        assert_eq!(
            sink.health_check().await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        assert!(sink.received().is_empty());
        assert_eq!(sink.send_calls(), 1);
        sink.set_down(false);
        sink.health_check().await.unwrap();
        assert!(sink.send(&[one(2, &sink)]).await.unwrap().is_success());
        assert_eq!(sink.received().len(), 1);
    }

    #[tokio::test]
    async fn hang_blocks_until_cleared() {
        let sink = MemorySink::new(Channel::Kafka);
        sink.set_hang(true);
        let d = one(1, &sink);
        let hung =
            tokio::time::timeout(Duration::from_millis(100), sink.send(std::slice::from_ref(&d))).await;
        assert!(hung.is_err(), "send completed while hanging");
        let hung = tokio::time::timeout(Duration::from_millis(100), sink.health_check()).await;
        assert!(hung.is_err(), "health_check completed while hanging");
        assert!(sink.received().is_empty());

        let pending = tokio::spawn({
            let sink = sink.clone();
            async move { sink.send(&[d]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished());
        sink.set_hang(false);
        assert!(pending.await.unwrap().unwrap().is_success());
        assert_eq!(sink.received().len(), 1);
        sink.health_check().await.unwrap();
    }

    #[tokio::test]
    async fn fail_next_fails_whole_sends() {
        let sink = MemorySink::new(Channel::Webhook);
        sink.fail_next(2, ErrorKind::RateLimited, Some(429));
        assert!(
            sink.send(&[]).await.unwrap().is_success(),
            "empty batch consumes nothing"
        );
        for _ in 0..2 {
            let err = sink.send(&[one(1, &sink), one(2, &sink)]).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::RateLimited);
            assert_eq!(err.status(), Some(429));
            assert_eq!(err.sink(), Channel::Webhook);
        }
        assert!(sink.received().is_empty());
        assert!(sink.send(&[one(3, &sink)]).await.unwrap().is_success());
        assert_eq!(sink.received().len(), 1);
        assert_eq!(sink.send_calls(), 3);
        assert_eq!(sink.batch_sizes(), vec![2, 2, 1]);

        sink.fail_next(1, ErrorKind::Rejected, None);
        let err = sink.send(&[one(4, &sink)]).await.unwrap_err();
        assert_eq!((err.kind(), err.status()), (ErrorKind::Rejected, None));
    }

    #[tokio::test]
    async fn fail_event_fails_its_items_only() {
        let sink = MemorySink::new(Channel::Rabbitmq);
        let batch = [one(1, &sink), one(2, &sink), one(3, &sink)];
        let target = batch[1].envelope.id();
        sink.fail_event(target, 2, ErrorKind::Unavailable, Some(503));
        for round in 0..2 {
            let failures = sink.send(&batch).await.unwrap().into_failures();
            assert_eq!(failures.len(), 1, "round {round}");
            assert_eq!(failures[0].0, 1);
            assert_eq!(failures[0].1.kind(), ErrorKind::Unavailable);
            assert_eq!(failures[0].1.status(), Some(503));
        }
        assert!(sink.send(&batch[1..2]).await.unwrap().is_success());
        let ids: Vec<_> = sink.received().iter().map(|r| r.delivery_id).collect();
        assert_eq!(ids, vec![1, 3, 1, 3, 2]);

        // Each delivery of the event (one per destination) counts its own sends.
        let env = Arc::clone(&batch[0].envelope);
        sink.fail_event(env.id(), 1, ErrorKind::Timeout, None);
        let fan_out = [
            delivery(10, sink.channel(), dest("a"), Arc::clone(&env)),
            delivery(11, sink.channel(), dest("b"), env),
        ];
        assert_eq!(sink.send(&fan_out).await.unwrap().failures().len(), 2);
        assert!(sink.send(&fan_out).await.unwrap().is_success());
    }

    #[tokio::test]
    async fn oversize_items_are_rejected_per_item() {
        let sink = MemorySink::new(Channel::Sqs)
            .with_capabilities(Capabilities::new(10))
            .with_max_payload_bytes(1024);
        let big = delivery(
            2,
            sink.channel(),
            dest("d"),
            envelope(EventKind::MessagesUpsert, "inst-1", json!("x".repeat(2048))),
        );
        let failures = sink
            .send(&[one(1, &sink), big, one(3, &sink)])
            .await
            .unwrap()
            .into_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 1);
        assert_eq!(failures[0].1.kind(), ErrorKind::Rejected);
        assert!(
            failures[0].1.message().contains("limit of 1024 bytes"),
            "{}",
            failures[0].1
        );
        assert_eq!(sink.received().len(), 2);
    }

    #[tokio::test]
    async fn shutdown_is_idempotent_and_closes() {
        let sink = MemorySink::new(Channel::Pusher);
        sink.shutdown().await.unwrap();
        sink.shutdown().await.unwrap();
        sink.flush().await.unwrap();
        let err = sink.send(&[one(1, &sink)]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert_eq!(sink.health_check().await.unwrap_err().kind(), ErrorKind::Closed);
        assert!(sink.received().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_follows_paused_time() {
        let sink = MemorySink::new(Channel::Webhook);
        let start = Instant::now();
        // Nothing arrives: returns after `within` of (auto-advanced) virtual time.
        assert!(sink.wait_for(1, Duration::from_secs(3600)).await.is_empty());
        assert_eq!(start.elapsed(), Duration::from_secs(3600));

        let sender = tokio::spawn({
            let sink = sink.clone();
            async move {
                for id in 1..=3 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    assert!(sink.send(&[one(id, &sink)]).await.unwrap().is_success());
                }
            }
        });
        let start = Instant::now();
        let got = sink.wait_for(2, Duration::from_secs(60)).await;
        assert_eq!(got.len(), 2);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        assert_eq!(got[1].at - got[0].at, Duration::from_secs(10));
        sender.await.unwrap();
        assert_eq!(sink.wait_for(2, Duration::ZERO).await.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_destination_filters() {
        let sink = MemorySink::new(Channel::Webhook);
        let other = delivery(
            1,
            sink.channel(),
            dest("other"),
            envelope(EventKind::MessagesUpsert, "inst-1", json!(1)),
        );
        assert!(sink.send(&[other]).await.unwrap().is_success());
        let start = Instant::now();
        assert!(
            sink.wait_for_destination(&dest("d"), 1, Duration::from_secs(5))
                .await
                .is_empty()
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(sink.send(&[one(2, &sink)]).await.unwrap().is_success());
        let got = sink
            .wait_for_destination(&dest("d"), 1, Duration::from_secs(5))
            .await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].delivery_id, 2);
    }
}
