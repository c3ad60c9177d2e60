//! [`EventSelection`]: which events a channel delivers.

use serde::Serialize;

use crate::kind::EventKind;

/// Which events a channel delivers. An empty list means every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EventSelection(Vec<EventKind>);

impl EventSelection {
    /// Every event.
    #[must_use]
    pub fn all() -> Self {
        Self(Vec::new())
    }

    /// Only these events (duplicates removed, order kept). An empty iterator means every event.
    #[must_use]
    pub fn only(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        let mut list = Vec::new();
        for kind in kinds {
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        Self(list)
    }

    /// Whether `kind` is selected.
    #[must_use]
    pub fn matches(&self, kind: EventKind) -> bool {
        self.0.is_empty() || self.0.contains(&kind)
    }

    /// The listed kinds (empty = every event).
    #[must_use]
    pub fn kinds(&self) -> &[EventKind] {
        &self.0
    }

    /// The selected kinds, expanded.
    pub fn expanded(&self) -> impl Iterator<Item = EventKind> + '_ {
        EventKind::all().filter(|k| self.matches(*k))
    }
}
