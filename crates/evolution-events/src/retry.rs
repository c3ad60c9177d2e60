//! When to try a failed delivery again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Retry, SinkError};

/// The longest `Retry-After` honoured; a backend asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A retry schedule. The dispatcher applies it to every retryable failure; the outbox persists the
/// resulting due time.
///
/// Delay after the `n`-th failed attempt (Evolution API's formula, which the specification's
/// `WEBHOOK_RETRY_*` settings describe): `d = initial` without backoff, else
/// `d = min(initial × 2^(n-1), max_delay)`; then `d = max(initial, d ± d × jitter × U(-1, 1))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first included; `None` retries for ever (brokers: deliveries wait while a
    /// broker is down).
    pub max_attempts: Option<u32>,
    /// First delay (`WEBHOOK_RETRY_INITIAL_DELAY_SECONDS`).
    pub initial_delay: Duration,
    /// Double the delay after each failure (`WEBHOOK_RETRY_USE_EXPONENTIAL_BACKOFF`).
    pub exponential: bool,
    /// Cap of the doubled delay (`WEBHOOK_RETRY_MAX_DELAY_SECONDS`).
    pub max_delay: Duration,
    /// Random spread, 0 to 1 (`WEBHOOK_RETRY_JITTER_FACTOR`).
    pub jitter_factor: f64,
    /// Protocol statuses that are never retried (`WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES`).
    pub non_retryable_status_codes: Vec<u16>,
}

/// What to do with a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Give up: move it to the dead letters.
    Dead(DeadReason),
}

/// Why a delivery was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// The sink classified the failure as permanent.
    Permanent,
    /// The status is in the policy's non-retryable list.
    NonRetryableStatus(u16),
    /// Every allowed attempt failed.
    Exhausted(u32),
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Permanent => f.write_str("permanent failure"),
            Self::NonRetryableStatus(s) => write!(f, "status {s} is configured as non-retryable"),
            Self::Exhausted(n) => write!(f, "gave up after {n} attempts"),
        }
    }
}

impl Default for RetryPolicy {
    /// The specification's webhook defaults: 10 attempts, 5 s initial, exponential, 300 s cap,
    /// jitter 0.2, statuses 400, 401, 403, 404, 422 not retried.
    fn default() -> Self {
        Self {
            max_attempts: Some(10),
            initial_delay: Duration::from_secs(5),
            exponential: true,
            max_delay: Duration::from_secs(300),
            jitter_factor: 0.2,
            non_retryable_status_codes: vec![400, 401, 403, 404, 422],
        }
    }
}

impl RetryPolicy {
    /// For brokers: retry for ever, 1 s doubling to 60 s, jitter 0.2.
    #[must_use]
    pub fn forever() -> Self {
        Self {
            max_attempts: None,
            initial_delay: Duration::from_secs(1),
            exponential: true,
            max_delay: Duration::from_secs(60),
            jitter_factor: 0.2,
            non_retryable_status_codes: Vec::new(),
        }
    }

    /// The decision after attempt number `attempt` (1 for the first) failed with `error`.
    #[must_use]
    pub fn decide(&self, attempt: u32, error: &SinkError) -> Decision {
        if let Some(status) = error.status()
            && self.non_retryable_status_codes.contains(&status)
        {
            return Decision::Dead(DeadReason::NonRetryableStatus(status));
        }
        let after = match error.retry() {
            Retry::Never => return Decision::Dead(DeadReason::Permanent),
            Retry::Backoff => None,
            Retry::After(d) => Some(d.min(MAX_RETRY_AFTER)),
        };
        if let Some(max) = self.max_attempts
            && attempt >= max
        {
            return Decision::Dead(DeadReason::Exhausted(attempt));
        }
        Decision::RetryAfter(after.unwrap_or_else(|| self.delay(attempt)))
    }

    /// The delay after the `failures`-th failed attempt, jitter included.
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let initial = self.initial_delay.as_secs_f64();
        let nominal = if self.exponential {
            let exp = i32::try_from(failures.saturating_sub(1).min(62)).unwrap_or(62);
            (initial * 2f64.powi(exp)).min(self.max_delay.as_secs_f64())
        } else {
            initial
        };
        let jitter = self.jitter_factor.clamp(0.0, 1.0);
        let spread = nominal * jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64((nominal + spread).max(initial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Channel;
    use crate::error::ErrorKind;

    fn unavailable() -> SinkError {
        SinkError::new(Channel::Webhook, ErrorKind::Unavailable, "down")
    }

    #[test]
    fn default_schedule_matches_the_seed() {
        let p = RetryPolicy::default();
        let ranges = [
            (5.0, 6.0),
            (8.0, 12.0),
            (16.0, 24.0),
            (32.0, 48.0),
            (64.0, 96.0),
            (128.0, 192.0),
            (240.0, 360.0),
            (240.0, 360.0),
            (240.0, 360.0),
        ];
        for _ in 0..200 {
            for (i, (lo, hi)) in ranges.iter().enumerate() {
                let d = p.delay(u32::try_from(i).unwrap() + 1).as_secs_f64();
                assert!((*lo..=*hi).contains(&d), "failure {}: {d}", i + 1);
            }
        }
        assert!(matches!(p.decide(9, &unavailable()), Decision::RetryAfter(_)));
        assert_eq!(
            p.decide(10, &unavailable()),
            Decision::Dead(DeadReason::Exhausted(10))
        );
    }

    #[test]
    fn statuses_and_classes() {
        let p = RetryPolicy::default();
        let e404 = SinkError::new(Channel::Webhook, ErrorKind::Rejected, "nf")
            .with_status(404)
            .with_retry(Retry::Backoff);
        assert_eq!(
            p.decide(1, &e404),
            Decision::Dead(DeadReason::NonRetryableStatus(404))
        );
        let e500 = unavailable().with_status(500);
        assert!(matches!(p.decide(1, &e500), Decision::RetryAfter(_)));
        let never = SinkError::new(Channel::Webhook, ErrorKind::Rejected, "bad");
        assert_eq!(p.decide(1, &never), Decision::Dead(DeadReason::Permanent));
        let after = unavailable().with_retry(Retry::After(Duration::from_secs(42)));
        assert_eq!(p.decide(1, &after), Decision::RetryAfter(Duration::from_secs(42)));
        let fixed = RetryPolicy {
            exponential: false,
            jitter_factor: 0.0,
            ..p
        };
        assert_eq!(fixed.delay(7), Duration::from_secs(5));
        let forever = RetryPolicy::forever();
        assert!(
            matches!(forever.decide(1_000_000, &unavailable()), Decision::RetryAfter(d) if d <= Duration::from_secs(72))
        );
    }
}
