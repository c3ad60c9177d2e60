//! A sink's connection to its broker, shared by the sinks that hold one ([`Reconnect`]), and the
//! pacing of its connection attempts ([`ConnectBackoff`]).
//!
//! A sink that cannot connect fails the send (the dispatcher retries the deliveries on its own
//! schedule) and must not hammer the broker with a new connection attempt for every batch:
//! after `n` consecutive failed attempts the next one waits [`backoff`]`(min, max, n)`.

use std::fmt;
use std::future::Future;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::lock::Mutex;

use crate::channel::Channel;
use crate::error::{ErrorKind, Result, SinkError};

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

/// How a [`Reconnect`] finds the connection it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Use it.
    Usable,
    /// Its client reconnects by itself: fail fast with this reason (no secrets), without a new
    /// connection.
    Recovering(String),
    /// Lost for good: [`retire`](Link::retire) it and connect again.
    Lost,
}

/// A connection that a [`Reconnect`] holds.
pub trait Link: Send + Sync + 'static {
    /// Whether it can be used now.
    fn health(&self) -> Health;

    /// Releases it once it is [`Lost`](Health::Lost), without waiting (spawn anything slow). The
    /// default drops it.
    fn retire(self: Arc<Self>) {}
}

/// A sink's connection to its broker: made on first use, made again once lost — no sooner than
/// the capped exponential backoff after failed attempts allows — and closed for good by
/// [`close`](Self::close). One attempt at a time: callers wait for the attempt in progress.
///
/// Errors are of the sink's channel: `Closed` once closed; `Unavailable` while the backoff runs
/// ("not connected to {target}: next connection attempt in N ms (last error: …)") or the client
/// recovers; the connect attempt's own error otherwise.
pub struct Reconnect<L> {
    channel: Channel,
    target: String,
    min: Duration,
    max: Duration,
    closed: AtomicBool,
    state: Mutex<State<L>>,
}

struct State<L> {
    link: Option<Arc<L>>,
    attempts: ConnectBackoff<Instant>,
}

impl<L> fmt::Debug for Reconnect<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect")
            .field("channel", &self.channel)
            .field("target", &self.target)
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl<L: Link> Reconnect<L> {
    /// Not connected yet. `target` names the broker in messages and logs (no secrets); after `n`
    /// failed attempts the next waits [`backoff`]`(min, max, n)`.
    ///
    /// # Errors
    /// `ConfigInvalid` when `min` is zero or longer than `max`.
    pub fn new(channel: Channel, target: impl Into<String>, min: Duration, max: Duration) -> Result<Self> {
        let invalid = |message: &'static str| SinkError::new(channel, ErrorKind::ConfigInvalid, message);
        if min.is_zero() {
            return Err(invalid(
                "the reconnect backoff (reconnect_min) must be longer than zero",
            ));
        }
        if min > max {
            return Err(invalid("reconnect_min must not exceed reconnect_max"));
        }
        Ok(Self {
            channel,
            target: target.into(),
            min,
            max,
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                link: None,
                attempts: ConnectBackoff::default(),
            }),
        })
    }

    /// The broker, as messages name it.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether [`close`](Self::close) was called.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `Ok` until closed.
    ///
    /// # Errors
    /// `Closed` ("the {channel} sink is shut down") once closed.
    pub fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(SinkError::new(
                self.channel,
                ErrorKind::Closed,
                format!("the {} sink is shut down", self.channel),
            ));
        }
        Ok(())
    }

    /// The connection: the current one if it is usable, else a new one from `connect` when the
    /// backoff allows an attempt now (a lost one is retired first).
    ///
    /// # Errors
    /// `Closed`, `Unavailable` (backoff running, client recovering) or `connect`'s error.
    pub async fn link<F, Fut>(&self, connect: F) -> Result<Arc<L>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<L>>,
    {
        self.check_open()?;
        let mut state = self.state.lock().await;
        if let Some(link) = &state.link {
            match link.health() {
                Health::Usable => return Ok(Arc::clone(link)),
                Health::Recovering(why) => {
                    return Err(SinkError::new(self.channel, ErrorKind::Unavailable, why));
                }
                Health::Lost => {
                    tracing::warn!(sink = %self.channel, target = %self.target, "the connection was lost; reconnecting");
                    if let Some(lost) = state.link.take() {
                        lost.retire();
                    }
                }
            }
        }
        if let Some(why) = state.attempts.too_early(Instant::now(), &self.target) {
            return Err(SinkError::new(self.channel, ErrorKind::Unavailable, why));
        }
        match connect().await {
            Ok(link) => {
                let failed = state.attempts.succeeded();
                if failed > 0 {
                    tracing::info!(sink = %self.channel, target = %self.target, attempts = failed + 1, "reconnected");
                }
                let link = Arc::new(link);
                state.link = Some(Arc::clone(&link));
                Ok(link)
            }
            Err(e) => {
                let (pause, attempt) = state
                    .attempts
                    .failed(Instant::now(), self.min, self.max, e.message());
                tracing::warn!(
                    sink = %self.channel, target = %self.target, attempt, next_in = ?pause, error = %e,
                    "cannot connect"
                );
                Err(e)
            }
        }
    }

    /// The current connection, if there is one, without connecting.
    pub async fn current(&self) -> Option<Arc<L>> {
        self.state.lock().await.link.clone()
    }

    /// Closes for good: later calls fail with `Closed`. Returns the connection to close, if any
    /// (`None` when there is none, or on a second call). Idempotent.
    pub async fn close(&self) -> Option<Arc<L>> {
        self.closed.store(true, Ordering::Release);
        self.state.lock().await.link.take()
    }
}

