//! Latency helpers shared by the channel benchmarks (`cargo bench`, `scripts/bench`): offer
//! events at a fixed rate, note when each is acknowledged or arrives, and read p50/p99.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, EventEnvelope, EventSink, SinkError,
};

/// When each event (by id) was acknowledged or arrived.
#[derive(Clone, Debug, Default)]
pub struct Acks(Arc<Mutex<HashMap<String, Instant>>>);

impl Acks {
    /// Notes `id` at `at` (the first time only).
    pub fn note(&self, id: String, at: Instant) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(at);
    }

    /// Forgets everything noted.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// How many ids were noted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing was noted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Offers the events one at a time at `rate` per second, calling `hand_over` for each at its own
/// time; returns the instant each was handed over, by event id.
pub async fn paced(
    envelopes: Vec<EventEnvelope>,
    rate: f64,
    mut hand_over: impl AsyncFnMut(EventEnvelope),
) -> HashMap<String, Instant> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut sent = HashMap::with_capacity(envelopes.len());
    let start = tokio::time::Instant::now();
    for (i, envelope) in envelopes.into_iter().enumerate() {
        tokio::time::sleep_until(start + period * u32::try_from(i).unwrap_or(u32::MAX)).await;
        sent.insert(envelope.id().to_string(), Instant::now());
        hand_over(envelope).await;
    }
    sent
}

/// Waits (at most 60 s, then panics naming how many are missing) until every event of `sent` is
/// in `acks`; returns the p50 and p99 of acknowledgement − hand-over.
///
/// # Panics
/// When some events are still missing after 60 s.
pub async fn percentiles(sent: &HashMap<String, Instant>, acks: &Acks) -> (Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = {
            let acks = acks.0.lock().unwrap_or_else(PoisonError::into_inner);
            sent.keys().filter(|id| acks.contains_key(*id)).count()
        };
        if n >= sent.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {} events acknowledged or arrived in 60 s",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acks = acks.0.lock().unwrap_or_else(PoisonError::into_inner);
    let mut all: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t)| acks.get(id).map(|a| a.saturating_duration_since(*t)))
        .collect();
    all.sort_unstable();
    (percentile(&all, 0.50), percentile(&all, 0.99))
}

/// The `p` quantile (0 to 1) of sorted durations (nearest rank); zero when empty.
#[must_use]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within a benchmark's sample count"
    )]
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `1.23 ms`.
#[must_use]
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A sink that notes, in [`Acks`], when each item of a batch was reported acknowledged (its
/// `send` returned it without a failure): the pipeline side of an acknowledgement latency.
#[derive(Debug)]
pub struct Acked {
    inner: Arc<dyn EventSink>,
    acks: Acks,
}

impl Acked {
    /// Wraps `inner`, noting into `acks`.
    #[must_use]
    pub fn new(inner: Arc<dyn EventSink>, acks: Acks) -> Self {
        Self { inner, acks }
    }
}

#[async_trait]
impl EventSink for Acked {
    fn channel(&self) -> Channel {
        self.inner.channel()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        let report = self.inner.send(batch).await?;
        let now = Instant::now();
        let failed: HashSet<usize> = report.failures().iter().map(|(i, _)| *i).collect();
        for (i, delivery) in batch.iter().enumerate() {
            if !failed.contains(&i) {
                self.acks.note(delivery.envelope.id().to_string(), now);
            }
        }
        Ok(report)
    }

    async fn health_check(&self) -> Result<(), SinkError> {
        self.inner.health_check().await
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.flush().await
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        self.inner.shutdown().await
    }

    async fn prepare(&self, destinations: &[Destination]) -> Result<(), SinkError> {
        self.inner.prepare(destinations).await
    }
}
