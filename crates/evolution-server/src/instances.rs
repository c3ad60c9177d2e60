//! The server's cache of instances, found by name or by token in O(1) whatever their number.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use evolution_events::InstanceName;
use evolution_outbox::InstanceRecord;
use sha2::{Digest, Sha256};

/// Every instance of the store, indexed by name and by the SHA-256 of its token.
///
/// A token is looked up by its digest — a hash-map probe whose timing depends on the digest, not
/// on how much of a real token the key matches — and then compared with the record's token in
/// constant time.
#[derive(Debug, Default)]
pub(crate) struct InstanceCache {
    index: RwLock<Index>,
}

#[derive(Debug, Default)]
struct Index {
    by_name: HashMap<String, Arc<InstanceRecord>>,
    by_token: HashMap<[u8; 32], Arc<InstanceRecord>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Index {
    fn insert(&mut self, record: Arc<InstanceRecord>) {
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
    /// A cache holding `records`.
    pub(crate) fn new(records: Vec<InstanceRecord>) -> Self {
        let cache = Self::default();
        cache.replace_all(records);
        cache
    }

    /// Replaces every cached instance with `records`.
    pub(crate) fn replace_all(&self, records: Vec<InstanceRecord>) {
        let mut fresh = Index {
            by_name: HashMap::with_capacity(records.len()),
            by_token: HashMap::with_capacity(records.len()),
        };
        for record in records {
            fresh.insert(Arc::new(record));
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// The instance named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<InstanceRecord>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index.by_name.get(name).cloned()
    }

    /// The instance whose token is `key`.
    pub(crate) fn by_token(&self, key: &str) -> Option<Arc<InstanceRecord>> {
        let found = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            index.by_token.get(&digest(key)).cloned()
        }?;
        constant_time_eq(found.token.expose().as_bytes(), key.as_bytes()).then_some(found)
    }

    /// Every instance, by name.
    pub(crate) fn all(&self) -> Vec<Arc<InstanceRecord>> {
        let mut all: Vec<Arc<InstanceRecord>> = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            index.by_name.values().cloned().collect()
        };
        all.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        all
    }

    /// Adds `record`, or replaces the instance of its name.
    pub(crate) fn insert(&self, record: InstanceRecord) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.insert(Arc::new(record));
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

    use evolution_events::{InstanceSettings, Sensitive, Uuid};

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
        let cache = InstanceCache::new(vec![record("b", "TOKEN-B"), record("a", "TOKEN-A")]);
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
