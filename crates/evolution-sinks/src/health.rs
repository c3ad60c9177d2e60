//! Endpoint health: per destination of an instance, the last success, the failures since, and
//! whether the destination was disabled because every attempt failed for the channel's window
//! ([`ChannelConfig::disable_after`](crate::ChannelConfig::disable_after); Svix's five days).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use evolution_events::{Channel, Delivery, DeliveryId, Destination, InstanceName, Scope};

/// The most ids of deliveries held back while a destination is disabled that are remembered for
/// the redrive when it is enabled again (the rest stay dead letters, redriven by hand).
const MAX_HELD: usize = 100_000;

/// Where a destination stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Its last attempt succeeded (or none was made yet).
    Healthy,
    /// Its last attempts failed, for less than the window.
    Failing,
    /// Every attempt failed for the whole window: its deliveries are held (dead letters, redriven
    /// when it is enabled again).
    Disabled,
}

impl HealthState {
    /// `healthy`, `failing` or `disabled`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Disabled => "disabled",
        }
    }
}

/// One destination's health, as the delivery log shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationHealth {
    /// The channel.
    pub channel: Channel,
    /// The instance whose events go there.
    pub instance: InstanceName,
    /// Instance or global settings.
    pub scope: Scope,
    /// The destination's label (no secrets).
    pub destination: String,
    /// Where it stands.
    pub state: HealthState,
    /// When an attempt last succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// When an attempt last failed.
    pub last_failure: Option<DateTime<Utc>>,
    /// The first failure since the last success.
    pub failing_since: Option<DateTime<Utc>>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// The last failure's error (no secrets).
    pub last_error: Option<String>,
    /// When it was disabled.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A destination that was just disabled, for [`DispatcherBuilder::on_disabled`](crate::DispatcherBuilder::on_disabled).
#[derive(Clone, Debug)]
pub struct DisabledNotice {
    /// Its health when it was disabled.
    pub health: DestinationHealth,
    /// The destination.
    pub destination: Arc<Destination>,
}

/// Called once for each destination disabled, from a worker: keep it short.
pub type DisabledHook = Arc<dyn Fn(DisabledNotice) + Send + Sync>;

#[derive(Debug)]
struct Entry {
    health: DestinationHealth,
    /// Deliveries held back while disabled, redriven when it is enabled again.
    held: Vec<DeliveryId>,
}

/// The health of one channel's destinations.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// By instance and destination (the ordering key's text).
    entries: Mutex<HashMap<Arc<str>, Entry>>,
    /// How many are disabled (skips [`Tracker::hold`] when none is).
    disabled: AtomicUsize,
}

fn key(delivery: &Delivery) -> Arc<str> {
    match &delivery.ordering_key {
        Some(key) => Arc::clone(key),
        None => Arc::from(format!(
            "{}\u{1f}{}",
            delivery.envelope.instance(),
            delivery.destination.label()
        )),
    }
}

impl Tracker {
    /// Records the outcome of each attempt (`None` for a success). Returns a notice for each
    /// destination this disables: every attempt failed for at least `window`, and it comes from
    /// an instance's settings (a global destination is reported, never disabled).
    pub(crate) fn record<'a>(
        &self,
        attempts: impl IntoIterator<Item = (&'a Delivery, Option<&'a str>)>,
        window: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Vec<DisabledNotice> {
        let window = window.and_then(|w| chrono::Duration::from_std(w).ok());
        let mut notices = Vec::new();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for (delivery, error) in attempts {
            let entry = entries.entry(key(delivery)).or_insert_with(|| Entry {
                health: DestinationHealth {
                    channel: delivery.channel,
                    instance: delivery.envelope.instance().clone(),
                    scope: delivery.scope,
                    destination: delivery.destination.label(),
                    state: HealthState::Healthy,
                    last_success: None,
                    last_failure: None,
                    failing_since: None,
                    consecutive_failures: 0,
                    last_error: None,
                    disabled_at: None,
                },
                held: Vec::new(),
            });
            let h = &mut entry.health;
            let Some(error) = error else {
                h.last_success = Some(now);
                h.failing_since = None;
                h.consecutive_failures = 0;
                if h.state == HealthState::Failing {
                    h.state = HealthState::Healthy;
                }
                continue;
            };
            h.last_failure = Some(now);
            h.last_error = Some(error.to_owned());
            h.consecutive_failures += 1;
            let since = *h.failing_since.get_or_insert(now);
            if h.state == HealthState::Disabled {
                continue;
            }
            h.state = HealthState::Failing;
            let Some(window) = window else {
                continue;
            };
            if delivery.scope != Scope::Instance || now - since < window {
                continue;
            }
            h.state = HealthState::Disabled;
            h.disabled_at = Some(now);
            self.disabled.fetch_add(1, Ordering::AcqRel);
            notices.push(DisabledNotice {
                health: h.clone(),
                destination: Arc::clone(&delivery.destination),
            });
        }
        notices
    }

