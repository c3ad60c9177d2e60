//! Pacing of connection attempts to a broker, shared by the sinks that hold a connection.
//!
//! A sink that cannot connect fails the send (the dispatcher retries the deliveries on its own
//! schedule) and must not hammer the broker with a new connection attempt for every batch:
//! after `n` consecutive failed attempts the next one waits [`backoff`]`(min, max, n)`.

use std::ops::{Add, Sub};
use std::time::Duration;

/// The pause after `failures` consecutive failed attempts: `min · 2^(failures-1)`, at most `max`
/// (`min` for 0 or 1 failure).
#[must_use]
pub fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    min.saturating_mul(1 << exponent).min(max)
}

/// The state of a sink's connection attempts: consecutive failures, when the next attempt may
/// be made, and why the last one failed. Generic over the clock's instant (`std` or `tokio`'s,
/// whose time tests can pause).
#[derive(Debug)]
pub struct ConnectBackoff<I> {
    failures: u32,
    retry_at: Option<I>,
    last_error: Option<String>,
}

impl<I> Default for ConnectBackoff<I> {
    fn default() -> Self {
        Self {
            failures: 0,
            retry_at: None,
            last_error: None,
        }
    }
}

impl<I> ConnectBackoff<I>
where
    I: Copy + Ord + Add<Duration, Output = I> + Sub<Output = Duration>,
{
    /// `Some(why)` when an attempt at `now` is too early: "not connected to {target}: next
    /// connection attempt in N ms (last error: …)"; `None` when one may be made.
    #[must_use]
    pub fn too_early(&self, now: I, target: &str) -> Option<String> {
        let at = self.retry_at.filter(|at| now < *at)?;
        let last = self.last_error.as_deref().unwrap_or("unknown");
        Some(format!(
            "not connected to {target}: next connection attempt in {} ms (last error: {last})",
            (at - now).as_millis()
        ))
    }

    /// Records a successful attempt; returns how many failed before it.
    pub fn succeeded(&mut self) -> u32 {
        self.retry_at = None;
        self.last_error = None;
        std::mem::take(&mut self.failures)
    }

    /// Records a failed attempt at `now` (`error`: no secrets); returns the pause before the next
    /// one and the number of consecutive failures.
    pub fn failed(&mut self, now: I, min: Duration, max: Duration, error: &str) -> (Duration, u32) {
        self.failures = self.failures.saturating_add(1);
        let pause = backoff(min, max, self.failures);
        self.retry_at = Some(now + pause);
        self.last_error = Some(error.to_owned());
        (pause, self.failures)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(10));
        let pauses: Vec<u128> = (1..=9).map(|n| backoff(min, max, n).as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(backoff(min, max, 0), min);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }

    #[test]
    fn attempts_wait_for_the_pause_and_success_resets() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(4));
        let mut gate = ConnectBackoff::<Instant>::default();
        let t0 = Instant::now();
        assert_eq!(gate.too_early(t0, "broker"), None);
        assert_eq!(gate.failed(t0, min, max, "refused"), (min, 1));
        let why = gate.too_early(t0, "broker").unwrap_or_default();
        assert!(
            why.starts_with("not connected to broker: next connection attempt in 1000 ms"),
            "{why}"
        );
        assert!(why.ends_with("(last error: refused)"), "{why}");
        assert_eq!(gate.too_early(t0 + min, "broker"), None);
        assert_eq!(
            gate.failed(t0 + min, min, max, "refused").0,
            Duration::from_secs(2)
        );
        assert_eq!(gate.succeeded(), 2);
        assert_eq!(gate.too_early(t0 + min, "broker"), None);
        assert_eq!(gate.failed(t0, min, max, "again").0, min, "the count starts over");
    }
}
