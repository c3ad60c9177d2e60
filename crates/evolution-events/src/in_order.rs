//! Keeping a batch's order per ordering key inside a sink: after an item of a key fails and will
//! be sent again, the later items of that key are not sent (they would overtake it).
//!
//! One implementation for every ordered sink, as OpenDAL's `BatchDeleter` turns a single delete
//! into a batch: [`group_by_key`] splits a batch into its keys, [`send_in_order`] sends the units of
//! one key — single items or requests of several — one after the other, and [`HoldBack`] tracks
//! the keys that failed in a batch walked item by item (Kafka queues the records of many keys in
//! batch order).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;

use crate::channel::Channel;
use crate::error::{ErrorKind, Result, SinkError};

/// The ordering keys of one batch that a failure holds back.
///
/// Once an item of a key fails retryably — the dispatcher will send it again — the later items of
/// that key are not sent and are reported failed with the error [`check`](Self::check) returns:
/// retryable `Unavailable`, "not sent: an earlier event for this {what} failed". The dispatcher
/// then puts them back behind the failed one (ADR 0002). A permanent failure holds nothing back:
/// the dispatcher dead-letters that item, and nothing of its key waits for it.
#[derive(Debug)]
pub struct HoldBack<K> {
    channel: Channel,
    what: &'static str,
    held: HashSet<K>,
}

impl<K: Eq + Hash> HoldBack<K> {
    /// Nothing held back yet. `what` names a key in the "not sent" message (`"queue"`, `"topic
    /// and key"`, …); errors are of `channel`.
    #[must_use]
    pub fn new(channel: Channel, what: &'static str) -> Self {
        Self {
            channel,
            what,
            held: HashSet::new(),
        }
    }

    /// Whether an item of `key` may be sent now.
    ///
    /// # Errors
    /// The "not sent" error to report for the item when an earlier item of `key` failed
    /// retryably.
    pub fn check(&self, key: &K) -> Result<()> {
        if self.held.contains(key) {
            Err(SinkError::new(
                self.channel,
                ErrorKind::Unavailable,
                format!("not sent: an earlier event for this {} failed", self.what),
            ))
        } else {
            Ok(())
        }
    }

    /// Records that an item of `key` failed with `error`: a retryable failure holds back the
    /// rest of `key`.
    pub fn failed(&mut self, key: K, error: &SinkError) {
        if error.is_retryable() {
            self.held.insert(key);
        }
    }
}

/// Groups `items` by key: keys in the order they first appear, each with its items in the order
/// given (batch order). A sink sends the groups concurrently, each with [`send_in_order`].
pub fn group_by_key<K: Eq + Hash + Clone, T>(items: impl IntoIterator<Item = (K, T)>) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    let mut position: HashMap<K, usize> = HashMap::new();
    for (key, item) in items {
        let at = *position.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(item);
    }
    groups
}

/// Sends the units of one ordering key one after the other with `send`, which returns the items
/// of its unit that failed (by index in the batch). After a unit with a retryable failure, the
/// items of the later units are not sent and are reported "not sent" (see [`HoldBack`]). `units`
/// are single items (`items.chunks(1)`) or requests of several, in batch order; `index` gives an
/// item's index in the batch.
///
/// Returns every failed item of the key.
pub async fn send_in_order<'a, T: 'a, F, Fut>(
    channel: Channel,
    what: &'static str,
    units: impl IntoIterator<Item = &'a [T]>,
    index: impl Fn(&T) -> usize,
    mut send: F,
) -> Vec<(usize, SinkError)>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: Future<Output = Vec<(usize, SinkError)>>,
{
    let mut hold = HoldBack::new(channel, what);
    let mut failures = Vec::new();
    for unit in units {
        if let Err(not_sent) = hold.check(&()) {
            failures.extend(unit.iter().map(|item| (index(item), not_sent.duplicate())));
            continue;
        }
        let failed = send(unit).await;
        for (_, error) in &failed {
            hold.failed((), error);
        }
        failures.extend(failed);
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Retry;

    fn err(kind: ErrorKind) -> SinkError {
        SinkError::new(Channel::Sqs, kind, "boom")
    }

    #[test]
    fn a_retryable_failure_holds_back_its_key_only() {
        let mut hold = HoldBack::new(Channel::Kafka, "topic and key");
        hold.failed("a", &err(ErrorKind::Rejected));
        assert!(hold.check(&"a").is_ok(), "a permanent failure holds nothing back");
        hold.failed("a", &err(ErrorKind::Timeout));
        let e = hold.check(&"a").unwrap_err();
        assert_eq!(
            (e.kind(), e.retry(), e.sink()),
            (ErrorKind::Unavailable, Retry::Backoff, Channel::Kafka)
        );
        assert_eq!(
            e.message(),
            "not sent: an earlier event for this topic and key failed"
        );
        assert!(hold.check(&"b").is_ok());
    }

    #[test]
    fn groups_keep_first_seen_and_batch_order() {
        let groups = group_by_key([("b", 0), ("a", 1), ("b", 2), ("c", 3), ("a", 4)]);
        assert_eq!(groups, [("b", vec![0, 2]), ("a", vec![1, 4]), ("c", vec![3])]);
    }

    #[tokio::test]
    async fn units_after_a_retryable_failure_are_not_sent() {
        let items: Vec<usize> = (0..7).collect();
        let mut sent = Vec::new();
        let failures = send_in_order(
            Channel::Sqs,
            "queue",
            items.chunks(2),
            |i| *i,
            |unit| {
                sent.push(unit.to_vec());
                std::future::ready(match unit {
                    // A permanent failure: the next unit goes.
                    [0, 1] => vec![(1, err(ErrorKind::Rejected))],
                    // A retryable one: the rest is held back.
                    [2, 3] => vec![(2, err(ErrorKind::Unavailable))],
                    _ => Vec::new(),
                })
            },
        )
        .await;
        assert_eq!(sent, [vec![0, 1], vec![2, 3]]);
        let described: Vec<(usize, ErrorKind, bool)> = failures
            .iter()
            .map(|(i, e)| (*i, e.kind(), e.message().starts_with("not sent")))
            .collect();
        assert_eq!(
            described,
            [
                (1, ErrorKind::Rejected, false),
                (2, ErrorKind::Unavailable, false),
                (4, ErrorKind::Unavailable, true),
                (5, ErrorKind::Unavailable, true),
                (6, ErrorKind::Unavailable, true),
            ]
        );
        assert!(failures[2].1.message().contains("this queue failed"));
    }
}