    /// Whether `delivery`'s destination is disabled; if so its id is remembered for the redrive.
    pub(crate) fn hold(&self, delivery: &Delivery) -> bool {
        if self.disabled.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(&*key(delivery)) {
            Some(entry) if entry.health.state == HealthState::Disabled => {
                if entry.held.len() < MAX_HELD {
                    entry.held.push(delivery.id);
                }
                true
            }
            _ => false,
        }
    }

    /// Enables the disabled destinations of `instance` labelled `labels` again; the ids of the
    /// deliveries they held back meanwhile.
    pub(crate) fn enable(&self, instance: &InstanceName, labels: &[String]) -> Vec<DeliveryId> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held = Vec::new();
        for entry in entries.values_mut() {
            if entry.health.instance == *instance
                && entry.health.state == HealthState::Disabled
                && labels.contains(&entry.health.destination)
            {
                entry.health.state = HealthState::Healthy;
                entry.health.failing_since = None;
                entry.health.consecutive_failures = 0;
                entry.health.disabled_at = None;
                held.append(&mut entry.held);
                self.disabled.fetch_sub(1, Ordering::AcqRel);
            }
        }
        held
    }

    /// The health of `instance`'s destinations (every instance's when `None`).
    pub(crate) fn list(&self, instance: Option<&InstanceName>) -> Vec<DestinationHealth> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .values()
            .filter(|e| instance.is_none_or(|i| e.health.instance == *i))
            .map(|e| e.health.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: DeliveryId, scope: Scope) -> Delivery {
        let url = match scope {
            Scope::Instance => "http://h/hook",
            Scope::Global => "http://h/global",
        };
        crate::webhook_delivery(id, scope, url, None)
    }

    #[test]
    fn every_attempt_failing_for_the_window_disables_an_instance_destination_only() {
        let t = Tracker::default();
        let start = Utc::now();
        let window = Some(Duration::from_secs(10));
        let at = |s: i64| start + chrono::Duration::seconds(s);
        let (own, global) = (delivery(1, Scope::Instance), delivery(2, Scope::Global));
        assert!(t.record([(&own, Some("500"))], window, at(0)).is_empty());
        assert!(
            t.record([(&own, None)], window, at(5)).is_empty(),
            "a success resets"
        );
        assert!(t.record([(&own, Some("500"))], window, at(6)).is_empty());
        assert!(t.record([(&global, Some("500"))], window, at(6)).is_empty());
        assert!(
            t.record([(&own, Some("500"))], window, at(15)).is_empty(),
            "9 s of failures"
        );
        let notices = t.record([(&own, Some("500")), (&global, Some("500"))], window, at(16));
        assert_eq!(notices.len(), 1, "only the instance's destination is disabled");
        let h = &notices[0].health;
        assert_eq!(
            (h.state, h.consecutive_failures, h.failing_since, h.last_success),
            (HealthState::Disabled, 3, Some(at(6)), Some(at(5)))
        );
        assert!(t.hold(&delivery(7, Scope::Instance)));
        assert!(!t.hold(&global));
        assert!(
            t.enable(&InstanceName::new("a").unwrap(), &["http://h/other".to_owned()])
                .is_empty()
        );
        assert_eq!(
            t.enable(&InstanceName::new("a").unwrap(), &["http://h/hook".to_owned()]),
            [7]
        );
        assert!(!t.hold(&delivery(8, Scope::Instance)), "enabled again");
    }
}