#[cfg(test)]
mod tests {
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

    /// A link whose health the test sets.
    #[derive(Debug)]
    struct Fake {
        health: std::sync::Mutex<Health>,
        retired: Arc<AtomicBool>,
    }

    impl Link for Fake {
        fn health(&self) -> Health {
            self.health.lock().unwrap().clone()
        }
        fn retire(self: Arc<Self>) {
            self.retired.store(true, Ordering::Release);
        }
    }

    fn fake(retired: &Arc<AtomicBool>) -> Fake {
        Fake {
            health: std::sync::Mutex::new(Health::Usable),
            retired: Arc::clone(retired),
        }
    }

    #[tokio::test]
    async fn connects_once_waits_after_a_failure_and_replaces_a_lost_link() {
        let retired = Arc::new(AtomicBool::new(false));
        let r = Reconnect::new(
            Channel::Nats,
            "nats://h:4222",
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
        .unwrap();
        let e = r
            .link(|| async { Err(SinkError::new(Channel::Nats, ErrorKind::Unavailable, "refused")) })
            .await
            .unwrap_err();
        assert_eq!(e.message(), "refused");
        let e = r.link(|| async { Ok(fake(&retired)) }).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(
            e.message()
                .starts_with("not connected to nats://h:4222: next connection attempt in"),
            "{e}"
        );

        let r = Reconnect::new(
            Channel::Rabbitmq,
            "amqp://h",
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        let first = r.link(|| async { Ok(fake(&retired)) }).await.unwrap();
        let again = r
            .link(|| async { panic!("connected while usable") })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        *first.health.lock().unwrap() = Health::Recovering("reconnecting".into());
        let e = r
            .link(|| async { panic!("connected while recovering") })
            .await
            .unwrap_err();
        assert_eq!((e.kind(), e.message()), (ErrorKind::Unavailable, "reconnecting"));
        *first.health.lock().unwrap() = Health::Lost;
        let new = r.link(|| async { Ok(fake(&retired)) }).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &new) && retired.load(Ordering::Acquire));
        assert!(r.current().await.is_some_and(|l| Arc::ptr_eq(&l, &new)));

        assert!(r.close().await.is_some());
        assert!(r.close().await.is_none(), "idempotent");
        let e = r.link(|| async { Ok(fake(&retired)) }).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Closed, "the rabbitmq sink is shut down")
        );
    }

    #[test]
    fn the_backoff_bounds_are_checked() {
        for (min, max) in [(0, 1), (2, 1)] {
            let e = Reconnect::<Fake>::new(
                Channel::Nats,
                "t",
                Duration::from_secs(min),
                Duration::from_secs(max),
            )
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        }
    }
}
