//! Configuration from variables: the strict variable map ([`Vars`]), the declaration of a
//! variable and its default ([`Var`]), how a channel asks to be dispatched ([`DispatchHints`]),
//! and the trait through which a channel crate reads its own variables ([`SinkConfig`]).
//!
//! The values come from wherever the application keeps them (the server: defaults ← TOML file ←
//! environment); this module only interprets a map of strings, so it does no I/O. Each channel
//! crate declares and reads its variables in its `config.rs`; the facade (`evolution-sinks`)
//! only registers the channel crates, and the server lists the union of their variables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::Channel;
use crate::error::SinkError;
use crate::kind::EventKind;
use crate::retry::RetryPolicy;
use crate::settings::GlobalSettings;
use crate::sink::EventSink;

/// A variable a component reads, with its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var {
    /// The name (`KAFKA_BROKERS`).
    pub name: &'static str,
    /// The value used when none is given; `None`: unset (absent from the effective values).
    pub default: Option<&'static str>,
}

impl Var {
    /// A variable with a default value (`""` counts as a value: the variable is then always set).
    #[must_use]
    pub const fn new(name: &'static str, default: &'static str) -> Self {
        Self {
            name,
            default: Some(default),
        }
    }

    /// A variable without a default.
    #[must_use]
    pub const fn unset(name: &'static str) -> Self {
        Self { name, default: None }
    }
}

/// Variables by name (`WEBHOOK_GLOBAL_ENABLED` → `"true"`), and the problems found reading them.
///
/// Reading is strict and collects every problem with the variable's name instead of stopping at
/// the first: a reader records what is wrong with [`Vars::error`] (the typed readers do it
/// themselves) and goes on with a fallback value; the caller refuses to start when
/// [`Vars::errors`] is not empty.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
    errors: Vec<String>,
}

