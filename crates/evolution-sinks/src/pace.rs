//! Pacing per destination: a destination's rate limit (a webhook's `rateLimit`) and a receiver that
//! asked to slow down (a rate-limited answer with a retry delay, HTTP 429 + `Retry-After`) hold back
//! that destination's deliveries only. A delivery that may not go now is postponed in the outbox
//! (no attempt counted) to the slot reserved for it, so the worker moves on to other destinations
//! instead of waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use evolution_events::{Delivery, DeliveryId};
use tokio::time::Instant;

/// A slot this close ahead counts as now (the outbox wakes workers at millisecond precision).
const EARLY: Duration = Duration::from_millis(5);
/// Reservations whose slot is this far behind are forgotten (their delivery was purged, or went
/// out through another replica).
const FORGET: Duration = Duration::from_secs(300);
/// Past this many reservations, forgotten ones are swept.
const SWEEP_AT: usize = 10_000;

/// Whether a delivery may go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Send it.
    Go,
    /// Postpone it this long (its destination's next free slot, or the end of a pause).
    Wait(Duration),
}

/// The pacing state of one channel's destinations.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    state: Mutex<State>,
    /// Some destination is paused (skips the lock and the label for everyone else).
    any_paused: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Per rate-limited destination of an instance (`instance \u{1f} label`): its next free slot.
    next_free: HashMap<String, Instant>,
    /// The slots of postponed deliveries: when claimed again, each goes at its own slot.
    reserved: HashMap<DeliveryId, Instant>,
    /// Per destination (its label): paused until then, because its receiver asked.
    paused: HashMap<String, Instant>,
}

impl Pacer {
    /// Whether `delivery` may go at `now`; if not, how long to postpone it. A rate-limited
    /// destination takes one delivery per `1 / rate` seconds (no bursts), each delivery keeping
    /// the slot reserved for it when it was postponed.
    pub(crate) fn admit(&self, delivery: &Delivery, now: Instant) -> Pace {
        let rate = delivery.destination.rate_limit().filter(|r| *r > 0);
        let paused = self.any_paused.load(Ordering::Acquire);
        if rate.is_none() && !paused {
            return Pace::Go;
        }
        let label = delivery.destination.label();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if paused {
            state.paused.retain(|_, until| *until > now);
            if state.paused.is_empty() {
                self.any_paused.store(false, Ordering::Release);
            }
            if let Some(until) = state.paused.get(&label) {
                return Pace::Wait(*until - now);
            }
        }
        let Some(rate) = rate else {
            return Pace::Go;
        };
        if let Some(slot) = state.reserved.remove(&delivery.id) {
            if slot <= now + EARLY {
                return Pace::Go;
            }
            // Claimed before its slot (released, or a restart of the worker): it keeps it.
            state.reserved.insert(delivery.id, slot);
            return Pace::Wait(slot - now);
        }
        let interval = Duration::from_secs(1) / rate;
        let key = format!("{}\u{1f}{label}", delivery.envelope.instance());
        let next = state.next_free.get(&key).copied().unwrap_or(now);
        let slot = next.max(now);
        state.next_free.insert(key, slot + interval);
        if slot <= now + EARLY {
            return Pace::Go;
        }
        if state.reserved.len() >= SWEEP_AT {
            state.reserved.retain(|_, s| *s + FORGET > now);
            state.next_free.retain(|_, s| *s + FORGET > now);
        }
        state.reserved.insert(delivery.id, slot);
        Pace::Wait(slot - now)
    }

    /// The receiver of `delivery`'s destination asked to wait `delay` (a rate-limited answer with
    /// a retry delay): its deliveries are postponed until then.
    pub(crate) fn slow_down(&self, delivery: &Delivery, delay: Duration, now: Instant) {
        let label = delivery.destination.label();
        let until = now + delay;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = state.paused.entry(label).or_insert(until);
        *entry = (*entry).max(until);
        self.any_paused.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use evolution_events::Scope;

    use super::*;

    fn delivery(id: DeliveryId, url: &str, rate: Option<u32>) -> Delivery {
        crate::webhook_delivery(id, Scope::Instance, url, rate)
    }

    #[test]
    fn a_rate_spaces_deliveries_out_and_keeps_each_ones_slot() {
        let pacer = Pacer::default();
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(pacer.admit(&delivery(1, "http://h/a", Some(10)), now), Pace::Go);
        assert_eq!(
            pacer.admit(&delivery(2, "http://h/a", Some(10)), now),
            Pace::Wait(ms(100))
        );
        assert_eq!(
            pacer.admit(&delivery(3, "http://h/a", Some(10)), now),
            Pace::Wait(ms(200))
        );
        // Another destination is not held back.
        assert_eq!(pacer.admit(&delivery(4, "http://h/b", None), now), Pace::Go);
        assert_eq!(pacer.admit(&delivery(5, "http://h/c", Some(10)), now), Pace::Go);
        // Claimed again at their slots, each goes; claimed early, it keeps its slot.
        assert_eq!(
            pacer.admit(&delivery(3, "http://h/a", Some(10)), now + ms(50)),
            Pace::Wait(ms(150))
        );
        assert_eq!(
            pacer.admit(&delivery(2, "http://h/a", Some(10)), now + ms(100)),
            Pace::Go
        );
        assert_eq!(
            pacer.admit(&delivery(3, "http://h/a", Some(10)), now + ms(201)),
            Pace::Go
        );
        assert_eq!(
            pacer.admit(&delivery(6, "http://h/a", Some(10)), now + ms(201)),
            Pace::Wait(ms(99))
        );
    }

    #[test]
    fn a_receiver_that_asks_to_slow_down_pauses_its_destination_only() {
        let pacer = Pacer::default();
        let now = Instant::now();
        let s = Duration::from_secs;
        pacer.slow_down(&delivery(1, "http://h/a", None), s(2), now);
        assert_eq!(
            pacer.admit(&delivery(2, "http://h/a", None), now + s(1)),
            Pace::Wait(s(1))
        );
        assert_eq!(
            pacer.admit(&delivery(3, "http://h/b", None), now + s(1)),
            Pace::Go
        );
        assert_eq!(
            pacer.admit(&delivery(2, "http://h/a", None), now + s(2)),
            Pace::Go
        );
        assert!(!pacer.any_paused.load(Ordering::Acquire), "the pause is over");
    }
}
