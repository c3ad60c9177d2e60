//! Strict parsing of the server's variables (environment or configuration file), collecting every
//! problem with the variable's name instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use evolution_events::EventKind;

/// Variables by name (`WEBHOOK_GLOBAL_ENABLED` → `"true"`), and the problems found reading them.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_values() {
        let mut v = Vars::new(BTreeMap::from([
            ("A".to_owned(), "YES".to_owned()),
            ("B".to_owned(), "TRUE1".to_owned()),
            ("N".to_owned(), "12x".to_owned()),
            ("P_EVENTS_CALL".to_owned(), "1".to_owned()),
            ("P_EVENTS_GROUP_UPDATE".to_owned(), "true".to_owned()),
            ("P_EVENTS_CHATS_SET".to_owned(), "no".to_owned()),
        ]));
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
}
