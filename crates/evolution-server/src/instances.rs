//! The server's cache of instances, found by name or by token in O(1) whatever their number.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, PoisonError, RwLock};

use evolution_events::InstanceName;
use evolution_outbox::InstanceRecord;
use evolution_sinks::{CheckedSettings, Router, Routing};
use sha2::{Digest, Sha256};

/// A cached instance: its record, and its settings as the router checked them when they were
/// saved (or loaded), so its events are routed without validating anything again.
#[derive(Debug)]
pub(crate) struct Instance {
    record: InstanceRecord,
    /// `None` when the saved settings no longer pass the router's checks (the global settings
    /// changed since): its events are then validated one by one and refused with the reason.
    checked: Option<Arc<CheckedSettings>>,
}

impl Instance {
    /// `record`, with its settings checked by `router`.
    pub(crate) fn new(record: InstanceRecord, router: &Router) -> Self {
        let checked = match router.check(&record.name, record.settings.clone()) {
            Ok(checked) => Some(Arc::new(checked)),
            Err(e) => {
                tracing::warn!(
                    instance = %record.name, error = %e,
                    "the instance's saved settings no longer pass the checks: its events are refused until \
                     they are set again"
                );
                None
            }
        };
        Self { record, checked }
    }

    /// `record`, whose settings `checked` are.
    pub(crate) fn checked(record: InstanceRecord, checked: CheckedSettings) -> Self {
        Self {
            record,
            checked: Some(Arc::new(checked)),
        }
    }

    /// `record`, keeping what `old` checked (and planned) when the settings did not change.
    fn reloaded(record: InstanceRecord, old: Option<&Self>, router: &Router) -> Self {
        match old {
            Some(old) if old.record.settings == record.settings && old.record.name == record.name => Self {
                record,
                checked: old.checked.clone(),
            },
            _ => Self::new(record, router),
        }
    }

    /// The record.
    pub(crate) fn record(&self) -> &InstanceRecord {
        &self.record
    }

    /// What its events are routed with.
    pub(crate) fn routing(&self) -> Routing<'_> {
        match &self.checked {
            Some(checked) => Routing::Checked(checked),
            None => Routing::Unchecked(Some(&self.record.settings)),
        }
    }
}

impl Deref for Instance {
    type Target = InstanceRecord;

    fn deref(&self) -> &InstanceRecord {
        &self.record
    }
}

/// Every instance of the store, indexed by name and by the SHA-256 of its token.
///
/// A token is looked up by its digest — a hash-map probe whose timing depends on the digest, not
/// on how much of a real token the key matches — and then compared with the record's token in
/// constant time.
#[derive(Debug)]
pub(crate) struct InstanceCache {
    index: RwLock<Index>,
    /// Checks the settings of the records it caches.
    router: Router,
}

#[derive(Debug, Default)]
struct Index {
    by_name: HashMap<String, Arc<Instance>>,
    by_token: HashMap<[u8; 32], Arc<Instance>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Index {
    fn insert(&mut self, record: Arc<Instance>) {
        if let Some(old) = self
            .by_name
            .insert(record.name.as_str().to_owned(), Arc::clone(&record))
        {
            self.forget_token(&old);
        }
        self.by_token.insert(digest(record.token.expose()), record);
    }

    /// Drops `record`'s token entry if it still points at that instance.
    fn forget_token(&mut self, record: &InstanceRecord) {
        let key = digest(record.token.expose());
        if self
            .by_token
            .get(&key)
            .is_some_and(|current| current.name == record.name)
        {
            self.by_token.remove(&key);
        }
    }
}

impl InstanceCache {
    /// A cache holding `records`, their settings checked by `router`.
    pub(crate) fn new(router: Router, records: Vec<InstanceRecord>) -> Self {
        let cache = Self {
            index: RwLock::default(),
            router,
        };
        cache.replace_all(records);
        cache
    }

    /// Replaces every cached instance with `records`.
    pub(crate) fn replace_all(&self, records: Vec<InstanceRecord>) {
        let mut fresh = Index {
            by_name: HashMap::with_capacity(records.len()),
            by_token: HashMap::with_capacity(records.len()),
        };
        {
            // Settings that did not change are not checked again: a replica reloads every
            // instance whenever one changes.
            let old = self.index.read().unwrap_or_else(PoisonError::into_inner);
            for record in records {
                let kept = old.by_name.get(record.name.as_str()).map(AsRef::as_ref);
                fresh.insert(Arc::new(Instance::reloaded(record, kept, &self.router)));
            }
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// The instance named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Instance>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index.by_name.get(name).cloned()
    }

    /// The instance whose token is `key`.
    pub(crate) fn by_token(&self, key: &str) -> Option<Arc<Instance>> {
        let found = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            index.by_token.get(&digest(key)).cloned()
        }?;
        constant_time_eq(found.token.expose().as_bytes(), key.as_bytes()).then_some(found)
    }

    /// Every instance, by name.
    pub(crate) fn all(&self) -> Vec<Arc<Instance>> {
        let mut all: Vec<Arc<Instance>> = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            index.by_name.values().cloned().collect()
        };
        all.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        all
    }

    /// Adds `record`, or replaces the instance of its name, checking its settings.
    pub(crate) fn insert(&self, record: InstanceRecord) {
        self.insert_checked(Instance::new(record, &self.router));
    }

    /// Adds `instance`, or replaces the instance of its name.
    pub(crate) fn insert_checked(&self, instance: Instance) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.insert(Arc::new(instance));
    }

    /// Drops the instance named `name`.
    pub(crate) fn remove(&self, name: &InstanceName) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = index.by_name.remove(name.as_str()) {
            index.forget_token(&old);
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use evolution_events::{GlobalSettings, InstanceSettings, Sensitive, Uuid};

    use super::*;

    fn record(name: &str, token: &str) -> InstanceRecord {
        InstanceRecord {
            id: Uuid::now_v7(),
            name: InstanceName::new(name).unwrap(),
            token: Sensitive::new(token),
            settings: InstanceSettings::default(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn finds_by_name_and_token_and_forgets_what_is_replaced_or_removed() {
        let router = Router::new(GlobalSettings::default()).unwrap();
        let cache = InstanceCache::new(router, vec![record("b", "TOKEN-B"), record("a", "TOKEN-A")]);
        assert_eq!(cache.get("a").unwrap().name.as_str(), "a");
        assert_eq!(cache.by_token("TOKEN-B").unwrap().name.as_str(), "b");
        assert!(cache.by_token("TOKEN-").is_none());
        assert!(cache.by_token("").is_none());
        let names: Vec<String> = cache.all().iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["a", "b"], "listed by name");

        // Replacing an instance with a new token retires the old one.
        cache.insert(record("a", "TOKEN-A2"));
        assert!(cache.by_token("TOKEN-A").is_none());
        assert_eq!(cache.by_token("TOKEN-A2").unwrap().name.as_str(), "a");

        cache.remove(&InstanceName::new("a").unwrap());
        assert!(cache.get("a").is_none());
        assert!(cache.by_token("TOKEN-A2").is_none());
        assert_eq!(cache.by_token("TOKEN-B").unwrap().name.as_str(), "b");

        cache.replace_all(vec![record("c", "TOKEN-C")]);
        assert!(cache.get("b").is_none() && cache.by_token("TOKEN-B").is_none());
        assert_eq!(cache.by_token("TOKEN-C").unwrap().name.as_str(), "c");
    }
}