impl Vars {
    /// Wraps the effective values (defaults already applied).
    #[must_use]
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self {
            values,
            errors: Vec::new(),
        }
    }

    /// The defaults of `declared` (the variables that have one), overridden by `values`.
    #[must_use]
    pub fn with_defaults<'a, K: Into<String>, V: Into<String>>(
        declared: impl IntoIterator<Item = &'a Var>,
        values: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut all: BTreeMap<String, String> = declared
            .into_iter()
            .filter_map(|var| Some((var.name.to_owned(), var.default?.to_owned())))
            .collect();
        all.extend(values.into_iter().map(|(k, v)| (k.into(), v.into())));
        Self::new(all)
    }

    /// Every value.
    #[must_use]
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Records a problem.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    /// The problems found so far.
    #[must_use]
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The raw value, `""` when unset.
    #[must_use]
    pub fn raw(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    /// The trimmed value, `None` when unset or blank.
    #[must_use]
    pub fn string(&self, name: &str) -> Option<String> {
        let v = self.raw(name).trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// A boolean: `true/false`, `1/0`, `yes/no` in any case; blank is false; anything else is an
    /// error naming the variable.
    pub fn bool(&mut self, name: &str) -> bool {
        match self.raw(name).trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" | "" => false,
            _ => {
                let raw = self.raw(name).to_owned();
                self.error(format!(
                    "{name}=`{raw}` is not a boolean: use true/false, 1/0 or yes/no (any case)"
                ));
                false
            }
        }
    }

    /// Whether `channel` is switched on: its [`Channel::switch_var`] as a [boolean](Vars::bool);
    /// `false` for a channel without a switch.
    pub fn switch(&mut self, channel: Channel) -> bool {
        channel.switch_var().is_some_and(|name| self.bool(name))
    }

    /// A number of type `T`; `what` describes it in the error ("a port number").
    pub fn number<T: FromStr + Default>(&mut self, name: &str, what: &str) -> T {
        let raw = self.raw(name).trim().to_owned();
        if let Ok(v) = raw.parse() {
            v
        } else {
            self.error(format!("{name}=`{raw}` is not {what}"));
            T::default()
        }
    }

    /// A whole number greater than 0.
    pub fn positive(&mut self, name: &str) -> u64 {
        let v: u64 = self.number(name, "a whole number");
        if v == 0 {
            self.error(format!("{name} must be greater than 0"));
        }
        v
    }

    /// Whether any per-event toggle `<prefix><KEY>` is given (true or not).
    #[must_use]
    pub fn has_events(&self, prefix: &str) -> bool {
        self.values.keys().any(|k| {
            k.strip_prefix(prefix)
                .is_some_and(|key| EventKind::parse(key).is_ok())
        })
    }

    /// The per-event toggles `<prefix><KEY>=true` (any spelling of the event, `GROUP_UPDATE` too).
    pub fn events(&mut self, prefix: &str) -> BTreeSet<EventKind> {
        let names: Vec<(String, EventKind)> = self
            .values
            .keys()
            .filter_map(|k| {
                let kind = EventKind::parse(k.strip_prefix(prefix)?).ok()?;
                Some((k.clone(), kind))
            })
            .collect();
        names
            .into_iter()
            .filter(|(name, _)| self.bool(name))
            .map(|(_, kind)| kind)
            .collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Vars {
    /// The given values, without defaults.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// How a channel asks to be dispatched, read with its variables: the facade turns the hints into
/// the dispatcher's per-channel configuration (`evolution_sinks::ChannelConfig::from_hints`). A
/// `None` keeps the dispatcher's default for the channel.
///
/// Channel crates cannot depend on the facade (they depend on this crate and their client
/// library only), hence this small type of their own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DispatchHints {
    /// When to retry and when to give up.
    pub retry: Option<RetryPolicy>,
    /// Concurrent batches in flight for the channel.
    pub workers: Option<usize>,
    /// Largest batch handed to the sink (clamped to its `max_batch_size`).
    pub batch_size: Option<usize>,
    /// A `send` that takes longer fails with `Timeout` (and is retried): a safety net above the
    /// sink's own timeouts.
    pub send_timeout: Option<Duration>,
    /// Keep per-(instance, destination) order.
    pub ordered: Option<bool>,
}

/// The configuration of one channel's sink, read from variables: what a channel crate implements
/// in its `config.rs` so that the facade's registry can read, plan and build it without knowing
/// anything about the channel.
///
/// The channel's switch ([`Channel::switch_var`]) is declared by this crate for every built-in
/// channel, so that a build without the channel still recognizes it (and refuses it when on).
pub trait SinkConfig: Clone + fmt::Debug + Send + Sync + Sized + 'static {
    /// The channel.
    const CHANNEL: Channel;

    /// Every variable the channel reads, with its default (its switch excepted).
    const VARS: &'static [Var];

    /// The prefixes of the channel's per-event toggles (`KAFKA_EVENTS_` for `KAFKA_EVENTS_<KEY>`;
    /// SQS has Evolution API's `SQS_GLOBAL_` besides `SQS_EVENTS_`), if it has them.
    const EVENT_TOGGLES: &'static [&'static str] = &[];

    /// Reads the channel's part of the global (routing) settings: its switch, its global
    /// deliveries and the names it delivers to. Problems are recorded in `vars`.
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings);

    /// Reads the sink's settings and its dispatch hints; `None` when the channel is switched off
    /// ([`GlobalSettings::enabled`]) or its variables cannot make a sink (the problems are recorded
    /// in `vars`).
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)>;

    /// Builds the sink. No connection is made here: sinks connect on first use and reconnect by
    /// themselves, so a backend that is down at startup only delays its deliveries.
    ///
    /// # Errors
    /// The sink's configuration error (`ConfigInvalid`).
    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_values() {
        let mut v: Vars = [
            ("A", "YES"),
            ("B", "TRUE1"),
            ("N", "12x"),
            ("P_EVENTS_CALL", "1"),
            ("P_EVENTS_GROUP_UPDATE", "true"),
            ("P_EVENTS_CHATS_SET", "no"),
        ]
        .into_iter()
        .collect();
        assert!(v.bool("A"));
        assert!(!v.bool("B"));
        assert_eq!(v.number::<u16>("N", "a port"), 0);
        assert_eq!(
            v.events("P_EVENTS_"),
            BTreeSet::from([EventKind::Call, EventKind::GroupsUpdate])
        );
        assert_eq!(v.errors().len(), 2, "{:?}", v.errors());
        assert!(v.errors()[0].contains("B=`TRUE1`"));
    }

    #[test]
    fn defaults_then_values() {
        const DECLARED: &[Var] = &[Var::new("A", "1"), Var::new("B", ""), Var::unset("C")];
        let mut v = Vars::with_defaults(DECLARED, [("A", "2")]);
        assert_eq!(v.raw("A"), "2");
        assert!(v.values().contains_key("B"), "an empty default is a value");
        assert!(!v.values().contains_key("C"));
        assert!(!v.switch(Channel::Webhook), "the webhook channel has no switch");
        let mut v: Vars = [("KAFKA_ENABLED", "yes")].into_iter().collect();
        assert!(v.switch(Channel::Kafka));
        assert!(!v.switch(Channel::Nats));
        assert!(v.errors().is_empty());
    }
}
