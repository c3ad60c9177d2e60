//! The in-memory outbox: the contract suite, plus what only it does (the tokio clock, the bounded
//! event history and dead-letter eviction).

#![allow(clippy::unwrap_used)] // test helpers

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{InstanceName, NamingProfile};
use evolution_outbox::testing::{CHANNEL, OutboxFixture, dead, new_event, retry, settlement};
use evolution_outbox::{MemoryOutbox, Outbox, outbox_contract_suite};

/// A fresh [`MemoryOutbox`] per case; not durable.
struct MemoryFixture;

impl OutboxFixture for MemoryFixture {
    type Outbox = MemoryOutbox;

    async fn setup() -> Self {
        Self
    }

    async fn open(&self, capacity: usize) -> Arc<MemoryOutbox> {
        Arc::new(MemoryOutbox::new(capacity))
    }

    async fn reopen(&self, _outbox: Arc<MemoryOutbox>) -> Option<Arc<MemoryOutbox>> {
        None
    }
}

outbox_contract_suite!(contract, MemoryFixture);

#[tokio::test(start_paused = true)]
async fn retries_follow_the_tokio_clock() {
    let outbox = MemoryOutbox::new(100);
    outbox
        .enqueue(vec![new_event(CHANNEL, "a", 1, None)])
        .await
        .unwrap();
    let d = outbox.claim(CHANNEL, 10).await.unwrap().remove(0);
    outbox
        .settle(vec![settlement(d.id, retry(Duration::from_secs(5)))])
        .await
        .unwrap();
    assert_eq!(
        outbox.next_due(CHANNEL).await.unwrap(),
        Some(Duration::from_secs(5))
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(outbox.claim(CHANNEL, 10).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let again = outbox.claim(CHANNEL, 10).await.unwrap();
    assert_eq!((again[0].id, again[0].attempt), (d.id, 2));
}

#[tokio::test]
async fn only_recent_events_can_be_looked_up() {
    let outbox = MemoryOutbox::new(100).with_event_history(2);
    let stored = outbox
        .enqueue(vec![
            new_event(CHANNEL, "a", 1, None),
            new_event(CHANNEL, "a", 0, None),
            new_event(CHANNEL, "b", 1, None),
        ])
        .await
        .unwrap();
    let a = InstanceName::new("a").unwrap();
    // The oldest of three is forgotten with a history of 2, also while its delivery is pending.
    assert!(outbox.event(&a, stored[0].id()).await.unwrap().is_none());
    let found = outbox.event(&a, stored[1].id()).await.unwrap().unwrap();
    assert_eq!(
        found.envelope.sequence(),
        2,
        "an event without deliveries is kept too"
    );
    assert_eq!(found.payload(), stored[1].payload(NamingProfile::Seed));
    let none = MemoryOutbox::new(100).with_event_history(0);
    let stored = none
        .enqueue(vec![new_event(CHANNEL, "a", 1, None)])
        .await
        .unwrap();
    assert!(none.event(&a, stored[0].id()).await.unwrap().is_none());
}

#[tokio::test]
async fn at_most_capacity_dead_letters_are_kept() {
    let outbox = MemoryOutbox::new(2);
    for _ in 0..3 {
        outbox
            .enqueue(vec![new_event(CHANNEL, "a", 1, None)])
            .await
            .unwrap();
        let d = outbox.claim(CHANNEL, 10).await.unwrap();
        outbox
            .settle(vec![settlement(d[0].id, dead("no"))])
            .await
            .unwrap();
    }
    let kept: Vec<u64> = outbox
        .dead_letters(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|l| l.delivery.envelope.sequence())
        .collect();
    assert_eq!(kept, [2, 3], "the oldest dead letter is evicted");
    assert_eq!(outbox.dead_evicted(), 1);
    assert_eq!(outbox.stats(CHANNEL).await.unwrap().dead, 2);
}
